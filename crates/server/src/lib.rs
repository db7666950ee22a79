//! kubeconfigd: a gRPC service (with a REST shim) that hands out kubeconfig files for managed
//! Kubernetes clusters, deciding per caller who may download which.
//!
//! The binary is a thin `main.rs`; everything here is library code that tests start on port 0 with
//! [`run`]. Dependencies point one way: this crate uses `kubeconfig-policy` (access rules),
//! `kubeconfig-render` (documents) and `kubeconfig-proto` (generated API); none of them use it.
//!
//! - [`config`]: flags and their validation.
//! - [`inventory`], [`record`]: the tenant file and cluster files, loaded into snapshots.
//! - [`watch`]: file watching and atomic snapshot swaps; [`feed`]: the per-cluster change feed.
//! - [`auth`]: API keys and JWT bearer tokens.
//! - [`core`]: the transport-neutral service core; [`error`]: its one error type.
//! - [`cached`]: how rendered kubeconfigs are stored in the cache (`kubeconfig-cache`).
//! - [`grpc`], [`rest`]: the two edges.
//! - [`telemetry`], [`metrics`]: logs, traces and counters.
//! - [`tls`]: the TLS server configuration; [`connections`]: accepting and keeping connections within
//!   limits, and serving HTTP on them; [`admin`]: the admin listener (probes, metrics, OpenAPI).
//! - [`files`]: reading files safely (regular files only, size-limited, confined to the inventory).
//! - [`demo`]: the built-in demo data.

pub mod admin;
pub mod auth;
pub mod cached;
pub mod config;
pub mod connections;
pub mod core;
pub mod demo;
pub mod error;
pub mod feed;
pub mod files;
pub mod grpc;
pub mod inventory;
pub mod metrics;
pub mod record;
pub mod rest;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_server::KubeconfigServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tonic_health::ServingStatus;

use crate::config::{Config, MAX_REQUEST_BYTES, Source};
use crate::inventory::{Inventory, Origin};
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
/// On shutdown, health turns NOT_SERVING first; new calls are refused once draining starts; the function
/// returns when every in-flight call has finished or the grace period ran out.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let origin = match &config.source {
        Source::Files { inventory, tenant } => Origin::Files {
            inventory: inventory.clone(),
            tenant: tenant.clone(),
        },
        Source::Demo => Origin::Demo,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;

    // Listeners answer while the first load runs: health NOT_SERVING, `/readyz` 503, calls UNAVAILABLE.
    let load_origin = origin.clone();
    let loading = tokio::task::spawn_blocking(move || Inventory::load(load_origin));
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(ArcSwap::from_pointee(inventory::Snapshot::loading()));

    let jwt = config
        .jwt
        .as_ref()
        .map(auth::JwtVerifier::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--jwt-public-key-file: {e}"))?;
    let cache: Arc<dyn kubeconfig_cache::AssetCache<cached::CachedAsset>> =
        kubeconfig_cache::TieredCache::new(kubeconfig_cache::CacheConfig {
            memory_bytes: config.cache.memory_bytes,
            ttl: config.cache.ttl,
            redis: config.cache.redis.clone(),
        });
    let core = Arc::new(core::Core::new(
        Arc::clone(&store),
        jwt,
        config.max_concurrent_requests as usize,
        Arc::clone(&cache),
        Arc::clone(&metrics),
    ));

    let _observers = observe(&core);

    // Changed and removed clusters' cached files are dropped here and, over Redis, on every replica.
    // (Cache keys carry the revision, so this is memory hygiene, never what keeps bytes fresh.)
    let feed = Arc::new(feed::Feed::default());
    let invalidator = {
        let mut changes = feed.subscribe();
        let cache = Arc::clone(&cache);
        tokio::spawn(async move {
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
        })
    };
    let _invalidator = AbortOnDrop(invalidator);

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kubeconfig_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kubeconfig_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("reflection v1alpha")?;
    let (stop_tx, stop_rx) = signal::channel(false);
    let watchers = Arc::new(streams::Watchers::new(
        Arc::clone(&core),
        Arc::clone(&feed),
        config.watch,
        stop_rx.clone(),
    ));
    let api = KubeconfigServiceServer::new(grpc::KubeconfigApi::new(
        Arc::clone(&core),
        Arc::clone(&watchers),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);

    let stopped = |mut rx: signal::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let grpc_addr = listeners.grpc.local_addr().ok();
    let limits = config.connections.clone();
    let slots: connections::Slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let grpc_router = tonic::transport::Server::builder()
        .timeout(config.request_timeout)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .http2_max_pending_accept_reset_streams(Some(20))
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api);
    let mut tasks = tokio::task::JoinSet::new();
    let grpc_stop = stopped(stop_rx.clone());
    match config.tls.clone() {
        None => {
            let incoming = connections::stream(connections::accept(
                listeners.grpc,
                connections::Plain,
                &limits,
                Arc::clone(&slots),
            ));
            tasks.spawn(async move {
                grpc_router
                    .serve_with_incoming_shutdown(incoming, grpc_stop)
                    .await
                    .context("gRPC server")
            });
        }
        Some(tls_config) => {
            let incoming = connections::stream(connections::accept(
                listeners.grpc,
                connections::Tls(tokio_rustls::TlsAcceptor::from(tls_config)),
                &limits,
                Arc::clone(&slots),
            ));
            tasks.spawn(async move {
                grpc_router
                    .serve_with_incoming_shutdown(incoming, grpc_stop)
                    .await
                    .context("gRPC server")
            });
        }
    }
    let rest_addr = match (config.rest, listeners.rest) {
        (true, Some(listener)) => {
            let rest_addr = listener.local_addr().ok();
            let router = rest::router(Arc::clone(&watchers), config.request_timeout);
            let rest_stop = stopped(stop_rx.clone());
            let limits = limits.clone();
            match config.tls.clone() {
                Some(tls_config) => {
                    let incoming = connections::accept(
                        listener,
                        connections::Tls(tokio_rustls::TlsAcceptor::from(tls_config)),
                        &limits,
                        Arc::clone(&slots),
                    );
                    tasks.spawn(async move {
                        connections::serve_http(incoming, router, &limits, rest_stop).await;
                        anyhow::Ok(())
                    });
                }
                None => {
                    let incoming = connections::accept(
                        listener,
                        connections::Plain,
                        &limits,
                        Arc::clone(&slots),
                    );
                    tasks.spawn(async move {
                        connections::serve_http(incoming, router, &limits, rest_stop).await;
                        anyhow::Ok(())
                    });
                }
            }
            rest_addr
        }
        _ => None,
    };
    // The admin listener: probes and scraping, plain HTTP, its own small connection budget so that a
    // flood of API connections cannot starve the probes.
    let admin_addr = listeners.admin.local_addr().ok();
    let (ready_tx, ready_rx) = signal::channel(false);
    {
        let router = admin::router(Arc::clone(&core), ready_rx);
        let admin_limits = limits.clone();
        let incoming = connections::accept(
            listeners.admin,
            connections::Plain,
            &admin_limits,
            Arc::new(tokio::sync::Semaphore::new(64)),
        );
        let admin_stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            connections::serve_http(incoming, router, &admin_limits, admin_stop).await;
            anyhow::Ok(())
        });
    }
    tracing::info!(
        grpc = ?grpc_addr,
        rest = ?rest_addr,
        admin = ?admin_addr,
        tls = config.tls.is_some(),
        "serving"
    );

    let mut shutdown = std::pin::pin!(shutdown);
    let loaded = tokio::select! {
        loaded = loading => loaded,
        () = &mut shutdown => {
            tracing::info!("stopped while loading the inventory");
            return Ok(());
        }
    };
    let (inventory, snapshot, report) = loaded
        .context("inventory loader panicked")?
        .context("cannot load the tenant file")?;
    for failure in &report.failures {
        tracing::warn!(problem = %failure, "file not applied");
    }
    tracing::info!(
        clusters = snapshot.clusters.len(),
        unavailable = snapshot.unavailable_count(),
        tenant = snapshot.tenant.name(),
        "inventory loaded"
    );
    metrics.loaded(&snapshot);
    metrics.parsed(report.parsed);
    metrics.reload(report.failures.is_empty());
    store.store(Arc::new(snapshot));
    let _watch = match origin {
        Origin::Files {
            inventory: dir,
            tenant,
        } => Some(
            watch::spawn(
                inventory,
                dir,
                tenant,
                Arc::clone(&store),
                Arc::clone(&metrics),
                Arc::clone(&feed),
            )
            .context("cannot watch the inventory")?,
        ),
        Origin::Demo => None,
    };
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    let _ = ready_tx.send(true);
    tracing::info!("ready");

    let grace = config.shutdown_grace;
    let delay = config.shutdown_delay;
    tokio::select! {
        () = &mut shutdown => {}
        Some(result) = tasks.join_next() => {
            // A server stopped on its own: that is always an error.
            result.context("server task panicked")??;
            anyhow::bail!("a server stopped unexpectedly");
        }
    }
    tracing::info!(delay = ?delay, "shutting down: health is NOT_SERVING");
    let _ = ready_tx.send(false);
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    tokio::time::sleep(delay).await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while let Some(result) = tasks.join_next().await {
            result.context("server task panicked")??;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => {
            tracing::warn!(grace = ?grace, "in-flight calls did not finish within the shutdown grace period")
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// OpenTelemetry observable instruments for the cache and inventory counters (no-ops unless OTLP
/// export is configured). They live as long as the returned handles.
fn observe(
    core: &Arc<core::Core>,
) -> (
    opentelemetry::metrics::ObservableCounter<u64>,
    opentelemetry::metrics::ObservableCounter<u64>,
    opentelemetry::metrics::ObservableGauge<u64>,
    opentelemetry::metrics::ObservableCounter<u64>,
) {
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
    (hits, errors, clusters, reloads)
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
