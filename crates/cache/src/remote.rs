//! The Redis tier: standalone (`redis://`, through a `ConnectionManager` that reconnects by itself) or
//! Redis Cluster (cluster-async). Every call has a deadline; errors are counted and logged once per
//! state change; while Redis is down, calls skip it and one probe per second checks whether it is back.
//! Invalidations travel on a pub/sub channel so every replica drops its in-process entries; they are
//! sealed with the cache key, so a message anyone else publishes is discarded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use tokio_stream::StreamExt as _;

use crate::sealing::{self, MAX_SEALED_BYTES, Sealer};

/// The pub/sub channel invalidations travel on.
pub const INVALIDATION_CHANNEL: &str = "kubeconfigd:v1:invalidate";

/// How long Redis is skipped after it is marked down before the next probe.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of a call whose answer the caller cannot do without (a credential ledger record, read or
/// written): longer than a cache lookup's, which has a fallback (rendering) and so gives up early.
/// On a busy machine a healthy Redis answers a cache lookup late now and then; that must not refuse
/// a mint.
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed calls that mark Redis down (one slow reply is not an outage).
const FAILURES_TO_MARK_DOWN: u64 = 3;
/// A Redis that keeps flapping is reported at most this often; the suppressed changes are counted.
const STATE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Whether calls skip Redis now, given when the skip ends: while it lasts, yes; once it is over, no for
/// exactly this caller (the probe), while the others keep skipping until the probe reports.
fn skipping(skip_until: &Mutex<Option<Instant>>) -> bool {
    let Ok(mut skip) = skip_until.lock() else {
        return false;
    };
    match *skip {
        Some(until) if Instant::now() < until => true,
        Some(_) => {
            *skip = Some(Instant::now() + PROBE_INTERVAL);
            false
        }
        None => false,
    }
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port[/db]` or `rediss://…` (TLS).
    Standalone(String),
    /// Seed node URLs of a Redis Cluster.
    Cluster(Vec<String>),
}

/// The CA (PEM) that `rediss://` servers are verified against; `None` uses the built-in web roots.
pub type RedisCa = Option<Vec<u8>>;

fn tls_certificates(ca: &RedisCa) -> Option<redis::TlsCertificates> {
    ca.as_ref().map(|pem| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    })
}

fn client(url: &str, ca: &RedisCa) -> redis::RedisResult<redis::Client> {
    match tls_certificates(ca) {
        Some(certificates) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(url, certificates)
        }
        _ => redis::Client::open(url),
    }
}

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Counters of the Redis tier.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteCounters {
    pub errors: u64,
    pub published: u64,
    pub received: u64,
    /// Invalidation messages that did not authenticate (forged, or sealed with a key we do not hold).
    pub forged: u64,
    pub up: bool,
}

type Invalidate = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// What reading a sealed value found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    Found(Vec<u8>),
    Missing,
    /// Bytes are stored there that did not authenticate: they are not ours.
    Forged,
    /// Redis is down or did not answer in time.
    Unreachable,
}

/// The Redis tier.
pub struct Remote {
    target: RedisTarget,
    ca: RedisCa,
    /// Set while a connect loop runs.
    connecting: AtomicBool,
    connection: Mutex<Option<Connection>>,
    timeout: Duration,
    up: AtomicBool,
    skip_until: Mutex<Option<Instant>>,
    /// Until when durable calls fail at once, after one failed (their own state: a lookup that was
    /// merely late does not refuse a mint).
    durable_skip_until: Mutex<Option<Instant>>,
    /// Durable calls failed in a row.
    durable_failures: AtomicU64,
    /// When the last "unavailable" line was logged, and how many state changes were not logged since.
    down_warning: kubeconfig_logline::Throttle,
    errors: AtomicU64,
    consecutive_failures: AtomicU64,
    /// Bumped each time Redis is marked down, so that a call begun before cannot mark it up again.
    down_epoch: AtomicU64,
    published: AtomicU64,
    received: AtomicU64,
    forged: AtomicU64,
    instance: String,
    sealer: Arc<Sealer>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn instance_id() -> String {
    use sha2::Digest as _;
    let seed = format!(
        "{}:{:?}:{:?}",
        std::process::id(),
        Instant::now(),
        std::thread::current().id()
    );
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
}

impl Remote {
    /// Starts connecting (in the background) and listening for invalidations.
    pub fn start(
        target: RedisTarget,
        ca: RedisCa,
        timeout: Duration,
        sealer: Arc<Sealer>,
        on_invalidate: Invalidate,
    ) -> Arc<Self> {
        // rustls needs a process-wide crypto provider for rediss://; an already installed one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let remote = Arc::new(Remote {
            target: target.clone(),
            ca,
            connecting: AtomicBool::new(true),
            connection: Mutex::new(None),
            timeout,
            up: AtomicBool::new(false),
            skip_until: Mutex::new(None),
            durable_skip_until: Mutex::new(None),
            durable_failures: AtomicU64::new(0),
            down_warning: kubeconfig_logline::Throttle::every(STATE_LOG_INTERVAL),
            errors: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            down_epoch: AtomicU64::new(0),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            instance: instance_id(),
            sealer,
        });
        let connector = Arc::clone(&remote);
        tokio::spawn(async move { connector.connect_loop().await });
        let subscriber = Arc::clone(&remote);
        tokio::spawn(async move { subscriber.subscribe_loop(target, on_invalidate).await });
        remote
    }

    async fn connect(
        target: &RedisTarget,
        ca: &RedisCa,
        timeout: Duration,
    ) -> redis::RedisResult<Connection> {
        let connect_timeout = Duration::from_secs(2);
        match target {
            RedisTarget::Standalone(url) => {
                let client = client(url, ca)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout.max(DURABLE_TIMEOUT)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Connection::Standalone(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone());
                if let Some(certificates) = tls_certificates(ca) {
                    builder = builder.certs(certificates);
                }
                let client = builder
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout.max(DURABLE_TIMEOUT))
                    .retries(3)
                    .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }

    async fn connect_loop(self: Arc<Self>) {
        let mut logged = false;
        loop {
            match Self::connect(&self.target, &self.ca, self.timeout).await {
                Ok(connection) => {
                    if let Ok(mut slot) = self.connection.lock() {
                        *slot = Some(connection);
                    }
                    self.connecting.store(false, Ordering::Relaxed);
                    self.mark_up();
                    return;
                }
                Err(error) => {
                    if !logged {
                        tracing::warn!(%error, "redis unreachable; serving from the in-process tier and rendering until it is back");
                        logged = true;
                    }
                    // Never "up" without a connection.
                    self.up.store(false, Ordering::Relaxed);
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(PROBE_INTERVAL).await;
                }
            }
        }
    }

    fn mark_up(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) && self.down_warning.quiet() {
            tracing::info!("redis available: using the redis tier");
        }
        if let Ok(mut skip) = self.skip_until.lock() {
            *skip = None;
        }
    }

    fn mark_down(self: &Arc<Self>, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_TO_MARK_DOWN && self.up.load(Ordering::Relaxed) {
            return;
        }
        if self.up.swap(false, Ordering::Relaxed) {
            self.down_epoch.fetch_add(1, Ordering::Relaxed);
            self.reconnect_cluster();
            if let Some(suppressed) = self.down_warning.due() {
                tracing::warn!(
                    error,
                    suppressed_state_changes = suppressed,
                    "redis unavailable: rendering directly until it is back"
                );
            }
        }
        if let Ok(mut skip) = self.skip_until.lock() {
            *skip = Some(Instant::now() + PROBE_INTERVAL);
        }
    }

    /// The connection to use now, or `None` while Redis is being skipped.
    fn usable(&self) -> Option<Connection> {
        if skipping(&self.skip_until) {
            return None;
        }
        self.connection.lock().ok().and_then(|c| c.clone())
    }

    /// Replaces a cluster connection that failed: the cluster client does not recover by itself from
    /// every node going away. (A standalone `ConnectionManager` reconnects on its own.)
    fn reconnect_cluster(self: &Arc<Self>) {
        if !matches!(self.target, RedisTarget::Cluster(_))
            || self.connecting.swap(true, Ordering::Relaxed)
        {
            return;
        }
        if let Ok(mut slot) = self.connection.lock() {
            *slot = None;
        }
        let remote = Arc::clone(self);
        tokio::spawn(async move { remote.connect_loop().await });
    }

    async fn query<T: redis::FromRedisValue>(self: &Arc<Self>, command: redis::Cmd) -> Option<T> {
        let connection = self.usable()?;
        self.query_on(connection, command, self.timeout).await
    }

    /// A call the caller cannot do without: it is made even while lookups skip a Redis marked down
    /// (an answer marks it up again), with the longer [`DURABLE_TIMEOUT`]. It still needs a
    /// connection: with none (Redis unreachable since the start), it fails at once; and once three
    /// durable calls in a row failed, the next ones fail at once for a second but for one probe.
    async fn query_durable<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        command: redis::Cmd,
    ) -> Option<T> {
        // After durable calls failed, the others fail at once until the next probe (one call a
        // second goes through): a Redis that is really gone holds no request for the whole deadline.
        if skipping(&self.durable_skip_until) {
            return None;
        }
        let deadline = self.timeout.max(DURABLE_TIMEOUT);
        let mut answer = Err(false);
        // A failed call (a connection being replaced, a cluster slot moving) is made once more, on
        // the connection as it is then; a late one is not.
        for _ in 0..2 {
            let connection = self.connection.lock().ok().and_then(|c| c.clone())?;
            answer = self
                .query_telling(connection, command.clone(), deadline)
                .await;
            if !matches!(answer, Err(false)) {
                break;
            }
        }
        // As for lookups, one failure is not an outage: the skip starts at the third in a row.
        let failures = if answer.is_ok() {
            self.durable_failures.store(0, Ordering::Relaxed);
            0
        } else {
            self.durable_failures.fetch_add(1, Ordering::Relaxed) + 1
        };
        if let Ok(mut skip) = self.durable_skip_until.lock() {
            *skip = (failures >= FAILURES_TO_MARK_DOWN).then(|| Instant::now() + PROBE_INTERVAL);
        }
        answer.ok()
    }

    async fn query_on<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        connection: Connection,
        command: redis::Cmd,
        deadline: Duration,
    ) -> Option<T> {
        self.query_telling(connection, command, deadline).await.ok()
    }

    /// [`Remote::query_on`], telling a late answer (`Err(true)`) from a failed one (`Err(false)`).
    async fn query_telling<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        connection: Connection,
        command: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, bool> {
        let epoch = self.down_epoch.load(Ordering::Relaxed);
        let call = async {
            match connection {
                Connection::Standalone(mut c) => command.query_async::<T>(&mut c).await,
                Connection::Cluster(mut c) => command.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(value)) => {
                if epoch == self.down_epoch.load(Ordering::Relaxed) {
                    self.mark_up();
                }
                Ok(value)
            }
            Ok(Err(error)) => {
                // Marking down (after consecutive failures) also replaces a cluster connection.
                self.mark_down(&error.to_string());
                Err(false)
            }
            Err(_) => {
                self.mark_down("timed out");
                Err(true)
            }
        }
    }

    /// The sealer every value and message goes through.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Reads a value; `None` on a miss, an error or a timeout. At most one byte more than
    /// [`MAX_SEALED_BYTES`] is transferred (`GETRANGE`), so a planted giant value costs nothing; the
    /// caller discards what is longer. An empty value is a miss (`GETRANGE` cannot tell them apart, and
    /// we never write one).
    pub async fn get(self: &Arc<Self>, key: &str) -> Option<Vec<u8>> {
        self.query::<Vec<u8>>(
            redis::cmd("GETRANGE")
                .arg(key)
                .arg(0)
                .arg(MAX_SEALED_BYTES)
                .clone(),
        )
        .await
        .filter(|value| !value.is_empty())
    }

    /// Stores a value with an expiry, without making the caller wait.
    pub fn set_in_background(self: &Arc<Self>, key: String, value: Vec<u8>, ttl: Duration) {
        let remote = Arc::clone(self);
        tokio::spawn(async move {
            let seconds = ttl.as_secs().max(1);
            let _: Option<()> = remote
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(value)
                        .arg("EX")
                        .arg(seconds)
                        .clone(),
                )
                .await;
        });
    }

    /// Tells the other replicas to drop their in-process entries of these clusters.
    pub fn publish_in_background(self: &Arc<Self>, clusters: Vec<String>) {
        let remote = Arc::clone(self);
        tokio::spawn(async move {
            let text = format!("{} {}", remote.instance, clusters.join(","));
            let Some(message) = remote.sealer.seal(INVALIDATION_CHANNEL, text.as_bytes()) else {
                return;
            };
            let sent: Option<i64> = remote
                .query(
                    redis::cmd("PUBLISH")
                        .arg(INVALIDATION_CHANNEL)
                        .arg(message)
                        .clone(),
                )
                .await;
            if sent.is_some() {
                remote.published.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    async fn subscribe_loop(self: Arc<Self>, target: RedisTarget, on_invalidate: Invalidate) {
        let url = match &target {
            RedisTarget::Standalone(url) => url.clone(),
            // Cluster PUBLISH reaches subscribers on every node; one node is enough.
            RedisTarget::Cluster(nodes) => nodes.first().cloned().unwrap_or_default(),
        };
        loop {
            if let Err(error) = self.subscribe_once(&url, &on_invalidate).await {
                tracing::debug!(%error, "invalidation subscription lost; retrying");
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    async fn subscribe_once(
        &self,
        url: &str,
        on_invalidate: &Invalidate,
    ) -> redis::RedisResult<()> {
        let client = client(url, &self.ca)?;
        let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        pubsub.subscribe(INVALIDATION_CHANNEL).await?;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let opened = message
                .get_payload::<Vec<u8>>()
                .ok()
                .and_then(|bytes| sealing::open(&self.sealer, INVALIDATION_CHANNEL, &bytes))
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some(text) = opened else {
                if self.forged.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        channel = INVALIDATION_CHANNEL,
                        "discarded an invalidation message that did not authenticate (further ones are counted, not logged)"
                    );
                }
                continue;
            };
            let Some((sender, clusters)) = text.split_once(' ') else {
                continue;
            };
            if sender == self.instance {
                continue;
            }
            self.received.fetch_add(1, Ordering::Relaxed);
            let clusters: Vec<String> = clusters
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            tracing::debug!(clusters = clusters.len(), "invalidation received");
            on_invalidate(clusters);
        }
        Ok(())
    }

    /// Stores `payload` sealed under `key` with an expiry, and waits for Redis to confirm: `false` when
    /// it did not (down, timed out, or the value is too large to seal).
    pub async fn put_sealed(self: &Arc<Self>, key: &str, payload: &[u8], ttl: Duration) -> bool {
        let Some(sealed) = self.sealer.seal(key, payload) else {
            return false;
        };
        self.query_durable::<()>(
            redis::cmd("SET")
                .arg(key)
                .arg(sealed)
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .clone(),
        )
        .await
        .is_some()
    }

    /// Reads a value sealed under `key`, telling a missing value from an unreachable Redis and from a
    /// value that does not authenticate (written by someone without our keys, or moved from another key).
    pub async fn get_sealed(self: &Arc<Self>, key: &str) -> Sealed {
        let stored = self
            .query_durable::<Vec<u8>>(
                redis::cmd("GETRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(MAX_SEALED_BYTES)
                    .clone(),
            )
            .await;
        match stored {
            None => Sealed::Unreachable,
            Some(bytes) if bytes.is_empty() => Sealed::Missing,
            Some(bytes) => match sealing::open(&self.sealer, key, &bytes) {
                Some(payload) => Sealed::Found(payload),
                None => Sealed::Forged,
            },
        }
    }

    /// Adds `member` to the sorted set `set` (all scores 0, so members page in byte order).
    pub async fn index_add(self: &Arc<Self>, set: &str, member: &str) -> bool {
        self.query_durable::<i64>(redis::cmd("ZADD").arg(set).arg(0).arg(member).clone())
            .await
            .is_some()
    }

    /// Up to `limit` members of `set` after `after` (all from the start when empty), in byte order;
    /// `None` when Redis cannot be reached.
    pub async fn index_after(
        self: &Arc<Self>,
        set: &str,
        after: &str,
        limit: usize,
    ) -> Option<Vec<String>> {
        let start = if after.is_empty() {
            "-".to_owned()
        } else {
            format!("({after}")
        };
        self.query_durable::<Vec<String>>(
            redis::cmd("ZRANGEBYLEX")
                .arg(set)
                .arg(start)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .clone(),
        )
        .await
    }

    /// Removes members from the sorted set `set`.
    pub async fn index_remove(self: &Arc<Self>, set: &str, members: &[String]) -> bool {
        if members.is_empty() {
            return true;
        }
        self.query_durable::<i64>(redis::cmd("ZREM").arg(set).arg(members).clone())
            .await
            .is_some()
    }

    /// Current counters.
    pub fn counters(&self) -> RemoteCounters {
        RemoteCounters {
            errors: self.errors.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            forged: self.forged.load(Ordering::Relaxed),
            up: self.up.load(Ordering::Relaxed),
        }
    }
}

/// Whether `url` is a `redis://` or `rediss://` URL the client accepts (nothing is connected).
pub fn is_redis_url(url: &str) -> bool {
    (url.starts_with("redis://") || url.starts_with("rediss://"))
        && redis::Client::open(url).is_ok()
}
