//! Client certificates and certificate rotation, end to end: certificates made with the real `openssl`
//! CLI in a temporary directory, presented by `curl`, `grpcurl` and the tonic client, to the real
//! server. What a verified certificate names authenticates its caller on gRPC and REST; a certificate
//! from another CA, an expired one, or none where one is required never does; the client CA bundle,
//! its CRLs and the server certificate are replaced on disk without a restart; and a certificate
//! revoked, or whose CA leaves the bundle, stops authenticating on connections already open (a watch
//! stream open with it ends).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient;
use kubeconfig_proto::kubeconfig::v1::{ListClustersRequest, WatchKubeconfigsRequest};
use kubeconfigd_e2e::{Fixture, Server, eventually};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The SPIFFE ID of the workload certificate.
const SPIFFE_ID: &str = "spiffe://acme.test/ns/payments/sa/deployer";
/// A fixture user (CN) with access to the four clusters, and a team (O).
const VIEWER: &str = "cluster-viewer@matrix.test";
const VIEWER_KEY: &str = "matrix-cluster-viewer";
const ADMIN_KEY: &str = "matrix-cluster-admin";
/// A cluster the viewer may download a kubeconfig of.
const UID: &str = "00000000000000000000aa01";
const CLIENT_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

/// A directory of certificates made with `openssl`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA `ca`, a server certificate `server` for 127.0.0.1 and localhost, and client
    /// certificates: `spiffe` (a SPIFFE ID), `viewer` (CN = a fixture user, O = a team), `teamed`
    /// (CN = a user the tenant does not list, O = a team bound in it), `nameless` (no CN, no
    /// SPIFFE ID), `foreign` (from another CA) and `expired`.
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.server("server", "ca", "0x5e01");
        pki.client(
            "spiffe",
            "ca",
            "/O=ignored",
            &format!("subjectAltName=URI:{SPIFFE_ID}\n"),
        );
        pki.client(
            "viewer",
            "ca",
            &format!("/CN={VIEWER}/O=payments/O=ops"),
            "",
        );
        pki.client("teamed", "ca", "/CN=stranger@matrix.test/O=cert-team", "");
        pki.client("nameless", "ca", "/O=cert-team", "");
        pki.client("foreign", "other-ca", &format!("/CN={VIEWER}"), "");
        pki.expired("expired", "ca", &format!("/CN={VIEWER}"));
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn text(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read")
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("the openssl CLI is required for these tests");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `openssl` with the arguments of `line`, split at spaces (none of ours contains one).
    fn run(&self, line: &str) {
        self.openssl(&line.split(' ').collect::<Vec<_>>());
    }

    fn ca(&self, name: &str) {
        self.run(&format!(
            "req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
             -out {name}.crt -days 30 -subj /CN={name} -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
    }

    /// A key and a signing request.
    fn request(&self, name: &str, subject: &str) {
        self.run(&format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
             -out {name}.csr -subj {subject}"
        ));
    }

    fn sign(&self, name: &str, ca: &str, serial: &str, extensions: &str) {
        std::fs::write(self.path(&format!("{name}.ext")), extensions).expect("write");
        self.run(&format!(
            "x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -set_serial {serial} -days 2 \
             -extfile {name}.ext -out {name}.crt"
        ));
    }

    fn server(&self, name: &str, ca: &str, serial: &str) {
        self.request(name, "/CN=localhost");
        self.sign(
            name,
            ca,
            serial,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        );
    }

    fn client(&self, name: &str, ca: &str, subject: &str, extra: &str) {
        self.request(name, subject);
        self.sign(name, ca, "0x77", &format!("{CLIENT_EXT}{extra}"));
    }

    /// A client certificate valid for one day in 2020 (`openssl ca` sets past dates).
    fn expired(&self, name: &str, ca: &str, subject: &str) {
        self.request(name, subject);
        self.ca_sign(
            name,
            ca,
            "-startdate 20200101000000Z -enddate 20200102000000Z",
        );
    }

    /// Signs `name`'s request as a client certificate with `openssl ca` (which keeps the index a
    /// CRL is made from), with `validity` its options of dates.
    fn ca_sign(&self, name: &str, ca: &str, validity: &str) {
        if !self.path("ca.cnf").exists() {
            std::fs::write(
                self.path("ca.cnf"),
                "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n\
                 crlnumber=crlnumber\ndefault_crl_days=2\nunique_subject=no\ndefault_md=sha256\n\
                 policy=p\n[p]\ncommonName=supplied\n",
            )
            .expect("write");
            std::fs::write(self.path("index.txt"), "").expect("write");
            std::fs::write(self.path("serial"), "01\n").expect("write");
            std::fs::write(self.path("crlnumber"), "01\n").expect("write");
        }
        std::fs::write(self.path(&format!("{name}.ext")), CLIENT_EXT).expect("write");
        self.run(&format!(
            "ca -batch -notext -config ca.cnf -cert {ca}.crt -keyfile {ca}.key -in {name}.csr \
             -out {name}.crt -extfile {name}.ext {validity}"
        ));
    }

    /// `ca`'s CRL (PEM) at `out`, listing what `openssl ca` revoked so far.
    fn crl(&self, ca: &str, out: &str) {
        self.run(&format!(
            "ca -config ca.cnf -gencrl -cert {ca}.crt -keyfile {ca}.key -out {out}"
        ));
    }

    fn revoke(&self, name: &str, ca: &str) {
        self.run(&format!(
            "ca -config ca.cnf -cert {ca}.crt -keyfile {ca}.key -revoke {name}.crt"
        ));
    }
}

/// Copies `from` to `to` by writing a sibling and renaming it over (as an editor does).
fn replace(from: &Path, to: &Path) {
    let next = to.with_extension("next");
    std::fs::copy(from, &next).expect("copy");
    std::fs::rename(&next, to).expect("rename");
}

/// The matrix fixture with a team binding for `cert-team` (the O of `teamed`) and a user named by
/// `SPIFFE_ID` (`username:`) bound as a project viewer.
fn fixture() -> Fixture {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let mut tenant = std::fs::read_to_string(fixture.tenant())
        .expect("tenant")
        .replacen(
            "users:\n",
            &format!("users:\n  - username: {SPIFFE_ID}\n"),
            1,
        );
    tenant.push_str(&format!(
        "  - team: cert-team\n    role: Cluster Viewer\n    project: platform\n\
         \x20 - user: {SPIFFE_ID}\n    role: Cluster Viewer\n    project: platform\n\
         teams:\n  - name: cert-team\n    members: []\n"
    ));
    std::fs::write(fixture.tenant(), tenant).expect("write");
    fixture
}

/// The flags of a server on `fixture` with the certificate of `tls_dir` and the client CA bundle.
fn server_args(fixture: &Fixture, pki: &Pki, tls_dir: &Path) -> Vec<String> {
    let mut args = fixture.args();
    for (flag, path) in [
        ("--tls-cert-file", tls_dir.join("tls.crt")),
        ("--tls-key-file", tls_dir.join("tls.key")),
        ("--client-ca-file", pki.path("bundle.crt")),
    ] {
        args.push(flag.to_owned());
        args.push(path.display().to_string());
    }
    args
}

async fn start(fixture: &Fixture, pki: &Pki, tls_dir: &Path, extra: &[&str]) -> Server {
    let mut args = server_args(fixture, pki, tls_dir);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Server::start(&args).await.expect("server")
}

/// A Kubernetes Secret volume holding the server certificate: `tls.crt` and `tls.key` are symlinks
/// through `..data`, itself a symlink to a timestamped directory that an update swaps.
struct SecretVolume {
    dir: PathBuf,
    version: u32,
}

impl SecretVolume {
    fn new(pki: &Pki, leaf: &str) -> SecretVolume {
        let dir = pki.path("secret");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("link");
        }
        let mut volume = SecretVolume { dir, version: 0 };
        volume.update(pki, leaf, leaf);
        volume
    }

    /// Publishes `cert`'s certificate and `key`'s key as the kubelet does: a new directory, then
    /// `..data` swapped to it in one rename.
    fn update(&mut self, pki: &Pki, cert: &str, key: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let target = self.dir.join(&version);
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::copy(pki.path(&format!("{cert}.crt")), target.join("tls.crt")).expect("copy");
        std::fs::copy(pki.path(&format!("{key}.key")), target.join("tls.key")).expect("copy");
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &link).expect("link");
        std::fs::rename(&link, self.dir.join("..data")).expect("swap");
    }
}

/// What a gRPC `ListClusters` call over TLS came to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered, with this many clusters.
    Listed(usize),
    Unauthenticated,
    /// Refused before any answer: the handshake or the connection failed (the error's text).
    Failed(String),
}

/// `ListClusters` with the tonic client, presenting `client`'s certificate and `key`, if given.
async fn grpc_list(server: &Server, pki: &Pki, client: Option<&str>, key: Option<&str>) -> Outcome {
    match grpc_channel(server, pki, client).await {
        Ok(channel) => list_on(channel, key).await,
        Err(error) => Outcome::Failed(error),
    }
}

/// A TLS channel to the gRPC listener, presenting `client`'s certificate if given.
async fn grpc_channel(server: &Server, pki: &Pki, client: Option<&str>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.text("ca.crt")))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            pki.text(&format!("{client}.crt")),
            pki.text(&format!("{client}.key")),
        ));
    }
    let channel = Channel::from_shared(format!("https://{}", server.grpc))
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    channel.map_err(|error| format!("{error:?}"))
}

/// `ListClusters` on `channel`, with `key` if given.
async fn list_on(channel: Channel, key: Option<&str>) -> Outcome {
    let mut request = tonic::Request::new(ListClustersRequest::default());
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("apikey", key.parse().expect("ascii"));
    }
    match KubeconfigServiceClient::new(channel)
        .list_clusters(request)
        .await
    {
        Ok(response) => Outcome::Listed(response.into_inner().clusters.len()),
        Err(status) if status.code() == tonic::Code::Unauthenticated => Outcome::Unauthenticated,
        Err(status) => Outcome::Failed(format!("{status:?}")),
    }
}

/// `curl` of the viewer's kubeconfig on REST: the HTTP status, or `Err` with curl's exit code when
/// no answer came (a refused handshake).
fn curl(server: &Server, pki: &Pki, client: Option<&str>, key: Option<&str>) -> Result<u16, i32> {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(pki.path("ca.crt"));
    if let Some(client) = client {
        command
            .arg("--cert")
            .arg(pki.path(&format!("{client}.crt")))
            .arg("--key")
            .arg(pki.path(&format!("{client}.key")));
    }
    if let Some(key) = key {
        command.args(["-H", &format!("apikey: {key}")]);
    }
    let output = command
        .arg(format!(
            "https://localhost:{}/v1/spectroclusters/{UID}/assets/kubeconfig",
            server.rest.port()
        ))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.rest.port()),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("curl is required for these tests");
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("status")),
        code => Err(code.unwrap_or(-1)),
    }
}

/// `grpcurl` `ListClusters` with `client`'s certificate: (success, what it printed).
fn grpcurl(server: &Server, pki: &Pki, client: &str) -> (bool, String) {
    grpcurl_call(server, pki, client, "ListClusters")
}

/// `grpcurl` calling `method` of the service with `client`'s certificate: (success, what it printed).
fn grpcurl_call(server: &Server, pki: &Pki, client: &str, method: &str) -> (bool, String) {
    let output = Command::new(kubeconfigd_e2e::grpcurl_binary())
        .arg("-cacert")
        .arg(pki.path("ca.crt"))
        .arg("-cert")
        .arg(pki.path(&format!("{client}.crt")))
        .arg("-key")
        .arg(pki.path(&format!("{client}.key")))
        .args(["-authority", "localhost", "-max-time", "10", "-d", "{}"])
        .arg(server.grpc.to_string())
        .arg(format!("kubeconfig.v1.KubeconfigService/{method}"))
        .stdin(Stdio::null())
        .output()
        .expect("grpcurl is required for these tests (scripts/test.sh installs it)");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The serial number (uppercase hex, as openssl prints it) of the certificate `port` serves.
fn served_serial(port: u16) -> String {
    let handshake = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl x509");
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(&handshake.stdout)
        .expect("write");
    let output = x509.wait_with_output().expect("x509");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

fn bundle(pki: &Pki, cas: &[&str]) {
    let text: String = cas
        .iter()
        .map(|ca| pki.text(&format!("{ca}.crt")))
        .collect();
    let staged = pki.path("bundle.staged");
    std::fs::write(&staged, text).expect("write");
    replace(&staged, &pki.path("bundle.crt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_identities_authenticate_on_grpc_and_rest() {
    let pki = Pki::new();
    bundle(&pki, &["ca"]);
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let server = start(&fixture, &pki, &volume.dir, &[]).await;

    // CN = a fixture user: that user, on every client.
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );
    assert_eq!(curl(&server, &pki, Some("viewer"), None), Ok(200));
    let (ok, printed) = grpcurl(&server, &pki, "viewer");
    assert!(
        ok && printed.contains(UID),
        "grpcurl with the viewer's certificate: {printed}"
    );
    // ... with its own API key too; with another user's key, never.
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), Some(VIEWER_KEY)).await,
        Outcome::Listed(4)
    );
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), Some(ADMIN_KEY)).await,
        Outcome::Unauthenticated
    );
    assert_eq!(
        curl(&server, &pki, Some("viewer"), Some(ADMIN_KEY)),
        Ok(401)
    );

    // O = a team the tenant binds: a user the tenant does not list gets the team's access.
    assert_eq!(
        grpc_list(&server, &pki, Some("teamed"), None).await,
        Outcome::Listed(4)
    );
    assert_eq!(curl(&server, &pki, Some("teamed"), None), Ok(200));

    // No CN and no SPIFFE ID: the certificate names no one, and no API key excuses it.
    assert_eq!(
        grpc_list(&server, &pki, Some("nameless"), None).await,
        Outcome::Unauthenticated
    );
    assert_eq!(
        grpc_list(&server, &pki, Some("nameless"), Some(VIEWER_KEY)).await,
        Outcome::Unauthenticated
    );
    assert_eq!(
        curl(&server, &pki, Some("nameless"), Some(VIEWER_KEY)),
        Ok(401)
    );

    // Client certificates are optional without --require-client-cert: an API key alone works.
    assert_eq!(
        grpc_list(&server, &pki, None, Some(VIEWER_KEY)).await,
        Outcome::Listed(4)
    );
    assert_eq!(curl(&server, &pki, None, Some(VIEWER_KEY)), Ok(200));
    assert_eq!(curl(&server, &pki, None, None), Ok(401));
    assert_eq!(
        grpc_list(&server, &pki, None, None).await,
        Outcome::Unauthenticated
    );
}

/// The SPIFFE principal is the tenant user named by `username: <SPIFFE ID>`: it sees what that
/// user's binding allows, `WhoAmI` names it and its certificate, and an API key of another user next
/// to it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_principal_gets_what_its_username_binding_allows() {
    let pki = Pki::new();
    bundle(&pki, &["ca"]);
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let server = start(&fixture, &pki, &volume.dir, &[]).await;
    assert_eq!(
        grpc_list(&server, &pki, Some("spiffe"), None).await,
        Outcome::Listed(4)
    );
    let (ok, printed) = grpcurl(&server, &pki, "spiffe");
    assert!(ok, "grpcurl with the SPIFFE certificate: {printed}");
    assert_eq!(curl(&server, &pki, Some("spiffe"), None), Ok(200));
    let (ok, printed) = grpcurl_call(&server, &pki, "spiffe", "WhoAmI");
    assert!(ok, "WhoAmI: {printed}");
    let whoami: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(whoami["user"], SPIFFE_ID, "{printed}");
    let credential = &whoami["credentials"][0];
    assert_eq!(credential["kind"], "CREDENTIAL_KIND_CLIENT_CERTIFICATE");
    assert!(
        credential["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{printed}"
    );
    assert!(credential["expiresAt"].is_string(), "{printed}");
    assert_eq!(whoami["visibleClusters"], 4, "{printed}");
    // Its SPIFFE ID is not the viewer: the viewer's key next to it is refused.
    assert_eq!(
        grpc_list(&server, &pki, Some("spiffe"), Some(VIEWER_KEY)).await,
        Outcome::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_expired_certificates_never_authenticate() {
    let pki = Pki::new();
    bundle(&pki, &["ca"]);
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let server = start(&fixture, &pki, &volume.dir, &[]).await;
    for client in ["foreign", "expired"] {
        // Client authentication is optional, but a certificate presented must verify: rustls fails
        // the handshake, so not even a good API key gets an answer.
        for key in [None, Some(VIEWER_KEY)] {
            let outcome = grpc_list(&server, &pki, Some(client), key).await;
            assert!(
                matches!(outcome, Outcome::Failed(_)),
                "{client} with {key:?}: {outcome:?}"
            );
            let curled = curl(&server, &pki, Some(client), key);
            assert!(curled.is_err(), "{client} with {key:?}: {curled:?}");
        }
        // grpcurl (Go) does not even send a certificate whose issuer is not among the CAs the
        // server names: the foreign one then leaves the call without credentials (401).
        let (ok, printed) = grpcurl(&server, &pki, client);
        assert!(!ok, "grpcurl with {client}: {printed}");
    }
    // The server still serves.
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_refuses_connections_without_one() {
    let pki = Pki::new();
    bundle(&pki, &["ca"]);
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let server = start(&fixture, &pki, &volume.dir, &["--require-client-cert"]).await;
    let outcome = grpc_list(&server, &pki, None, Some(VIEWER_KEY)).await;
    assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    let curled = curl(&server, &pki, None, Some(VIEWER_KEY));
    assert!(curled.is_err(), "{curled:?}");
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );
    assert_eq!(curl(&server, &pki, Some("viewer"), None), Ok(200));
    // The admin listener asks for nothing.
    let ready = reqwest::get(format!("{}/readyz", server.admin_url()))
        .await
        .expect("admin");
    assert_eq!(ready.status().as_u16(), 200);
}

/// An HTTP/1.1 connection held open with `openssl s_client`: requests are written to it and the
/// answers collected.
struct HeldConnection {
    child: std::process::Child,
    output: Arc<Mutex<String>>,
}

impl HeldConnection {
    fn open(port: u16) -> HeldConnection {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-nocommands", "-alpn", "http/1.1"])
            .args([
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client");
        let mut stdout = child.stdout.take().expect("stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let collected = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0_u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                if let Ok(mut output) = collected.lock() {
                    output.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        HeldConnection { child, output }
    }

    /// Sends one request for the viewer's kubeconfig and waits (bounded) for its answer: whether a
    /// 200 came.
    async fn fetch(&mut self) -> bool {
        let answered = self.answers();
        let request = format!(
            "GET /v1/spectroclusters/{UID}/assets/kubeconfig HTTP/1.1\r\nHost: localhost\r\n\
             apikey: {VIEWER_KEY}\r\n\r\n"
        );
        let stdin = self.child.stdin.as_mut().expect("stdin");
        if stdin
            .write_all(request.as_bytes())
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return false;
        }
        eventually(Duration::from_secs(5), || async {
            self.answers() > answered
        })
        .await
    }

    fn answers(&self) -> usize {
        self.output
            .lock()
            .map(|output| output.matches("HTTP/1.1 200").count())
            .unwrap_or(0)
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let pki = Pki::new();
    pki.ca("next-ca");
    pki.client("next", "next-ca", &format!("/CN={VIEWER}"), "");
    pki.server("server2", "ca", "0x5e02");
    bundle(&pki, &["ca"]);
    let mut volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let server = start(&fixture, &pki, &volume.dir, &[]).await;

    // The client CA bundle: a certificate of a CA added to it works without a restart.
    assert!(matches!(
        grpc_list(&server, &pki, Some("next"), None).await,
        Outcome::Failed(_)
    ));
    bundle(&pki, &["ca", "next-ca"]);
    let trusted = eventually(Duration::from_secs(5), || async {
        grpc_list(&server, &pki, Some("next"), None).await == Outcome::Listed(4)
    })
    .await;
    assert!(trusted, "the new CA is trusted:\n{}", server.log_text());
    assert_eq!(curl(&server, &pki, Some("next"), None), Ok(200));
    // A broken bundle keeps the last good one.
    std::fs::write(pki.path("broken.crt"), "not a certificate").expect("write");
    replace(&pki.path("broken.crt"), &pki.path("bundle.crt"));
    assert!(
        server
            .logged(|line| line.contains("client CA bundle") && line.contains("reload failed"))
            .await,
        "{}",
        server.log_text()
    );
    assert_eq!(
        grpc_list(&server, &pki, Some("next"), None).await,
        Outcome::Listed(4)
    );
    // The CA removed from the bundle: a connection open with one of its certificates is refused at
    // its next call; the other CA's certificates still work.
    let held = grpc_channel(&server, &pki, Some("next"))
        .await
        .expect("connects");
    assert_eq!(list_on(held.clone(), None).await, Outcome::Listed(4));
    bundle(&pki, &["ca"]);
    let cut = eventually(Duration::from_secs(5), || async {
        list_on(held.clone(), None).await == Outcome::Unauthenticated
    })
    .await;
    assert!(
        cut,
        "the removed CA's connection is refused:\n{}",
        server.log_text()
    );
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );

    // The server certificate: a Secret volume's `..data` swap is served to the next connection,
    // and a connection made before it keeps working.
    assert_eq!(served_serial(server.rest.port()), "5E01");
    let mut held = HeldConnection::open(server.rest.port());
    assert!(held.fetch().await, "the held connection answers");
    volume.update(&pki, "server2", "server2");
    let rotated = eventually(Duration::from_secs(5), || async {
        served_serial(server.grpc.port()) == "5E02"
    })
    .await;
    assert!(
        rotated,
        "the new certificate is served:\n{}",
        server.log_text()
    );
    assert_eq!(served_serial(server.rest.port()), "5E02");
    assert!(
        held.fetch().await,
        "the connection made before the swap still works"
    );
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );

    // A certificate that does not fit its key keeps the pair in service.
    volume.update(&pki, "server", "server2");
    assert!(
        server
            .logged(
                |line| line.contains("TLS certificate and key") && line.contains("reload failed")
            )
            .await,
        "{}",
        server.log_text()
    );
    assert_eq!(served_serial(server.rest.port()), "5E02");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_once_the_crl_lists_it() {
    let pki = Pki::new();
    pki.request("doomed", &format!("/CN={VIEWER}"));
    pki.ca_sign("doomed", "ca", "-days 2");
    pki.crl("ca", "ca.crl");
    bundle(&pki, &["ca"]);
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let crl = pki.path("ca.crl").display().to_string();
    let server = start(&fixture, &pki, &volume.dir, &["--client-crl-file", &crl]).await;
    assert_eq!(
        grpc_list(&server, &pki, Some("doomed"), None).await,
        Outcome::Listed(4)
    );
    // A connection and a watch stream opened before the revocation.
    let held = grpc_channel(&server, &pki, Some("doomed"))
        .await
        .expect("connects");
    assert_eq!(list_on(held.clone(), None).await, Outcome::Listed(4));
    let mut watch = KubeconfigServiceClient::new(held.clone())
        .watch_kubeconfigs(WatchKubeconfigsRequest {
            cluster_uids: vec![UID.to_owned()],
            ..Default::default()
        })
        .await
        .expect("watch opens")
        .into_inner();
    assert!(
        matches!(watch.message().await, Ok(Some(_))),
        "the watch sends its first event"
    );
    // Revoked, and the CRL replaced on disk: new connections refuse it.
    pki.revoke("doomed", "ca");
    pki.crl("ca", "next.crl");
    replace(&pki.path("next.crl"), &pki.path("ca.crl"));
    let refused = eventually(Duration::from_secs(5), || async {
        matches!(
            grpc_list(&server, &pki, Some("doomed"), None).await,
            Outcome::Failed(_)
        )
    })
    .await;
    assert!(
        refused,
        "the revoked certificate is refused:\n{}",
        server.log_text()
    );
    assert!(curl(&server, &pki, Some("doomed"), Some(VIEWER_KEY)).is_err());
    // The connection made before it is refused at its next call, and the stream has ended.
    assert_eq!(list_on(held, None).await, Outcome::Unauthenticated);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await;
    assert_eq!(
        ended,
        Ok(Some(tonic::Code::Unauthenticated)),
        "{}",
        server.log_text()
    );
    // Certificates the CRL does not list still work.
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_stops_authenticating_when_its_certificate_expires() {
    let pki = Pki::new();
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 8;
    let end = Command::new("date")
        .args(["-u", "-d", &format!("@{expiry}"), "+%Y%m%d%H%M%SZ"])
        .output()
        .expect("date");
    let end = String::from_utf8_lossy(&end.stdout).trim().to_owned();
    pki.request("brief", &format!("/CN={VIEWER}"));
    pki.ca_sign(
        "brief",
        "ca",
        &format!("-startdate 20200101000000Z -enddate {end}"),
    );
    bundle(&pki, &["ca"]);
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();
    let server = start(&fixture, &pki, &volume.dir, &[]).await;
    let channel = grpc_channel(&server, &pki, Some("brief"))
        .await
        .expect("connects while valid");
    assert_eq!(list_on(channel.clone(), None).await, Outcome::Listed(4));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    tokio::time::sleep(Duration::from_secs(expiry.saturating_sub(now) + 2)).await;
    // The same connection (a new one would fail its handshake, not answer 401).
    assert_eq!(list_on(channel, None).await, Outcome::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_bundle_too_big_for_a_certificate_request_is_refused_not_served() {
    let pki = Pki::new();
    // Seventy CAs with names of about a kilobyte (over 60,000 bytes together), and a bundle
    // repeating the good CA 4,000 times (deduplicated, it names one CA).
    let mut huge = String::new();
    for n in 0..70 {
        let subject: String = (0..15)
            .map(|i| format!("/OU={}{n:02}{i:02}", "x".repeat(56)))
            .collect();
        pki.openssl(&[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "huge.key",
            "-out",
            "huge-one.crt",
            "-days",
            "2",
            "-subj",
            &subject,
        ]);
        huge.push_str(&pki.text("huge-one.crt"));
    }
    std::fs::write(pki.path("huge.crt"), huge).expect("write");
    std::fs::write(pki.path("repeated.crt"), pki.text("ca.crt").repeat(4000)).expect("write");
    let volume = SecretVolume::new(&pki, "server");
    let fixture = fixture();

    // At start: refused, naming the flag.
    bundle(&pki, &["huge", "ca"]);
    let args = server_args(&fixture, &pki, &volume.dir);
    // Bounded: a server that started anyway would otherwise never return.
    let output = Command::new("timeout")
        .arg("20")
        .arg(kubeconfigd_e2e::binary().expect("binary"))
        .args(&args)
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--rest-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("runs");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("--client-ca-file") && said.contains("certificate request"),
        "{said}"
    );

    // A repeated CA is named once: served.
    replace(&pki.path("repeated.crt"), &pki.path("bundle.crt"));
    let server = start(&fixture, &pki, &volume.dir, &[]).await;
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );
    // On reload: the last good bundle stays, and handshakes go on.
    bundle(&pki, &["huge", "ca"]);
    assert!(
        server
            .logged(|line| line.contains("client CA bundle") && line.contains("reload failed"))
            .await,
        "{}",
        server.log_text()
    );
    assert_eq!(
        grpc_list(&server, &pki, Some("viewer"), None).await,
        Outcome::Listed(4)
    );
    assert_eq!(curl(&server, &pki, Some("viewer"), None), Ok(200));
}
