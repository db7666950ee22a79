//! The `kubeconfigd` binary: parse flags, install logging, bind, run until SIGTERM/SIGINT. Two operator
//! tools share it: `kubeconfigd check` validates a tenant file and inventory exactly as the server loads
//! them, `kubeconfigd hash-key` prints the tenant-file line for an API key, and `kubeconfigd import`
//! writes cluster files from existing admin kubeconfigs.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubeconfigd::config::{Args, Config};
use kubeconfigd::loading::inventory::{Inventory, Origin};
use kubeconfigd::{Listeners, run, shutdown_signal, telemetry};
use sha2::{Digest as _, Sha256};

/// mimalloc instead of the C library's allocator: a cached download allocates a few dozen small
/// blocks, and glibc's malloc and free were a sixth of the instructions of one (callgrind).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kubeconfigd: hands out kubeconfig files for managed Kubernetes clusters over gRPC and REST. With no
/// subcommand it serves (the flags below).
#[derive(Debug, Parser)]
#[command(
    name = "kubeconfigd",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Loads the tenant file and the inventory exactly as the server does and prints every problem
    /// (file, line, field); exits 1 when there is any, 0 when everything would be served.
    Check {
        /// Directory of cluster files.
        #[arg(long, env = "KUBECONFIGD_INVENTORY", value_name = "DIR")]
        inventory: PathBuf,
        /// The tenant file.
        #[arg(long, env = "KUBECONFIGD_TENANT", value_name = "FILE")]
        tenant: PathBuf,
    },
    /// Reads an API key on standard input and prints its `sha256:` line for a user's `apiKeys`.
    HashKey,
    /// Writes a cluster file into the inventory for each cluster of existing admin kubeconfigs
    /// (kubeadm's admin.conf, k3s.yaml, Cluster API kubeconfig Secrets, token kubeconfigs). Re-running
    /// it updates the files it wrote and leaves unchanged ones untouched. Exits 0 when every cluster
    /// was imported, 1 when some were skipped (each with its reason), 2 when an input or flag is
    /// wrong (then nothing is written).
    Import(Box<ImportArgs>),
}

/// Which admin credential imported clusters hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AdminCredentialArg {
    /// The source's own (client certificate or token).
    Static,
    /// One minted per caller, signed by `--mint-ca-cert` / `--mint-ca-key`.
    Minted,
}

#[derive(Debug, clap::Args)]
// A group, so that a missing project is reported with its alternative.
#[command(group(clap::ArgGroup::new("projects").args(["project", "project_from_namespace"]).required(true).multiple(true)))]
struct ImportArgs {
    /// The inventory directory the cluster files are written to.
    #[arg(long, env = "KUBECONFIGD_INVENTORY", value_name = "DIR")]
    inventory: PathBuf,
    /// The tenant file: every project must be one of its projects, and files are checked against it.
    #[arg(long, env = "KUBECONFIGD_TENANT", value_name = "FILE")]
    tenant: Option<PathBuf>,
    /// A kubeconfig file (`-`: standard input); every context is a cluster. Repeatable.
    #[arg(long = "kubeconfig", value_name = "FILE")]
    kubeconfigs: Vec<PathBuf>,
    /// Import only this context of the kubeconfigs. Repeatable.
    #[arg(long = "context", value_name = "NAME")]
    contexts: Vec<String>,
    /// Cluster API kubeconfig Secrets, as `kubectl get secrets -A -l cluster.x-k8s.io/cluster-name
    /// -o yaml` prints them (YAML or JSON, a List or one Secret). Repeatable.
    #[arg(long = "capi-secrets", value_name = "FILE")]
    capi_secrets: Vec<PathBuf>,
    /// The project every imported cluster belongs to.
    #[arg(long, value_name = "UID")]
    project: Option<String>,
    /// A Cluster API cluster's project is its namespace (other clusters take `--project`).
    #[arg(long)]
    project_from_namespace: bool,
    /// The cluster's name, when importing exactly one (default: the context name, or the Cluster API
    /// cluster name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The Kubernetes pack values (YAML) every imported cluster gets: what decides whether OIDC is
    /// configured. Without it the clusters have no OIDC settings and only their admin kubeconfig is
    /// served.
    #[arg(long, value_name = "FILE")]
    pack_values: Option<PathBuf>,
    /// The pack name written with the values.
    #[arg(long, value_name = "NAME", default_value = "kubernetes")]
    pack_name: String,
    /// The clusters are reached through the Spectro Proxy (the tenant file names its server).
    #[arg(long)]
    proxy: bool,
    /// `static` hands out the source's credential; `minted` mints one per caller with the client CA
    /// of `--mint-ca-cert` and `--mint-ca-key` (the only way to serve an exec-plugin cluster).
    #[arg(long, value_enum, default_value = "static")]
    admin_credential: AdminCredentialArg,
    /// The client CA certificate minted admin credentials are signed with (PEM).
    #[arg(
        long,
        value_name = "FILE",
        required_if_eq("admin_credential", "minted")
    )]
    mint_ca_cert: Option<PathBuf>,
    /// The client CA's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        required_if_eq("admin_credential", "minted")
    )]
    mint_ca_key: Option<PathBuf>,
    /// Copy files a kubeconfig refers to (keys, token files) into the cluster file when they are under
    /// this directory (repeatable). Other references outside the inventory make the cluster skipped:
    /// the server reads only files inside the inventory, and a kubeconfig can name any file.
    #[arg(long, value_name = "DIR")]
    inline_from: Vec<PathBuf>,
    /// Print what would change, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace cluster files of the same uid that an import did not write.
    #[arg(long)]
    force: bool,
}

/// `kubeconfigd import`: the summary on standard output; exit 0, 1 (some skipped) or 2.
fn import(args: Box<ImportArgs>) -> ExitCode {
    let args = *args;
    let options = kubeconfigd::import::Options {
        inventory: args.inventory,
        tenant: args.tenant,
        kubeconfigs: args.kubeconfigs,
        contexts: args.contexts,
        capi_secrets: args.capi_secrets,
        project: args.project,
        project_from_namespace: args.project_from_namespace,
        name: args.name,
        pack_values: args.pack_values,
        pack_name: args.pack_name,
        proxy: args.proxy,
        mint_with: match (args.admin_credential, args.mint_ca_cert, args.mint_ca_key) {
            (AdminCredentialArg::Minted, Some(certificate), Some(key)) => Some((certificate, key)),
            _ => None,
        },
        inline_from: args.inline_from,
        dry_run: args.dry_run,
        force: args.force,
    };
    match kubeconfigd::import::run(&options) {
        Ok(summary) => {
            println!("{summary}");
            if summary.skipped() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("kubeconfigd import: {error}; nothing was written");
            ExitCode::from(2)
        }
    }
}

/// `kubeconfigd check`: every problem on standard output, one per line; a summary on standard error.
fn check(inventory: PathBuf, tenant: PathBuf) -> ExitCode {
    if !inventory.is_dir() {
        println!("{}: not a directory", inventory.display());
        return ExitCode::FAILURE;
    }
    match Inventory::load(Origin::Files {
        inventory: inventory.clone(),
        tenant: tenant.clone(),
    }) {
        Err(error) => {
            // The tenant file is unusable; the cluster files are still read, so that one problem
            // does not hide the others (their projects and pack settings need the tenant).
            let mut problems = 0;
            for problem in tenant_problems(&tenant).unwrap_or_else(|| vec![error.to_string()]) {
                problems += 1;
                println!("{problem}");
            }
            for (path, problem) in cluster_file_problems(&inventory) {
                problems += 1;
                println!("{}: {problem}", path.display());
            }
            eprintln!(
                "{}; cluster files read without the tenant file (projects and pack settings not checked)",
                count(problems, "problem")
            );
            ExitCode::FAILURE
        }
        Ok((_, snapshot, report)) => {
            for failure in &report.failures {
                println!("{failure}");
            }
            // The server checks a client CA fully when it first mints (too slow for every cluster
            // at load); here there is time, so a CA that cannot sign is reported now.
            let mut unusable_cas = 0;
            for cluster in snapshot.clusters.values() {
                let Some(renderer) = cluster.renderer(&snapshot.tenant) else {
                    continue;
                };
                if let Some((_, ca)) = renderer.minting()
                    && let Err(reason) = ca.authority()
                {
                    unusable_cas += 1;
                    println!(
                        "{} ({}): cannot mint admin credentials: {reason}",
                        cluster.uid(),
                        cluster.name()
                    );
                }
            }
            let problems = report.failures.len() + unusable_cas;
            eprintln!(
                "{}, {} unavailable, {}",
                count(snapshot.clusters.len(), "cluster"),
                snapshot.unavailable_count(),
                count(problems, "problem")
            );
            if problems == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `1 problem`, `2 problems`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Each problem of a tenant file that parses but is inconsistent, on its own line (the server's log
/// joins them); `None` for any other failure, which the loader's message says.
fn tenant_problems(tenant: &std::path::Path) -> Option<Vec<String>> {
    let text = kubeconfigd::loading::files::read_text(tenant, 1024 * 1024).ok()?;
    match kubeconfig_policy::Tenant::from_yaml(&text) {
        Err(kubeconfig_policy::TenantError::Fields(errors)) => Some(
            errors
                .iter()
                .map(|e| format!("{}: {e}", tenant.display()))
                .collect(),
        ),
        _ => None,
    }
}

/// The cluster files of `inventory` that do not parse, with why (line and field), read as the server
/// reads them but without a tenant file.
fn cluster_file_problems(inventory: &std::path::Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(inventory) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let problem = match kubeconfigd::loading::files::read_text(&path, 1024 * 1024) {
                Err(e) => e.to_string(),
                Ok(text) => {
                    match kubeconfigd::loading::record::Record::parse(&text, Some(inventory)) {
                        Ok(_) => return None,
                        Err(e) => match e.line {
                            Some(line) => format!("line {line}: {e}"),
                            None => e.to_string(),
                        },
                    }
                }
            };
            Some((path, problem))
        })
        .collect()
}

/// `kubeconfigd hash-key`: the key is the input without surrounding whitespace.
fn hash_key() -> ExitCode {
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("kubeconfigd hash-key: cannot read standard input: {error}");
        return ExitCode::FAILURE;
    }
    let key = input.trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        eprintln!(
            "kubeconfigd hash-key: an API key is one line of visible ASCII (it travels in a header)"
        );
        return ExitCode::FAILURE;
    }
    println!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { inventory, tenant }) => return check(inventory, tenant),
        Some(Command::HashKey) => return hash_key(),
        Some(Command::Import(args)) => return import(args),
        None => {}
    }
    // No transparent huge pages for this process: mimalloc asks for them on its arenas, and then a
    // 2 MiB page backs a region as soon as any byte of it is touched. Loading 100,000 clusters peaked
    // at about 290 MiB with them and 263 MiB without, and took 0.3 s longer (the kernel clearing huge
    // pages). Where the kernel refuses, nothing else changes.
    let _ = nix::sys::prctl::set_thp_disable(true);
    let args = cli.serve;
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("kubeconfigd: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kubeconfigd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Dropped when main returns, after its last log line: flushes every queued line.
    let (telemetry, _log) = runtime.block_on(async { telemetry::init(args.log_format) });
    let result = runtime.block_on(async {
        let grpc = tokio::net::TcpListener::bind(args.grpc_addr())
            .await
            .map_err(|e| anyhow::anyhow!("--grpc-addr {}: {e}", args.grpc_addr()))?;
        let rest = if config.rest {
            Some(
                tokio::net::TcpListener::bind(args.rest_addr())
                    .await
                    .map_err(|e| anyhow::anyhow!("--rest-addr {}: {e}", args.rest_addr()))?,
            )
        } else {
            None
        };
        let admin = tokio::net::TcpListener::bind(args.admin_addr())
            .await
            .map_err(|e| anyhow::anyhow!("--admin-addr {}: {e}", args.admin_addr()))?;
        run(config, Listeners { grpc, rest, admin }, shutdown_signal()).await
    });
    // Flush spans and metrics while the runtime (which carries the exporter's connection) still runs.
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Said once: as a log line where logs are JSON (for the collector), else as plain text.
            if matches!(args.log_format, kubeconfigd::config::LogFormat::Json) {
                tracing::error!(error = format!("{error:#}"), "kubeconfigd failed");
            } else {
                eprintln!("kubeconfigd: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}
