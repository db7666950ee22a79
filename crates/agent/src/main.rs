//! `kubeconfig-agent`: runs next to an application (a native sidecar, or an init container with
//! `--once`) and keeps kubeconfig files fresh from kubeconfigd's `WatchKubeconfigs` stream. It writes
//! one file per cluster (`--out-dir`) and/or one merged kubeconfig (`--merged`), atomically and only
//! when bytes change; deletes a file when access is revoked or the cluster is removed; tells the
//! application (`--on-change`, `--signal-pid`); and keeps its files while the server is away,
//! reconnecting with jittered exponential backoff. Every flag has an environment fallback. This file
//! is the command line only; the agent itself is the `kubeconfig_agent` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use kubeconfig_agent::holdings::Limits;
use kubeconfig_agent::output::{Asset, Output};
use kubeconfig_agent::{health, session};
use session::{CredentialFile, Settings};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// A size such as `1MiB`, `512KiB` or `1048576`.
fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text.parse()?;
    usize::try_from(size.as_u64()).map_err(|e| e.to_string())
}

/// Keeps kubeconfig files fresh from kubeconfigd.
#[derive(Debug, Parser)]
#[command(name = "kubeconfig-agent", version)]
struct Args {
    /// kubeconfigd's gRPC address, `https://host:port`, or `http://host:port` for a loopback address
    /// (another host over plain http needs --allow-insecure).
    #[arg(long, env = "KUBECONFIG_AGENT_SERVER")]
    server: String,
    /// Send the credential over plain http to a non-loopback server (anyone on the path can read it).
    #[arg(long, env = "KUBECONFIG_AGENT_ALLOW_INSECURE")]
    allow_insecure: bool,
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
    /// The largest file accepted from the server (larger ones are refused and counted).
    #[arg(long, env = "KUBECONFIG_AGENT_MAX_FILE_SIZE", default_value = "1MiB", value_parser = parse_size)]
    max_file_size: usize,
    /// The most files held at once (more are refused and counted).
    #[arg(long, env = "KUBECONFIG_AGENT_MAX_FILES", default_value_t = 10_000)]
    max_files: usize,
    /// The most bytes held at once, all files together (more are refused and counted).
    #[arg(long, env = "KUBECONFIG_AGENT_MAX_TOTAL_SIZE", default_value = "256MiB", value_parser = parse_size)]
    max_total_size: usize,
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
    let plaintext_remote = session::check_server(&args.server, args.allow_insecure)?;
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
        limits: Limits {
            max_file_size: args.max_file_size,
            max_files: args.max_files,
            max_total_size: args.max_total_size,
        },
        plaintext_remote,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(server: &str, extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec![
            "kubeconfig-agent",
            "--server",
            server,
            "--api-key-file",
            "key",
            "--all",
            "--out-dir",
            "out",
        ];
        argv.extend(extra);
        settings(&Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn the_credential_goes_over_plain_http_only_to_loopback_unless_allowed() {
        for server in [
            "http://127.0.0.1:50051",
            "http://127.9.9.9:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
            "https://kubeconfigd:50051",
        ] {
            assert!(parsed(server, &[]).is_ok(), "{server}");
        }
        for server in [
            "http://kubeconfigd:50051",
            "http://10.0.0.1:50051",
            "http://[fd00::1]:50051",
            "http://localhost.example:50051",
        ] {
            let refused = parsed(server, &[]).err().unwrap_or_default();
            assert!(
                refused.contains("--allow-insecure"),
                "{server}: {refused:?}"
            );
            assert!(parsed(server, &["--allow-insecure"]).is_ok(), "{server}");
        }
    }

    #[test]
    fn limits_have_defaults_and_take_sizes() {
        let settings = parsed("http://127.0.0.1:1", &[]).expect("defaults");
        assert_eq!(settings.limits, Limits::default());
        let settings = parsed(
            "http://127.0.0.1:1",
            &[
                "--max-file-size",
                "64KiB",
                "--max-files",
                "3",
                "--max-total-size",
                "1MiB",
            ],
        )
        .expect("limits");
        assert_eq!(
            settings.limits,
            Limits {
                max_file_size: 64 << 10,
                max_files: 3,
                max_total_size: 1 << 20,
            }
        );
    }
}
