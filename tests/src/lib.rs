//! Test harness for the end-to-end suites: starts the real `kubeconfigd` binary on free loopback ports
//! against a temporary copy of a fixture, waits until it serves, and stops it on drop.
//!
//! The binary is looked up next to the test executable (`target/<profile>/kubeconfigd`), or at
//! `KUBECONFIGD_BIN`. A missing binary fails loudly: build it first (`cargo build --workspace --bins`,
//! which the README's test command does).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod fleet;

use anyhow::{Context as _, bail};
use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient;
use tonic::transport::Channel;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `kubeconfigd` binary to test.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECONFIGD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bench binary> -> target/<profile>/kubeconfigd
    let dir = exe.parent().context("no parent dir")?;
    let candidate = if dir.ends_with("deps") {
        dir.parent().context("no parent dir")?.join("kubeconfigd")
    } else {
        dir.join("kubeconfigd")
    };
    if !candidate.is_file() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` before the end-to-end tests",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The log file opened for appending: stdout and stderr (and a restarted process) each get their own
/// descriptor, and without `O_APPEND` each would write from its own offset over the others' lines.
fn appending(log: &tempfile::NamedTempFile) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).open(log.path())
}

/// What a process wrote to its log so far. Not `read_to_string(…).unwrap_or_default()`: a log that is
/// not UTF-8 is a finding, not an empty log.
fn log_text_of(log: &tempfile::NamedTempFile) -> String {
    let bytes = std::fs::read(log.path()).unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("the log is not UTF-8: {e}"))
}

/// The `kubeconfig-agent` binary, next to `kubeconfigd` (or at `KUBECONFIG_AGENT_BIN`).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECONFIG_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    let candidate = binary()?.with_file_name("kubeconfig-agent");
    if !candidate.is_file() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` before the end-to-end tests",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// A running `kubeconfig-agent` process; killed on drop.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Agent {
    /// Starts the agent with `args` (stdout and stderr to a log).
    pub fn start(args: &[String]) -> anyhow::Result<Agent> {
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(agent_binary()?)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(appending(&log)?)
            .stderr(appending(&log)?)
            .spawn()
            .context("spawn kubeconfig-agent")?;
        Ok(Agent {
            child: Some(child),
            log,
        })
    }

    /// Everything the agent printed so far.
    pub fn log_text(&self) -> String {
        log_text_of(&self.log)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits (bounded) for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.take().context("already stopped")?;
        wait_child(child, timeout)?.with_context(|| {
            format!(
                "the agent did not exit within {timeout:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) for `child` to exit; kills and reaps it when it does not (`None`).
fn wait_child(mut child: Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port (bound, read, released).
/// The grpcurl to run: `$GRPCURL`, else one on `PATH`, else the one `scripts/test.sh` installs in
/// the virtualenv.
pub fn grpcurl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("grpcurl"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| workspace_root().join(".venv/bin/grpcurl"))
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A copy of a fixture folder in a temporary directory.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| from.display().to_string())? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

impl Fixture {
    /// Copies `tests/fixtures/matrix` with the tenant's policy mode set to `mode`.
    pub fn matrix(mode: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        copy_dir(&workspace_root().join("tests/fixtures/matrix"), dir.path())?;
        let tenant = dir.path().join("tenant.yaml");
        let text =
            std::fs::read_to_string(&tenant)?.replace("policy: seed", &format!("policy: {mode}"));
        std::fs::write(&tenant, text)?;
        Ok(Fixture { dir })
    }

    pub fn tenant(&self) -> PathBuf {
        self.dir.path().join("tenant.yaml")
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory")
    }

    /// The flags that point the server at this fixture.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tenant".to_owned(),
            self.tenant().display().to_string(),
            "--inventory".to_owned(),
            self.inventory().display().to_string(),
        ]
    }
}

/// A running `kubeconfigd` process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub admin: SocketAddr,
    log: tempfile::NamedTempFile,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts the binary with `args` plus free gRPC, REST and admin ports, and waits until it is ready.
    pub async fn start(args: &[String]) -> anyhow::Result<Server> {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`Server::start`], with extra environment variables.
    /// A port picked by `free_port` can be taken by a parallel test before the server binds it; such a
    /// start is retried with new ports (any other failure is returned at once).
    pub async fn start_with_env(args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(args, env).await {
                Err(error)
                    if attempt < 4
                        && format!("{error:#}")
                            .to_ascii_lowercase()
                            .contains("address already in use") =>
                {
                    continue;
                }
                result => return result,
            }
        }
    }

    /// Starts the process and returns at once, before it is ready (for watching it load); see
    /// [`Server::wait_until_ready`].
    pub fn spawn_loading(args: &[String]) -> anyhow::Result<Server> {
        let mut server = Self::unstarted(args, &[])?;
        server.spawn()?;
        Ok(server)
    }

    /// Waits (at most 20 s) until a server from [`Server::spawn_loading`] is ready.
    pub async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        self.wait_ready().await
    }

    /// A server on free ports, not started yet.
    fn unstarted(args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Server> {
        Ok(Server {
            child: None,
            grpc: format!("127.0.0.1:{}", free_port()?).parse()?,
            rest: format!("127.0.0.1:{}", free_port()?).parse()?,
            admin: format!("127.0.0.1:{}", free_port()?).parse()?,
            log: tempfile::NamedTempFile::new()?,
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    async fn start_once(args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let mut server = Self::unstarted(args, env)?;
        server.spawn()?;
        server.wait_ready().await?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(binary()?);
        command
            .args(&self.args)
            .arg("--grpc-addr")
            .arg(self.grpc.to_string())
            .arg("--rest-addr")
            .arg(self.rest.to_string())
            .arg("--admin-addr")
            .arg(self.admin.to_string())
            .env("RUST_LOG", "info,redis=error")
            .stdin(Stdio::null())
            .stdout(appending(&self.log)?)
            .stderr(appending(&self.log)?);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().context("spawn kubeconfigd")?);
        Ok(())
    }

    /// Kills the process (SIGKILL) and leaves it stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the same flags and ports after it stopped (a
    /// [`Server::terminate`] or [`Server::kill`]), and waits until it is ready.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "kubeconfigd is still running");
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts the process again with the same flags and ports (after [`Server::kill`]), and waits
    /// until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "kubeconfigd exited during start-up with {status}:\n{}",
                    self.log_text()
                );
            }
            let admin_ok = client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if admin_ok && tokio::net::TcpStream::connect(self.grpc).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kubeconfigd did not start within 20 s:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        log_text_of(&self.log)
    }

    /// Whether a log line satisfying `line` appears within 2 s (the server writes its log off the
    /// request path, a few milliseconds behind).
    pub async fn logged(&self, line: impl Fn(&str) -> bool) -> bool {
        eventually(Duration::from_secs(2), || async {
            self.log_text().lines().any(&line)
        })
        .await
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// `http://127.0.0.1:<rest port>`.
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.rest)
    }

    /// A connected gRPC channel.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.grpc_url())?.connect().await?)
    }

    /// A gRPC client of the API.
    pub async fn client(&self) -> anyhow::Result<KubeconfigServiceClient<Channel>> {
        Ok(KubeconfigServiceClient::new(self.channel().await?))
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.pid().context("already stopped")?;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        self.terminate_wait(timeout)
    }

    /// Waits (bounded) for the process to exit after a signal was sent.
    pub fn terminate_wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.take().context("already stopped")?;
        wait_child(child, timeout)?
            .with_context(|| format!("kubeconfigd did not exit within {timeout:?} after SIGTERM"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Adds credentials to a gRPC request.
pub fn with_key<T>(message: T, api_key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = api_key.parse() {
        request.metadata_mut().insert("apikey", value);
    }
    request
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `redis-server` started for a test on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    tls: bool,
}

fn redis_ping(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl RedisServer {
    /// Starts a standalone server.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(free_port()?, tempfile::tempdir()?, Vec::new())
    }

    /// Starts a standalone server that keeps its data across a restart of the process: an
    /// append-only file, written at every command and synced once a second (Redis's default for it;
    /// syncing at every write stalled the server for over a second now and then on a shared disk).
    pub fn start_persistent() -> anyhow::Result<Self> {
        let extra = ["--appendonly", "yes", "--appendfsync", "everysec"]
            .map(str::to_owned)
            .to_vec();
        Self::start_with(free_port()?, tempfile::tempdir()?, extra)
    }

    /// Starts a standalone server with extra `redis-server` options.
    pub fn start_with_options(options: &[&str]) -> anyhow::Result<Self> {
        let extra = options.iter().map(|o| (*o).to_owned()).collect();
        Self::start_with(free_port()?, tempfile::tempdir()?, extra)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the process (SIGSTOP): connections stay open and nothing is answered.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a frozen process go on (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("redis-server is not running")?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// The node's replication role (`master` or `slave`), or `None` when it does not answer.
    pub fn role(&self) -> Option<String> {
        let out = self.cli(&["role"]).ok()?;
        let text = String::from_utf8_lossy(&out);
        let role = text.lines().next()?.trim();
        (!role.is_empty()).then(|| role.to_owned())
    }

    fn start_with(port: u16, dir: tempfile::TempDir, extra: Vec<String>) -> anyhow::Result<Self> {
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra,
            tls: false,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts a server that speaks only TLS (`rediss://`), with the test certificate under
    /// `tests/fixtures/tls`.
    pub fn start_tls() -> anyhow::Result<Self> {
        let pki = workspace_root().join("tests/fixtures/tls");
        let port = free_port()?;
        let extra = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            pki.join("server.crt").display().to_string(),
            "--tls-key-file".to_owned(),
            pki.join("server.key").display().to_string(),
            "--tls-ca-cert-file".to_owned(),
            pki.join("ca.crt").display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir()?,
            extra,
            tls: true,
        };
        server.restart()?;
        Ok(server)
    }

    /// (Re)starts the process on the same port and directory.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "redis-server is required for the cache tests (scripts/test.sh installs it)",
            )?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            if Instant::now() > deadline {
                bail!("redis-server on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn ping(&self) -> bool {
        if self.tls {
            self.cli(&["PING"])
                .is_ok_and(|out| out.starts_with(b"PONG"))
        } else {
            redis_ping(self.port)
        }
    }

    /// `redis://127.0.0.1:<port>` (or `rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stores arbitrary bytes under `key` (`redis-cli -x` reads the value from stdin).
    pub fn set_bytes(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if self.tls {
            let ca = workspace_root().join("tests/fixtures/tls/ca.crt");
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        let mut child = command
            .args(["-x", "SET", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("redis-cli")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(value)
            .context("write value")?;
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "redis-cli -x SET failed: {status}");
        Ok(())
    }

    /// Runs `redis-cli` against this server and returns its raw stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string(), "--raw"]);
        if self.tls {
            let ca = workspace_root().join("tests/fixtures/tls/ca.crt");
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        let output = command.args(args).output().context("redis-cli")?;
        Ok(output.stdout)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local Redis Cluster.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(3, 0)
    }

    /// `masters` masters with `replicas` replicas each (`redis-cli --cluster create` picks which
    /// node replicates which).
    pub fn start_with(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = free_port()?;
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(RedisServer::start_with(port, tempfile::tempdir()?, extra)?);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .context("redis-cli --cluster create")?;
        if !status.success() {
            bail!("redis-cli --cluster create failed");
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Waits until every node reports `cluster_state:ok`.
    pub fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.nodes.iter().all(|n| {
                n.cli(&["cluster", "info"])
                    .is_ok_and(|out| String::from_utf8_lossy(&out).contains("cluster_state:ok"))
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("redis cluster did not reach cluster_state:ok");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed URLs, comma-separated, for `--redis-cluster`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Reads `/metrics` into (name with labels → value).
pub async fn metrics(server: &Server) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let text = reqwest::get(format!("{}/metrics", server.admin_url()))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        })
        .collect())
}
