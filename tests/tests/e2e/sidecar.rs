//! The sidecar path end to end: the real server and the real `kubeconfig-agent` processes, files
//! loaded by kube-rs, WatchKubeconfigs from a gRPC client, and the REST long-poll.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubeconfig_proto::kubeconfig::v1 as pb;
use kubeconfigd_e2e::{Agent, Fixture, Server, eventually, free_port, with_key};
use pb::watch_kubeconfigs_response::Type;

const ADMIN_KEY: &str = "matrix-cluster-admin";
const ADMIN_KEY_HASH: &str =
    "sha256:71d6b58296c41891a83ab0049f5420cd2684eb529bdbd936b19623a75384117a";
const TENANT_ADMIN_KEY: &str = "matrix-tenant-admin";
const NO_OIDC_DIRECT: &str = "00000000000000000000aa04";
const OIDC_DIRECT: &str = "00000000000000000000aa03";

fn write_file(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp-edit");
    std::fs::write(&temporary, text).expect("write");
    std::fs::rename(&temporary, path).expect("rename");
}

pub(crate) fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    write_file(path, &text.replacen(from, to, 1));
}

struct Setup {
    fixture: Fixture,
    server: Server,
    key_file: PathBuf,
    out: PathBuf,
}

async fn setup(extra_server_args: &[&str]) -> Setup {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let mut args = fixture.args();
    args.extend(extra_server_args.iter().map(|a| (*a).to_owned()));
    let server = Server::start(&args).await.expect("server");
    let key_file = fixture.dir.path().join("agent.key");
    std::fs::write(&key_file, format!("{ADMIN_KEY}\n")).expect("key");
    let out = fixture.dir.path().join("out");
    Setup {
        fixture,
        server,
        key_file,
        out,
    }
}

fn agent_args(setup: &Setup, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--server".to_owned(),
        setup.server.grpc_url(),
        "--api-key-file".to_owned(),
        setup.key_file.display().to_string(),
        "--out-dir".to_owned(),
        setup.out.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

pub(crate) async fn metric(health: &str, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{health}/metrics")).await else {
        return -1.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

/// Whether the agent reaches its `connects`-th connection, and is connected, within `timeout`.
pub(crate) async fn connected(health: &str, connects: f64, timeout: Duration) -> bool {
    eventually(timeout, || async {
        metric(health, "kubeconfig_agent_connects_total").await >= connects
            && metric(health, "kubeconfig_agent_connected").await == 1.0
    })
    .await
}

pub(crate) async fn ready(health: &str) -> bool {
    reqwest::get(format!("http://{health}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Files in the agent's output directory (-1 when it cannot be read).
pub(crate) fn files_in(dir: &Path) -> isize {
    std::fs::read_dir(dir).map_or(-1, |d| d.count() as isize)
}

/// Takes the agent's API key out of the tenant file (the user stays, with no key).
fn remove_admin_key(setup: &Setup) {
    let tenant = read(&setup.fixture.tenant());
    write_file(
        &setup.fixture.tenant(),
        &tenant.replace(&format!("      - {ADMIN_KEY_HASH}\n"), ""),
    );
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn once_writes_loadable_files_or_names_what_failed() {
    let setup = setup(&[]).await;
    let merged = setup.fixture.dir.path().join("merged.kubeconfig");
    let mut agent = Agent::start(&agent_args(
        &setup,
        &[
            "--once",
            "--cluster",
            NO_OIDC_DIRECT,
            "--cluster",
            OIDC_DIRECT,
            "--merged",
            &merged.display().to_string(),
        ],
    ))
    .expect("agent");
    let status = agent.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(status.success(), "{}", agent.log_text());
    for name in ["no-oidc-direct.kubeconfig", "oidc-direct.kubeconfig"] {
        let path = setup.out.join(name);
        let yaml = read(&path);
        kube::config::Kubeconfig::from_yaml(&yaml).expect("kube-rs loads the agent's file");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
    }
    let merged_config =
        kube::config::Kubeconfig::from_yaml(&read(&merged)).expect("kube-rs loads the merged file");
    assert_eq!(merged_config.contexts.len(), 2);

    // An unknown cluster: non-zero, and the message names it.
    let mut agent = Agent::start(&agent_args(
        &setup,
        &["--once", "--cluster", "00000000000000000000ffff"],
    ))
    .expect("agent");
    let status = agent.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(!status.success());
    let log = agent.log_text();
    assert!(
        log.contains("cluster 00000000000000000000ffff") && log.contains("NOT_FOUND"),
        "{log}"
    );

    // A bad key: non-zero, and the message says the credential was refused.
    std::fs::write(&setup.key_file, "not-a-key\n").expect("key");
    let mut agent = Agent::start(&agent_args(&setup, &["--once", "--all"])).expect("agent");
    let status = agent.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(!status.success());
    assert!(
        agent.log_text().contains("Unauthenticated"),
        "{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn the_agent_follows_edits_revocations_and_deletions() {
    let setup = setup(&[]).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let runs = setup.fixture.dir.path().join("runs");
    let mut agent = Agent::start(&agent_args(
        &setup,
        &[
            "--all",
            "--health-addr",
            &health,
            "--on-change",
            &format!("echo run >> {}", runs.display()),
        ],
    ))
    .expect("agent");
    assert!(
        eventually(Duration::from_secs(15), || ready(&health)).await,
        "{}",
        agent.log_text()
    );
    let file = setup.out.join("no-oidc-direct.kubeconfig");
    assert!(read(&file).contains("https://10.0.0.4:6443"));
    assert_eq!(files_in(&setup.out), 4);
    let runs_after_sync = read(&runs).lines().count();
    assert_eq!(runs_after_sync, 1, "the initial sync is one change");

    // An edit reaches the file within 1 s, and --on-change runs once for it.
    let started = Instant::now();
    edit(
        &setup.fixture.inventory().join("no-oidc-direct.yaml"),
        "https://10.0.0.4:6443",
        "https://10.0.0.44:6443",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            read(&file).contains("https://10.0.0.44:6443")
        })
        .await
    );
    let latency = started.elapsed();
    assert!(
        latency < Duration::from_secs(1),
        "edit served after {latency:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            read(&runs).lines().count() == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(&runs).lines().count(), 2, "one run per change");

    // A deleted cluster: its file goes.
    std::fs::remove_file(setup.fixture.inventory().join("oidc-direct.yaml")).expect("rm");
    assert!(
        eventually(Duration::from_secs(2), || async {
            !setup.out.join("oidc-direct.kubeconfig").exists()
        })
        .await
    );

    // The binding removed: every file goes within 2 s.
    let tenant = read(&setup.fixture.tenant());
    let started = Instant::now();
    write_file(
        &setup.fixture.tenant(),
        &tenant.replace(
            "  - user: cluster-admin@matrix.test\n    role: Cluster Admin\n    project: platform\n",
            "",
        ),
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            files_in(&setup.out) == 0
        })
        .await,
        "{}",
        agent.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(metric(&health, "kubeconfig_agent_files_removed_total").await >= 4.0);
    agent.kill();
}

#[tokio::test]
async fn a_server_restart_rewrites_nothing_and_a_rotated_key_file_is_used() {
    let mut setup = setup(&[]).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    assert!(eventually(Duration::from_secs(15), || ready(&health)).await);
    let stamps = |out: &Path| -> Vec<(String, u64, i64, i64)> {
        let mut all: Vec<_> = std::fs::read_dir(out)
            .expect("out")
            .map(|e| {
                let e = e.expect("entry");
                let m = e.metadata().expect("meta");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let before = stamps(&setup.out);
    assert_eq!(before.len(), 4);

    // The server goes away: the files stay.
    setup.server.kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&health, "kubeconfig_agent_connected").await == 0.0
        })
        .await
    );
    assert_eq!(stamps(&setup.out), before);
    setup.server.restart().await.expect("restart");
    assert!(
        connected(&health, 2.0, Duration::from_secs(15)).await,
        "{}",
        agent.log_text()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stamps(&setup.out), before, "nothing unchanged is rewritten");

    // Rotate the key file, then revoke the old key: the stream ends, and the next connection uses
    // the new key (edits keep arriving, no file is deleted on the way).
    std::fs::write(&setup.key_file, format!("{TENANT_ADMIN_KEY}\n")).expect("key");
    remove_admin_key(&setup);
    assert!(
        connected(&health, 3.0, Duration::from_secs(10)).await,
        "{}",
        agent.log_text()
    );
    edit(
        &setup.fixture.inventory().join("no-oidc-direct.yaml"),
        "https://10.0.0.4:6443",
        "https://10.0.0.45:6443",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            read(&setup.out.join("no-oidc-direct.kubeconfig")).contains("10.0.0.45")
        })
        .await,
        "{}",
        agent.log_text()
    );
    assert_eq!(files_in(&setup.out), 4);
}

#[tokio::test]
async fn a_killed_agent_never_leaves_a_partial_file() {
    let setup = setup(&[]).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    assert!(eventually(Duration::from_secs(15), || ready(&health)).await);
    let cluster_file = setup.fixture.inventory().join("no-oidc-direct.yaml");
    let original = read(&cluster_file);
    // A burst of edits; the agent is killed in the middle of it.
    for i in 0..60u32 {
        write_file(
            &cluster_file,
            &original.replace("https://10.0.0.4:6443", &format!("https://10.0.{i}.4:6443")),
        );
        if i == 40 {
            agent.kill();
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let check = |out: &Path| {
        for entry in std::fs::read_dir(out).expect("out") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let yaml = read(&entry.path());
            kube::config::Kubeconfig::from_yaml(&yaml)
                .unwrap_or_else(|e| panic!("{name} is not a whole kubeconfig: {e}"));
        }
    };
    check(&setup.out);
    // A new agent cleans up leftovers and catches up.
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let _agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    assert!(eventually(Duration::from_secs(15), || ready(&health)).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            read(&setup.out.join("no-oidc-direct.kubeconfig")).contains("https://10.0.59.4:6443")
        })
        .await
    );
    check(&setup.out);
    let hidden = std::fs::read_dir(&setup.out)
        .expect("out")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('.'))
        })
        .count();
    assert_eq!(hidden, 0, "temporary files are cleaned up");
}

async fn open_watch(
    server: &Server,
    key: &str,
    request: pb::WatchKubeconfigsRequest,
) -> Result<tonic::Streaming<pb::WatchKubeconfigsResponse>, tonic::Status> {
    let mut client = server.client().await.expect("client");
    client
        .watch_kubeconfigs(with_key(request, key))
        .await
        .map(tonic::Response::into_inner)
}

async fn until_synced(stream: &mut tonic::Streaming<pb::WatchKubeconfigsResponse>) -> usize {
    let mut events = 0;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events in time")
            .expect("stream")
            .expect("open");
        if event.r#type() == Type::Synced {
            return events;
        }
        events += 1;
    }
}

#[tokio::test]
async fn a_slow_watcher_delays_no_one_limits_hold_and_a_revoked_key_ends_the_stream() {
    let setup = setup(&["--max-watch-streams-per-caller", "3"]).await;
    let all = pb::WatchKubeconfigsRequest::default();
    // The slow one: opened and never read again after its initial state.
    let mut slow = open_watch(&setup.server, ADMIN_KEY, all.clone())
        .await
        .expect("slow");
    assert_eq!(until_synced(&mut slow).await, 4);
    let mut fast = open_watch(&setup.server, ADMIN_KEY, all.clone())
        .await
        .expect("fast");
    assert_eq!(until_synced(&mut fast).await, 4);
    // Reconnecting with the etags held resends nothing.
    let mut known = std::collections::HashMap::new();
    let mut again = open_watch(&setup.server, TENANT_ADMIN_KEY, all.clone())
        .await
        .expect("again");
    loop {
        let event = again.message().await.expect("stream").expect("open");
        if event.r#type() == Type::Synced {
            break;
        }
        let kubeconfig = event.kubeconfig.expect("upsert");
        known.insert(format!("{}/kubeconfig", event.cluster_uid), kubeconfig.etag);
    }
    drop(again);
    let mut resumed = open_watch(
        &setup.server,
        TENANT_ADMIN_KEY,
        pb::WatchKubeconfigsRequest {
            known_etags: known,
            ..Default::default()
        },
    )
    .await
    .expect("resumed");
    assert_eq!(
        until_synced(&mut resumed).await,
        0,
        "nothing unchanged is resent"
    );

    // The per-caller limit.
    let _third = open_watch(&setup.server, ADMIN_KEY, all.clone())
        .await
        .expect("third");
    let refused = open_watch(&setup.server, ADMIN_KEY, all.clone())
        .await
        .expect_err("fourth");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let metrics = reqwest::get(format!("{}/metrics", setup.server.admin_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("\nkubeconfigd_watch_streams 4\n"),
        "three of the caller's and the tenant admin's resumed watch: {metrics}"
    );

    // Many changes while the slow watcher reads nothing: the fast one sees each promptly.
    let file = setup.fixture.inventory().join("no-oidc-direct.yaml");
    let original = read(&file);
    for i in 0..40u32 {
        let host = format!("https://10.9.{i}.4:6443");
        write_file(&file, &original.replace("https://10.0.0.4:6443", &host));
        let started = Instant::now();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(2), fast.message())
                .await
                .unwrap_or_else(|_| panic!("edit {i} not seen within 2 s"))
                .expect("stream")
                .expect("open");
            if event
                .kubeconfig
                .as_ref()
                .is_some_and(|k| k.yaml.contains(&host))
            {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    // The slow watcher, read at last, ends up with the latest state (coalesced or in full).
    let last = "https://10.9.39.4:6443";
    let mut seen_last = false;
    while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_secs(2), slow.message())
        .await
        .map(|m| m.transpose())
    {
        if event.kubeconfig.is_some_and(|k| k.yaml.contains(last)) {
            seen_last = true;
            break;
        }
    }
    assert!(
        seen_last,
        "the slow watcher catches up with the latest bytes"
    );

    // The key revoked: the stream ends with UNAUTHENTICATED.
    remove_admin_key(&setup);
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(2), fast.message())
            .await
            .expect("the stream ends within 2 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn the_rest_long_poll_answers_when_the_file_changes() {
    let setup = setup(&[]).await;
    let url = format!(
        "{}/v1/spectroclusters/{NO_OIDC_DIRECT}/assets/kubeconfig",
        setup.server.rest_url()
    );
    let client = reqwest::Client::new();
    let first = client
        .get(&url)
        .header("ApiKey", ADMIN_KEY)
        .send()
        .await
        .expect("get");
    let etag = first.headers()["etag"].to_str().expect("etag").to_owned();

    // Nothing changes: 304 when the wait is over.
    let started = Instant::now();
    let unchanged = client
        .get(format!("{url}?wait=1s"))
        .header("ApiKey", ADMIN_KEY)
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("get");
    assert_eq!(unchanged.status(), 304);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A change during the wait: 200 with the new bytes, within 1 s of the edit.
    let poll = {
        let client = client.clone();
        let url = format!("{url}?wait=30s");
        let etag = etag.clone();
        tokio::spawn(async move {
            let response = client
                .get(url)
                .header("ApiKey", ADMIN_KEY)
                .header("If-None-Match", etag)
                .send()
                .await
                .expect("get");
            (
                Instant::now(),
                response.status(),
                response.text().await.unwrap_or_default(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edited = Instant::now();
    edit(
        &setup.fixture.inventory().join("no-oidc-direct.yaml"),
        "https://10.0.0.4:6443",
        "https://10.0.0.46:6443",
    );
    let (answered, status, body) = poll.await.expect("poll");
    assert_eq!(status, 200);
    assert!(body.contains("10.0.0.46"));
    assert!(answered - edited < Duration::from_secs(1));

    // Access ends during the wait: the refusal comes at once.
    let etag = client
        .get(&url)
        .header("ApiKey", ADMIN_KEY)
        .send()
        .await
        .expect("get")
        .headers()["etag"]
        .to_str()
        .expect("etag")
        .to_owned();
    let poll = {
        let client = client.clone();
        let url = format!("{url}?wait=30s");
        tokio::spawn(async move {
            client
                .get(url)
                .header("ApiKey", ADMIN_KEY)
                .header("If-None-Match", etag)
                .send()
                .await
                .expect("get")
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tenant = read(&setup.fixture.tenant());
    write_file(
        &setup.fixture.tenant(),
        &tenant.replace(
            "  - user: cluster-admin@matrix.test\n    role: Cluster Admin\n    project: platform\n",
            "",
        ),
    );
    let status = tokio::time::timeout(Duration::from_secs(3), poll)
        .await
        .expect("answered at once")
        .expect("poll");
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_watch_narrowed_to_a_project_sees_that_project_only() {
    let setup = setup(&[]).await;
    let project = |p: &str| pb::WatchKubeconfigsRequest {
        project_uid: p.to_owned(),
        ..Default::default()
    };
    let mut platform = open_watch(&setup.server, TENANT_ADMIN_KEY, project("platform"))
        .await
        .expect("platform");
    assert_eq!(until_synced(&mut platform).await, 4);
    let mut other = open_watch(&setup.server, TENANT_ADMIN_KEY, project("other"))
        .await
        .expect("other");
    assert_eq!(until_synced(&mut other).await, 0);
    // A cluster moved out of the project is removed from that watch.
    edit(
        &setup.fixture.inventory().join("no-oidc-direct.yaml"),
        "project: platform",
        "project: other",
    );
    let event = tokio::time::timeout(Duration::from_secs(3), platform.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("open");
    assert_eq!(
        (event.r#type(), event.cluster_uid.as_str()),
        (Type::Removed, NO_OIDC_DIRECT)
    );
    let event = tokio::time::timeout(Duration::from_secs(3), other.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("open");
    assert_eq!(
        (event.r#type(), event.cluster_uid.as_str()),
        (Type::Upsert, NO_OIDC_DIRECT)
    );
    let refused = open_watch(
        &setup.server,
        TENANT_ADMIN_KEY,
        pb::WatchKubeconfigsRequest {
            cluster_uids: vec![NO_OIDC_DIRECT.to_owned()],
            project_uid: "platform".to_owned(),
            ..Default::default()
        },
    )
    .await
    .expect_err("both");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watches_with_unavailable_and_does_not_wait_for_them() {
    let mut setup = setup(&["--shutdown-grace", "20s"]).await;
    let mut stream = open_watch(
        &setup.server,
        ADMIN_KEY,
        pb::WatchKubeconfigsRequest::default(),
    )
    .await
    .expect("watch");
    assert_eq!(until_synced(&mut stream).await, 4);
    let started = Instant::now();
    let pid = setup.server.pid().expect("pid");
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends at once");
    assert_eq!(
        ended.expect_err("a status").code(),
        tonic::Code::Unavailable
    );
    // Close our side: the server's HTTP/2 goodbye waits for the peer's acknowledgement, and the wait
    // below blocks this test's runtime, which would otherwise have to answer it.
    drop(stream);
    let status = setup
        .server
        .terminate_wait(Duration::from_secs(10))
        .expect("exits");
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained in {:?}, not after the grace period",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_server_wide_stream_limit_answers_resource_exhausted() {
    let setup = setup(&["--max-watch-streams", "2"]).await;
    let request = pb::WatchKubeconfigsRequest::default();
    let _first = open_watch(&setup.server, ADMIN_KEY, request.clone())
        .await
        .expect("first");
    let second = open_watch(&setup.server, TENANT_ADMIN_KEY, request.clone())
        .await
        .expect("second");
    let refused = open_watch(&setup.server, "matrix-project-admin", request.clone())
        .await
        .expect_err("third");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("limit 2"),
        "{}",
        refused.message()
    );
    // A closed stream frees its place.
    drop(second);
    assert!(
        eventually(Duration::from_secs(5), || async {
            open_watch(&setup.server, "matrix-project-admin", request.clone())
                .await
                .is_ok()
        })
        .await
    );
}

/// A projected-token style credential: the agent re-reads `--token-file` at every connection.
#[tokio::test]
async fn a_rotated_token_file_is_used_on_the_next_connection() {
    let jwt = kubeconfigd_e2e::workspace_root().join("tests/fixtures/jwt/hs256.secret");
    let mut setup = setup(&[
        "--jwt-issuer",
        "https://issuer.matrix.test",
        "--jwt-audience",
        "kubeconfigd",
        "--jwt-hs256-secret-file",
        &jwt.display().to_string(),
    ])
    .await;
    let secret = std::fs::read(&jwt).expect("secret");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = |email: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({
                "email": email, "iss": "https://issuer.matrix.test", "aud": "kubeconfigd",
                "iat": now, "exp": now + 600,
            }),
            &jsonwebtoken::EncodingKey::from_secret(secret.trim_ascii()),
        )
        .expect("sign")
    };
    let token_file = setup.fixture.dir.path().join("token");
    std::fs::write(&token_file, token("cluster-admin@matrix.test")).expect("token");
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let args = vec![
        "--server".to_owned(),
        setup.server.grpc_url(),
        "--token-file".to_owned(),
        token_file.display().to_string(),
        "--all".to_owned(),
        "--out-dir".to_owned(),
        setup.out.display().to_string(),
        "--health-addr".to_owned(),
        health.clone(),
    ];
    let agent = Agent::start(&args).expect("agent");
    assert!(
        eventually(Duration::from_secs(15), || ready(&health)).await,
        "{}",
        agent.log_text()
    );
    assert_eq!(files_in(&setup.out), 4);
    // The token rotates to another identity, one that sees no cluster of the project; the next
    // connection (after a server restart) uses it, so the files go.
    std::fs::write(&token_file, token("no-access@matrix.test")).expect("token");
    setup.server.restart().await.expect("restart");
    assert!(
        eventually(Duration::from_secs(15), || async {
            files_in(&setup.out) == 0
        })
        .await,
        "{}",
        agent.log_text()
    );
}

#[tokio::test]
async fn the_agent_signals_the_application_after_changes() {
    let setup = setup(&[]).await;
    let received = setup.fixture.dir.path().join("received");
    let trapping = setup.fixture.dir.path().join("trapping");
    // The application: Python rather than a shell, because a non-interactive shell cannot trap a signal
    // that was ignored when it started (as under `nohup`), and then no line would ever arrive.
    const APPLICATION: &str = r#"
import signal, sys, time
received, trapping = sys.argv[1], sys.argv[2]
def hup(*_):
    with open(received, "a") as f:
        f.write("hup\n")
signal.signal(signal.SIGHUP, hup)
open(trapping, "w").close()
for _ in range(600):
    time.sleep(0.05)
"#;
    let mut application = std::process::Command::new("python3")
        .arg("-c")
        .arg(APPLICATION)
        .arg(&received)
        .arg(&trapping)
        .spawn()
        .expect("application");
    // The agent may sync (and signal) within milliseconds: a HUP before the handler is set would end
    // the application (HUP's default action).
    assert!(
        eventually(Duration::from_secs(10), || async { trapping.exists() }).await,
        "the application set its handler"
    );
    let pid = application.id().to_string();
    let _agent = Agent::start(&agent_args(
        &setup,
        &[
            "--cluster",
            NO_OIDC_DIRECT,
            "--signal-pid",
            &pid,
            "--signal",
            "HUP",
        ],
    ))
    .expect("agent");
    assert!(
        eventually(Duration::from_secs(10), || async {
            read(&received).lines().count() == 1
        })
        .await,
        "the initial sync is signalled once"
    );
    edit(
        &setup.fixture.inventory().join("no-oidc-direct.yaml"),
        "https://10.0.0.4:6443",
        "https://10.0.0.47:6443",
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            read(&received).lines().count() == 2
        })
        .await,
        "the edit is signalled"
    );
    let _ = application.kill();
    let _ = application.wait();
}

/// `known_etags` keys name clusters as `cluster_uids` do: a key whose uid breaks the uid rule, an
/// overlong etag, or more keys than `--max-watch-known-etags` is refused with INVALID_ARGUMENT naming
/// the field, before anything is evaluated or echoed back.
#[tokio::test]
async fn known_etags_are_validated_like_cluster_uids() {
    let setup = setup(&[]).await;
    let request = |known: &[(String, String)]| pb::WatchKubeconfigsRequest {
        known_etags: known.iter().cloned().collect(),
        ..Default::default()
    };
    for key in [
        "<script>alert(1)</script>/kubeconfig",
        "../../etc/passwd/kubeconfig",
        "UPPER/kubeconfig",
        "/kubeconfig",
        &format!("{}/kubeconfig", "a".repeat(65)),
    ] {
        let refused = open_watch(
            &setup.server,
            ADMIN_KEY,
            request(&[(key.to_owned(), "e".to_owned())]),
        )
        .await
        .expect_err(key);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{key}");
        assert!(
            refused.message().starts_with("known_etags"),
            "{key}: {}",
            refused.message()
        );
    }
    let long_etag = [(format!("{NO_OIDC_DIRECT}/kubeconfig"), "e".repeat(1000))];
    let refused = open_watch(&setup.server, ADMIN_KEY, request(&long_etag))
        .await
        .expect_err("an overlong etag");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("known_etags"),
        "{}",
        refused.message()
    );
}

/// At most `--max-watch-known-etags` entries: at the bound a watch opens, one more is refused (and
/// counted).
#[tokio::test]
async fn known_etags_are_bounded_in_number() {
    let setup = setup(&["--max-watch-known-etags", "4"]).await;
    let request = |known: &[(String, String)]| pb::WatchKubeconfigsRequest {
        known_etags: known.iter().cloned().collect(),
        ..Default::default()
    };
    let keys: Vec<(String, String)> = (0..5)
        .map(|i| {
            (
                format!("00000000000000000000ff0{i}/kubeconfig"),
                "e".to_owned(),
            )
        })
        .collect();
    let mut stream = open_watch(&setup.server, ADMIN_KEY, request(&keys[..4]))
        .await
        .expect("four known etags");
    until_synced(&mut stream).await;
    let refused = open_watch(&setup.server, ADMIN_KEY, request(&keys))
        .await
        .expect_err("five known etags");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("known_etags"),
        "{}",
        refused.message()
    );
    let metrics = kubeconfigd_e2e::metrics(&setup.server)
        .await
        .expect("metrics");
    assert_eq!(metrics["kubeconfigd_watch_known_etags_refused_total"], 1.0);
}

async fn readyz(health: &str) -> (u16, String) {
    match reqwest::get(format!("http://{health}/readyz")).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

/// A FIFO planted where the agent's file goes: the agent must neither block on it (a blocked agent
/// answers no probe and ignores SIGTERM) nor read it, and replaces it with the file.
#[tokio::test]
async fn a_fifo_planted_in_the_out_dir_neither_blocks_the_agent_nor_survives() {
    let setup = setup(&[]).await;
    std::fs::create_dir_all(&setup.out).expect("out");
    let planted = setup.out.join("no-oidc-direct.kubeconfig");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&planted)
            .status()
            .expect("mkfifo")
            .success()
    );
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    // Bounded probes: a blocked agent accepts the connection and never answers.
    assert!(
        eventually(Duration::from_secs(15), || async {
            tokio::time::timeout(Duration::from_secs(1), ready(&health))
                .await
                .unwrap_or(false)
        })
        .await,
        "{}",
        agent.log_text()
    );
    let meta = std::fs::symlink_metadata(&planted).expect("meta");
    assert!(meta.is_file(), "the FIFO was replaced by the file");
    assert!(read(&planted).contains("https://10.0.0.4:6443"));
    let pid = agent.pid().expect("pid");
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    let status = agent
        .wait_exit(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(status.success());
}

/// The server accepts cluster names of up to 253 characters, longer than a file name may be once
/// the agent's affixes are added: the agent shortens the name and writes every file.
#[tokio::test]
async fn a_253_character_cluster_name_is_written_beside_the_others() {
    let setup = setup(&[]).await;
    let long = format!("l{}", "o".repeat(251)) + "g";
    assert_eq!(long.len(), 253);
    edit(
        &setup.fixture.inventory().join("no-oidc-direct.yaml"),
        "name: no-oidc-direct",
        &format!("name: {long}"),
    );
    // The server has the new name before the agent starts.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let Ok(mut client) = setup.server.client().await else {
                return false;
            };
            client
                .get_kubeconfig(kubeconfigd_e2e::with_key(
                    pb::GetKubeconfigRequest {
                        uid: NO_OIDC_DIRECT.to_owned(),
                        ..Default::default()
                    },
                    ADMIN_KEY,
                ))
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .kubeconfig
                        .is_some_and(|k| k.file_name.starts_with("looo"))
                })
        })
        .await
    );
    let mut agent = Agent::start(&agent_args(&setup, &["--once", "--all"])).expect("agent");
    let status = agent.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(status.success(), "{}", agent.log_text());
    let names: Vec<String> = std::fs::read_dir(&setup.out)
        .expect("out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let shortened = names
        .iter()
        .find(|n| n.starts_with("looo"))
        .expect("the long-named cluster's file");
    assert!(shortened.len() <= 242, "{shortened}");
    kube::config::Kubeconfig::from_yaml(&read(&setup.out.join(shortened))).expect("loadable");
}

/// A file the agent cannot write (here a directory is in its place) fails alone: the others are
/// written, /readyz and the metrics say which one failed, and it is written once it can be.
#[tokio::test]
async fn one_file_that_cannot_be_written_blocks_no_other_and_shows_on_readyz() {
    let setup = setup(&[]).await;
    let obstacle = setup.out.join("no-oidc-direct.kubeconfig");
    std::fs::create_dir_all(obstacle.join("occupied")).expect("obstacle");
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    assert!(
        eventually(Duration::from_secs(15), || async {
            metric(&health, "kubeconfig_agent_synced").await == 1.0
        })
        .await,
        "{}",
        agent.log_text()
    );
    assert!(read(&setup.out.join("oidc-direct.kubeconfig")).contains("kind: Config"));
    assert_eq!(files_in(&setup.out), 4);
    let (status, body) = readyz(&health).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no-oidc-direct.kubeconfig"), "{body}");
    assert_eq!(metric(&health, "kubeconfig_agent_files_failing").await, 1.0);
    assert!(metric(&health, "kubeconfig_agent_write_failures_total").await >= 1.0);
    // The obstacle goes: the file is written at the next retry, and the agent is ready.
    std::fs::remove_dir_all(&obstacle).expect("rm");
    assert!(
        eventually(Duration::from_secs(15), || ready(&health)).await,
        "{}",
        agent.log_text()
    );
    assert!(read(&obstacle).contains("https://10.0.0.4:6443"));
    assert_eq!(metric(&health, "kubeconfig_agent_files_failing").await, 0.0);
}

/// Found by the soak (bench/soak.sh): a removed API key ended the agent's watch, but the agent kept
/// every file it held, for as long as the key stayed removed.
#[tokio::test]
async fn an_agent_deletes_its_files_when_its_api_key_is_removed() {
    let setup = setup(&[]).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    assert!(eventually(Duration::from_secs(15), || ready(&health)).await);
    assert_eq!(files_in(&setup.out), 4);
    let started = Instant::now();
    remove_admin_key(&setup);
    assert!(
        eventually(Duration::from_secs(2), || async {
            files_in(&setup.out) == 0
        })
        .await,
        "{}",
        agent.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    agent.kill();
}

/// Found by the soak: an agent that was reconnecting (its replica restarting) when its API key was
/// removed was refused at the next connection and kept its files.
#[tokio::test]
async fn an_agent_reconnecting_after_its_key_was_removed_deletes_its_files() {
    let mut setup = setup(&[]).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut agent =
        Agent::start(&agent_args(&setup, &["--all", "--health-addr", &health])).expect("agent");
    assert!(eventually(Duration::from_secs(15), || ready(&health)).await);
    assert_eq!(files_in(&setup.out), 4);
    setup.server.kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&health, "kubeconfig_agent_connected").await == 0.0
        })
        .await
    );
    remove_admin_key(&setup);
    assert_eq!(
        files_in(&setup.out),
        4,
        "no server, no decision: the files stay"
    );
    setup.server.restart().await.expect("restart");
    assert!(
        eventually(Duration::from_secs(15), || async {
            files_in(&setup.out) == 0
        })
        .await,
        "{}",
        agent.log_text()
    );
    agent.kill();
}
