//! Watching files (`WatchKubeconfigs`, and the REST long-poll): what a caller would download, kept
//! current as clusters and the tenant change.
//!
//! A watch re-evaluates a file through the same core as a download — authentication, visibility,
//! the decision, the cache — whenever the change feed names its cluster, and every watched file when
//! the tenant changes (bindings, roles, API keys). Only differences are sent: new bytes (`Upsert`),
//! a decision that now denies (`Revoked`), a cluster gone or no longer visible (`Removed`), a broken
//! record (`Unavailable`). A credential that no longer authenticates ends the watch.
//!
//! A file carrying a credential minted for the caller is also evaluated again once that credential is
//! past half its lifetime, which mints a fresh one: a watcher always holds a credential with at least
//! half its lifetime left. It is also evaluated once a minute in between, which reads the ledger: a
//! credential revoked on any replica is replaced by a fresh one within a minute.
//!
//! Slow consumers never hold anyone up: the feed is a broadcast that never waits, each watch has a
//! small buffer, and a watch that falls behind the feed re-evaluates everything it watches, which
//! sends the latest state of each file once (coalescing whatever it missed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::audit::{Auth, Event, Record};
use kubeconfig_policy::Asset;
use kubeconfig_render::{Rendered, Request};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::loading::feed::Feed;
use crate::service::auth::Credentials;
use crate::service::cached::CachedAsset;
use crate::service::core::{Core, check_uid};
use crate::service::error::{CoreError, ErrorKind};

/// Events buffered per watch before it waits for its consumer.
const BUFFER: usize = 32;

/// How often a file with a minted credential is evaluated again to learn of a revocation.
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The reason of the `Revoked` events a watch sends when its credential stops authenticating.
pub const CREDENTIAL_REFUSED: &str = "UNAUTHENTICATED";

/// How soon a file whose minted credential could not be renewed is tried again.
const RENEWAL_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// What a watch follows.
#[derive(Debug, Clone, Default)]
pub struct WatchSpec {
    /// Explicit uids; empty means every cluster visible to the caller.
    pub uids: Vec<String>,
    /// With no explicit uids: only this project's clusters.
    pub project: Option<String>,
    /// Which files (never empty once opened; the kubeconfig when none is named).
    pub assets: Vec<Asset>,
    /// For the kubeconfig: the proxied variant when the proxy is enabled.
    pub frp: bool,
    /// Etags the client holds, by (uid, asset): unchanged files are not sent again.
    pub known: HashMap<(String, Asset), String>,
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Upsert {
        uid: String,
        name: String,
        asset: Asset,
        rendered: Arc<CachedAsset>,
    },
    Revoked {
        uid: String,
        name: String,
        asset: Asset,
        reason: String,
        message: String,
    },
    Removed {
        uid: String,
        asset: Asset,
        message: String,
    },
    Unavailable {
        uid: String,
        name: String,
        asset: Asset,
        message: String,
    },
    Synced,
}

impl WatchEvent {
    /// The rendered file of an `Upsert`.
    pub fn rendered(&self) -> Option<&Rendered> {
        match self {
            WatchEvent::Upsert { rendered, .. } => Some(&rendered.0),
            _ => None,
        }
    }
}

/// What was last sent for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Etag(String),
    Revoked(String),
    Unavailable(String),
    Removed,
}

/// Limits on watches: in all, and per caller; and how many `known_etags` one may give.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    pub total: usize,
    pub per_caller: usize,
    pub known_etags: usize,
}

/// The longest etag a watch may say it holds, in bytes (ours are 64 hex characters, quoted).
pub const MAX_KNOWN_ETAG_BYTES: usize = 128;

/// Checks a watch's `known_etags` as `cluster_uids` are checked: every key names a cluster by a valid
/// uid, every etag is short, and there are at most `limit` of them. Nothing a caller sends is
/// evaluated or echoed back before this passes.
fn check_known_etags(
    known: &HashMap<(String, Asset), String>,
    limit: usize,
) -> Result<(), CoreError> {
    if known.len() > limit {
        return Err(CoreError::bad_request(format!(
            "known_etags: at most {limit} entries (got {})",
            known.len()
        )));
    }
    for ((uid, asset), etag) in known {
        if !kubeconfig_render::is_valid_uid(uid) {
            return Err(CoreError::bad_request(format!(
                "known_etags: key {:?} must name a cluster uid ([a-z0-9-]{{1,64}})",
                format!("{uid}/{}", asset.as_str())
                    .chars()
                    .take(80)
                    .collect::<String>()
            )));
        }
        if etag.len() > MAX_KNOWN_ETAG_BYTES {
            return Err(CoreError::bad_request(format!(
                "known_etags: the etag of {uid}/{} is longer than {MAX_KNOWN_ETAG_BYTES} bytes",
                asset.as_str()
            )));
        }
    }
    Ok(())
}

/// Opens watches and keeps their count.
pub struct Watchers {
    core: Arc<Core>,
    feed: Arc<Feed>,
    limits: WatchLimits,
    total: Arc<Semaphore>,
    per_caller: Arc<Mutex<HashMap<String, usize>>>,
    stop: watch::Receiver<bool>,
}

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchers")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A caller's share of the watch limits, given back when the watch ends.
struct Admission {
    _permit: OwnedSemaphorePermit,
    user: String,
    per_caller: Arc<Mutex<HashMap<String, usize>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.watch_streams(false);
        if let Ok(mut counts) = self.per_caller.lock()
            && let Some(count) = counts.get_mut(&self.user)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

fn exhausted(message: String) -> CoreError {
    CoreError::new(ErrorKind::TooManyRequests, message)
}

fn request_for(asset: Asset, frp: bool) -> Request {
    match asset {
        Asset::Kubeconfig => Request::Kubeconfig { frp },
        Asset::AdminKubeconfig => Request::AdminKubeconfig,
    }
}

impl Watchers {
    /// `stop` turns true when the server shuts down: every watch then ends (UNAVAILABLE).
    pub fn new(
        core: Arc<Core>,
        feed: Arc<Feed>,
        limits: WatchLimits,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Watchers {
            core,
            feed,
            limits,
            total: Arc::new(Semaphore::new(limits.total)),
            per_caller: Arc::new(Mutex::new(HashMap::new())),
            stop,
        }
    }

    /// The core watches evaluate through.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    fn admit(&self, user: &str) -> Result<Admission, CoreError> {
        let metrics = self.core.metrics();
        let permit = Arc::clone(&self.total).try_acquire_owned().map_err(|_| {
            metrics.limit(crate::metrics::Limit::Watches);
            exhausted(format!(
                "too many watch streams on this server (limit {}); retry later",
                self.limits.total
            ))
        })?;
        let mut counts = self
            .per_caller
            .lock()
            .map_err(|_| CoreError::new(ErrorKind::Internal, "watch accounting failed"))?;
        let count = counts.entry(user.to_owned()).or_insert(0);
        if *count >= self.limits.per_caller {
            metrics.limit(crate::metrics::Limit::WatchesPerCaller);
            return Err(exhausted(format!(
                "too many watch streams for this caller (limit {}); close one first",
                self.limits.per_caller
            )));
        }
        *count += 1;
        self.core.metrics().watch_streams(true);
        Ok(Admission {
            _permit: permit,
            user: user.to_owned(),
            per_caller: Arc::clone(&self.per_caller),
            metrics: Arc::clone(self.core.metrics()),
        })
    }

    /// Opens a watch: checks the request, the credential and the limits now, then streams events
    /// (the initial state, `Synced`, then changes). The stream ends with an error item when the
    /// credential stops authenticating or the server shuts down.
    pub async fn open(
        &self,
        credentials: Credentials,
        mut spec: WatchSpec,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, CoreError>>, CoreError> {
        for uid in &spec.uids {
            check_uid(uid)?;
        }
        if let Err(refused) = check_known_etags(&spec.known, self.limits.known_etags) {
            self.core.metrics().watch_known_etags_refused();
            return Err(refused);
        }
        if spec.assets.is_empty() {
            spec.assets.push(Asset::Kubeconfig);
        }
        spec.assets.sort_by_key(|a| a.as_str());
        spec.assets.dedup();
        spec.uids.sort_unstable();
        spec.uids.dedup();
        let caller = match self.core.authenticate(&credentials).await {
            Ok(caller) => caller,
            Err(error) => return refused_at_open(error, &credentials, spec),
        };
        let admission = self.admit(&caller.user)?;
        let credentials_certificate = credentials.certificate.clone();
        // Subscribed before the initial state is computed, so that no change falls in between.
        let changes = self.feed.subscribe();
        let generations = self.feed.generations();
        let (tx, rx) = mpsc::channel(BUFFER);
        let watch = Watch {
            core: Arc::clone(&self.core),
            opened_by: (Arc::clone(&caller.user), Auth::of(&caller)),
            credentials,
            spec,
            sent: BTreeMap::new(),
            tx,
            stop: self.stop.clone(),
            tenant: Arc::clone(&self.core.snapshot().tenant),
            renewals: BTreeSet::new(),
            held: HashMap::new(),
            expires: expiry_instant(caller.expires_at()),
            distrusted: distrusted(credentials_certificate),
        };
        tokio::spawn(watch.run(changes, generations, admission));
        Ok(rx)
    }

    /// Waits until what `request` of `uid` would answer differs from `etag`, or `wait` passes
    /// (the REST long-poll). Returns whether it changed; the caller then answers as for a download.
    /// A wait counts as a watch of its caller's, under the same limits: refused (429) beyond them.
    /// A caller who does not authenticate does not wait (the download that follows says why).
    /// It evaluates with the caller's `options` (a minted file's lifetime and key), and never mints.
    pub async fn wait_for_change(
        &self,
        credentials: &Credentials,
        uid: &str,
        (request, options): (Request, &crate::service::minting::MintOptions),
        etag: &str,
        wait: std::time::Duration,
    ) -> Result<bool, CoreError> {
        let Ok(caller) = self.core.authenticate(credentials).await else {
            return Ok(true);
        };
        let _admission = self.admit(&caller.user)?;
        // A wait ends when the credential does: the caller then hears 401 and signs in again, as a
        // watch stream's would.
        let wait_ends = tokio::time::Instant::now() + wait;
        let expires = expiry_instant(caller.expires_at()).filter(|at| *at < wait_ends);
        let wait = expires.map_or(wait, |at| {
            at.saturating_duration_since(tokio::time::Instant::now())
        });
        let changed = tokio::select! {
            changed = self.changed_within(credentials, uid, (request, options), etag, wait) => changed,
            () = distrusted(credentials.certificate.clone()) => return Err(certificate_distrusted()),
        };
        if !changed && expires.is_some_and(|at| tokio::time::Instant::now() >= at) {
            return Err(credential_expired());
        }
        Ok(changed)
    }

    async fn changed_within(
        &self,
        credentials: &Credentials,
        uid: &str,
        (request, options): (Request, &crate::service::minting::MintOptions),
        etag: &str,
        wait: std::time::Duration,
    ) -> bool {
        let mut generations = self.feed.generations();
        let mut stop = self.stop.clone();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // A refusal of any kind is an answer the caller should have at once.
            let changed = self
                .core
                .held_file_changed(credentials, uid, request, options, etag)
                .await;
            if changed {
                return true;
            }
            tokio::select! {
                result = generations.changed() => if result.is_err() { return false },
                _ = stop.wait_for(|stop| *stop) => return false,
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
}

struct Watch {
    core: Arc<Core>,
    /// Who opened the watch and how they authenticated: named in the audit records of the files
    /// taken back from them (a file served names the caller as authenticated for it).
    opened_by: (Arc<str>, Auth),
    credentials: Credentials,
    spec: WatchSpec,
    sent: BTreeMap<(String, Asset), Sent>,
    tx: mpsc::Sender<Result<WatchEvent, CoreError>>,
    stop: watch::Receiver<bool>,
    /// The tenant the last full evaluation saw: a new one may change any decision.
    tenant: Arc<kubeconfig_policy::Tenant>,
    /// Files carrying a minted credential, by when to evaluate them again: once the credential is
    /// past half its lifetime, so that a fresh one is sent long before the held one expires.
    renewals: BTreeSet<(tokio::time::Instant, String, Asset)>,
    /// The serial of the minted credential in each file that carries one.
    held: HashMap<(String, Asset), String>,
    /// When the first of the credentials the stream was opened with expires: it ends then.
    expires: Option<tokio::time::Instant>,
    /// Resolves when the client certificate it was opened with is no longer trusted: it ends then.
    distrusted: Distrusted,
}

/// A wait for a certificate to lose its trust (never, without one).
type Distrusted = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

fn distrusted(certificate: Option<Arc<crate::service::auth::PeerCertificate>>) -> Distrusted {
    Box::pin(async move {
        match certificate {
            Some(certificate) => certificate.distrusted().await,
            None => std::future::pending().await,
        }
    })
}

/// A watch refused at open. Most refusals are just the error. But an API key that no longer
/// authenticates (API keys do not expire: it was removed) from a watcher that names files it holds
/// (`known_etags`, as an agent reconnecting sends them) gets those files taken back first, exactly
/// as an open stream would have when the key was removed: an agent that was reconnecting at that
/// moment deletes them too. Only the uids the request named are echoed, so nothing is revealed.
fn refused_at_open(
    error: CoreError,
    credentials: &Credentials,
    spec: WatchSpec,
) -> Result<mpsc::Receiver<Result<WatchEvent, CoreError>>, CoreError> {
    let api_key_only = credentials.api_key.is_some()
        && credentials.bearer.is_none()
        && credentials.certificate.is_none();
    if error.kind() != ErrorKind::Unauthenticated || !api_key_only || spec.known.is_empty() {
        return Err(error);
    }
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        for (uid, asset) in spec.known.into_keys() {
            let event = WatchEvent::Revoked {
                uid,
                name: String::new(),
                asset,
                reason: CREDENTIAL_REFUSED.to_owned(),
                message: error.message().to_owned(),
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
        // That is this stream's whole initial state: an agent applies (deletes) only a synced state.
        if tx.send(Ok(WatchEvent::Synced)).await.is_err() {
            return;
        }
        let _ = tx.send(Err(error)).await;
    });
    Ok(rx)
}

/// Why a stream or long-poll ended when its client certificate lost its trust.
fn certificate_distrusted() -> CoreError {
    CoreError::new(
        ErrorKind::Unauthenticated,
        "the client certificate this call was made with is no longer trusted (revoked, or its CA removed)",
    )
}

/// The instant a credential expiring at `expires_at` (seconds since the epoch) stops being valid.
fn expiry_instant(expires_at: Option<u64>) -> Option<tokio::time::Instant> {
    let expires_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at?);
    let left = expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

/// Sleeps until `at`, or forever without it.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a stream or long-poll ended at its credential's expiry.
fn credential_expired() -> CoreError {
    CoreError::new(
        ErrorKind::Unauthenticated,
        "the credential this call was made with expired; call again with a fresh one",
    )
}

/// Sleeps until the earliest renewal, or forever when there is none.
async fn next_renewal(renewals: &BTreeSet<(tokio::time::Instant, String, Asset)>) {
    match renewals.first() {
        Some((at, _, _)) => tokio::time::sleep_until(*at).await,
        None => std::future::pending().await,
    }
}

fn shutting_down() -> CoreError {
    CoreError::new(
        ErrorKind::Unavailable,
        "the server is shutting down; reconnect with the etags you hold",
    )
}

/// The uids the feed named since the last call, and whether events were missed (then everything
/// watched must be evaluated again).
fn drain(
    changes: &mut tokio::sync::broadcast::Receiver<Arc<crate::loading::feed::ChangeEvent>>,
) -> (BTreeSet<String>, bool) {
    use tokio::sync::broadcast::error::TryRecvError;
    let (mut uids, mut missed) = (BTreeSet::new(), false);
    loop {
        match changes.try_recv() {
            Ok(event) => {
                uids.insert(event.change.uid().to_owned());
            }
            Err(TryRecvError::Lagged(_)) => missed = true,
            Err(TryRecvError::Empty | TryRecvError::Closed) => return (uids, missed),
        }
    }
}

/// Why a watch ended.
enum End {
    /// The consumer went away.
    Gone,
    /// An error to send as the stream's last item.
    Error(CoreError),
}

impl Watch {
    async fn run(
        mut self,
        mut changes: tokio::sync::broadcast::Receiver<Arc<crate::loading::feed::ChangeEvent>>,
        mut generations: watch::Receiver<u64>,
        _admission: Admission,
    ) {
        let mut revocations = self.core.minter().revocations();
        let result: Result<(), End> = async {
            for (key, etag) in std::mem::take(&mut self.spec.known) {
                self.sent.insert(key, Sent::Etag(etag));
            }
            self.evaluate_all().await?;
            self.send(WatchEvent::Synced).await?;
            loop {
                // Every applied change bumps the generation after its feed events are published, so
                // waking on the generation and then draining the feed sees all of them.
                let renew = tokio::select! {
                    biased;
                    _ = self.stop.wait_for(|stop| *stop) => return Err(End::Error(shutting_down())),
                    () = self.tx.closed() => return Err(End::Gone),
                    () = until(self.expires) => return Err(End::Error(credential_expired())),
                    () = &mut self.distrusted => return Err(End::Error(certificate_distrusted())),
                    result = generations.changed() => {
                        if result.is_err() {
                            return Err(End::Gone);
                        }
                        false
                    }
                    () = next_renewal(&self.renewals) => true,
                    Ok(serial) = revocations.recv() => {
                        // Revoked on this replica: replace a file holding it now.
                        let now = tokio::time::Instant::now();
                        let files: Vec<(String, Asset)> = self
                            .held
                            .iter()
                            .filter(|(_, held)| **held == serial)
                            .map(|(key, _)| key.clone())
                            .collect();
                        for (uid, asset) in files {
                            self.renewals.insert((now, uid, asset));
                        }
                        true
                    }
                };
                if renew {
                    let now = tokio::time::Instant::now();
                    while let Some((at, uid, asset)) = self.renewals.first().cloned() {
                        if at > now {
                            break;
                        }
                        self.renewals.pop_first();
                        self.evaluate_file(&uid, asset).await?;
                    }
                    continue;
                }
                let (uids, mut everything) = drain(&mut changes);
                let tenant = Arc::clone(&self.core.snapshot().tenant);
                if !Arc::ptr_eq(&tenant, &self.tenant) {
                    self.tenant = tenant;
                    everything = true;
                }
                if everything {
                    self.evaluate_all().await?;
                } else {
                    for uid in uids {
                        if self.spec.uids.is_empty() || self.spec.uids.binary_search(&uid).is_ok() {
                            self.evaluate_cluster(&uid).await?;
                        }
                    }
                }
            }
        }
        .await;
        if let Err(End::Error(error)) = result {
            let _ = self.tx.send(Err(error)).await;
        }
    }

    async fn send(&self, event: WatchEvent) -> Result<(), End> {
        self.core.metrics().watch_event();
        let mut stop = self.stop.clone();
        tokio::select! {
            sent = self.tx.send(Ok(event)) => sent.map_err(|_| End::Gone),
            _ = stop.wait_for(|stop| *stop) => Err(End::Error(shutting_down())),
        }
    }

    /// The credential the watch was opened with no longer authenticates (its API key was removed, its
    /// token's issuer is no longer trusted): every file the watcher holds is taken back (`Revoked`,
    /// reason `UNAUTHENTICATED`) before the stream ends with the error, so that an agent deletes
    /// them as for any other revocation. A credential that merely expired ends the stream without
    /// this: the watcher reconnects with a fresh one and keeps its files.
    async fn credential_refused(&mut self, error: CoreError) -> End {
        let held: Vec<(String, Asset)> = self
            .sent
            .iter()
            .filter(|(_, sent)| matches!(sent, Sent::Etag(_)))
            .map(|(key, _)| key.clone())
            .collect();
        for (uid, asset) in held {
            let mut record = Record::new(Event::AssetRefused, &self.opened_by.0, &self.opened_by.1);
            record
                .with("cluster", uid.as_str())
                .with("asset", asset.as_str())
                .with("allowed", false)
                .with("request_id", self.credentials.request_id.as_str())
                .with("reason", CREDENTIAL_REFUSED)
                .with("via", "watch");
            let _ = self.core.auditor().record(&record);
            drop(record);
            let name = self
                .core
                .cluster_facts(&uid)
                .map(|(name, _)| name)
                .unwrap_or_default();
            self.sent.insert(
                (uid.clone(), asset),
                Sent::Revoked(CREDENTIAL_REFUSED.to_owned()),
            );
            let event = WatchEvent::Revoked {
                uid,
                name,
                asset,
                reason: CREDENTIAL_REFUSED.to_owned(),
                message: error.message().to_owned(),
            };
            if let Err(end) = self.send(event).await {
                return end;
            }
        }
        End::Error(error)
    }

    /// Every watched file: the explicit uids, or every visible cluster plus those already sent.
    async fn evaluate_all(&mut self) -> Result<(), End> {
        let mut uids: BTreeSet<String> = if self.spec.uids.is_empty() {
            let caller = match self.core.authenticate(&self.credentials).await {
                Ok(caller) => caller,
                Err(error) if error.kind() == ErrorKind::Unauthenticated => {
                    return Err(self.credential_refused(error).await);
                }
                Err(error) => return Err(End::Error(error)),
            };
            self.core
                .visible_uids(&caller, self.spec.project.as_deref())
                .into_iter()
                .collect()
        } else {
            self.spec.uids.iter().cloned().collect()
        };
        uids.extend(self.sent.keys().map(|(uid, _)| uid.clone()));
        for uid in uids {
            self.evaluate_cluster(&uid).await?;
        }
        Ok(())
    }

    async fn evaluate_cluster(&mut self, uid: &str) -> Result<(), End> {
        for asset in self.spec.assets.clone() {
            self.evaluate_file(uid, asset).await?;
        }
        Ok(())
    }

    async fn evaluate_file(&mut self, uid: &str, asset: Asset) -> Result<(), End> {
        let key = (uid.to_owned(), asset);
        let explicit = !self.spec.uids.is_empty();
        let facts = self.core.cluster_facts(uid);
        let outside_project = !explicit
            && self.spec.project.as_deref().is_some_and(|p| {
                facts
                    .as_ref()
                    .is_some_and(|(_, project)| project.as_str() != p)
            });
        let outcome = if outside_project {
            // Moved out of the project watched: as good as gone for this watch.
            Err(CoreError::not_found(uid))
        } else {
            self.core
                .evaluate(&self.credentials, uid, request_for(asset, self.spec.frp))
                .await
        };
        if let Err(error) = &outcome
            && error.kind() == ErrorKind::Unauthenticated
        {
            return Err(self.credential_refused(error.clone()).await);
        }
        let was_renewing = self
            .renewals
            .iter()
            .any(|(_, u, a)| u == uid && *a == asset);
        self.renewals.retain(|(_, u, a)| !(u == uid && *a == asset));
        if was_renewing
            && let Err(error) = &outcome
            && error.kind() == ErrorKind::Unavailable
        {
            // Minting failed (ledger down, CA unusable): try again shortly, not only at the next
            // change, so that the file is renewed as soon as it can be.
            self.renewals.insert((
                tokio::time::Instant::now() + RENEWAL_RETRY,
                uid.to_owned(),
                asset,
            ));
        }
        if let Ok(served) = &outcome
            && let Some(credential) = &served.credential
        {
            let entry = &credential.entry;
            let now = crate::service::ledger::unix_seconds(std::time::SystemTime::now());
            // Half the lifetime after issue, plus a second: reuse stops there, so the next
            // evaluation mints afresh.
            let half = entry
                .issued_at
                .saturating_add(entry.granted_seconds / 2)
                .saturating_add(1);
            // At the latest a minute from now: evaluating again also reads the ledger, so a
            // credential revoked on any replica is replaced within a minute.
            let wait = std::time::Duration::from_secs(half.saturating_sub(now).max(1))
                .min(REVOCATION_CHECK);
            self.renewals
                .insert((tokio::time::Instant::now() + wait, uid.to_owned(), asset));
            self.held.insert(key.clone(), entry.serial.clone());
        }
        let Some(next) = next_state(self.sent.get(&key), &outcome, explicit) else {
            return Ok(());
        };
        let name = facts.map(|(name, _)| name).unwrap_or_default();
        let event = match (&next, outcome) {
            (Sent::Etag(etag), Ok(served)) => {
                let mut record = Record::new(Event::AssetServed, &served.user, &served.auth);
                record
                    .with("cluster", uid)
                    .with("asset", asset.as_str())
                    .with("allowed", true)
                    .with("request_id", self.credentials.request_id.as_str())
                    .with("sha256", etag.as_str())
                    .with("via", "watch");
                if let Err(unrecorded) = self.core.auditor().record_and_wait(&record).await {
                    // Never delivered unrecorded (--audit-required): the watcher is told the
                    // file is unavailable, and gets it at a later change once records are written.
                    let message = unrecorded.to_string();
                    self.sent.insert(key, Sent::Unavailable(message.clone()));
                    return self
                        .send(WatchEvent::Unavailable {
                            uid: uid.to_owned(),
                            name,
                            asset,
                            message,
                        })
                        .await;
                }
                WatchEvent::Upsert {
                    uid: uid.to_owned(),
                    name: served.cluster.name().to_string(),
                    asset,
                    rendered: served.rendered,
                }
            }
            (Sent::Revoked(reason), Err(error)) => {
                let mut record =
                    Record::new(Event::AssetRefused, &self.opened_by.0, &self.opened_by.1);
                record
                    .with("cluster", uid)
                    .with("asset", asset.as_str())
                    .with("allowed", false)
                    .with("request_id", self.credentials.request_id.as_str())
                    .with("reason", reason.as_str())
                    .with("via", "watch");
                // Taking a file back is never held up by the audit stream.
                let _ = self.core.auditor().record(&record);
                WatchEvent::Revoked {
                    uid: uid.to_owned(),
                    name,
                    asset,
                    reason: reason.clone(),
                    message: error.message().to_owned(),
                }
            }
            (Sent::Removed, Err(error)) => WatchEvent::Removed {
                uid: uid.to_owned(),
                asset,
                message: error.message().to_owned(),
            },
            (Sent::Unavailable(message), _) => WatchEvent::Unavailable {
                uid: uid.to_owned(),
                name,
                asset,
                message: message.clone(),
            },
            _ => return Ok(()),
        };
        // In "every cluster" mode a removed file is forgotten; a named one stays known as removed.
        if next == Sent::Removed && !explicit {
            self.sent.remove(&key);
        } else {
            self.sent.insert(key, next);
        }
        self.send(event).await
    }
}

/// What a watcher should hold for one file now, given what it was last sent and what a download would
/// answer: `None` when that is what it holds already (nothing to send), or a file it never held that
/// is not visible in "every cluster" mode.
fn next_state(
    previous: Option<&Sent>,
    outcome: &Result<crate::service::core::Served, CoreError>,
    explicit: bool,
) -> Option<Sent> {
    let next = match outcome {
        Ok(served) => Sent::Etag(served.rendered.0.etag.clone()),
        Err(error) => match error.kind() {
            ErrorKind::NotFound if previous.is_none() && !explicit => return None,
            ErrorKind::NotFound => Sent::Removed,
            ErrorKind::Forbidden => Sent::Revoked(error.reason().unwrap_or("FORBIDDEN").to_owned()),
            _ => Sent::Unavailable(error.message().to_owned()),
        },
    };
    (previous != Some(&next)).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(kind: ErrorKind) -> Result<crate::service::core::Served, CoreError> {
        Err(match kind {
            ErrorKind::Forbidden => CoreError::forbidden("CLUSTER_DELETE_REQUIRED", "needs delete"),
            ErrorKind::NotFound => CoreError::not_found("u1"),
            kind => CoreError::new(kind, "broken record"),
        })
    }

    #[test]
    fn only_differences_are_sent() {
        let denied = Sent::Revoked("CLUSTER_DELETE_REQUIRED".to_owned());
        let broken = Sent::Unavailable("broken record".to_owned());
        // Every cluster mode: an invisible cluster never held is not mentioned; one held is removed.
        assert_eq!(next_state(None, &refused(ErrorKind::NotFound), false), None);
        let held = Sent::Etag("e1".to_owned());
        assert_eq!(
            next_state(Some(&held), &refused(ErrorKind::NotFound), false),
            Some(Sent::Removed)
        );
        // Named clusters: an unknown one is reported once.
        assert_eq!(
            next_state(None, &refused(ErrorKind::NotFound), true),
            Some(Sent::Removed)
        );
        assert_eq!(
            next_state(Some(&Sent::Removed), &refused(ErrorKind::NotFound), true),
            None
        );
        // A denial and an unavailable record, each once.
        assert_eq!(
            next_state(Some(&held), &refused(ErrorKind::Forbidden), false),
            Some(denied.clone())
        );
        assert_eq!(
            next_state(Some(&denied), &refused(ErrorKind::Forbidden), false),
            None
        );
        assert_eq!(
            next_state(Some(&held), &refused(ErrorKind::Unavailable), true),
            Some(broken.clone())
        );
        assert_eq!(
            next_state(Some(&broken), &refused(ErrorKind::Unavailable), true),
            None
        );
    }
}
