//! Spans and logs, captured in memory: the span of an allowed and of a denied call carries the
//! OpenTelemetry RPC/HTTP attributes and ours, joins the caller's trace, and no span attribute, event or
//! log line holds key material, tokens, API keys, client secrets or a kubeconfig body.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use kubeconfig_proto::kubeconfig::v1 as pb;
use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_server::KubeconfigService as _;
use kubeconfigd::loading::inventory::{Inventory, Origin};
use kubeconfigd::metrics::Metrics;
use kubeconfigd::service::cached::CachedAsset;
use kubeconfigd::service::core::Core;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::ServiceExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PROD_EAST: &str = "6470a2b1c5e6f1a2b3c4d5e1";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn core() -> Arc<Core> {
    let (_inventory, snapshot, _) = Inventory::load(Origin::Demo).expect("demo loads");
    let cache: Arc<dyn kubeconfig_cache::AssetCache<CachedAsset>> =
        kubeconfig_cache::TieredCache::new(kubeconfig_cache::CacheConfig {
            memory_bytes: 1 << 20,
            ttl: std::time::Duration::from_secs(60),
            redis: None,
        });
    Arc::new(Core::new(
        Arc::new(ArcSwap::from_pointee(snapshot)),
        Arc::default(),
        16,
        cache,
        Arc::new(Metrics::default()),
        Arc::new(kubeconfigd::service::minting::Minter::new(Arc::new(
            kubeconfigd::service::ledger::MemoryLedger::default(),
        ))),
    ))
}

fn grpc_request<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("apikey", key.parse().expect("key"));
    request
        .metadata_mut()
        .insert("traceparent", TRACEPARENT.parse().expect("traceparent"));
    request
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Every demo credential: key lines, tokens, the client secret, the API keys.
fn demo_secrets() -> Vec<String> {
    let mut secrets: Vec<String> = [
        "demo-admin-key",
        "demo-viewer-key",
        "demo-edge-client-secret",
        "demo-eks-admin-token-",
        "demo-proxy-sa-token-",
        "client-key-data",
        "PRIVATE KEY",
        "apiVersion: v1",
    ]
    .map(str::to_owned)
    .to_vec();
    for (_, text) in kubeconfigd::loading::demo::CLUSTERS {
        let mut in_key = false;
        for line in text.lines().map(str::trim) {
            if line.contains("PRIVATE KEY-----") && line.starts_with("-----BEGIN") {
                in_key = true;
            } else if line.starts_with("-----END") {
                in_key = false;
            } else if in_key && line.len() > 20 {
                secrets.push(line.to_owned());
            }
        }
    }
    secrets
}

#[test]
fn spans_carry_the_conventions_and_no_secrets() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("trace"))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || writer.clone()),
        )
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    kubeconfigd::telemetry::record_spans(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let core = core();
    let watchers = Arc::new(kubeconfigd::service::streams::Watchers::new(
        Arc::clone(&core),
        Arc::new(kubeconfigd::loading::feed::Feed::default()),
        kubeconfigd::service::streams::WatchLimits {
            total: 8,
            per_caller: 8,
            known_etags: 16,
        },
        tokio::sync::watch::channel(false).1,
    ));
    let api =
        kubeconfigd::edges::grpc::KubeconfigApi::new(Arc::clone(&core), Arc::clone(&watchers));
    let mut bodies = Vec::new();
    runtime.block_on(async {
        let allowed = api
            .get_admin_kubeconfig(grpc_request(
                pb::GetAdminKubeconfigRequest {
                    uid: PROD_EAST.to_owned(),
                    ..Default::default()
                },
                "demo-admin-key",
            ))
            .await
            .expect("admin may");
        bodies.push(allowed.into_inner().kubeconfig.expect("kubeconfig").yaml);
        let denied = api
            .get_admin_kubeconfig(grpc_request(
                pb::GetAdminKubeconfigRequest {
                    uid: PROD_EAST.to_owned(),
                    ..Default::default()
                },
                "demo-viewer-key",
            ))
            .await
            .expect_err("viewer may not");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let unauthenticated = api
            .get_kubeconfig(grpc_request(
                pb::GetKubeconfigRequest {
                    uid: PROD_EAST.to_owned(),
                    frp: None,
                },
                "demo-wrong-key",
            ))
            .await
            .expect_err("wrong key");
        assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
        let response = kubeconfigd::edges::rest::router(Arc::clone(&watchers))
            .oneshot(
                http::Request::get(format!(
                    "/v1/spectroclusters/{}/assets/kubeconfig",
                    "6470a2b1c5e6f1a2b3c4d5e2"
                ))
                .header("ApiKey", "demo-viewer-key")
                .header("traceparent", TRACEPARENT)
                .body(axum::body::Body::empty())
                .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
    });
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");

    let grpc: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "kubeconfig.v1.KubeconfigService/GetAdminKubeconfig")
        .collect();
    assert_eq!(grpc.len(), 2, "{spans:#?}");
    for span in &grpc {
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            span.span_context.trace_id().to_string(),
            TRACE_ID,
            "joins the caller's trace"
        );
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("kubeconfig.v1.KubeconfigService")
        );
        assert_eq!(
            attribute(span, "rpc.method").as_deref(),
            Some("GetAdminKubeconfig")
        );
        assert_eq!(
            attribute(span, "kubeconfig.cluster_uid").as_deref(),
            Some(PROD_EAST)
        );
        assert_eq!(
            attribute(span, "kubeconfig.asset").as_deref(),
            Some("admin-kubeconfig")
        );
    }
    let allowed = grpc
        .iter()
        .find(|s| attribute(s, "kubeconfig.decision").as_deref() == Some("allow"))
        .expect("allowed span");
    assert_eq!(
        attribute(allowed, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    assert_eq!(
        attribute(allowed, "enduser.id").as_deref(),
        Some("admin@demo.test")
    );
    assert_eq!(
        attribute(allowed, "kubeconfig.variant").as_deref(),
        Some("admin-kubeconfig")
    );
    assert_eq!(
        attribute(allowed, "kubeconfig.cache_tier").as_deref(),
        Some("render")
    );
    let denied = grpc
        .iter()
        .find(|s| attribute(s, "kubeconfig.decision").as_deref() == Some("deny"))
        .expect("denied span");
    assert_eq!(
        attribute(denied, "rpc.grpc.status_code").as_deref(),
        Some("7")
    );
    assert_eq!(
        attribute(denied, "kubeconfig.reason").as_deref(),
        Some("CLUSTER_DELETE_REQUIRED")
    );
    assert_eq!(
        attribute(denied, "enduser.id").as_deref(),
        Some("viewer@demo.test")
    );

    let rest = spans
        .iter()
        .find(|s| s.name == "GET /v1/spectroclusters/{uid}/assets/kubeconfig")
        .expect("REST span");
    assert_eq!(rest.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(
        attribute(rest, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        attribute(rest, "http.route").as_deref(),
        Some("/v1/spectroclusters/{uid}/assets/kubeconfig")
    );
    assert_eq!(
        attribute(rest, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(rest, "kubeconfig.decision").as_deref(),
        Some("allow")
    );

    // Nothing secret anywhere in telemetry.
    let mut telemetry = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        telemetry.contains("\"target\":\"audit\""),
        "audit events are logged: {telemetry}"
    );
    assert!(
        telemetry.contains("asset served") && telemetry.contains("asset refused"),
        "{telemetry}"
    );
    for span in &spans {
        let _ = write!(telemetry, "{:?}", span.attributes);
        for event in span.events.iter() {
            let _ = write!(telemetry, "{} {:?}", event.name, event.attributes);
        }
    }
    let secrets = demo_secrets();
    assert!(secrets.len() > 30, "the scan covers real key material");
    for secret in secrets {
        assert!(!telemetry.contains(&secret), "telemetry holds {secret:?}");
    }
    for body in bodies {
        assert!(
            !telemetry.contains(&body[..60]),
            "telemetry holds a kubeconfig body"
        );
    }
}
