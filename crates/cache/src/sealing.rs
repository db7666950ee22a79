//! Sealed entries: AES-256-GCM (the `aes-gcm` crate) with a random 96-bit nonce, the cache key as
//! associated data (so a value moved to another key fails to open), and the key id in the entry so that
//! keys can rotate: the first key of the key file seals, every key listed opens.
//!
//! Everything read from Redis is sealed, with no exception: anyone who can write to Redis can write any
//! bytes, so an unkeyed checksum would authenticate nothing. Invalidation messages are sealed too, bound
//! to their channel name. Nothing larger than [`MAX_SEALED_BYTES`] is sealed or opened.
//!
//! Layout: `KCS1 | key id (4) | nonce (12) | ciphertext+tag`.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};

const SEALED: &[u8; 4] = b"KCS1";
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;

/// The largest sealed value written or accepted. A kubeconfig is a few KiB; its inputs are bounded
/// far below this. Anything larger read back is discarded without being opened.
pub const MAX_SEALED_BYTES: usize = 1 << 20;

/// Why a key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("line {line}: a cache key is 64 hex characters (32 bytes)")]
    BadKey { line: usize },
    #[error("no key found (one key per line: 64 hex characters; `#` starts a comment)")]
    Empty,
}

#[derive(Clone)]
struct SealingKey {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
}

/// Seals and opens cache entries. `Debug` shows key ids only.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<SealingKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|k| hex::encode(k.id)).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

impl Sealer {
    /// Reads a key file: one 64-hex-character key per line, the first one current.
    pub fn from_key_file(text: &str) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(line, &mut bytes)
                .map_err(|_| KeyFileError::BadKey { line: index + 1 })?;
            keys.push(Self::key(&bytes));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty);
        }
        Ok(Sealer { keys })
    }

    fn key(bytes: &[u8; 32]) -> SealingKey {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        SealingKey {
            id,
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*bytes)),
        }
    }

    /// The id of the key that seals new entries.
    pub fn current_key_id(&self) -> String {
        hex::encode(self.keys[0].id)
    }

    /// Encrypts `payload` bound to `key` (the cache key).
    /// `None` when the sealed value would exceed [`MAX_SEALED_BYTES`].
    pub fn seal(&self, key: &str, payload: &[u8]) -> Option<Vec<u8>> {
        if payload.len() + SEALED.len() + KEY_ID_LEN + NONCE_LEN + 16 > MAX_SEALED_BYTES {
            return None;
        }
        let current = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: payload,
                    aad: key.as_bytes(),
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(4 + KEY_ID_LEN + NONCE_LEN + ciphertext.len());
        out.extend_from_slice(SEALED);
        out.extend_from_slice(&current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Some(out)
    }

    fn open_sealed(&self, key: &str, body: &[u8]) -> Option<Vec<u8>> {
        if body.len() < KEY_ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = body.split_at(KEY_ID_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let sealing_key = self.keys.iter().find(|k| k.id == id)?;
        sealing_key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: key.as_bytes(),
                },
            )
            .ok()
    }
}

/// Opens a stored value: `Some` only for a value sealed under `key` by one of our keys.
pub fn open(sealer: &Sealer, key: &str, stored: &[u8]) -> Option<Vec<u8>> {
    if stored.len() > MAX_SEALED_BYTES {
        return None;
    }
    sealer.open_sealed(key, stored.strip_prefix(SEALED.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn seal_open_round_trip_and_binding_to_the_key() {
        let sealer = Sealer::from_key_file(KEY_A).unwrap();
        let sealed = sealer.seal("k1", b"secret bytes").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(open(&sealer, "k1", &sealed), Some(b"secret bytes".to_vec()));
        assert_eq!(open(&sealer, "k2", &sealed), None, "moved to another key");
        let other = Sealer::from_key_file(KEY_B).unwrap();
        assert_eq!(open(&other, "k1", &sealed), None, "another key, no opening");
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_detected() {
        let sealer = Sealer::from_key_file(KEY_A).unwrap();
        let sealed = sealer.seal("k", b"payload").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(open(&sealer, "k", &bad), None, "byte {i}");
        }
        for len in 0..sealed.len() {
            assert_eq!(open(&sealer, "k", &sealed[..len]), None, "len {len}");
        }
    }

    #[test]
    fn rotation_opens_with_older_keys() {
        let old = Sealer::from_key_file(KEY_A).unwrap();
        let sealed = old.seal("k", b"x").unwrap();
        let rotated =
            Sealer::from_key_file(&format!("# new key first\n{KEY_B}\n{KEY_A}\n")).unwrap();
        assert_eq!(open(&rotated, "k", &sealed), Some(b"x".to_vec()));
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        let dropped = Sealer::from_key_file(KEY_B).unwrap();
        assert_eq!(open(&dropped, "k", &sealed), None);
    }

    #[test]
    fn unkeyed_and_oversized_values_never_open() {
        let sealer = Sealer::from_key_file(KEY_A).unwrap();
        // The checksummed plain layout earlier versions wrote: anyone could forge it.
        let mut forged = b"KCP1".to_vec();
        forged.extend_from_slice(&Sha256::digest(b"payload"));
        forged.extend_from_slice(b"payload");
        assert_eq!(open(&sealer, "k", &forged), None);
        assert_eq!(sealer.seal("k", &vec![0; MAX_SEALED_BYTES]), None);
        let mut huge = sealer.seal("k", b"x").unwrap();
        huge.resize(MAX_SEALED_BYTES + 1, 0);
        assert_eq!(open(&sealer, "k", &huge), None);
    }

    #[test]
    fn bad_key_files() {
        assert_eq!(
            Sealer::from_key_file("abc").unwrap_err(),
            KeyFileError::BadKey { line: 1 }
        );
        assert_eq!(
            Sealer::from_key_file("# only a comment\n").unwrap_err(),
            KeyFileError::Empty
        );
    }
}
