//! Hostile inventories against the real binary: a macro expansion bomb, references that leave the
//! inventory, special files, a second file claiming a served uid, and what low-privilege callers may
//! learn about problems. Each case fails on a server without the matching defence.

use std::time::{Duration, Instant};

use kubeconfig_proto::kubeconfig::v1::{
    GetAdminKubeconfigRequest, GetKubeconfigAccessRequest, GetKubeconfigRequest,
};
use kubeconfigd_e2e::{Fixture, Server, eventually, with_key};

const ADMIN: &str = "matrix-cluster-admin";
const VIEWER: &str = "matrix-cluster-viewer";
/// A cluster of the matrix fixture that the hostile files do not touch (`oidc-direct.yaml`).
const STEADY: &str = "00000000000000000000aa03";
const STEADY_FILE: &str = "oidc-direct.yaml";
const TEMPLATE: &str = "no-oidc-direct.yaml";
const TEMPLATE_UID: &str = "00000000000000000000aa04";

/// A copy of the template cluster file with another uid and name, and `edit` applied.
fn cluster_file(fixture: &Fixture, uid: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(fixture.inventory().join(TEMPLATE)).expect("template");
    edit(
        text.replace(TEMPLATE_UID, uid)
            .replace("name: no-oidc-direct", &format!("name: c-{uid}")),
    )
}

async fn access(
    server: &Server,
    uid: &str,
    key: &str,
) -> Result<(Vec<String>, String), tonic::Code> {
    let mut client = server.client().await.expect("client");
    client
        .get_kubeconfig_access(with_key(
            GetKubeconfigAccessRequest {
                uid: uid.to_owned(),
            },
            key,
        ))
        .await
        .map(|r| {
            let access = r.into_inner().access.expect("access");
            let message = access.kubeconfig.map(|k| k.message).unwrap_or_default();
            (access.problems, message)
        })
        .map_err(|s| s.code())
}

async fn admin_file(server: &Server, uid: &str) -> Result<String, tonic::Status> {
    let mut client = server.client().await.expect("client");
    client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                uid: uid.to_owned(),
                ..Default::default()
            },
            ADMIN,
        ))
        .await
        .map(|r| r.into_inner().kubeconfig.expect("kubeconfig").yaml)
}

async fn kubeconfig_ok(server: &Server, uid: &str) -> bool {
    let mut client = server.client().await.expect("client");
    client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: uid.to_owned(),
                frp: None,
            },
            ADMIN,
        ))
        .await
        .is_ok()
}

/// Moves the steady cluster's API server to `host` and says whether that is served within 2 s.
async fn edit_is_applied(server: &Server, fixture: &Fixture, host: &str) -> bool {
    let file = fixture.inventory().join(STEADY_FILE);
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace("https://10.0.0.3:6443", &format!("https://{host}:6443")),
    )
    .expect("write");
    eventually(Duration::from_secs(2), || async {
        admin_file(server, STEADY)
            .await
            .is_ok_and(|y| y.contains(host))
    })
    .await
}

/// Waits until the cluster's problems (as its admin sees them) contain every one of `needles`.
async fn reported(server: &Server, uid: &str, needles: &[&str]) -> bool {
    eventually(Duration::from_secs(3), || async {
        access(server, uid, ADMIN).await.is_ok_and(|(problems, _)| {
            needles
                .iter()
                .all(|n| problems.iter().any(|p| p.contains(n)))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macro_expansion_bomb_makes_one_cluster_unavailable_and_slows_nothing() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let uid = "00000000000000000000bb01";
    // 11 KB: thirty references per level, seven levels; 30^7 copies of 32 bytes when expanded naively.
    let mut values = String::from("    l0: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n");
    for level in 1..=7 {
        let refs = format!("{{{{ .spectro.pack.kubernetes.l{} }}}}", level - 1).repeat(30);
        values.push_str(&format!("    l{level}: '{refs}'\n"));
    }
    let bomb = cluster_file(&fixture, uid, |text| {
        text.replace(
            "oidc-issuer-url: \"https://idp.matrix.test/realms/platform\"",
            "oidc-issuer-url: \"{{ .spectro.pack.kubernetes.l7 }}\"",
        ) + &values
    });
    assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());
    let started = Instant::now();
    std::fs::write(fixture.inventory().join("bomb.yaml"), bomb).expect("write");
    assert!(
        reported(
            &server,
            uid,
            &["kubernetesPack.values", "oidc-issuer-url", "more than"]
        )
        .await,
        "bomb not reported:\n{}",
        server.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        admin_file(&server, uid).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    // Everything else is served, and later edits still apply.
    assert!(kubeconfig_ok(&server, STEADY).await);
    assert!(
        edit_is_applied(&server, &fixture, "10.0.0.33").await,
        "a later edit was not applied:\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_stay_inside_the_inventory_but_secret_volumes_work() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let outside = inventory.parent().expect("parent").join("server-secret");
    std::fs::write(&outside, "the-server-jwt-secret\n").expect("write");
    std::os::unix::fs::symlink(&outside, inventory.join("pki/escape")).expect("symlink");
    let token_file = |uid: &str, reference: &str| {
        cluster_file(&fixture, uid, |text| {
            text.replace(
                "  clientCertificateFile: pki/admin-rsa.crt\n  clientKeyFile: pki/admin-rsa.key\n",
                &format!("  tokenFile: {reference}\n"),
            )
        })
    };
    let cases = [
        (
            "00000000000000000000bb02",
            "../server-secret".to_owned(),
            "outside the inventory",
        ),
        (
            "00000000000000000000bb03",
            outside.display().to_string(),
            "absolute path",
        ),
        (
            "00000000000000000000bb04",
            "pki/escape".to_owned(),
            "outside the inventory",
        ),
    ];
    // A Kubernetes Secret volume: `ca.crt -> ..data/ca.crt`, `..data -> ..2026_11_28_00_00_00.1`.
    let volume = inventory.join("volume");
    std::fs::create_dir_all(volume.join("..2026_11_28_00_00_00.1")).expect("mkdir");
    std::fs::copy(
        inventory.join("pki/ca.crt"),
        volume.join("..2026_11_28_00_00_00.1/ca.crt"),
    )
    .expect("copy");
    std::os::unix::fs::symlink("..2026_11_28_00_00_00.1", volume.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/ca.crt", volume.join("ca.crt")).expect("symlink");
    let volume_uid = "00000000000000000000bb05";
    std::fs::write(
        inventory.join("volume-ca.yaml"),
        cluster_file(&fixture, volume_uid, |t| {
            t.replace(
                "certificateAuthorityFile: pki/ca.crt",
                "certificateAuthorityFile: volume/ca.crt",
            )
        }),
    )
    .expect("write");
    for (uid, reference, _) in &cases {
        std::fs::write(
            inventory.join(format!("{uid}.yaml")),
            token_file(uid, reference),
        )
        .expect("write");
    }
    let server = Server::start(&fixture.args()).await.expect("server");
    for (uid, reference, why) in &cases {
        // The file yields no cluster; the log names the file, the field and why.
        let log = server.log_text();
        assert!(
            server
                .logged(|l| l.contains(&format!("{uid}.yaml"))
                    && l.contains("admin.tokenFile")
                    && l.contains(why))
                .await,
            "{reference}:\n{log}"
        );
        let error = admin_file(&server, uid).await.expect_err("never served");
        assert_eq!(error.code(), tonic::Code::NotFound, "{reference}");
    }
    assert!(
        admin_file(&server, volume_uid).await.is_ok(),
        "a Secret-volume reference is served:\n{}",
        server.log_text()
    );
    assert!(!server.log_text().contains("the-server-jwt-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_refused_and_never_stall_reloads() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let fifo = inventory.join("pki/fifo.key");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let uid = "00000000000000000000bb06";
    std::fs::write(
        inventory.join("fifo.yaml"),
        cluster_file(&fixture, uid, |t| {
            t.replace(
                "clientKeyFile: pki/admin-rsa.key",
                "clientKeyFile: pki/fifo.key",
            )
        }),
    )
    .expect("write");
    let refused = eventually(Duration::from_secs(3), || async {
        server.log_text().lines().any(|l| {
            l.contains("fifo.yaml")
                && l.contains("admin.clientKeyFile")
                && l.contains("not a regular file")
        })
    })
    .await;
    assert!(refused, "{}", server.log_text());
    assert_eq!(
        admin_file(&server, uid)
            .await
            .expect_err("never served")
            .code(),
        tonic::Code::NotFound
    );
    // Reloads go on: an edit elsewhere is applied.
    assert!(
        edit_is_applied(&server, &fixture, "10.0.0.34").await,
        "reloads stalled:\n{}",
        server.log_text()
    );
    // A cluster file that is itself a FIFO, or a link to /dev/zero, is skipped or refused.
    assert!(
        std::process::Command::new("mkfifo")
            .arg(inventory.join("pipe.yaml"))
            .status()
            .expect("mkfifo")
            .success()
    );
    std::os::unix::fs::symlink("/dev/zero", inventory.join("zero.yaml")).expect("symlink");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(kubeconfig_ok(&server, STEADY).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_file_never_takes_over_a_served_uid() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let original = admin_file(&server, TEMPLATE_UID).await.expect("served");
    assert!(original.contains("10.0.0.4:6443"));
    // A newcomer whose name sorts first, claiming the same uid with another API server.
    let intruder = std::fs::read_to_string(inventory.join(TEMPLATE))
        .expect("read")
        .replace(
            "https://10.0.0.4:6443",
            "https://attacker.example.test:6443",
        );
    std::fs::write(inventory.join("aaa-intruder.yaml"), intruder).expect("write");
    assert!(
        reported(
            &server,
            TEMPLATE_UID,
            &["aaa-intruder.yaml", "already served from"]
        )
        .await,
        "{:?}\n{}",
        access(&server, TEMPLATE_UID, ADMIN).await,
        server.log_text()
    );
    assert_eq!(
        admin_file(&server, TEMPLATE_UID).await.expect("served"),
        original
    );
    assert!(server.logged(|l| l.contains("aaa-intruder.yaml")).await);
    drop(server);

    // At start nobody served it before: every claimant is refused, naming the files.
    let restarted = Server::start(&fixture.args()).await.expect("server");
    let error = admin_file(&restarted, TEMPLATE_UID)
        .await
        .expect_err("unavailable");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("aaa-intruder.yaml") && error.message().contains(TEMPLATE),
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_details_only_for_those_who_may_download_the_admin_kubeconfig() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let broken = cluster_file(&fixture, "00000000000000000000bb07", |t| {
        t.replace(
            "apiServer: https://10.0.0.4:6443",
            "apiServer: http://10.0.0.4:6443",
        )
    });
    let server = Server::start(&fixture.args()).await.expect("server");
    let file = fixture.inventory().join(TEMPLATE);
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace("name: no-oidc-direct", "name: [unclosed"),
    )
    .expect("write");
    assert!(reported(&server, TEMPLATE_UID, &[TEMPLATE, "line "]).await);
    let (problems, _) = access(&server, TEMPLATE_UID, VIEWER)
        .await
        .expect("visible");
    assert_eq!(problems, vec!["EDIT_NOT_APPLIED".to_owned()]);

    // An unusable record: the admin learns which field, the viewer only that it is unavailable.
    std::fs::write(fixture.inventory().join("broken.yaml"), broken).expect("write");
    assert!(
        reported(&server, "00000000000000000000bb07", &["apiServer"]).await,
        "{:?}\n{}",
        access(&server, "00000000000000000000bb07", ADMIN).await,
        server.log_text()
    );
    let (problems, message) = access(&server, "00000000000000000000bb07", VIEWER)
        .await
        .expect("visible");
    assert_eq!(problems, vec!["CLUSTER_UNAVAILABLE".to_owned()]);
    assert!(
        !message.contains("apiServer") && !message.contains("http:"),
        "{message}"
    );
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/00000000000000000000bb07/assets/kubeconfig",
            server.rest_url()
        ))
        .header("ApiKey", VIEWER)
        .send()
        .await
        .expect("REST");
    assert_eq!(response.status().as_u16(), 503);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("CLUSTER_UNAVAILABLE") && !body.contains("apiServer"),
        "{body}"
    );
}

/// Reads until the server closes the connection (EOF or reset); `None` if it is still open at `within`.
pub(crate) async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt as _;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_numerous_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpStream;
    let args = |extra: &[&str]| {
        let mut args = vec!["--demo".to_owned()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let server = Server::start(&args(&[
        "--idle-timeout",
        "1s",
        "--header-read-timeout",
        "1s",
    ]))
    .await
    .expect("server");
    // Trickled headers on REST: cut at the header-read timeout.
    let mut trickle = TcpStream::connect(server.rest).await.expect("connect");
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let cut = closed_within(&mut trickle, Duration::from_secs(4)).await;
    assert!(
        cut.is_some_and(|t| t >= Duration::from_millis(800)),
        "{cut:?}"
    );
    // Silent connections on both listeners: cut at the idle timeout.
    for (what, addr) in [("gRPC", server.grpc), ("REST", server.rest)] {
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let cut = closed_within(&mut silent, Duration::from_secs(4)).await;
        assert!(
            cut.is_some_and(|t| t >= Duration::from_millis(800)),
            "{what}: {cut:?}"
        );
    }
    // An HTTP/1 keep-alive connection that goes quiet after a request is cut too.
    let mut quiet = TcpStream::connect(server.rest).await.expect("connect");
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut quiet, Duration::from_secs(4))
            .await
            .is_some()
    );
    drop(server);

    // The connection cap, shared by the gRPC and REST listeners.
    let capped = Server::start(&args(&["--max-connections", "3"]))
        .await
        .expect("server");
    // The harness's readiness probe opened (and closed) a gRPC connection: let its slot go first, or
    // under load one of the three below could be the one refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each held connection serves a long-lived stream: a gRPC watch and two REST long-polls (a
    // connection that has not started a request, is idle, or stalls is evicted to make room for a new
    // one instead: see frames.rs).
    let mut client = capped.client().await.expect("client");
    let watch = client
        .watch_kubeconfigs(with_key(
            kubeconfig_proto::kubeconfig::v1::WatchKubeconfigsRequest::default(),
            "demo-viewer-key",
        ))
        .await
        .expect("watch");
    let url = format!(
        "{}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig",
        capped.rest_url()
    );
    let etag = reqwest::Client::new()
        .get(&url)
        .header("ApiKey", "demo-viewer-key")
        .send()
        .await
        .expect("download")
        .headers()["etag"]
        .to_str()
        .expect("etag")
        .to_owned();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (url, etag) = (url.clone(), etag.clone());
        held.push(tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{url}?wait=30s"))
                .header("ApiKey", "demo-viewer-key")
                .header("If-None-Match", etag)
                .send()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(capped.rest).await.expect("connect");
    let cut = closed_within(&mut refused, Duration::from_secs(3)).await;
    assert!(
        cut.is_some(),
        "the fourth connection is closed at once: {:?}",
        kubeconfigd_e2e::metrics(&capped).await
    );
    drop(watch);
    drop(client);
    let freed = eventually(Duration::from_secs(2), || async {
        reqwest::Client::new()
            .get(format!("{}/healthz", capped.rest_url()))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(freed, "a closed connection frees its slot");
    // Probes do not share the API's budget.
    let ready = reqwest::get(format!("{}/readyz", capped.admin_url()))
        .await
        .expect("admin");
    assert_eq!(ready.status().as_u16(), 200);
    drop(held);
    drop(capped);

    // TLS: a client that never completes its handshake is cut, and handshakes in progress are capped.
    let tls = kubeconfigd_e2e::workspace_root().join("tests/fixtures/tls");
    let cert = tls.join("server.crt").display().to_string();
    let key = tls.join("server.key").display().to_string();
    let secured = Server::start(&args(&[
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-handshake-timeout",
        "1s",
        "--max-tls-handshakes",
        "2",
    ]))
    .await
    .expect("server");
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(TcpStream::connect(secured.rest).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third handshake makes room by ending the oldest one in progress (a peer that connects and
    // sends nothing would otherwise hold its handshake slot for the whole timeout).
    let third = TcpStream::connect(secured.rest).await.expect("connect");
    let cut = closed_within(&mut stalled[0], Duration::from_millis(700)).await;
    assert!(
        cut.is_some(),
        "the oldest handshake in progress is ended at once"
    );
    let mut rest = vec![stalled.remove(1), third];
    for stream in &mut rest {
        let cut = closed_within(stream, Duration::from_secs(3)).await;
        assert!(cut.is_some(), "an unfinished handshake is cut");
    }
}

/// Sends one `GET /healthz` on `stream` and reads its whole answer; `false` if the connection ended
/// or the answer is not a 200.
pub(crate) async fn healthz_on(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return head.starts_with("http/1.1 200");
            }
        }
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_at_the_header_read_timeout_and_busy_connections_are_not() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The idle timeout is far away: only the header-read timeout can cut these connections.
    let server = Server::start(&[
        "--demo".to_owned(),
        "--idle-timeout".to_owned(),
        "60s".to_owned(),
        "--header-read-timeout".to_owned(),
        "1s".to_owned(),
    ])
    .await
    .expect("server");

    // A client that keeps sending a header byte every 200 ms, never finishing the headers.
    let mut trickle = tokio::net::TcpStream::connect(server.rest)
        .await
        .expect("connect");
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let cut = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break None;
        }
        tokio::select! {
            read = trickle.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Some(started.elapsed()),
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if trickle.write_all(b"a").await.is_err() {
                    break Some(started.elapsed());
                }
            }
        }
    };
    assert!(
        cut.is_some_and(|t| t >= Duration::from_millis(900) && t < Duration::from_secs(4)),
        "a trickled request is cut at the header-read timeout: {cut:?}"
    );

    // One keep-alive connection used for 2.5 header-read timeouts, a request every 250 ms: every
    // request is answered on it (each request's headers have their own deadline).
    let mut busy = tokio::net::TcpStream::connect(server.rest)
        .await
        .expect("connect");
    for round in 0..10 {
        assert!(
            healthz_on(&mut busy).await,
            "request {round} on the busy connection"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A connection that had its answers and then starts another request slowly is cut too. The
    // deadline runs from the end of the last answer (as hyper's own timer does): a keep-alive
    // connection waiting for its next request counts as reading headers, 250 ms of it already gone.
    busy.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("write");
    let cut = closed_within(&mut busy, Duration::from_secs(4)).await;
    assert!(
        cut.is_some_and(|t| t >= Duration::from_millis(500)),
        "{cut:?}"
    );
}

/// An HTTP/1.1 client that pipelines many downloads and reads the answers slowly is answered in full:
/// while the server cannot write an answer it does not read the next request, and that time does not
/// count against the next request's header-read timeout (an outside review saw such a client reset
/// after about 1.5 s when it did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_that_reads_slowly_gets_every_answer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start(&[
        "--demo".to_owned(),
        "--header-read-timeout".to_owned(),
        "1s".to_owned(),
    ])
    .await
    .expect("server");
    const CALLS: usize = 3000;
    let request = "GET /v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig HTTP/1.1\r\n\
                   Host: x\r\nApiKey: demo-viewer-key\r\n\r\n"
        .repeat(CALLS);
    let stream = tokio::net::TcpStream::connect(server.rest)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // The write half is handed back, not dropped: dropping it would half-close the connection.
    let sending =
        tokio::spawn(async move { writer.write_all(request.as_bytes()).await.map(|()| writer) });
    let started = Instant::now();
    let (mut answers, mut tail, mut ended) = (0, Vec::new(), "timed out");
    let mut buf = vec![0u8; 32 * 1024];
    while started.elapsed() < Duration::from_secs(60) {
        // About 320 KB/s for the first 4 s (the server's writes block), then as fast as it comes.
        if started.elapsed() < Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await;
        let n = match read {
            Ok(Ok(0)) => {
                ended = "closed";
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(_)) => {
                ended = "reset";
                break;
            }
            Err(_) => break,
        };
        tail.extend_from_slice(&buf[..n]);
        answers += tail
            .windows(b"HTTP/1.1 200".len())
            .filter(|w| *w == b"HTTP/1.1 200")
            .count();
        let keep = tail.len().min(11);
        tail.drain(..tail.len() - keep);
        if answers == CALLS {
            ended = "all answered";
            break;
        }
    }
    let _writer = tokio::time::timeout(Duration::from_secs(5), sending).await;
    assert_eq!(
        (answers, ended),
        (CALLS, "all answered"),
        "after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_error_has_the_json_body_and_the_admin_listener_stands_alone() {
    let server = Server::start(&["--demo".to_owned()]).await.expect("server");
    let client = reqwest::Client::new();
    let base = server.rest_url();
    let cases = [
        (
            client.post(format!(
                "{base}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig"
            )),
            405,
            "MethodNotAllowed",
        ),
        (
            client.get(format!(
                "{base}/v1/spectroclusters/%FF%FE/assets/kubeconfig"
            )),
            400,
            "BadRequest",
        ),
        (
            client.get(format!(
                "{base}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig?frp=%FF"
            )),
            400,
            "BadRequest",
        ),
        (
            client.get(format!("{base}/nowhere")),
            404,
            "ResourceNotFound",
        ),
        (
            client.delete(format!("{base}/healthz")),
            405,
            "MethodNotAllowed",
        ),
    ];
    for (request, status, code) in cases {
        let response = request
            .header("ApiKey", "demo-admin-key")
            .send()
            .await
            .expect("REST");
        assert_eq!(response.status().as_u16(), status, "{code}");
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("a JSON body");
        assert_eq!(body["code"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty())
                && body["ref"].as_str().is_some_and(|r| !r.is_empty()),
            "{body}"
        );
    }
    // Metrics moved off the public port.
    assert_eq!(
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("REST")
            .status()
            .as_u16(),
        404
    );
    drop(server);

    // Without REST, the admin listener still serves probes, metrics and the OpenAPI document.
    let server = Server::start(&["--demo".to_owned(), "--no-rest".to_owned()])
        .await
        .expect("server");
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let response = client
            .get(format!("{}{path}", server.admin_url()))
            .send()
            .await
            .expect("admin");
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    assert!(
        tokio::net::TcpStream::connect(server.rest).await.is_err(),
        "no REST listener"
    );
}

/// A Redis stand-in that answers every command with `+OK` except reads (`GETRANGE`), which it never
/// answers. Returns its port.
async fn stalling_redis() -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let chunk = &buf[..n];
                    if chunk
                        .windows(8)
                        .any(|w| w.eq_ignore_ascii_case(b"GETRANGE"))
                    {
                        continue; // never answered
                    }
                    // One "+OK" per command in the chunk (each starts with a RESP array header).
                    let commands = chunk
                        .split(|b| *b == b'\n')
                        .filter(|line| line.first() == Some(&b'*'))
                        .count()
                        .max(1);
                    if stream
                        .write_all(&b"+OK\r\n".repeat(commands))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// kubeconfigd on the demo data with only the Redis tier, on `redis_port`, plus `extra` flags; returns
/// once the cache counts Redis as up.
async fn server_on_redis(redis_port: u16, extra: &[&str]) -> Server {
    let key = kubeconfigd_e2e::workspace_root()
        .join("tests/fixtures/cache.key")
        .display()
        .to_string();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut args = vec![
        "--demo",
        "--cache-memory",
        "0",
        "--redis-url",
        &redis_url,
        "--cache-key-file",
        &key,
    ];
    args.extend_from_slice(extra);
    let server = Server::start(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
        .await
        .expect("server");
    let up = eventually(Duration::from_secs(10), || async {
        kubeconfigd_e2e::metrics(&server)
            .await
            .is_ok_and(|m| m.get("kubeconfigd_cache_redis_up").copied() == Some(1.0))
    })
    .await;
    assert!(
        up,
        "the stand-in never counted as up:\n{}",
        server.log_text()
    );
    server
}

/// Calls must end at `--request-timeout` even when Redis never answers, on REST as on gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_redis_never_holds_a_call_past_the_request_timeout() {
    let port = stalling_redis().await;
    let server = server_on_redis(
        port,
        &["--redis-timeout", "5s", "--request-timeout", "300ms"],
    )
    .await;
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig",
            server.rest_url()
        ))
        .header("ApiKey", "demo-viewer-key")
        .send()
        .await
        .expect("REST");
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 504);
    let body: serde_json::Value =
        serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(body["code"], "RequestTimeout", "{body}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    let started = Instant::now();
    let mut client = server.client().await.expect("client");
    let status = client
        .get_kubeconfig(kubeconfigd_e2e::with_key(
            GetKubeconfigRequest {
                uid: "6470a2b1c5e6f1a2b3c4d5e1".to_owned(),
                frp: None,
            },
            "demo-viewer-key",
        ))
        .await
        .expect_err("timed out");
    assert_ne!(status.code(), tonic::Code::Ok);
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// One admission limit for both edges: with `--max-concurrent-requests 2` and two calls held in
/// flight (Redis never answers), a third call is refused at once with 429 on REST and
/// RESOURCE_EXHAUSTED on gRPC, each counted; once the held calls end, calls are admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_both_edges_refuse_at_once() {
    let port = stalling_redis().await;
    let server = server_on_redis(
        port,
        &[
            "--redis-timeout",
            "10s",
            "--request-timeout",
            "3s",
            "--max-concurrent-requests",
            "2",
        ],
    )
    .await;
    let url = format!(
        "{}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig",
        server.rest_url()
    );
    let http = reqwest::Client::new();
    let get = || http.get(&url).header("ApiKey", "demo-viewer-key").send();
    let mut client = server.client().await.expect("client");
    let held = [tokio::spawn(get()), tokio::spawn(get())];
    // The held calls reach the server (loopback) long before this; each then waits on Redis for
    // the 3 s deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let response = get().await.expect("REST");
    assert_eq!(
        response.status().as_u16(),
        429,
        "two calls were held:\n{}",
        server.log_text()
    );
    let body: serde_json::Value =
        serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    assert_eq!(body["code"], "TooManyRequests", "{body}");
    let status = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: "6470a2b1c5e6f1a2b3c4d5e1".to_owned(),
                frp: None,
            },
            "demo-viewer-key",
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusals wait for nothing (the held calls end at 3 s)"
    );

    for call in held {
        let response = call.await.expect("task").expect("REST");
        assert_eq!(
            response.status().as_u16(),
            504,
            "held calls end at the deadline"
        );
    }
    let metrics = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    let refused = |edge: &str| {
        metrics
            .iter()
            .filter(|(name, _)| {
                name.starts_with("kubeconfigd_calls_total{")
                    && name.contains(&format!("edge=\"{edge}\""))
                    && name.contains("code=\"TooManyRequests\"")
            })
            .map(|(_, value)| *value)
            .sum::<f64>()
    };
    assert!(refused("rest") >= 1.0, "{metrics:?}");
    assert!(refused("grpc") >= 1.0, "{metrics:?}");
    // Admitted again: the next call waits for Redis and ends at the deadline instead of a 429.
    let response = get().await.expect("REST");
    assert_eq!(response.status().as_u16(), 504);
}
