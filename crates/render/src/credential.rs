//! PEM validation for certificates and private keys, and the check that a client certificate belongs
//! to its key (their public keys are compared).
//!
//! Parsing uses the RustCrypto crates: `der`'s PEM decoder, `x509-cert` for certificates, `pkcs8`,
//! `sec1`, `rsa`, `p256` and `p384` for keys. Supported keys: PKCS#8 (RSA, EC P-256, EC P-384), PKCS#1
//! RSA, and SEC1 EC (P-256, P-384).

use der::Decode;
use pkcs8::DecodePrivateKey;
use pkcs8::EncodePublicKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use spki::ObjectIdentifier;
use x509_cert::Certificate;

/// Why a PEM credential was refused. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("no PEM block found (expected `-----BEGIN {expected}-----`)")]
    NotPem { expected: &'static str },
    #[error("PEM block {index} is malformed: {reason}")]
    BadPem { index: usize, reason: String },
    #[error("expected a PEM `{expected}` block, found `{found}`")]
    WrongBlock {
        expected: &'static str,
        found: String,
    },
    #[error("expected exactly one certificate, found {0}")]
    NotOneCertificate(usize),
    #[error("PEM block {index} is not a valid X.509 certificate: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("not a valid {format} private key: {reason}")]
    BadKey {
        format: &'static str,
        reason: String,
    },
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
}

/// A public key as (algorithm OID, key bits): what a certificate and its key must share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyId {
    algorithm: ObjectIdentifier,
    key: Vec<u8>,
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Splits PEM text into (label, DER) blocks. Text between blocks is ignored, as OpenSSL does.
fn pem_blocks(
    text: &str,
    expected: &'static str,
) -> Result<Vec<(String, Vec<u8>)>, CredentialError> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end =
            block["-----BEGIN ".len()..]
                .find("-----")
                .ok_or(CredentialError::BadPem {
                    index: blocks.len(),
                    reason: "unterminated BEGIN line".to_owned(),
                })?;
        let label = &block["-----BEGIN ".len().."-----BEGIN ".len() + label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block
            .find(&end_marker)
            .ok_or_else(|| CredentialError::BadPem {
                index: blocks.len(),
                reason: format!("no `{end_marker}` line"),
            })?;
        let pem = &block[..end + end_marker.len()];
        let (_, der) =
            der::pem::decode_vec(pem.as_bytes()).map_err(|e| CredentialError::BadPem {
                index: blocks.len(),
                reason: e.to_string(),
            })?;
        blocks.push((label.to_owned(), der));
        rest = &block[end + end_marker.len()..];
    }
    if blocks.is_empty() {
        return Err(CredentialError::NotPem { expected });
    }
    Ok(blocks)
}

fn spki_id(spki: &spki::SubjectPublicKeyInfoOwned) -> PublicKeyId {
    PublicKeyId {
        algorithm: spki.algorithm.oid,
        key: spki.subject_public_key.raw_bytes().to_vec(),
    }
}

/// Parses one or more PEM certificates (a CA bundle) and returns their public keys.
pub fn certificates(text: &str) -> Result<Vec<PublicKeyId>, CredentialError> {
    pem_blocks(text, "CERTIFICATE")?
        .into_iter()
        .enumerate()
        .map(|(index, (label, der))| {
            if label != "CERTIFICATE" {
                return Err(CredentialError::WrongBlock {
                    expected: "CERTIFICATE",
                    found: label,
                });
            }
            let cert =
                Certificate::from_der(&der).map_err(|e| CredentialError::BadCertificate {
                    index,
                    reason: e.to_string(),
                })?;
            Ok(spki_id(&cert.tbs_certificate.subject_public_key_info))
        })
        .collect()
}

/// Parses exactly one PEM certificate and returns its public key.
pub fn single_certificate_key(text: &str) -> Result<PublicKeyId, CredentialError> {
    let mut keys = certificates(text)?;
    if keys.len() != 1 {
        return Err(CredentialError::NotOneCertificate(keys.len()));
    }
    Ok(keys.remove(0))
}

fn bad(format: &'static str) -> impl Fn(String) -> CredentialError {
    move |reason| CredentialError::BadKey { format, reason }
}

fn from_spki_der(der: &[u8]) -> Result<PublicKeyId, CredentialError> {
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(der)
        .map_err(|e| bad("derived public")(e.to_string()))?;
    Ok(spki_id(&spki))
}

fn ec_public_key(
    curve: Option<ObjectIdentifier>,
    der: &[u8],
    pkcs8: bool,
) -> Result<PublicKeyId, CredentialError> {
    let format = if pkcs8 { "PKCS#8 EC" } else { "SEC1 EC" };
    let spki_der = match curve {
        Some(SECP256R1) => {
            let key = if pkcs8 {
                p256::SecretKey::from_pkcs8_der(der).map_err(|e| e.to_string())
            } else {
                p256::SecretKey::from_sec1_der(der).map_err(|e| e.to_string())
            };
            key.map_err(bad(format))?
                .public_key()
                .to_public_key_der()
                .map_err(|e| bad(format)(e.to_string()))?
        }
        Some(SECP384R1) => {
            let key = if pkcs8 {
                p384::SecretKey::from_pkcs8_der(der).map_err(|e| e.to_string())
            } else {
                p384::SecretKey::from_sec1_der(der).map_err(|e| e.to_string())
            };
            key.map_err(bad(format))?
                .public_key()
                .to_public_key_der()
                .map_err(|e| bad(format)(e.to_string()))?
        }
        Some(other) => {
            return Err(CredentialError::UnsupportedKey(format!(
                "EC curve {other} (supported: P-256, P-384)"
            )));
        }
        None => {
            return Err(CredentialError::UnsupportedKey(
                "EC key without a named curve".to_owned(),
            ));
        }
    };
    from_spki_der(spki_der.as_bytes())
}

fn rsa_public_key(key: &rsa::RsaPrivateKey) -> Result<PublicKeyId, CredentialError> {
    let der = rsa::RsaPublicKey::from(key)
        .to_public_key_der()
        .map_err(|e| bad("RSA")(e.to_string()))?;
    from_spki_der(der.as_bytes())
}

/// Whether the PEM private key `text` belongs to the certificate key `certificate`. EC keys (P-256,
/// P-384) are checked with `ring`, whose constant-time base-point multiplication is an order of
/// magnitude faster than the portable one (this check dominated loading a large inventory); any other
/// key, and any EC key that does not match, goes through [`private_key_public_part`], which says
/// precisely what is wrong.
pub fn key_matches(text: &str, certificate: &PublicKeyId) -> Result<bool, CredentialError> {
    if ec_key_matches(text, certificate) == Some(true) {
        return Ok(true);
    }
    Ok(private_key_public_part(text)? == *certificate)
}

/// `Some(true)` when `text` is an EC private key whose public key is `certificate`'s; `None` when the
/// fast check does not apply.
fn ec_key_matches(text: &str, certificate: &PublicKeyId) -> Option<bool> {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    };
    if certificate.algorithm != EC_PUBLIC_KEY {
        return None;
    }
    let mut blocks = pem_blocks(text, "PRIVATE KEY").ok()?;
    if blocks.len() != 1 {
        return None;
    }
    let (label, der) = blocks.remove(0);
    let (curve, ec_der) = match label.as_str() {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).ok()?;
            if info.algorithm.oid != EC_PUBLIC_KEY {
                return None;
            }
            (
                info.algorithm.parameters_oid().ok(),
                info.private_key.to_vec(),
            )
        }
        "EC PRIVATE KEY" => (None, der),
        _ => return None,
    };
    let key = sec1::EcPrivateKey::try_from(ec_der.as_slice()).ok()?;
    let algorithm = match curve.or_else(|| key.parameters.and_then(|p| p.named_curve())) {
        Some(SECP256R1) => &ECDSA_P256_SHA256_ASN1_SIGNING,
        Some(SECP384R1) => &ECDSA_P384_SHA384_ASN1_SIGNING,
        _ => return None,
    };
    // ring checks that the private scalar and the public point belong together.
    Some(
        EcdsaKeyPair::from_private_key_and_public_key(
            algorithm,
            key.private_key,
            &certificate.key,
            &ring::rand::SystemRandom::new(),
        )
        .is_ok(),
    )
}

/// Parses one PEM private key and returns the public key it belongs to.
pub fn private_key_public_part(text: &str) -> Result<PublicKeyId, CredentialError> {
    let mut blocks = pem_blocks(text, "PRIVATE KEY")?;
    if blocks.len() != 1 {
        return Err(CredentialError::BadKey {
            format: "PEM",
            reason: format!("expected one key block, found {}", blocks.len()),
        });
    }
    let (label, der) = blocks.remove(0);
    match label.as_str() {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).map_err(|e| bad("PKCS#8")(e.to_string()))?;
            match info.algorithm.oid {
                RSA_ENCRYPTION => {
                    let key = rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| bad("PKCS#8 RSA")(e.to_string()))?;
                    rsa_public_key(&key)
                }
                EC_PUBLIC_KEY => {
                    let curve = info.algorithm.parameters_oid().ok();
                    ec_public_key(curve, &der, true)
                }
                other => Err(CredentialError::UnsupportedKey(format!("algorithm {other} (supported: RSA, EC P-256, EC P-384)"))),
            }
        }
        "RSA PRIVATE KEY" => {
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| bad("PKCS#1 RSA")(e.to_string()))?;
            rsa_public_key(&key)
        }
        "EC PRIVATE KEY" => {
            let key = sec1::EcPrivateKey::try_from(der.as_slice()).map_err(|e| bad("SEC1 EC")(e.to_string()))?;
            let curve = key.parameters.and_then(|p| p.named_curve());
            ec_public_key(curve, &der, false)
        }
        "ENCRYPTED PRIVATE KEY" => Err(CredentialError::UnsupportedKey(
            "encrypted keys cannot be used unattended; store the key unencrypted in a file only the service can read".to_owned(),
        )),
        other => Err(CredentialError::WrongBlock { expected: "PRIVATE KEY", found: other.to_owned() }),
    }
}

#[cfg(test)]
mod fast_check_tests {
    use super::*;

    #[test]
    fn ec_keys_take_the_fast_check_and_agree_with_the_portable_one() {
        let certificate =
            single_certificate_key(include_str!("../tests/data/admin-ec.crt")).unwrap();
        for key in [
            include_str!("../tests/data/admin-ec.key"),
            include_str!("../tests/data/admin-ec.pkcs8.key"),
        ] {
            assert_eq!(ec_key_matches(key, &certificate), Some(true));
            assert_eq!(private_key_public_part(key).unwrap(), certificate);
        }
        let other = include_str!("../tests/data/other-ec.key");
        assert_eq!(ec_key_matches(other, &certificate), Some(false));
        assert!(!key_matches(other, &certificate).unwrap());
        let rsa = single_certificate_key(include_str!("../tests/data/admin-rsa.crt")).unwrap();
        assert_eq!(
            ec_key_matches(include_str!("../tests/data/admin-rsa.key"), &rsa),
            None
        );
    }
}
