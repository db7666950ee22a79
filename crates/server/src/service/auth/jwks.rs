//! An issuer's signing keys: a JWKS read from OpenID discovery (`discoveryURL` → `jwks_uri`), inline or
//! from a file, kept only for the algorithms its key type allows (RSA: RS256/384/512; EC P-256: ES256,
//! P-384: ES384; OKP Ed25519: EdDSA; an `alg` in the JWK narrows that to one). Symmetric (`oct`) and
//! encryption keys are dropped: a public key set must not be able to make an HMAC secret.
//!
//! Fetching trusts the issuer's `certificateAuthority` or the system roots, and bounds what a hostile
//! or broken issuer can do: a connect and a total timeout, a response size cap, no redirects (a 3xx is
//! an error), and at most [`MAX_KEYS`] keys. The client is hyper's HTTP/1 connection over
//! tokio-rustls with the ring provider the listeners already use: no second TLS stack, and nothing
//! (redirects, proxies, cookies, retries) happens that this module does not do itself.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// The most keys one set may hold.
pub const MAX_KEYS: usize = 64;
/// The largest discovery document or key set read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Connecting (TCP and TLS) must take at most this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One fetch (discovery and key set together) must take at most this long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a key set could not be read or fetched (never holds key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS: {0}")]
    Malformed(String),
    #[error("the key set has {0} keys; the limit is {MAX_KEYS}")]
    TooManyKeys(usize),
    #[error("the key set has no usable signing key (RSA, EC P-256/P-384 or Ed25519)")]
    NoUsableKey,
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
}

/// One verifying key.
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// The algorithms a token signed with it may name.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
    /// Identifies this key while it stays in its issuer's set (a refresh keeps the serial of a key
    /// that did not change), so a remembered token can tell whether its key is still there.
    pub serial: u64,
    jwk: Jwk,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The keys of one issuer at one time.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Arc<VerifyingKey>>,
}

impl KeySet {
    /// The keys a token with this header may be checked with: the one its `kid` names (if its type
    /// allows `alg`), or without a `kid` every key whose type allows `alg` (at most [`MAX_KEYS`]).
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyingKey>> {
        self.keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.algorithms.contains(&alg))
            .take(MAX_KEYS)
            .cloned()
            .collect()
    }

    /// Whether the key with this serial is still in the set.
    pub fn holds(&self, serial: u64) -> bool {
        self.keys.iter().any(|k| k.serial == serial)
    }

    /// Builds a set from parsed keys, keeping the serial of every key `previous` already had.
    pub fn carry_over(previous: &KeySet, jwks: Vec<Jwk>) -> KeySet {
        static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let keys = jwks
            .into_iter()
            .filter_map(|jwk| {
                if let Some(old) = previous.keys.iter().find(|k| k.jwk == jwk) {
                    return Some(Arc::clone(old));
                }
                let algorithms = algorithms_of(&jwk)?;
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some(Arc::new(VerifyingKey {
                    kid: jwk.common.key_id.clone(),
                    algorithms,
                    key,
                    serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    jwk,
                }))
            })
            .collect();
        KeySet { keys }
    }
}

/// The algorithms a key may verify: by its type, narrowed to its `alg` when it names one (and refused
/// when that `alg` does not fit the type). `None` for keys that are not for signatures.
fn algorithms_of(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type.to_vec()),
        Some(named) => {
            let named = Algorithm::from_str(&named.to_string()).ok()?;
            by_type.contains(&named).then(|| vec![named])
        }
    }
}

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document into its usable signing keys (keys of other kinds are skipped).
pub fn parse(bytes: &[u8]) -> Result<Vec<Jwk>, JwksError> {
    let raw: RawSet =
        serde_json::from_slice(bytes).map_err(|e| JwksError::Malformed(e.to_string()))?;
    if raw.keys.len() > MAX_KEYS {
        return Err(JwksError::TooManyKeys(raw.keys.len()));
    }
    let keys: Vec<Jwk> = raw
        .keys
        .into_iter()
        .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
        .filter(|jwk| algorithms_of(jwk).is_some() && DecodingKey::from_jwk(jwk).is_ok())
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// The roots an issuer's certificate is checked against: its `certificateAuthority` (PEM), or the
/// system's.
pub fn root_store(certificate_authority: Option<&str>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match certificate_authority {
        Some(pem) => {
            let certificates: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("not PEM certificates: {e}"))?;
            if certificates.is_empty() {
                return Err("holds no PEM certificate".to_owned());
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|e| format!("not a usable CA certificate: {e}"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// The TLS client configuration for one issuer.
pub fn client_config(
    certificate_authority: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(root_store(certificate_authority)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Fetches the key set of an issuer: its discovery document, then the `jwks_uri` it names (the
/// document's `issuer` must be `issuer`), all within [`FETCH_TIMEOUT`].
pub async fn fetch(
    issuer: &str,
    discovery_url: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Vec<Jwk>, JwksError> {
    tokio::time::timeout(FETCH_TIMEOUT, async {
        let document = get(discovery_url, tls).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            #[serde(default)]
            issuer: Option<String>,
            jwks_uri: String,
        }
        let fail = |url: &str, message: String| JwksError::Fetch {
            url: url.to_owned(),
            message,
        };
        let discovery: Discovery = serde_json::from_slice(&document)
            .map_err(|e| fail(discovery_url, format!("not a discovery document: {e}")))?;
        // OpenID discovery requires `issuer`, equal to the issuer's URL (as kube-apiserver does).
        match discovery.issuer.as_deref() {
            Some(named) if named == issuer => {}
            Some(_) => {
                return Err(fail(
                    discovery_url,
                    "the document names another issuer".to_owned(),
                ));
            }
            None => {
                return Err(fail(
                    discovery_url,
                    "the document names no issuer".to_owned(),
                ));
            }
        }
        let jwks = get(&discovery.jwks_uri, tls).await?;
        parse(&jwks).map_err(|e| fail(&discovery.jwks_uri, e.to_string()))
    })
    .await
    .map_err(|_| JwksError::Fetch {
        url: discovery_url.to_owned(),
        message: format!("no answer within {FETCH_TIMEOUT:?}"),
    })?
}

/// One HTTPS GET: status 200 and at most [`MAX_RESPONSE_BYTES`], or an error naming the URL.
async fn get(url: &str, tls: &Arc<rustls::ClientConfig>) -> Result<bytes::Bytes, JwksError> {
    let fail = |message: String| JwksError::Fetch {
        url: url.to_owned(),
        message,
    };
    let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(fail("not an https:// URL".to_owned()));
    }
    let host = uri
        .host()
        .ok_or_else(|| fail("no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(name, tcp)
            .await
    })
    .await
    .map_err(|_| fail(format!("could not connect within {CONNECT_TIMEOUT:?}")))?
    .map_err(|e| fail(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.to_string()))?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "kubeconfigd")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| fail(e.to_string()))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if response.status() != http::StatusCode::OK {
            return Err(fail(format!(
                "answered {} (redirects are not followed)",
                response.status()
            )));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &str) -> Vec<Jwk> {
        parse(format!(r#"{{"keys": [{keys}]}}"#).as_bytes()).expect("a key set")
    }

    const ED: &str = r#"{"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    const EC: &str = r#"{"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn the_key_type_decides_the_algorithms() {
        let keys = KeySet::carry_over(&KeySet::default(), set(&format!("{ED}, {EC}")));
        assert_eq!(keys.candidates(Some("ed"), Algorithm::EdDSA).len(), 1);
        assert!(keys.candidates(Some("ed"), Algorithm::ES256).is_empty());
        assert!(keys.candidates(Some("ec"), Algorithm::RS256).is_empty());
        assert!(keys.candidates(Some("ec"), Algorithm::HS256).is_empty());
        assert_eq!(keys.candidates(None, Algorithm::ES256).len(), 1);
        // An `alg` that does not fit the key type: the key is not used at all.
        let mismatched = EC.replace(r#""kid": "ec""#, r#""kid": "ec", "alg": "RS256""#);
        assert_eq!(
            parse(format!(r#"{{"keys": [{mismatched}]}}"#).as_bytes()),
            Err(JwksError::NoUsableKey)
        );
        // A symmetric key is never a verifying key.
        assert_eq!(
            parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#),
            Err(JwksError::NoUsableKey)
        );
    }

    #[test]
    fn a_refresh_keeps_the_serial_of_an_unchanged_key() {
        let first = KeySet::carry_over(&KeySet::default(), set(&format!("{ED}, {EC}")));
        let second = KeySet::carry_over(&first, set(ED));
        assert!(second.holds(first.keys[0].serial));
        assert!(!second.holds(first.keys[1].serial));
    }

    #[test]
    fn too_many_keys_are_refused() {
        let many = vec![ED; MAX_KEYS + 1].join(",");
        assert_eq!(
            parse(format!(r#"{{"keys": [{many}]}}"#).as_bytes()),
            Err(JwksError::TooManyKeys(MAX_KEYS + 1))
        );
    }
}
