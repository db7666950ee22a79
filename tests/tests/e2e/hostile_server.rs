//! The real `kubeconfig-agent` against a hostile server: a small fake of our own `KubeconfigService`
//! that sends whatever events a test scripts (file names that try to leave `--out-dir`, files larger
//! than any kubeconfig, clusters and assets the agent did not ask for). Each case fails on an agent
//! that trusts the server with paths and sizes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1 as pb;
use kubeconfigd_e2e::{Agent, eventually, free_port};
use pb::kubeconfig_service_server::{KubeconfigService, KubeconfigServiceServer};
use pb::watch_kubeconfigs_response::Type;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

type Events =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchKubeconfigsResponse, Status>> + Send>>;

/// Answers every watch with the scripted events, then keeps the stream open.
struct Scripted {
    events: Vec<pb::WatchKubeconfigsResponse>,
    /// After the scripted events: a new version of this cluster's file, without pause, forever.
    endless: Option<String>,
    /// The `apikey` values the watches carried.
    keys: Arc<Mutex<Vec<String>>>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the fake serves WatchKubeconfigs only",
    ))
}

#[tonic::async_trait]
impl KubeconfigService for Scripted {
    type WatchKubeconfigsStream = Events;

    async fn watch_kubeconfigs(
        &self,
        request: Request<pb::WatchKubeconfigsRequest>,
    ) -> Result<Response<Self::WatchKubeconfigsStream>, Status> {
        if let Some(key) = request
            .metadata()
            .get("apikey")
            .and_then(|v| v.to_str().ok())
        {
            self.keys.lock().expect("keys").push(key.to_owned());
        }
        let events = tokio_stream::iter(self.events.clone().into_iter().map(Ok));
        let Some(uid) = self.endless.clone() else {
            return Ok(Response::new(Box::pin(
                events.chain(tokio_stream::pending()),
            )));
        };
        let versions = tokio_stream::iter((0u64..).map(move |i| {
            let mut yaml = kubeconfig(&uid);
            yaml.push_str(&format!("# version {i}\n"));
            Ok(upsert(
                &uid,
                pb::WatchedAsset::Kubeconfig,
                "endless.kubeconfig",
                yaml,
            ))
        }));
        Ok(Response::new(Box::pin(events.chain(versions))))
    }
    async fn get_kubeconfig(
        &self,
        _: Request<pb::GetKubeconfigRequest>,
    ) -> Result<Response<pb::GetKubeconfigResponse>, Status> {
        unimplemented()
    }
    async fn get_admin_kubeconfig(
        &self,
        _: Request<pb::GetAdminKubeconfigRequest>,
    ) -> Result<Response<pb::GetAdminKubeconfigResponse>, Status> {
        unimplemented()
    }
    async fn get_kubeconfig_access(
        &self,
        _: Request<pb::GetKubeconfigAccessRequest>,
    ) -> Result<Response<pb::GetKubeconfigAccessResponse>, Status> {
        unimplemented()
    }
    async fn list_clusters(
        &self,
        _: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        unimplemented()
    }
    async fn check_kubeconfig(
        &self,
        _: Request<pb::CheckKubeconfigRequest>,
    ) -> Result<Response<pb::CheckKubeconfigResponse>, Status> {
        unimplemented()
    }
    async fn revoke_credential(
        &self,
        _: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        unimplemented()
    }
    async fn list_issued_credentials(
        &self,
        _: Request<pb::ListIssuedCredentialsRequest>,
    ) -> Result<Response<pb::ListIssuedCredentialsResponse>, Status> {
        unimplemented()
    }
    async fn who_am_i(
        &self,
        _: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        unimplemented()
    }
}

/// The fake server on a loopback port; stopped on drop.
struct FakeServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    async fn start(events: Vec<pb::WatchKubeconfigsResponse>) -> FakeServer {
        FakeServer::start_with(events, None).await
    }

    async fn start_with(
        events: Vec<pb::WatchKubeconfigsResponse>,
        endless: Option<String>,
    ) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let service = Scripted {
            events,
            endless,
            keys: Arc::default(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(KubeconfigServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        FakeServer { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kubeconfig(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: https://{name}.test:6443\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\ncurrent-context: {name}\nusers:\n- name: {name}\n  user:\n    token: t\n"
    )
}

fn upsert(
    uid: &str,
    asset: pb::WatchedAsset,
    file_name: &str,
    yaml: String,
) -> pb::WatchKubeconfigsResponse {
    let mut event = pb::WatchKubeconfigsResponse {
        cluster_uid: uid.to_owned(),
        cluster_name: format!("c-{uid}"),
        kubeconfig: Some(pb::Kubeconfig {
            etag: format!("etag-{uid}"),
            file_name: file_name.to_owned(),
            yaml,
            ..Default::default()
        }),
        ..Default::default()
    };
    event.set_type(Type::Upsert);
    event.set_asset(asset);
    event
}

fn synced() -> pb::WatchKubeconfigsResponse {
    let mut event = pb::WatchKubeconfigsResponse::default();
    event.set_type(Type::Synced);
    event
}

struct Paths {
    _dir: tempfile::TempDir,
    root: PathBuf,
    out: PathBuf,
    key: PathBuf,
}

fn paths() -> Paths {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let out = root.join("out");
    std::fs::create_dir(&out).expect("out");
    let key = root.join("agent.key");
    std::fs::write(&key, "hostile-test-key\n").expect("key");
    Paths {
        _dir: dir,
        root,
        out,
        key,
    }
}

fn agent(server: &FakeServer, paths: &Paths, health: &str, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--server".to_owned(),
        server.url(),
        "--api-key-file".to_owned(),
        paths.key.display().to_string(),
        "--out-dir".to_owned(),
        paths.out.display().to_string(),
        "--health-addr".to_owned(),
        health.to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Agent::start(&args).expect("agent")
}

async fn metrics_text(health: &str) -> String {
    match reqwest::get(format!("http://{health}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn metric(health: &str, name: &str) -> f64 {
    metrics_text(health)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

async fn synced_on_disk(health: &str) -> bool {
    metric(health, "kubeconfig_agent_synced").await == 1.0
}

/// Every entry under `dir` (recursively, not following links), relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read_dir").flatten() {
            let path = entry.path();
            all.push(path.strip_prefix(dir).expect("under").display().to_string());
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            }
        }
    }
    all.sort();
    all
}

#[tokio::test]
async fn file_names_from_the_server_never_leave_the_out_dir() {
    let paths = paths();
    let outside = paths.root.join("outside");
    std::fs::create_dir(&outside).expect("outside");
    std::os::unix::fs::symlink(&outside, paths.out.join("sub")).expect("symlink");
    let absolute = outside.join("absolute.kubeconfig");
    let kube = pb::WatchedAsset::Kubeconfig;
    let hostile = [
        ("aa01", "../escaped.kubeconfig".to_owned()),
        ("aa02", absolute.display().to_string()),
        ("aa03", "sub/linked.kubeconfig".to_owned()),
        ("aa04", ".".to_owned()),
        ("aa05", "..".to_owned()),
        ("aa06", String::new()),
    ];
    let mut events: Vec<_> = hostile
        .iter()
        .map(|(uid, name)| upsert(uid, kube, name, kubeconfig(uid)))
        .collect();
    events.push(upsert("aa07", kube, "good.kubeconfig", kubeconfig("aa07")));
    events.push(synced());
    let server = FakeServer::start(events).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let agent = agent(&server, &paths, &health, &["--all"]);
    assert!(
        eventually(Duration::from_secs(15), || synced_on_disk(&health)).await,
        "{}",
        agent.log_text()
    );
    let outside_files = tree(&outside);
    assert!(
        outside_files.is_empty(),
        "written outside: {outside_files:?}"
    );
    assert!(
        !paths.root.join("escaped.kubeconfig").exists(),
        "written in the parent"
    );
    let parent: Vec<String> = tree(&paths.root)
        .into_iter()
        .filter(|p| !p.contains('/') && p.contains(".tmp-"))
        .collect();
    assert!(
        parent.is_empty(),
        "temporary files in the parent: {parent:?}"
    );
    assert_eq!(
        tree(&paths.out),
        ["good.kubeconfig", "sub"],
        "{}",
        agent.log_text()
    );
    assert_eq!(
        metric(
            &health,
            "kubeconfig_agent_events_refused_total{reason=\"file_name\"}"
        )
        .await,
        6.0,
        "{}",
        metrics_text(&health).await
    );
    // Files the agent could not write are not ready, and /readyz says which.
    let readyz = reqwest::get(format!("http://{health}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 503);
    let body = readyz.text().await.expect("body");
    assert!(body.contains("aa01") && body.contains("aa06"), "{body}");
}

#[tokio::test]
async fn the_agent_keeps_what_it_asked_for_within_its_size_limits() {
    let paths = paths();
    let kube = pb::WatchedAsset::Kubeconfig;
    // 2 MiB: larger than any kubeconfig, and than the agent's default limit of 1 MiB.
    let mut huge = kubeconfig("aa01");
    huge.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
    let events = vec![
        upsert("aa01", kube, "huge.kubeconfig", huge),
        upsert("aa02", kube, "asked.kubeconfig", kubeconfig("aa02")),
        upsert("ff99", kube, "stranger.kubeconfig", kubeconfig("ff99")),
        upsert(
            "aa02",
            pb::WatchedAsset::AdminKubeconfig,
            "admin.asked.kubeconfig",
            kubeconfig("aa02"),
        ),
        synced(),
    ];
    let server = FakeServer::start(events).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let agent = agent(
        &server,
        &paths,
        &health,
        &["--cluster", "aa01", "--cluster", "aa02"],
    );
    assert!(
        eventually(Duration::from_secs(15), || synced_on_disk(&health)).await,
        "{}",
        agent.log_text()
    );
    assert_eq!(
        tree(&paths.out),
        ["asked.kubeconfig"],
        "{}",
        agent.log_text()
    );
    let text = metrics_text(&health).await;
    assert_eq!(
        metric(
            &health,
            "kubeconfig_agent_events_refused_total{reason=\"not_requested\"}"
        )
        .await,
        2.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &health,
            "kubeconfig_agent_events_refused_total{reason=\"too_large\"}"
        )
        .await,
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_file_count_limit_refuses_the_files_past_it() {
    let paths = paths();
    let kube = pb::WatchedAsset::Kubeconfig;
    let mut events: Vec<_> = (1..=5)
        .map(|i| {
            let uid = format!("aa0{i}");
            upsert(&uid, kube, &format!("{uid}.kubeconfig"), kubeconfig(&uid))
        })
        .collect();
    events.push(synced());
    let server = FakeServer::start(events).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let agent = agent(&server, &paths, &health, &["--all", "--max-files", "3"]);
    assert!(
        eventually(Duration::from_secs(15), || synced_on_disk(&health)).await,
        "{}",
        agent.log_text()
    );
    assert_eq!(
        tree(&paths.out),
        ["aa01.kubeconfig", "aa02.kubeconfig", "aa03.kubeconfig"]
    );
    assert_eq!(
        metric(
            &health,
            "kubeconfig_agent_events_refused_total{reason=\"too_many_files\"}"
        )
        .await,
        2.0
    );
}

/// A server that never pauses between events: the agent still writes (a batch is bounded in events
/// and time) instead of collecting events for as long as they keep coming.
#[tokio::test]
async fn an_endless_stream_of_events_is_written_in_bounded_batches() {
    let paths = paths();
    let server = FakeServer::start_with(vec![synced()], Some("aa01".to_owned())).await;
    let health = format!("127.0.0.1:{}", free_port().expect("port"));
    let agent = agent(&server, &paths, &health, &["--all"]);
    let file = paths.out.join("endless.kubeconfig");
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(&file).is_ok_and(|t| t.contains("# version"))
        })
        .await,
        "{}",
        agent.log_text()
    );
    assert!(metric(&health, "kubeconfig_agent_batches_cut_total").await >= 1.0);
}
