//! What a caller sends as credentials: an `authorization` header value and a JWT. Parsing and
//! verification must never panic, and nothing unsigned may authenticate.
#![no_main]

use std::sync::LazyLock;

use kubeconfigd::service::auth::{ApiKeys, Credentials, Issuers, JwtVerifier, authenticate};
use kubeconfigd::config::{JwtConfig, JwtKey};

static ISSUERS: LazyLock<Issuers> = LazyLock::new(|| {
    Issuers::new(Some(
        JwtVerifier::new(&JwtConfig {
            issuer: "https://issuer.fuzz.test".to_owned(),
            audience: "kubeconfigd".to_owned(),
            key: JwtKey::Hs256Secret(b"fuzz-only-hs256-secret-0123456789abcdef".to_vec()),
            max_lifetime: std::time::Duration::from_secs(86_400),
        })
        .expect("verifier"),
    ))
});

thread_local! {
    /// Authentication is async (a token with an unknown key may wait for its issuer); with no issuer
    /// to fetch from, it never waits, and a current-thread runtime runs it.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bearer = Credentials::bearer_from_authorization(text);
    let credentials = Credentials {
        bearer: bearer.or_else(|| Some(text.to_owned())),
        ..Default::default()
    };
    // The fuzzer cannot forge an HS256 signature: anything that authenticates is a bug.
    let refused = RUNTIME.with(|runtime| {
        runtime
            .block_on(authenticate(&credentials, &ApiKeys::default(), &ISSUERS))
            .is_err()
    });
    assert!(refused);
});
