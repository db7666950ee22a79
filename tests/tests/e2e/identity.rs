//! Who the caller is, end to end: `WhoAmI` through grpcurl and curl for each way in, credentials that
//! disagree refused, and a watch stream or REST long-poll ending with UNAUTHENTICATED when the token it
//! was opened with expires.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeconfig_proto::kubeconfig::v1 as pb;
use kubeconfigd_e2e::{Fixture, Server, workspace_root};
use serde_json::json;

const ISSUER: &str = "https://issuer.matrix.test";
const VIEWER_KEY: &str = "matrix-cluster-viewer";
const UID: &str = "00000000000000000000aa01";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn secret() -> Vec<u8> {
    let path = workspace_root().join("tests/fixtures/jwt/hs256.secret");
    std::fs::read(path).expect("secret").trim_ascii().to_vec()
}

/// A token of `email` valid for `seconds` more.
fn token(email: &str, seconds: u64) -> String {
    let claims = json!({
        "sub": email,
        "email": email,
        "groups": ["payments"],
        "iss": ISSUER,
        "aud": "kubeconfigd",
        "iat": now() - 5,
        "exp": now() + seconds,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret()),
    )
    .expect("sign")
}

async fn start() -> (Fixture, Server) {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let mut args = fixture.args();
    args.extend(
        [
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            "kubeconfigd",
            "--jwt-hs256-secret-file",
        ]
        .map(str::to_owned),
    );
    args.push(
        workspace_root()
            .join("tests/fixtures/jwt/hs256.secret")
            .display()
            .to_string(),
    );
    let server = Server::start(&args).await.expect("server");
    (fixture, server)
}

/// `WhoAmI` through grpcurl with `headers`: its JSON answer, or the error text.
fn grpcurl_whoami(server: &Server, headers: &[String]) -> Result<serde_json::Value, String> {
    let mut command = Command::new(kubeconfigd_e2e::grpcurl_binary());
    command.arg("-plaintext");
    for header in headers {
        command.args(["-H", header]);
    }
    let address = server.grpc_url().trim_start_matches("http://").to_owned();
    let output = command
        .args([address.as_str(), "kubeconfig.v1.KubeconfigService/WhoAmI"])
        .output()
        .expect("grpcurl runs");
    if output.status.success() {
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_caller_and_each_credential_through_grpcurl_and_rest() {
    let (_fixture, server) = start().await;
    let by_key = grpcurl_whoami(&server, &[format!("apikey: {VIEWER_KEY}")]).expect("WhoAmI");
    assert_eq!(by_key["user"], "cluster-viewer@matrix.test", "{by_key}");
    assert_eq!(by_key["credentials"][0]["kind"], "CREDENTIAL_KIND_API_KEY");
    assert!(
        by_key.get("expiresAt").is_none(),
        "an API key does not expire"
    );
    let visible = by_key["visibleClusters"].as_i64().expect("a count");
    assert!(visible > 0, "{by_key}");

    let token = token("Cluster-Viewer@matrix.test", 600);
    let bearer = format!("authorization: Bearer {token}");
    let by_token = grpcurl_whoami(&server, std::slice::from_ref(&bearer)).expect("WhoAmI");
    assert_eq!(by_token["user"], "cluster-viewer@matrix.test", "{by_token}");
    assert_eq!(by_token["groups"], json!(["payments"]));
    assert_eq!(by_token["credentials"][0]["kind"], "CREDENTIAL_KIND_TOKEN");
    assert_eq!(by_token["credentials"][0]["issuer"], ISSUER);
    let expires = by_token["expiresAt"].as_str().expect("a token expires");
    let expires = humantime::parse_rfc3339(expires).expect("RFC 3339");
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(left > Duration::from_secs(500) && left <= Duration::from_secs(600));
    assert_eq!(by_token["visibleClusters"].as_i64(), Some(visible));

    // Both at once, naming one user: both are listed. Naming two users: refused.
    let both = grpcurl_whoami(&server, &[format!("apikey: {VIEWER_KEY}"), bearer.clone()])
        .expect("WhoAmI");
    assert_eq!(both["credentials"].as_array().map(Vec::len), Some(2));
    let refused = grpcurl_whoami(
        &server,
        &["apikey: matrix-cluster-admin".to_owned(), bearer.clone()],
    )
    .expect_err("two users");
    assert!(refused.contains("Unauthenticated"), "{refused}");

    // REST says the same with the same field names.
    let rest = reqwest::Client::new()
        .get(format!("{}/v1/whoami", server.rest_url()))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("REST");
    assert_eq!(rest.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&rest.text().await.expect("body")).expect("JSON");
    for field in [
        "user",
        "groups",
        "credentials",
        "expiresAt",
        "visibleClusters",
    ] {
        assert_eq!(
            body[field], by_token[field],
            "{field}: {body} vs {by_token}"
        );
    }
    let anonymous = reqwest::get(format!("{}/v1/whoami", server.rest_url()))
        .await
        .expect("REST");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_with_unauthenticated_when_its_token_expires() {
    let (_fixture, server) = start().await;
    let mut client = server.client().await.expect("client");
    let mut request = tonic::Request::new(pb::WatchKubeconfigsRequest {
        cluster_uids: vec![UID.to_owned()],
        ..Default::default()
    });
    let token = token("cluster-viewer@matrix.test", 4);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let started = Instant::now();
    let mut stream = client
        .watch_kubeconfigs(request)
        .await
        .expect("opened")
        .into_inner();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the stream outlived its token by 10 s"),
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("expired"), "{ended:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "ended at expiry, not at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ends_with_401_when_its_token_expires() {
    let (_fixture, server) = start().await;
    let url = format!(
        "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
        server.rest_url()
    );
    let http = reqwest::Client::new();
    let token = token("cluster-viewer@matrix.test", 4);
    let first = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("download");
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].clone();
    let started = Instant::now();
    let waited = http
        .get(format!("{url}?wait=60s"))
        .bearer_auth(&token)
        .header("If-None-Match", etag)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("long-poll");
    assert_eq!(waited.status(), 401);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ended at expiry, not after the wait"
    );
    let body = waited.text().await.expect("body");
    assert!(body.contains("expired"), "{body}");
}
