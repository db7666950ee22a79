//! Command-line flags with `KUBECONFIGD_*` environment fallbacks. A bad value fails at start with a
//! message naming the flag (clap does that for typed values; [`Config::from_args`] for the rest).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kubeconfig_cache::{RedisConfig, RedisTarget, Sealer};

use crate::service::auth::TokenSettings;
use crate::service::auth::configuration::AuthenticationConfiguration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 0, 512KiB, 64MiB, 1GiB)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}

/// kubeconfigd: hands out kubeconfig files for managed Kubernetes clusters over gRPC and REST.
#[derive(Debug, Clone, Parser)]
#[command(name = "kubeconfigd", version, about)]
pub struct Args {
    /// Directory of cluster files (`*.yaml`, `*.yml`), one cluster per file; watched for changes.
    #[arg(
        long,
        env = "KUBECONFIGD_INVENTORY",
        value_name = "DIR",
        required_unless_present_any = ["demo", "demo_dir"]
    )]
    pub inventory: Option<PathBuf>,
    /// The tenant file (projects, roles, users, bindings, proxy and OIDC settings); watched for changes.
    #[arg(
        long,
        env = "KUBECONFIGD_TENANT",
        value_name = "FILE",
        required_unless_present_any = ["demo", "demo_dir"]
    )]
    pub tenant: Option<PathBuf>,
    /// Serve the built-in demo tenant and inventory (ignores --inventory and --tenant).
    #[arg(long, env = "KUBECONFIGD_DEMO", conflicts_with_all = ["inventory", "tenant"])]
    pub demo: bool,
    /// The demo as files to edit: writes the demo's tenant file and cluster files into DIR (those
    /// missing; an edited file is kept) and serves them from there, watched like any inventory.
    #[arg(long, env = "KUBECONFIGD_DEMO_DIR", value_name = "DIR", conflicts_with_all = ["inventory", "tenant", "demo"])]
    pub demo_dir: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:50051; 127.0.0.1:50051 with --demo].
    #[arg(long, env = "KUBECONFIGD_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// REST listen address [default: 0.0.0.0:8080; 127.0.0.1:8080 with --demo].
    #[arg(long, env = "KUBECONFIGD_REST_ADDR")]
    pub rest_addr: Option<SocketAddr>,
    /// Do not serve the REST shim.
    #[arg(long, env = "KUBECONFIGD_NO_REST")]
    pub no_rest: bool,
    /// Admin listen address (plain HTTP): /healthz, /readyz, /metrics and /openapi.json. Served with or
    /// without --no-rest. [default: 0.0.0.0:8081; 127.0.0.1:8081 with --demo]
    #[arg(long, env = "KUBECONFIGD_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
    /// Connections open at once over the gRPC and REST listeners together; more are closed at accept.
    #[arg(long, env = "KUBECONFIGD_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A connection with no request or stream open for this long is closed, whatever else the peer
    /// sends (answering HTTP/2 keepalive PINGs does not keep an idle connection open).
    #[arg(long, env = "KUBECONFIGD_IDLE_TIMEOUT", default_value = "1m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A connection's first request must start within this time of connecting; HTTP/1 request headers
    /// must arrive within it (on a keep-alive connection, counted from the previous answer); and a gRPC
    /// call's request message must be complete within it of the call's headers.
    #[arg(long, env = "KUBECONFIGD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// HTTP/2 streams (calls) one connection may have open at once, advertised to clients as
    /// SETTINGS_MAX_CONCURRENT_STREAMS on the gRPC and REST listeners.
    #[arg(long, env = "KUBECONFIGD_MAX_STREAMS_PER_CONNECTION", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// HTTP/2 keepalive: a PING is sent after this much silence ...
    #[arg(long, env = "KUBECONFIGD_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// ... and the connection is closed when its answer does not come within this time.
    #[arg(long, env = "KUBECONFIGD_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// A TLS handshake must complete within this time.
    #[arg(long, env = "KUBECONFIGD_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// TLS handshakes in progress at once; connections beyond are closed at accept.
    #[arg(long, env = "KUBECONFIGD_MAX_TLS_HANDSHAKES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tls_handshakes: u32,
    /// Required `iss` of bearer tokens.
    #[arg(long, env = "KUBECONFIGD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of bearer tokens.
    #[arg(long, env = "KUBECONFIGD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// File holding the HS256 shared secret for bearer tokens (at least 32 bytes).
    #[arg(
        long,
        env = "KUBECONFIGD_JWT_HS256_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "jwt_public_key_file"
    )]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM public key (RSA for RS256, EC P-256 for ES256) that verifies bearer tokens.
    #[arg(long, env = "KUBECONFIGD_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Longest a bearer token may still be used, measured from now (`exp - now`, whatever its `iat`
    /// says); an `iat` in the future or after `exp` is refused.
    #[arg(long, env = "KUBECONFIGD_JWT_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub jwt_max_lifetime: Duration,
    /// Trusted token issuers: a kube-apiserver `AuthenticationConfiguration` file (`jwt:` entries;
    /// CEL expressions are not supported), plus `issuer.jwks` / `issuer.jwksFile` for issuers that
    /// cannot be reached. Re-read when it changes (a bad edit keeps the last good version).
    #[arg(long, env = "KUBECONFIGD_AUTHENTICATION_CONFIG", value_name = "FILE")]
    pub authentication_config: Option<PathBuf>,
    /// How often the key sets of `--authentication-config` issuers are fetched again (a failed fetch
    /// keeps the last good keys).
    #[arg(long, env = "KUBECONFIGD_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub jwks_refresh_interval: Duration,
    /// A token naming a key its issuer's set lacks fetches the set again at once, but at most once
    /// per this interval per issuer (tokens that come in between are refused at once).
    #[arg(long, env = "KUBECONFIGD_JWKS_MIN_REFRESH_INTERVAL", default_value = "3s", value_parser = parse_duration)]
    pub jwks_min_refresh_interval: Duration,
    /// Deadline for one call, gRPC or REST.
    #[arg(long, env = "KUBECONFIGD_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Calls served at once; more are refused with 429 / RESOURCE_EXHAUSTED. A gRPC call counts from
    /// its headers.
    #[arg(long, env = "KUBECONFIGD_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Admin credentials minted per caller per minute on this server (a credential reused does not
    /// count); more are refused with 429 / RESOURCE_EXHAUSTED. 0: no limit.
    #[arg(long, env = "KUBECONFIGD_MAX_MINTS_PER_MINUTE", default_value_t = 60)]
    pub max_mints_per_minute: u32,
    /// `WatchKubeconfigs` streams and waiting REST long-polls open at once on this server; more are
    /// refused with RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "KUBECONFIGD_MAX_WATCH_STREAMS", default_value_t = 10000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watch_streams: u32,
    /// `WatchKubeconfigs` streams and waiting REST long-polls one caller (user) may hold open at once.
    #[arg(long, env = "KUBECONFIGD_MAX_WATCH_STREAMS_PER_CALLER", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watch_streams_per_caller: u32,
    /// `known_etags` entries one `WatchKubeconfigs` request may give; more are refused with
    /// INVALID_ARGUMENT.
    #[arg(long, env = "KUBECONFIGD_MAX_WATCH_KNOWN_ETAGS", default_value_t = 20000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watch_known_etags: u32,
    /// How long shutdown waits for in-flight calls before giving up.
    #[arg(long, env = "KUBECONFIGD_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How long to keep serving with health NOT_SERVING after SIGTERM before draining (lets load
    /// balancers and health watchers notice).
    #[arg(long, env = "KUBECONFIGD_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// PEM certificate chain to serve TLS with, on both listeners (needs --tls-key-file).
    #[arg(
        long,
        env = "KUBECONFIGD_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(
        long,
        env = "KUBECONFIGD_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// PEM bundle of the CAs that issue client certificates: the gRPC and REST listeners then ask
    /// for one (optional unless --require-client-cert) and a verified one authenticates its caller.
    /// Needs TLS. Re-read when it changes.
    #[arg(long, env = "KUBECONFIGD_CLIENT_CA_FILE", value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// CRLs (PEM, or one DER CRL) of the client CAs; a revoked client certificate fails the
    /// handshake. Needs --client-ca-file. Re-read when it changes.
    #[arg(long, env = "KUBECONFIGD_CLIENT_CRL_FILE", value_name = "FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Refuse, at the TLS handshake, connections without a client certificate from
    /// --client-ca-file.
    #[arg(long, env = "KUBECONFIGD_REQUIRE_CLIENT_CERT")]
    pub require_client_cert: bool,
    /// Size of the in-process cache of rendered kubeconfigs (e.g. 64MiB, 512KiB); 0 disables it.
    #[arg(long, env = "KUBECONFIGD_CACHE_MEMORY", default_value = "64MiB", value_parser = parse_bytes)]
    pub cache_memory: u64,
    /// Backstop expiry of cached kubeconfigs (keys already change whenever the inputs do).
    #[arg(long, env = "KUBECONFIGD_CACHE_TTL", default_value = "10m", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// Redis for a cache shared by replicas: redis://host:port[/db], or rediss:// for TLS.
    #[arg(long, env = "KUBECONFIGD_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated: redis://a:6379,redis://b:6379.
    #[arg(long, env = "KUBECONFIGD_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// CA certificate (PEM) that rediss:// servers are verified against (default: the web PKI roots).
    #[arg(long, env = "KUBECONFIGD_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Deadline of every Redis call; a slower Redis is skipped and the file rendered directly.
    #[arg(long, env = "KUBECONFIGD_REDIS_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// File with the AES-256-GCM key(s) sealing every value and invalidation in Redis: 64 hex characters
    /// per line, the first one current. Required with Redis.
    #[arg(long, env = "KUBECONFIGD_CACHE_KEY_FILE", value_name = "FILE")]
    pub cache_key_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "KUBECONFIGD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Write audit records to this file as JSON lines (`-`: stdout) instead of the log.
    #[arg(long, env = "KUBECONFIGD_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit file before it would grow past this size (0: never).
    #[arg(long, env = "KUBECONFIGD_AUDIT_LOG_MAX_SIZE", default_value = "100MiB", value_parser = parse_bytes)]
    pub audit_log_max_size: u64,
    /// Rotated audit files kept (FILE.1 is the newest).
    #[arg(long, env = "KUBECONFIGD_AUDIT_LOG_MAX_FILES", default_value_t = 5)]
    pub audit_log_max_files: u32,
    /// Sync the audit file (fdatasync) after every batch, before its records count as written.
    #[arg(long, env = "KUBECONFIGD_AUDIT_LOG_FSYNC")]
    pub audit_log_fsync: bool,
    /// POST audit records in batches of JSON lines to this http:// or https:// URL, in order,
    /// retried until taken.
    #[arg(long, env = "KUBECONFIGD_AUDIT_WEBHOOK", value_name = "URL")]
    pub audit_webhook: Option<String>,
    /// CA certificates (PEM) an https audit webhook is verified against (default: the system roots).
    #[arg(
        long,
        env = "KUBECONFIGD_AUDIT_WEBHOOK_CA_FILE",
        value_name = "FILE",
        requires = "audit_webhook"
    )]
    pub audit_webhook_ca_file: Option<PathBuf>,
    /// File holding a bearer token sent to the audit webhook.
    #[arg(
        long,
        env = "KUBECONFIGD_AUDIT_WEBHOOK_TOKEN_FILE",
        value_name = "FILE",
        requires = "audit_webhook"
    )]
    pub audit_webhook_token_file: Option<PathBuf>,
    /// Records waiting to be written, per audit sink, at most (beyond it a record is dropped and
    /// counted, or with --audit-required the download refused).
    #[arg(long, env = "KUBECONFIGD_AUDIT_QUEUE_SIZE", default_value = "16MiB", value_parser = parse_bytes)]
    pub audit_queue_size: u64,
    /// Serve a download only once its audit record is written; refuse it (503 / UNAVAILABLE) when the
    /// record cannot be written within --audit-timeout. Needs --audit-log or --audit-webhook.
    #[arg(long, env = "KUBECONFIGD_AUDIT_REQUIRED")]
    pub audit_required: bool,
    /// How long a download waits for its audit record to be written (--audit-required).
    #[arg(long, env = "KUBECONFIGD_AUDIT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub audit_timeout: Duration,
}

/// Where audit records go (see the `audit` module).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub file: Option<crate::audit::file::FileSettings>,
    pub webhook: Option<crate::audit::webhook::WebhookSettings>,
    pub queue_bytes: usize,
    pub required: bool,
    pub timeout: Duration,
}

impl AuditSettings {
    /// The auditor these settings describe (its writers are started separately).
    pub fn auditor(&self) -> crate::audit::Auditor {
        crate::audit::Auditor::to_stream(
            self.file.as_ref().map(|_| self.queue_bytes),
            self.webhook.as_ref().map(|_| self.queue_bytes),
            self.required,
            self.timeout,
        )
    }
}

fn audit_of(args: &Args) -> Result<AuditSettings, ConfigError> {
    let file = args
        .audit_log
        .as_ref()
        .map(|path| crate::audit::file::FileSettings {
            path: (path.as_os_str() != "-").then(|| path.clone()),
            max_size: args.audit_log_max_size,
            max_files: args.audit_log_max_files,
            fsync: args.audit_log_fsync,
        });
    let webhook = args
        .audit_webhook
        .as_deref()
        .map(|url| {
            crate::audit::webhook::WebhookSettings::new(
                url,
                args.audit_webhook_ca_file.as_deref(),
                args.audit_webhook_token_file.as_deref(),
            )
            .map_err(|e| config_error("--audit-webhook", e))
        })
        .transpose()?;
    if args.audit_required && file.is_none() && webhook.is_none() {
        return Err(config_error(
            "--audit-required",
            "needs --audit-log or --audit-webhook: records in the log are not waited for",
        ));
    }
    if args.audit_timeout.is_zero() {
        return Err(config_error("--audit-timeout", "must be longer than 0s"));
    }
    let queue_bytes = usize::try_from(args.audit_queue_size).unwrap_or(usize::MAX);
    if queue_bytes < 64 * 1024 {
        return Err(config_error("--audit-queue-size", "must be at least 64KiB"));
    }
    Ok(AuditSettings {
        file,
        webhook,
        queue_bytes,
        required: args.audit_required,
        timeout: args.audit_timeout,
    })
}

/// The largest gRPC request message accepted, in bytes (requests carry a uid and little else).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Where the tenant file and inventory come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Files on disk, watched for changes.
    Files { inventory: PathBuf, tenant: PathBuf },
    /// The demo data built into the binary.
    Demo,
}

/// Bearer token settings.
#[derive(Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    pub key: JwtKey,
    pub max_lifetime: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The key bearer tokens are verified with.
#[derive(Clone)]
pub enum JwtKey {
    Hs256Secret(Vec<u8>),
    PublicKeyPem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtKey::Hs256Secret(_) => "JwtKey::Hs256Secret(<redacted>)",
            JwtKey::PublicKeyPem(_) => "JwtKey::PublicKeyPem",
        })
    }
}

/// Cache settings.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub memory_bytes: u64,
    pub ttl: Duration,
    /// The Redis tier, always with its sealer.
    pub redis: Option<RedisConfig>,
}

/// Why Redis needs a key, said when one is missing.
const REDIS_NEEDS_KEY: &str = "required with --redis-url or --redis-cluster: anyone who can write to \
Redis could otherwise choose the kubeconfigs this service hands out, so every value and invalidation in \
Redis is sealed and authenticated with this key (AES-256-GCM). Make one with \
`openssl rand -hex 32 > cache.key` and give every replica the same file";

fn check_redis_url(flag: &'static str, url: &str) -> Result<(), ConfigError> {
    if !kubeconfig_cache::remote::is_redis_url(url) {
        return Err(config_error(
            flag,
            format!("{url:?} is not a redis:// or rediss:// URL"),
        ));
    }
    Ok(())
}

/// Validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// TLS for the gRPC and REST listeners, when configured.
    pub tls: Option<crate::edges::tls::ServerTls>,
    /// How connections are accepted and kept.
    pub connections: crate::edges::connections::Limits,
    pub cache: CacheSettings,
    pub source: Source,
    pub rest: bool,
    pub jwt: Option<JwtConfig>,
    /// The `--authentication-config` file and what it held at start.
    pub authentication: Option<(PathBuf, AuthenticationConfiguration)>,
    /// Settings of every token issuer.
    pub tokens: TokenSettings,
    pub request_timeout: Duration,
    pub max_concurrent_requests: u32,
    pub max_mints_per_minute: u32,
    pub watch: crate::service::streams::WatchLimits,
    pub shutdown_grace: Duration,
    pub shutdown_delay: Duration,
    pub audit: AuditSettings,
}

/// A start-up configuration problem, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn config_error(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

impl Config {
    /// Validates parsed flags, reading the JWT key files.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        // Every flag is named here, so that a new one cannot be forgotten: those read by a helper
        // below are marked with it.
        let Args {
            inventory: _,  // source_of
            tenant: _,     // source_of
            demo: _,       // source_of
            demo_dir: _,   // source_of
            grpc_addr: _,  // bound by the binary
            rest_addr: _,  // bound by the binary
            admin_addr: _, // bound by the binary
            no_rest,
            max_connections,
            idle_timeout,
            header_read_timeout,
            max_streams_per_connection,
            http2_keepalive_interval,
            http2_keepalive_timeout,
            tls_handshake_timeout,
            max_tls_handshakes,
            jwt_issuer: _,            // jwt_of
            jwt_audience: _,          // jwt_of
            jwt_hs256_secret_file: _, // jwt_of
            jwt_public_key_file: _,   // jwt_of
            jwt_max_lifetime: _,      // jwt_of
            authentication_config: _, // authentication_of
            jwks_refresh_interval,
            jwks_min_refresh_interval,
            request_timeout,
            max_concurrent_requests,
            max_mints_per_minute,
            max_watch_streams,
            max_watch_streams_per_caller,
            max_watch_known_etags,
            shutdown_grace,
            shutdown_delay,
            tls_cert_file: _,       // tls_of
            tls_key_file: _,        // tls_of
            client_ca_file: _,      // tls_of
            client_crl_file: _,     // tls_of
            require_client_cert: _, // tls_of
            cache_memory,
            cache_ttl,
            redis_url: _,                // redis_of
            redis_cluster: _,            // redis_of
            redis_ca_file: _,            // redis_of
            redis_timeout: _,            // redis_of
            cache_key_file: _,           // redis_of
            log_format: _,               // read by the binary
            audit_log: _,                // audit_of
            audit_log_max_size: _,       // audit_of
            audit_log_max_files: _,      // audit_of
            audit_log_fsync: _,          // audit_of
            audit_webhook: _,            // audit_of
            audit_webhook_ca_file: _,    // audit_of
            audit_webhook_token_file: _, // audit_of
            audit_queue_size: _,         // audit_of
            audit_required: _,           // audit_of
            audit_timeout: _,            // audit_of
        } = args;
        for (flag, value) in [
            ("--cache-ttl", cache_ttl),
            ("--idle-timeout", idle_timeout),
            ("--header-read-timeout", header_read_timeout),
            ("--http2-keepalive-interval", http2_keepalive_interval),
            ("--http2-keepalive-timeout", http2_keepalive_timeout),
            ("--tls-handshake-timeout", tls_handshake_timeout),
            ("--request-timeout", request_timeout),
            ("--jwks-refresh-interval", jwks_refresh_interval),
            ("--jwks-min-refresh-interval", jwks_min_refresh_interval),
        ] {
            if value.is_zero() {
                return Err(config_error(flag, "must be longer than 0s"));
            }
        }
        if jwks_min_refresh_interval > jwks_refresh_interval {
            return Err(config_error(
                "--jwks-min-refresh-interval",
                "must not be longer than --jwks-refresh-interval",
            ));
        }
        let jwt = jwt_of(args)?;
        Ok(Config {
            source: source_of(args)?,
            authentication: authentication_of(args, jwt.as_ref())?,
            jwt,
            tokens: TokenSettings {
                max_lifetime: args.jwt_max_lifetime,
                refresh_interval: *jwks_refresh_interval,
                min_refresh_interval: *jwks_min_refresh_interval,
            },
            tls: tls_of(args)?,
            connections: crate::edges::connections::Limits {
                max_connections: *max_connections as usize,
                idle_timeout: *idle_timeout,
                header_read_timeout: *header_read_timeout,
                max_streams_per_connection: *max_streams_per_connection,
                stall_timeout: *request_timeout + *header_read_timeout,
                http2_keepalive_interval: *http2_keepalive_interval,
                http2_keepalive_timeout: *http2_keepalive_timeout,
                tls_handshake_timeout: *tls_handshake_timeout,
                max_tls_handshakes: *max_tls_handshakes as usize,
            },
            cache: CacheSettings {
                memory_bytes: *cache_memory,
                ttl: *cache_ttl,
                redis: redis_of(args)?,
            },
            rest: !no_rest,
            request_timeout: *request_timeout,
            max_concurrent_requests: *max_concurrent_requests,
            max_mints_per_minute: *max_mints_per_minute,
            watch: crate::service::streams::WatchLimits {
                total: *max_watch_streams as usize,
                per_caller: *max_watch_streams_per_caller as usize,
                known_etags: *max_watch_known_etags as usize,
            },
            shutdown_grace: *shutdown_grace,
            shutdown_delay: *shutdown_delay,
            audit: audit_of(args)?,
        })
    }
}

/// `--demo`, or `--inventory` and `--tenant` (which must exist).
fn source_of(args: &Args) -> Result<Source, ConfigError> {
    if args.demo {
        return Ok(Source::Demo);
    }
    if let Some(dir) = &args.demo_dir {
        return demo_files(dir)
            .map_err(|e| config_error("--demo-dir", format!("{}: {e}", dir.display())));
    }
    let inventory = args
        .inventory
        .clone()
        .ok_or_else(|| config_error("--inventory", "is required (or use --demo)"))?;
    let tenant = args
        .tenant
        .clone()
        .ok_or_else(|| config_error("--tenant", "is required (or use --demo)"))?;
    if !inventory.is_dir() {
        return Err(config_error(
            "--inventory",
            format!("{} is not a directory", inventory.display()),
        ));
    }
    if !tenant.is_file() {
        return Err(config_error(
            "--tenant",
            format!("{} is not a file", tenant.display()),
        ));
    }
    Ok(Source::Files { inventory, tenant })
}

/// Writes the built-in demo into `dir` (`tenant.yaml`, `inventory/*.yaml`), keeping files already
/// there, and serves it from there.
fn demo_files(dir: &std::path::Path) -> std::io::Result<Source> {
    let inventory = dir.join("inventory");
    std::fs::create_dir_all(&inventory)?;
    let tenant = dir.join("tenant.yaml");
    let files = std::iter::once((tenant.clone(), crate::loading::demo::TENANT)).chain(
        crate::loading::demo::CLUSTERS
            .iter()
            .map(|(name, text)| (inventory.join(name), *text)),
    );
    for (path, text) in files {
        match std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&path)
        {
            Ok(mut file) => std::io::Write::write_all(&mut file, text.as_bytes())?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Source::Files { inventory, tenant })
}

/// Bearer tokens: a key (HS256 secret or public key), then issuer, audience and lifetime.
fn jwt_of(args: &Args) -> Result<Option<JwtConfig>, ConfigError> {
    let key = match (&args.jwt_hs256_secret_file, &args.jwt_public_key_file) {
        (Some(path), None) => {
            let secret = std::fs::read(path).map_err(|e| {
                config_error(
                    "--jwt-hs256-secret-file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let secret = secret.trim_ascii().to_vec();
            if secret.len() < 32 {
                return Err(config_error(
                    "--jwt-hs256-secret-file",
                    "the secret must be at least 32 bytes",
                ));
            }
            JwtKey::Hs256Secret(secret)
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                config_error("--jwt-public-key-file", format!("{}: {e}", path.display()))
            })?;
            JwtKey::PublicKeyPem(pem)
        }
        (None, None) => {
            if args.jwt_issuer.is_some() || args.jwt_audience.is_some() {
                return Err(config_error(
                    "--jwt-issuer",
                    "needs --jwt-hs256-secret-file or --jwt-public-key-file to verify tokens",
                ));
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return Err(config_error(
                "--jwt-hs256-secret-file",
                "cannot be used with --jwt-public-key-file",
            ));
        }
    };
    let required = |value: &Option<String>, flag: &'static str| {
        value
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| config_error(flag, "is required when bearer tokens are enabled"))
    };
    let issuer = required(&args.jwt_issuer, "--jwt-issuer")?;
    let audience = required(&args.jwt_audience, "--jwt-audience")?;
    if args.jwt_max_lifetime.is_zero() {
        return Err(config_error("--jwt-max-lifetime", "must be longer than 0s"));
    }
    Ok(Some(JwtConfig {
        issuer,
        audience,
        key,
        max_lifetime: args.jwt_max_lifetime,
    }))
}

/// The `--authentication-config` file, read and checked (an issuer may not also be `--jwt-issuer`).
fn authentication_of(
    args: &Args,
    jwt: Option<&JwtConfig>,
) -> Result<Option<(PathBuf, AuthenticationConfiguration)>, ConfigError> {
    const FLAG: &str = "--authentication-config";
    let Some(path) = &args.authentication_config else {
        return Ok(None);
    };
    let config =
        AuthenticationConfiguration::load(path).map_err(|e| config_error(FLAG, e.to_string()))?;
    if let Some(jwt) = jwt
        && let Some(i) = config.jwt.iter().position(|e| e.issuer.url == jwt.issuer)
    {
        return Err(config_error(
            FLAG,
            format!(
                "{}: jwt[{i}].issuer.url: {} is also --jwt-issuer; configure it in one place",
                path.display(),
                jwt.issuer
            ),
        ));
    }
    Ok(Some((path.clone(), config)))
}

/// TLS for the listeners, when a certificate and key are given, with client certificates when a
/// client CA bundle is.
fn tls_of(args: &Args) -> Result<Option<crate::edges::tls::ServerTls>, ConfigError> {
    if args.client_crl_file.is_some() && args.client_ca_file.is_none() {
        return Err(config_error(
            "--client-crl-file",
            "needs --client-ca-file (the CAs whose revocations it lists)",
        ));
    }
    if args.require_client_cert && args.client_ca_file.is_none() {
        return Err(config_error(
            "--require-client-cert",
            "needs --client-ca-file (the CAs client certificates are verified against)",
        ));
    }
    let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) else {
        if args.client_ca_file.is_some() {
            return Err(config_error(
                "--client-ca-file",
                "needs TLS (--tls-cert-file and --tls-key-file): client certificates are only \
                 presented in a TLS handshake",
            ));
        }
        return Ok(None);
    };
    crate::edges::tls::ServerTls::load(crate::edges::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: args.client_ca_file.clone(),
        client_crl: args.client_crl_file.clone(),
        require_client_cert: args.require_client_cert,
    })
    .map(Some)
    .map_err(|e| config_error(e.flag, e.message))
}

/// The Redis tier: a target, its CA, and the key that seals every value (required with Redis). A
/// given key file, CA file and timeout are checked even without Redis, so a mistake shows before it matters.
fn redis_of(args: &Args) -> Result<Option<RedisConfig>, ConfigError> {
    if args.redis_timeout.is_zero() {
        return Err(config_error("--redis-timeout", "must be longer than 0s"));
    }
    let sealer = match &args.cache_key_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config_error("--cache-key-file", format!("{}: {e}", path.display()))
            })?;
            Some(Sealer::from_key_file(&text).map_err(|e| {
                config_error("--cache-key-file", format!("{}: {e}", path.display()))
            })?)
        }
    };
    let ca = match &args.redis_ca_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| config_error("--redis-ca-file", format!("{}: {e}", path.display())))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(config_error(
                    "--redis-ca-file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Some(pem)
        }
    };
    let target = match (&args.redis_url, args.redis_cluster.as_slice()) {
        (Some(url), _) => {
            check_redis_url("--redis-url", url)?;
            RedisTarget::Standalone(url.clone())
        }
        (None, []) => return Ok(None),
        (None, nodes) => {
            for node in nodes {
                check_redis_url("--redis-cluster", node)?;
            }
            RedisTarget::Cluster(nodes.to_vec())
        }
    };
    let sealer = sealer.ok_or_else(|| config_error("--cache-key-file", REDIS_NEEDS_KEY))?;
    Ok(Some(RedisConfig {
        target,
        timeout: args.redis_timeout,
        ca,
        sealer,
    }))
}

impl Args {
    /// Where a listener binds when its flag is not given: every interface, or only loopback for the
    /// demo (its API keys are published).
    fn default_addr(&self, port: u16) -> SocketAddr {
        let host = if self.demo || self.demo_dir.is_some() {
            std::net::Ipv4Addr::LOCALHOST
        } else {
            std::net::Ipv4Addr::UNSPECIFIED
        };
        SocketAddr::from((host, port))
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr.unwrap_or_else(|| self.default_addr(50051))
    }

    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr.unwrap_or_else(|| self.default_addr(8080))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.unwrap_or_else(|| self.default_addr(8081))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("kubeconfigd").chain(args.iter().copied()))
    }

    #[test]
    fn demo_needs_no_paths_and_has_defaults() {
        let args = parse(&["--demo"]).expect("parses");
        // The demo's keys are public: it listens on loopback unless told otherwise.
        assert_eq!(args.grpc_addr().to_string(), "127.0.0.1:50051");
        assert_eq!(args.rest_addr().to_string(), "127.0.0.1:8080");
        assert_eq!(args.admin_addr().to_string(), "127.0.0.1:8081");
        let served = parse(&["--tenant", "t", "--inventory", "i"]).expect("parses");
        assert_eq!(served.grpc_addr().to_string(), "0.0.0.0:50051");
        let told = parse(&["--demo", "--grpc-addr", "0.0.0.0:50051"]).expect("parses");
        assert_eq!(told.grpc_addr().to_string(), "0.0.0.0:50051");
        let config = Config::from_args(&args).expect("valid");
        assert!(matches!(config.source, Source::Demo));
        assert!(config.rest && config.jwt.is_none());
    }

    #[test]
    fn demo_dir_writes_the_demo_once_and_serves_it_from_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = parse(&["--demo-dir", &dir.path().display().to_string()]).expect("parses");
        assert_eq!(args.rest_addr().to_string(), "127.0.0.1:8080");
        let config = Config::from_args(&args).expect("valid");
        let Source::Files { inventory, tenant } = &config.source else {
            panic!("served from files");
        };
        assert_eq!(
            std::fs::read_dir(inventory).expect("inventory").count(),
            crate::loading::demo::CLUSTERS.len()
        );
        std::fs::write(tenant, "edited").expect("edit");
        Config::from_args(&args).expect("valid again");
        assert_eq!(
            std::fs::read_to_string(tenant).expect("read"),
            "edited",
            "an edit is kept"
        );
        assert!(parse(&["--demo-dir", "x", "--demo"]).is_err());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["--demo", "--grpc-addr", "nope"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--grpc-addr"), "{err}");
        let err = parse(&["--demo", "--request-timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--request-timeout"), "{err}");
        let err = parse(&[]).unwrap_err().to_string();
        assert!(err.contains("--inventory"), "{err}");
        let args = parse(&["--demo", "--jwt-issuer", "https://issuer"]).expect("parses");
        assert_eq!(Config::from_args(&args).unwrap_err().flag, "--jwt-issuer");
        let args = parse(&[
            "--inventory",
            "/nonexistent-dir",
            "--tenant",
            "/nonexistent",
        ])
        .expect("parses");
        assert_eq!(Config::from_args(&args).unwrap_err().flag, "--inventory");
    }

    #[test]
    fn redis_without_a_key_is_refused_with_the_reason_and_the_remedy() {
        let args = parse(&["--demo", "--redis-url", "redis://127.0.0.1:6379"]).expect("parses");
        let err = Config::from_args(&args).unwrap_err();
        assert_eq!(err.flag, "--cache-key-file");
        assert!(
            err.message.contains("anyone who can write to Redis")
                && err.message.contains("openssl rand -hex 32"),
            "{}",
            err.message
        );
    }

    #[test]
    fn cache_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("cache.key");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).expect("write");
        let args = parse(&[
            "--demo",
            "--cache-memory",
            "512KiB",
            "--redis-cluster",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
            "--cache-key-file",
            key.to_str().expect("utf8"),
        ])
        .expect("parses");
        let config = Config::from_args(&args).expect("valid");
        assert_eq!(config.cache.memory_bytes, 512 * 1024);
        assert!(
            matches!(config.cache.redis, Some(RedisConfig { target: RedisTarget::Cluster(ref nodes), .. }) if nodes.len() == 2)
        );
        let err = parse(&["--demo", "--cache-memory", "lots"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cache-memory"), "{err}");
        let args = parse(&["--demo", "--redis-url", "http://x"]).expect("parses");
        assert_eq!(Config::from_args(&args).unwrap_err().flag, "--redis-url");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "not-hex").expect("write");
        let args =
            parse(&["--demo", "--cache-key-file", path.to_str().expect("utf8")]).expect("parses");
        let err = Config::from_args(&args).unwrap_err();
        assert_eq!(err.flag, "--cache-key-file");
        assert!(
            !err.message.contains("not-hex"),
            "the key file's content is never echoed"
        );
    }

    #[test]
    fn client_certificate_flags_need_tls_and_a_ca() {
        let args = parse(&["--demo", "--client-ca-file", "/nonexistent/ca.crt"]).expect("parses");
        let err = Config::from_args(&args).unwrap_err();
        assert_eq!(err.flag, "--client-ca-file");
        assert!(err.message.contains("--tls-cert-file"), "{}", err.message);
        let args = parse(&["--demo", "--require-client-cert"]).expect("parses");
        assert_eq!(
            Config::from_args(&args).unwrap_err().flag,
            "--require-client-cert"
        );
        let args = parse(&["--demo", "--client-crl-file", "/nonexistent/ca.crl"]).expect("parses");
        assert_eq!(
            Config::from_args(&args).unwrap_err().flag,
            "--client-crl-file"
        );
    }

    #[test]
    fn short_hs256_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "short").expect("write");
        let args = parse(&[
            "--demo",
            "--jwt-issuer",
            "i",
            "--jwt-audience",
            "a",
            "--jwt-hs256-secret-file",
            path.to_str().expect("utf8"),
        ])
        .expect("parses");
        let err = Config::from_args(&args).unwrap_err();
        assert_eq!(err.flag, "--jwt-hs256-secret-file");
    }
}
