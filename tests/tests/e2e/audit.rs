//! The audit stream: a file rotated under load, a webhook across a receiver restart, required mode
//! with a failing sink, and exactly one record per asset call on each sink.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::kubeconfig_service_client::KubeconfigServiceClient;
use kubeconfig_proto::kubeconfig::v1::{GetAdminKubeconfigRequest, GetKubeconfigRequest};
use kubeconfigd_e2e::{Server, eventually, free_port, with_key};

const UID: &str = "6470a2b1c5e6f1a2b3c4d5e1";

/// A webhook receiver on a fixed loopback port that keeps every line POSTed to it, and can be
/// stopped and started again on the same port.
struct Receiver {
    port: u16,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            port: free_port().expect("port"),
            lines: Arc::default(),
            task: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/audit", self.port)
    }

    async fn start(&mut self) {
        let lines = Arc::clone(&self.lines);
        let app = axum::Router::new().route(
            "/audit",
            axum::routing::post(move |body: String| {
                let lines = Arc::clone(&lines);
                async move {
                    let mut lines = lines.lock().expect("present");
                    for line in body.lines() {
                        lines.push(serde_json::from_str(line).expect("a JSON line"));
                    }
                    "ok"
                }
            }),
        );
        let mut bound = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => {
                    bound = Some(listener);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = bound.expect("the receiver's port");
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn records(&self) -> Vec<serde_json::Value> {
        self.lines.lock().expect("present").clone()
    }
}

/// `n` viewer downloads, alternating REST and gRPC, `concurrency` at a time; the request ids of the
/// successful ones.
async fn downloads(server: &Server, n: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
        server.rest_url()
    );
    let channel = server.channel().await.expect("channel");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let (http, url, channel) = (http.clone(), url.clone(), channel.clone());
        calls.spawn(async move {
            if i % 2 == 0 {
                let response = http
                    .get(url)
                    .header("ApiKey", "demo-viewer-key")
                    .send()
                    .await
                    .ok()?;
                response.status().is_success().then(|| {
                    response.headers()["x-request-id"]
                        .to_str()
                        .expect("present")
                        .to_owned()
                })
            } else {
                let response = KubeconfigServiceClient::new(channel)
                    .get_kubeconfig(with_key(
                        GetKubeconfigRequest {
                            uid: UID.to_owned(),
                            frp: None,
                        },
                        "demo-viewer-key",
                    ))
                    .await
                    .ok()?;
                Some(
                    response
                        .metadata()
                        .get("x-request-id")
                        .expect("present")
                        .to_str()
                        .expect("present")
                        .to_owned(),
                )
            }
        });
    }
    calls.join_all().await.into_iter().flatten().collect()
}

fn seqs(records: &[serde_json::Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect()
}

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_rotates_keeps_its_count_and_loses_no_record_under_load() {
    const CALLS: usize = 1200;
    for kept in [50_u32, 2] {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let mut server = Server::start(
            &[
                "--demo",
                "--audit-log",
                path.to_str().expect("present"),
                "--audit-log-max-size",
                "64KiB",
                "--audit-log-max-files",
                &kept.to_string(),
            ]
            .map(str::to_owned),
        )
        .await
        .expect("server");
        let served = downloads(&server, CALLS).await;
        assert_eq!(served.len(), CALLS, "every call succeeds");
        assert!(
            server
                .terminate(Duration::from_secs(20))
                .expect("stops")
                .success()
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("present")
            .map(|e| {
                e.expect("present")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        let mut records = Vec::new();
        for n in (1..=kept).rev() {
            records.extend(read_lines(&dir.path().join(format!("audit.log.{n}"))));
        }
        records.extend(read_lines(&path));
        for name in &names {
            let size = std::fs::metadata(dir.path().join(name))
                .expect("present")
                .len();
            assert!(size <= 64 * 1024, "{name} is {size} bytes");
        }
        let seqs = seqs(&records);
        let last = *seqs.last().expect("records");
        assert_eq!(last, CALLS as u64, "one record per call");
        let expected: Vec<u64> = (seqs[0]..=last).collect();
        assert_eq!(seqs, expected, "in order, none missing, none repeated");
        if kept == 50 {
            assert!(names.len() > 3, "rotated several times: {names:?}");
            assert_eq!(seqs[0], 1, "every record kept: {names:?}");
            let ids: std::collections::HashSet<&str> = records
                .iter()
                .map(|r| r["request_id"].as_str().expect("present"))
                .collect();
            for id in &served {
                assert!(ids.contains(id.as_str()), "no record of {id}");
            }
        } else {
            assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_receives_every_record_in_order_across_a_receiver_restart() {
    let mut receiver = Receiver::new();
    receiver.start().await;
    let mut server =
        Server::start(&["--demo", "--audit-webhook", &receiver.url()].map(str::to_owned))
            .await
            .expect("server");
    let mut served = downloads(&server, 200).await;
    receiver.stop().await;
    served.extend(downloads(&server, 200).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.start().await;
    served.extend(downloads(&server, 200).await);
    assert_eq!(
        served.len(),
        600,
        "the receiver's outage does not fail downloads"
    );
    // Counted by distinct seq: a batch whose answer was lost comes twice, and its copy must not pass
    // for a record still on its way.
    let distinct = |records: &[serde_json::Value]| {
        seqs(records)
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert!(
        eventually(Duration::from_secs(30), || {
            let n = distinct(&receiver.records());
            async move { n >= 600 }
        })
        .await,
        "delivered: {}",
        distinct(&receiver.records())
    );
    // The sink counts a batch once its answer is back, a moment after the receiver holds it.
    let mut m = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    for _ in 0..100 {
        if m["kubeconfigd_audit_records_total{sink=\"webhook\"}"] >= 600.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    }
    assert!(
        m["kubeconfigd_audit_records_total{sink=\"webhook\"}"] >= 600.0,
        "{}",
        m["kubeconfigd_audit_records_total{sink=\"webhook\"}"]
    );
    assert_eq!(
        m["kubeconfigd_audit_records_dropped_total{sink=\"webhook\"}"],
        0.0
    );
    assert_eq!(m["kubeconfigd_audit_sink_up{sink=\"webhook\"}"], 1.0);
    assert!(
        server
            .terminate(Duration::from_secs(20))
            .expect("stops")
            .success()
    );
    let records = receiver.records();
    // A batch whose answer was lost may come twice; the first copies are in order, none missing.
    let mut first_seen = Vec::new();
    for seq in seqs(&records) {
        if !first_seen.contains(&seq) {
            first_seen.push(seq);
        }
    }
    assert_eq!(first_seen, (1..=600).collect::<Vec<u64>>());
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().expect("present"))
        .collect();
    for id in &served {
        assert!(ids.contains(id.as_str()), "no record of {id}");
    }
    assert!(
        server
            .log_text()
            .contains("the audit webhook does not take records")
    );
    assert!(
        server
            .log_text()
            .contains("the audit webhook takes records again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audit_required_a_failing_sink_turns_downloads_into_503_and_nothing_is_served_unrecorded()
 {
    let mut receiver = Receiver::new();
    let server = Server::start(
        &[
            "--demo",
            "--audit-webhook",
            &receiver.url(),
            "--audit-required",
            "--audit-timeout",
            "300ms",
        ]
        .map(str::to_owned),
    )
    .await
    .expect("server");
    let http = reqwest::Client::new();
    let url = format!(
        "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
        server.rest_url()
    );
    for _ in 0..3 {
        let response = http
            .get(&url)
            .header("ApiKey", "demo-viewer-key")
            .send()
            .await
            .expect("REST");
        assert_eq!(response.status(), 503);
        let body = response.text().await.expect("present");
        assert!(body.contains("audit"), "{body}");
    }
    let status = KubeconfigServiceClient::new(server.channel().await.expect("present"))
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: UID.to_owned(),
                frp: None,
            },
            "demo-viewer-key",
        ))
        .await
        .expect_err("unrecorded");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // The receiver comes up: downloads are served again, each once its record is taken.
    receiver.start().await;
    assert!(
        eventually(Duration::from_secs(15), || {
            let request = http.get(&url).header("ApiKey", "demo-viewer-key").send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        })
        .await,
        "downloads never resumed"
    );
    let served = downloads(&server, 100).await;
    assert_eq!(served.len(), 100);
    // Every download that was served had its record delivered before its answer.
    let records = receiver.records();
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .filter(|r| r["event"] == "asset served")
        .map(|r| r["request_id"].as_str().expect("present"))
        .collect();
    for id in &served {
        assert!(
            ids.contains(id.as_str()),
            "{id} was served before its record was taken"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asset_call_has_exactly_one_record_on_each_sink() {
    let mut receiver = Receiver::new();
    receiver.start().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.log");
    let mut server = Server::start(
        &[
            "--demo",
            "--audit-log",
            path.to_str().expect("present"),
            "--audit-webhook",
            &receiver.url(),
        ]
        .map(str::to_owned),
    )
    .await
    .expect("server");
    let http = reqwest::Client::new();
    let rest_url = |asset: &str| {
        format!(
            "{}/v1/spectroclusters/{UID}/assets/{asset}",
            server.rest_url()
        )
    };
    // (request id, expected event)
    let mut calls: Vec<(String, &str)> = Vec::new();
    for (asset, key, event) in [
        ("kubeconfig", "demo-viewer-key", "asset served"),
        ("kubeconfig", "no-such-key", "asset refused"),
        ("adminKubeconfig", "demo-viewer-key", "asset refused"),
        ("adminKubeconfig", "demo-admin-key", "asset served"),
    ] {
        let response = http
            .get(rest_url(asset))
            .header("ApiKey", key)
            .send()
            .await
            .expect("REST");
        // Served or refused, the answer names its request id in `x-request-id`; a refusal's body
        // names the same one as `ref`.
        let id = response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().expect("present").to_owned())
            .unwrap_or_else(|| panic!("{asset} with {key}: no x-request-id"));
        let body = response.text().await.expect("present");
        if event == "asset refused" {
            let value: serde_json::Value = serde_json::from_str(&body).expect(&body);
            assert_eq!(value["ref"].as_str(), Some(id.as_str()), "{body}");
        }
        calls.push((id, event));
    }
    let mut client = KubeconfigServiceClient::new(server.channel().await.expect("present"));
    let served = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: UID.to_owned(),
                frp: None,
            },
            "demo-viewer-key",
        ))
        .await
        .expect("served");
    calls.push((
        served
            .metadata()
            .get("x-request-id")
            .expect("present")
            .to_str()
            .expect("present")
            .to_owned(),
        "asset served",
    ));
    let denied = client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                uid: UID.to_owned(),
                ..Default::default()
            },
            "demo-viewer-key",
        ))
        .await
        .expect_err("denied");
    use tonic_types::StatusExt as _;
    let reference = denied
        .get_details_error_info()
        .expect("error info")
        .metadata["ref"]
        .clone();
    calls.push((reference, "asset refused"));
    let expected = calls.len();
    assert!(
        eventually(Duration::from_secs(10), || {
            let n = receiver.records().len();
            async move { n >= expected }
        })
        .await
    );
    assert!(
        server
            .terminate(Duration::from_secs(20))
            .expect("stops")
            .success()
    );
    let file = read_lines(&path);
    let webhook = receiver.records();
    for (sink, records) in [("file", &file), ("webhook", &webhook)] {
        assert_eq!(records.len(), calls.len(), "{sink}: {records:#?}");
        let by_id: BTreeMap<&str, Vec<&serde_json::Value>> =
            records.iter().fold(BTreeMap::new(), |mut map, r| {
                map.entry(r["request_id"].as_str().expect("present"))
                    .or_default()
                    .push(r);
                map
            });
        for (id, event) in &calls {
            let found = by_id
                .get(id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_eq!(found.len(), 1, "{sink}: records of {id}: {found:?}");
            assert_eq!(found[0]["event"], *event, "{sink}: {id}");
        }
    }
    // The same record, with the same seq, in both sinks.
    let file_seqs: HashMap<&str, u64> = file
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().expect("present"),
                r["seq"].as_u64().expect("present"),
            )
        })
        .collect();
    for record in &webhook {
        assert_eq!(
            file_seqs[record["request_id"].as_str().expect("present")],
            record["seq"].as_u64().expect("present")
        );
    }
    // How the caller authenticated is part of the record.
    assert!(file.iter().any(|r| r["auth"] == "api_key"));
}

/// A file a watch refuses (here at once: OIDC is not configured in the cluster's pack, so the viewer
/// may not have its kubeconfig) is recorded under the user who opened the watch and how it signed in,
/// not as an unauthenticated caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_a_watch_refuses_names_the_user_who_opened_it() {
    const WITHOUT_OIDC: &str = "6470a2b1c5e6f1a2b3c4d5e3";
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.log");
    let server = Server::start(
        &["--demo", "--audit-log", path.to_str().expect("present")].map(str::to_owned),
    )
    .await
    .expect("server");
    let mut client = KubeconfigServiceClient::new(server.channel().await.expect("present"));
    let mut stream = client
        .watch_kubeconfigs(with_key(
            kubeconfig_proto::kubeconfig::v1::WatchKubeconfigsRequest {
                cluster_uids: vec![WITHOUT_OIDC.to_owned()],
                ..Default::default()
            },
            "demo-viewer-key",
        ))
        .await
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an event within 5 s")
        .expect("an event");
    assert!(first.is_some(), "the stream answers");
    let refused = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .find(|r| r["event"] == "asset refused" && r["via"] == "watch")
            .cloned()
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let found = refused(&read_lines(&path)).is_some();
            async move { found }
        })
        .await,
        "the refusal is recorded"
    );
    let record = refused(&read_lines(&path)).expect("present");
    assert_eq!(record["cluster"], WITHOUT_OIDC, "{record}");
    assert_eq!(record["user"], "viewer@demo.test", "{record}");
    assert_eq!(record["auth"], "api_key", "{record}");
    assert_eq!(record["reason"], "OIDC_NOT_CONFIGURED", "{record}");
}
