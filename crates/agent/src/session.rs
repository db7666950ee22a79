//! The watch session: connect to kubeconfigd, open `WatchKubeconfigs` with the etags already held,
//! apply events to disk in batches, tell the application, and reconnect with jittered exponential
//! backoff whenever the stream ends — keeping every file meanwhile. A batch is bounded in events and
//! time, files that could not be written are retried, and the credential goes in plaintext only to a
//! loopback address unless `--allow-insecure` says otherwise.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1 as pb;
use pb::kubeconfig_service_client::KubeconfigServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::health::Stats;
use crate::holdings::{Holdings, Limits};
use crate::output::{Asset, Key, Names, Output};

/// How the agent authenticates: a file re-read at every connection (projected service-account
/// tokens rotate).
#[derive(Debug, Clone)]
pub enum CredentialFile {
    ApiKey(PathBuf),
    Token(PathBuf),
}

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub ca_file: Option<PathBuf>,
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    pub credential: CredentialFile,
    pub clusters: Vec<String>,
    pub project: Option<String>,
    pub assets: Vec<Asset>,
    pub frp: bool,
    pub output: Output,
    pub once: Option<Duration>,
    pub on_change: Option<String>,
    pub signal: Option<(i32, nix::sys::signal::Signal)>,
    pub keep_on_revoke: bool,
    pub limits: Limits,
    /// Whether the credential goes in plaintext to a non-loopback server (`--allow-insecure`).
    pub plaintext_remote: bool,
}

/// Whether `server` may be given the credential: `https://` always; `http://` only to a loopback
/// address (`localhost`, 127.0.0.0/8, `::1`) unless `allow_insecure`. Returns whether the credential
/// will travel in plaintext to another host.
pub fn check_server(server: &str, allow_insecure: bool) -> Result<bool, String> {
    let uri: http::Uri = server
        .parse()
        .map_err(|e| format!("--server {server:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("--server {server:?}: no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(false),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = bare.eq_ignore_ascii_case("localhost")
                || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(false)
            } else if allow_insecure {
                Ok(true)
            } else {
                Err(format!(
                    "--server {server}: the credential would travel in plaintext to {host}, which is not a loopback address; use https:// (with --ca-file), or accept the risk with --allow-insecure (KUBECONFIG_AGENT_ALLOW_INSECURE=true)"
                ))
            }
        }
        _ => Err(format!(
            "--server {server:?}: the scheme must be http:// or https://"
        )),
    }
}

/// The first backoff after a failure, and the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Events that arrive within this of each other are applied (and announced) together.
const BATCH_WINDOW: Duration = Duration::from_millis(25);
/// A batch is written once it holds this many events or has been collected this long, however fast
/// more arrive.
const BATCH_MAX_EVENTS: usize = 1024;
const BATCH_MAX_TIME: Duration = Duration::from_secs(1);
/// How often files that could not be written are tried again.
const RETRY_FAILED: Duration = Duration::from_secs(2);
/// The largest message accepted from the server, beyond a file's own size.
const MESSAGE_OVERHEAD: usize = 64 << 10;

/// Why a session ended.
enum Ended {
    /// Reconnect after a pause.
    Retry(String),
    /// Stop with this message (`--once`, or a problem no retry fixes).
    Fatal(String),
    /// `--once` is done.
    Done,
}

struct State {
    holdings: Holdings,
    /// The file name of each held file, as last written.
    names: Names,
    /// Files (or the merged file) whose last write failed, and why.
    write_failures: BTreeMap<String, String>,
    /// Whether the files have been put on disk at least once.
    flushed: bool,
}

impl State {
    /// Each file wanted but not on disk as it should be, and why.
    fn failing(&self) -> Vec<String> {
        let refused = self.holdings.refused.iter().map(|((uid, asset), why)| {
            format!("cluster {uid} ({}): refused: {why}", asset.as_str())
        });
        let failed = self
            .write_failures
            .iter()
            .map(|(what, why)| format!("{what}: {why}"));
        refused.chain(failed).collect()
    }
}

fn read_secret(path: &PathBuf, what: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let value = text.trim().to_owned();
    if value.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(value)
}

async fn channel(settings: &Settings) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(settings.server.clone())
        .map_err(|e| format!("--server {}: {e}", settings.server))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if settings.server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &settings.client_certificate {
            let cert = std::fs::read(cert)
                .map_err(|e| format!("--client-cert-file {}: {e}", cert.display()))?;
            let key = std::fs::read(key)
                .map_err(|e| format!("--client-key-file {}: {e}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", settings.server))
}

fn proto_asset(asset: Asset) -> pb::WatchedAsset {
    match asset {
        Asset::Kubeconfig => pb::WatchedAsset::Kubeconfig,
        Asset::AdminKubeconfig => pb::WatchedAsset::AdminKubeconfig,
    }
}

fn request(
    settings: &Settings,
    state: &State,
) -> Result<tonic::Request<pb::WatchKubeconfigsRequest>, String> {
    let state = &state.holdings;
    let message = pb::WatchKubeconfigsRequest {
        cluster_uids: settings.clusters.clone(),
        project_uid: settings.project.clone().unwrap_or_default(),
        assets: settings
            .assets
            .iter()
            .map(|a| proto_asset(*a) as i32)
            .collect(),
        frp: Some(settings.frp),
        known_etags: state
            .files
            .iter()
            .map(|((uid, asset), held)| (format!("{uid}/{}", asset.as_str()), held.etag.clone()))
            .collect::<HashMap<_, _>>(),
    };
    let mut request = tonic::Request::new(message);
    let (header, value) = match &settings.credential {
        CredentialFile::ApiKey(path) => ("apikey", read_secret(path, "--api-key-file")?),
        CredentialFile::Token(path) => (
            "authorization",
            format!("Bearer {}", read_secret(path, "--token-file")?),
        ),
    };
    let value = value
        .parse()
        .map_err(|_| format!("the {header} credential is not a valid header value"))?;
    request.metadata_mut().insert(header, value);
    Ok(request)
}

/// Whether a refusal will not go away by retrying the same request (the credential file may still
/// change, so outside `--once` these are retried too, just more slowly).
fn permanent(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::Unimplemented
    )
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Runs until `--once` is done (Ok) or fails (Err with the message to print), or forever.
pub async fn run(settings: Settings, stats: Arc<Stats>) -> Result<(), String> {
    if let Some(dir) = &settings.output.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("--out-dir {}: {e}", dir.display()))?;
        crate::output::remove_leftovers(dir);
    }
    if let Some(parent) = settings.output.merged.as_ref().and_then(|m| m.parent())
        && !parent.as_os_str().is_empty()
    {
        crate::output::remove_leftovers(parent);
    }
    stats
        .plaintext_credential
        .store(settings.plaintext_remote, Ordering::Relaxed);
    if settings.plaintext_remote {
        tracing::warn!(server = %settings.server, "--allow-insecure: the credential travels in plaintext to a non-loopback server");
    }
    let mut state = State {
        holdings: Holdings::new(
            &settings.clusters,
            &settings.assets,
            settings.limits,
            settings.keep_on_revoke,
        ),
        names: Names::new(),
        write_failures: BTreeMap::new(),
        flushed: false,
    };
    let deadline = settings
        .once
        .map(|limit| tokio::time::Instant::now() + limit);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let ended = session(&settings, &mut state, &stats, &mut backoff).await;
        stats.connected.store(false, Ordering::Relaxed);
        let reason = match ended {
            Ended::Done => return Ok(()),
            Ended::Fatal(message) => return Err(message),
            Ended::Retry(reason) => reason,
        };
        let pause = backoff.mul_f64(0.5 + fastrand::f64());
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if let Some(deadline) = deadline
            && tokio::time::Instant::now() + pause > deadline
        {
            return Err(format!("gave up: {reason}"));
        }
        tracing::warn!(reason = %reason, retry_in = %humantime::format_duration(Duration::from_millis(pause.as_millis() as u64)), "watch interrupted; keeping the files held");
        tokio::time::sleep(pause).await;
    }
}

async fn session(
    settings: &Settings,
    state: &mut State,
    stats: &Stats,
    backoff: &mut Duration,
) -> Ended {
    let request = match request(settings, state) {
        Ok(request) => request,
        Err(message) if settings.once.is_some() => return Ended::Fatal(message),
        Err(message) => return Ended::Retry(message),
    };
    let channel = match channel(settings).await {
        Ok(channel) => channel,
        Err(message) => return Ended::Retry(message),
    };
    let mut client = KubeconfigServiceClient::new(channel).max_decoding_message_size(
        settings
            .limits
            .max_file_size
            .saturating_add(MESSAGE_OVERHEAD)
            .max(4 << 20),
    );
    let mut stream = match client.watch_kubeconfigs(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if settings.once.is_some() && permanent(status.code()) => {
            return Ended::Fatal(format!(
                "the server refused the watch: {}",
                describe(&status)
            ));
        }
        Err(status) => {
            if permanent(status.code()) {
                *backoff = (*backoff).max(Duration::from_secs(5));
            }
            return Ended::Retry(format!(
                "the server refused the watch: {}",
                describe(&status)
            ));
        }
    };
    stats.connected.store(true, Ordering::Relaxed);
    stats.connects.fetch_add(1, Ordering::Relaxed);
    tracing::info!(server = %settings.server, held = state.holdings.files.len(), "watching");
    // Nothing is written until this stream's initial state is complete.
    state.holdings.synced = false;
    loop {
        // One batch: the first event whenever it comes (while files are failing, no later than the
        // next retry), then whatever follows within the window, up to the batch's bounds.
        let first = if state.write_failures.is_empty() {
            Ok(stream.message().await)
        } else {
            tokio::time::timeout(RETRY_FAILED, stream.message()).await
        };
        let mut ended = None;
        match first {
            Err(_) => {}
            Ok(Ok(Some(event))) => {
                state.holdings.apply(event, stats);
                let started = tokio::time::Instant::now();
                let mut events = 1;
                loop {
                    if events >= BATCH_MAX_EVENTS || started.elapsed() >= BATCH_MAX_TIME {
                        stats.batches_cut.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    match tokio::time::timeout(BATCH_WINDOW, stream.message()).await {
                        Err(_) | Ok(Ok(None)) => break,
                        Ok(Ok(Some(event))) => {
                            state.holdings.apply(event, stats);
                            events += 1;
                        }
                        // A status at the end of a batch: apply what arrived first, then end.
                        Ok(Err(status)) => {
                            ended = Some(status);
                            break;
                        }
                    }
                }
            }
            Ok(Ok(None)) => return Ended::Retry("the server ended the stream".to_owned()),
            Ok(Err(status)) => return ended_by(settings, &status),
        }
        let synced = state.holdings.synced;
        if synced {
            flush(settings, state, stats).await;
        }
        if synced && !stats.synced.load(Ordering::Relaxed) {
            stats.synced.store(true, Ordering::Relaxed);
            tracing::info!(files = state.holdings.files.len(), "synced");
        }
        if synced && settings.once.is_some() {
            return once_result(settings, state);
        }
        if synced {
            *backoff = BACKOFF_FIRST;
        }
        if let Some(status) = ended {
            return ended_by(settings, &status);
        }
    }
}

fn ended_by(settings: &Settings, status: &tonic::Status) -> Ended {
    if settings.once.is_some() && permanent(status.code()) {
        Ended::Fatal(format!("the watch ended: {}", describe(status)))
    } else {
        Ended::Retry(format!("the watch ended: {}", describe(status)))
    }
}

fn once_result(settings: &Settings, state: &State) -> Ended {
    let mut failures = Vec::new();
    for uid in &settings.clusters {
        for asset in &settings.assets {
            let key: Key = (uid.clone(), *asset);
            if !state.holdings.files.contains_key(&key)
                && !state.holdings.refused.contains_key(&key)
            {
                let why = state
                    .holdings
                    .problems
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| "not sent by the server".to_owned());
                failures.push(format!("cluster {uid} ({}): {why}", asset.as_str()));
            }
        }
    }
    failures.extend(state.failing());
    if failures.is_empty() {
        Ended::Done
    } else {
        Ended::Fatal(failures.join("; "))
    }
}

/// Puts the held files on disk and tells the application, when anything changed or a file is to be
/// tried again. A file that cannot be written is logged, counted, listed by `/readyz` and retried; it
/// holds up no other.
async fn flush(settings: &Settings, state: &mut State, stats: &Stats) {
    if state.flushed && !state.holdings.changed && state.write_failures.is_empty() {
        stats.set_failing(state.failing());
        return;
    }
    let holdings = &mut state.holdings;
    let (applied, names) = settings
        .output
        .apply(&holdings.files, &holdings.dirty, &state.names);
    holdings.changed = false;
    holdings.dirty.clear();
    state.flushed = true;
    state.names = names;
    state.write_failures.clear();
    for failure in &applied.failed {
        stats.write_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %failure.path.display(), error = %failure.error, "cannot write the file; will retry");
        if let Some(key) = &failure.key {
            // Written again at the next flush, even if its bytes do not change.
            state.holdings.dirty.insert(key.clone());
        }
        let what = match &failure.key {
            Some((uid, asset)) => format!(
                "{} (cluster {uid}, {})",
                failure.path.display(),
                asset.as_str()
            ),
            None => failure.path.display().to_string(),
        };
        state.write_failures.insert(what, failure.error.clone());
    }
    stats.set_failing(state.failing());
    stats
        .files_held
        .store(state.holdings.files.len() as u64, Ordering::Relaxed);
    stats
        .files_written
        .fetch_add(applied.written.len() as u64, Ordering::Relaxed);
    stats
        .files_removed
        .fetch_add(applied.removed.len() as u64, Ordering::Relaxed);
    if applied.is_empty() {
        return;
    }
    for path in &applied.written {
        tracing::info!(path = %path.display(), "written");
    }
    for path in &applied.removed {
        tracing::info!(path = %path.display(), "removed");
    }
    notify(settings, stats, &applied).await;
}

async fn notify(settings: &Settings, stats: &Stats, applied: &crate::output::Applied) {
    if let Some(command) = &settings.on_change {
        let changed: Vec<String> = applied
            .written
            .iter()
            .chain(&applied.removed)
            .map(|p| p.display().to_string())
            .collect();
        stats.on_change_runs.fetch_add(1, Ordering::Relaxed);
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("KUBECONFIG_AGENT_CHANGED", changed.join("\n"))
            .stdin(std::process::Stdio::null())
            .status()
            .await;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                stats.on_change_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%status, "--on-change command failed");
            }
            Err(error) => {
                stats.on_change_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "--on-change command could not run");
            }
        }
    }
    if let Some((pid, signal)) = settings.signal
        && let Err(error) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
    {
        tracing::warn!(pid, %signal, %error, "cannot signal the application");
    }
}
