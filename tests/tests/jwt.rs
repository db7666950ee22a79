//! JWT bearer tokens end to end: a valid token works; expired, not-yet-valid, wrong audience, wrong
//! issuer, wrong signature, `alg: none` and algorithm confusion are all 401, over gRPC and REST.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeconfig_proto::kubeconfig::v1::GetKubeconfigRequest;
use kubeconfigd_e2e::{Fixture, Server, workspace_root};
use serde_json::json;

const UID: &str = "00000000000000000000aa01";
const ISSUER: &str = "https://issuer.matrix.test";
const AUDIENCE: &str = "kubeconfigd";

fn jwt_file(name: &str) -> String {
    workspace_root()
        .join("tests/fixtures/jwt")
        .join(name)
        .display()
        .to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let mut claims = json!({
        "sub": "someone-else",
        "email": "cluster-viewer@matrix.test",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "nbf": now() - 10,
        "iat": now() - 10,
    });
    if let (Some(base), Some(extra)) = (claims.as_object_mut(), overrides.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    claims
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("sign")
}

fn unsigned(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

async fn status_of(server: &Server, token: &str) -> (tonic::Code, u16) {
    let mut client = server.client().await.expect("client");
    let mut request = tonic::Request::new(GetKubeconfigRequest {
        uid: UID.to_owned(),
        frp: None,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let grpc = match client.get_kubeconfig(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    let rest = reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
            server.rest_url()
        ))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("REST")
        .status()
        .as_u16();
    (grpc, rest)
}

async fn start(key_flag: &str, key_file: &str) -> (Fixture, Server) {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let mut args = fixture.args();
    args.extend(["--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE, key_flag].map(str::to_owned));
    args.push(jwt_file(key_file));
    let server = Server::start(&args).await.expect("server");
    (fixture, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_tokens() {
    let (_fixture, server) = start("--jwt-hs256-secret-file", "hs256.secret").await;
    let secret = std::fs::read(jwt_file("hs256.secret")).expect("secret");
    let key = EncodingKey::from_secret(secret.trim_ascii());
    let ok = (tonic::Code::Ok, 200);
    let unauthenticated = (tonic::Code::Unauthenticated, 401);

    assert_eq!(
        status_of(&server, &sign(Algorithm::HS256, &key, &claims(json!({})))).await,
        ok
    );
    // The `email` claim names the user; `sub` is used only without it.
    assert_eq!(
        status_of(
            &server,
            &sign(
                Algorithm::HS256,
                &key,
                &claims(json!({"email": null, "sub": "cluster-viewer@matrix.test"}))
            )
        )
        .await,
        ok
    );
    // A group claim grants through a team binding: no such team here, so a stranger stays 404.
    assert_eq!(
        status_of(
            &server,
            &sign(
                Algorithm::HS256,
                &key,
                &claims(json!({"email": "stranger@matrix.test"}))
            )
        )
        .await,
        (tonic::Code::NotFound, 404)
    );
    for (what, token) in [
        (
            "expired",
            sign(Algorithm::HS256, &key, &claims(json!({"exp": now() - 120}))),
        ),
        (
            "not yet valid",
            sign(Algorithm::HS256, &key, &claims(json!({"nbf": now() + 300}))),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::HS256,
                &key,
                &claims(json!({"aud": "someone-else"})),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::HS256,
                &key,
                &claims(json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "wrong signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
                &claims(json!({})),
            ),
        ),
        ("alg none", unsigned(&claims(json!({})))),
        ("HS384", sign(Algorithm::HS384, &key, &claims(json!({})))),
        (
            "no exp",
            sign(Algorithm::HS256, &key, &claims(json!({"exp": null}))),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        assert_eq!(status_of(&server, &token).await, unauthenticated, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_tokens_and_algorithm_confusion() {
    let (_fixture, server) = start("--jwt-public-key-file", "rs256.pub").await;
    let private = EncodingKey::from_rsa_pem(&std::fs::read(jwt_file("rs256.key")).expect("key"))
        .expect("rsa key");
    let other =
        EncodingKey::from_rsa_pem(&std::fs::read(jwt_file("other-rs256.key")).expect("key"))
            .expect("rsa key");
    assert_eq!(
        status_of(
            &server,
            &sign(Algorithm::RS256, &private, &claims(json!({})))
        )
        .await,
        (tonic::Code::Ok, 200)
    );
    let unauthenticated = (tonic::Code::Unauthenticated, 401);
    assert_eq!(
        status_of(&server, &sign(Algorithm::RS256, &other, &claims(json!({})))).await,
        unauthenticated,
        "wrong key"
    );
    assert_eq!(
        status_of(
            &server,
            &sign(
                Algorithm::RS256,
                &private,
                &claims(json!({"exp": now() - 120}))
            )
        )
        .await,
        unauthenticated
    );
    // HS256 signed with the public key's bytes as the shared secret: the classic confusion attack.
    let public_pem = std::fs::read(jwt_file("rs256.pub")).expect("pub");
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        &claims(json!({})),
    );
    assert_eq!(
        status_of(&server, &confused).await,
        unauthenticated,
        "HS256 with the public key as secret"
    );
    assert_eq!(
        status_of(&server, &unsigned(&claims(json!({})))).await,
        unauthenticated,
        "alg none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_tokens() {
    let (_fixture, server) = start("--jwt-public-key-file", "es256.pub").await;
    let private = EncodingKey::from_ec_pem(&std::fs::read(jwt_file("es256.key")).expect("key"))
        .expect("ec key");
    assert_eq!(
        status_of(
            &server,
            &sign(Algorithm::ES256, &private, &claims(json!({})))
        )
        .await,
        (tonic::Code::Ok, 200)
    );
    assert_eq!(
        status_of(
            &server,
            &sign(Algorithm::ES256, &private, &claims(json!({"aud": "x"})))
        )
        .await,
        (tonic::Code::Unauthenticated, 401)
    );
}
