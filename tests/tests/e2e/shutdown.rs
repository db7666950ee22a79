//! Graceful shutdown of the real binary: on SIGTERM health turns NOT_SERVING first, calls keep being
//! served during the shutdown delay, in-flight calls complete, and the process exits 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kubeconfig_proto::kubeconfig::v1::GetKubeconfigRequest;
use kubeconfigd_e2e::{Fixture, Server, with_key};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let mut args = fixture.args();
    args.extend(["--shutdown-delay", "700ms"].map(str::to_owned));
    let mut server = Server::start(&args).await.expect("server");
    let channel = server.channel().await.expect("channel");
    let mut health = HealthClient::new(channel.clone());
    let serving = health
        .check(HealthCheckRequest {
            service: "kubeconfig.v1.KubeconfigService".to_owned(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(serving.status, ServingStatus::Serving as i32);

    // A stream of calls from 4 workers until told to stop (bounded by count and time).
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let started_at = Instant::now();
    let signal_at = Arc::new(std::sync::Mutex::new(None::<Duration>));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, channel, signal_at) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            channel.clone(),
            Arc::clone(&signal_at),
        );
        workers.push(tokio::spawn(async move {
            let mut client = kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient::new(channel);
            let mut failures_inside_window = Vec::new();
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let begun = started_at.elapsed();
                let result = client
                    .get_kubeconfig(with_key(GetKubeconfigRequest { uid: "00000000000000000000aa01".to_owned(), frp: None }, "matrix-cluster-viewer"))
                    .await;
                match result {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        // Calls begun before SIGTERM or within the NOT_SERVING delay must succeed.
                        let signalled = *signal_at.lock().expect("lock");
                        if signalled.is_none_or(|at| begun < at + Duration::from_millis(500)) {
                            failures_inside_window.push(format!("{begun:?}: {status}"));
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            failures_inside_window
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "calls are being served");

    *signal_at.lock().expect("lock") = Some(started_at.elapsed());
    let pid = server.pid().expect("pid");
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    // Health turns NOT_SERVING while calls are still served.
    let mut saw_not_serving = false;
    for _ in 0..40 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.is_ok_and(|s| s == ServingStatus::NotServing as i32) {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        saw_not_serving,
        "health never reported NOT_SERVING:\n{}",
        server.log_text()
    );
    let during = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ok.load(Ordering::Relaxed) > during,
        "calls still served during the shutdown delay"
    );

    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate_wait(Duration::from_secs(15));
        (status, server)
    })
    .await
    .expect("join");
    let (status, server) = status;
    let status = status.expect("exit status");
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let failures = worker.await.expect("worker");
        assert!(
            failures.is_empty(),
            "calls failed before draining began: {failures:?}"
        );
    }
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("stopped"),
        "{}",
        server.log_text()
    );
}

/// The audit trail loses nothing: after a burst on both edges and a graceful stop, the log holds one
/// audit line per asset request (log lines are buffered off the request path and written at exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asset_request_has_its_audit_line_after_a_burst_and_a_graceful_stop() {
    const REST_CALLS: usize = 600;
    const GRPC_CALLS: usize = 600;
    let mut server = Server::start(&["--demo".to_owned()]).await.expect("server");
    let uid = "6470a2b1c5e6f1a2b3c4d5e1";
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/spectroclusters/{uid}/assets/kubeconfig",
        server.rest_url()
    );
    let channel = server.channel().await.expect("channel");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..REST_CALLS {
        let (http, url) = (http.clone(), url.clone());
        calls.spawn(async move {
            http.get(url)
                .header("ApiKey", "demo-viewer-key")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        });
    }
    for _ in 0..GRPC_CALLS {
        let mut client =
            kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient::new(
                channel.clone(),
            );
        calls.spawn(async move {
            client
                .get_kubeconfig(with_key(
                    GetKubeconfigRequest {
                        uid: uid.to_owned(),
                        ..Default::default()
                    },
                    "demo-viewer-key",
                ))
                .await
                .is_ok()
        });
    }
    let succeeded = calls.join_all().await.into_iter().filter(|ok| *ok).count();
    assert_eq!(succeeded, REST_CALLS + GRPC_CALLS, "every call succeeds");
    let status = server.terminate(Duration::from_secs(10)).expect("stops");
    assert!(status.success(), "{status:?}");
    let log = server.log_text();
    let audited = log
        .lines()
        .filter(|line| line.contains("audit") && line.contains("asset served"))
        .count();
    assert_eq!(audited, REST_CALLS + GRPC_CALLS, "audit lines");
    assert!(log.contains("stopped"), "the last line is written too");
}

/// Draining reaches every REST connection: one idle between requests (keep-alive) is closed when the
/// stop begins, so the process exits at once instead of waiting for the idle timeout (5 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_rest_connection_does_not_hold_up_a_graceful_stop() {
    use tokio::io::AsyncReadExt as _;
    let mut server = Server::start(&["--demo", "--shutdown-delay", "100ms"].map(str::to_owned))
        .await
        .expect("server");
    let mut idle = tokio::net::TcpStream::connect(server.rest)
        .await
        .expect("connect");
    assert!(
        crate::hostile::healthz_on(&mut idle).await,
        "a first request"
    );
    let stopping = Instant::now();
    let exited = tokio::task::spawn_blocking(move || {
        let status = server.terminate(Duration::from_secs(20));
        (status, server)
    });
    // The server closes the idle connection (EOF) once draining begins.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the idle connection is closed: {closed:?}"
    );
    let (status, server) = exited.await.expect("join");
    let status = status.expect("exit status");
    assert!(status.success(), "{status}:\n{}", server.log_text());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "exited after {:?}",
        stopping.elapsed()
    );
}
