//! Keys a caller brings: a `PUBLIC KEY` (SubjectPublicKeyInfo) or a `CERTIFICATE REQUEST` (PKCS#10,
//! whose signature must verify: it proves the caller holds the private key). Only the key is taken from
//! a request; its subject and extensions are ignored, since the service decides who a certificate
//! names. Accepted: EC P-256, EC P-384 (points on the curve), RSA with 2048 to 8192 bits.
//!
//! A bare `PUBLIC KEY` proves nothing about who holds its private key: anyone can send anyone's public
//! key. [`ClientPublicKey::possession_proven`] says which of the two it was, so that the service can
//! require a request (it does unless the tenant allows bare keys).

use rcgen::SubjectPublicKeyInfo;
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

/// The largest PEM text accepted, in bytes.
pub const MAX_PEM_BYTES: usize = 16 * 1024;

/// Why a caller's key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

fn refuse(message: impl Into<String>) -> KeyError {
    KeyError(message.into())
}

/// A caller's public key, checked.
#[derive(Clone)]
pub struct ClientPublicKey {
    spki_der: Vec<u8>,
    rcgen: SubjectPublicKeyInfo,
    kind: String,
    /// Whether a request signed with the private key came with it.
    possession_proven: bool,
}

impl std::fmt::Debug for ClientPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPublicKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl ClientPublicKey {
    /// Reads a `PUBLIC KEY` or a `CERTIFICATE REQUEST` PEM block.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_PEM_BYTES {
            return Err(refuse(format!("longer than {MAX_PEM_BYTES} bytes")));
        }
        let block = pem::parse(text).map_err(|e| refuse(format!("not PEM: {e}")))?;
        match block.tag() {
            "PUBLIC KEY" => Self::from_spki_der(block.contents()),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
                Self::from_csr_der(block.contents())
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => Err(refuse(
                "this is a private key: send only the public key (`PUBLIC KEY`) or a CSR, and keep the private key",
            )),
            other => Err(refuse(format!(
                "expected a `PUBLIC KEY` or `CERTIFICATE REQUEST` block, found `{other}`"
            ))),
        }
    }

    /// A PKCS#10 request: its signature is verified, and only its key is used.
    pub fn from_csr_der(der: &[u8]) -> Result<Self, KeyError> {
        let (rest, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der)
                .map_err(|e| refuse(format!("not a certificate request: {e}")))?;
        if !rest.is_empty() {
            return Err(refuse("trailing bytes after the certificate request"));
        }
        let key = Self::from_spki_der(request.certification_request_info.subject_pki.raw)?;
        request
            .verify_signature()
            .map_err(|_| refuse("the certificate request's signature does not verify"))?;
        Ok(ClientPublicKey {
            possession_proven: true,
            ..key
        })
    }

    /// A SubjectPublicKeyInfo (DER).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        use spki::DecodePublicKey;
        let info = spki::SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|e| refuse(format!("not a public key: {e}")))?;
        const RSA: spki::ObjectIdentifier =
            spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
        const EC: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        const P256: spki::ObjectIdentifier =
            spki::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
        const P384: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.3.132.0.34");
        let kind = match info.algorithm.oid {
            RSA => {
                use rsa::pkcs1::der::Decode as _;
                use rsa::traits::PublicKeyParts;
                // Not `RsaPublicKey::from_public_key_der`: it refuses moduli above 4096 bits.
                let parts = rsa::pkcs1::RsaPublicKey::from_der(info.subject_public_key.raw_bytes())
                    .map_err(|e| refuse(format!("not a valid RSA public key: {e}")))?;
                let key = rsa::RsaPublicKey::new_with_max_size(
                    rsa::BigUint::from_bytes_be(parts.modulus.as_bytes()),
                    rsa::BigUint::from_bytes_be(parts.public_exponent.as_bytes()),
                    8192,
                )
                .map_err(|e| refuse(format!("not a valid RSA public key: {e}")))?;
                let bits = key.n().bits();
                if !(2048..=8192).contains(&bits) {
                    return Err(refuse(format!(
                        "an RSA key must have 2048-8192 bits, this one has {bits}"
                    )));
                }
                format!("RSA-{bits}")
            }
            EC => match info.algorithm.parameters_oid().ok() {
                Some(P256) => {
                    p256::PublicKey::from_public_key_der(der).map_err(|_| {
                        refuse("not a valid P-256 public key (point not on the curve)")
                    })?;
                    "ECDSA P-256".to_owned()
                }
                Some(P384) => {
                    p384::PublicKey::from_public_key_der(der).map_err(|_| {
                        refuse("not a valid P-384 public key (point not on the curve)")
                    })?;
                    "ECDSA P-384".to_owned()
                }
                _ => return Err(refuse("unsupported EC curve (supported: P-256, P-384)")),
            },
            other => {
                return Err(refuse(format!(
                    "unsupported key algorithm {other} (supported: RSA 2048-8192, EC P-256, EC P-384)"
                )));
            }
        };
        let rcgen = SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| refuse(format!("cannot certify this key: {e}")))?;
        Ok(ClientPublicKey {
            spki_der: der.to_vec(),
            rcgen,
            kind,
            possession_proven: false,
        })
    }

    /// The key as SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Whether the key came in a certificate request whose signature verified (proof that the
    /// sender holds the private key), not as a bare public key.
    pub fn possession_proven(&self) -> bool {
        self.possession_proven
    }

    /// e.g. `ECDSA P-256`, `RSA-2048`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Lowercase hex SHA-256 of the SubjectPublicKeyInfo.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(&self.spki_der))
    }

    pub(crate) fn rcgen_key(&self) -> &SubjectPublicKeyInfo {
        &self.rcgen
    }
}
