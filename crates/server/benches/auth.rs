//! Benchmarks of authentication: an API key (hash and look-up, the baseline) and a JWT bearer token,
//! ES256 and RS256, the first time it is seen (every check, signature included) and again (the
//! verified token remembered by its digest) — through the `--jwt-*` verifier, and through
//! [`Issuers::verify`] for an `--authentication-config` issuer (keys from an inline JWKS), with
//! EdDSA as well — and a client certificate: read once per connection (the parse after the
//! handshake) and checked on every call (its expiry, then its identity cloned).

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeconfig_policy::ApiKeyHash;
use kubeconfigd::config::{JwtConfig, JwtKey};
use kubeconfigd::service::auth::configuration::AuthenticationConfiguration;
use kubeconfigd::service::auth::{
    ApiKeys, Credentials, Issuers, JwtVerifier, PeerCertificate, TokenSettings, authenticate,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/jwt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn verifier(public_key: &str) -> JwtVerifier {
    JwtVerifier::new(&JwtConfig {
        issuer: "https://issuer.test".to_owned(),
        audience: "kubeconfigd".to_owned(),
        key: JwtKey::PublicKeyPem(fixture(public_key)),
        max_lifetime: Duration::from_secs(3600),
    })
    .expect("verifier")
}

/// The issuers of a configuration with one inline key of each type (RS256, ES256, EdDSA).
fn issuers() -> Issuers {
    let rsa = EncodingKey::from_rsa_pem(&fixture("rs256.key")).expect("rs256 key");
    let ec = EncodingKey::from_ec_pem(&fixture("es256.key")).expect("es256 key");
    let jwk = |key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        serde_json::to_value(jwk).expect("json")
    };
    let x = String::from_utf8(fixture("ed25519.x")).expect("utf8");
    let keys = serde_json::json!({"keys": [
        jwk(&rsa, Algorithm::RS256, "rs256"),
        jwk(&ec, Algorithm::ES256, "es256"),
        {"kty": "OKP", "crv": "Ed25519", "kid": "eddsa", "x": x.trim()},
    ]});
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n  - issuer:\n      url: https://issuer.test\n      audiences: [kubeconfigd]\n      jwks: {keys}\n    claimMappings:\n      username: {{claim: email, prefix: \"\"}}\n      groups: {{claim: groups, prefix: \"\"}}\n"
    );
    let config = AuthenticationConfiguration::parse(&text, "bench.yaml").expect("configuration");
    Issuers::configured(None, TokenSettings::default(), Some(&config)).expect("issuers")
}

fn token(algorithm: Algorithm, key: &EncodingKey) -> String {
    token_with_kid(algorithm, key, None)
}

fn token_with_kid(algorithm: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "email": "cluster-viewer@matrix.test",
        "groups": ["ops"],
        "iss": "https://issuer.test",
        "aud": "kubeconfigd",
        "iat": now,
        "nbf": now,
        "exp": now + 3000,
    });
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("authenticate");
    let keys = ApiKeys::new([(
        ApiKeyHash::from_digest(Sha256::digest(b"demo-viewer-key").into()),
        "viewer@demo.test".to_owned(),
    )]);
    group.bench_function("api-key", |b| {
        b.iter(|| keys.user_of(black_box("demo-viewer-key")))
    });
    let es256 = EncodingKey::from_ec_pem(&fixture("es256.key")).expect("es256 key");
    let rs256 = EncodingKey::from_rsa_pem(&fixture("rs256.key")).expect("rs256 key");
    for (name, public, token) in [
        ("es256", "es256.pub", token(Algorithm::ES256, &es256)),
        ("rs256", "rs256.pub", token(Algorithm::RS256, &rs256)),
    ] {
        group.bench_function(format!("bearer-{name}-first-seen"), |b| {
            // The verifier is handed back so that dropping it is not timed.
            b.iter_batched(
                || verifier(public),
                |verifier| {
                    let caller = verifier.verify(black_box(&token)).expect("valid");
                    (verifier, caller)
                },
                BatchSize::SmallInput,
            )
        });
        let remembering = verifier(public);
        group.bench_function(format!("bearer-{name}-seen-before"), |b| {
            b.iter(|| remembering.verify(black_box(&token)).expect("valid"))
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.key")).expect("ed25519 key");
    for (name, algorithm, key) in [
        ("rs256", Algorithm::RS256, &rs256),
        ("es256", Algorithm::ES256, &es256),
        ("eddsa", Algorithm::EdDSA, &ed),
    ] {
        let token = token_with_kid(algorithm, key, Some(name));
        group.bench_function(format!("issuers-{name}-first-seen"), |b| {
            b.iter_batched(
                issuers,
                |issuers| {
                    let caller = runtime
                        .block_on(issuers.verify(black_box(&token)))
                        .expect("valid");
                    (issuers, caller)
                },
                BatchSize::SmallInput,
            )
        });
        let remembering = issuers();
        group.bench_function(format!("issuers-{name}-seen-before"), |b| {
            b.iter(|| {
                runtime
                    .block_on(remembering.verify(black_box(&token)))
                    .expect("valid")
            })
        });
    }
    // The handshake's certificate parsing is not included: rustls verifies it either way. The
    // fixture is a server certificate; reading a client one (a CN, or one URI SAN) costs the same.
    let der = CertificateDer::from_pem_slice(
        &std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tls/server.crt"),
        )
        .expect("certificate"),
    )
    .expect("PEM certificate");
    group.bench_function("client-certificate-per-connection-parse", |b| {
        b.iter(|| PeerCertificate::from_der(black_box(der.as_ref())).expect("parses"))
    });
    let certificate = std::sync::Arc::new(PeerCertificate {
        user: "spiffe://acme.test/ns/payments/sa/deployer".into(),
        groups: std::sync::Arc::from([]),
        serial: "5e01".into(),
        issuer: "CN=ca".into(),
        not_after: u64::MAX,
        rechecked: None,
    });
    let now = kubeconfigd::service::auth::now_seconds();
    group.bench_function("client-certificate-per-call", |b| {
        b.iter(|| {
            black_box(&certificate)
                .identity_at(black_box(now))
                .expect("valid")
        })
    });
    group.finish();
    whole_calls(c, &keys, &runtime, &certificate);
}

/// The whole of [`authenticate`] as a call runs it — the credential checked, then the caller built
/// from it — for an API key (the baseline), a remembered token of each algorithm, and a client
/// certificate: what a call pays for each way in.
fn whole_calls(
    c: &mut Criterion,
    keys: &ApiKeys,
    runtime: &tokio::runtime::Runtime,
    certificate: &std::sync::Arc<PeerCertificate>,
) {
    let mut group = c.benchmark_group("call");
    let api_key = Credentials {
        api_key: Some("demo-viewer-key".to_owned()),
        ..Credentials::default()
    };
    let issuers = issuers();
    group.bench_function("api-key", |b| {
        b.iter(|| {
            runtime
                .block_on(authenticate(black_box(&api_key), keys, &issuers))
                .expect("valid")
        })
    });
    let rs256 = EncodingKey::from_rsa_pem(&fixture("rs256.key")).expect("rs256 key");
    let es256 = EncodingKey::from_ec_pem(&fixture("es256.key")).expect("es256 key");
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519.key")).expect("ed25519 key");
    for (name, algorithm, key) in [
        ("rs256", Algorithm::RS256, &rs256),
        ("es256", Algorithm::ES256, &es256),
        ("eddsa", Algorithm::EdDSA, &ed),
    ] {
        let bearer = Credentials {
            bearer: Some(token_with_kid(algorithm, key, Some(name))),
            ..Credentials::default()
        };
        runtime
            .block_on(authenticate(&bearer, keys, &issuers))
            .expect("valid");
        group.bench_function(format!("token-{name}-seen-before"), |b| {
            b.iter(|| {
                runtime
                    .block_on(authenticate(black_box(&bearer), keys, &issuers))
                    .expect("valid")
            })
        });
    }
    let certified =
        Credentials::default().with_certificate(Some(std::sync::Arc::clone(certificate)));
    group.bench_function("client-certificate", |b| {
        b.iter(|| {
            runtime
                .block_on(authenticate(black_box(&certified), keys, &issuers))
                .expect("valid")
        })
    });
    group.finish();
}

criterion_group! {
    name = auth;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(auth);
