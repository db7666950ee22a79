//! Several token issuers from `--authentication-config`, end to end: HTTPS issuers on loopback (a CA and
//! a leaf made here) serve OpenID discovery and a JWKS that the test can rotate, take down, and count
//! requests on; the real server verifies RS256, ES256 and EdDSA tokens from two issuers at once, picks
//! up a new key without a restart, drops a removed one, keeps its keys through an outage, reports an
//! issuer it never reached, and does not hammer an issuer with a flood of made-up key ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kubeconfig_proto::kubeconfig::v1::GetKubeconfigRequest;
use kubeconfigd_e2e::{Fixture, Server, eventually, free_port, metrics, workspace_root};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const UID: &str = "00000000000000000000aa01";
const AUDIENCE: &str = "kubeconfigd";
const USER: &str = "cluster-viewer@matrix.test";

/// A key a test issuer signs with, and its public JWK.
struct SigningKey {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn rsa(kid: &str, fixture: &str) -> Self {
        let pem = std::fs::read(workspace_root().join("tests/fixtures/jwt").join(fixture))
            .expect("fixture");
        let key = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
        Self::with_jwk(Algorithm::RS256, kid, key)
    }

    fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec key");
        Self::with_jwk(Algorithm::ES256, kid, key)
    }

    fn ed(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
        let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("ed key");
        let jwk = json!({
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
        });
        SigningKey {
            alg: Algorithm::EdDSA,
            kid: kid.to_owned(),
            key,
            jwk,
        }
    }

    fn with_jwk(alg: Algorithm, kid: &str, key: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("jwk");
        jwk.common.key_id = Some(kid.to_owned());
        SigningKey {
            alg,
            kid: kid.to_owned(),
            key,
            jwk: serde_json::to_value(jwk).expect("json"),
        }
    }

    /// A token for `iss` with these claims over the defaults, signed with this key, naming `kid`.
    fn sign_as(&self, alg: Algorithm, kid: Option<&str>, iss: &str, overrides: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let mut claims = json!({
            "iss": iss,
            "aud": AUDIENCE,
            "email": USER,
            "tenant": "matrix",
            "iat": now - 10,
            "nbf": now - 10,
            "exp": now + 600,
            // Distinct tokens on every call: nothing is answered from the verified-token cache
            // unless a test means it to be.
            "jti": format!("{}", COUNTER.fetch_add(1, Ordering::Relaxed)),
        });
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), overrides.as_object()) {
            claims.extend(extra.clone());
        }
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }

    fn sign(&self, iss: &str) -> String {
        self.sign_as(self.alg, Some(&self.kid), iss, json!({}))
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What a test issuer serves.
#[derive(Default)]
struct Served {
    keys: Vec<Value>,
    down: bool,
}

/// An HTTPS issuer on loopback: `/.well-known/openid-configuration` and `/openid/v1/jwks`.
struct TestIssuer {
    url: String,
    ca_pem: String,
    served: Arc<Mutex<Served>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIssuer {
    async fn start(keys: &[&SigningKey]) -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let served = Arc::new(Mutex::new(Served {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
            down: false,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let task = {
            let (served, requests, url) = (Arc::clone(&served), Arc::clone(&requests), url.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, served, requests, url) = (
                        acceptor.clone(),
                        Arc::clone(&served),
                        Arc::clone(&requests),
                        url.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            answer(acceptor, tcp, &served, &requests, &url),
                        )
                        .await;
                    });
                }
            })
        };
        TestIssuer {
            url,
            ca_pem: ca_cert.pem(),
            served,
            requests,
            task,
        }
    }

    fn serve(&self, keys: &[&SigningKey]) {
        self.served.lock().expect("lock").keys = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn set_down(&self, down: bool) {
        self.served.lock().expect("lock").down = down;
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// This issuer's entry in the configuration file.
    fn entry(&self, rules: &str) -> String {
        let ca = self.ca_pem.trim_end().replace('\n', "\n        ");
        format!(
            "  - issuer:\n      url: {}\n      audiences: [{AUDIENCE}]\n      certificateAuthority: |\n        {ca}\n    claimMappings:\n      username: {{claim: email, prefix: \"\"}}\n{rules}",
            self.url
        )
    }
}

/// Reads one request and answers it (one request per connection).
async fn answer(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    served: &Mutex<Served>,
    requests: &AtomicU64,
    url: &str,
) -> std::io::Result<()> {
    let mut stream = acceptor.accept(tcp).await?;
    let mut head = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..n]);
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, body) = {
        let served = served.lock().expect("lock");
        if served.down {
            ("503 Service Unavailable", String::new())
        } else if path == "/.well-known/openid-configuration" {
            (
                "200 OK",
                json!({"issuer": url, "jwks_uri": format!("{url}/openid/v1/jwks")}).to_string(),
            )
        } else if path == "/openid/v1/jwks" {
            ("200 OK", json!({"keys": served.keys}).to_string())
        } else {
            ("404 Not Found", String::new())
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The server, with a configuration file of these entries.
async fn start(entries: &[String], extra: &[&str]) -> (Fixture, tempfile::TempDir, Server) {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("authentication.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1beta1\nkind: AuthenticationConfiguration\njwt:\n{}",
            entries.join("")
        ),
    )
    .expect("write");
    let mut args = fixture.args();
    args.extend([
        "--authentication-config".to_owned(),
        path.display().to_string(),
    ]);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let server = Server::start(&args).await.expect("server");
    (fixture, dir, server)
}

/// The gRPC code of a download with this token.
async fn code_of(server: &Server, token: &str) -> tonic::Code {
    let mut client = server.client().await.expect("client");
    let mut request = tonic::Request::new(GetKubeconfigRequest {
        uid: UID.to_owned(),
        frp: None,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    match client.get_kubeconfig(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// The REST status of a download with this token.
async fn rest_status_of(server: &Server, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
            server.rest_url()
        ))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("REST")
        .status()
        .as_u16()
}

async fn metric(server: &Server, name: &str) -> Option<f64> {
    metrics(server).await.expect("metrics").get(name).copied()
}

const RULE: &str = "    claimValidationRules:\n      - {claim: tenant, requiredValue: matrix}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_rs256_es256_and_eddsa() {
    let rsa = SigningKey::rsa("rsa-1", "rs256.key");
    let ed = SigningKey::ed("ed-1");
    let ec = SigningKey::ec("ec-1");
    let one = TestIssuer::start(&[&rsa, &ed]).await;
    let two = TestIssuer::start(&[&ec]).await;
    let (_fixture, _dir, server) = start(&[one.entry(RULE), two.entry("")], &[]).await;
    let ok = tonic::Code::Ok;
    let refused = tonic::Code::Unauthenticated;

    assert_eq!(code_of(&server, &rsa.sign(&one.url)).await, ok, "RS256");
    assert_eq!(code_of(&server, &ed.sign(&one.url)).await, ok, "EdDSA");
    assert_eq!(code_of(&server, &ec.sign(&two.url)).await, ok, "ES256");
    assert_eq!(rest_status_of(&server, &ec.sign(&two.url)).await, 200);
    // A key without `kid` in the token: the keys of the right type are tried.
    assert_eq!(
        code_of(
            &server,
            &ec.sign_as(Algorithm::ES256, None, &two.url, json!({}))
        )
        .await,
        ok
    );
    for (what, token) in [
        ("one issuer's key for the other", rsa.sign(&two.url)),
        (
            "wrong audience",
            rsa.sign_as(
                Algorithm::RS256,
                Some("rsa-1"),
                &one.url,
                json!({"aud": "other"}),
            ),
        ),
        ("an issuer not configured", rsa.sign("https://127.0.0.1:1")),
        (
            "claimValidationRules",
            rsa.sign_as(
                Algorithm::RS256,
                Some("rsa-1"),
                &one.url,
                json!({"tenant": "other"}),
            ),
        ),
        (
            "claimValidationRules, claim missing",
            rsa.sign_as(
                Algorithm::RS256,
                Some("rsa-1"),
                &one.url,
                json!({"tenant": null}),
            ),
        ),
        // An ES256 signature naming the RSA key, and an RS256 one naming the Ed25519 key.
        (
            "ES256 for the RSA key",
            ec.sign_as(Algorithm::ES256, Some("rsa-1"), &one.url, json!({})),
        ),
        (
            "RS256 for the Ed25519 key",
            rsa.sign_as(Algorithm::RS256, Some("ed-1"), &one.url, json!({})),
        ),
        (
            "email not verified",
            rsa.sign_as(
                Algorithm::RS256,
                Some("rsa-1"),
                &one.url,
                json!({"email_verified": false}),
            ),
        ),
    ] {
        assert_eq!(code_of(&server, &token).await, refused, "{what}");
    }
    assert_eq!(
        rest_status_of(&server, &rsa.sign(&two.url)).await,
        401,
        "REST refuses too"
    );
    // The second issuer has no rule: the tenant claim does not matter there.
    assert_eq!(
        code_of(
            &server,
            &ec.sign_as(
                Algorithm::ES256,
                Some("ec-1"),
                &two.url,
                json!({"tenant": "other"})
            )
        )
        .await,
        ok
    );
    let keys = |url: &str| format!("kubeconfigd_jwt_issuer_keys{{issuer=\"{url}\"}}");
    assert_eq!(metric(&server, &keys(&one.url)).await, Some(2.0));
    assert_eq!(metric(&server, &keys(&two.url)).await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_outage() {
    let first = SigningKey::rsa("first", "rs256.key");
    let second = SigningKey::rsa("second", "other-rs256.key");
    let issuer = TestIssuer::start(&[&first]).await;
    let (_fixture, _dir, server) = start(
        &[issuer.entry("")],
        &[
            "--jwks-refresh-interval",
            "2s",
            "--jwks-min-refresh-interval",
            "1s",
        ],
    )
    .await;
    let remembered = first.sign(&issuer.url);
    assert_eq!(code_of(&server, &remembered).await, tonic::Code::Ok);

    // A new key: accepted without a restart, within 5 s.
    issuer.serve(&[&first, &second]);
    let started = std::time::Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || async {
            code_of(&server, &second.sign(&issuer.url)).await == tonic::Code::Ok
        })
        .await,
        "the new key is used"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The old key removed: even the token verified (and remembered) before is refused after the
    // refresh interval.
    issuer.serve(&[&second]);
    assert!(
        eventually(Duration::from_secs(6), || async {
            code_of(&server, &remembered).await == tonic::Code::Unauthenticated
        })
        .await,
        "a removed key stops verifying"
    );
    assert_eq!(
        code_of(&server, &first.sign(&issuer.url)).await,
        tonic::Code::Unauthenticated
    );

    // The issuer goes down: the last good keys still verify.
    issuer.set_down(true);
    let failed = format!(
        "kubeconfigd_jwks_fetches_total{{issuer=\"{}\",result=\"error\"}}",
        issuer.url
    );
    assert!(
        eventually(Duration::from_secs(8), || async {
            metric(&server, &failed).await.unwrap_or(0.0) >= 1.0
        })
        .await,
        "a failed fetch is counted"
    );
    assert_eq!(
        code_of(&server, &second.sign(&issuer.url)).await,
        tonic::Code::Ok
    );
    assert!(
        server
            .logged(|l| l.contains("keeping the last good keys"))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_never_reached_is_reported_and_others_are_served() {
    let key = SigningKey::ec("ec-1");
    let working = TestIssuer::start(&[&key]).await;
    // An issuer whose port nobody listens on (with some CA: it is never reached anyway).
    let gone = format!("https://127.0.0.1:{}", free_port().expect("port"));
    let mut unreachable = working.entry("");
    unreachable = unreachable.replacen(&working.url, &gone, 1);
    let (_fixture, _dir, server) = start(&[working.entry(""), unreachable], &[]).await;

    assert_eq!(
        code_of(&server, &key.sign(&gone)).await,
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code_of(&server, &key.sign(&working.url)).await,
        tonic::Code::Ok
    );
    let readyz = reqwest::get(format!("{}/readyz", server.admin_url()))
        .await
        .expect("readyz");
    assert_eq!(readyz.status().as_u16(), 200, "still ready");
    let text = readyz.text().await.expect("text");
    assert!(text.contains(&format!("issuer {gone}: no keys")), "{text}");
    assert!(!text.contains(&working.url), "{text}");
    assert_eq!(
        metric(
            &server,
            &format!("kubeconfigd_jwt_issuer_keys{{issuer=\"{gone}\"}}")
        )
        .await,
        Some(0.0)
    );
    assert!(
        server
            .logged(|l| l.contains("issuer never reached") && l.contains(&gone))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_does_not_hammer_the_issuer() {
    let key = SigningKey::rsa("rsa-1", "rs256.key");
    let issuer = TestIssuer::start(&[&key]).await;
    let (_fixture, _dir, server) = start(&[issuer.entry("")], &[]).await;
    assert_eq!(
        code_of(&server, &key.sign(&issuer.url)).await,
        tonic::Code::Ok
    );
    let before = issuer.requests();
    assert!(before >= 2, "discovery and key set fetched");
    let client = server.client().await.expect("client");
    for round in 0..10 {
        let calls = (0..20).map(|i| {
            let token = key.sign_as(
                Algorithm::RS256,
                Some(&format!("made-up-{round}-{i}")),
                &issuer.url,
                json!({}),
            );
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(GetKubeconfigRequest {
                    uid: UID.to_owned(),
                    frp: None,
                });
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {token}").parse().expect("metadata"),
                );
                client.get_kubeconfig(request).await.map(|_| ())
            }
        });
        for result in futures_join(calls).await {
            assert_eq!(
                result.expect_err("refused").code(),
                tonic::Code::Unauthenticated
            );
        }
    }
    // At most one more fetch (discovery and key set) for 200 unknown kids.
    let after = issuer.requests();
    assert!(
        after - before <= 2,
        "{} requests for the flood",
        after - before
    );
    // Still served.
    assert_eq!(
        code_of(&server, &key.sign(&issuer.url)).await,
        tonic::Code::Ok
    );
}

/// Runs the futures concurrently and returns their outputs.
async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// Writes `text` to `path` by rename, as an editor or a ConfigMap volume does.
fn replace_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_stops_the_start_and_a_bad_edit_keeps_the_last_good_one() {
    let key = SigningKey::ec("ec-1");
    let one = TestIssuer::start(&[&key]).await;
    let two = TestIssuer::start(&[&key]).await;
    let fixture = Fixture::matrix("seed").expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("authentication.yaml");
    let file = |entries: &[String]| {
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AuthenticationConfiguration\njwt:\n{}",
            entries.join("")
        )
    };
    let mut args = fixture.args();
    args.extend([
        "--authentication-config".to_owned(),
        path.display().to_string(),
    ]);

    // At start, a mistake is an exit naming the flag, the file, the line and the field.
    let bad = file(&[one.entry("")]).replace(&format!("audiences: [{AUDIENCE}]"), "audiences: []");
    std::fs::write(&path, &bad).expect("write");
    let error = format!("{:#}", Server::start(&args).await.expect_err("refused"));
    assert!(
        error.contains(&format!(
            "--authentication-config: {}:6: jwt[0].issuer.audiences: must not be empty",
            path.display()
        )),
        "{error}"
    );

    std::fs::write(&path, file(&[one.entry("")])).expect("write");
    let server = Server::start(&args).await.expect("server");
    assert_eq!(code_of(&server, &key.sign(&one.url)).await, tonic::Code::Ok);
    assert_eq!(
        code_of(&server, &key.sign(&two.url)).await,
        tonic::Code::Unauthenticated
    );

    // A bad edit (a CEL rule) is logged and changes nothing.
    let cel = "    claimValidationRules:\n      - {expression: 'claims.tenant == \"matrix\"'}\n";
    replace_file(&path, &file(&[one.entry(""), two.entry(cel)]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            server
                .log_text()
                .contains("CEL expressions are not supported")
        })
        .await,
        "{}",
        server.log_text()
    );
    assert_eq!(code_of(&server, &key.sign(&one.url)).await, tonic::Code::Ok);
    assert_eq!(
        code_of(&server, &key.sign(&two.url)).await,
        tonic::Code::Unauthenticated
    );

    // A good edit adds the second issuer without a restart.
    replace_file(&path, &file(&[one.entry(""), two.entry("")]));
    assert!(
        eventually(Duration::from_secs(5), || async {
            code_of(&server, &key.sign(&two.url)).await == tonic::Code::Ok
        })
        .await
    );
    assert_eq!(code_of(&server, &key.sign(&one.url)).await, tonic::Code::Ok);
}
