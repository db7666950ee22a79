//! `kubeconfig-agent`: runs next to an application (a native sidecar, or an init container with
//! `--once`) and keeps kubeconfig files fresh from kubeconfigd's `WatchKubeconfigs` stream. It writes
//! one file per cluster (`--out-dir`) and/or one merged kubeconfig (`--merged`), atomically and only
//! when bytes change; deletes a file when access is revoked or the cluster is removed; tells the
//! application (`--on-change`, `--signal-pid`); and keeps its files while the server is away,
//! reconnecting with jittered exponential backoff. Every flag has an environment fallback.

mod health;
mod output;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::output::{Asset, Output};
use crate::session::{CredentialFile, Settings};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Keeps kubeconfig files fresh from kubeconfigd.
#[derive(Debug, Parser)]
#[command(name = "kubeconfig-agent", version)]
struct Args {
    /// kubeconfigd's gRPC address, `http://host:port` or `https://host:port`.
    #[arg(long, env = "KUBECONFIG_AGENT_SERVER")]
    server: String,
    /// CA bundle (PEM) that signed the server's certificate (https only; default: the system roots
    /// are not used, so give this for https).
    #[arg(long, env = "KUBECONFIG_AGENT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --client-key-file.
    #[arg(
        long,
        env = "KUBECONFIG_AGENT_CLIENT_CERT_FILE",
        requires = "client_key_file"
    )]
    client_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(
        long,
        env = "KUBECONFIG_AGENT_CLIENT_KEY_FILE",
        requires = "client_cert_file"
    )]
    client_key_file: Option<PathBuf>,
    /// File holding the API key (re-read at every connection).
    #[arg(
        long,
        env = "KUBECONFIG_AGENT_API_KEY_FILE",
        conflicts_with = "token_file",
        required_unless_present = "token_file"
    )]
    api_key_file: Option<PathBuf>,
    /// File holding a bearer token, e.g. a projected service-account token (re-read at every
    /// connection, so rotation is picked up).
    #[arg(long, env = "KUBECONFIG_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A cluster uid to keep (repeatable).
    #[arg(
        long = "cluster",
        env = "KUBECONFIG_AGENT_CLUSTERS",
        value_delimiter = ',',
        conflicts_with = "all",
        required_unless_present = "all"
    )]
    clusters: Vec<String>,
    /// Every cluster visible to the credential instead of named ones.
    #[arg(long, env = "KUBECONFIG_AGENT_ALL")]
    all: bool,
    /// With --all: only this project's clusters.
    #[arg(long, env = "KUBECONFIG_AGENT_PROJECT", requires = "all")]
    project: Option<String>,
    /// The admin kubeconfig instead of the kubeconfig.
    #[arg(long, env = "KUBECONFIG_AGENT_ADMIN")]
    admin: bool,
    /// The direct API server even when the Spectro Proxy is enabled (the kubeconfig only).
    #[arg(long, env = "KUBECONFIG_AGENT_DIRECT")]
    direct: bool,
    /// Directory for one file per cluster (`<cluster name>.kubeconfig`, mode 0600).
    #[arg(
        long,
        env = "KUBECONFIG_AGENT_OUT_DIR",
        required_unless_present = "merged"
    )]
    out_dir: Option<PathBuf>,
    /// One kubeconfig with a context per cluster.
    #[arg(long, env = "KUBECONFIG_AGENT_MERGED")]
    merged: Option<PathBuf>,
    /// Init-container mode: exit 0 once every file is written; non-zero, naming what failed, when a
    /// cluster is unknown, denied or unavailable, or the credential is refused.
    #[arg(long, env = "KUBECONFIG_AGENT_ONCE")]
    once: bool,
    /// With --once: how long to keep retrying an unreachable server.
    #[arg(long, env = "KUBECONFIG_AGENT_ONCE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    once_timeout: Duration,
    /// A shell command run after each batch of changes on disk (KUBECONFIG_AGENT_CHANGED lists the
    /// paths, one per line).
    #[arg(long, env = "KUBECONFIG_AGENT_ON_CHANGE")]
    on_change: Option<String>,
    /// A process to signal after each batch of changes on disk.
    #[arg(long, env = "KUBECONFIG_AGENT_SIGNAL_PID")]
    signal_pid: Option<i32>,
    /// The signal for --signal-pid.
    #[arg(
        long,
        env = "KUBECONFIG_AGENT_SIGNAL",
        default_value = "SIGHUP",
        requires = "signal_pid"
    )]
    signal: String,
    /// Keep a file when access to it is revoked or its cluster removed (default: delete it).
    #[arg(long, env = "KUBECONFIG_AGENT_KEEP_ON_REVOKE")]
    keep_on_revoke: bool,
    /// Address for /healthz, /readyz (ready after the first full sync) and /metrics.
    #[arg(long, env = "KUBECONFIG_AGENT_HEALTH_ADDR")]
    health_addr: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, env = "KUBECONFIG_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn settings(args: &Args) -> Result<Settings, String> {
    let credential = match (&args.api_key_file, &args.token_file) {
        (Some(path), None) => CredentialFile::ApiKey(path.clone()),
        (None, Some(path)) => CredentialFile::Token(path.clone()),
        _ => return Err("give --api-key-file or --token-file".to_owned()),
    };
    let signal = match args.signal_pid {
        None => None,
        Some(pid) => {
            let name = if args.signal.starts_with("SIG") {
                args.signal.clone()
            } else {
                format!("SIG{}", args.signal)
            };
            let signal = nix::sys::signal::Signal::from_str(&name.to_ascii_uppercase())
                .map_err(|_| format!("--signal: {:?} is not a signal name", args.signal))?;
            Some((pid, signal))
        }
    };
    Ok(Settings {
        server: args.server.clone(),
        ca_file: args.ca_file.clone(),
        client_certificate: args
            .client_cert_file
            .clone()
            .zip(args.client_key_file.clone()),
        credential,
        clusters: args.clusters.clone(),
        project: args.project.clone(),
        assets: vec![if args.admin {
            Asset::AdminKubeconfig
        } else {
            Asset::Kubeconfig
        }],
        frp: !args.direct,
        output: Output {
            out_dir: args.out_dir.clone(),
            merged: args.merged.clone(),
        },
        once: args.once.then_some(args.once_timeout),
        on_change: args.on_change.clone(),
        signal,
        keep_on_revoke: args.keep_on_revoke,
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("kubeconfig-agent: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kubeconfig-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stats = Arc::new(health::Stats::default());
    let result = runtime.block_on(async {
        if let Some(addr) = args.health_addr {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--health-addr {addr}: {e}"))?;
            let router = health::router(Arc::clone(&stats));
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "health endpoint stopped");
                }
            });
        }
        tokio::select! {
            result = session::run(settings, Arc::clone(&stats)) => result,
            () = shutdown_signal() => {
                tracing::info!("stopping; the files stay");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "stopped");
            eprintln!("kubeconfig-agent: {message}");
            ExitCode::FAILURE
        }
    }
}
