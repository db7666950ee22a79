//! Minting short-lived client certificates: a cluster's client CA (certificate and signing key) in, a
//! fresh client certificate for one caller out, signed so that the cluster's API server accepts it
//! (`CN` = user, `O` = group, `clientAuth`), with its serial, SHA-256 fingerprint and validity.
//!
//! The private key is either generated here (ECDSA P-256) and returned once, or stays with the caller:
//! a [`ClientPublicKey`] (a `PUBLIC KEY` or a signed `CERTIFICATE REQUEST`) is checked (P-256, P-384 or
//! RSA 2048–8192 bits; a CSR's signature must verify) and certified as it is.
//!
//! Certificates are built and signed with `rcgen` (on `ring`), parsed with `x509-parser`; CA keys in the
//! forms clusters keep them (PKCS#8, PKCS#1 RSA, SEC1 EC) are converted with the RustCrypto crates. The
//! crate does no I/O and keeps no state: the caller supplies the time and records what was issued.
//! Nothing here prints key material: `Debug` of every type holding a key says only what kind it is.
//!
//! - [`Authority`]: a client CA ready to sign, checked once ([`Authority::new`]).
//! - [`public_key`]: keys and requests a caller brings.
//! - [`inspect`]: the facts of a certificate handed out earlier (serial, fingerprint, expiry).

pub mod public_key;

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256,
    PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

pub use public_key::{ClientPublicKey, KeyError};

/// Why a client CA cannot sign, or a certificate could not be issued. Messages never include key
/// material; the field names are those of a cluster file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("clientCa.certificate: {0}")]
    Certificate(String),
    #[error("clientCa.key: {0}")]
    Key(String),
    #[error("clientCa: {0}")]
    Pair(String),
    #[error("subject: {0}")]
    Subject(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A client CA ready to sign: its certificate checked (a CA whose subject can be reproduced exactly as
/// the issuer of what it signs) and its key converted for signing and proven to match.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate's subject, DER, as issued certificates must carry it as their issuer.
    subject_der: Vec<u8>,
    /// The CA's public key (SubjectPublicKeyInfo, DER).
    spki_der: Vec<u8>,
    key_kind: &'static str,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("key", &self.key_kind)
            .finish_non_exhaustive()
    }
}

/// Who a certificate is for: Kubernetes reads the user from `CN` and groups from `O`.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub common_name: &'a str,
    /// One group (`O`), e.g. `system:masters`.
    pub organization: Option<&'a str>,
}

/// Where the certified key comes from.
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    /// A fresh ECDSA P-256 key, returned with the certificate.
    Generate,
    /// The caller's key: only the certificate is returned.
    Client(&'a ClientPublicKey),
}

/// A private key generated for a caller (PKCS#8 DER). `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedKey(Vec<u8>);

impl GeneratedKey {
    /// The key as PKCS#8 DER (a `PRIVATE KEY` PEM block's content).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<generated private key>")
    }
}

/// An issued certificate and what identifies it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_der: Vec<u8>,
    /// With [`KeySource::Generate`] only.
    pub private_key: Option<GeneratedKey>,
    /// Lowercase hex of the serial number (16 random bytes).
    pub serial: String,
    /// Lowercase hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A validity period, to the second (X.509 carries no finer time).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

const MAX_NAME_CHARS: usize = 256;

fn check_name(field: &str, value: &str) -> Result<(), MintError> {
    if value.is_empty()
        || value.chars().count() > MAX_NAME_CHARS
        || value.chars().any(char::is_control)
    {
        return Err(MintError::Subject(format!(
            "{field} must be 1-{MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

/// The CA key as PKCS#8 DER (what `ring` signs with) and the signature algorithm it implies.
fn signing_key(
    label: &str,
    der: &[u8],
) -> Result<(Vec<u8>, &'static SignatureAlgorithm), MintError> {
    use pkcs8::{DecodePrivateKey, EncodePrivateKey};
    use rsa::pkcs1::DecodeRsaPrivateKey;
    let key_error = |e: &dyn std::fmt::Display| MintError::Key(e.to_string());
    const RSA: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const EC: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");
    let rsa_key = |key: rsa::RsaPrivateKey| -> Result<_, MintError> {
        use rsa::traits::PublicKeyParts;
        let bits = key.n().bits();
        if !(2048..=8192).contains(&bits) {
            return Err(MintError::Key(format!(
                "an RSA signing key must have 2048-8192 bits, this one has {bits}"
            )));
        }
        let der = key.to_pkcs8_der().map_err(|e| key_error(&e))?;
        Ok((der.as_bytes().to_vec(), &PKCS_RSA_SHA256))
    };
    // EC keys are re-encoded: `ring` wants the public point inside the PKCS#8, which not every
    // writer includes.
    let ec_key = |curve: Option<spki::ObjectIdentifier>, sec1_der: &[u8]| -> Result<_, MintError> {
        match curve {
            Some(P256) => {
                let key = p256::SecretKey::from_sec1_der(sec1_der).map_err(|e| key_error(&e))?;
                let der = key.to_pkcs8_der().map_err(|e| key_error(&e))?;
                Ok((der.as_bytes().to_vec(), &PKCS_ECDSA_P256_SHA256))
            }
            Some(P384) => {
                let key = p384::SecretKey::from_sec1_der(sec1_der).map_err(|e| key_error(&e))?;
                let der = key.to_pkcs8_der().map_err(|e| key_error(&e))?;
                Ok((der.as_bytes().to_vec(), &PKCS_ECDSA_P384_SHA384))
            }
            _ => Err(MintError::Key(
                "unsupported EC curve (supported: P-256, P-384)".to_owned(),
            )),
        }
    };
    match label {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| key_error(&e))?;
            match info.algorithm.oid {
                RSA => rsa_key(rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|e| key_error(&e))?),
                EC => ec_key(info.algorithm.parameters_oid().ok(), info.private_key),
                other => Err(MintError::Key(format!(
                    "unsupported key algorithm {other} (supported: RSA, EC P-256, EC P-384)"
                ))),
            }
        }
        "RSA PRIVATE KEY" => {
            rsa_key(rsa::RsaPrivateKey::from_pkcs1_der(der).map_err(|e| key_error(&e))?)
        }
        "EC PRIVATE KEY" => {
            let key = sec1::EcPrivateKey::try_from(der).map_err(|e| key_error(&e))?;
            ec_key(key.parameters.and_then(|p| p.named_curve()), der)
        }
        "ENCRYPTED PRIVATE KEY" => Err(MintError::Key(
            "encrypted keys cannot be used unattended; store the key unencrypted in a file only the service can read"
                .to_owned(),
        )),
        other => Err(MintError::Key(format!(
            "expected a `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block, found `{other}`"
        ))),
    }
}

/// Checks what rcgen needs of the CA certificate (and would otherwise reject or misread): a CA, allowed
/// to sign certificates, whose subject has one attribute per RDN.
fn check_ca(certificate: &X509Certificate<'_>) -> Result<(), MintError> {
    let bad = |m: &str| MintError::Certificate(m.to_owned());
    match certificate.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => {}
        Ok(_) => {
            return Err(bad(
                "not a CA certificate (basicConstraints CA:TRUE is missing)",
            ));
        }
        Err(_) => return Err(bad("its basicConstraints extension is malformed")),
    }
    match certificate.key_usage() {
        Ok(Some(usage)) if !usage.value.key_cert_sign() => {
            return Err(bad(
                "its keyUsage does not allow signing certificates (keyCertSign)",
            ));
        }
        Ok(_) => {}
        Err(_) => return Err(bad("its keyUsage extension is malformed")),
    }
    let subject = certificate.subject();
    if subject.iter().next().is_none() {
        return Err(bad("its subject is empty"));
    }
    if subject.iter().any(|rdn| rdn.iter().count() != 1) {
        return Err(bad(
            "its subject has a multi-valued (or empty) RDN, which cannot be reproduced as the issuer",
        ));
    }
    Ok(())
}

impl Authority {
    /// A client CA from PEM text: the certificate and its signing key.
    pub fn from_pem(certificate: &str, key: &str) -> Result<Self, MintError> {
        let certificate =
            pem::parse(certificate).map_err(|e| MintError::Certificate(format!("not PEM: {e}")))?;
        if certificate.tag() != "CERTIFICATE" {
            return Err(MintError::Certificate(format!(
                "expected a `CERTIFICATE` block, found `{}`",
                certificate.tag()
            )));
        }
        let key = pem::parse(key).map_err(|e| MintError::Key(format!("not PEM: {e}")))?;
        Self::new(certificate.contents(), key.tag(), key.contents())
    }

    /// A client CA from its certificate (DER) and its key (a PEM block's label and DER). Checks that
    /// the certificate is a CA, that the key is supported and belongs to it, and signs one probe
    /// certificate to prove that what it issues names it exactly as its issuer and verifies under it.
    pub fn new(certificate_der: &[u8], key_label: &str, key_der: &[u8]) -> Result<Self, MintError> {
        let (rest, certificate) = X509Certificate::from_der(certificate_der)
            .map_err(|e| MintError::Certificate(format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(MintError::Certificate(
                "trailing bytes after the certificate".to_owned(),
            ));
        }
        check_ca(&certificate)?;
        let (pkcs8, algorithm) = signing_key(key_label, key_der)?;
        let key_kind = if algorithm == &PKCS_RSA_SHA256 {
            "RSA"
        } else if algorithm == &PKCS_ECDSA_P384_SHA384 {
            "ECDSA P-384"
        } else {
            "ECDSA P-256"
        };
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), algorithm)
            .map_err(|e| MintError::Key(format!("cannot sign with it: {e}")))?;
        let spki_der = certificate.public_key().raw.to_vec();
        if key_pair.subject_public_key_info() != spki_der {
            return Err(MintError::Pair(
                "the key in clientCa.key does not belong to the certificate in clientCa.certificate"
                    .to_owned(),
            ));
        }
        let subject_der = certificate.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&certificate_der.to_vec().into(), key_pair)
            .map_err(|e| MintError::Certificate(e.to_string()))?;
        let authority = Authority {
            issuer,
            subject_der,
            spki_der,
            key_kind,
        };
        authority.probe()?;
        Ok(authority)
    }

    /// The CA's key kind, e.g. `ECDSA P-256`.
    pub fn key_kind(&self) -> &'static str {
        self.key_kind
    }

    fn probe(&self) -> Result<(), MintError> {
        let now = SystemTime::now();
        let probe = ClientPublicKey::from_spki_der(&self.spki_der).map_err(|e| {
            MintError::Certificate(format!("its public key cannot be certified: {e}"))
        })?;
        let issued = self.issue(
            Subject {
                common_name: "probe",
                organization: None,
            },
            Validity {
                not_before: now,
                not_after: now + Duration::from_secs(60),
            },
            KeySource::Client(&probe),
        )?;
        let (_, certificate) = X509Certificate::from_der(&issued.certificate_der)
            .map_err(|e| MintError::Signing(e.to_string()))?;
        if certificate.issuer().as_raw() != self.subject_der.as_slice() {
            return Err(MintError::Certificate(
                "its subject cannot be reproduced exactly as the issuer of what it signs"
                    .to_owned(),
            ));
        }
        let (_, ca_key) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&self.spki_der)
            .map_err(|e| MintError::Certificate(e.to_string()))?;
        certificate.verify_signature(Some(&ca_key)).map_err(|_| {
            MintError::Pair("a probe certificate does not verify under the CA".to_owned())
        })
    }

    /// Issues a client certificate: `CN` and `O` from `subject`, `clientAuth`, not a CA, a random
    /// 128-bit serial, and the validity as given (to the second).
    pub fn issue(
        &self,
        subject: Subject<'_>,
        validity: Validity,
        key: KeySource<'_>,
    ) -> Result<Issued, MintError> {
        check_name("CN", subject.common_name)?;
        if let Some(organization) = subject.organization {
            check_name("O", organization)?;
        }
        let not_before = whole_seconds(validity.not_before);
        let not_after = whole_seconds(validity.not_after);
        if not_after <= not_before {
            return Err(MintError::Subject(
                "the certificate would expire before it is valid".to_owned(),
            ));
        }
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| MintError::Signing("no randomness for the serial".to_owned()))?;
        // Positive, and always 16 bytes long.
        serial[0] = (serial[0] & 0x7f) | 0x40;
        let mut params = CertificateParams::default();
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut name = DistinguishedName::new();
        if let Some(organization) = subject.organization {
            name.push(DnType::OrganizationName, organization);
        }
        name.push(DnType::CommonName, subject.common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let sign_error = |e: rcgen::Error| MintError::Signing(e.to_string());
        let (certificate, private_key) = match key {
            KeySource::Generate => {
                let key_pair =
                    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_error)?;
                let certificate = params
                    .signed_by(&key_pair, &self.issuer)
                    .map_err(sign_error)?;
                (certificate, Some(GeneratedKey(key_pair.serialize_der())))
            }
            KeySource::Client(client) => (
                params
                    .signed_by(client.rcgen_key(), &self.issuer)
                    .map_err(sign_error)?,
                None,
            ),
        };
        let certificate_der = certificate.der().to_vec();
        Ok(Issued {
            fingerprint: hex::encode(Sha256::digest(&certificate_der)),
            certificate_der,
            private_key,
            serial: hex::encode(serial),
            not_before,
            not_after,
        })
    }
}

/// What a certificate says about itself: enough to find it in a ledger and to judge its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Lowercase hex of the serial number, without leading zero bytes stripped or added.
    pub serial: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    pub not_after: SystemTime,
    /// The subject's common name.
    pub common_name: Option<String>,
    /// Lowercase hex SHA-256 of the issuer name (DER).
    pub issuer_digest: String,
}

/// Reads a certificate's serial, fingerprint, expiry and subject.
pub fn inspect(certificate_der: &[u8]) -> Result<Inspected, String> {
    let (_, certificate) = X509Certificate::from_der(certificate_der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let not_after = certificate.validity().not_after.timestamp();
    let not_after = if not_after >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(not_after as u64)
    } else {
        SystemTime::UNIX_EPOCH
    };
    Ok(Inspected {
        serial: hex::encode(certificate.raw_serial()),
        fingerprint: hex::encode(Sha256::digest(certificate_der)),
        not_after,
        common_name: certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        issuer_digest: hex::encode(Sha256::digest(certificate.issuer().as_raw())),
    })
}
