//! Hostile peers below the client libraries: raw HTTP/2 frames and silent TCP connections against
//! the listeners (a client library would respect the server's settings and hide the problem), and
//! long-polls held against the watch limits.

use std::time::{Duration, Instant};

use kubeconfigd_e2e::{Server, eventually};

use crate::hostile::closed_within;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One HTTP/2 frame: 9-byte header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("small frame");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal, not Huffman-coded (short strings only).
fn literal(text: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(text.len()).expect("short") & 0x7f];
    out.extend_from_slice(text.as_bytes());
    out
}

/// The header block of a gRPC call to `path` (15-byte frames in the flood were this, with
/// HPACK indexing; here every field is a literal without indexing, so each block stands alone).
fn grpc_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    block.push(0x04); // :path, name from the static table
    block.extend(literal(path));
    block.extend([0x01]); // :authority
    block.extend(literal("localhost"));
    block.extend([0x0f, 0x10]); // content-type (static index 31)
    block.extend(literal("application/grpc"));
    block.push(0x00); // te: trailers, a new name
    block.extend(literal("te"));
    block.extend(literal("trailers"));
    block
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// Opens an HTTP/2 connection by hand: the preface and an empty SETTINGS frame (the server's own
/// SETTINGS are never acknowledged, as a hostile client would not).
async fn raw_h2(address: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("preface");
    stream
}

/// Sends `count` HEADERS frames (new streams, no body ever) on `stream` while reading and
/// discarding whatever the server answers. Returns when all are written or the server closed.
async fn open_streams(mut stream: TcpStream, path: &str, count: u32) -> TcpStream {
    let block = grpc_headers(path);
    let (mut reader, mut writer) = stream.split();
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), reader.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
        }
    };
    let write = async {
        for chunk in (0..count).collect::<Vec<_>>().chunks(1000) {
            let mut bytes = Vec::new();
            for i in chunk {
                bytes.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &block));
            }
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(drain, write);
    stream
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--demo".to_owned()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

async fn health_ok(server: &Server) -> bool {
    let Ok(channel) = server.channel().await else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bodiless_grpc_streams_without_credentials_stays_within_a_few_mib() {
    let server = Server::start(&args(&["--header-read-timeout", "2s"]))
        .await
        .expect("server");
    let pid = server.pid().expect("pid");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    // 4 connections × 10,000 HEADERS frames to the health check, never a body: the 40,000
    // streams, which took the server from 28 MiB to 542 MiB and stayed there.
    let address = server.grpc;
    let flood: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let stream = raw_h2(address).await;
                open_streams(stream, "/grpc.health.v1.Health/Check", 10_000).await
            })
        })
        .collect();
    let mut held = Vec::new();
    for connection in flood {
        held.push(connection.await.expect("flood task"));
    }
    // Let the server take in every frame it was sent (the held streams live 2 s).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = rss_kib(pid);
    let grown_mib = during.saturating_sub(before) / 1024;
    eprintln!("RSS before the flood {before} KiB, after 40,000 streams {during} KiB");
    assert!(
        grown_mib <= 4 * 4,
        "RSS grew by {grown_mib} MiB over 4 connections ({before} KiB -> {during} KiB)"
    );
    // The server still answers, and the streams held without a body end at the deadline.
    assert!(health_ok(&server).await, "{}", server.log_text());
    let ended = eventually(Duration::from_secs(6), || async {
        kubeconfigd_e2e::metrics(&server).await.is_ok_and(|m| {
            m.get("kubeconfigd_limit_hits_total{limit=\"request_message_timeout\"}")
                .is_some_and(|n| *n >= 1.0)
        })
    })
    .await;
    assert!(ended, "bodiless streams end at --header-read-timeout");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_calls_take_slots_from_their_headers_and_give_them_up_to_real_calls() {
    let server = Server::start(&args(&[
        "--max-concurrent-requests",
        "8",
        "--max-streams-per-connection",
        "16",
    ]))
    .await
    .expect("server");
    // 16 streams opened and never given their message: each takes a slot from its HEADERS; past the
    // 8th, each new one ends the one that has waited longest.
    let stream = raw_h2(server.grpc).await;
    let held = open_streams(stream, "/kubeconfig.v1.KubeconfigService/GetKubeconfig", 16).await;
    let ended = |metrics: &std::collections::HashMap<String, f64>| metrics["kubeconfigd_limit_hits_total{limit=\"max_concurrent_requests\"}"];
    let metrics = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    assert!(ended(&metrics) >= 8.0, "{metrics:?}");
    // A real call is served at once (well before the 10 s message deadline), ending one more.
    let started = Instant::now();
    let mut client = server.client().await.expect("client");
    let served = client
        .get_kubeconfig(kubeconfigd_e2e::with_key(
            kubeconfig_proto::kubeconfig::v1::GetKubeconfigRequest {
                uid: "6470a2b1c5e6f1a2b3c4d5e1".to_owned(),
                frp: None,
            },
            "demo-viewer-key",
        ))
        .await;
    assert!(served.is_ok(), "{served:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let metrics = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    assert!(ended(&metrics) >= 9.0, "{metrics:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_grpc_call_ends_at_the_message_deadline() {
    let server = Server::start(&args(&["--header-read-timeout", "1s"]))
        .await
        .expect("server");
    let stream = raw_h2(server.grpc).await;
    let held = open_streams(stream, "/kubeconfig.v1.KubeconfigService/GetKubeconfig", 1).await;
    let ended = eventually(Duration::from_secs(4), || async {
        kubeconfigd_e2e::metrics(&server).await.is_ok_and(|m| {
            m["kubeconfigd_limit_hits_total{limit=\"request_message_timeout\"}"] >= 1.0
                && m["kubeconfigd_calls_total{edge=\"grpc\",method=\"GetKubeconfig\",code=\"RequestTimeout\"}"]
                    >= 1.0
        })
    })
    .await;
    assert!(ended);
    drop(held);
}

/// Answers every PING the server sends on `stream` (and nothing else) until it closes; returns how
/// long that took, or `None` if it is still open at `within`.
async fn answer_pings_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await;
        match read {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
        }
        while pending.len() >= 9 {
            let length = usize::from(pending[0]) << 16
                | usize::from(pending[1]) << 8
                | usize::from(pending[2]);
            if pending.len() < 9 + length {
                break;
            }
            let (kind, flags) = (pending[3], pending[4]);
            if kind == PING && flags & 0x1 == 0 {
                let answer = frame(PING, 0x1, 0, &pending[9..9 + length]);
                if stream.write_all(&answer).await.is_err() {
                    return Some(started.elapsed());
                }
            }
            pending.drain(..9 + length);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_a_request_are_closed_whatever_pings_they_answer() {
    let server = Server::start(&args(&[
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--http2-keepalive-interval",
        "300ms",
    ]))
    .await
    .expect("server");
    // A silent TCP connection: closed at the header-read timeout from accept, on every listener
    // (the admin listener's 64 connections included), not at the idle timeout.
    for (what, address) in [
        ("gRPC", server.grpc),
        ("REST", server.rest),
        ("admin", server.admin),
    ] {
        let mut silent = TcpStream::connect(address).await.expect("connect");
        let cut = closed_within(&mut silent, Duration::from_secs(5)).await;
        assert!(
            cut.is_some_and(|t| t >= Duration::from_millis(800) && t < Duration::from_millis(1900)),
            "{what}: {cut:?}"
        );
    }
    // An HTTP/2 connection that answers every keepalive PING and never opens a stream.
    for (what, address) in [("gRPC", server.grpc), ("REST", server.rest)] {
        let mut pinging = raw_h2(address).await;
        let cut = answer_pings_until_closed(&mut pinging, Duration::from_secs(6)).await;
        assert!(cut.is_some(), "{what}: never closed");
    }
    // One that made a call and then only answers PINGs: closed at the idle timeout.
    let stream = raw_h2(server.grpc).await;
    let mut used = open_streams(stream, "/grpc.health.v1.Health/Check", 1).await;
    let cut = answer_pings_until_closed(&mut used, Duration::from_secs(8)).await;
    assert!(
        cut.is_some(),
        "closed after its call ended and --idle-timeout passed"
    );
    let metrics = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    assert!(
        metrics["kubeconfigd_connections_closed_total{reason=\"no_request\"}"] >= 3.0,
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_send_a_request_cannot_starve_the_probes_or_the_api() {
    // The default --header-read-timeout (10 s): the silent connections would hold their slots for
    // that long, again and again; instead, a new connection evicts the oldest silent one.
    let server = Server::start(&args(&["--max-connections", "8"]))
        .await
        .expect("server");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(server.admin).await.expect("connect"));
    }
    for _ in 0..8 {
        silent.push(TcpStream::connect(server.rest).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let ready = reqwest::get(format!("{}/readyz", server.admin_url()))
        .await
        .expect("probe");
    assert!(ready.status().is_success());
    assert!(health_ok(&server).await, "an API call gets a slot");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let metrics = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    assert!(
        metrics["kubeconfigd_connections_closed_total{reason=\"evicted\"}"] >= 2.0,
        "{metrics:?}"
    );
}

/// The kubeconfig of prod-east on `rest_url`.
fn prod_east_url(rest_url: &str) -> String {
    format!("{rest_url}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig")
}

/// A long-poll (3 s) on the kubeconfig of prod-east with the etag the caller already holds.
async fn long_poll(rest_url: String, key: &'static str, etag: String) -> reqwest::Response {
    long_poll_on(&reqwest::Client::new(), &rest_url, key, &etag, "3s").await
}

/// A long-poll of `wait` on the kubeconfig of prod-east, on `client`'s connections.
async fn long_poll_on(
    client: &reqwest::Client,
    rest_url: &str,
    key: &str,
    etag: &str,
    wait: &str,
) -> reqwest::Response {
    client
        .get(format!("{}?wait={wait}", prod_east_url(rest_url)))
        .header("ApiKey", key)
        .header("If-None-Match", etag)
        .send()
        .await
        .expect("long-poll")
}

/// The etag of prod-east's kubeconfig as the viewer downloads it.
async fn prod_east_etag(server: &Server) -> String {
    let first = reqwest::Client::new()
        .get(prod_east_url(&server.rest_url()))
        .header("ApiKey", "demo-viewer-key")
        .send()
        .await
        .expect("download");
    first.headers()["etag"].to_str().expect("etag").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_long_polls_count_with_the_callers_watches() {
    let server = Server::start(&args(&[
        "--max-watch-streams-per-caller",
        "3",
        "--max-watch-streams",
        "5",
    ]))
    .await
    .expect("server");
    let etag = prod_east_etag(&server).await;
    // Three waits for the viewer: its share.
    let waits: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(long_poll(
                server.rest_url(),
                "demo-viewer-key",
                etag.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let fourth = long_poll(server.rest_url(), "demo-viewer-key", etag.clone()).await;
    assert_eq!(fourth.status().as_u16(), 429, "the caller's fourth wait");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    let body: serde_json::Value =
        serde_json::from_str(&fourth.text().await.expect("body")).expect("JSON");
    assert_eq!(body["code"], "TooManyRequests", "{body}");
    // Another caller still has room until the server's total (5) is reached.
    let editor = tokio::spawn(long_poll(server.rest_url(), "demo-editor-key", etag));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!editor.is_finished(), "the editor's wait is admitted");
    let metrics = kubeconfigd_e2e::metrics(&server).await.expect("metrics");
    assert_eq!(metrics["kubeconfigd_watch_streams"], 4.0, "{metrics:?}");
    assert!(metrics["kubeconfigd_limit_hits_total{limit=\"max_watch_streams_per_caller\"}"] >= 1.0);
    // Waits that end (304 at the end of their 3 s) give their share back.
    for wait in waits {
        let answer = wait.await.expect("task");
        assert_eq!(answer.status().as_u16(), 304);
    }
    let _ = editor.await;
    let freed = eventually(Duration::from_secs(3), || async {
        kubeconfigd_e2e::metrics(&server)
            .await
            .is_ok_and(|m| m["kubeconfigd_watch_streams"] == 0.0)
    })
    .await;
    assert!(freed);
}

/// A long-poll that waits longer than the stall timeout (`--request-timeout` +
/// `--header-read-timeout`, here 2 s) is answered at the end of its wait, on both HTTP versions: the
/// wait counts as a watch, not as a request making no progress (it was closed as stalled, with no
/// answer at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_longer_than_the_stall_timeout_is_answered() {
    let server = Server::start(&args(&[
        "--request-timeout",
        "1s",
        "--header-read-timeout",
        "1s",
    ]))
    .await
    .expect("server");
    let etag = prod_east_etag(&server).await;
    for client in [
        reqwest::Client::new(),
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("h2 client"),
    ] {
        let started = Instant::now();
        let answer =
            long_poll_on(&client, &server.rest_url(), "demo-viewer-key", &etag, "4s").await;
        assert_eq!(answer.status().as_u16(), 304);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(3_900) && waited < Duration::from_secs(8),
            "answered when its wait was over: {waited:?}"
        );
        // The same connection serves a download afterwards.
        let next = client
            .get(prod_east_url(&server.rest_url()))
            .header("ApiKey", "demo-viewer-key")
            .send()
            .await
            .expect("download after the wait");
        assert_eq!(next.status().as_u16(), 200);
    }
    assert_eq!(
        counter(
            &server,
            "kubeconfigd_connections_closed_total{reason=\"stalled\"}"
        )
        .await,
        0.0
    );
}

/// The value of one counter of the server's metrics (0 when absent).
async fn counter(server: &Server, name: &str) -> f64 {
    kubeconfigd_e2e::metrics(server)
        .await
        .ok()
        .and_then(|m| m.get(name).copied())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_floods_pings_and_never_reads_is_still_cut_at_its_deadline() {
    let server = Server::start(&args(&["--header-read-timeout", "1s"]))
        .await
        .expect("server");
    // A small receive buffer, never read: the server's PING answers back up and its writes stall,
    // so it stops reading from this connection too.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(server.grpc).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("preface");
    let pings: Vec<u8> = (0..20_000u64)
        .flat_map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    let flood = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), stream.write_all(&pings)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return true,
                Err(_) => {}
            }
        }
        false
    });
    let cut = eventually(Duration::from_secs(5), || async {
        counter(
            &server,
            "kubeconfigd_connections_closed_total{reason=\"no_request\"}",
        )
        .await
            >= 1.0
    })
    .await;
    assert!(
        cut,
        "the connection is cut at --header-read-timeout though its writes stall"
    );
    assert!(
        flood.await.expect("flood"),
        "the server closed the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_refuse_large_messages_at_once() {
    let server = Server::start(&args(&[])).await.expect("server");
    for path in [
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        let mut stream = raw_h2(server.grpc).await;
        let mut call = frame(HEADERS, END_HEADERS, 1, &grpc_headers(path));
        // A message announced at 4 MiB - 1 (tonic's default limit) of which 8 KiB are sent.
        let mut data = vec![0u8];
        data.extend_from_slice(&(4 * 1024 * 1024 - 1u32).to_be_bytes());
        data.resize(8 * 1024, b'x');
        call.extend(frame(DATA, 0, 1, &data));
        stream.write_all(&call).await.expect("call");
        // The answer (HEADERS with END_STREAM on stream 1) comes at once, not at the 10 s deadline.
        let started = Instant::now();
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        let answered = loop {
            let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { break false };
            if n == 0 {
                break false;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut answered = false;
            while pending.len() >= 9 {
                let length = usize::from(pending[0]) << 16
                    | usize::from(pending[1]) << 8
                    | usize::from(pending[2]);
                if pending.len() < 9 + length {
                    break;
                }
                let id = u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]]);
                answered |= pending[3] == HEADERS && pending[4] & END_STREAM != 0 && id == 1;
                pending.drain(..9 + length);
            }
            if answered {
                break true;
            }
        };
        assert!(answered, "{path}: no answer");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_no_window_for_its_answer_is_cut_once_it_stalls() {
    let server = Server::start(&args(&[
        "--request-timeout",
        "1s",
        "--header-read-timeout",
        "1s",
    ]))
    .await
    .expect("server");
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: the server can never send the answer's DATA.
    let mut stream = TcpStream::connect(server.grpc).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &grpc_headers("/grpc.health.v1.Health/Check"),
    ));
    hello.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    stream.write_all(&hello).await.expect("call");
    // Cut after --request-timeout + --header-read-timeout without progress (reading all along).
    let cut = closed_within(&mut stream, Duration::from_secs(6)).await;
    assert!(
        cut.is_some_and(|t| t >= Duration::from_millis(1500)),
        "{cut:?}"
    );
    assert!(
        counter(
            &server,
            "kubeconfigd_connections_closed_total{reason=\"stalled\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_streams_are_capped_per_connection() {
    let server = Server::start(&args(&[])).await.expect("server");
    // Five reflection streams on one connection: the fifth is refused.
    let stream = raw_h2(server.grpc).await;
    let held = open_streams(
        stream,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        5,
    )
    .await;
    assert!(
        counter(
            &server,
            "kubeconfigd_limit_hits_total{limit=\"anonymous_streams\"}"
        )
        .await
            >= 1.0
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_only_looks_like_a_long_poll_does_not_protect_its_connection() {
    let server = Server::start(&args(&[
        "--request-timeout",
        "1s",
        "--header-read-timeout",
        "1s",
    ]))
    .await
    .expect("server");
    // `If-None-Match` and `?wait=` on a path that does not long-poll, without credentials, and a
    // zero window so that the answer never goes out: the connection is still cut for its stall.
    let mut block = vec![0x82, 0x86, 0x04]; // GET, http, :path
    block.extend(literal("/healthz?wait=30s"));
    block.push(0x01);
    block.extend(literal("localhost"));
    block.extend([0x0f, 0x1a]); // if-none-match (static index 41)
    block.extend(literal("\"x\""));
    let mut stream = TcpStream::connect(server.rest).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    stream.write_all(&hello).await.expect("request");
    let cut = closed_within(&mut stream, Duration::from_secs(6)).await;
    assert!(
        cut.is_some(),
        "held by a request that only looks like a long-poll"
    );
}
