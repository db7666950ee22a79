//! The TLS server configuration (rustls with the ring provider) of the gRPC and REST listeners, when
//! `--tls-cert-file` and `--tls-key-file` are given, and with `--client-ca-file` the client
//! certificates they ask for. Every file is re-read when it changes (see [`crate::loading::reloading`]), so
//! that certificates rotate without a restart: the server certificate is chosen per handshake from the
//! last good pair, and the client verifier is part of a configuration that each handshake takes anew.
//! A connection keeps the certificate it was established with, but its client certificate is checked
//! again against a new CA bundle or CRL at its next call ([`crate::service::auth::ClientTrust`]); a bad new
//! file keeps the old material and says why. Handshakes are done by [`crate::edges::connections`], bounded in time and number.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::edges::connections::Tls;
use crate::loading::reloading::{self, Reloading};
use crate::service::auth::ClientTrust;

/// The files TLS is configured from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle client certificates are verified against; none: no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// CRLs (PEM or DER) of the client CAs.
    pub client_crl: Option<PathBuf>,
    /// Whether a connection without a client certificate is refused at the handshake.
    pub require_client_cert: bool,
}

/// The TLS configuration in service, shared by the API listeners and replaced as files change.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<TlsFiles>,
    key: Arc<ArcSwap<CertifiedKey>>,
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    /// The client verifier in service, when `--client-ca-file` is given.
    trust: Option<Arc<ClientTrust>>,
}

/// A handshake configuration and the client verifier in it (built together, put in service
/// together).
struct Built {
    config: Arc<rustls::ServerConfig>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Which flag a start-up problem is about.
#[derive(Debug)]
pub struct TlsError {
    pub flag: &'static str,
    pub message: String,
}

impl ServerTls {
    /// Reads every file once (a problem names its flag and the file, never a key's content).
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = certified_key(&files.cert, &files.key).map_err(|message| TlsError {
            flag: "--tls-cert-file",
            message,
        })?;
        let key = Arc::new(ArcSwap::from_pointee(key));
        let built = server_config(&files, &key)?;
        Ok(ServerTls {
            files: Arc::new(files),
            key,
            config: Arc::new(ArcSwap::new(built.config)),
            trust: built.verifier.map(ClientTrust::new),
        })
    }

    /// What each handshake takes: the configuration in service, and the client trust.
    pub fn handshake(&self) -> Tls {
        Tls {
            config: Arc::clone(&self.config),
            trust: self.trust.clone(),
        }
    }

    /// Whether client certificates are asked for.
    pub fn client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Starts re-reading the files when they change (in the runtime; dropping the result stops it).
    pub fn watch(&self) -> Vec<Reloading> {
        let files = Arc::clone(&self.files);
        let mut watching = vec![reloading::spawn(
            "TLS certificate and key",
            vec![files.cert.clone(), files.key.clone()],
            Arc::clone(&self.key),
            {
                let files = Arc::clone(&files);
                move || certified_key(&files.cert, &files.key)
            },
            |key| {
                if let Some(serial) = key.cert.first().and_then(|leaf| serial_of(leaf)) {
                    tracing::info!(serial, "serving a new TLS certificate to new connections");
                }
            },
        )];
        if let Some(ca) = &files.client_ca {
            let mut paths = vec![ca.clone()];
            paths.extend(files.client_crl.clone());
            let key = Arc::clone(&self.key);
            let config = Arc::clone(&self.config);
            let trust = self.trust.clone();
            watching.push(reloading::spawn(
                "client CA bundle and CRLs",
                paths,
                Arc::new(ArcSwap::from_pointee(Built {
                    config: self.config.load_full(),
                    verifier: None,
                })),
                move || server_config(&files, &key).map_err(|e| e.message),
                move |built| {
                    // The configuration first, then the trust: a handshake that read the trust's
                    // generation before taking the configuration is never credited with a newer one.
                    config.store(Arc::clone(&built.config));
                    if let (Some(trust), Some(verifier)) = (&trust, &built.verifier) {
                        trust.install(Arc::clone(verifier));
                    }
                    tracing::info!(
                        "client CA bundle and CRLs reloaded: open connections' certificates are checked again at their next call"
                    );
                },
            ));
        }
        watching
    }
}

/// The serial number of a certificate, lowercase hex (for the log).
fn serial_of(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    Some(format!("{:x}", parsed.serial))
}

/// The server certificate of every handshake: the last good pair read.
#[derive(Debug)]
struct Rotating(Arc<ArcSwap<CertifiedKey>>);

impl ResolvesServerCert for Rotating {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Reads a PEM certificate chain and the private key it must match.
fn certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let chain = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: not a PEM private key ({e})", key_file.display()))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).map_err(|e| {
        format!(
            "{} does not fit {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })
}

/// Every certificate of a PEM file (at least one).
fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", file.display()));
    }
    Ok(chain)
}

/// The CRLs of a file: PEM blocks, or one DER CRL.
fn crls(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if bytes.trim_ascii_start().starts_with(b"-----") {
        let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", file.display()))?;
        if crls.is_empty() {
            return Err(format!("{}: no PEM X509 CRL block", file.display()));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// The most bytes of CA names a client CA bundle may add up to (each subject's DER and its 2-byte
/// length): under the 65,535 a certificate request can carry, leaving room for its other fields.
const MAX_CA_NAMES_BYTES: usize = 60_000;

/// The configuration of the API listeners: the rotating server certificate, and the client
/// verifier when `--client-ca-file` is given.
fn server_config(files: &TlsFiles, key: &Arc<ArcSwap<CertifiedKey>>) -> Result<Built, TlsError> {
    let ca_error = |message: String| TlsError {
        flag: "--client-ca-file",
        message,
    };
    let crl_error = |message: String| TlsError {
        flag: "--client-crl-file",
        message,
    };
    let resolver = Arc::new(Rotating(Arc::clone(key)));
    let builder = rustls::ServerConfig::builder();
    let (mut config, verifier) = match &files.client_ca {
        None => (
            builder.with_no_client_auth().with_cert_resolver(resolver),
            None,
        ),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let mut seen = std::collections::HashSet::new();
            for certificate in certificates(ca).map_err(ca_error)? {
                // A CA listed twice would be named twice in every certificate request.
                if !seen.insert(certificate.as_ref().to_vec()) {
                    continue;
                }
                roots
                    .add(certificate)
                    .map_err(|e| ca_error(format!("{}: {e}", ca.display())))?;
            }
            // Every handshake's certificate request names each CA; the message holds at most 64 KiB,
            // and rustls panics building a larger one. Refused here, a bundle that big fails the
            // start (or the reload, keeping the last good bundle) instead of every handshake.
            let names: usize = roots.subjects().iter().map(|s| s.as_ref().len() + 2).sum();
            if names > MAX_CA_NAMES_BYTES {
                return Err(ca_error(format!(
                    "{}: the names of its {} CAs take {names} bytes; a TLS certificate request carries at most {MAX_CA_NAMES_BYTES} (trust fewer CAs, or a common root)",
                    ca.display(),
                    roots.len()
                )));
            }
            let mut verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            if let Some(crl) = &files.client_crl {
                verifier = verifier.with_crls(crls(crl).map_err(crl_error)?);
            }
            if !files.require_client_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| match (e, &files.client_crl) {
                (VerifierBuilderError::InvalidCrl(e), Some(crl)) => {
                    crl_error(format!("{}: not a valid CRL ({e:?})", crl.display()))
                }
                (e, _) => ca_error(format!("{}: {e}", ca.display())),
            })?;
            let config = builder
                .with_client_cert_verifier(Arc::clone(&verifier))
                .with_cert_resolver(resolver);
            (config, Some(verifier))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Built {
        config: Arc::new(config),
        verifier,
    })
}
