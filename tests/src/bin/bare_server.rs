//! A bare baseline for the load scripts under `bench/`: the same `KubeconfigService` over tonic and the
//! same REST path over axum, answering every call with fixed bytes — no authentication, no policy, no
//! rendering. Comparing kubeconfigd against it in one run shows what the service itself costs.
//!
//! `--busy-ns N` makes every call spin on the clock for N nanoseconds before answering: pure CPU work,
//! no allocation, no memory traffic. `bench/busy.sh` runs such copies beside the plain one to show how
//! much per-call work costs how much throughput on the machine at hand, which says what a rate ratio
//! against the bare server can and cannot mean there.
//!
//! Usage: `bare-server --grpc-addr 127.0.0.1:50061 --rest-addr 127.0.0.1:8081 --body FILE [--busy-ns N]`

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use kubeconfig_proto::kubeconfig::v1 as pb;
use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_server::{
    KubeconfigService, KubeconfigServiceServer,
};
use tonic::{Request, Response, Status};

/// The same allocator as kubeconfigd: the baseline differs from it only in what each call does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixed {
    yaml: Arc<String>,
    busy: Busy,
}

/// The per-call work `--busy-ns` asks for (none by default).
#[derive(Clone, Copy)]
struct Busy(std::time::Duration);

impl Busy {
    fn spin(self) {
        if self.0.is_zero() {
            return;
        }
        let start = std::time::Instant::now();
        while start.elapsed() < self.0 {
            std::hint::spin_loop();
        }
    }
}

fn kubeconfig(yaml: &str) -> pb::Kubeconfig {
    pb::Kubeconfig {
        yaml: yaml.to_owned(),
        file_name: "bare.kubeconfig".to_owned(),
        etag: String::new(),
        server_kind: 2,
        auth_kind: 1,
    }
}

#[tonic::async_trait]
impl KubeconfigService for Fixed {
    type WatchKubeconfigsStream = tokio_stream::Empty<Result<pb::WatchKubeconfigsResponse, Status>>;

    async fn watch_kubeconfigs(
        &self,
        _: Request<pb::WatchKubeconfigsRequest>,
    ) -> Result<Response<Self::WatchKubeconfigsStream>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn get_kubeconfig(
        &self,
        _: Request<pb::GetKubeconfigRequest>,
    ) -> Result<Response<pb::GetKubeconfigResponse>, Status> {
        self.busy.spin();
        Ok(Response::new(pb::GetKubeconfigResponse {
            kubeconfig: Some(kubeconfig(&self.yaml)),
            credential: None,
        }))
    }
    async fn get_admin_kubeconfig(
        &self,
        _: Request<pb::GetAdminKubeconfigRequest>,
    ) -> Result<Response<pb::GetAdminKubeconfigResponse>, Status> {
        Ok(Response::new(pb::GetAdminKubeconfigResponse {
            kubeconfig: Some(kubeconfig(&self.yaml)),
            credential: None,
        }))
    }
    async fn get_kubeconfig_access(
        &self,
        _: Request<pb::GetKubeconfigAccessRequest>,
    ) -> Result<Response<pb::GetKubeconfigAccessResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn list_clusters(
        &self,
        _: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn check_kubeconfig(
        &self,
        _: Request<pb::CheckKubeconfigRequest>,
    ) -> Result<Response<pb::CheckKubeconfigResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn revoke_credential(
        &self,
        _: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn list_issued_credentials(
        &self,
        _: Request<pb::ListIssuedCredentialsRequest>,
    ) -> Result<Response<pb::ListIssuedCredentialsResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
    async fn who_am_i(
        &self,
        _: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
}

fn flag(args: &[String], name: &str) -> anyhow::Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .with_context(|| format!("{name} is required"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let grpc: SocketAddr = flag(&args, "--grpc-addr")?.parse().context("--grpc-addr")?;
    let rest: SocketAddr = flag(&args, "--rest-addr")?.parse().context("--rest-addr")?;
    let yaml = Arc::new(std::fs::read_to_string(flag(&args, "--body")?).context("--body")?);
    let busy = match flag(&args, "--busy-ns") {
        Ok(ns) => Busy(std::time::Duration::from_nanos(
            ns.parse()
                .context("--busy-ns: a whole number of nanoseconds")?,
        )),
        Err(_) => Busy(std::time::Duration::ZERO),
    };
    let body = Arc::clone(&yaml);
    let router = axum::Router::new().route(
        "/v1/spectroclusters/{uid}/assets/kubeconfig",
        axum::routing::get(move || {
            let body = Arc::clone(&body);
            async move {
                busy.spin();
                (
                    [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
                    body.as_str().to_owned(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(rest).await?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    tonic::transport::Server::builder()
        .add_service(KubeconfigServiceServer::new(Fixed { yaml, busy }))
        .serve(grpc)
        .await?;
    Ok(())
}
