//! The `kubeconfigd` binary: parse flags, install logging, bind, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use kubeconfigd::config::{Args, Config};
use kubeconfigd::{Listeners, run, shutdown_signal, telemetry};

fn main() -> ExitCode {
    let args = Args::parse();
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
    let telemetry = runtime.block_on(async { telemetry::init(args.log_format) });
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
