use super::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const URL: &str = "https://issuer.one.test";

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rs256.key")).expect("rsa"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture("es256.key")).expect("ec"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&fixture("ed25519.key")).expect("ed"),
        _ => unreachable!("no fixture"),
    }
}

/// The public JWK of a fixture key.
fn jwk(alg: Algorithm, kid: &str) -> Value {
    if alg == Algorithm::EdDSA {
        let x = String::from_utf8(fixture("ed25519.x")).expect("utf8");
        return json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x.trim()});
    }
    let mut jwk = Jwk::from_encoding_key(&encoding_key(alg), alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).expect("json")
}

fn sign(alg: Algorithm, kid: Option<&str>, overrides: Value) -> String {
    let now = now_seconds();
    let mut claims = json!({
        "iss": URL,
        "aud": "kubeconfigd",
        "sub": "system:serviceaccount:ci:deployer",
        "groups": ["ops", "dev"],
        "tenant": "acme",
        "iat": now - 10,
        "exp": now + 600,
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), overrides.as_object()) {
        claims.extend(extra.clone());
    }
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &encoding_key(alg)).expect("sign")
}

fn config(keys: &str, mappings: &str) -> AuthenticationConfiguration {
    let text = format!(
        r#"apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
  - issuer:
      url: {URL}
      audiences: [kubeconfigd]
      {keys}
    claimMappings:
      {mappings}
    claimValidationRules:
      - claim: tenant
        requiredValue: acme
"#
    );
    AuthenticationConfiguration::parse(&text, "auth.yaml").expect("valid configuration")
}

const MAPPINGS: &str = r#"username: {claim: sub, prefix: ""}
      groups: {claim: groups, prefix: "one:"}"#;

fn issuers(keys: &[Value], mappings: &str) -> Issuers {
    let jwks = json!({ "keys": keys }).to_string();
    Issuers::configured(
        None,
        TokenSettings::default(),
        Some(&config(&format!("jwks: {jwks}"), mappings)),
    )
    .expect("issuers")
}

#[tokio::test]
async fn each_key_type_verifies_its_algorithm_and_maps_the_claims() {
    let issuers = issuers(
        &[
            jwk(Algorithm::RS256, "rsa"),
            jwk(Algorithm::ES256, "ec"),
            jwk(Algorithm::EdDSA, "ed"),
        ],
        MAPPINGS,
    );
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let token = sign(alg, Some(kid), json!({}));
        let identity = issuers.verify(&token).await.expect("verified");
        assert_eq!(&*identity.user, "system:serviceaccount:ci:deployer");
        assert_eq!(*identity.groups, ["one:ops", "one:dev"]);
        assert_eq!(identity.proof.method, Method::Token { issuer: URL.into() });
        // Without a `kid`, the keys of the right type are tried.
        assert!(issuers.verify(&sign(alg, None, json!({}))).await.is_some());
    }
}

#[tokio::test]
async fn the_algorithm_must_be_the_one_the_key_allows() {
    let issuers = issuers(
        &[jwk(Algorithm::RS256, "rsa"), jwk(Algorithm::ES256, "ec")],
        MAPPINGS,
    );
    // An ES256 token naming the RSA key, and an RS256 token naming the EC key.
    assert_eq!(
        issuers
            .verify(&sign(Algorithm::ES256, Some("rsa"), json!({})))
            .await,
        None
    );
    assert_eq!(
        issuers
            .verify(&sign(Algorithm::RS256, Some("ec"), json!({})))
            .await,
        None
    );
    // HS256 with the RSA key's public modulus as the secret: no key allows HS256.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa".to_owned());
    let claims = json!({"iss": URL, "aud": "kubeconfigd", "sub": "x", "tenant": "acme", "exp": now_seconds() + 60});
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(&fixture("rs256.pub")),
    )
    .expect("sign");
    assert_eq!(issuers.verify(&forged).await, None);
    // A JWK whose `alg` narrows the RSA key to RS384 refuses RS256.
    let mut narrowed = jwk(Algorithm::RS256, "rsa");
    narrowed["alg"] = json!("RS384");
    let issuers = self::issuers(&[narrowed], MAPPINGS);
    assert_eq!(
        issuers
            .verify(&sign(Algorithm::RS256, Some("rsa"), json!({})))
            .await,
        None
    );
}

#[tokio::test]
async fn issuer_audience_rules_and_claims_are_checked() {
    let issuers = issuers(&[jwk(Algorithm::ES256, "ec")], MAPPINGS);
    let verify = |overrides: Value| {
        let token = sign(Algorithm::ES256, Some("ec"), overrides);
        let issuers = &issuers;
        async move { issuers.verify(&token).await }
    };
    assert!(verify(json!({})).await.is_some());
    for refused in [
        json!({"iss": "https://issuer.two.test"}),
        json!({"aud": "someone-else"}),
        json!({"tenant": "other"}),
        json!({"tenant": null}),
        json!({"sub": ""}),
        json!({"sub": "k\u{212A}te"}),
        json!({"groups": [1]}),
        json!({"groups": {"a": 1}}),
        json!({"exp": now_seconds() + 2 * 24 * 3600}),
    ] {
        assert_eq!(verify(refused.clone()).await, None, "{refused}");
    }
    // Several audiences: any one of them.
    assert!(
        verify(json!({"aud": ["other", "kubeconfigd"]}))
            .await
            .is_some()
    );
    // A group claim may be one string.
    let identity = verify(json!({"groups": "ops"})).await.expect("verified");
    assert_eq!(*identity.groups, ["one:ops"]);
}

#[tokio::test]
async fn an_email_names_the_caller_only_when_verified() {
    let issuers = issuers(
        &[jwk(Algorithm::ES256, "ec")],
        r#"username: {claim: email, prefix: ""}"#,
    );
    let verify = |overrides: Value| {
        let token = sign(Algorithm::ES256, Some("ec"), overrides);
        let issuers = &issuers;
        async move { issuers.verify(&token).await.map(|i| i.user) }
    };
    assert_eq!(
        verify(json!({"email": "Kate@X.test"})).await.as_deref(),
        Some("kate@x.test")
    );
    assert_eq!(
        verify(json!({"email": "kate@x.test", "email_verified": true}))
            .await
            .as_deref(),
        Some("kate@x.test")
    );
    assert_eq!(
        verify(json!({"email": "kate@x.test", "email_verified": false})).await,
        None
    );
    assert_eq!(
        verify(json!({"email": "kate@x.test", "email_verified": "true"})).await,
        None
    );
    assert_eq!(verify(json!({})).await, None, "no email claim");
    for not_an_email in [
        "system:serviceaccount:prod:deployer",
        "spiffe://acme.test/ns/prod/sa/admin",
        "deployer",
    ] {
        assert_eq!(
            verify(json!({"email": not_an_email})).await,
            None,
            "an email claim names e-mail users only: {not_an_email}"
        );
    }
}

#[tokio::test]
async fn a_remembered_token_is_refused_once_its_key_leaves_the_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys.json");
    let write = |keys: &[Value]| {
        std::fs::write(&file, json!({ "keys": keys }).to_string()).expect("write");
    };
    write(&[jwk(Algorithm::ES256, "old"), jwk(Algorithm::EdDSA, "ed")]);
    let issuers = Issuers::configured(
        None,
        TokenSettings::default(),
        Some(&config(&format!("jwksFile: {}", file.display()), MAPPINGS)),
    )
    .expect("issuers");
    let token = sign(Algorithm::ES256, Some("old"), json!({}));
    let other = sign(Algorithm::EdDSA, Some("ed"), json!({}));
    assert!(issuers.verify(&token).await.is_some());
    assert!(issuers.verify(&other).await.is_some());
    assert!(issuers.verified.contains(&token));
    // The issuer drops the key: the remembered token goes, the other key's stays.
    write(&[jwk(Algorithm::EdDSA, "ed")]);
    let keys = Arc::clone(&issuers.table.load().issuers[0].keys);
    keys.refresh(&issuers.verified).await;
    assert!(!issuers.verified.contains(&token));
    assert!(issuers.verified.contains(&other));
    assert_eq!(issuers.verify(&token).await, None);
    assert!(issuers.verify(&other).await.is_some());
}

#[tokio::test]
async fn an_unknown_kid_fetches_at_most_once_per_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys.json");
    std::fs::write(
        &file,
        json!({ "keys": [jwk(Algorithm::ES256, "old")] }).to_string(),
    )
    .expect("write");
    let issuers = Issuers::configured(
        None,
        TokenSettings {
            min_refresh_interval: Duration::from_secs(3600),
            ..TokenSettings::default()
        },
        Some(&config(&format!("jwksFile: {}", file.display()), MAPPINGS)),
    )
    .expect("issuers");
    let keys = Arc::clone(&issuers.table.load().issuers[0].keys);
    // The first unknown kid reads the file again (once), later ones within the interval do not.
    for _ in 0..20 {
        assert_eq!(
            issuers
                .verify(&sign(Algorithm::ES256, Some("new"), json!({})))
                .await,
            None
        );
    }
    assert_eq!(keys.fetches_ok.load(Ordering::Relaxed), 1);
    std::fs::write(
        &file,
        json!({ "keys": [jwk(Algorithm::ES256, "new")] }).to_string(),
    )
    .expect("write");
    assert_eq!(
        issuers
            .verify(&sign(Algorithm::ES256, Some("new"), json!({})))
            .await,
        None,
        "rate-limited: refused at once"
    );
    assert_eq!(keys.fetches_ok.load(Ordering::Relaxed), 1);
}

#[test]
fn metrics_and_readiness_name_an_issuer_without_keys() {
    let issuers = Issuers::configured(
        None,
        TokenSettings::default(),
        Some(&config("discoveryURL: https://127.0.0.1:1/x", MAPPINGS)),
    )
    .expect("issuers");
    assert!(
        issuers
            .readiness_detail()
            .contains("issuer https://issuer.one.test: no keys yet")
    );
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(issuers));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("kubeconfigd_jwt_issuer_keys{issuer=\"https://issuer.one.test\"} 0"));
    assert!(text.contains(
        "kubeconfigd_jwks_fetches_total{issuer=\"https://issuer.one.test\",result=\"ok\"} 0"
    ));
}

#[test]
fn an_issuer_may_not_also_be_the_legacy_one() {
    let legacy = JwtVerifier::new(&crate::config::JwtConfig {
        issuer: URL.to_owned(),
        audience: "kubeconfigd".to_owned(),
        key: crate::config::JwtKey::Hs256Secret(vec![7; 32]),
        max_lifetime: Duration::from_secs(3600),
    })
    .expect("verifier");
    let error = Issuers::configured(
        Some(legacy),
        TokenSettings::default(),
        Some(&config(
            &format!("jwks: {}", json!({"keys": [jwk(Algorithm::ES256, "ec")]})),
            MAPPINGS,
        )),
    )
    .expect_err("refused");
    assert!(error.contains("also --jwt-issuer"), "{error}");
}
