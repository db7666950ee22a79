//! [`TieredCache`]: the in-process tier in front of the Redis tier.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::remote::{RedisTarget, Remote};
use crate::sealing::{self, Sealer};
use crate::{AssetCache, BoxFuture, CacheKey, CacheStats, Cacheable, Tier};

/// How the cache is set up.
#[derive(Debug)]
pub struct CacheConfig {
    /// In-process tier size in bytes; 0 disables the tier.
    pub memory_bytes: u64,
    /// Backstop expiry of entries in both tiers.
    pub ttl: Duration,
    /// The Redis tier, if any.
    pub redis: Option<RedisConfig>,
}

/// The Redis tier's settings. A sealer is part of them: Redis is never used without one, because
/// anyone who can write to Redis could otherwise choose what we serve.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub target: RedisTarget,
    /// Deadline of every Redis call.
    pub timeout: Duration,
    /// The CA (PEM) `rediss://` servers are verified against; `None` uses the built-in web roots.
    pub ca: Option<Vec<u8>>,
    /// Seals every value and invalidation message.
    pub sealer: Sealer,
}

#[derive(Debug, Default)]
struct Counters {
    memory_hits: AtomicU64,
    redis_hits: AtomicU64,
    renders: AtomicU64,
    discarded: AtomicU64,
    coalesced: AtomicU64,
}

/// A miss in progress: its outcome once the first caller has it.
type Flight<V> = Arc<tokio::sync::OnceCell<(Arc<V>, Tier)>>;

/// The least each shard of the in-process tier holds (or the whole tier, when it is smaller): an
/// entry heavier than its shard's part is never held, and a rendered file stays well under this (a
/// cluster file is at most 1 MiB).
const MIN_SHARD_BYTES: u64 = 4 << 20;

/// An in-process entry: the value, and when the backstop expiry ends it (`None`: a TTL too long to
/// add to the clock).
struct Held<V> {
    value: Arc<V>,
    expires: Option<Instant>,
}

impl<V> Clone for Held<V> {
    fn clone(&self) -> Self {
        Held {
            value: Arc::clone(&self.value),
            expires: self.expires,
        }
    }
}

/// An in-process entry weighs its key and its value ([`Cacheable::weight`]).
#[derive(Debug, Clone)]
struct ByWeight;

impl<V: Cacheable> quick_cache::Weighter<CacheKey, Held<V>> for ByWeight {
    fn weight(&self, key: &CacheKey, held: &Held<V>) -> u64 {
        u64::from(key.weight()) + u64::from(held.value.weight())
    }
}

/// The two tiers together.
pub struct TieredCache<V: Cacheable> {
    /// quick_cache: a sharded map bounded in bytes with a scan-resistant eviction policy (S3-FIFO)
    /// and no background work; a hit is a hash, a shard's read lock and a compare (moka's
    /// bookkeeping on every hit was about 0.5k instructions of a cached download). Hashed with
    /// foldhash (seeded per process) rather than SipHash: the keys are ours (built from a served
    /// cluster's uid and revision).
    memory:
        Option<quick_cache::sync::Cache<CacheKey, Held<V>, ByWeight, foldhash::fast::RandomState>>,
    remote: Option<Arc<Remote>>,
    ttl: Duration,
    counters: Counters,
    /// The warning about discarded values, at most once per interval.
    discarded_warning: kubeconfig_logline::Throttle,
    /// Misses in progress, by key.
    flights: std::sync::Mutex<std::collections::HashMap<CacheKey, Flight<V>>>,
}

impl<V: Cacheable> std::fmt::Debug for TieredCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("memory", &self.memory.is_some())
            .field("redis", &self.remote.is_some())
            .finish()
    }
}

impl<V: Cacheable> TieredCache<V> {
    /// Builds the tiers; the Redis tier connects in the background (a down Redis does not delay start).
    /// Must be called within a Tokio runtime when Redis is configured.
    pub fn new(config: CacheConfig) -> Arc<Self> {
        let memory = (config.memory_bytes > 0).then(|| {
            // Sized for entries of a few kilobytes (a kubeconfig with its key is 2-6 KiB). Each shard
            // holds an equal part of the bytes and refuses an entry heavier than that part: shards of
            // at least `MIN_SHARD_BYTES` (16 at most) keep any file the inventory can hold cacheable.
            let expected = usize::try_from(config.memory_bytes / 4096)
                .unwrap_or(usize::MAX)
                .max(16);
            let shards = usize::try_from(config.memory_bytes / MIN_SHARD_BYTES)
                .unwrap_or(usize::MAX)
                .clamp(1, 16);
            let options = quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(expected)
                .weight_capacity(config.memory_bytes)
                .shards(shards)
                .build();
            match options {
                Ok(options) => quick_cache::sync::Cache::with_options(
                    options,
                    ByWeight,
                    foldhash::fast::RandomState::default(),
                    quick_cache::sync::DefaultLifecycle::default(),
                ),
                // Both sizes are set above; kept total rather than unwrapped.
                Err(_) => quick_cache::sync::Cache::with(
                    expected,
                    config.memory_bytes,
                    ByWeight,
                    foldhash::fast::RandomState::default(),
                    quick_cache::sync::DefaultLifecycle::default(),
                ),
            }
        });
        Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            let weak = weak.clone();
            let remote = config.redis.map(|redis| {
                Remote::start(
                    redis.target,
                    redis.ca,
                    redis.timeout,
                    Arc::new(redis.sealer),
                    Arc::new(move |clusters: Vec<String>| {
                        if let Some(cache) = weak.upgrade() {
                            cache.drop_local(&clusters);
                        }
                    }),
                )
            });
            TieredCache {
                memory,
                remote,
                ttl: config.ttl,
                counters: Counters::default(),
                discarded_warning: kubeconfig_logline::Throttle::default(),
                flights: std::sync::Mutex::default(),
            }
        })
    }

    /// The Redis tier, when configured: for other sealed records kept beside the cache.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    fn drop_local(&self, clusters: &[String]) {
        let Some(memory) = &self.memory else { return };
        if clusters.is_empty() {
            return;
        }
        // One pass over the tier for the whole batch.
        let clusters: std::collections::HashSet<&str> =
            clusters.iter().map(String::as_str).collect();
        memory.retain(|key, _| !clusters.contains(key.cluster()));
    }

    /// Keeps `value` in the in-process tier, until the backstop expiry at the latest.
    fn hold(&self, key: &CacheKey, value: &Arc<V>) {
        if let Some(memory) = &self.memory {
            memory.insert(
                key.clone(),
                Held {
                    value: Arc::clone(value),
                    expires: Instant::now().checked_add(self.ttl),
                },
            );
        }
    }

    async fn read_redis(&self, remote: &Arc<Remote>, key: &CacheKey) -> Option<V> {
        let text = key.text();
        let stored = remote.get(&text).await?;
        // Only a value sealed by a replica under this very key is decoded at all.
        let value =
            sealing::open(remote.sealer(), &text, &stored).and_then(|payload| V::decode(&payload));
        if value.is_none() {
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
            // Whoever can write to Redis can plant one per key: throttled, every one counted.
            if let Some(held_back) = self.discarded_warning.due() {
                tracing::warn!(
                    key = text.as_str(),
                    held_back,
                    "discarded a cached value that did not authenticate or decode; re-rendering"
                );
            }
        }
        value
    }

    /// A miss: the Redis tier, else a render (stored in both tiers).
    async fn fetch_or_render(
        &self,
        key: &CacheKey,
        render: Box<dyn FnOnce() -> V + Send + '_>,
    ) -> (Arc<V>, Tier) {
        let from_redis = match &self.remote {
            Some(remote) => self.read_redis(remote, key).await,
            None => None,
        };
        if let Some(value) = from_redis {
            self.counters.redis_hits.fetch_add(1, Ordering::Relaxed);
            let value = Arc::new(value);
            self.hold(key, &value);
            return (value, Tier::Redis);
        }
        let value = Arc::new(render());
        self.counters.renders.fetch_add(1, Ordering::Relaxed);
        self.hold(key, &value);
        if let Some(remote) = &self.remote {
            self.store_in_redis(remote, key, &value);
        }
        (value, Tier::Render)
    }

    fn store_in_redis(&self, remote: &Arc<Remote>, key: &CacheKey, value: &V) {
        let text = key.text();
        if let Some(stored) = remote.sealer().seal(&text, &value.encode()) {
            remote.set_in_background(text, stored, self.ttl);
        }
    }
}

impl<V: Cacheable> AssetCache<V> for TieredCache<V> {
    fn get_or_render<'a>(
        &'a self,
        key: &'a CacheKey,
        render: Box<dyn FnOnce() -> V + Send + 'a>,
    ) -> BoxFuture<'a, (Arc<V>, Tier)> {
        Box::pin(async move {
            if let Some(value) = self.cached(key) {
                return (value, Tier::Memory);
            }
            // Single flight: concurrent misses of one key wait for the first one's Redis read or
            // render instead of each doing their own.
            let flight = {
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                Arc::clone(flights.entry(key.clone()).or_default())
            };
            let mut led = false;
            let outcome = flight
                .get_or_init(|| {
                    led = true;
                    self.fetch_or_render(key, render)
                })
                .await
                .clone();
            if led {
                let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
                if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                    flights.remove(key);
                }
            } else {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            outcome
        })
    }

    fn cached(&self, key: &CacheKey) -> Option<Arc<V>> {
        let memory = self.memory.as_ref()?;
        let held = memory.get(key)?;
        if held
            .expires
            .is_some_and(|expires| expires <= Instant::now())
        {
            // Expired: gone, unless another call has just put a fresh one in its place.
            memory.remove_if(key, |held| {
                held.expires
                    .is_some_and(|expires| expires <= Instant::now())
            });
            return None;
        }
        self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
        Some(held.value)
    }

    fn invalidate_clusters(&self, clusters: &[String]) {
        if clusters.is_empty() {
            return;
        }
        self.drop_local(clusters);
        if let Some(remote) = &self.remote {
            remote.publish_in_background(clusters.to_vec());
        }
    }

    fn stats(&self) -> CacheStats {
        let remote = self
            .remote
            .as_ref()
            .map(|r| r.counters())
            .unwrap_or_default();
        CacheStats {
            memory_hits: self.counters.memory_hits.load(Ordering::Relaxed),
            redis_hits: self.counters.redis_hits.load(Ordering::Relaxed),
            renders: self.counters.renders.load(Ordering::Relaxed),
            coalesced: self.counters.coalesced.load(Ordering::Relaxed),
            discarded: self.counters.discarded.load(Ordering::Relaxed),
            redis_errors: remote.errors,
            forged_invalidations: remote.forged,
            invalidations_sent: remote.published,
            invalidations_received: remote.received,
            memory_entries: self.memory.as_ref().map(|m| m.len() as u64).unwrap_or(0),
            redis_up: remote.up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Blob(Vec<u8>, bool);

    impl Cacheable for Blob {
        fn encode(&self) -> Vec<u8> {
            let mut out = vec![u8::from(self.1)];
            out.extend_from_slice(&self.0);
            out
        }
        fn decode(bytes: &[u8]) -> Option<Self> {
            let (flag, rest) = bytes.split_first()?;
            Some(Blob(rest.to_vec(), *flag == 1))
        }
        fn weight(&self) -> u32 {
            self.0.len() as u32
        }
    }

    fn memory_only(bytes: u64) -> Arc<TieredCache<Blob>> {
        TieredCache::new(CacheConfig {
            memory_bytes: bytes,
            ttl: Duration::from_secs(60),
            redis: None,
        })
    }

    #[tokio::test]
    async fn memory_hit_after_render_and_invalidation_by_cluster() {
        let cache = memory_only(1 << 20);
        let key = CacheKey::new("c1".into(), "kubeconfig", [7; 32], 1);
        let (_, tier) = cache
            .get_or_render(&key, Box::new(|| Blob(b"x".to_vec(), false)))
            .await;
        assert_eq!(tier, Tier::Render);
        let (value, tier) = cache.get_or_render(&key, Box::new(|| unreachable!())).await;
        assert_eq!((value.0.as_slice(), tier), (b"x".as_slice(), Tier::Memory));
        cache.invalidate_clusters(&["c2".to_owned()]);
        assert_eq!(
            cache
                .get_or_render(&key, Box::new(|| unreachable!()))
                .await
                .1,
            Tier::Memory,
            "other cluster untouched"
        );
        cache.invalidate_clusters(&["c1".to_owned()]);
        assert_eq!(
            cache
                .get_or_render(&key, Box::new(|| Blob(b"y".to_vec(), false)))
                .await
                .1,
            Tier::Render
        );
        let stats = cache.stats();
        assert_eq!(
            (stats.memory_hits, stats.renders, stats.redis_up),
            (2, 2, false)
        );
    }

    #[tokio::test]
    async fn an_entry_past_its_expiry_is_rendered_again() {
        // A TTL of zero: every entry has expired by the time it is asked for.
        let cache = TieredCache::new(CacheConfig {
            memory_bytes: 1 << 20,
            ttl: Duration::ZERO,
            redis: None,
        });
        let key = CacheKey::new("c1".into(), "kubeconfig", [7; 32], 1);
        for _ in 0..3 {
            let (_, tier) = cache
                .get_or_render(&key, Box::new(|| Blob(b"x".to_vec(), false)))
                .await;
            assert_eq!(tier, Tier::Render);
        }
        let stats = cache.stats();
        assert_eq!((stats.memory_hits, stats.renders), (0, 3));
        assert!(stats.memory_entries <= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn the_memory_tier_holds_no_more_than_its_bytes() {
        let cache = memory_only(64 * 1024);
        for cluster in 0..200 {
            let key = CacheKey::new(format!("c{cluster}").into(), "kubeconfig", [7; 32], 1);
            cache
                .get_or_render(&key, Box::new(|| Blob(vec![0; 4096], false)))
                .await;
        }
        let held = cache.memory.as_ref().expect("a memory tier").weight();
        assert!(held <= 64 * 1024, "{held} bytes held");
        // Something is held: the tier works at all.
        assert!(cache.stats().memory_entries > 0);
    }

    #[tokio::test]
    async fn a_large_file_is_held() {
        // 8 MiB in shards of 4 MiB: a 1 MiB file is held (in quick_cache's default shards, four per
        // core, each held 1 MiB or less here, and refused it).
        let cache = memory_only(8 << 20);
        let key = CacheKey::new("c1".into(), "kubeconfig", [7; 32], 1);
        for _ in 0..2 {
            cache
                .get_or_render(&key, Box::new(|| Blob(vec![0; 1 << 20], false)))
                .await;
        }
        assert_eq!(cache.stats().memory_hits, 1);
    }

    #[tokio::test]
    async fn a_disabled_memory_tier_renders_every_time() {
        let cache = memory_only(0);
        let key = CacheKey::new("c1".into(), "kubeconfig", [7; 32], 1);
        for _ in 0..3 {
            assert_eq!(
                cache
                    .get_or_render(&key, Box::new(|| Blob(vec![1], true)))
                    .await
                    .1,
                Tier::Render
            );
        }
    }

    /// N concurrent misses of one key: one render, N - 1 callers served by it. (The render waits until
    /// every caller has asked, so without single flight each would render.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_of_one_key_render_once() {
        use std::sync::atomic::AtomicUsize;
        const CALLERS: usize = 8;
        let cache = memory_only(0);
        let asked = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let cache = Arc::clone(&cache);
                let asked = Arc::clone(&asked);
                tokio::spawn(async move {
                    let key = CacheKey::new("c1".into(), "kubeconfig", [7; 32], 1);
                    asked.fetch_add(1, Ordering::SeqCst);
                    let render = {
                        let asked = Arc::clone(&asked);
                        move || {
                            let deadline = std::time::Instant::now() + Duration::from_secs(5);
                            while asked.load(Ordering::SeqCst) < CALLERS
                                && std::time::Instant::now() < deadline
                            {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            // Let the last caller reach the flight.
                            std::thread::sleep(Duration::from_millis(100));
                            Blob(b"once".to_vec(), false)
                        }
                    };
                    cache.get_or_render(&key, Box::new(render)).await
                })
            })
            .collect();
        for task in tasks {
            let (value, _) = task.await.expect("task");
            assert_eq!(value.0, b"once");
        }
        let stats = cache.stats();
        assert_eq!((stats.renders, stats.coalesced), (1, CALLERS as u64 - 1));
        // Nothing left in flight: the next miss renders again.
        let key = CacheKey::new("c1".into(), "kubeconfig", [7; 32], 1);
        let (_, tier) = cache
            .get_or_render(&key, Box::new(|| Blob(b"again".to_vec(), false)))
            .await;
        assert_eq!((tier, cache.stats().renders), (Tier::Render, 2));
    }

    #[test]
    fn keys_carry_every_input() {
        let a = CacheKey::new("c1".into(), "kubeconfig-frp", [1; 32], 1);
        assert_ne!(
            a,
            CacheKey::new("c1".into(), "kubeconfig-direct", [1; 32], 1)
        );
        assert_ne!(a, CacheKey::new("c1".into(), "kubeconfig-frp", [2; 32], 1));
        assert_ne!(a, CacheKey::new("c1".into(), "kubeconfig-frp", [1; 32], 2));
        assert_eq!(
            a.text(),
            format!("kubeconfigd:v1:c1:kubeconfig-frp:{}:f1", "01".repeat(32))
        );
        assert_ne!(a, CacheKey::new("c2".into(), "kubeconfig-frp", [1; 32], 1));
    }
}
