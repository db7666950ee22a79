//! The policy crate's access matrix, end to end through gRPC and REST against the real binary: both
//! edges must give the same outcome (status, Palette code, deny reason) and match the literal table in
//! `tests/fixtures/matrix/expected.txt`. Every served kubeconfig is loaded by kube-rs.

use kubeconfig_proto::kubeconfig::v1::{GetAdminKubeconfigRequest, GetKubeconfigRequest};
use kubeconfigd_e2e::{Fixture, Server, with_key};
use tonic_types::StatusExt;

const UIDS: [&str; 4] = [
    "00000000000000000000aa01",
    "00000000000000000000aa02",
    "00000000000000000000aa03",
    "00000000000000000000aa04",
];

/// (HTTP status, Palette code or "", deny reason or "").
type Outcome = (u16, String, String);

fn http_status(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::Ok => 200,
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::NotFound => 404,
        tonic::Code::InvalidArgument => 400,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::Unavailable => 503,
        _ => 500,
    }
}

fn grpc_outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (Outcome, Option<T>) {
    match result {
        Ok(response) => (
            (200, String::new(), String::new()),
            Some(response.into_inner()),
        ),
        Err(status) => {
            let info = status
                .get_details_error_info()
                .expect("every error carries ErrorInfo");
            let reason = info.metadata.get("denyReason").cloned().unwrap_or_default();
            ((http_status(status.code()), info.reason, reason), None)
        }
    }
}

async fn rest_outcome(
    client: &reqwest::Client,
    url: String,
    key: &str,
) -> (Outcome, Option<String>) {
    let response = client
        .get(url)
        .header("ApiKey", key)
        .send()
        .await
        .expect("REST call");
    let status = response.status().as_u16();
    let reason = response
        .headers()
        .get("x-deny-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    if status == 200 {
        return ((200, String::new(), String::new()), Some(body));
    }
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    assert!(
        json["ref"].as_str().is_some_and(|r| !r.is_empty()),
        "error has a ref: {body}"
    );
    assert!(
        json["message"].as_str().is_some(),
        "error has a message: {body}"
    );
    (
        (
            status,
            json["code"].as_str().expect("code").to_owned(),
            reason,
        ),
        None,
    )
}

fn letter(outcome: &Outcome) -> char {
    match (outcome.0, outcome.2.as_str()) {
        (200, _) => 'Y',
        (404, _) => '-',
        (403, "OIDC_NOT_CONFIGURED") => 'O',
        (403, "CLUSTER_DELETE_REQUIRED") => 'D',
        (403, "ADMIN_KUBECONFIG_DOWNLOAD_REQUIRED") => 'K',
        (403, "CLUSTER_GET_REQUIRED") => 'G',
        other => panic!("unexpected outcome {other:?}"),
    }
}

fn load_with_kube_rs(yaml: &str) {
    let config =
        kube::config::Kubeconfig::from_yaml(yaml).expect("kube-rs loads the served kubeconfig");
    assert_eq!(config.clusters.len(), 1);
    assert!(config.current_context.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_rest_reproduce_the_table_in_every_mode() {
    let expected = std::fs::read_to_string(
        kubeconfigd_e2e::workspace_root().join("tests/fixtures/matrix/expected.txt"),
    )
    .expect("table");
    let rows: Vec<Vec<String>> = expected
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('|').map(|c| c.trim().to_owned()).collect())
        .collect();
    assert_eq!(rows.len(), 27);
    let http = reqwest::Client::new();
    let mut checked = 0;
    for mode in ["seed", "palette-4.2", "palette-4.8"] {
        let fixture = Fixture::matrix(mode).expect("fixture");
        let server = Server::start(&fixture.args()).await.expect("server starts");
        let mut client = server.client().await.expect("client");
        for row in rows.iter().filter(|r| r[0] == mode) {
            let key = format!("matrix-{}", row[1]);
            let mut kube_letters = String::new();
            let mut admin_letters = String::new();
            for uid in UIDS {
                let (grpc, served) = grpc_outcome(
                    client
                        .get_kubeconfig(with_key(
                            GetKubeconfigRequest {
                                uid: uid.to_owned(),
                                frp: None,
                            },
                            &key,
                        ))
                        .await,
                );
                let (rest, body) = rest_outcome(
                    &http,
                    format!(
                        "{}/v1/spectroclusters/{uid}/assets/kubeconfig",
                        server.rest_url()
                    ),
                    &key,
                )
                .await;
                assert_eq!(
                    grpc, rest,
                    "mode {mode}, {key}, {uid}: gRPC and REST differ"
                );
                if let (Some(served), Some(body)) = (served, body) {
                    let yaml = served.kubeconfig.expect("kubeconfig").yaml;
                    assert_eq!(yaml, body, "same bytes over gRPC and REST");
                    load_with_kube_rs(&yaml);
                }
                kube_letters.push(letter(&grpc));

                let (grpc, served) = grpc_outcome(
                    client
                        .get_admin_kubeconfig(with_key(
                            GetAdminKubeconfigRequest {
                                uid: uid.to_owned(),
                                ..Default::default()
                            },
                            &key,
                        ))
                        .await,
                );
                let (rest, body) = rest_outcome(
                    &http,
                    format!(
                        "{}/v1/spectroclusters/{uid}/assets/adminkubeconfig",
                        server.rest_url()
                    ),
                    &key,
                )
                .await;
                let (rest_camel, _) = rest_outcome(
                    &http,
                    format!(
                        "{}/v1/spectroclusters/{uid}/assets/adminKubeconfig",
                        server.rest_url()
                    ),
                    &key,
                )
                .await;
                assert_eq!(
                    grpc, rest,
                    "mode {mode}, {key}, {uid}: gRPC and REST differ (admin)"
                );
                assert_eq!(rest, rest_camel, "both spellings of the admin path agree");
                if let (Some(served), Some(body)) = (served, body) {
                    let yaml = served.kubeconfig.expect("kubeconfig").yaml;
                    assert_eq!(yaml, body);
                    load_with_kube_rs(&yaml);
                }
                admin_letters.push(letter(&grpc));
                checked += 2;
            }
            assert_eq!(
                kube_letters, row[2],
                "mode {mode}, user {}: kubeconfig",
                row[1]
            );
            assert_eq!(
                admin_letters, row[3],
                "mode {mode}, user {}: admin kubeconfig",
                row[1]
            );
        }
    }
    assert_eq!(checked, 27 * 8);
}
