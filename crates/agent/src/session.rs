//! The watch session: connect to kubeconfigd, open `WatchKubeconfigs` with the etags already held,
//! apply events to disk in batches, tell the application, and reconnect with jittered exponential
//! backoff whenever the stream ends — keeping every file meanwhile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1 as pb;
use pb::kubeconfig_service_client::KubeconfigServiceClient;
use pb::watch_kubeconfigs_response::Type;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::health::Stats;
use crate::output::{Asset, Files, Held, Output};

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
}

/// The first backoff after a failure, and the most.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Events that arrive within this of each other are applied (and announced) together.
const BATCH_WINDOW: Duration = Duration::from_millis(25);

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
    files: Files,
    /// The file name of each held file, as last written.
    names: crate::output::Names,
    /// Files received since the last write.
    dirty: BTreeSet<(String, Asset)>,
    /// What the server said about files it did not send (`--once` reports these).
    problems: BTreeMap<(String, Asset), String>,
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
    let mut state = State {
        files: Files::new(),
        names: BTreeMap::new(),
        dirty: BTreeSet::new(),
        problems: BTreeMap::new(),
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
    let mut client = KubeconfigServiceClient::new(channel);
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
    tracing::info!(server = %settings.server, held = state.files.len(), "watching");
    let mut synced = false;
    let mut pending_changes = false;
    loop {
        // One batch: the first event whenever it comes, then whatever follows within the window.
        let mut batch = Vec::new();
        match stream.message().await {
            Ok(Some(event)) => batch.push(event),
            Ok(None) => return Ended::Retry("the server ended the stream".to_owned()),
            Err(status) => return ended_by(settings, &status),
        }
        // A status at the end of a batch: apply what arrived first, then end as it says.
        let mut ended = None;
        loop {
            match tokio::time::timeout(BATCH_WINDOW, stream.message()).await {
                Err(_) | Ok(Ok(None)) => break,
                Ok(Ok(Some(event))) => batch.push(event),
                Ok(Err(status)) => {
                    ended = Some(status);
                    break;
                }
            }
        }
        let was_synced = synced;
        apply_events(
            settings,
            state,
            stats,
            batch,
            &mut synced,
            &mut pending_changes,
        );
        if synced && let Err(message) = flush(settings, state, stats, &mut pending_changes).await {
            if settings.once.is_some() {
                return Ended::Fatal(message);
            }
            tracing::error!(error = %message, "cannot write the files");
        }
        if synced && !was_synced {
            *backoff = BACKOFF_FIRST;
            stats.synced.store(true, Ordering::Relaxed);
            tracing::info!(files = state.files.len(), "synced");
            if settings.once.is_some() {
                return once_result(settings, state);
            }
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
            let key = (uid.clone(), *asset);
            if !state.files.contains_key(&key) {
                let why = state
                    .problems
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| "not sent by the server".to_owned());
                failures.push(format!("cluster {uid} ({}): {why}", asset.as_str()));
            }
        }
    }
    if failures.is_empty() {
        Ended::Done
    } else {
        Ended::Fatal(failures.join("; "))
    }
}

fn apply_events(
    settings: &Settings,
    state: &mut State,
    stats: &Stats,
    events: Vec<pb::WatchKubeconfigsResponse>,
    synced: &mut bool,
    changed: &mut bool,
) {
    for event in events {
        stats.events.fetch_add(1, Ordering::Relaxed);
        let asset = match event.asset() {
            pb::WatchedAsset::AdminKubeconfig => Asset::AdminKubeconfig,
            _ => Asset::Kubeconfig,
        };
        let key = (event.cluster_uid.clone(), asset);
        match event.r#type() {
            Type::Synced => *synced = true,
            Type::Upsert => {
                let Some(kubeconfig) = event.kubeconfig else {
                    continue;
                };
                state.problems.remove(&key);
                let held = Held {
                    cluster_name: event.cluster_name,
                    file_name: kubeconfig.file_name,
                    etag: kubeconfig.etag,
                    yaml: kubeconfig.yaml,
                };
                if state.files.get(&key) != Some(&held) {
                    tracing::info!(cluster = %key.0, asset = asset.as_str(), file = %held.file_name, "file changed");
                    state.dirty.insert(key.clone());
                    state.files.insert(key, held);
                    *changed = true;
                }
            }
            Type::Revoked | Type::Removed => {
                tracing::warn!(cluster = %key.0, asset = asset.as_str(), reason = %event.reason, message = %event.message, "access ended");
                state
                    .problems
                    .insert(key.clone(), format!("{}: {}", event.reason, event.message));
                if !settings.keep_on_revoke && state.files.remove(&key).is_some() {
                    *changed = true;
                }
            }
            Type::Unavailable => {
                tracing::warn!(cluster = %key.0, asset = asset.as_str(), message = %event.message, "cluster unavailable; keeping its file");
                state
                    .problems
                    .insert(key, format!("{}: {}", event.reason, event.message));
            }
            Type::Unspecified => {}
        }
    }
}

/// Puts the held files on disk and tells the application, when anything changed.
async fn flush(
    settings: &Settings,
    state: &mut State,
    stats: &Stats,
    pending: &mut bool,
) -> Result<(), String> {
    if !*pending && !state.names.is_empty() {
        return Ok(());
    }
    // Small writes of this agent's own files: done in place, without copying what is held.
    let (applied, names) = settings
        .output
        .apply(&state.files, &state.dirty, &state.names)
        .map_err(|e| format!("writing files: {e}"))?;
    *pending = false;
    state.dirty.clear();
    state.names = names;
    stats
        .files_held
        .store(state.files.len() as u64, Ordering::Relaxed);
    stats
        .files_written
        .fetch_add(applied.written.len() as u64, Ordering::Relaxed);
    stats
        .files_removed
        .fetch_add(applied.removed.len() as u64, Ordering::Relaxed);
    if applied.is_empty() {
        return Ok(());
    }
    for path in &applied.written {
        tracing::info!(path = %path.display(), "written");
    }
    for path in &applied.removed {
        tracing::info!(path = %path.display(), "removed");
    }
    notify(settings, stats, &applied).await;
    Ok(())
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
