//! The ledger of minted credentials: every certificate issued (serial, fingerprint, user, cluster,
//! expiry, request id, reason, revocation), kept until it expires (plus an hour, so that a check soon
//! after expiry still says EXPIRED rather than UNKNOWN), and the credentials kept for reuse.
//!
//! Two stores behind one trait of our own: in process (one replica) and Redis (shared by replicas).
//! Every Redis value is sealed with the replicas' key and bound to its key name, so a Redis writer can
//! neither forge an entry nor move one to another serial; it can delete entries (a check then says
//! UNKNOWN and a listing skips them) and replay an older sealed copy of the same entry (which can undo a
//! revocation): docs/credentials.md lists what each party can and cannot do. Reads that do not
//! authenticate are counted as forged and treated as absent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kubeconfig_cache::{BoxFuture, Remote, Sealed};
use serde::{Deserialize, Serialize};

/// How long an entry is kept after its credential expires.
pub const KEEP_AFTER_EXPIRY: Duration = Duration::from_secs(3600);

/// The largest number of credentials kept for reuse in process; past it, nothing new is kept until
/// entries expire (a miss then only costs a fresh mint).
const MAX_REUSABLE: usize = 100_000;

/// One issued credential as recorded. Never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub serial: String,
    pub fingerprint: String,
    pub cluster: String,
    /// The certificate's CN and O.
    pub kubernetes_user: String,
    pub kubernetes_group: String,
    /// The caller it was issued to.
    pub issued_to: String,
    /// The groups of the caller's token when it was issued (none with an API key): with
    /// `issued_to`, whose access a check evaluates again (a holder who lost it holds a stale file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issued_groups: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
    pub not_before: u64,
    pub not_after: u64,
    pub requested_seconds: u64,
    pub granted_seconds: u64,
    pub clamped: bool,
    pub caller_key: bool,
    pub reason: String,
    pub request_id: String,
    /// Hex SHA-256 over what the credential depends on in the cluster (API server, CA, client CA)
    /// when it was issued: a different value now means the file is stale.
    pub cluster_digest: String,
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

/// Who revoked a credential, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: u64,
    pub by: String,
    pub reason: String,
}

impl LedgerEntry {
    /// An entry for tests: issued to admin@demo.test an hour before `not_after`.
    #[doc(hidden)]
    pub fn sample(serial: &str, cluster: &str, not_after: u64) -> Self {
        LedgerEntry {
            serial: serial.to_owned(),
            fingerprint: serial.repeat(64 / serial.len().max(1)),
            cluster: cluster.to_owned(),
            kubernetes_user: "kubeconfigd:admin:admin@demo.test".to_owned(),
            kubernetes_group: "system:masters".to_owned(),
            issued_to: "admin@demo.test".to_owned(),
            issued_groups: Vec::new(),
            issued_at: not_after.saturating_sub(3600),
            not_before: not_after.saturating_sub(3660),
            not_after,
            requested_seconds: 3600,
            granted_seconds: 3600,
            clamped: false,
            caller_key: false,
            reason: String::new(),
            request_id: "r".to_owned(),
            cluster_digest: String::new(),
            revoked: None,
        }
    }

    /// When the entry may be forgotten.
    fn keep_until(&self) -> u64 {
        self.not_after.saturating_add(KEEP_AFTER_EXPIRY.as_secs())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why the ledger could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the credential ledger is unavailable: {0}")]
pub struct LedgerError(pub String);

/// Whether `text` has the form of a serial this service issues: lowercase hex, 1–64 characters.
pub fn is_serial(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How many batches of max(limit, 16) serials a page may examine: a cluster's index keeps
/// expired credentials for [`KEEP_AFTER_EXPIRY`], so with short lifetimes most of it can be expired,
/// and a page must not walk all of that.
pub const PAGE_SCAN_FACTOR: usize = 8;

/// The serials a page examines at a time (the Redis ledger reads them in one round trip).
fn page_batch(limit: usize) -> usize {
    limit.max(16)
}

/// One page of a cluster's credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerPage {
    /// Unexpired entries, by serial.
    pub entries: Vec<LedgerEntry>,
    /// Set when the page stopped at its scan bound with more of the index left and fewer than the
    /// entries asked for: the last serial examined, after which the next page starts. Such a page
    /// can hold fewer entries than asked for, or none.
    pub resume_after: Option<String>,
}

/// Where minted credentials are recorded.
pub trait Ledger: Send + Sync {
    /// Records (or replaces) an entry; completes only once it is stored.
    fn record<'a>(&'a self, entry: &'a LedgerEntry) -> BoxFuture<'a, Result<(), LedgerError>>;
    /// The entry of a serial.
    fn by_serial<'a>(
        &'a self,
        serial: &'a str,
    ) -> BoxFuture<'a, Result<Option<LedgerEntry>, LedgerError>>;
    /// The entry of a fingerprint.
    fn by_fingerprint<'a>(
        &'a self,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Option<LedgerEntry>, LedgerError>>;
    /// Up to `limit` unexpired entries of a cluster with serials after `after`, by serial, examining
    /// at most [`PAGE_SCAN_FACTOR`] × max(`limit`, 16) serials (see [`LedgerPage::resume_after`]).
    fn page<'a>(
        &'a self,
        cluster: &'a str,
        after: &'a str,
        limit: usize,
        now: u64,
    ) -> BoxFuture<'a, Result<LedgerPage, LedgerError>>;
    /// A credential kept for reuse under `key` (encoded by the caller), if any.
    fn reusable<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>>;
    /// Keeps a credential for reuse for `ttl`.
    fn keep_reusable<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, ()>;
    /// Which store this is, for logs and metrics (`memory` or `redis`).
    fn kind(&self) -> &'static str;
    /// Values read back that did not authenticate.
    fn forged(&self) -> u64 {
        0
    }
}

/// The ledger of one replica.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    entries: HashMap<String, LedgerEntry>,
    by_fingerprint: HashMap<String, String>,
    by_cluster: HashMap<String, BTreeSet<String>>,
    /// (keep until, serial): what to forget when.
    expiry: BTreeSet<(u64, String)>,
    reusable: HashMap<String, (Vec<u8>, std::time::Instant)>,
    reusable_expiry: BTreeMap<std::time::Instant, Vec<String>>,
}

impl MemoryState {
    fn forget_expired(&mut self, now: u64) {
        while let Some((until, serial)) = self.expiry.first().cloned() {
            if until > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(entry) = self.entries.remove(&serial) {
                self.by_fingerprint.remove(&entry.fingerprint);
                if let Some(set) = self.by_cluster.get_mut(&entry.cluster) {
                    set.remove(&serial);
                    if set.is_empty() {
                        self.by_cluster.remove(&entry.cluster);
                    }
                }
            }
        }
        let instant = std::time::Instant::now();
        while let Some(entry) = self.reusable_expiry.first_entry() {
            if *entry.key() > instant {
                break;
            }
            for key in entry.remove() {
                if self
                    .reusable
                    .get(&key)
                    .is_some_and(|(_, until)| *until <= instant)
                {
                    self.reusable.remove(&key);
                }
            }
        }
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl Ledger for MemoryLedger {
    fn record<'a>(&'a self, entry: &'a LedgerEntry) -> BoxFuture<'a, Result<(), LedgerError>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.forget_expired(unix_seconds(SystemTime::now()));
        if let Some(old) = state.entries.get(&entry.serial) {
            let until = old.keep_until();
            state.expiry.remove(&(until, entry.serial.clone()));
        }
        state
            .by_fingerprint
            .insert(entry.fingerprint.clone(), entry.serial.clone());
        state
            .by_cluster
            .entry(entry.cluster.clone())
            .or_default()
            .insert(entry.serial.clone());
        state
            .expiry
            .insert((entry.keep_until(), entry.serial.clone()));
        state.entries.insert(entry.serial.clone(), entry.clone());
        ready(Ok(()))
    }

    fn by_serial<'a>(
        &'a self,
        serial: &'a str,
    ) -> BoxFuture<'a, Result<Option<LedgerEntry>, LedgerError>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        ready(Ok(state.entries.get(serial).cloned()))
    }

    fn by_fingerprint<'a>(
        &'a self,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Option<LedgerEntry>, LedgerError>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state
            .by_fingerprint
            .get(fingerprint)
            .and_then(|serial| state.entries.get(serial))
            .cloned();
        ready(Ok(entry))
    }

    fn page<'a>(
        &'a self,
        cluster: &'a str,
        after: &'a str,
        limit: usize,
        now: u64,
    ) -> BoxFuture<'a, Result<LedgerPage, LedgerError>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut page = LedgerPage::default();
        let Some(serials) = state.by_cluster.get(cluster) else {
            return ready(Ok(page));
        };
        let start = if after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(after)
        };
        let mut left = PAGE_SCAN_FACTOR * page_batch(limit);
        let mut last: Option<&String> = None;
        for serial in serials.range::<str, _>((start, std::ops::Bound::Unbounded)) {
            if page.entries.len() == limit {
                break;
            }
            if left == 0 {
                page.resume_after = last.cloned();
                break;
            }
            left -= 1;
            last = Some(serial);
            if let Some(entry) = state.entries.get(serial)
                && entry.not_after > now
            {
                page.entries.push(entry.clone());
            }
        }
        ready(Ok(page))
    }

    fn reusable<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        ready(
            state
                .reusable
                .get(key)
                .filter(|(_, until)| *until > now)
                .map(|(value, _)| value.clone()),
        )
    }

    fn keep_reusable<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, ()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.forget_expired(unix_seconds(SystemTime::now()));
        if state.reusable.len() < MAX_REUSABLE || state.reusable.contains_key(key) {
            // A lifetime the clock cannot represent is not kept (it is only reuse).
            let Some(until) = std::time::Instant::now().checked_add(ttl) else {
                return ready(());
            };
            state.reusable.insert(key.to_owned(), (value, until));
            state
                .reusable_expiry
                .entry(until)
                .or_default()
                .push(key.to_owned());
        }
        ready(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// The ledger in Redis, shared by replicas: each entry sealed at `…:credential:<serial>`, a sealed
/// pointer at `…:credential-fingerprint:<fingerprint>`, and a sorted set of serials per cluster for
/// paging (members whose entry has expired are dropped from it when a page finds them gone).
pub struct RedisLedger {
    remote: Arc<Remote>,
    forged: AtomicU64,
    forged_warning: kubeconfig_logline::Throttle,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger").finish_non_exhaustive()
    }
}

const PREFIX: &str = "kubeconfigd:v1";

fn entry_key(serial: &str) -> String {
    format!("{PREFIX}:credential:{serial}")
}

fn fingerprint_key(fingerprint: &str) -> String {
    format!("{PREFIX}:credential-fingerprint:{fingerprint}")
}

fn cluster_key(cluster: &str) -> String {
    format!("{PREFIX}:credentials-of:{cluster}")
}

fn reusable_key(key: &str) -> String {
    format!("{PREFIX}:minted:{key}")
}

impl RedisLedger {
    pub fn new(remote: Arc<Remote>) -> Self {
        RedisLedger {
            remote,
            forged: AtomicU64::new(0),
            forged_warning: Default::default(),
        }
    }

    fn ttl_of(entry: &LedgerEntry) -> Duration {
        Duration::from_secs(
            entry
                .keep_until()
                .saturating_sub(unix_seconds(SystemTime::now()))
                .max(1),
        )
    }

    /// Reads a sealed value: `Ok(None)` when missing or forged (counted and logged), `Err` when
    /// Redis cannot be reached.
    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>, LedgerError> {
        match self.remote.get_sealed(key).await {
            Sealed::Found(bytes) => Ok(Some(bytes)),
            Sealed::Missing => Ok(None),
            Sealed::Forged => {
                self.forged.fetch_add(1, Ordering::Relaxed);
                // Whoever can write to Redis can plant one per read: throttled, every one counted.
                if let Some(held_back) = self.forged_warning.due() {
                    tracing::warn!(
                        key,
                        held_back,
                        "discarded a ledger value that did not authenticate (not written by a replica)"
                    );
                }
                Ok(None)
            }
            Sealed::Unreachable => Err(LedgerError("Redis did not answer".to_owned())),
        }
    }

    async fn entry(&self, serial: &str) -> Result<Option<LedgerEntry>, LedgerError> {
        let Some(bytes) = self.read(&entry_key(serial)).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<LedgerEntry>(&bytes) {
            Ok(entry) if entry.serial == serial => Ok(Some(entry)),
            _ => {
                tracing::warn!(serial, "discarded a ledger entry that does not decode");
                Ok(None)
            }
        }
    }
}

impl Ledger for RedisLedger {
    fn record<'a>(&'a self, entry: &'a LedgerEntry) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            let ttl = Self::ttl_of(entry);
            let bytes = serde_json::to_vec(entry).map_err(|e| LedgerError(e.to_string()))?;
            let failed = || LedgerError("Redis did not confirm the write".to_owned());
            if !self
                .remote
                .put_sealed(&entry_key(&entry.serial), &bytes, ttl)
                .await
            {
                return Err(failed());
            }
            if !self
                .remote
                .put_sealed(
                    &fingerprint_key(&entry.fingerprint),
                    entry.serial.as_bytes(),
                    ttl,
                )
                .await
            {
                return Err(failed());
            }
            if !self
                .remote
                .index_add(&cluster_key(&entry.cluster), &entry.serial)
                .await
            {
                return Err(failed());
            }
            Ok(())
        })
    }

    fn by_serial<'a>(
        &'a self,
        serial: &'a str,
    ) -> BoxFuture<'a, Result<Option<LedgerEntry>, LedgerError>> {
        Box::pin(self.entry(serial))
    }

    fn by_fingerprint<'a>(
        &'a self,
        fingerprint: &'a str,
    ) -> BoxFuture<'a, Result<Option<LedgerEntry>, LedgerError>> {
        Box::pin(async move {
            let Some(serial) = self.read(&fingerprint_key(fingerprint)).await? else {
                return Ok(None);
            };
            let Ok(serial) = String::from_utf8(serial) else {
                return Ok(None);
            };
            Ok(self
                .entry(&serial)
                .await?
                .filter(|entry| entry.fingerprint == fingerprint))
        })
    }

    fn page<'a>(
        &'a self,
        cluster: &'a str,
        after: &'a str,
        limit: usize,
        now: u64,
    ) -> BoxFuture<'a, Result<LedgerPage, LedgerError>> {
        Box::pin(async move {
            let set = cluster_key(cluster);
            let batch = page_batch(limit);
            let mut entries = Vec::with_capacity(limit);
            let mut cursor = after.to_owned();
            // The last member examined that is a serial: where the next page resumes if this one
            // stops at its bound. A member that is not a serial (not written by us) is dropped.
            let mut last_serial: Option<String> = None;
            // Bounded: a page reads at most `PAGE_SCAN_FACTOR` batches, dropping members whose
            // entry is gone.
            for _ in 0..PAGE_SCAN_FACTOR {
                let serials = self
                    .remote
                    .index_after(&set, &cursor, batch)
                    .await
                    .ok_or_else(|| LedgerError("Redis did not answer".to_owned()))?;
                let exhausted = serials.len() < batch;
                if let Some(last) = serials.last() {
                    cursor.clone_from(last);
                }
                let (serials, strangers): (Vec<String>, Vec<String>) =
                    serials.into_iter().partition(|s| is_serial(s));
                // The batch's entries are read at once: one multiplexed connection carries them,
                // so the batch costs about one round trip rather than one per member.
                let read =
                    futures_util::future::join_all(serials.iter().map(|s| self.entry(s))).await;
                let mut gone = strangers;
                for (serial, entry) in serials.iter().zip(read) {
                    match entry? {
                        Some(entry) if entry.cluster == cluster => {
                            if entry.not_after > now && entries.len() < limit {
                                entries.push(entry);
                            }
                        }
                        _ => gone.push(serial.clone()),
                    }
                }
                self.remote.index_remove(&set, &gone).await;
                if entries.len() == limit || exhausted {
                    return Ok(LedgerPage {
                        entries,
                        resume_after: None,
                    });
                }
                if let Some(serial) = serials.last() {
                    last_serial = Some(serial.clone());
                }
            }
            match last_serial {
                Some(serial) => Ok(LedgerPage {
                    entries,
                    resume_after: Some(serial),
                }),
                None => Err(LedgerError(format!(
                    "the index of cluster {cluster} held only members that are not serials where \
                     this page looked; they were removed, so asking again goes further"
                ))),
            }
        })
    }

    fn reusable<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.read(&reusable_key(key)).await.ok().flatten() })
    }

    fn keep_reusable<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.remote
                .put_sealed(&reusable_key(key), &value, ttl)
                .await;
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn forged(&self) -> u64 {
        self.forged.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: &str, cluster: &str, not_after: u64) -> LedgerEntry {
        LedgerEntry {
            fingerprint: format!("fp-{serial}"),
            ..LedgerEntry::sample(serial, cluster, not_after)
        }
    }

    #[tokio::test]
    async fn the_memory_ledger_pages_unexpired_entries_by_serial_and_forgets_old_ones() {
        let ledger = MemoryLedger::default();
        let now = unix_seconds(SystemTime::now());
        for (serial, not_after) in [("c", now + 10), ("a", now + 10), ("b", now - 10)] {
            ledger
                .record(&entry(serial, "one", not_after))
                .await
                .unwrap();
        }
        ledger.record(&entry("z", "two", now + 10)).await.unwrap();
        let serials = |page: LedgerPage| {
            assert_eq!(page.resume_after, None, "a short index is read to its end");
            page.entries
                .into_iter()
                .map(|e| e.serial)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            serials(ledger.page("one", "", 10, now).await.unwrap()),
            ["a", "c"]
        );
        assert_eq!(
            serials(ledger.page("one", "", 1, now).await.unwrap()),
            ["a"]
        );
        assert_eq!(
            serials(ledger.page("one", "a", 1, now).await.unwrap()),
            ["c"]
        );
        assert_eq!(
            ledger.by_fingerprint("fp-z").await.unwrap().unwrap().serial,
            "z"
        );
        // Expired longer than the keeping period: forgotten at the next write.
        ledger
            .record(&entry("old", "one", now - KEEP_AFTER_EXPIRY.as_secs() - 5))
            .await
            .unwrap();
        ledger.record(&entry("new", "one", now + 10)).await.unwrap();
        assert!(ledger.by_serial("old").await.unwrap().is_none());
        assert!(
            ledger.by_serial("b").await.unwrap().is_some(),
            "kept an hour past expiry"
        );
    }
}
