//! The `kubeconfigd` binary: parse flags, install logging, bind, run until SIGTERM/SIGINT. Two operator
//! tools share it: `kubeconfigd check` validates a tenant file and inventory exactly as the server loads
//! them, and `kubeconfigd hash-key` prints the tenant-file line for an API key.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubeconfigd::config::{Args, Config};
use kubeconfigd::inventory::{Inventory, Origin};
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
}

/// `kubeconfigd check`: every problem on standard output, one per line; a summary on standard error.
fn check(inventory: PathBuf, tenant: PathBuf) -> ExitCode {
    if !inventory.is_dir() {
        println!("{}: not a directory", inventory.display());
        return ExitCode::FAILURE;
    }
    match Inventory::load(Origin::Files { inventory, tenant }) {
        Err(error) => {
            println!("{error}");
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
                "{} clusters, {} unavailable, {} problems",
                snapshot.clusters.len(),
                snapshot.unavailable_count(),
                problems
            );
            if problems == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
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
        None => {}
    }
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
        let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .map_err(|e| anyhow::anyhow!("--grpc-addr {}: {e}", args.grpc_addr))?;
        let rest = if config.rest {
            Some(
                tokio::net::TcpListener::bind(args.rest_addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("--rest-addr {}: {e}", args.rest_addr))?,
            )
        } else {
            None
        };
        let admin = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .map_err(|e| anyhow::anyhow!("--admin-addr {}: {e}", args.admin_addr))?;
        run(config, Listeners { grpc, rest, admin }, shutdown_signal()).await
    });
    // Flush spans and metrics while the runtime (which carries the exporter's connection) still runs.
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "kubeconfigd failed");
            eprintln!("kubeconfigd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
