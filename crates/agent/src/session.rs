//! The watch session: connect to kubeconfigd, open `WatchKubeconfigs` with the etags already held,
//! apply events to disk in batches, tell the application, and reconnect with jittered exponential
//! backoff whenever the stream ends — keeping every file meanwhile. A batch is bounded in events and
//! time, files that could not be written are retried, and the credential goes in plaintext only to a
//! loopback address unless `--allow-insecure` says otherwise. When the credential files change, or
//! the token in hand nears its expiry ([`crate::credentials`]), the watch reconnects at once with the
//! new credential; the etags it holds make the server send only what changed, so no file is rewritten.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1 as pb;
use pb::kubeconfig_service_client::KubeconfigServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use crate::credentials::CredentialFile;
use crate::credentials::{Presented, Renewal, Sources};
use crate::health::Stats;
use crate::holdings::{Holdings, Limits};
use crate::output::{Asset, Key, Names, Output};

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub ca_file: Option<PathBuf>,
    /// The credential files: a token or API key, a client certificate, or a certificate and one of
    /// the others.
    pub credentials: Sources,
    /// How often the credential files are checked for a change while watching.
    pub credential_check: Duration,
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
    /// Reconnect at once with a renewed credential.
    Renew(String),
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
    /// What the last connection presented (to wake from a backoff when the files change).
    fingerprint: Option<[u8; 32]>,
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

/// The endpoint for `settings.server`, with TLS (the CA, and the client certificate presented) for
/// `https://`.
pub fn endpoint(settings: &Settings, presented: &Presented) -> Result<Endpoint, String> {
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
        if let Some((cert, key)) = &presented.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    Ok(endpoint)
}

async fn channel(settings: &Settings, presented: &Presented) -> Result<Channel, String> {
    endpoint(settings, presented)?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {}", settings.server, root_cause(&e)))
}

/// What went wrong at the bottom of an error's chain (`Connection refused (os error 111)`, not
/// tonic's `transport error`).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The reason of a `Revoked` event sent because the watch's credential stopped authenticating.
const CREDENTIAL_REFUSED: &str = "UNAUTHENTICATED";

fn proto_asset(asset: Asset) -> pb::WatchedAsset {
    match asset {
        Asset::Kubeconfig => pb::WatchedAsset::Kubeconfig,
        Asset::AdminKubeconfig => pb::WatchedAsset::AdminKubeconfig,
    }
}

fn request(
    settings: &Settings,
    state: &State,
    presented: &Presented,
) -> tonic::Request<pb::WatchKubeconfigsRequest> {
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
    presented.authorize(request.metadata_mut());
    request
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
    // The merged file's directory is made like `--out-dir` (as kubectl makes ~/.kube).
    if let Some(dir) = settings
        .output
        .merged
        .as_deref()
        .and_then(std::path::Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("--merged {}: {e}", dir.display()))?;
    }
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
        fingerprint: None,
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
            Ended::Renew(reason) => {
                stats.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(reason = %reason, "reconnecting; keeping the files held");
                continue;
            }
        };
        let pause = backoff.mul_f64(0.5 + fastrand::f64());
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if let Some(deadline) = deadline
            && tokio::time::Instant::now() + pause > deadline
        {
            return Err(format!("gave up: {reason}"));
        }
        tracing::warn!(reason = %reason, retry_in = %humantime::format_duration(Duration::from_millis(pause.as_millis() as u64)), "watch interrupted; keeping the files held");
        pause_unless_renewed(&settings, state.fingerprint, pause).await;
    }
}

/// Sleeps for `pause`, or less when the credential files change meanwhile (or, when they could not be
/// read, become readable): a credential refused as expired or revoked is retried as soon as a new one
/// is on disk, not after the backoff.
async fn pause_unless_renewed(settings: &Settings, fingerprint: Option<[u8; 32]>, pause: Duration) {
    let until = tokio::time::Instant::now() + pause;
    let step = settings.credential_check.min(Duration::from_secs(1));
    while tokio::time::Instant::now() < until {
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + step)).await;
        if crate::credentials::changed(&settings.credentials, fingerprint.as_ref()) {
            tracing::info!(files = %settings.credentials.flags(), "the credential changed; reconnecting now");
            return;
        }
    }
}

async fn session(
    settings: &Settings,
    state: &mut State,
    stats: &Stats,
    backoff: &mut Duration,
) -> Ended {
    let presented = match crate::credentials::read(&settings.credentials) {
        Ok(presented) => presented,
        Err(message) if settings.once.is_some() => return Ended::Fatal(message),
        Err(message) => return Ended::Retry(message),
    };
    state.fingerprint = Some(presented.fingerprint);
    let request = request(settings, state, &presented);
    let channel = match channel(settings, &presented).await {
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
    let expires_in = presented.expires.map(|at| {
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        humantime::format_duration(Duration::from_secs(left.as_secs())).to_string()
    });
    tracing::info!(server = %settings.server, held = state.holdings.files.len(), token_expires_in = expires_in.as_deref(), "watching");
    // `--once` ends long before any credential is renewed.
    let mut renewal = settings
        .once
        .is_none()
        .then(|| Renewal::new(&presented, settings.credential_check));
    // Nothing is written until this stream's initial state is complete.
    state.holdings.synced = false;
    loop {
        // One batch: the first event whenever it comes (while files are failing, no later than the
        // next retry; no later than the next look at the credential files), then whatever follows
        // within the window, up to the batch's bounds.
        let mut wake = renewal.as_ref().map(Renewal::wake);
        if !state.write_failures.is_empty() {
            let retry = tokio::time::Instant::now() + RETRY_FAILED;
            wake = Some(wake.map_or(retry, |at| at.min(retry)));
        }
        let first = match wake {
            None => Ok(stream.message().await),
            Some(at) => tokio::time::timeout_at(at, stream.message()).await,
        };
        let mut ended = None;
        match first {
            Err(_) => {
                // A renewal waits for no batch: the held files stay, and the new stream resumes
                // from their etags.
                if let Some(reason) = renewal.as_mut().and_then(|r| {
                    r.check(&settings.credentials, |fresh| {
                        endpoint(settings, fresh).map(drop)
                    })
                }) {
                    return Ended::Renew(reason);
                }
            }
            Ok(Ok(Some(event))) => {
                if let Some(renew) = refused_but_renewed(settings, state, &event) {
                    return renew;
                }
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
                            if let Some(renew) = refused_but_renewed(settings, state, &event) {
                                flush_if_synced(settings, state, stats).await;
                                return renew;
                            }
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

/// The server takes files back with reason `UNAUTHENTICATED` when the credential the stream was
/// opened with stops authenticating (its API key removed). If the credential files already hold a
/// different credential (a rotation whose old key was removed within the check interval), nothing
/// is deleted: the watch reconnects with the new credential at once, and the server decides again
/// (a refused new credential gets the files taken back at that connection).
fn refused_but_renewed(
    settings: &Settings,
    state: &State,
    event: &pb::WatchKubeconfigsResponse,
) -> Option<Ended> {
    let refused = event.r#type() == pb::watch_kubeconfigs_response::Type::Revoked
        && event.reason == CREDENTIAL_REFUSED;
    (refused && crate::credentials::changed(&settings.credentials, state.fingerprint.as_ref())).then(
        || {
            Ended::Renew(
                "the server no longer accepts the credential this watch was opened with; a new one is in the files"
                    .to_owned(),
            )
        },
    )
}

/// Writes what a batch cut short by a renewal already applied.
async fn flush_if_synced(settings: &Settings, state: &mut State, stats: &Stats) {
    if state.holdings.synced {
        flush(settings, state, stats).await;
    }
}

fn ended_by(settings: &Settings, status: &tonic::Status) -> Ended {
    if settings.once.is_none() && status.code() == tonic::Code::Unauthenticated {
        // An expired or revoked credential: the next attempt reads the files again, and the backoff
        // is cut short as soon as they change.
        tracing::warn!(
            status = %describe(status),
            files = %settings.credentials.flags(),
            "the server no longer accepts the credential; re-reading it and reconnecting"
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{CredentialFile, Sources};

    fn settings(server: &str, credentials: Sources, ca_file: Option<PathBuf>) -> Settings {
        Settings {
            server: server.to_owned(),
            ca_file,
            credentials,
            credential_check: Duration::from_secs(5),
            clusters: Vec::new(),
            project: None,
            assets: vec![Asset::Kubeconfig],
            frp: true,
            output: Output {
                out_dir: None,
                merged: None,
            },
            once: None,
            on_change: None,
            signal: None,
            keep_on_revoke: false,
            limits: Limits::default(),
            plaintext_remote: false,
        }
    }

    #[test]
    fn the_tls_settings_present_the_client_certificate_read_from_the_files() {
        let dir = tempfile::tempdir().expect("dir");
        let pair = rcgen::generate_simple_self_signed(vec!["workload.example".to_owned()])
            .expect("certificate");
        let (cert, key, ca) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("ca.crt"),
        );
        std::fs::write(&cert, pair.cert.pem()).expect("cert");
        std::fs::write(&key, pair.signing_key.serialize_pem()).expect("key");
        std::fs::write(&ca, pair.cert.pem()).expect("ca");
        let sources = Sources {
            secret: None,
            certificate: Some((cert.clone(), key.clone())),
        };
        let presented = crate::credentials::read(&sources).expect("read");
        let (read_cert, read_key) = presented.identity.clone().expect("an identity");
        assert_eq!(read_cert, pair.cert.pem().into_bytes());
        assert_eq!(read_key, pair.signing_key.serialize_pem().into_bytes());
        let mut metadata = tonic::metadata::MetadataMap::new();
        presented.authorize(&mut metadata);
        assert!(metadata.is_empty(), "a certificate alone sends no header");
        let settings = settings("https://kubeconfigd:50051", sources.clone(), Some(ca));
        assert!(endpoint(&settings, &presented).is_ok());

        // A key that does not parse is refused when the TLS settings are built, naming no secret.
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        )
        .expect("key");
        let broken = crate::credentials::read(&sources).expect("read");
        assert_ne!(
            broken.fingerprint, presented.fingerprint,
            "a new key is a change"
        );
        let refused = endpoint(&settings, &broken).expect_err("a broken key");
        assert!(refused.contains("TLS settings"), "{refused}");

        // With a token too, both are presented.
        let token = dir.path().join("token");
        std::fs::write(&token, "opaque\n").expect("token");
        std::fs::write(&key, pair.signing_key.serialize_pem()).expect("key");
        let both = Sources {
            secret: Some(CredentialFile::Token(token)),
            certificate: Some((cert, key)),
        };
        let presented = crate::credentials::read(&both).expect("read");
        assert!(presented.identity.is_some());
        let mut metadata = tonic::metadata::MetadataMap::new();
        presented.authorize(&mut metadata);
        assert_eq!(
            metadata.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer opaque")
        );
    }
}
