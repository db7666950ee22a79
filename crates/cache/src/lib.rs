//! Cache for rendered kubeconfigs: a bounded in-process tier (`quick_cache`, bounded by bytes) in front of an
//! optional Redis tier (standalone through a `ConnectionManager`, or Redis Cluster), with sealed entries.
//!
//! The server's core uses it only through [`AssetCache`], a narrow trait of our own. The cache never
//! decides access: the core decides first and asks the cache only for assets it will serve. Keys are
//! derived from everything the bytes depend on ([`CacheKey`]), so a change can never serve old bytes;
//! the TTL is only a backstop. Redis is never allowed to fail a request: every call has a short deadline,
//! a down Redis is skipped (with one probe per second) and logged once per state change, and anything
//! read back that does not authenticate is discarded and re-rendered. Redis is used only with a
//! [`Sealer`]: every value and every invalidation message is authenticated with a key only the
//! replicas hold.
//!
//! This crate depends on no other workspace crate.
//!
//! - [`tiered`]: [`TieredCache`], the two tiers together.
//! - [`remote`]: the Redis tier, its fault handling and cross-replica invalidation (pub/sub).
//! - [`sealing`]: AES-256-GCM sealing of stored values, key rotation.

pub mod remote;
pub mod sealing;
pub mod tiered;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use remote::{RedisTarget, Remote, Sealed};
pub use sealing::{KeyFileError, Sealer};
pub use tiered::{CacheConfig, RedisConfig, TieredCache};

/// A cache key built from everything the cached bytes depend on: the cluster, which file, the
/// revision (a digest of the inputs) and the renderer's format version.
///
/// Held as its parts, not as text: a cached download builds one and the in-process tier hashes and
/// compares it, which costs a pointer copy and some 60 bytes of hashing rather than formatting
/// 64 hex digits into a new string. The text form ([`CacheKey::text`]: what Redis stores under, and
/// what a sealed value is bound to) is made only on the way to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    cluster: Arc<str>,
    variant: &'static str,
    revision: [u8; 32],
    format_version: u32,
}

impl std::hash::Hash for CacheKey {
    /// The revision digest is a digest of the cluster's inputs: hashing it (and the variant) spreads
    /// keys as well as hashing every part would, in one pass over 32 bytes. Equality still compares
    /// every part.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.revision);
        state.write(self.variant.as_bytes());
    }
}

/// The prefix of every key's text.
const PREFIX: &str = "kubeconfigd:v1";

impl CacheKey {
    /// `cluster`: the cluster uid; `variant`: which file (e.g. `kubeconfig-frp`); `revision`: a digest of
    /// the inputs; `format_version`: the renderer's format version.
    pub fn new(
        cluster: Arc<str>,
        variant: &'static str,
        revision: [u8; 32],
        format_version: u32,
    ) -> Self {
        CacheKey {
            cluster,
            variant,
            revision,
            format_version,
        }
    }

    /// The cluster uid.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The key as Redis stores it: `kubeconfigd:v1:<cluster>:<variant>:<revision hex>:f<format>`.
    pub fn text(&self) -> String {
        let mut revision = [0u8; 64];
        // 64 bytes is exactly the room 32 bytes need.
        let _ = hex::encode_to_slice(self.revision, &mut revision);
        let revision = std::str::from_utf8(&revision).unwrap_or_default();
        let mut text = String::with_capacity(
            PREFIX.len() + self.cluster.len() + self.variant.len() + revision.len() + 16,
        );
        for piece in [PREFIX, ":", &self.cluster, ":", self.variant, ":", revision] {
            text.push_str(piece);
        }
        text.push_str(":f");
        text.push_str(itoa::Buffer::new().format(self.format_version));
        text
    }

    /// About what the key costs to keep in the in-process tier, in bytes.
    fn weight(&self) -> u32 {
        u32::try_from(std::mem::size_of::<Self>() + self.cluster.len()).unwrap_or(u32::MAX)
    }
}

/// What the cache stores: a value that can be encoded and weighed. Everything that reaches Redis is
/// sealed, so no value needs to say whether it carries a secret.
pub trait Cacheable: Send + Sync + Sized + 'static {
    /// Bytes for the Redis tier.
    fn encode(&self) -> Vec<u8>;
    /// Decodes bytes read back; `None` when they are not a valid value.
    fn decode(bytes: &[u8]) -> Option<Self>;
    /// Approximate in-memory size in bytes.
    fn weight(&self) -> u32;
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    Memory,
    Redis,
    Render,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
            Tier::Render => "render",
        }
    }
}

/// Counters of the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub memory_hits: u64,
    pub redis_hits: u64,
    pub renders: u64,
    /// Misses that waited for a concurrent miss of the same key instead of reading or rendering.
    pub coalesced: u64,
    pub redis_errors: u64,
    /// Values read from Redis that failed to open or decode and were re-rendered.
    pub discarded: u64,
    pub invalidations_sent: u64,
    pub invalidations_received: u64,
    /// Invalidation messages discarded because they did not authenticate.
    pub forged_invalidations: u64,
    pub memory_entries: u64,
    /// Whether the Redis tier is configured and currently usable.
    pub redis_up: bool,
}

/// A boxed future, so that the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The port the server's core uses.
pub trait AssetCache<V: Cacheable>: Send + Sync {
    /// The cached value for `key`, or `render()`'s, stored on the way out.
    fn get_or_render<'a>(
        &'a self,
        key: &'a CacheKey,
        render: Box<dyn FnOnce() -> V + Send + 'a>,
    ) -> BoxFuture<'a, (Arc<V>, Tier)>;
    /// The in-process tier's value for `key`, counted as a hit when there is one: a cached download
    /// then needs neither a boxed future nor a boxed render closure. A cache without an in-process
    /// tier answers `None` and every lookup goes through [`AssetCache::get_or_render`].
    fn cached(&self, _key: &CacheKey) -> Option<Arc<V>> {
        None
    }
    /// Drops the in-process entries of these clusters here, and asks other replicas to do the same.
    fn invalidate_clusters(&self, clusters: &[String]);
    /// Current counters.
    fn stats(&self) -> CacheStats;
}
