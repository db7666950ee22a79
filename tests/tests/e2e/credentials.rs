//! Minted admin credentials, end to end: client CAs made with OpenSSL, kubectl signing in with a
//! minted admin kubeconfig to an `openssl s_server` that verifies client certificates with the
//! cluster's CA (as a Kubernetes API server does), lifetimes, keys the caller keeps, and the ledger
//! shared by two replicas over a real Redis: reuse, listing, checks in every state and revocation.

// The helpers below run only inside tests: a panic is how they report a broken precondition.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use kubeconfig_proto::kubeconfig::v1::{
    CheckKubeconfigRequest, CredentialStatus, GetAdminKubeconfigRequest,
    GetKubeconfigAccessRequest, GetKubeconfigRequest, ListIssuedCredentialsRequest,
    RevokeCredentialRequest, check_kubeconfig_request, get_admin_kubeconfig_request,
};
use kubeconfigd_e2e::{
    Fixture, RedisServer, Server, eventually, free_port, metrics, with_key, workspace_root,
};

const MINTED_A: &str = "00000000000000000000bb01";
const MINTED_B: &str = "00000000000000000000bb02";
const MINTED_NO_CA: &str = "00000000000000000000bb03";
const ADMIN: &str = "matrix-cluster-admin";
const VIEWER: &str = "matrix-cluster-viewer";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client CA (`<name>-ca.crt`, `<name>-ca.key`): `ec` (P-256, SEC1 key) or `rsa` (2048, PKCS#1 key
/// as kubeadm writes it).
fn make_ca(dir: &Path, name: &str, kind: &str) {
    let key = format!("{name}-ca.key");
    match kind {
        "ec" => openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
        ),
        _ => openssl(dir, &["genrsa", "-traditional", "-out", &key, "2048"]),
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-days",
            "30",
            "-subj",
            &format!("/CN={name} test cluster CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}-ca.crt"),
        ],
    );
}

/// An API server stand-in's certificate for 127.0.0.1, signed by `<ca>-ca`.
fn make_server_certificate(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-subj",
            "/CN=127.0.0.1",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}-ca.crt"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
}

/// A cluster file whose API server is `port` on loopback, served with `server_ca`'s certificate,
/// minting with `client_ca` (none: `adminCredential: minted` without a clientCa).
fn write_cluster(
    inventory: &Path,
    uid: &str,
    name: &str,
    port: u16,
    server_ca: &str,
    client_ca: Option<&str>,
) {
    let client_ca = client_ca.map_or_else(String::new, |ca| {
        format!("clientCa:\n  certificateFile: {ca}-ca.crt\n  keyFile: {ca}-ca.key\n")
    });
    std::fs::write(
        inventory.join(format!("{name}.yaml")),
        format!(
            "uid: {uid}\nname: {name}\nproject: platform\napiServer: https://127.0.0.1:{port}\n\
             certificateAuthorityFile: {server_ca}-ca.crt\nadminCredential: minted\n{client_ca}\
             kubernetesPack:\n  name: kubernetes\n  values: \"\"\n"
        ),
    )
    .unwrap();
}

/// The matrix tenant with three minted clusters: A (client CA `a`, EC), B (client CA `b`, RSA), and
/// one that says `minted` without a client CA.
fn minted_fixture(api_port: u16) -> Fixture {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    make_ca(&inventory, "a", "ec");
    make_ca(&inventory, "b", "rsa");
    make_server_certificate(&inventory, "a");
    write_cluster(&inventory, MINTED_A, "minted-a", api_port, "a", Some("a"));
    write_cluster(&inventory, MINTED_B, "minted-b", api_port, "a", Some("b"));
    write_cluster(
        &inventory,
        MINTED_NO_CA,
        "minted-no-ca",
        api_port,
        "a",
        None,
    );
    fixture
}

fn admin_request(uid: &str) -> GetAdminKubeconfigRequest {
    GetAdminKubeconfigRequest {
        uid: uid.to_owned(),
        ..Default::default()
    }
}

/// The first client certificate of a kubeconfig, as PEM.
fn client_certificate(yaml: &str) -> String {
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
        .expect("a client certificate");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(line)
            .unwrap(),
    )
    .unwrap()
}

/// `openssl x509` facts of a PEM certificate (`-subject`, `-pubkey`, `-fingerprint -sha256`, ...).
fn x509(dir: &Path, pem: &str, flag: &str) -> String {
    let file = dir.join("inspect.crt");
    std::fs::write(&file, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout"])
        .args(flag.split_whitespace())
        .arg("-in")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `openssl s_server` requiring a client certificate that verifies under `ca_file`, optionally
/// verifying as at `attime` (Unix seconds).
struct TlsServer {
    child: Child,
    log: PathBuf,
}

impl TlsServer {
    fn start(dir: &Path, port: u16, ca_file: &str, attime: Option<u64>) -> TlsServer {
        let log = dir.join(format!("s_server-{port}-{}.log", attime.unwrap_or(0)));
        let mut command = Command::new("openssl");
        command
            .args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-cert",
                "server.crt",
            ])
            .args(["-key", "server.key", "-CAfile", ca_file, "-Verify", "1"])
            .args(["-verify_return_error", "-www"]);
        if let Some(at) = attime {
            command.args(["-attime", &at.to_string()]);
        }
        let child = command
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("openssl s_server");
        TlsServer { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
    }

    async fn wait_listening(port: u16) {
        assert!(
            eventually(Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await,
            "s_server listens"
        );
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl get --raw /version` with a kubeconfig; whether it succeeded, and what it printed.
fn kubectl(kubeconfig: &Path) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "--raw", "/version", "--request-timeout=5s"])
        .output()
        .expect("kubectl is installed (the test command installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn kubectl_signs_in_with_a_minted_admin_kubeconfig_as_the_caller_and_nothing_else_does() {
    let api_port = free_port().unwrap();
    let fixture = minted_fixture(api_port);
    let dir = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.unwrap();

    let minted = client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("minted")
        .into_inner();
    let yaml = minted.kubeconfig.expect("kubeconfig").yaml;
    let credential = minted
        .credential
        .expect("the response describes the credential");
    assert_eq!(
        credential.kubernetes_user,
        "kubeconfigd:admin:cluster-admin@matrix.test"
    );
    assert_eq!(credential.kubernetes_group, "system:masters");
    assert_eq!(credential.granted_seconds, 3600, "one hour by default");
    assert!(
        yaml.contains("client-key-data: "),
        "a generated key is handed over"
    );
    let certificate = client_certificate(&yaml);
    assert!(
        x509(&dir, &certificate, "-subject")
            .contains("CN=kubeconfigd:admin:cluster-admin@matrix.test")
            || x509(&dir, &certificate, "-subject")
                .contains("CN = kubeconfigd:admin:cluster-admin@matrix.test")
    );
    let fingerprint = x509(&dir, &certificate, "-fingerprint -sha256");
    assert!(
        fingerprint
            .to_lowercase()
            .replace(':', "")
            .contains(&credential.fingerprint),
        "{fingerprint} vs {}",
        credential.fingerprint
    );
    let file_a = dir.join("admin-a.kubeconfig");
    std::fs::write(&file_a, &yaml).unwrap();

    // The API server stand-in trusts client CA `a` only, as cluster A's API server does.
    let tls = TlsServer::start(&dir, api_port, "a-ca.crt", None);
    TlsServer::wait_listening(api_port).await;
    let (ok, printed) = kubectl(&file_a);
    assert!(
        ok,
        "kubectl with the minted file: {printed}\n{}",
        tls.output()
    );
    assert!(
        printed.contains("s_server"),
        "the stand-in answered: {printed}"
    );
    let seen = tls.output();
    assert!(
        seen.contains("CN = kubeconfigd:admin:cluster-admin@matrix.test")
            && seen.contains("O = system:masters"),
        "the server saw the caller: {seen}"
    );

    // Cluster B's credential is signed by another cluster's CA: refused there.
    let yaml_b = client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_B), ADMIN))
        .await
        .expect("minted b")
        .into_inner()
        .kubeconfig
        .unwrap()
        .yaml;
    let file_b = dir.join("admin-b.kubeconfig");
    std::fs::write(&file_b, &yaml_b).unwrap();
    let (ok, printed) = kubectl(&file_b);
    assert!(
        !ok,
        "a certificate of another cluster's CA is refused: {printed}"
    );
    drop(tls);

    // The same minted file, verified as at two hours from now (past its NotAfter), is refused.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2 * 3600;
    let tls = TlsServer::start(&dir, api_port, "a-ca.crt", Some(later));
    TlsServer::wait_listening(api_port).await;
    let (ok, printed) = kubectl(&file_a);
    assert!(!ok, "an expired certificate is refused: {printed}");
    assert!(
        tls.output().contains("certificate has expired"),
        "{}",
        tls.output()
    );

    // Never the key or the certificate in the server's log.
    let key_line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data: "))
        .unwrap();
    let log = server.log_text();
    assert!(!log.contains(key_line) && !log.contains(&certificate[30..90]));
}

#[tokio::test]
async fn lifetimes_are_clamped_keys_can_stay_with_the_caller_and_bad_requests_say_why() {
    let fixture = minted_fixture(free_port().unwrap());
    let dir = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.unwrap();

    // Thirty days asked: the tenant's maximum (24 h by default) granted, and said so.
    let month = client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                expiration_seconds: Some(30 * 86_400),
                ..admin_request(MINTED_A)
            },
            ADMIN,
        ))
        .await
        .expect("clamped")
        .into_inner();
    let credential = month.credential.unwrap();
    assert!(credential.clamped);
    assert_eq!(credential.requested_seconds, 30 * 86_400);
    assert_eq!(credential.granted_seconds, 86_400);
    let expires = credential.expires_at.unwrap().seconds;
    let not_before = credential.not_before.unwrap().seconds;
    assert_eq!(
        expires - not_before,
        86_400 + 60,
        "NotBefore is a minute back"
    );
    let end = x509(
        &dir,
        &client_certificate(&month.kubeconfig.unwrap().yaml),
        "-enddate",
    );
    assert!(!end.is_empty());

    // REST: the same clamp, in headers, with the raw YAML as the body.
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/{MINTED_A}/assets/adminkubeconfig?expirationSeconds=2592000",
            server.rest_url()
        ))
        .header("apikey", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-credential-lifetime-clamped"], "true");
    assert_eq!(headers["x-credential-serial"].to_str().unwrap().len(), 32);
    assert!(
        headers["x-credential-expires"]
            .to_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(response.text().await.unwrap().starts_with("apiVersion: v1"));

    // The caller's key, by a CSR (a bare public key needs the tenant's consent: see
    // a_bare_public_key_needs_the_tenants_consent): no private key in the file, the certificate holds
    // exactly the key sent.
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "mine.sec1",
        ],
    );
    openssl(
        &dir,
        &["pkey", "-in", "mine.sec1", "-pubout", "-out", "mine.pub"],
    );
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-key",
            "mine.sec1",
            "-subj",
            "/CN=ignored",
            "-out",
            "mine.csr",
        ],
    );
    let public_key = std::fs::read_to_string(dir.join("mine.pub")).unwrap();
    for key in [get_admin_kubeconfig_request::ClientKey::Csr(
        std::fs::read_to_string(dir.join("mine.csr")).unwrap(),
    )] {
        let response = client
            .get_admin_kubeconfig(with_key(
                GetAdminKubeconfigRequest {
                    client_key: Some(key),
                    ..admin_request(MINTED_A)
                },
                ADMIN,
            ))
            .await
            .expect("certified")
            .into_inner();
        assert!(response.credential.unwrap().caller_key);
        let yaml = response.kubeconfig.unwrap().yaml;
        assert!(!yaml.contains("client-key-data"), "no private key: {yaml}");
        assert_eq!(
            x509(&dir, &client_certificate(&yaml), "-pubkey"),
            public_key
        );
        assert!(
            x509(&dir, &client_certificate(&yaml), "-subject")
                .contains("kubeconfigd:admin:cluster-admin@matrix.test")
        );
    }

    // Refused with INVALID_ARGUMENT and the reason: a weak key, a private key, too short a lifetime.
    openssl(&dir, &["genrsa", "-out", "weak.key", "1024"]);
    openssl(
        &dir,
        &["pkey", "-in", "weak.key", "-pubout", "-out", "weak.pub"],
    );
    let cases = [
        (
            Some(get_admin_kubeconfig_request::ClientKey::PublicKey(
                std::fs::read_to_string(dir.join("weak.pub")).unwrap(),
            )),
            None,
            "1024",
        ),
        (
            Some(get_admin_kubeconfig_request::ClientKey::PublicKey(
                std::fs::read_to_string(dir.join("weak.key")).unwrap(),
            )),
            None,
            "private key",
        ),
        (None, Some(60), "at least 600"),
    ];
    for (client_key, expiration_seconds, expected) in cases {
        let status = client
            .get_admin_kubeconfig(with_key(
                GetAdminKubeconfigRequest {
                    client_key,
                    expiration_seconds,
                    ..admin_request(MINTED_A)
                },
                ADMIN,
            ))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }

    // Access decisions are the seed's: a viewer still may not have the admin kubeconfig.
    let denied = client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), VIEWER))
        .await
        .expect_err("viewer");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // `minted` without a client CA: unavailable, with the reason for the cluster's admins.
    let access = client
        .get_kubeconfig_access(with_key(
            GetKubeconfigAccessRequest {
                uid: MINTED_NO_CA.to_owned(),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner()
        .access
        .unwrap();
    assert!(
        access
            .problems
            .iter()
            .any(|p| p.contains("adminCredential: minted needs clientCa")),
        "{:?}",
        access.problems
    );

    // A tenant that requires a reason refuses an admin download without one.
    let tenant = fixture.tenant();
    let text = std::fs::read_to_string(&tenant).unwrap();
    std::fs::write(
        &tenant,
        format!("{text}\ncredentials:\n  requireReasonForAdmin: true\n"),
    )
    .unwrap();
    let refused = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            client
                .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
                .await
                .is_err_and(|s| {
                    s.code() == tonic::Code::InvalidArgument && s.message().contains("reason")
                })
        }
    })
    .await;
    assert!(
        refused,
        "the reason requirement applies after the tenant edit"
    );
    let with_reason = client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                reason: "INC-1234 node pressure".to_owned(),
                ..admin_request(MINTED_A)
            },
            ADMIN,
        ))
        .await
        .expect("with a reason")
        .into_inner();
    assert_eq!(
        with_reason.credential.unwrap().reason,
        "INC-1234 node pressure"
    );
}

fn redis_flags(redis: &RedisServer) -> Vec<String> {
    vec![
        "--redis-url".to_owned(),
        redis.url(),
        "--cache-key-file".to_owned(),
        workspace_root()
            .join("tests/fixtures/cache.key")
            .display()
            .to_string(),
    ]
}

async fn check(
    server: &Server,
    api_key: &str,
    subject: check_kubeconfig_request::Subject,
) -> (CredentialStatus, String) {
    let response = server
        .client()
        .await
        .unwrap()
        .check_kubeconfig(with_key(
            CheckKubeconfigRequest {
                subject: Some(subject),
            },
            api_key,
        ))
        .await
        .expect("check")
        .into_inner();
    (response.status(), response.reason)
}

#[tokio::test]
async fn two_replicas_share_one_ledger_reuse_list_check_and_revoke() {
    let fixture = minted_fixture(free_port().unwrap());
    let redis = RedisServer::start().expect("redis-server");
    let mut args = fixture.args();
    args.extend(redis_flags(&redis));
    let one = Server::start(&args).await.expect("replica one");
    let two = Server::start(&args).await.expect("replica two");
    let mut client_one = one.client().await.unwrap();
    let mut client_two = two.client().await.unwrap();

    // A burst on replica one mints once; the rest reuse it (counted), as does replica two.
    let mut serials = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let response = client_one
            .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
            .await
            .expect("minted")
            .into_inner();
        serials.insert(response.credential.unwrap().serial);
    }
    let from_two = client_two
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("reused across replicas")
        .into_inner();
    let first = from_two.credential.unwrap();
    assert!(first.reused);
    serials.insert(first.serial.clone());
    assert_eq!(
        serials.len(),
        1,
        "one credential for the burst: {serials:?}"
    );
    let counted = metrics(&one).await.unwrap();
    assert_eq!(counted["kubeconfigd_credentials_minted_total"], 1.0);
    assert_eq!(counted["kubeconfigd_credentials_reused_total"], 4.0);
    assert_eq!(
        metrics(&two).await.unwrap()["kubeconfigd_credentials_reused_total"],
        1.0
    );
    let yaml = from_two.kubeconfig.unwrap().yaml;

    // Nothing in Redis is readable: the ledger and the kept credential are sealed.
    let keys = redis
        .cli(&["--scan", "--pattern", "kubeconfigd:v1:*"])
        .unwrap();
    let keys = String::from_utf8_lossy(&keys).to_string();
    assert!(
        keys.contains(&format!("kubeconfigd:v1:credential:{}", first.serial)),
        "{keys}"
    );
    for key in keys
        .lines()
        .filter(|k| k.contains("credential:") || k.contains("minted:"))
    {
        let value = redis.cli(&["--no-raw", "GET", key]).unwrap();
        let value = String::from_utf8_lossy(&value);
        assert!(
            !value.contains("cluster-admin@matrix.test") && !value.contains("PRIVATE"),
            "{key}: {value}"
        );
    }

    // Listed on the other replica; a viewer may not list.
    let listed = client_two
        .list_issued_credentials(with_key(
            ListIssuedCredentialsRequest {
                cluster_uid: MINTED_A.to_owned(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.credentials.len(), 1);
    assert_eq!(listed.credentials[0].serial, first.serial);
    let refused = client_two
        .list_issued_credentials(with_key(
            ListIssuedCredentialsRequest {
                cluster_uid: MINTED_A.to_owned(),
                ..Default::default()
            },
            VIEWER,
        ))
        .await
        .expect_err("viewer");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // CURRENT by the file's bytes and by fingerprint, on either replica; UNKNOWN for a stranger's.
    use check_kubeconfig_request::Subject;
    assert_eq!(
        check(&one, ADMIN, Subject::Kubeconfig(yaml.clone()))
            .await
            .0,
        CredentialStatus::Current
    );
    assert_eq!(
        check(&two, ADMIN, Subject::Fingerprint(first.fingerprint.clone()))
            .await
            .0,
        CredentialStatus::Current
    );
    assert_eq!(
        check(&two, ADMIN, Subject::Fingerprint("ab".repeat(32)))
            .await
            .0,
        CredentialStatus::Unknown
    );
    // EXPIRED for a certificate past its NotAfter (whoever issued it).
    let dir = fixture.inventory();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    let old_key = rcgen::KeyPair::generate().unwrap();
    let old = base64::engine::general_purpose::STANDARD
        .encode(params.self_signed(&old_key).unwrap().pem());
    let expired_file = yaml
        .lines()
        .map(
            |l| match l.trim().strip_prefix("client-certificate-data: ") {
                Some(_) => format!("    client-certificate-data: {old}"),
                None => l.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        check(&one, ADMIN, Subject::Kubeconfig(expired_file))
            .await
            .0,
        CredentialStatus::Expired
    );

    // Revoked on replica two: REVOKED on replica one, and the next download mints afresh.
    let revoked = client_two
        .revoke_credential(with_key(
            RevokeCredentialRequest {
                serial: first.serial.clone(),
                reason: "laptop lost".to_owned(),
            },
            ADMIN,
        ))
        .await
        .expect("revoke")
        .into_inner()
        .credential
        .unwrap();
    assert!(revoked.revoked);
    assert_eq!(revoked.revoked_by, "cluster-admin@matrix.test");
    let (status, reason) = check(&one, ADMIN, Subject::Kubeconfig(yaml.clone())).await;
    assert_eq!(status, CredentialStatus::Revoked);
    assert!(reason.contains("laptop lost"), "{reason}");
    let fresh = client_one
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("fresh")
        .into_inner()
        .credential
        .unwrap();
    assert_ne!(fresh.serial, first.serial);
    assert!(!fresh.reused);
    // A viewer can neither revoke nor learn that the serial exists.
    let hidden = client_one
        .revoke_credential(with_key(
            RevokeCredentialRequest {
                serial: fresh.serial.clone(),
                reason: String::new(),
            },
            VIEWER,
        ))
        .await
        .expect_err("viewer");
    assert_eq!(hidden.code(), tonic::Code::NotFound);

    // The cluster CA rotated in the inventory: the fresh credential is STALE.
    let fresh_yaml_fingerprint = fresh.fingerprint.clone();
    make_ca(&dir, "rotated", "ec");
    let file = dir.join("minted-a.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "certificateAuthorityFile: a-ca.crt",
        "certificateAuthorityFile: rotated-ca.crt",
    );
    std::fs::write(&file, text).unwrap();
    let stale = eventually(Duration::from_secs(10), || async {
        check(
            &one,
            ADMIN,
            Subject::Fingerprint(fresh_yaml_fingerprint.clone()),
        )
        .await
        .0 == CredentialStatus::Stale
    })
    .await;
    assert!(stale, "a rotated CA makes the credential stale");
}

#[tokio::test]
async fn fresh_mints_are_limited_per_caller_and_reuse_is_not() {
    let fixture = minted_fixture(free_port().unwrap());
    let mut args = fixture.args();
    args.extend(["--max-mints-per-minute".to_owned(), "2".to_owned()]);
    let server = Server::start(&args).await.expect("server");
    let mut client = server.client().await.unwrap();
    let ask = |seconds: i64| {
        with_key(
            GetAdminKubeconfigRequest {
                expiration_seconds: Some(seconds),
                ..admin_request(MINTED_A)
            },
            ADMIN,
        )
    };
    // The limit is per minute: a window that turns over between the calls gets a second attempt.
    let mut limited = None;
    for attempt in 0..2_i64 {
        let base = 600 + attempt * 1000;
        client.get_admin_kubeconfig(ask(base)).await.expect("first");
        client
            .get_admin_kubeconfig(ask(base + 100))
            .await
            .expect("second");
        if let Err(status) = client.get_admin_kubeconfig(ask(base + 200)).await {
            limited = Some(status);
            break;
        }
    }
    let limited = limited.expect("the third mint within a minute is refused");
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    assert!(
        limited.message().contains("per caller per minute"),
        "{}",
        limited.message()
    );
    // Reuse is not a mint: still served.
    let reused = client.get_admin_kubeconfig(ask(600)).await.expect("reused");
    assert!(reused.into_inner().credential.unwrap().reused);
    // Another caller has a budget of their own.
    client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), "matrix-project-admin"))
        .await
        .expect("another caller");
    let counted = metrics(&server).await.unwrap();
    assert_eq!(
        counted["kubeconfigd_credential_mints_rate_limited_total"],
        1.0
    );
    assert_eq!(counted["kubeconfigd_credentials_minted_total"], 3.0);
}

#[tokio::test]
async fn a_watch_holding_a_revoked_credential_is_sent_a_fresh_one() {
    use kubeconfig_proto::kubeconfig::v1::{
        WatchKubeconfigsRequest, WatchedAsset, watch_kubeconfigs_response::Type,
    };
    let fixture = minted_fixture(free_port().unwrap());
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.unwrap();
    let mut stream = client
        .watch_kubeconfigs(with_key(
            WatchKubeconfigsRequest {
                cluster_uids: vec![MINTED_A.to_owned()],
                assets: vec![WatchedAsset::AdminKubeconfig as i32],
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .expect("watch")
        .into_inner();
    async fn next(
        stream: &mut tonic::Streaming<kubeconfig_proto::kubeconfig::v1::WatchKubeconfigsResponse>,
    ) -> kubeconfig_proto::kubeconfig::v1::WatchKubeconfigsResponse {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event in time")
            .expect("stream")
            .expect("event")
    }
    let first = next(&mut stream).await;
    assert_eq!(first.r#type(), Type::Upsert);
    let held = first.kubeconfig.unwrap().yaml;
    assert_eq!(next(&mut stream).await.r#type(), Type::Synced);
    let checked = client
        .check_kubeconfig(with_key(
            CheckKubeconfigRequest {
                subject: Some(check_kubeconfig_request::Subject::Kubeconfig(held.clone())),
            },
            ADMIN,
        ))
        .await
        .unwrap()
        .into_inner();
    let serial = checked
        .credential
        .expect("the admin sees the record")
        .serial;
    client
        .revoke_credential(with_key(
            RevokeCredentialRequest {
                serial,
                reason: "rotated".to_owned(),
            },
            ADMIN,
        ))
        .await
        .expect("revoked");
    let replaced = next(&mut stream).await;
    assert_eq!(replaced.r#type(), Type::Upsert);
    let fresh = replaced.kubeconfig.unwrap().yaml;
    assert_ne!(client_certificate(&fresh), client_certificate(&held));
    assert_eq!(
        check(
            &server,
            ADMIN,
            check_kubeconfig_request::Subject::Kubeconfig(fresh)
        )
        .await
        .0,
        CredentialStatus::Current
    );
}

#[tokio::test]
async fn a_client_ca_that_cannot_sign_is_reported_by_check_and_unavailable_on_download() {
    let fixture = minted_fixture(free_port().unwrap());
    let inventory = fixture.inventory();
    // The API server stand-in's own certificate: its key matches (so the record loads), but it is
    // not a CA.
    std::fs::write(
        inventory.join("minted-leaf.yaml"),
        "uid: 00000000000000000000bb04\nname: minted-leaf\nproject: platform\n\
         apiServer: https://127.0.0.1:6443\ncertificateAuthorityFile: a-ca.crt\n\
         clientCa:\n  certificateFile: server.crt\n  keyFile: server.key\n\
         kubernetesPack:\n  name: kubernetes\n  values: \"\"\n",
    )
    .unwrap();
    let output = Command::new(kubeconfigd_e2e::binary().unwrap())
        .arg("check")
        .arg("--inventory")
        .arg(&inventory)
        .arg("--tenant")
        .arg(fixture.tenant())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(!output.status.success());
    assert!(
        printed.contains("00000000000000000000bb04 (minted-leaf): cannot mint admin credentials: clientCa.certificate: not a CA certificate"),
        "{printed}"
    );
    let server = Server::start(&fixture.args()).await.expect("server");
    let refused = server
        .client()
        .await
        .unwrap()
        .get_admin_kubeconfig(with_key(admin_request("00000000000000000000bb04"), ADMIN))
        .await
        .expect_err("unavailable");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("not a CA certificate"),
        "{}",
        refused.message()
    );
    // The other minting clusters are unaffected.
    server
        .client()
        .await
        .unwrap()
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("cluster A still mints");
}

#[tokio::test]
async fn with_redis_down_nothing_unrecorded_is_minted_and_static_files_are_still_served() {
    let fixture = minted_fixture(free_port().unwrap());
    let mut redis = RedisServer::start().expect("redis-server");
    let mut args = fixture.args();
    args.extend(redis_flags(&redis));
    let server = Server::start(&args).await.expect("server");
    let mut client = server.client().await.unwrap();
    client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("minted while Redis is up");
    redis.kill();
    // A credential that would need a fresh mint cannot be recorded: refused, not served unrecorded.
    let refused = client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                expiration_seconds: Some(1200),
                ..admin_request(MINTED_A)
            },
            ADMIN,
        ))
        .await
        .expect_err("no ledger, no credential");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("ledger"),
        "{}",
        refused.message()
    );
    // A cluster with a static admin credential does not need the ledger.
    client
        .get_admin_kubeconfig(with_key(admin_request("00000000000000000000aa04"), ADMIN))
        .await
        .expect("static admin kubeconfig still served");
    let counted = metrics(&server).await.unwrap();
    assert!(counted["kubeconfigd_credential_ledger_failures_total"] >= 1.0);
    assert!(!server.log_text().contains("PRIVATE KEY"));
}

/// The caller's `reason` is one quoted, escaped value in the audit lines it appears in: spaces,
/// quotes and line or paragraph separators cannot forge other fields of the caller's own line.
#[tokio::test]
async fn a_reason_cannot_forge_fields_of_its_audit_lines() {
    let fixture = minted_fixture(free_port().unwrap());
    let server = Server::start(&fixture.args()).await.expect("server");
    let forged = "x user=\"kate@t.test\" serial=0000 request_id=forged\u{2028}fingerprint=f\u{2029}allowed=false";
    server
        .client()
        .await
        .unwrap()
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                reason: forged.to_owned(),
                ..admin_request(MINTED_A)
            },
            ADMIN,
        ))
        .await
        .expect("minted");
    let expected = r#"reason="x user=\"kate@t.test\" serial=0000 request_id=forged\u{2028}fingerprint=f\u{2029}allowed=false""#;
    for message in ["asset served", "credential issued"] {
        assert!(
            eventually(Duration::from_secs(5), || async {
                server
                    .log_text()
                    .lines()
                    .any(|l| l.contains(" INFO audit: ") && l.contains(message))
            })
            .await,
            "no {message} line:\n{}",
            server.log_text()
        );
        let log = server.log_text();
        let line = log
            .lines()
            .find(|l| l.contains(" INFO audit: ") && l.contains(message))
            .unwrap();
        assert!(line.contains(expected), "{message}: {line}");
        // Outside the one quoted reason, each field appears once.
        let others = line.replace(expected, "");
        for field in ["user=", "serial=", "request_id=", "fingerprint="] {
            assert_eq!(
                others.matches(&format!(" {field}")).count(),
                1,
                "{message} has one {field}: {line}"
            );
        }
        assert!(
            !line.contains('\u{2028}') && !line.contains('\u{2029}'),
            "{line}"
        );
    }
}

/// A REST long-poll of a minted admin kubeconfig (`If-None-Match` + `?wait=`) with
/// `?expirationSeconds` waits on the file the caller holds — the credential issued for that lifetime —
/// and mints nothing while it waits.
#[tokio::test]
async fn a_minted_long_poll_waits_with_the_callers_lifetime_and_mints_nothing() {
    let fixture = minted_fixture(free_port().unwrap());
    let server = Server::start(&fixture.args()).await.expect("server");
    let url = format!(
        "{}/v1/spectroclusters/{MINTED_A}/assets/adminkubeconfig?expirationSeconds=1200",
        server.rest_url()
    );
    let http = reqwest::Client::new();
    let first = http.get(&url).header("apikey", ADMIN).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let polled = http
        .get(format!("{url}&wait=2s"))
        .header("apikey", ADMIN)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(polled.status(), 304, "the file held is still current");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the long-poll waited: {:?}",
        started.elapsed()
    );
    let counted = metrics(&server).await.unwrap();
    assert_eq!(
        counted["kubeconfigd_credentials_minted_total"], 1.0,
        "only the credential the caller received was minted"
    );
}

/// `CheckKubeconfig` names who revoked a credential and why only to its holder and the cluster's
/// admins; a caller who can merely see the cluster gets the status with a stable code.
#[tokio::test]
async fn who_revoked_and_why_is_shown_only_to_the_holder_and_the_clusters_admins() {
    use check_kubeconfig_request::Subject;
    let fixture = minted_fixture(free_port().unwrap());
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.unwrap();
    let credential = client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("minted")
        .into_inner()
        .credential
        .unwrap();
    client
        .revoke_credential(with_key(
            RevokeCredentialRequest {
                serial: credential.serial.clone(),
                reason: "laptop stolen from the car of kate".to_owned(),
            },
            "matrix-project-admin",
        ))
        .await
        .expect("revoked");
    let subject = || Subject::Fingerprint(credential.fingerprint.clone());
    for key in [ADMIN, "matrix-project-admin"] {
        let (status, reason) = check(&server, key, subject()).await;
        assert_eq!(status, CredentialStatus::Revoked);
        assert!(
            reason.contains("project-admin@matrix.test") && reason.contains("laptop stolen"),
            "{key}: {reason}"
        );
    }
    let (status, reason) = check(&server, VIEWER, subject()).await;
    assert_eq!(status, CredentialStatus::Revoked);
    assert!(reason.contains("CREDENTIAL_REVOKED"), "{reason}");
    assert!(
        !reason.contains("project-admin") && !reason.contains("laptop"),
        "a viewer sees neither who nor why: {reason}"
    );
}

/// A certificate whose holder may no longer download the cluster's admin kubeconfig checks `STALE`,
/// with the reason.
#[tokio::test]
async fn a_credential_whose_holder_lost_admin_access_checks_stale() {
    use check_kubeconfig_request::Subject;
    let fixture = minted_fixture(free_port().unwrap());
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.unwrap();
    let credential = client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await
        .expect("minted")
        .into_inner()
        .credential
        .unwrap();
    let subject = || Subject::Fingerprint(credential.fingerprint.clone());
    assert_eq!(
        check(&server, ADMIN, subject()).await.0,
        CredentialStatus::Current
    );
    // The holder becomes a viewer of the project.
    let tenant = fixture.tenant();
    let text = std::fs::read_to_string(&tenant).unwrap();
    let demoted = text.replacen(
        "  - user: cluster-admin@matrix.test\n    role: Cluster Admin\n",
        "  - user: cluster-admin@matrix.test\n    role: Cluster Viewer\n",
        1,
    );
    assert_ne!(demoted, text);
    std::fs::write(&tenant, demoted).unwrap();
    let stale = eventually(Duration::from_secs(10), || async {
        check(&server, "matrix-project-admin", subject()).await.0 == CredentialStatus::Stale
    })
    .await;
    assert!(stale, "the holder's lost access makes the credential stale");
    let (_, reason) = check(&server, "matrix-project-admin", subject()).await;
    assert!(reason.contains("may no longer"), "{reason}");
    let (status, reason) = check(&server, ADMIN, subject()).await;
    assert_eq!(status, CredentialStatus::Stale, "the holder is told too");
    assert!(reason.contains("may no longer"), "{reason}");
}

/// A bare public key proves nothing about who holds its private key: a tenant must allow it
/// (`credentials.allowBarePublicKeys`); otherwise only a CSR, whose signature proves possession, is
/// certified.
#[tokio::test]
async fn a_bare_public_key_needs_the_tenants_consent() {
    let fixture = minted_fixture(free_port().unwrap());
    let dir = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.unwrap();
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "bare.sec1",
        ],
    );
    openssl(
        &dir,
        &["pkey", "-in", "bare.sec1", "-pubout", "-out", "bare.pub"],
    );
    let public_key = std::fs::read_to_string(dir.join("bare.pub")).unwrap();
    let ask = |client_key: String| {
        with_key(
            GetAdminKubeconfigRequest {
                client_key: Some(get_admin_kubeconfig_request::ClientKey::PublicKey(
                    client_key,
                )),
                ..admin_request(MINTED_A)
            },
            ADMIN,
        )
    };
    let refused = client
        .get_admin_kubeconfig(ask(public_key.clone()))
        .await
        .expect_err("a bare key is refused by default");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("csr") && refused.message().contains("allowBarePublicKeys"),
        "{}",
        refused.message()
    );
    let tenant = fixture.tenant();
    let text = std::fs::read_to_string(&tenant).unwrap();
    std::fs::write(
        &tenant,
        format!("{text}\ncredentials:\n  allowBarePublicKeys: true\n"),
    )
    .unwrap();
    let accepted = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        let request = ask(public_key.clone());
        async move { client.get_admin_kubeconfig(request).await.is_ok() }
    })
    .await;
    assert!(accepted, "a tenant that allows bare keys certifies them");
}

/// Awaits every future (the suite has no `futures` crate).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// Found by the soak (bench/soak.sh): a cache lookup that was merely late (past `--redis-timeout`)
/// marked Redis down, and every mint was refused for a second although Redis would have confirmed the
/// ledger record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_cache_lookups_do_not_refuse_a_mint() {
    let fixture = minted_fixture(free_port().unwrap());
    let redis =
        RedisServer::start_with_options(&["--enable-debug-command", "yes"]).expect("redis-server");
    let mut args = fixture.args();
    args.extend(redis_flags(&redis));
    args.extend(["--cache-memory".to_owned(), "0".to_owned()]);
    let server = Server::start(&args).await.expect("server");
    let mut client = server.client().await.unwrap();
    // Redis answers every call late (each DEBUG SLEEP holds it 200 ms), never not at all.
    let port = redis.port.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sleeper = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new("redis-cli")
                    .args(["-p", &port, "debug", "sleep", "0.2"])
                    .stdout(Stdio::null())
                    .status();
            }
        })
    };
    // Lookups past their 50 ms deadline mark Redis down for the cache (files are rendered instead).
    let mut marked_down = false;
    for _ in 0..40 {
        // Several at once: their failures come in a row, before any late write confirms.
        let lookups = (0..8).map(|_| {
            let mut client = client.clone();
            async move {
                client
                    .get_kubeconfig(with_key(
                        GetKubeconfigRequest {
                            // A cluster of the matrix fixture with a static credential: cached.
                            uid: "00000000000000000000aa04".to_owned(),
                            frp: None,
                        },
                        ADMIN,
                    ))
                    .await
            }
        });
        let _ = futures_join_all(lookups).await;
        if metrics(&server).await.unwrap()["kubeconfigd_cache_redis_up"] == 0.0 {
            marked_down = true;
            break;
        }
    }
    let minted = client
        .get_admin_kubeconfig(with_key(admin_request(MINTED_A), ADMIN))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sleeper.join().unwrap();
    assert!(
        marked_down,
        "the lookups were late enough to mark Redis down"
    );
    let minted = minted.expect("a mint waits for the ledger record instead of being refused");
    assert!(minted.into_inner().credential.is_some());
}
