//! Bad input, REST headers, conditional requests, project narrowing, paging and the access report,
//! against the real binary.

use std::io::Write as _;
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::{
    ClusterStatus, GetKubeconfigAccessRequest, GetKubeconfigRequest, ListClustersRequest,
    ServerKind,
};
use kubeconfigd_e2e::{Fixture, Server, with_key};
use tonic_types::StatusExt;

const OIDC_PROXY: &str = "00000000000000000000aa01";
const NO_OIDC_PROXY: &str = "00000000000000000000aa02";

async fn matrix() -> (Fixture, Server) {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    (fixture, server)
}

async fn rest(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", server.rest_url()));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("REST");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_uids_are_400_before_any_lookup() {
    let (_f, server) = matrix().await;
    let mut client = server.client().await.expect("client");
    for uid in ["UPPER", "has_underscore", "", &"a".repeat(65), "a.b"] {
        let status = client
            .get_kubeconfig(with_key(
                GetKubeconfigRequest {
                    uid: uid.to_owned(),
                    frp: None,
                },
                "matrix-cluster-admin",
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{uid:?}");
        assert_eq!(
            status.get_details_error_info().expect("info").reason,
            "BadRequest"
        );
    }
    for path in ["UPPER", "a%2Fb", "a.b", &"a".repeat(65)] {
        let (status, _, body) = rest(
            &server,
            &format!("/v1/spectroclusters/{path}/assets/kubeconfig"),
            &[("ApiKey", "matrix-cluster-admin")],
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(json(&body)["code"], "BadRequest");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_invisible_clusters_answer_identically() {
    let (_f, server) = matrix().await;
    let unknown = "00000000000000000000ffff";
    let (s1, _, b1) = rest(
        &server,
        &format!("/v1/spectroclusters/{unknown}/assets/kubeconfig"),
        &[("ApiKey", "matrix-no-access")],
    )
    .await;
    let (s2, _, b2) = rest(
        &server,
        &format!("/v1/spectroclusters/{OIDC_PROXY}/assets/kubeconfig"),
        &[("ApiKey", "matrix-no-access")],
    )
    .await;
    assert_eq!((s1, s2), (404, 404));
    let (mut j1, mut j2) = (json(&b1), json(&b2));
    j1["ref"] = serde_json::Value::Null;
    j2["ref"] = serde_json::Value::Null;
    assert_eq!(
        j1.to_string().replace(unknown, "UID"),
        j2.to_string().replace(OIDC_PROXY, "UID")
    );

    let mut client = server.client().await.expect("client");
    let a = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: unknown.to_owned(),
                frp: None,
            },
            "matrix-no-access",
        ))
        .await
        .unwrap_err();
    let b = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: OIDC_PROXY.to_owned(),
                frp: None,
            },
            "matrix-no-access",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (a.code(), b.code()),
        (tonic::Code::NotFound, tonic::Code::NotFound)
    );
    assert_eq!(
        a.message().replace(unknown, "UID"),
        b.message().replace(OIDC_PROXY, "UID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_credentials_are_401_without_detail() {
    let (_f, server) = matrix().await;
    let path = format!("/v1/spectroclusters/{OIDC_PROXY}/assets/kubeconfig");
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("ApiKey", "wrong")],
        &[("Authorization", "Bearer a.b.c")],
        &[("Authorization", "Basic Zm9vOmJhcg==")],
    ];
    let mut messages = Vec::new();
    for headers in cases {
        let (status, response_headers, body) = rest(&server, &path, headers).await;
        assert_eq!(status, 401, "{headers:?}");
        assert!(response_headers.contains_key("www-authenticate"));
        let body = json(&body);
        assert_eq!(body["code"], "Unauthorized");
        messages.push(body["message"].as_str().expect("message").to_owned());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "the same message whatever was wrong: {messages:?}"
    );
    let mut client = server.client().await.expect("client");
    let status = client
        .get_kubeconfig(tonic::Request::new(GetKubeconfigRequest {
            uid: OIDC_PROXY.to_owned(),
            frp: None,
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), messages[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_headers_etag_and_frp() {
    let (_f, server) = matrix().await;
    let key = [("ApiKey", "matrix-cluster-viewer")];
    let path = format!("/v1/spectroclusters/{OIDC_PROXY}/assets/kubeconfig");
    let (status, headers, body) = rest(&server, &path, &key).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"oidc-proxy.kubeconfig\""
    );
    assert_eq!(headers["cache-control"], "no-store");
    let etag = headers["etag"].to_str().expect("etag").to_owned();
    use sha2::Digest as _;
    assert_eq!(
        etag,
        format!("\"{}\"", hex::encode(sha2::Sha256::digest(body.as_bytes())))
    );
    assert!(
        body.contains("server: https://cluster-00000000000000000000aa01.proxy.matrix.test:443")
    );

    let (status, _, body304) = rest(&server, &path, &[key[0], ("If-None-Match", &etag)]).await;
    assert_eq!((status, body304.as_str()), (304, ""));
    let (status, _, _) = rest(&server, &path, &[key[0], ("If-None-Match", "\"other\"")]).await;
    assert_eq!(status, 200);
    // A 304 is only given after the access decision.
    let (status, _, _) = rest(
        &server,
        &path,
        &[("ApiKey", "matrix-no-access"), ("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(status, 404);

    let (status, _, direct) = rest(&server, &format!("{path}?frp=false"), &key).await;
    assert_eq!(status, 200);
    assert!(direct.contains("server: https://10.0.0.1:6443"), "{direct}");
    let (status, _, body) = rest(&server, &format!("{path}?frp=maybe"), &key).await;
    assert_eq!(
        (status, json(&body)["code"].as_str()),
        (400, Some("BadRequest"))
    );

    let mut client = server.client().await.expect("client");
    let served = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: OIDC_PROXY.to_owned(),
                frp: Some(false),
            },
            "matrix-cluster-viewer",
        ))
        .await
        .expect("ok")
        .into_inner()
        .kubeconfig
        .expect("kubeconfig");
    assert_eq!(served.server_kind, ServerKind::Direct as i32);
    assert_eq!(served.yaml, direct);

    let (status, headers, body) = rest(
        &server,
        &format!("/v1/spectroclusters/{OIDC_PROXY}/assets/adminKubeconfig"),
        &[("ApiKey", "matrix-cluster-admin")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"admin.oidc-proxy.kubeconfig\""
    );
    assert!(body.contains("server: https://10.0.0.1:6443"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_uid_narrows_to_one_project() {
    let (_f, server) = matrix().await;
    let path = format!("/v1/spectroclusters/{OIDC_PROXY}/assets/adminkubeconfig");
    assert_eq!(
        rest(
            &server,
            &path,
            &[
                ("ApiKey", "matrix-tenant-admin"),
                ("ProjectUid", "platform")
            ]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        rest(
            &server,
            &path,
            &[("ApiKey", "matrix-tenant-admin"), ("ProjectUid", "other")]
        )
        .await
        .0,
        404
    );
    let mut client = server.client().await.expect("client");
    let mut request = with_key(
        GetKubeconfigRequest {
            uid: OIDC_PROXY.to_owned(),
            frp: None,
        },
        "matrix-tenant-admin",
    );
    request
        .metadata_mut()
        .insert("projectuid", "other".parse().expect("metadata"));
    assert_eq!(
        client.get_kubeconfig(request).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_and_access_explains_denials() {
    let (_f, server) = matrix().await;
    let mut client = server.client().await.expect("client");
    let first = client
        .list_clusters(with_key(
            ListClustersRequest {
                page_size: 3,
                page_token: String::new(),
            },
            "matrix-cluster-viewer",
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.clusters.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_clusters(with_key(
            ListClustersRequest {
                page_size: 3,
                page_token: first.next_page_token.clone(),
            },
            "matrix-cluster-viewer",
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(second.clusters.len(), 1);
    assert!(second.next_page_token.is_empty());
    let nobody = client
        .list_clusters(with_key(ListClustersRequest::default(), "matrix-no-access"))
        .await
        .expect("list")
        .into_inner();
    assert!(nobody.clusters.is_empty());
    let bad = client
        .list_clusters(with_key(
            ListClustersRequest {
                page_size: -1,
                page_token: String::new(),
            },
            "matrix-cluster-viewer",
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let access = client
        .get_kubeconfig_access(with_key(
            GetKubeconfigAccessRequest {
                uid: NO_OIDC_PROXY.to_owned(),
            },
            "matrix-cluster-viewer",
        ))
        .await
        .expect("access")
        .into_inner()
        .access
        .expect("access");
    assert_eq!(access.status, ClusterStatus::Available as i32);
    assert!(access.proxy_enabled);
    assert_eq!(access.policy_mode, "seed");
    assert_eq!(access.permissions, ["cluster.get", "cluster.list"]);
    let kube = access.kubeconfig.expect("kubeconfig");
    assert!(!kube.allowed);
    assert_eq!(kube.reason, "OIDC_NOT_CONFIGURED");
    assert!(
        kube.message
            .contains("has `oidc-issuer-url` but no `clientConfig` block"),
        "{}",
        kube.message
    );
    let oidc = access.oidc.expect("oidc");
    assert!(!oidc.configured);
    assert_eq!(
        oidc.gaps
            .iter()
            .map(|g| g.code.as_str())
            .collect::<Vec<_>>(),
        ["CLIENT_CONFIG_MISSING"]
    );
    assert_eq!(
        access.admin_kubeconfig.expect("admin").reason,
        "CLUSTER_DELETE_REQUIRED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_requests_get_clean_errors() {
    let (_f, server) = matrix().await;
    let mut client = server.client().await.expect("client");
    let huge = "a".repeat(64 * 1024);
    let status = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: huge,
                frp: None,
            },
            "matrix-cluster-admin",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{status:?}"
    );

    // Raw garbage on both ports.
    for addr in [server.grpc, server.rest] {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let _ = stream.write_all(b"\x00\xff garbage \r\n\r\n GET / HTTP/9.9\r\n\r\n");
        let mut buf = [0u8; 256];
        let _ = std::io::Read::read(&mut stream, &mut buf);
    }
    let (status, _, body) = rest(&server, "/nothing/here", &[]).await;
    assert_eq!(
        (status, json(&body)["code"].as_str()),
        (404, Some("ResourceNotFound"))
    );
    // Still serving after all that.
    let ok = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: OIDC_PROXY.to_owned(),
                frp: None,
            },
            "matrix-cluster-admin",
        ))
        .await;
    assert!(ok.is_ok(), "{ok:?}\n{}", server.log_text());
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );
}

/// Every download answers with its request id (`x-request-id`, on gRPC as never-indexed HPACK
/// metadata), and that id names exactly one audit line, so a caller's report can be matched to the
/// audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_download_names_its_request_id_and_the_audit_line_carries_it() {
    let (_f, server) = matrix().await;
    let mut client = server.client().await.expect("client");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = client
            .get_kubeconfig(with_key(
                GetKubeconfigRequest {
                    uid: OIDC_PROXY.to_owned(),
                    frp: None,
                },
                "matrix-cluster-admin",
            ))
            .await
            .expect("gRPC download");
        let id = response
            .metadata()
            .get("x-request-id")
            .expect("x-request-id in the gRPC response metadata")
            .to_str()
            .expect("ASCII")
            .to_owned();
        ids.push(id);
    }
    let (status, headers, _) = rest(
        &server,
        &format!("/v1/spectroclusters/{OIDC_PROXY}/assets/kubeconfig"),
        &[("ApiKey", "matrix-cluster-admin")],
    )
    .await;
    assert_eq!(status, 200);
    ids.push(
        headers
            .get("x-request-id")
            .expect("x-request-id in the REST response")
            .to_str()
            .expect("ASCII")
            .to_owned(),
    );
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "request ids repeat: {ids:?}");
    for id in &ids {
        let field = format!("request_id={id}");
        assert!(
            kubeconfigd_e2e::eventually(Duration::from_secs(5), || {
                let (log, field) = (server.log_text(), field.clone());
                async move {
                    log.lines()
                        .filter(|l| l.contains("audit") && l.contains(&field))
                        .count()
                        == 1
                }
            })
            .await,
            "no single audit line with {id}:\n{}",
            server.log_text()
        );
    }
}
