//! The transport-neutral service core: authenticate, find the cluster, decide, render. The gRPC and
//! REST edges both call this, so they cannot drift apart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use kubeconfig_cache::{AssetCache, CacheKey, Tier};
use kubeconfig_policy::{
    Asset, ClusterFacts, ClusterPermissions, Decision, OidcState, PolicyMode, decide,
    may_download_admin,
};
use kubeconfig_render::{FORMAT_VERSION, Request};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::audit::{Auditor, Event, Record};
use crate::loading::inventory::Snapshot;
use crate::loading::record::{Availability, ClusterEntry, ProblemCode};
use crate::metrics::Metrics;
use crate::service::auth::{self, Caller, Credentials, Issuers};
use crate::service::cached::CachedAsset;
use crate::service::error::{CoreError, ErrorKind};
use crate::service::ledger::{self, LedgerEntry};
use crate::service::minting::{self, MintOptions, MintedCredential, Minter};

/// The default and largest page sizes of `ListClusters`.
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 500;
/// The longest reason a caller may give, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Which distinct file a request gets: it names the cache entry and decides what is rendered, so the
/// two can never disagree (a kubeconfig asked for through the proxy of a cluster without one is the
/// direct file, under the direct file's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    KubeconfigThroughProxy,
    KubeconfigDirect,
    AdminKubeconfig,
}

impl Variant {
    pub fn of(request: Request, proxy_enabled: bool) -> Self {
        match request {
            Request::Kubeconfig { frp: true } if proxy_enabled => Variant::KubeconfigThroughProxy,
            Request::Kubeconfig { .. } => Variant::KubeconfigDirect,
            Request::AdminKubeconfig => Variant::AdminKubeconfig,
        }
    }

    /// The name in cache keys and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::KubeconfigThroughProxy => "kubeconfig-frp",
            Variant::KubeconfigDirect => "kubeconfig-direct",
            Variant::AdminKubeconfig => "admin-kubeconfig",
        }
    }

    /// What is rendered for it.
    pub fn request(self) -> Request {
        match self {
            Variant::KubeconfigThroughProxy => Request::Kubeconfig { frp: true },
            Variant::KubeconfigDirect => Request::Kubeconfig { frp: false },
            Variant::AdminKubeconfig => Request::AdminKubeconfig,
        }
    }
}

/// Whether evaluating a file with a minted credential may mint one, or only reuse a kept one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Issue {
    MintOrReuse,
    ReuseOnly,
}

/// The file a request asks for, as the policy names it.
fn asset_of(request: Request) -> Asset {
    match request {
        Request::Kubeconfig { .. } => Asset::Kubeconfig,
        Request::AdminKubeconfig => Asset::AdminKubeconfig,
    }
}

/// The reason given for a file of a cluster the caller cannot see (or that does not exist), beside the
/// deny reason codes of the policy.
pub const NOT_FOUND_REASON: &str = "NOT_FOUND";

/// The code `CheckKubeconfig` gives for a revoked credential to a caller who may not see who revoked
/// it and why.
pub const REVOKED_CODE: &str = "CREDENTIAL_REVOKED";

/// The code in `CheckKubeconfig`'s reason for a credential whose holder may no longer download the
/// cluster's admin kubeconfig.
pub const HOLDER_ACCESS_ENDED_CODE: &str = "HOLDER_ACCESS_ENDED";

/// A served asset.
#[derive(Debug)]
pub struct Served {
    pub rendered: Arc<CachedAsset>,
    /// Which cache tier answered (`render` for a file with a freshly minted credential).
    pub tier: Tier,
    pub cluster: Arc<ClusterEntry>,
    pub user: Arc<str>,
    /// How the caller authenticated (for the audit record).
    pub auth: crate::audit::Auth,
    /// The credential minted (or reused) for the caller, when the file carries one. Boxed: it is
    /// several times the size of the rest, and a result is moved through every layer of a call.
    pub credential: Option<Box<MintedCredential>>,
}

/// The decision for one asset as reported to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetAccess {
    pub allowed: bool,
    /// Empty when allowed.
    pub reason: String,
    /// Empty when allowed.
    pub message: String,
}

impl AssetAccess {
    fn from_decision(decision: &Decision) -> Self {
        match decision {
            Decision::Allow => AssetAccess {
                allowed: true,
                reason: String::new(),
                message: String::new(),
            },
            Decision::Deny(denial) => AssetAccess {
                allowed: false,
                reason: denial.code.as_str().to_owned(),
                message: denial.message.clone(),
            },
            Decision::NotFound => AssetAccess {
                allowed: false,
                reason: NOT_FOUND_REASON.to_owned(),
                message: String::new(),
            },
        }
    }
}

/// A caller's access to one cluster and the facts behind it.
#[derive(Debug, Clone)]
pub struct AccessReport {
    pub cluster: Arc<ClusterEntry>,
    pub permissions: ClusterPermissions,
    pub policy: PolicyMode,
    pub kubeconfig: AssetAccess,
    pub admin_kubeconfig: AssetAccess,
    /// `None` when the cluster is unavailable (its pack could not be analysed).
    pub oidc: Option<Arc<OidcState>>,
    /// The cluster's problems plus any tenant file problem: in detail for callers who may download the
    /// admin kubeconfig, as stable codes (e.g. `EDIT_NOT_APPLIED`) for everyone else.
    pub problems: Vec<String>,
}

/// One page of `ListClusters`.
#[derive(Debug)]
pub struct ClusterPage {
    pub clusters: Vec<AccessReport>,
    pub next_page_token: String,
}

/// Who the server takes a caller to be (`WhoAmI`).
#[derive(Debug)]
pub struct Whoami {
    pub caller: Caller,
    /// The teams the caller counts as a member of: the tenant file's and its credentials' groups.
    pub teams: Vec<String>,
    /// How many clusters it can see (in its `projectuid` project, when given).
    pub visible_clusters: usize,
}

/// The service core.
pub struct Core {
    snapshot: Arc<ArcSwap<Snapshot>>,
    issuers: Arc<Issuers>,
    permits: Arc<Semaphore>,
    cache: Arc<dyn AssetCache<CachedAsset>>,
    metrics: Arc<Metrics>,
    minter: Arc<Minter>,
    /// Every call's deadline (`--request-timeout`).
    request_timeout: std::time::Duration,
    /// Where audit records go.
    auditor: Arc<Auditor>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

/// A page size as asked (0: the default), capped at the maximum.
fn page_size_of(page_size: i32) -> Result<usize, CoreError> {
    match page_size {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(CoreError::bad_request("page_size must not be negative")),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// Checks the length of a reason a caller gives.
fn check_reason(reason: &str) -> Result<(), CoreError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(CoreError::bad_request(format!(
            "reason: at most {MAX_REASON_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Checks a credential serial (lowercase hex) before any lookup.
fn check_serial(serial: &str) -> Result<(), CoreError> {
    if ledger::is_serial(serial) {
        Ok(())
    } else {
        Err(CoreError::bad_request(
            "serial must be the lowercase hex serial of a minted credential",
        ))
    }
}

/// The DER of the first client certificate in a kubeconfig: the value of its first
/// `client-certificate-data:` line. A line scan rather than a YAML parse: the text comes from any
/// caller, and a scan costs O(length) whatever the text holds (no aliases to expand, no nesting).
fn client_certificate_of(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let data = text
        .lines()
        .find_map(|line| {
            line.trim_start()
                .trim_start_matches("- ")
                .strip_prefix("client-certificate-data:")
        })
        .map(|value| value.trim().trim_matches(|c| c == '"' || c == '\''))
        .ok_or("kubeconfig: no user entry with client-certificate-data")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("client-certificate-data: not base64: {e}"))?;
    let pem =
        String::from_utf8(pem).map_err(|_| "client-certificate-data: not PEM text".to_owned())?;
    let bundle = kubeconfig_render::PemBundle::parse(&pem, "CERTIFICATE")
        .map_err(|e| format!("client-certificate-data: {e}"))?;
    bundle
        .blocks()
        .find(|(label, _)| *label == "CERTIFICATE")
        .map(|(_, der)| der.to_vec())
        .ok_or_else(|| "client-certificate-data: no certificate".to_owned())
}

/// What `CheckKubeconfig` is given.
#[derive(Debug, Clone, Copy)]
pub enum CheckSubject<'a> {
    Kubeconfig(&'a str),
    Fingerprint(&'a str),
}

/// What `CheckKubeconfig` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialStatus {
    Current,
    Stale,
    Expired,
    Revoked,
    Unknown,
}

/// A check's outcome: the status, why, and the ledger's entry for those allowed to see it.
#[derive(Debug, Clone)]
pub struct CredentialCheck {
    pub status: CredentialStatus,
    pub reason: String,
    pub entry: Option<LedgerEntry>,
}

/// Checks a cluster uid before any lookup.
pub fn check_uid(uid: &str) -> Result<(), CoreError> {
    if kubeconfig_render::is_valid_uid(uid) {
        Ok(())
    } else {
        Err(CoreError::bad_request("uid must match [a-z0-9-]{1,64}"))
    }
}

/// Why a cluster is unavailable, as told to this caller: the reason (file, field) only to those who may
/// download the admin kubeconfig; the logs always have it.
fn unavailable_message(cluster: &ClusterEntry, reason: &str, detailed: bool) -> String {
    if detailed {
        format!("cluster {} is unavailable: {reason}", cluster.name())
    } else {
        format!(
            "cluster {} is unavailable: its record cannot be used (CLUSTER_UNAVAILABLE); an administrator of the cluster can see why",
            cluster.name()
        )
    }
}

impl Core {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        issuers: Arc<Issuers>,
        max_concurrent_requests: usize,
        cache: Arc<dyn AssetCache<CachedAsset>>,
        metrics: Arc<Metrics>,
        minter: Arc<Minter>,
    ) -> Self {
        Core {
            snapshot,
            issuers,
            permits: Arc::new(Semaphore::new(max_concurrent_requests)),
            cache,
            metrics,
            minter,
            request_timeout: std::time::Duration::from_secs(10),
            auditor: Arc::new(Auditor::default()),
        }
    }

    /// Sends audit records to `auditor` (by default, to the log).
    pub fn with_auditor(mut self, auditor: Arc<Auditor>) -> Self {
        self.auditor = auditor;
        self
    }

    /// Where audit records go.
    pub fn auditor(&self) -> &Arc<Auditor> {
        &self.auditor
    }

    /// Sets every call's deadline.
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The pipeline every call goes through, whatever its edge: admission (the one concurrency limit,
    /// 429 beyond it), the deadline (`--request-timeout`), the call, and its outcome counted under
    /// (edge, method) with its latency. The edges only translate to and from their wire format.
    pub fn run<'a, T: 'a>(
        &'a self,
        edge: &'static str,
        method: &'static str,
        call: impl std::future::Future<Output = Result<T, CoreError>> + 'a,
    ) -> impl std::future::Future<Output = Result<T, CoreError>> + 'a {
        let started = std::time::Instant::now();
        // Boxed before the pipeline's own state exists, which then holds a pointer: every layer
        // around a call (this one, the edge's span, the edge's own future) would otherwise carry a
        // copy of the call's state, moved whole each time a layer is built or boxed.
        let mut call = Box::pin(call);
        async move {
            let result = match self.admit() {
                Ok(_permit) => {
                    // Most calls (a cache hit) are done at their first poll: they need no timer,
                    // whose setting up and tearing down was a visible share of a cached download. A
                    // call that waits is bounded from its start, by a timer boxed for the same
                    // reason as the call (a timer is large).
                    let first =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx)))
                            .await;
                    match first {
                        std::task::Poll::Ready(result) => result,
                        std::task::Poll::Pending => Box::pin(tokio::time::timeout(
                            self.request_timeout.saturating_sub(started.elapsed()),
                            call,
                        ))
                        .await
                        .unwrap_or_else(|_| Err(CoreError::timeout(self.request_timeout))),
                    }
                }
                Err(refused) => Err(refused),
            };
            self.metrics.call(
                edge,
                method,
                crate::service::error::code_of(&result),
                started.elapsed(),
            );
            result
        }
    }

    /// Minting's counters and ledger.
    pub fn minter(&self) -> &Arc<Minter> {
        &self.minter
    }

    /// The slots of `--max-concurrent-requests` (the gRPC edge also holds one from a call's HEADERS
    /// until its request message is complete).
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// The token issuers (for `/readyz` and `/metrics`).
    pub fn issuers(&self) -> &Arc<Issuers> {
        &self.issuers
    }

    /// The service's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The cache's counters.
    pub fn cache_stats(&self) -> kubeconfig_cache::CacheStats {
        self.cache.stats()
    }

    /// The snapshot in service now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Takes a slot among the calls served at once, or refuses with 429; refuses every call as
    /// unavailable while the first inventory load runs.
    pub fn admit(&self) -> Result<SemaphorePermit<'_>, CoreError> {
        self.in_service()?;
        self.permits.try_acquire().map_err(|_| {
            self.metrics
                .limit(crate::metrics::Limit::ConcurrentRequests);
            CoreError::new(
                ErrorKind::TooManyRequests,
                "too many requests in flight; retry shortly",
            )
        })
    }

    /// Refuses (as unavailable) while the first inventory load runs.
    fn in_service(&self) -> Result<(), CoreError> {
        if self.snapshot.load().loaded {
            Ok(())
        } else {
            Err(CoreError::new(
                ErrorKind::Unavailable,
                "the inventory is still loading; retry shortly",
            ))
        }
    }

    async fn caller(
        &self,
        credentials: &Credentials,
        snapshot: &Snapshot,
    ) -> Result<Caller, CoreError> {
        auth::authenticate(credentials, &snapshot.api_keys, &self.issuers).await
    }

    /// The caller's cluster permissions, or `None` when the cluster is invisible to it.
    fn visible(
        snapshot: &Snapshot,
        caller: &Caller,
        cluster: &ClusterEntry,
    ) -> Option<ClusterPermissions> {
        if caller
            .project
            .as_deref()
            .is_some_and(|p| p != &**cluster.project())
        {
            return None;
        }
        let permissions = snapshot.tenant.permissions_of_canonical(
            &caller.user,
            &caller.groups,
            cluster.project(),
        );
        (!permissions.is_empty()).then_some(permissions)
    }

    /// Serves one asset after authenticating the caller and deciding. `options` matter only for a
    /// file that carries a credential minted for the caller.
    pub async fn asset(
        &self,
        credentials: &Credentials,
        uid: &str,
        request: Request,
        options: &MintOptions,
    ) -> Result<Served, CoreError> {
        let span = tracing::Span::current();
        let asset = asset_of(request);
        span.record("kubeconfig.asset", asset.as_str());
        let mut who = None;
        // Required mode refuses before deciding when the audit stream cannot take a record.
        if let Err(unrecorded) = self.auditor.accepting() {
            return Err(CoreError::new(
                ErrorKind::Unavailable,
                unrecorded.to_string(),
            ));
        }
        let result = self
            .serve_asset(
                credentials,
                uid,
                request,
                (options, Issue::MintOrReuse),
                &span,
                &mut who,
            )
            .await;
        // The audit trail: one record per asset request, whatever the outcome; never the content.
        let unauthenticated = crate::audit::Auth::default();
        let audited = match &result {
            Ok(served) => {
                // Fields of a minted credential: recorded when there is one, absent otherwise.
                let credential = served.credential.as_ref();
                let mut record = Record::new(Event::AssetServed, &served.user, &served.auth);
                // A served uid passed check_uid: [a-z0-9-], written without a scan.
                record
                    .with_plain("cluster", uid)
                    .with_plain("asset", asset.as_str())
                    .with("allowed", true)
                    .with_plain("request_id", credentials.request_id.as_str())
                    .with_plain("sha256", served.rendered.0.etag.as_str())
                    .with_plain("tier", served.tier.as_str())
                    .with_some("serial", credential.map(|c| c.entry.serial.as_str()))
                    .with_some(
                        "fingerprint",
                        credential.map(|c| c.entry.fingerprint.as_str()),
                    )
                    .with_some("reused", credential.map(|c| c.reused))
                    .with_some("reason", credential.map(|_| options.reason.as_str()));
                self.auditor.record_and_wait(&record).await
            }
            Err(error) => {
                let (user, auth) = who
                    .as_ref()
                    .map_or(("-", &unauthenticated), |(user, auth): &(Arc<str>, _)| {
                        (&**user, auth)
                    });
                // The uid as asked only once it is known to be one: an unauthenticated caller must
                // not be able to fill the audit stream with a long path.
                let mut record = Record::new(Event::AssetRefused, user, auth);
                if check_uid(uid).is_ok() {
                    record.with_plain("cluster", uid);
                } else {
                    record.with("cluster", "<not a cluster uid>");
                }
                record
                    .with_plain("asset", asset.as_str())
                    .with("allowed", false)
                    .with_plain("request_id", credentials.request_id.as_str())
                    .with(
                        "reason",
                        error.reason().unwrap_or(error.kind().palette_code()),
                    );
                // Nothing is handed out: a refusal is queued, not waited for (a caller cannot hold
                // a permit by getting refused while the sink is slow).
                self.auditor.record(&record).map(drop)
            }
        };
        if let Err(unrecorded) = audited
            && result.is_ok()
        {
            // Never served unrecorded (--audit-required).
            return Err(CoreError::new(
                ErrorKind::Unavailable,
                unrecorded.to_string(),
            ));
        }
        result
    }

    async fn serve_asset(
        &self,
        credentials: &Credentials,
        uid: &str,
        request: Request,
        (options, issue): (&MintOptions, Issue),
        span: &tracing::Span,
        who: &mut Option<(Arc<str>, crate::audit::Auth)>,
    ) -> Result<Served, CoreError> {
        let asset = asset_of(request);
        check_uid(uid)?;
        span.record("kubeconfig.cluster_uid", uid);
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        span.record("enduser.id", &*caller.user);
        let auth = crate::audit::Auth::of(&caller);
        *who = Some((caller.user.clone(), auth.clone()));
        let not_found = || {
            span.record("kubeconfig.decision", "not_found");
            CoreError::not_found(uid)
        };
        let cluster = snapshot.clusters.get(uid).ok_or_else(not_found)?;
        let permissions = Self::visible(&snapshot, &caller, cluster).ok_or_else(not_found)?;
        let ready = match &cluster.availability {
            Availability::Ready(ready) => ready,
            Availability::Unavailable(reason) => {
                span.record("kubeconfig.decision", "unavailable");
                let detailed = may_download_admin(snapshot.tenant.policy(), permissions);
                return Err(CoreError::new(
                    ErrorKind::Unavailable,
                    unavailable_message(cluster, reason, detailed),
                ));
            }
        };
        let facts = ClusterFacts {
            name: cluster.name(),
            oidc: &ready.oidc,
            proxy_enabled: cluster.proxy_enabled,
        };
        match decide(snapshot.tenant.policy(), permissions, &facts, asset) {
            Decision::Allow => span.record("kubeconfig.decision", "allow"),
            Decision::NotFound => return Err(not_found()),
            Decision::Deny(denial) => {
                span.record("kubeconfig.decision", "deny");
                span.record("kubeconfig.reason", denial.code.as_str());
                return Err(CoreError::forbidden(denial.code.as_str(), denial.message));
            }
        };
        if request == Request::AdminKubeconfig
            && snapshot.tenant.credentials().require_reason_for_admin
            && options.reason.trim().is_empty()
        {
            return Err(CoreError::bad_request(
                "reason: this tenant requires a reason for every admin kubeconfig download",
            ));
        }
        check_reason(&options.reason)?;
        let variant = Variant::of(request, cluster.proxy_enabled);
        span.record("kubeconfig.variant", variant.as_str());
        let key = CacheKey::new(
            Arc::clone(cluster.uid()),
            variant.as_str(),
            *cluster.revision.digest(),
            FORMAT_VERSION,
        );
        let renderer = cluster.renderer(&snapshot.tenant).ok_or_else(|| {
            // An entry of a snapshot is ready under the snapshot's tenant; this is a bug if it happens.
            tracing::error!(
                cluster = uid,
                "a ready cluster cannot be rendered under its snapshot's tenant"
            );
            CoreError::new(
                ErrorKind::Unavailable,
                "the cluster cannot be served right now",
            )
        })?;
        if let Some((minting, ca)) = renderer.minting()
            && renderer.carries_admin_credential(variant.request())
        {
            // Per caller: never cached as a file (the credential is kept for reuse instead).
            // Boxed: minting's state is large and only this path needs it.
            let credential = Box::pin(self.minter.credential(
                (&caller.user, &caller.groups, &auth),
                cluster,
                (minting, ca),
                options,
                &credentials.request_id,
                issue == Issue::MintOrReuse,
            ))
            .await?;
            let rendered = renderer.render_with_admin(variant.request(), &credential.certificate);
            let tier = if credential.reused {
                Tier::Memory
            } else {
                Tier::Render
            };
            span.record("kubeconfig.cache_tier", tier.as_str());
            return Ok(Served {
                rendered: Arc::new(CachedAsset::new(rendered)),
                tier,
                cluster: Arc::clone(cluster),
                user: caller.user,
                auth,
                credential: Some(Box::new(credential)),
            });
        }
        let (rendered, tier) = match self.cache.cached(&key) {
            Some(rendered) => (rendered, Tier::Memory),
            None => {
                self.cache
                    .get_or_render(
                        &key,
                        Box::new(move || CachedAsset::new(renderer.render(variant.request()))),
                    )
                    .await
            }
        };
        span.record("kubeconfig.cache_tier", tier.as_str());
        Ok(Served {
            rendered,
            tier,
            cluster: Arc::clone(cluster),
            user: caller.user,
            auth,
            credential: None,
        })
    }

    fn report(
        snapshot: &Snapshot,
        cluster: &Arc<ClusterEntry>,
        permissions: ClusterPermissions,
    ) -> AccessReport {
        let policy = snapshot.tenant.policy();
        let detailed = may_download_admin(policy, permissions);
        let mut problems: Vec<String> = cluster
            .problems
            .iter()
            .map(|p| {
                if detailed {
                    p.detail.clone()
                } else {
                    p.code.as_str().to_owned()
                }
            })
            .collect();
        if let Some(problem) = &snapshot.tenant_problem {
            problems.push(if detailed {
                format!("the tenant file's latest edit was not applied; the previous version is served: {problem}")
            } else {
                ProblemCode::TenantEditNotApplied.as_str().to_owned()
            });
        }
        let (kubeconfig, admin_kubeconfig, oidc) = match &cluster.availability {
            Availability::Ready(ready) => {
                let facts = ClusterFacts {
                    name: cluster.name(),
                    oidc: &ready.oidc,
                    proxy_enabled: cluster.proxy_enabled,
                };
                let kube = decide(policy, permissions, &facts, Asset::Kubeconfig);
                let admin = decide(policy, permissions, &facts, Asset::AdminKubeconfig);
                (
                    AssetAccess::from_decision(&kube),
                    AssetAccess::from_decision(&admin),
                    Some(ready.oidc.clone()),
                )
            }
            Availability::Unavailable(reason) => {
                let access = AssetAccess {
                    allowed: false,
                    reason: ProblemCode::ClusterUnavailable.as_str().to_owned(),
                    message: unavailable_message(cluster, reason, detailed),
                };
                (access.clone(), access, None)
            }
        };
        AccessReport {
            cluster: Arc::clone(cluster),
            permissions,
            policy,
            kubeconfig,
            admin_kubeconfig,
            oidc,
            problems,
        }
    }

    /// Explains the caller's access to one cluster.
    pub async fn access(
        &self,
        credentials: &Credentials,
        uid: &str,
    ) -> Result<AccessReport, CoreError> {
        check_uid(uid)?;
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        let cluster = snapshot
            .clusters
            .get(uid)
            .ok_or_else(|| CoreError::not_found(uid))?;
        let permissions =
            Self::visible(&snapshot, &caller, cluster).ok_or_else(|| CoreError::not_found(uid))?;
        Ok(Self::report(&snapshot, cluster, permissions))
    }

    /// Authenticates a caller against the snapshot in service (for calls that outlive one request,
    /// such as watch streams, which authenticate again at every change).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Caller, CoreError> {
        self.in_service()?;
        self.caller(credentials, &self.snapshot()).await
    }

    /// Who the caller is, as every other call sees it: for debugging credentials.
    pub async fn whoami(&self, credentials: &Credentials) -> Result<Whoami, CoreError> {
        self.in_service()?;
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        let teams = snapshot
            .tenant
            .principal(&caller.user, caller.groups.iter().cloned())
            .teams()
            .map(str::to_owned)
            .collect();
        let visible_clusters = self.visible_uids(&caller, None).len();
        Ok(Whoami {
            caller,
            teams,
            visible_clusters,
        })
    }

    /// What [`Core::asset`] would answer now, without an audit event: for watchers that re-evaluate
    /// a file at every change and report only what differs.
    pub async fn evaluate(
        &self,
        credentials: &Credentials,
        uid: &str,
        request: Request,
    ) -> Result<Served, CoreError> {
        self.serve_asset(
            credentials,
            uid,
            request,
            (&MintOptions::default(), Issue::MintOrReuse),
            &tracing::Span::none(),
            &mut None,
        )
        .await
    }

    /// Whether the file a caller holds (`etag`, downloaded with `options`) is still what
    /// [`Core::asset`] would answer: for the REST long-poll. It evaluates with the caller's own
    /// options, and a file with a minted credential is only compared with a credential kept for
    /// reuse, never minted (the download that follows the wait mints, once, for the caller).
    /// Anything but the same file (another file, a refusal, no credential to reuse) is a change.
    pub async fn held_file_changed(
        &self,
        credentials: &Credentials,
        uid: &str,
        request: Request,
        options: &MintOptions,
        etag: &str,
    ) -> bool {
        match self
            .serve_asset(
                credentials,
                uid,
                request,
                (options, Issue::ReuseOnly),
                &tracing::Span::none(),
                &mut None,
            )
            .await
        {
            Ok(served) => served.rendered.0.etag != etag,
            Err(_) => true,
        }
    }

    /// The uids of every cluster visible to `caller` (optionally in one project), in order. Costs
    /// O(visible clusters): for opening a watch, not for each call.
    pub fn visible_uids(&self, caller: &Caller, project: Option<&str>) -> Vec<String> {
        let snapshot = self.snapshot();
        let principal = snapshot
            .tenant
            .principal(&caller.user, caller.groups.iter().cloned());
        let mut uids: Vec<String> = snapshot
            .by_project
            .iter()
            .filter(|(name, _)| {
                project.is_none_or(|p| *p == ***name)
                    && caller.project.as_deref().is_none_or(|p| *p == ***name)
            })
            .filter(|(name, _)| {
                !snapshot
                    .tenant
                    .effective_permissions(&principal, name)
                    .is_empty()
            })
            .flat_map(|(_, members)| members.iter().map(|uid| uid.to_string()))
            .collect();
        uids.sort_unstable();
        uids
    }

    /// The caller's permissions on a cluster in service, if it can see it.
    fn permissions_on(
        snapshot: &Snapshot,
        caller: &Caller,
        uid: &str,
    ) -> Option<(Arc<ClusterEntry>, ClusterPermissions)> {
        let cluster = snapshot.clusters.get(uid)?;
        let permissions = Self::visible(snapshot, caller, cluster)?;
        Some((Arc::clone(cluster), permissions))
    }

    /// Whether the caller may see a ledger entry's details: its own user, or an admin of its cluster.
    /// `visible`: the caller's permissions on the entry's cluster, when it can see it.
    fn may_see_entry(
        snapshot: &Snapshot,
        caller: &Caller,
        entry: &LedgerEntry,
        visible: Option<ClusterPermissions>,
    ) -> bool {
        *entry.issued_to == *caller.user
            || visible.is_some_and(|p| may_download_admin(snapshot.tenant.policy(), p))
    }

    /// Whether the holder of a credential (its user, with the groups of the token it was issued
    /// under) may still receive a minted credential of `cluster`: its admin kubeconfig, or a
    /// kubeconfig that carries the admin credential.
    fn holder_still_allowed(
        snapshot: &Snapshot,
        cluster: &ClusterEntry,
        entry: &LedgerEntry,
    ) -> bool {
        let holder = Caller {
            user: Arc::from(entry.issued_to.as_str()),
            groups: entry.issued_groups.clone().into(),
            project: None,
            proofs: smallvec::SmallVec::new(),
        };
        let Some(permissions) = Self::visible(snapshot, &holder, cluster) else {
            return false;
        };
        let policy = snapshot.tenant.policy();
        let Availability::Ready(ready) = &cluster.availability else {
            return may_download_admin(policy, permissions);
        };
        let facts = ClusterFacts {
            name: cluster.name(),
            oidc: &ready.oidc,
            proxy_enabled: cluster.proxy_enabled,
        };
        let allowed = |asset| matches!(decide(policy, permissions, &facts, asset), Decision::Allow);
        allowed(Asset::AdminKubeconfig)
            || (allowed(Asset::Kubeconfig)
                && cluster.renderer(&snapshot.tenant).is_some_and(|renderer| {
                    [true, false]
                        .into_iter()
                        .any(|frp| renderer.carries_admin_credential(Request::Kubeconfig { frp }))
                }))
    }

    /// Whether a minted credential is still current (see `CheckKubeconfig`).
    pub async fn check_credential(
        &self,
        credentials: &Credentials,
        subject: CheckSubject<'_>,
    ) -> Result<CredentialCheck, CoreError> {
        self.in_service()?;
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        let now = ledger::unix_seconds(std::time::SystemTime::now());
        let (fingerprint, certificate_expiry) = match subject {
            CheckSubject::Fingerprint(fingerprint) => {
                let fingerprint = fingerprint.trim().to_ascii_lowercase().replace(':', "");
                if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(CoreError::bad_request(
                        "fingerprint: expected the SHA-256 of the certificate, 64 hex characters",
                    ));
                }
                (fingerprint, None)
            }
            CheckSubject::Kubeconfig(text) => {
                let der = client_certificate_of(text).map_err(CoreError::bad_request)?;
                let facts = kubeconfig_mint::inspect(&der)
                    .map_err(|e| CoreError::bad_request(format!("client-certificate-data: {e}")))?;
                (
                    facts.fingerprint,
                    Some(ledger::unix_seconds(facts.not_after)),
                )
            }
        };
        let unknown = |reason: &str| CredentialCheck {
            status: CredentialStatus::Unknown,
            reason: reason.to_owned(),
            entry: None,
        };
        let entry = self
            .minter
            .ledger()
            .by_fingerprint(&fingerprint)
            .await
            .map_err(|e| CoreError::new(ErrorKind::Unavailable, e.to_string()))?;
        let Some(entry) = entry else {
            if certificate_expiry.is_some_and(|expiry| expiry <= now) {
                return Ok(CredentialCheck {
                    status: CredentialStatus::Expired,
                    reason: "the certificate has expired".to_owned(),
                    entry: None,
                });
            }
            return Ok(unknown(
                "not a credential this service issued, or one it no longer remembers",
            ));
        };
        let visible = Self::permissions_on(&snapshot, &caller, &entry.cluster).map(|(_, p)| p);
        if visible.is_none() && *entry.issued_to != *caller.user {
            return Ok(unknown(
                "not a credential this service issued, or one it no longer remembers",
            ));
        }
        let detailed = Self::may_see_entry(&snapshot, &caller, &entry, visible);
        let (status, reason) = if let Some(revocation) = &entry.revoked {
            // Who revoked it and their words only to those who may see the entry (its holder and
            // the cluster's admins); a stable code to anyone else who can see the cluster.
            let reason = if detailed {
                format!("revoked by {}: {}", revocation.by, revocation.reason)
            } else {
                format!(
                    "revoked ({REVOKED_CODE}); its holder and the cluster's administrators can see by whom and why"
                )
            };
            (CredentialStatus::Revoked, reason)
        } else if entry.not_after <= now {
            (
                CredentialStatus::Expired,
                "the certificate has expired".to_owned(),
            )
        } else {
            match snapshot.clusters.get(entry.cluster.as_str()) {
                None => (
                    CredentialStatus::Stale,
                    "the cluster is no longer in the inventory".to_owned(),
                ),
                Some(cluster) => {
                    let current = minting::cluster_digest(cluster, cluster.record.client_ca());
                    if current != entry.cluster_digest {
                        (
                            CredentialStatus::Stale,
                            "the cluster's API server, CA or client CA changed since it was issued; download a new file"
                                .to_owned(),
                        )
                    } else if !Self::holder_still_allowed(&snapshot, cluster, &entry) {
                        // It keeps working against the cluster until it expires (Kubernetes has no
                        // revocation): say so, so that tooling drops it and an admin can revoke it.
                        let reason = if detailed {
                            format!(
                                "its holder {} may no longer download this cluster's admin kubeconfig ({HOLDER_ACCESS_ENDED_CODE}); it still works against the cluster until it expires: revoke it, or rotate the client CA",
                                entry.issued_to
                            )
                        } else {
                            format!(
                                "its holder may no longer download this cluster's admin kubeconfig ({HOLDER_ACCESS_ENDED_CODE})"
                            )
                        };
                        (CredentialStatus::Stale, reason)
                    } else {
                        (CredentialStatus::Current, String::new())
                    }
                }
            }
        };
        Ok(CredentialCheck {
            status,
            reason,
            entry: detailed.then_some(entry),
        })
    }

    /// Revokes a minted credential (its own user or an admin of its cluster).
    pub async fn revoke_credential(
        &self,
        credentials: &Credentials,
        serial: &str,
        reason: &str,
    ) -> Result<LedgerEntry, CoreError> {
        self.in_service()?;
        check_serial(serial)?;
        check_reason(reason)?;
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        let ledger = self.minter.ledger();
        let unavailable =
            |e: ledger::LedgerError| CoreError::new(ErrorKind::Unavailable, e.to_string());
        let not_found = || {
            CoreError::new(
                ErrorKind::NotFound,
                format!("credential {serial} not found"),
            )
        };
        let mut entry = ledger
            .by_serial(serial)
            .await
            .map_err(unavailable)?
            .ok_or_else(not_found)?;
        let visible = Self::permissions_on(&snapshot, &caller, &entry.cluster).map(|(_, p)| p);
        if !Self::may_see_entry(&snapshot, &caller, &entry, visible) {
            return Err(not_found());
        }
        if entry.revoked.is_none() {
            entry.revoked = Some(ledger::Revocation {
                at: ledger::unix_seconds(std::time::SystemTime::now()),
                by: caller.user.to_string(),
                reason: reason.to_owned(),
            });
            ledger.record(&entry).await.map_err(unavailable)?;
            self.minter.revoked(&entry.serial);
            let auth = crate::audit::Auth::of(&caller);
            let mut record = Record::new(Event::CredentialRevoked, &caller.user, &auth);
            record
                .with("cluster", entry.cluster.as_str())
                .with("serial", entry.serial.as_str())
                .with("fingerprint", entry.fingerprint.as_str())
                .with("reason", reason)
                .with("request_id", credentials.request_id.as_str());
            // A revocation has taken effect whether or not its record is written: it is never
            // refused for the audit stream's sake (a dropped record is counted).
            let _ = self.auditor.record(&record);
        }
        Ok(entry)
    }

    /// One page of a cluster's unexpired minted credentials (admins of the cluster).
    pub async fn issued_credentials(
        &self,
        credentials: &Credentials,
        uid: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<LedgerEntry>, String), CoreError> {
        self.in_service()?;
        check_uid(uid)?;
        let size = page_size_of(page_size)?;
        if !page_token.is_empty() {
            check_serial(page_token).map_err(|_| {
                CoreError::bad_request("page_token is not a token this service issued")
            })?;
        }
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        let (_, permissions) = Self::permissions_on(&snapshot, &caller, uid)
            .ok_or_else(|| CoreError::not_found(uid))?;
        if !may_download_admin(snapshot.tenant.policy(), permissions) {
            return Err(CoreError::forbidden(
                "ADMIN_REQUIRED",
                "listing issued credentials needs the permissions to download the admin kubeconfig",
            ));
        }
        let now = ledger::unix_seconds(std::time::SystemTime::now());
        let ledger::LedgerPage {
            mut entries,
            resume_after,
        } = self
            .minter
            .ledger()
            .page(uid, page_token, size + 1, now)
            .await
            .map_err(|e| CoreError::new(ErrorKind::Unavailable, e.to_string()))?;
        // A page that stopped at the ledger's scan bound (a run of expired credentials) is short,
        // possibly empty, and still has a next page: only an empty token ends the listing.
        let next = if entries.len() > size {
            entries.truncate(size);
            entries.last().map(|e| e.serial.clone()).unwrap_or_default()
        } else {
            resume_after.unwrap_or_default()
        };
        Ok((entries, next))
    }

    /// The name and project of a cluster in service, if any.
    pub fn cluster_facts(&self, uid: &str) -> Option<(String, String)> {
        self.snapshot
            .load()
            .clusters
            .get(uid)
            .map(|c| (c.name().to_string(), c.project().to_string()))
    }

    /// Lists the clusters visible to the caller, ordered by uid. The page token is the last uid served.
    pub async fn list(
        &self,
        credentials: &Credentials,
        page_size: i32,
        page_token: &str,
    ) -> Result<ClusterPage, CoreError> {
        let size = page_size_of(page_size)?;
        if !page_token.is_empty() {
            check_uid(page_token).map_err(|_| {
                CoreError::bad_request("page_token is not a token this service issued")
            })?;
        }
        let snapshot = self.snapshot();
        let caller = self.caller(credentials, &snapshot).await?;
        let start = if page_token.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(std::sync::Arc::<str>::from(page_token))
        };
        // The caller's permissions per project (few), then only the uids of visible projects, from
        // the page token on: the cost is O(projects + page), not O(fleet).
        let principal = snapshot
            .tenant
            .principal(&caller.user, caller.groups.iter().cloned());
        let visible: Vec<(&std::sync::Arc<str>, ClusterPermissions)> = snapshot
            .by_project
            .keys()
            .filter(|project| caller.project.as_deref().is_none_or(|p| p == &***project))
            .map(|project| {
                (
                    project,
                    snapshot.tenant.effective_permissions(&principal, project),
                )
            })
            .filter(|(_, permissions)| !permissions.is_empty())
            .collect();
        let range = (start, std::ops::Bound::Unbounded);
        let mut uids: Vec<&std::sync::Arc<str>> = Vec::new();
        for (project, _) in &visible {
            if let Some(members) = snapshot.by_project.get(*project) {
                uids.extend(members.range(range.clone()).take(size + 1));
            }
        }
        uids.sort_unstable();
        let more = uids.len() > size;
        uids.truncate(size);
        // The token is the last uid examined, not the last one reported, so a page never ends a
        // listing early whatever it skips.
        let next_page_token = match (more, uids.last()) {
            (true, Some(last)) => last.to_string(),
            _ => String::new(),
        };
        let mut clusters = Vec::with_capacity(uids.len());
        for uid in uids {
            let Some(cluster) = snapshot.clusters.get(uid) else {
                continue;
            };
            let Some((_, permissions)) = visible.iter().find(|(p, _)| *p == cluster.project())
            else {
                continue;
            };
            clusters.push(Self::report(&snapshot, cluster, *permissions));
        }
        Ok(ClusterPage {
            clusters,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kubeconfig_cache::{BoxFuture, CacheStats};

    use super::*;
    use crate::loading::inventory::{Inventory, Origin};

    /// A fake of our own cache port that records what it was asked for and always renders.
    #[derive(Default)]
    struct RecordingCache {
        keys: Mutex<Vec<String>>,
    }

    impl AssetCache<CachedAsset> for RecordingCache {
        fn get_or_render<'a>(
            &'a self,
            key: &'a CacheKey,
            render: Box<dyn FnOnce() -> CachedAsset + Send + 'a>,
        ) -> BoxFuture<'a, (Arc<CachedAsset>, Tier)> {
            self.keys.lock().unwrap().push(key.text());
            Box::pin(async move { (Arc::new(render()), Tier::Render) })
        }

        fn invalidate_clusters(&self, _clusters: &[String]) {}

        fn stats(&self) -> CacheStats {
            CacheStats::default()
        }
    }

    fn minter() -> Arc<Minter> {
        Arc::new(Minter::new(Arc::new(
            crate::service::ledger::MemoryLedger::default(),
        )))
    }

    fn core(cache: Arc<RecordingCache>) -> Core {
        let (_, snapshot, _) = Inventory::load(Origin::Demo).unwrap();
        Core::new(
            Arc::new(ArcSwap::from_pointee(snapshot)),
            Arc::default(),
            8,
            cache,
            Arc::new(Metrics::default()),
            minter(),
        )
    }

    fn key(api_key: &str) -> Credentials {
        Credentials {
            api_key: Some(api_key.to_owned()),
            ..Default::default()
        }
    }

    const PROD_EAST: &str = "6470a2b1c5e6f1a2b3c4d5e1";

    /// The cache key and the rendered file come from one value: requests that render the same file for
    /// a cluster share one variant, and different files never share one.
    #[test]
    fn a_variant_names_exactly_the_bytes_it_renders() {
        let (_, snapshot, _) = Inventory::load(Origin::Demo).unwrap();
        let requests = [
            Request::Kubeconfig { frp: true },
            Request::Kubeconfig { frp: false },
            Request::AdminKubeconfig,
        ];
        for cluster in snapshot.clusters.values() {
            let Some(renderer) = cluster.renderer(&snapshot.tenant) else {
                continue;
            };
            for a in requests {
                for b in requests {
                    let (va, vb) = (
                        Variant::of(a, cluster.proxy_enabled),
                        Variant::of(b, cluster.proxy_enabled),
                    );
                    let file = |r: Request| {
                        let rendered = renderer.render(r);
                        (rendered.yaml, rendered.file_name)
                    };
                    assert_eq!(
                        va == vb,
                        file(a) == file(b),
                        "{} {a:?} {b:?}",
                        cluster.name()
                    );
                    assert_eq!(file(va.request()), file(a));
                }
            }
        }
    }

    #[test]
    fn every_call_is_unavailable_until_the_first_load_is_in_service() {
        let store = Arc::new(ArcSwap::from_pointee(Snapshot::loading()));
        let core = Core::new(
            Arc::clone(&store),
            Arc::default(),
            8,
            Arc::new(RecordingCache::default()),
            Arc::new(Metrics::default()),
            minter(),
        );
        let refused = core.admit().expect_err("refused while loading");
        assert_eq!(refused.kind(), ErrorKind::Unavailable);
        let (_, snapshot, _) = Inventory::load(Origin::Demo).unwrap();
        store.store(Arc::new(snapshot));
        assert!(core.admit().is_ok());
    }

    #[tokio::test]
    async fn the_cache_is_asked_only_after_an_allow() {
        let cache = Arc::new(RecordingCache::default());
        let core = core(Arc::clone(&cache));
        let refused = [
            (
                key("demo-viewer-key"),
                PROD_EAST,
                Request::AdminKubeconfig,
                ErrorKind::Forbidden,
            ),
            (
                key("demo-nobody-key"),
                PROD_EAST,
                Request::Kubeconfig { frp: true },
                ErrorKind::NotFound,
            ),
            (
                key("wrong"),
                PROD_EAST,
                Request::Kubeconfig { frp: true },
                ErrorKind::Unauthenticated,
            ),
            (
                key("demo-admin-key"),
                "6470a2b1c5e6f1a2b3c4d5e5",
                Request::AdminKubeconfig,
                ErrorKind::Unavailable,
            ),
            (
                key("demo-admin-key"),
                "NOT-A-UID",
                Request::AdminKubeconfig,
                ErrorKind::BadRequest,
            ),
        ];
        for (credentials, uid, request, kind) in refused {
            let error = core
                .asset(&credentials, uid, request, &MintOptions::default())
                .await
                .unwrap_err();
            assert_eq!(error.kind(), kind, "{uid} {request:?}");
        }
        assert!(
            cache.keys.lock().unwrap().is_empty(),
            "no refused request reached the cache"
        );

        let served = core
            .asset(
                &key("demo-viewer-key"),
                PROD_EAST,
                Request::Kubeconfig { frp: false },
                &MintOptions::default(),
            )
            .await
            .unwrap();
        let revision = &served.cluster.revision;
        let keys = cache.keys.lock().unwrap().clone();
        assert_eq!(keys.len(), 1);
        assert!(
            keys[0].contains(PROD_EAST)
                && keys[0].contains("kubeconfig-direct")
                && keys[0].contains(&revision.to_string()),
            "{keys:?}"
        );
    }

    #[test]
    fn a_checked_kubeconfig_is_scanned_not_parsed_and_says_what_is_wrong() {
        // A billion laughs: nine levels of nine references.
        let mut bomb = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_owned();
        for level in 1..10 {
            let previous = format!("*l{}", level - 1);
            bomb.push_str(&format!(
                "l{level}: &l{level} [{}]\n",
                vec![previous; 9].join(", ")
            ));
        }
        bomb.push_str("users: *l9\n");
        for (text, expected) in [
            ("users: [", "no user entry"),
            ("users: []", "no user entry with client-certificate-data"),
            (
                "users:\n- name: a\n  user:\n    client-certificate-data: '%%%'\n",
                "not base64",
            ),
            (bomb.as_str(), "no user entry"),
            (&"[".repeat(100_000), "no user entry"),
            (
                "users:\n- name: a\n  user:\n    client-certificate-data: aGVsbG8=\n",
                "client-certificate-data: no PEM block",
            ),
        ] {
            let error = client_certificate_of(text).unwrap_err();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[tokio::test]
    async fn a_ledger_entry_past_its_expiry_checks_as_expired_and_a_revoked_one_as_revoked() {
        let ledger = Arc::new(crate::service::ledger::MemoryLedger::default());
        let core = Core::new(
            Arc::new(ArcSwap::from_pointee(
                Inventory::load(Origin::Demo).unwrap().1,
            )),
            Arc::default(),
            8,
            Arc::new(RecordingCache::default()),
            Arc::new(Metrics::default()),
            Arc::new(Minter::new(ledger.clone())),
        );
        let now = ledger::unix_seconds(std::time::SystemTime::now());
        let entry = |serial: &str, not_after: u64| {
            LedgerEntry::sample(serial, "6470a2b1c5e6f1a2b3c4d5e7", not_after)
        };
        use crate::service::ledger::Ledger as _;
        ledger.record(&entry("aa", now - 10)).await.unwrap();
        ledger.record(&entry("bb", now + 3600)).await.unwrap();
        let admin = key("demo-admin-key");
        let check = |fingerprint: String| {
            let core = &core;
            let admin = admin.clone();
            async move {
                core.check_credential(&admin, CheckSubject::Fingerprint(&fingerprint))
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            check("aa".repeat(32)).await.status,
            CredentialStatus::Expired
        );
        // Recorded with another cluster digest than the cluster's now: stale.
        assert_eq!(check("bb".repeat(32)).await.status, CredentialStatus::Stale);
        core.revoke_credential(&admin, "bb", "test").await.unwrap();
        let revoked = check("bb".repeat(32)).await;
        assert_eq!(revoked.status, CredentialStatus::Revoked);
        assert!(
            revoked.reason.contains("admin@demo.test"),
            "{}",
            revoked.reason
        );
        // Someone who cannot see the cluster learns nothing.
        let nobody = core
            .check_credential(
                &key("demo-nobody-key"),
                CheckSubject::Fingerprint(&"bb".repeat(32)),
            )
            .await
            .unwrap();
        assert_eq!(nobody.status, CredentialStatus::Unknown);
        assert!(nobody.entry.is_none());
        let refused = core
            .revoke_credential(&key("demo-viewer-key"), "bb", "")
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::NotFound);
    }
}
