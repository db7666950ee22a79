//! `kubeconfig-agent`: runs next to an application (a native sidecar, or an init container with
//! `--once`) and keeps kubeconfig files fresh from kubeconfigd's `WatchKubeconfigs` stream. It writes
//! one file per cluster (`--out-dir`) and/or one merged kubeconfig (`--merged`), atomically and only
//! when bytes change; deletes a file when access is revoked or the cluster is removed; tells the
//! application (`--on-change`, `--signal-pid`); and keeps its files while the server is away,
//! reconnecting with jittered exponential backoff. It authenticates with a token file (a projected
//! service-account token), an API key file, a client certificate, or a certificate with one of the
//! others, and reconnects with the new credential when the files are rewritten or the token in hand
//! nears its expiry. Every flag has an environment fallback. This file
//! is the command line only; the agent itself is the `kubeconfig_agent` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use kubeconfig_agent::credentials::{CredentialFile, Sources};
use kubeconfig_agent::holdings::Limits;
use kubeconfig_agent::output::{Asset, Output};
use kubeconfig_agent::{health, session};
use session::Settings;

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
// Groups, so that a missing choice is reported with its alternatives (`<--cluster <CLUSTERS>|--all>`).
#[command(group(clap::ArgGroup::new("which").args(["clusters", "all"]).required(true)))]
#[command(group(clap::ArgGroup::new("destination").args(["out_dir", "merged"]).required(true).multiple(true)))]
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
    /// Client certificate (PEM, with its chain) for mutual TLS over https://; needs --key-file. A
    /// credential on its own, or with --token-file or --api-key-file. Re-read when it changes.
    #[arg(
        long,
        alias = "client-cert-file",
        env = "KUBECONFIG_AGENT_CERT_FILE",
        requires = "key_file"
    )]
    cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        alias = "client-key-file",
        env = "KUBECONFIG_AGENT_KEY_FILE",
        requires = "cert_file"
    )]
    key_file: Option<PathBuf>,
    /// File holding the API key (re-read at every connection, and when it changes).
    #[arg(
        long,
        env = "KUBECONFIG_AGENT_API_KEY_FILE",
        conflicts_with = "token_file"
    )]
    api_key_file: Option<PathBuf>,
    /// File holding a bearer token, e.g. a projected service-account token. Re-read at every
    /// connection, when it changes (the watch reconnects with the new token) and shortly before a
    /// JWT's `exp`.
    #[arg(long, env = "KUBECONFIG_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// How often the credential files are checked for a change while watching.
    #[arg(long, env = "KUBECONFIG_AGENT_CREDENTIAL_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    credential_check_interval: Duration,
    /// A cluster uid to keep (repeatable).
    #[arg(
        long = "cluster",
        env = "KUBECONFIG_AGENT_CLUSTERS",
        value_delimiter = ',',
        conflicts_with = "all"
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
    #[arg(long, env = "KUBECONFIG_AGENT_OUT_DIR")]
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
    let secret = match (&args.api_key_file, &args.token_file) {
        (Some(path), None) => Some(CredentialFile::ApiKey(path.clone())),
        (None, Some(path)) => Some(CredentialFile::Token(path.clone())),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err("give --api-key-file or --token-file, not both".to_owned());
        }
    };
    let certificate = args.cert_file.clone().zip(args.key_file.clone());
    if secret.is_none() && certificate.is_none() {
        return Err(
            "give a credential: --token-file, --api-key-file, or --cert-file with --key-file"
                .to_owned(),
        );
    }
    if certificate.is_some() && !args.server.starts_with("https://") {
        return Err(format!(
            "--cert-file needs an https:// --server (a client certificate is presented over TLS only), not {}",
            args.server
        ));
    }
    if args.credential_check_interval < Duration::from_millis(100)
        || args.credential_check_interval > Duration::from_secs(86_400)
    {
        return Err("--credential-check-interval: between 100ms and 24h".to_owned());
    }
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
        credentials: Sources {
            secret,
            certificate,
        },
        credential_check: args.credential_check_interval,
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
            .fmt_fields(kubeconfig_logline::Fields)
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
            // Said once: as a log line where logs are JSON (for the collector), else as plain text.
            if matches!(args.log_format, LogFormat::Json) {
                tracing::error!(error = %message, "stopped");
            } else {
                eprintln!("kubeconfig-agent: {message}");
            }
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

    fn credentials(extra: &[&str]) -> Result<Sources, String> {
        let mut argv = vec![
            "kubeconfig-agent",
            "--server",
            "https://kubeconfigd:50051",
            "--all",
            "--out-dir",
            "out",
        ];
        argv.extend(extra);
        Ok(settings(&Args::try_parse_from(argv).map_err(|e| e.to_string())?)?.credentials)
    }

    #[test]
    fn a_certificate_is_a_credential_alone_or_with_a_token_or_key() {
        let cert = ["--cert-file", "tls.crt", "--key-file", "tls.key"];
        let alone = credentials(&cert).expect("a certificate alone");
        assert!(alone.secret.is_none() && alone.certificate.is_some());
        let with_token =
            credentials(&[&cert[..], &["--token-file", "token"]].concat()).expect("with a token");
        assert!(matches!(with_token.secret, Some(CredentialFile::Token(_))));
        assert!(with_token.certificate.is_some());
        let with_key = credentials(&[&cert[..], &["--api-key-file", "key"]].concat())
            .expect("with an API key");
        assert!(matches!(with_key.secret, Some(CredentialFile::ApiKey(_))));
        let old_names = credentials(&["--client-cert-file", "a", "--client-key-file", "b"])
            .expect("the former flag names");
        assert!(old_names.certificate.is_some());

        let none = credentials(&[]).err().unwrap_or_default();
        assert!(none.contains("give a credential"), "{none}");
        assert!(credentials(&["--token-file", "t", "--api-key-file", "k"]).is_err());
        assert!(credentials(&["--cert-file", "tls.crt"]).is_err(), "no key");
        let plain = parsed("http://127.0.0.1:1", &cert)
            .err()
            .unwrap_or_default();
        assert!(plain.contains("https://"), "{plain}");
    }

    #[test]
    fn the_credential_check_interval_has_a_default_and_bounds() {
        let settings = parsed("http://127.0.0.1:1", &[]).expect("defaults");
        assert_eq!(settings.credential_check, Duration::from_secs(5));
        for bad in ["0s", "10ms", "2days"] {
            assert!(
                parsed("http://127.0.0.1:1", &["--credential-check-interval", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
