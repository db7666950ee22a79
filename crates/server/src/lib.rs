//! kubeconfigd: a gRPC service (with a REST shim) that hands out kubeconfig files for managed
//! Kubernetes clusters, deciding per caller who may download which.
//!
//! The binary is a thin `main.rs`; everything here is library code that tests start on port 0 with
//! [`run`]. Dependencies point one way: this crate uses `kubeconfig-policy` (access rules),
//! `kubeconfig-render` (documents) and `kubeconfig-proto` (generated API); none of them use it.
//!
//! Three groups of modules, each a directory:
//!
//! - [`loading`]: [`inventory`](loading::inventory) and [`record`](loading::record) (the tenant file and cluster files, loaded into
//!   snapshots), [`files`](loading::files) (reading files safely), [`watch`](loading::watch) (file watching and snapshot swaps),
//!   [`feed`](loading::feed) (the per-cluster change feed), [`demo`](loading::demo) (the built-in demo data).
//! - [`service`]: [`core`](service::core) (the transport-neutral pipeline), [`auth`](service::auth) (API keys and JWTs), [`error`](service::error)
//!   (its one error type), [`cached`](service::cached) (rendered files in the cache), [`streams`](service::streams) (watching files),
//!   [`minting`](service::minting) and [`ledger`](service::ledger) (short-lived admin credentials and their record).
//! - [`edges`]: [`grpc`](edges::grpc), [`rest`](edges::rest) and [`admin`](edges::admin) (probes, metrics, OpenAPI), on [`connections`](edges::connections)
//!   (accepting and keeping connections within limits) and [`tls`](edges::tls).
//!
//! Beside them: [`config`] (flags and their validation), [`telemetry`] and [`metrics`] (logs, traces,
//! counters).

pub mod audit;
pub mod config;
pub mod edges;
pub mod import;
pub mod loading;
pub mod metrics;
pub mod service;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_server::KubeconfigServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tonic_health::ServingStatus;

use crate::config::{Config, MAX_REQUEST_BYTES, Source};
use crate::loading::inventory::{Inventory, Origin};
use crate::metrics::Metrics;

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The health service name of the API.
pub const SERVICE_NAME: &str = "kubeconfig.v1.KubeconfigService";

/// Already-bound listeners (tests bind port 0 and read the address back).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub rest: Option<TcpListener>,
    /// Probes, metrics and the OpenAPI document.
    pub admin: TcpListener,
}

/// Loads the inventory, serves gRPC (and REST) until `shutdown` completes, then drains in-flight calls.
///
/// The listeners answer from the start; until the first load is in service, health is NOT_SERVING,
/// `/readyz` 503 and every call UNAVAILABLE. On shutdown, health turns NOT_SERVING first; new calls
/// are refused once draining starts; the function returns when every in-flight call has finished or
/// the grace period ran out.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let origin = origin_of(&config.source);
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let loading = {
        let origin = origin.clone();
        tokio::task::spawn_blocking(move || Inventory::load(origin))
    };
    let store = Arc::new(ArcSwap::from_pointee(
        loading::inventory::Snapshot::loading(),
    ));
    let (cache, ledger) = cache_of(&config);
    let audit = AuditWriters::start(&config.audit)?;
    let minter = Arc::new(
        service::minting::Minter::new(ledger)
            .with_rate_limit(config.max_mints_per_minute)
            .with_auditor(Arc::clone(&audit.auditor)),
    );
    let jwt = config
        .jwt
        .as_ref()
        .map(service::auth::JwtVerifier::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--jwt-public-key-file: {e}"))?;
    let issuers = Arc::new(
        service::auth::Issuers::configured(
            jwt,
            config.tokens,
            config.authentication.as_ref().map(|(_, c)| c),
        )
        .map_err(|e| {
            let file = config
                .authentication
                .as_ref()
                .map(|(path, _)| path.display());
            anyhow::anyhow!(
                "--authentication-config: {}: {e}",
                file.map(|f| f.to_string()).unwrap_or_default()
            )
        })?,
    );
    let _issuers_background =
        issuers.spawn(config.authentication.as_ref().map(|(path, _)| path.clone()));
    let metrics = Arc::new(Metrics::with_sources(crate::metrics::Sources {
        cache: Arc::clone(&cache),
        minter: Arc::clone(&minter),
        issuers: Arc::clone(&issuers),
        auditor: Arc::clone(&audit.auditor),
    }));
    let core = Arc::new(
        service::core::Core::new(
            Arc::clone(&store),
            Arc::clone(&issuers),
            config.max_concurrent_requests as usize,
            Arc::clone(&cache),
            Arc::clone(&metrics),
            minter,
        )
        .with_request_timeout(config.request_timeout)
        .with_auditor(Arc::clone(&audit.auditor)),
    );
    let _observers = observe(&core);
    // Certificates, keys, the client CA bundle and CRLs are re-read as they change.
    let _tls_reloading = config.tls.as_ref().map(edges::tls::ServerTls::watch);
    let feed = Arc::new(loading::feed::Feed::default());
    let _invalidator = spawn_invalidator(&feed, cache);

    let (stop_tx, stop_rx) = signal::channel(false);
    let (ready_tx, ready_rx) = signal::channel(false);
    let watchers = Arc::new(service::streams::Watchers::new(
        Arc::clone(&core),
        Arc::clone(&feed),
        config.watch,
        stop_rx.clone(),
    ));
    let mut tasks = Tasks::new();
    let addresses = (
        listeners.grpc.local_addr().ok(),
        listeners.rest.as_ref().and_then(|l| l.local_addr().ok()),
        listeners.admin.local_addr().ok(),
    );
    let limits = config.connections.clone();
    let slots = edges::connections::Slots::new(limits.max_connections, limits.header_read_timeout);
    let router = grpc_router(&config, health_service, &core, &watchers)?;
    spawn_grpc(
        &mut tasks,
        router,
        listeners.grpc,
        config.tls.as_ref().map(edges::tls::ServerTls::handshake),
        &limits,
        slots.clone(),
        stopped(stop_rx.clone()),
    );
    if let (true, Some(listener)) = (config.rest, listeners.rest) {
        let router = edges::rest::router(Arc::clone(&watchers));
        spawn_http(
            &mut tasks,
            router,
            listener,
            config.tls.as_ref().map(edges::tls::ServerTls::handshake),
            &limits,
            slots,
            stopped(stop_rx.clone()),
        );
    }
    // The admin listener: probes and scraping, plain HTTP, its own small connection budget so that a
    // flood of API connections cannot starve the probes.
    spawn_http(
        &mut tasks,
        edges::admin::router(Arc::clone(&core), ready_rx),
        listeners.admin,
        None,
        &limits,
        edges::connections::Slots::new(64, limits.header_read_timeout),
        stopped(stop_rx.clone()),
    );
    let shown = |address: Option<std::net::SocketAddr>| {
        address.map_or_else(|| "off".to_owned(), |a| a.to_string())
    };
    tracing::info!(
        grpc = %shown(addresses.0),
        rest = %shown(addresses.1.filter(|_| config.rest)),
        admin = %shown(addresses.2),
        tls = config.tls.is_some(),
        client_certificates = config
            .tls
            .as_ref()
            .is_some_and(edges::tls::ServerTls::client_certificates),
        "serving"
    );

    let mut shutdown = std::pin::pin!(shutdown);
    let loaded = tokio::select! {
        loaded = loading => loaded.context("inventory loader panicked")?,
        () = &mut shutdown => {
            tracing::info!("stopped while loading the inventory");
            return Ok(());
        }
    };
    let _watch = put_in_service(loaded, origin, &store, &metrics, &feed)?;
    set_health(&health, ServingStatus::Serving).await;
    let _ = ready_tx.send(true);
    tracing::info!("ready");

    tokio::select! {
        () = &mut shutdown => {}
        Some(result) = tasks.join_next() => {
            // A server stopped on its own: that is always an error.
            result.context("server task panicked")??;
            anyhow::bail!("a server stopped unexpectedly");
        }
    }
    tracing::info!(
        delay = %humantime::format_duration(config.shutdown_delay),
        "shutting down: health is NOT_SERVING"
    );
    let _ = ready_tx.send(false);
    set_health(&health, ServingStatus::NotServing).await;
    tokio::time::sleep(config.shutdown_delay).await;
    let _ = stop_tx.send(true);
    drain(tasks, config.shutdown_grace).await?;
    audit.finish().await;
    tracing::info!("stopped");
    Ok(())
}

/// The auditor and the writers of its sinks.
struct AuditWriters {
    auditor: Arc<audit::Auditor>,
    file: Option<std::thread::JoinHandle<()>>,
    webhook: Option<tokio::task::JoinHandle<()>>,
}

impl AuditWriters {
    /// Opens the audit file and starts the writers (an error names the flag).
    fn start(settings: &config::AuditSettings) -> anyhow::Result<Self> {
        let auditor = Arc::new(settings.auditor());
        let file = settings
            .file
            .as_ref()
            .map(|file| {
                audit::file::spawn(&auditor, file.clone()).map_err(|e| {
                    let path = file
                        .path
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |p| p.display().to_string());
                    anyhow::anyhow!("--audit-log {path}: {e}")
                })
            })
            .transpose()?;
        let webhook = settings
            .webhook
            .as_ref()
            .and_then(|webhook| audit::webhook::spawn(&auditor, webhook.clone()));
        Ok(AuditWriters {
            auditor,
            file,
            webhook,
        })
    }

    /// Writes what is queued (the webhook for at most [`audit::webhook::DRAIN_AFTER_CLOSE`]) and
    /// stops the writers.
    async fn finish(mut self) {
        self.auditor.close();
        if let Some(file) = self.file.take() {
            let _ = tokio::task::spawn_blocking(move || file.join()).await;
        }
        if let Some(webhook) = self.webhook.take() {
            let _ = tokio::time::timeout(
                audit::webhook::DRAIN_AFTER_CLOSE + std::time::Duration::from_secs(1),
                webhook,
            )
            .await;
        }
    }
}

impl Drop for AuditWriters {
    fn drop(&mut self) {
        // Stopped early (while loading): the writers finish what little is queued on their own.
        self.auditor.close();
    }
}

/// The servers' tasks: each ends when its listener stops.
type Tasks = tokio::task::JoinSet<anyhow::Result<()>>;

fn origin_of(source: &Source) -> Origin {
    match source {
        Source::Files { inventory, tenant } => Origin::Files {
            inventory: inventory.clone(),
            tenant: tenant.clone(),
        },
        Source::Demo => Origin::Demo,
    }
}

/// The overall health and the API service's, together.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// The cache of rendered files and the ledger of minted credentials: both in Redis when it is
/// configured (the ledger then shared by every replica), else in process.
fn cache_of(
    config: &Config,
) -> (
    Arc<dyn kubeconfig_cache::AssetCache<service::cached::CachedAsset>>,
    Arc<dyn service::ledger::Ledger>,
) {
    let cache = kubeconfig_cache::TieredCache::<service::cached::CachedAsset>::new(
        kubeconfig_cache::CacheConfig {
            memory_bytes: config.cache.memory_bytes,
            ttl: config.cache.ttl,
            redis: config.cache.redis.clone(),
        },
    );
    let ledger: Arc<dyn service::ledger::Ledger> = match cache.remote() {
        Some(remote) => Arc::new(service::ledger::RedisLedger::new(Arc::clone(remote))),
        None => Arc::new(service::ledger::MemoryLedger::default()),
    };
    (cache, ledger)
}

/// Drops changed and removed clusters' cached files here and, over Redis, on every replica. (Cache
/// keys carry the revision, so this is memory hygiene, never what keeps bytes fresh.)
fn spawn_invalidator(
    feed: &loading::feed::Feed,
    cache: Arc<dyn kubeconfig_cache::AssetCache<service::cached::CachedAsset>>,
) -> AbortOnDrop {
    let mut changes = feed.subscribe();
    AbortOnDrop(tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let mut uids = Vec::new();
            match changes.recv().await {
                Ok(event) => uids.push(event.change.uid().to_owned()),
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "cache invalidation fell behind the change feed");
                    continue;
                }
                Err(RecvError::Closed) => return,
            }
            while let Ok(event) = changes.try_recv() {
                uids.push(event.change.uid().to_owned());
            }
            uids.sort_unstable();
            uids.dedup();
            cache.invalidate_clusters(&uids);
        }
    }))
}

/// The gRPC services: health, reflection (v1 and v1alpha, with the error-detail types so grpcurl can
/// decode them) and the API.
fn grpc_router(
    config: &Config,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    core: &Arc<service::core::Core>,
    watchers: &Arc<service::streams::Watchers>,
) -> anyhow::Result<GrpcRouter> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kubeconfig_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    // Their requests are as small as the API's: tonic's default limit (4 MiB) would let a peer
    // without credentials make us buffer that much per stream.
    let reflection_v1 = reflection()
        .build_v1()
        .context("reflection v1")?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("reflection v1alpha")?
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let health_service = health_service.max_decoding_message_size(MAX_REQUEST_BYTES);
    let api = KubeconfigServiceServer::new(edges::grpc::KubeconfigApi::new(
        Arc::clone(core),
        Arc::clone(watchers),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let limits = &config.connections;
    // No server-wide `.timeout()`: every API call's deadline is applied once, by `Core::run` (a second
    // timer per call costs throughput); a client's `grpc-timeout` is still honoured by tonic. What
    // comes before the call (its request message) is bounded by the admission layer.
    Ok(tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(20))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(edges::connections::MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(edges::connections::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(edges::connections::CONNECTION_WINDOW_BYTES)
        .tcp_nodelay(true)
        .layer(edges::admission::AdmissionLayer::new(
            Arc::clone(core.permits()),
            limits.header_read_timeout,
            Arc::clone(core.metrics()),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api))
}

/// Resolves when `stop` turns true.
async fn stopped(mut stop: signal::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The gRPC services behind the admission layer.
type GrpcRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<edges::admission::AdmissionLayer, tower::layer::util::Identity>,
>;

fn spawn_grpc(
    tasks: &mut Tasks,
    router: GrpcRouter,
    listener: TcpListener,
    tls: Option<edges::connections::Tls>,
    limits: &edges::connections::Limits,
    slots: edges::connections::Slots,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    match tls {
        None => {
            let incoming = edges::connections::stream(edges::connections::accept(
                listener,
                edges::connections::Plain,
                limits,
                slots,
            ));
            tasks.spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
                    .context("gRPC server")
            });
        }
        Some(tls) => {
            let incoming = edges::connections::stream(edges::connections::accept(
                listener, tls, limits, slots,
            ));
            tasks.spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, stop)
                    .await
                    .context("gRPC server")
            });
        }
    }
}

fn spawn_http(
    tasks: &mut Tasks,
    router: axum::Router,
    listener: TcpListener,
    tls: Option<edges::connections::Tls>,
    limits: &edges::connections::Limits,
    slots: edges::connections::Slots,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let limits = limits.clone();
    match tls {
        None => {
            let incoming =
                edges::connections::accept(listener, edges::connections::Plain, &limits, slots);
            tasks.spawn(async move {
                edges::connections::serve_http(incoming, router, &limits, stop).await;
                anyhow::Ok(())
            });
        }
        Some(tls) => {
            let incoming = edges::connections::accept(listener, tls, &limits, slots);
            tasks.spawn(async move {
                edges::connections::serve_http(incoming, router, &limits, stop).await;
                anyhow::Ok(())
            });
        }
    }
}

/// Puts the first load in service (or fails without a usable tenant file) and starts watching.
fn put_in_service(
    loaded: Result<
        (
            Inventory,
            loading::inventory::Snapshot,
            loading::inventory::ReloadReport,
        ),
        loading::inventory::LoadError,
    >,
    origin: Origin,
    store: &Arc<ArcSwap<loading::inventory::Snapshot>>,
    metrics: &Arc<Metrics>,
    feed: &Arc<loading::feed::Feed>,
) -> anyhow::Result<Option<loading::watch::WatchHandle>> {
    let (inventory, snapshot, report) = loaded.context("cannot load the tenant file")?;
    for failure in &report.failures {
        tracing::warn!(problem = %failure, "file not applied");
    }
    tracing::info!(
        clusters = snapshot.clusters.len(),
        unavailable = snapshot.unavailable_count(),
        tenant = snapshot.tenant.name(),
        "inventory loaded"
    );
    if matches!(origin, Origin::Demo) {
        tracing::info!(
            "demo: broken-staging is broken on purpose (its admin certificate does not match its key), to show how a bad cluster file is reported; the other clusters are served"
        );
    }
    metrics.loaded(&snapshot);
    metrics.parsed(report.parsed);
    metrics.reload(report.failures.is_empty());
    store.store(Arc::new(snapshot));
    match origin {
        Origin::Files {
            inventory: dir,
            tenant,
        } => loading::watch::spawn(
            inventory,
            dir,
            tenant,
            Arc::clone(store),
            Arc::clone(metrics),
            Arc::clone(feed),
        )
        .map(Some)
        .context("cannot watch the inventory"),
        Origin::Demo => Ok(None),
    }
}

/// Waits for every server to finish its in-flight calls, at most `grace`.
async fn drain(mut tasks: Tasks, grace: std::time::Duration) -> anyhow::Result<()> {
    let drained = tokio::time::timeout(grace, async {
        while let Some(result) = tasks.join_next().await {
            result.context("server task panicked")??;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(grace = %humantime::format_duration(grace), "in-flight calls did not finish within the shutdown grace period");
            Ok(())
        }
    }
}

/// OpenTelemetry observable instruments for the cache and inventory counters (no-ops unless OTLP
/// export is configured). They live as long as the returned handles.
fn observe(core: &Arc<service::core::Core>) -> Observers {
    use opentelemetry::KeyValue;
    let meter = opentelemetry::global::meter("kubeconfigd");
    let hits_core = Arc::clone(core);
    let hits = meter
        .u64_observable_counter("kubeconfigd.cache.hits")
        .with_description("Kubeconfigs served, by the cache tier that answered.")
        .with_callback(move |observer| {
            let stats = hits_core.cache_stats();
            observer.observe(stats.memory_hits, &[KeyValue::new("tier", "memory")]);
            observer.observe(stats.redis_hits, &[KeyValue::new("tier", "redis")]);
            observer.observe(stats.renders, &[KeyValue::new("tier", "render")]);
        })
        .build();
    let errors_core = Arc::clone(core);
    let errors = meter
        .u64_observable_counter("kubeconfigd.redis.errors")
        .with_description("Redis calls that failed or timed out.")
        .with_callback(move |observer| {
            observer.observe(errors_core.cache_stats().redis_errors, &[])
        })
        .build();
    let clusters_core = Arc::clone(core);
    let clusters = meter
        .u64_observable_gauge("kubeconfigd.clusters")
        .with_description("Clusters in the inventory, by availability.")
        .with_callback(move |observer| {
            let snapshot = clusters_core.snapshot();
            let unavailable = snapshot.unavailable_count() as u64;
            observer.observe(
                snapshot.clusters.len() as u64 - unavailable,
                &[KeyValue::new("state", "available")],
            );
            observer.observe(unavailable, &[KeyValue::new("state", "unavailable")]);
        })
        .build();
    let reloads_core = Arc::clone(core);
    let reloads = meter
        .u64_observable_counter("kubeconfigd.inventory.reloads")
        .with_description("Inventory loads, by whether every file applied.")
        .with_callback(move |observer| {
            let (ok, failed) = reloads_core.metrics().reloads();
            observer.observe(ok, &[KeyValue::new("result", "ok")]);
            observer.observe(failed, &[KeyValue::new("result", "failed")]);
        })
        .build();
    // The same call table `/metrics` reads: one definition, two exports.
    let calls_core = Arc::clone(core);
    let calls = meter
        .u64_observable_counter("kubeconfigd.calls")
        .with_description("Calls by edge, method and result code.")
        .with_callback(move |observer| {
            for (edge, method, code, count) in calls_core.metrics().call_counts() {
                observer.observe(
                    count,
                    &[
                        KeyValue::new("edge", edge),
                        KeyValue::new("method", method),
                        KeyValue::new("code", code),
                    ],
                );
            }
        })
        .build();
    Observers {
        _counters: vec![hits, errors, reloads, calls],
        _gauges: vec![clusters],
    }
}

/// The observable instruments; observed as long as this lives.
struct Observers {
    _counters: Vec<opentelemetry::metrics::ObservableCounter<u64>>,
    _gauges: Vec<opentelemetry::metrics::ObservableGauge<u64>>,
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the service");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
