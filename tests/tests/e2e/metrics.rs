//! `/metrics` after a known sequence of calls shows exactly those counts.

use kubeconfig_proto::kubeconfig::v1::{GetAdminKubeconfigRequest, GetKubeconfigRequest};
use kubeconfigd_e2e::{Fixture, Server, metrics, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_calls_made() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.expect("client");
    let uid = "00000000000000000000aa01";
    for _ in 0..3 {
        client
            .get_kubeconfig(with_key(
                GetKubeconfigRequest {
                    uid: uid.to_owned(),
                    frp: None,
                },
                "matrix-cluster-viewer",
            ))
            .await
            .expect("ok");
    }
    client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                uid: uid.to_owned(),
                ..Default::default()
            },
            "matrix-cluster-viewer",
        ))
        .await
        .expect_err("denied");
    client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: uid.to_owned(),
                frp: None,
            },
            "wrong",
        ))
        .await
        .expect_err("unauthenticated");
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/spectroclusters/{uid}/assets/kubeconfig",
        server.rest_url()
    );
    for key in [
        "matrix-cluster-viewer",
        "matrix-cluster-viewer",
        "matrix-no-access",
    ] {
        http.get(&url)
            .header("ApiKey", key)
            .send()
            .await
            .expect("REST");
    }

    let m = metrics(&server).await.expect("metrics");
    let calls: Vec<(&str, f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("kubeconfigd_calls_total"))
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let expected = [
        (
            "kubeconfigd_calls_total{edge=\"grpc\",method=\"GetKubeconfig\",code=\"OK\"}",
            3.0,
        ),
        (
            "kubeconfigd_calls_total{edge=\"grpc\",method=\"GetAdminKubeconfig\",code=\"OperationForbidden\"}",
            1.0,
        ),
        (
            "kubeconfigd_calls_total{edge=\"grpc\",method=\"GetKubeconfig\",code=\"Unauthorized\"}",
            1.0,
        ),
        (
            "kubeconfigd_calls_total{edge=\"rest\",method=\"GetKubeconfig\",code=\"OK\"}",
            2.0,
        ),
        (
            "kubeconfigd_calls_total{edge=\"rest\",method=\"GetKubeconfig\",code=\"ResourceNotFound\"}",
            1.0,
        ),
    ];
    assert_eq!(calls.len(), expected.len(), "{calls:?}");
    for (key, value) in expected {
        assert_eq!(m.get(key).copied(), Some(value), "{key}: {calls:?}");
    }
    // One render, then four in-process hits (3 gRPC + 2 REST OK calls share the proxied variant).
    assert_eq!(m["kubeconfigd_cache_hits_total{tier=\"render\"}"], 1.0);
    assert_eq!(m["kubeconfigd_cache_hits_total{tier=\"memory\"}"], 4.0);
    assert_eq!(m["kubeconfigd_cache_hits_total{tier=\"redis\"}"], 0.0);
    assert_eq!(m["kubeconfigd_clusters_loaded"], 4.0);
    assert_eq!(m["kubeconfigd_clusters_unavailable"], 0.0);
    assert_eq!(m["kubeconfigd_inventory_reloads_total{result=\"ok\"}"], 1.0);
    assert_eq!(
        m["kubeconfigd_call_duration_seconds_count{edge=\"grpc\",method=\"GetKubeconfig\"}"],
        4.0
    );
    assert_eq!(
        m["kubeconfigd_call_duration_seconds_bucket{edge=\"rest\",method=\"GetKubeconfig\",le=\"+Inf\"}"],
        3.0
    );
}
