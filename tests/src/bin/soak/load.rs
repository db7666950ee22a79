//! The mixed load: gRPC and REST downloads of both files (viewer, admin, minted), `ListClusters`,
//! `CheckKubeconfig`, and calls of the churn users whose access comes and goes. Every call follows
//! the documented retry policy over both replicas (each attempt goes to the next one, as a
//! round-robin balancer over a headless Service would send it); REST calls are retried once on 503 or
//! a refused connection. Each call is recorded with its outcome; every answer to a download is
//! recorded with its request id, to be found in the audit stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient;
use kubeconfig_proto::kubeconfig::v1::{
    CheckKubeconfigRequest, GetAdminKubeconfigRequest, GetKubeconfigRequest, ListClustersRequest,
    check_kubeconfig_request,
};
use kubeconfigd_e2e::fleet::uid;
use kubeconfigd_e2e::with_key;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::clock::Clock;
use crate::retry::{RetryPolicy, Rng};
use crate::world::{Fleet, PROJECTS, Who};

/// The calls of the mix, with their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    GrpcKubeconfig,
    RestKubeconfig,
    GrpcAdmin,
    RestAdmin,
    Minted,
    List,
    Check,
    ChurnGrpc,
    ChurnRest,
}

const MIX: [(Op, u32); 9] = [
    (Op::GrpcKubeconfig, 30),
    (Op::RestKubeconfig, 15),
    (Op::GrpcAdmin, 10),
    (Op::RestAdmin, 5),
    (Op::Minted, 4),
    (Op::List, 6),
    (Op::Check, 5),
    (Op::ChurnGrpc, 15),
    (Op::ChurnRest, 10),
];

impl Op {
    pub fn pick(rng: &mut Rng) -> Op {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut draw = u32::try_from(rng.next_u64() % u64::from(total)).unwrap_or(0);
        for (op, weight) in MIX {
            if draw < weight {
                return op;
            }
            draw -= weight;
        }
        Op::List
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::GrpcKubeconfig => "gRPC kubeconfig",
            Op::RestKubeconfig => "REST kubeconfig",
            Op::GrpcAdmin => "gRPC admin",
            Op::RestAdmin => "REST admin",
            Op::Minted => "gRPC minted admin",
            Op::List => "ListClusters",
            Op::Check => "CheckKubeconfig",
            Op::ChurnGrpc => "gRPC churn user",
            Op::ChurnRest => "REST churn user",
        }
    }

    pub fn is_download(self) -> bool {
        !matches!(self, Op::List | Op::Check)
    }
}

/// How a call ended, after its retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Served,
    /// Refused with a denial (401, 403, 404 or their gRPC codes), and the message.
    Denied(String),
    /// A minted admin kubeconfig (or a ledger check) refused with UNAVAILABLE: the ledger could not
    /// be written or read. The message says which.
    LedgerDown(String),
    Failed(String),
}

/// One finished call.
#[derive(Debug, Clone)]
pub struct Call {
    pub start: f64,
    pub seconds: f64,
    pub op: Op,
    pub churn: Option<usize>,
    pub outcome: Outcome,
}

/// Everything the load recorded.
#[derive(Debug, Default)]
pub struct Records {
    pub calls: Vec<Call>,
    /// (replica, request id) of every download a replica served.
    pub answered: Vec<(usize, u128)>,
    /// Fingerprints of minted credentials handed out.
    pub minted: Vec<String>,
}

/// Connections per replica the load's calls are spread over: a server allows 128 streams per
/// connection, and the load may have more calls than that in flight.
const CONNECTIONS: usize = 8;

/// A channel to `address` that connects on first use and again after it breaks.
pub fn lazy_channel(address: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

/// The replicas as the clients see them.
pub struct Replicas {
    /// Per replica, its connections.
    grpc: Vec<Vec<Channel>>,
    pub grpc_addresses: Vec<SocketAddr>,
    pub rest: Vec<SocketAddr>,
    pub http: reqwest::Client,
}

impl Replicas {
    pub fn new(grpc: &[SocketAddr], rest: &[SocketAddr]) -> anyhow::Result<Self> {
        let channels = grpc
            .iter()
            .map(|&a| (0..CONNECTIONS).map(|_| lazy_channel(a)).collect())
            .collect::<anyhow::Result<_>>()?;
        Ok(Replicas {
            grpc: channels,
            grpc_addresses: grpc.to_vec(),
            rest: rest.to_vec(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(1))
                .build()?,
        })
    }

    pub fn count(&self) -> usize {
        self.grpc.len()
    }

    /// A client of replica `replica` on one of its connections.
    pub fn client(&self, replica: usize, rng: &mut Rng) -> KubeconfigServiceClient<Channel> {
        let connections = &self.grpc[replica];
        KubeconfigServiceClient::new(connections[rng.below(connections.len())].clone())
    }
}

/// What every call needs.
pub struct Load {
    pub replicas: Replicas,
    pub policy: RetryPolicy,
    pub fleet: Fleet,
    pub churn_users: usize,
    pub clock: Clock,
    pub records: Mutex<Records>,
}

fn request_id(text: &str) -> Option<u128> {
    u128::from_str_radix(&text.replace('-', ""), 16).ok()
}

/// The request id a gRPC answer carries: `x-request-id` on success, `ref` in the error details.
pub fn grpc_request_id<T>(result: &Result<tonic::Response<T>, tonic::Status>) -> Option<u128> {
    match result {
        Ok(response) => response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(request_id),
        Err(status) => status
            .get_details_error_info()
            .and_then(|info| info.metadata.get("ref").and_then(|r| request_id(r))),
    }
}

/// Whether a failed call never reached a server's application: its request was cancelled inside the
/// client's HTTP/2 connection before it was written (the connection was closing), or the server's
/// GOAWAY said the stream was not processed (h2 fails such streams with the GOAWAY's NO_ERROR, which
/// tonic reports as INTERNAL). gRPC's C core, Java and Go retry both transparently.
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    if !matches!(
        status.code(),
        tonic::Code::Cancelled | tonic::Code::Internal
    ) {
        return false;
    }
    let mut source = status.source();
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || error
                .downcast_ref::<h2::Error>()
                .is_some_and(|e| e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR))
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a call failed because its connection broke (tonic: UNKNOWN, a transport error).
fn broken_connection(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.code() == tonic::Code::Unknown
        && status
            .source()
            .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some())
}

fn denial(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::PermissionDenied | tonic::Code::NotFound | tonic::Code::Unauthenticated
    )
}

impl Load {
    /// Makes one call of kind `op` and records it.
    pub async fn call(self: &Arc<Self>, op: Op, rng: &mut Rng) {
        let start = self.clock.seconds();
        let replica = rng.below(self.replicas.count());
        let (outcome, churn) = match op {
            Op::GrpcKubeconfig | Op::ChurnGrpc | Op::RestKubeconfig | Op::ChurnRest => {
                let who = if matches!(op, Op::ChurnGrpc | Op::ChurnRest) {
                    Who::Churn(rng.below(self.churn_users))
                } else {
                    Who::Viewer(rng.below(PROJECTS))
                };
                let clusters = &self.fleet.viewable[who.project()];
                let cluster = uid(clusters[rng.below(clusters.len())]);
                let churn = match who {
                    Who::Churn(i) => Some(i),
                    _ => None,
                };
                let outcome = if matches!(op, Op::GrpcKubeconfig | Op::ChurnGrpc) {
                    self.grpc_download(op, replica, who, &cluster, None, rng)
                        .await
                } else {
                    self.rest_download(op, replica, who, &cluster, "kubeconfig")
                        .await
                };
                (outcome, churn)
            }
            Op::GrpcAdmin => {
                let cluster =
                    uid(self.fleet.static_admin[rng.below(self.fleet.static_admin.len())]);
                let outcome = self
                    .grpc_download(op, replica, Who::Admin, &cluster, None, rng)
                    .await;
                (outcome, None)
            }
            Op::RestAdmin => {
                let cluster =
                    uid(self.fleet.static_admin[rng.below(self.fleet.static_admin.len())]);
                let outcome = self
                    .rest_download(op, replica, Who::Admin, &cluster, "adminkubeconfig")
                    .await;
                (outcome, None)
            }
            Op::Minted => {
                let cluster = uid(self.fleet.minted[rng.below(self.fleet.minted.len())]);
                // A lifetime of its own for most calls, so that most of them mint afresh.
                let seconds = 600 + i64::try_from(rng.below(3000)).unwrap_or(0);
                let outcome = self
                    .grpc_download(op, replica, Who::Admin, &cluster, Some(seconds), rng)
                    .await;
                (outcome, None)
            }
            Op::List => (self.list(replica, rng).await, None),
            Op::Check => (self.check(replica, rng).await, None),
        };
        let seconds = self.clock.seconds() - start;
        self.records.lock().expect("records").calls.push(Call {
            start,
            seconds,
            op,
            churn,
            outcome,
        });
    }

    pub fn answered(&self, replica: usize, id: Option<u128>) {
        if let Some(id) = id {
            self.records
                .lock()
                .expect("records")
                .answered
                .push((replica, id));
        }
    }

    /// Runs `attempt` under the retry policy, each attempt on the next replica.
    async fn with_retries<T, F, Fut>(
        &self,
        op: Op,
        first: usize,
        rng: &mut Rng,
        mut attempt: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(KubeconfigServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let count = self.replicas.count();
        let mut made = 0;
        let mut transparent = 0;
        let mut next = first;
        loop {
            let replica = next % count;
            next += 1;
            made += 1;
            let client = self.replicas.client(replica, rng);
            let result = match tokio::time::timeout(Duration::from_secs(10), attempt(client)).await
            {
                Ok(result) => result,
                Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 10 s")),
            };
            if op.is_download() && result.is_ok() {
                self.answered(replica, grpc_request_id(&result));
            }
            // tonic reports a connection that broke under a call as UNKNOWN "transport error";
            // gRPC's own libraries report UNAVAILABLE, which the policy retries.
            let result = result.map_err(|status| {
                if broken_connection(&status) {
                    tonic::Status::unavailable(format!("connection broken: {}", status.message()))
                } else {
                    status
                }
            });
            match result {
                Ok(response) => return Ok(response.into_inner()),
                // A call the client never sent (its connection closed first: hyper cancels the
                // request, tonic reports CANCELLED) is retried at once, as gRPC's transparent retry
                // does, outside the policy's attempts.
                Err(status) if never_sent(&status) && transparent < 1 => {
                    transparent += 1;
                    made -= 1;
                }
                Err(status)
                    if self.policy.retries(status.code()) && made < self.policy.max_attempts =>
                {
                    tokio::time::sleep(self.policy.backoff(made, rng.unit())).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    async fn grpc_download(
        &self,
        op: Op,
        replica: usize,
        who: Who,
        cluster: &str,
        minted_seconds: Option<i64>,
        rng: &mut Rng,
    ) -> Outcome {
        let key = who.api_key();
        let result = match (op, minted_seconds) {
            (Op::GrpcAdmin | Op::Minted, seconds) => self
                .with_retries(op, replica, rng, |mut client| {
                    let request = with_key(
                        GetAdminKubeconfigRequest {
                            uid: cluster.to_owned(),
                            expiration_seconds: seconds,
                            reason: if seconds.is_some() {
                                "soak".to_owned()
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        },
                        &key,
                    );
                    async move { client.get_admin_kubeconfig(request).await }
                })
                .await
                .map(|r| (r.kubeconfig, r.credential)),
            _ => self
                .with_retries(op, replica, rng, |mut client| {
                    let request = with_key(
                        GetKubeconfigRequest {
                            uid: cluster.to_owned(),
                            frp: None,
                        },
                        &key,
                    );
                    async move { client.get_kubeconfig(request).await }
                })
                .await
                .map(|r| (r.kubeconfig, r.credential)),
        };
        match result {
            Ok((Some(kubeconfig), credential)) if !kubeconfig.yaml.is_empty() => {
                if op == Op::Minted {
                    match credential {
                        Some(credential) if !credential.fingerprint.is_empty() => {
                            self.records
                                .lock()
                                .expect("records")
                                .minted
                                .push(credential.fingerprint);
                        }
                        _ => return Outcome::Failed("a minted file without its credential".into()),
                    }
                }
                Outcome::Served
            }
            Ok(_) => Outcome::Failed("an answer without a file".into()),
            Err(status) if denial(status.code()) => {
                Outcome::Denied(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(status) if op == Op::Minted && status.code() == tonic::Code::Unavailable => {
                Outcome::LedgerDown(status.message().to_owned())
            }
            Err(status) => Outcome::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    async fn rest_download(
        &self,
        op: Op,
        replica: usize,
        who: Who,
        cluster: &str,
        asset: &str,
    ) -> Outcome {
        let count = self.replicas.rest.len();
        let mut last = String::new();
        for attempt in 0..2 {
            let index = (replica + attempt) % count;
            let url = format!(
                "http://{}/v1/spectroclusters/{cluster}/assets/{asset}",
                self.replicas.rest[index]
            );
            let response = self
                .replicas
                .http
                .get(url)
                .header("ApiKey", who.api_key())
                .send()
                .await;
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    last = format!("{error}");
                    continue;
                }
            };
            let status = response.status().as_u16();
            if status == 200 {
                self.answered(
                    index,
                    response
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .and_then(request_id),
                );
            }
            let body = response.bytes().await;
            match (status, body) {
                (200, Ok(body)) if !body.is_empty() => return Outcome::Served,
                (401 | 403 | 404, Ok(body)) => {
                    return Outcome::Denied(format!(
                        "REST {status}: {}",
                        String::from_utf8_lossy(&body).trim()
                    ));
                }
                (503, _) => last = "503".to_owned(),
                (status, body) => {
                    return Outcome::Failed(format!(
                        "REST {status} ({} bytes)",
                        body.map_or(0, |b| b.len())
                    ));
                }
            }
        }
        let _ = op;
        Outcome::Failed(format!("REST after one retry: {last}"))
    }

    async fn list(&self, replica: usize, rng: &mut Rng) -> Outcome {
        let key = Who::Viewer(rng.below(PROJECTS)).api_key();
        let result = self
            .with_retries(Op::List, replica, rng, |mut client| {
                let request = with_key(
                    ListClustersRequest {
                        page_size: 50,
                        page_token: String::new(),
                    },
                    &key,
                );
                async move { client.list_clusters(request).await }
            })
            .await;
        match result {
            Ok(page) if !page.clusters.is_empty() => Outcome::Served,
            Ok(_) => Outcome::Failed("ListClusters: an empty page".into()),
            Err(status) => Outcome::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    async fn check(&self, replica: usize, rng: &mut Rng) -> Outcome {
        let fingerprint = {
            let records = self.records.lock().expect("records");
            if records.minted.is_empty() {
                return Outcome::Served;
            }
            records.minted[rng.below(records.minted.len())].clone()
        };
        let result = self
            .with_retries(Op::Check, replica, rng, |mut client| {
                let request = with_key(
                    CheckKubeconfigRequest {
                        subject: Some(check_kubeconfig_request::Subject::Fingerprint(
                            fingerprint.clone(),
                        )),
                    },
                    &Who::Admin.api_key(),
                );
                async move { client.check_kubeconfig(request).await }
            })
            .await;
        match result {
            Ok(_) => Outcome::Served,
            // The ledger is unreadable while Redis is down: the same refusal as a mint's.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Outcome::LedgerDown(status.message().to_owned())
            }
            Err(status) => Outcome::Failed(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// Closed-loop calls from `concurrency` tasks for `seconds`: the calls per second the replicas
/// sustain with this mix (without the churn users, whose refusals are cheaper).
pub async fn calibrate(load: &Arc<Load>, concurrency: usize, seconds: f64, seed: u64) -> f64 {
    let until = load.clock.seconds() + seconds;
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let load = Arc::clone(load);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed ^ (task as u64).wrapping_mul(0x9e37));
            let mut made = 0u64;
            while load.clock.seconds() < until {
                let op = match Op::pick(&mut rng) {
                    Op::ChurnGrpc => Op::GrpcKubeconfig,
                    Op::ChurnRest => Op::RestKubeconfig,
                    op => op,
                };
                load.call(op, &mut rng).await;
                made += 1;
            }
            made
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    // The calibration's calls are not part of the run (their answers stay, for the audit check).
    load.records.lock().expect("records").calls.clear();
    total as f64 / seconds
}

/// The open-loop rate the run uses: `rate` (a share of the closed-loop figure), lowered by a quarter
/// for as long as a 3-second trial at it is not answered in time (median over [`TRIAL_MEDIAN`], or any
/// call failing), at most three times. A closed-loop burst overstates what two replicas sustain on a
/// busy machine (their deferred work, audit writes and cache stores, lags behind); an overloaded run
/// would test the machine, not the service. Returns the rate and the trials' medians.
pub async fn settle(load: &Arc<Load>, mut rate: f64, seed: u64) -> (f64, Vec<(f64, f64)>) {
    let mut trials = Vec::new();
    for trial in 0..4u64 {
        let until = load.clock.seconds() + 3.0;
        run(Arc::clone(load), rate, until, 20_000, seed ^ (trial + 1)).await;
        let calls = std::mem::take(&mut load.records.lock().expect("records").calls);
        let mut latencies: Vec<f64> = calls.iter().map(|c| c.seconds).collect();
        latencies.sort_by(f64::total_cmp);
        let median = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
        let failed = calls
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Failed(_)));
        trials.push((rate, median * 1000.0));
        if (median <= TRIAL_MEDIAN.as_secs_f64() && !failed) || trial == 3 {
            break;
        }
        rate *= 0.75;
        // What the overloaded trial left behind drains first.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    (rate, trials)
}

/// The median answer time a trial of [`settle`] must stay under.
pub const TRIAL_MEDIAN: Duration = Duration::from_millis(50);

/// Open-loop load at `rate` calls per second until `until` (seconds on the run's clock); at most
/// `in_flight` calls at once (a call that finds no room is recorded as failed: the replicas fell
/// behind).
pub async fn run(load: Arc<Load>, rate: f64, until: f64, in_flight: usize, seed: u64) {
    let room = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut rng = Rng::new(seed);
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let began = load.clock.seconds();
    let mut sent = 0u64;
    while load.clock.seconds() < until {
        ticker.tick().await;
        let due = ((load.clock.seconds() - began) * rate) as u64;
        while sent < due {
            sent += 1;
            let op = Op::pick(&mut rng);
            let Ok(permit) = Arc::clone(&room).try_acquire_owned() else {
                load.records.lock().expect("records").calls.push(Call {
                    start: load.clock.seconds(),
                    seconds: 0.0,
                    op,
                    churn: None,
                    outcome: Outcome::Failed(format!("{in_flight} calls already waiting")),
                });
                continue;
            };
            let load = Arc::clone(&load);
            let mut call_rng = Rng::new(rng.next_u64());
            tokio::spawn(async move {
                load.call(op, &mut call_rng).await;
                drop(permit);
            });
        }
    }
    // Let the calls in flight finish (each is bounded by its attempts' deadlines).
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        room.acquire_many(u32::try_from(in_flight).unwrap_or(u32::MAX)),
    )
    .await;
}
