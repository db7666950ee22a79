//! Tokens that passed every check, remembered by their exact bytes ([`Remembered`]): a caller presents
//! the same token on every call for its lifetime, and checking its signature again (ES256 about 50 µs,
//! RS256 about 22 µs) would cost a call more than the rest of it. A hit is one keyed hash of the token
//! (foldhash, seeded per process), one probe and a byte-for-byte compare of the stored token, so only
//! the exact bytes of a verified token are ever answered from here; a cryptographic digest is not
//! needed for that, and hashing a kilobyte with SHA-256 cost more than the rest of the look-up.
//!
//! Only verified tokens are inserted, so a caller cannot choose what fills it (a flood of garbage only
//! probes), and it is bounded in bytes — the token's and what is remembered of it — not in entries.
//! quick_cache holds it: a sharded map with a scan-resistant eviction policy and no background work.

use std::sync::Arc;

use super::Identity;

/// What the caches know of a token, without checking a signature.
#[derive(Debug)]
pub enum Recalled {
    /// It was verified, and is still valid now.
    Known(Identity),
    /// It was verified but is no longer valid (expired, or its key or issuer is gone): refused, and
    /// forgotten.
    Refused,
    /// Not remembered: it must be checked in full.
    Unknown,
}

/// What a remembered token costs to keep, beyond its own bytes.
pub(super) trait Weighed {
    fn weight(&self) -> u64;
}

/// Verified tokens, by their bytes, bounded in bytes. Clones share the same entries.
pub(super) struct Remembered<V: ?Sized> {
    cache: Arc<quick_cache::sync::Cache<Box<str>, Arc<V>, ByBytes, foldhash::fast::RandomState>>,
}

impl<V: ?Sized> std::fmt::Debug for Remembered<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remembered").finish_non_exhaustive()
    }
}

impl<V: ?Sized> Clone for Remembered<V> {
    fn clone(&self) -> Self {
        Remembered {
            cache: Arc::clone(&self.cache),
        }
    }
}

/// An entry weighs its token's bytes plus what its value says.
#[derive(Clone)]
struct ByBytes;

impl<V: Weighed + ?Sized> quick_cache::Weighter<Box<str>, Arc<V>> for ByBytes {
    fn weight(&self, token: &Box<str>, value: &Arc<V>) -> u64 {
        (token.len() as u64).saturating_add(value.weight())
    }
}

impl<V: Weighed + ?Sized> Remembered<V> {
    /// An empty set holding at most `bytes` (tokens of about a kilobyte are expected).
    pub(super) fn new(bytes: u64) -> Self {
        let expected = usize::try_from(bytes / 1024).unwrap_or(usize::MAX).max(16);
        Remembered {
            cache: Arc::new(quick_cache::sync::Cache::with(
                expected,
                bytes,
                ByBytes,
                foldhash::fast::RandomState::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            )),
        }
    }

    /// What was remembered of exactly this token.
    pub(super) fn get(&self, token: &str) -> Option<Arc<V>> {
        self.cache.get(token)
    }

    pub(super) fn insert(&self, token: &str, value: Arc<V>) {
        self.cache.insert(Box::from(token), value);
    }

    pub(super) fn forget(&self, token: &str) {
        self.cache.remove(token);
    }

    /// Forgets every token whose value fails `keep`.
    pub(super) fn retain(&self, keep: impl Fn(&V) -> bool) {
        self.cache.retain(|_, value| keep(value));
    }

    #[cfg(test)]
    pub(super) fn contains(&self, token: &str) -> bool {
        self.cache.contains_key(token)
    }
}
