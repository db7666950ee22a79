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

/// What a hostile or sloppy issuer can try: an unverified email, a Unicode look-alike of a user, a
/// token valid for a year, and a critical header extension we do not implement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_look_alike_long_lived_and_crit_tokens_are_refused() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    // A user whose name has a `k`, which the Kelvin sign (U+212A) folds onto under Unicode rules.
    let tenant = std::fs::read_to_string(fixture.tenant()).expect("tenant");
    let tenant = tenant.replacen(
        "bindings:\n",
        "bindings:\n  - user: kate@matrix.test\n    role: Cluster Viewer\n    project: platform\n",
        1,
    );
    assert!(
        tenant.contains("kate@matrix.test"),
        "the tenant has a bindings list"
    );
    std::fs::write(fixture.tenant(), tenant).expect("write tenant");
    let mut args = fixture.args();
    args.extend(
        [
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--jwt-hs256-secret-file",
        ]
        .map(str::to_owned),
    );
    args.push(jwt_file("hs256.secret"));
    let server = Server::start(&args).await.expect("server");
    let secret = std::fs::read(jwt_file("hs256.secret")).expect("secret");
    let key = EncodingKey::from_secret(secret.trim_ascii());
    let ok = (tonic::Code::Ok, 200);
    let sign_claims = |overrides| sign(Algorithm::HS256, &key, &claims(overrides));

    assert_eq!(
        status_of(&server, &sign_claims(json!({"email": "kate@matrix.test"}))).await,
        ok
    );
    assert_eq!(
        status_of(&server, &sign_claims(json!({"email": "KATE@matrix.test"}))).await,
        ok,
        "ASCII case is folded"
    );
    assert_eq!(
        status_of(&server, &sign_claims(json!({"email_verified": true}))).await,
        ok
    );
    // Unverified: the email is ignored, and `sub` ("someone-else") has no access.
    for verified in [json!(false), json!("false")] {
        assert_eq!(
            status_of(&server, &sign_claims(json!({"email_verified": verified}))).await,
            (tonic::Code::NotFound, 404),
            "email_verified: {verified}"
        );
    }
    let unauthenticated = (tonic::Code::Unauthenticated, 401);
    assert_eq!(
        status_of(
            &server,
            &sign_claims(json!({"email": "\u{212A}ate@matrix.test"}))
        )
        .await,
        unauthenticated,
        "Kelvin sign look-alike"
    );
    assert_eq!(
        status_of(
            &server,
            &sign_claims(json!({"iat": now() - 10, "exp": now() + 365 * 86400}))
        )
        .await,
        unauthenticated,
        "a year-long token"
    );
    assert_eq!(
        status_of(
            &server,
            &sign_claims(json!({"iat": null, "exp": now() + 2 * 86400}))
        )
        .await,
        unauthenticated,
        "two days without iat"
    );
    let header_json =
        serde_json::json!({"alg": "HS256", "typ": "JWT", "crit": ["exp-ext"], "exp-ext": 1});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json.to_string()),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256).expect("sign");
    let crit = format!("{signing_input}.{signature}");
    assert_eq!(
        status_of(&server, &crit).await,
        unauthenticated,
        "unknown crit"
    );
}

/// `--jwt-max-lifetime` bounds how long a token can still be used from now, whatever its `iat` says:
/// a ten-year token that claims to have been issued half an hour before it expires is refused, and so
/// are tokens issued after they expire or in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifetime_is_measured_from_now_not_from_iat() {
    let (_fixture, server) = start("--jwt-hs256-secret-file", "hs256.secret").await;
    let secret = std::fs::read(jwt_file("hs256.secret")).expect("secret");
    let key = EncodingKey::from_secret(secret.trim_ascii());
    let sign_claims = |overrides| sign(Algorithm::HS256, &key, &claims(overrides));
    let unauthenticated = (tonic::Code::Unauthenticated, 401);
    let ten_years = now() + 10 * 365 * 86400;
    for (what, token) in [
        (
            "ten years, iat half an hour before exp",
            sign_claims(json!({"iat": ten_years - 1800, "exp": ten_years})),
        ),
        (
            "two days, iat after exp",
            sign_claims(json!({"iat": now() + 3 * 86400, "exp": now() + 2 * 86400})),
        ),
        (
            "iat an hour in the future",
            sign_claims(json!({"iat": now() + 3600, "exp": now() + 7200})),
        ),
    ] {
        // Twice: a refused token must not become acceptable through the verified-token cache.
        for attempt in 0..2 {
            assert_eq!(
                status_of(&server, &token).await,
                unauthenticated,
                "{what} (attempt {attempt})"
            );
        }
    }
    // Within the skew a future `iat` is a clock difference, not a forgery.
    assert_eq!(
        status_of(&server, &sign_claims(json!({"iat": now() + 5}))).await,
        (tonic::Code::Ok, 200)
    );
}
