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

/// PEM blocks (certificates, or a private key) held as DER, the compact form kept in memory for every
/// cluster: about three quarters of the PEM text, in one allocation shared by clones. Text between
/// blocks is dropped (as OpenSSL ignores it), and [`PemBundle::to_pem`] rebuilds canonical PEM
/// (RFC 7468: 64-column lines, LF endings). `Debug` prints how many blocks and bytes, never content
/// or labels, so a bundle may hold a private key.
///
/// Layout: for each block, its label (one byte: an index into [`LABELS`], or `0xff` followed by the
/// label's length and text for any other label), the DER length (4 bytes, little endian), the DER.
#[derive(Clone, PartialEq, Eq)]
pub struct PemBundle(std::sync::Arc<[u8]>);

/// The labels a bundle stores as one byte.
const LABELS: [&str; 5] = [
    "CERTIFICATE",
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];
const OTHER_LABEL: u8 = 0xff;

impl PemBundle {
    /// Parses PEM text (one or more blocks). `expected` names the block the caller wants, for the error
    /// when there is none; labels are checked later, by whoever interprets the blocks.
    pub fn parse(text: &str, expected: &'static str) -> Result<Self, CredentialError> {
        let blocks = pem_blocks(text, expected)?;
        let mut bytes = Vec::with_capacity(blocks.iter().map(|(_, der)| 5 + der.len()).sum());
        for (index, (label, der)) in blocks.iter().enumerate() {
            let (Ok(label_len), Ok(der_len)) =
                (u8::try_from(label.len()), u32::try_from(der.len()))
            else {
                return Err(CredentialError::BadPem {
                    index,
                    reason: "label or content too long".to_owned(),
                });
            };
            match LABELS.iter().position(|known| known == label) {
                Some(code) => bytes.push(code as u8),
                None => {
                    bytes.push(OTHER_LABEL);
                    bytes.push(label_len);
                    bytes.extend_from_slice(label.as_bytes());
                }
            }
            bytes.extend_from_slice(&der_len.to_le_bytes());
            bytes.extend_from_slice(der);
        }
        Ok(PemBundle(bytes.into()))
    }

    /// One block from its label and DER (e.g. a certificate just issued).
    pub fn from_der(label: &str, der: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(6 + label.len() + der.len());
        match LABELS.iter().position(|known| *known == label) {
            Some(code) => bytes.push(code as u8),
            None => {
                bytes.push(OTHER_LABEL);
                bytes.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
                bytes.extend_from_slice(&label.as_bytes()[..label.len().min(255)]);
            }
        }
        bytes.extend_from_slice(&u32::try_from(der.len()).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(&der[..der.len().min(u32::MAX as usize)]);
        PemBundle(bytes.into())
    }

    /// The blocks as (label, DER), in order.
    pub fn blocks(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let (&code, tail) = rest.split_first()?;
            let (label, tail) = match LABELS.get(usize::from(code)) {
                Some(label) => (*label, tail),
                None => {
                    let (&label_len, tail) = tail.split_first()?;
                    let (label, tail) = tail.split_at_checked(usize::from(label_len))?;
                    // Labels were `&str` when stored.
                    (std::str::from_utf8(label).unwrap_or_default(), tail)
                }
            };
            let (len, tail) = tail.split_at_checked(4)?;
            let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
            let (der, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some((label, der))
        })
    }

    /// Canonical PEM text of every block, in order (RFC 7468: 64-column base64 lines, LF endings).
    pub fn to_pem(&self) -> String {
        let mut text = String::with_capacity(self.0.len() * 4 / 3 + 128);
        for (label, der) in self.blocks() {
            text.push_str("-----BEGIN ");
            text.push_str(label);
            text.push_str("-----\n");
            let line = base64_simd::STANDARD.encode_to_string(der);
            let mut rest = line.as_str();
            while !rest.is_empty() {
                let (head, tail) = rest.split_at(rest.len().min(64));
                text.push_str(head);
                text.push('\n');
                rest = tail;
            }
            text.push_str("-----END ");
            text.push_str(label);
            text.push_str("-----\n");
        }
        text
    }
}

impl std::fmt::Debug for PemBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (blocks, bytes) = self
            .blocks()
            .fold((0, 0), |(n, total), (_, der)| (n + 1, total + der.len()));
        write!(f, "<{blocks} PEM block(s), {bytes} bytes>")
    }
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

/// Checks that every block of a CA bundle is an X.509 certificate and returns their public keys.
pub fn certificates(bundle: &PemBundle) -> Result<Vec<PublicKeyId>, CredentialError> {
    bundle
        .blocks()
        .enumerate()
        .map(|(index, (label, der))| {
            if label != "CERTIFICATE" {
                return Err(CredentialError::WrongBlock {
                    expected: "CERTIFICATE",
                    found: label.to_owned(),
                });
            }
            let cert = Certificate::from_der(der).map_err(|e| CredentialError::BadCertificate {
                index,
                reason: e.to_string(),
            })?;
            Ok(spki_id(&cert.tbs_certificate.subject_public_key_info))
        })
        .collect()
}

/// Checks that a bundle is exactly one certificate and returns its public key.
pub fn single_certificate_key(bundle: &PemBundle) -> Result<PublicKeyId, CredentialError> {
    let mut keys = certificates(bundle)?;
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
pub fn key_matches(key: &PemBundle, certificate: &PublicKeyId) -> Result<bool, CredentialError> {
    if ec_key_matches(key, certificate) == Some(true) {
        return Ok(true);
    }
    Ok(private_key_public_part(key)? == *certificate)
}

/// `Some(true)` when `text` is an EC private key whose public key is `certificate`'s; `None` when the
/// fast check does not apply.
fn ec_key_matches(key: &PemBundle, certificate: &PublicKeyId) -> Option<bool> {
    use ring::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    };
    if certificate.algorithm != EC_PUBLIC_KEY {
        return None;
    }
    let mut blocks = key.blocks();
    let (label, der) = blocks.next()?;
    if blocks.next().is_some() {
        return None;
    }
    let (curve, ec_der) = match label {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::try_from(der).ok()?;
            if info.algorithm.oid != EC_PUBLIC_KEY {
                return None;
            }
            (info.algorithm.parameters_oid().ok(), info.private_key)
        }
        "EC PRIVATE KEY" => (None, der),
        _ => return None,
    };
    let key = sec1::EcPrivateKey::try_from(ec_der).ok()?;
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

/// Checks that a bundle is one private key and returns the public key it belongs to.
pub fn private_key_public_part(key: &PemBundle) -> Result<PublicKeyId, CredentialError> {
    let count = key.blocks().count();
    let Some((label, der)) = key.blocks().next().filter(|_| count == 1) else {
        return Err(CredentialError::BadKey {
            format: "PEM",
            reason: format!("expected one key block, found {count}"),
        });
    };
    match label {
        "PRIVATE KEY" => {
            let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| bad("PKCS#8")(e.to_string()))?;
            match info.algorithm.oid {
                RSA_ENCRYPTION => {
                    let key = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|e| bad("PKCS#8 RSA")(e.to_string()))?;
                    rsa_public_key(&key)
                }
                EC_PUBLIC_KEY => {
                    let curve = info.algorithm.parameters_oid().ok();
                    ec_public_key(curve, der, true)
                }
                other => Err(CredentialError::UnsupportedKey(format!("algorithm {other} (supported: RSA, EC P-256, EC P-384)"))),
            }
        }
        "RSA PRIVATE KEY" => {
            let key = rsa::RsaPrivateKey::from_pkcs1_der(der).map_err(|e| bad("PKCS#1 RSA")(e.to_string()))?;
            rsa_public_key(&key)
        }
        "EC PRIVATE KEY" => {
            let key = sec1::EcPrivateKey::try_from(der).map_err(|e| bad("SEC1 EC")(e.to_string()))?;
            let curve = key.parameters.and_then(|p| p.named_curve());
            ec_public_key(curve, der, false)
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

    fn pem(text: &str) -> PemBundle {
        PemBundle::parse(text, "CERTIFICATE").unwrap()
    }

    #[test]
    fn bundles_rebuild_canonical_pem_and_print_no_content() {
        let text = include_str!("../tests/data/ca.crt");
        let bundle = PemBundle::parse(&format!("comment\n{text}"), "CERTIFICATE").unwrap();
        assert_eq!(bundle.to_pem(), text);
        for (label, der) in bundle.blocks() {
            let reference = der::pem::encode_string(label, der::pem::LineEnding::LF, der).unwrap();
            assert_eq!(bundle.to_pem(), reference, "the RFC 7468 encoder agrees");
        }
        let other = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        let bundle = PemBundle::parse(&format!("{text}{other}"), "CERTIFICATE").unwrap();
        let labels: Vec<&str> = bundle.blocks().map(|(label, _)| label).collect();
        assert_eq!(labels, ["CERTIFICATE", "X509 CRL"]);
        assert_eq!(bundle.to_pem(), format!("{text}{other}"));
        let key = pem(include_str!("../tests/data/admin-ec.key"));
        assert_eq!(format!("{key:?}"), "<1 PEM block(s), 121 bytes>");
    }

    #[test]
    fn ec_keys_take_the_fast_check_and_agree_with_the_portable_one() {
        let certificate =
            single_certificate_key(&pem(include_str!("../tests/data/admin-ec.crt"))).unwrap();
        for key in [
            include_str!("../tests/data/admin-ec.key"),
            include_str!("../tests/data/admin-ec.pkcs8.key"),
        ] {
            let key = pem(key);
            assert_eq!(ec_key_matches(&key, &certificate), Some(true));
            assert_eq!(private_key_public_part(&key).unwrap(), certificate);
        }
        let other = &pem(include_str!("../tests/data/other-ec.key"));
        assert_eq!(ec_key_matches(other, &certificate), Some(false));
        assert!(!key_matches(other, &certificate).unwrap());
        let rsa =
            single_certificate_key(&pem(include_str!("../tests/data/admin-rsa.crt"))).unwrap();
        assert_eq!(
            ec_key_matches(&pem(include_str!("../tests/data/admin-rsa.key")), &rsa),
            None
        );
    }
}
