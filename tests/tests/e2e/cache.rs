//! The cache against a real `redis-server` (and a real 3-master Redis Cluster): hits, misses and TTL,
//! invalidation across replicas, sealed values with no secrets in Redis, tampering, and Redis dying in
//! the middle of a stream of calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kubeconfigd_e2e::{
    Fixture, RedisCluster, RedisServer, Server, eventually, metrics, workspace_root,
};

const PROD_EAST: &str = "6470a2b1c5e6f1a2b3c4d5e1";
const DEMO_CLUSTERS: [&str; 4] = [
    PROD_EAST,
    "6470a2b1c5e6f1a2b3c4d5e2",
    "6470a2b1c5e6f1a2b3c4d5e3",
    "6470a2b1c5e6f1a2b3c4d5e4",
];

enum Backend {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    fn standalone() -> Self {
        Backend::Standalone(RedisServer::start().expect("redis-server"))
    }

    fn cluster() -> Self {
        Backend::Cluster(RedisCluster::start().expect("redis cluster"))
    }

    fn flags(&self) -> Vec<String> {
        match self {
            Backend::Standalone(r) => vec![
                "--redis-url".to_owned(),
                r.url(),
                "--cache-key-file".to_owned(),
                key_file(),
            ],
            Backend::Cluster(c) => vec![
                "--redis-cluster".to_owned(),
                c.urls(),
                "--cache-key-file".to_owned(),
                key_file(),
            ],
        }
    }

    fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Backend::Standalone(r) => vec![r],
            Backend::Cluster(c) => c.nodes.iter().collect(),
        }
    }

    fn nodes_mut(&mut self) -> Vec<&mut RedisServer> {
        match self {
            Backend::Standalone(r) => vec![r],
            Backend::Cluster(c) => c.nodes.iter_mut().collect(),
        }
    }

    /// Every cache key with the node that holds it.
    fn keys(&self) -> Vec<(u16, String)> {
        let mut keys = Vec::new();
        for node in self.nodes() {
            let out = node
                .cli(&["--scan", "--pattern", "kubeconfigd:*"])
                .expect("scan");
            keys.extend(
                String::from_utf8_lossy(&out)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|k| (node.port, k.to_owned())),
            );
        }
        keys
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes()
            .into_iter()
            .find(|n| n.port == port)
            .expect("node")
    }

    fn get(&self, port: u16, key: &str) -> Vec<u8> {
        let mut value = self.node(port).cli(&["GET", key]).expect("GET");
        if value.last() == Some(&b'\n') {
            value.pop();
        }
        value
    }

    fn kill(&mut self) {
        for node in self.nodes_mut() {
            node.kill();
        }
    }

    fn restart(&mut self) {
        for node in self.nodes_mut() {
            node.restart().expect("restart");
        }
        if let Backend::Cluster(c) = self {
            c.wait_ok().expect("cluster ok");
        }
    }
}

fn key_file() -> String {
    workspace_root()
        .join("tests/fixtures/cache.key")
        .display()
        .to_string()
}

fn args(base: &[&str], backend: &Backend) -> Vec<String> {
    let mut args: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
    args.extend(backend.flags());
    args
}

async fn fetch(server: &Server, uid: &str, asset: &str, key: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/{uid}/assets/{asset}",
            server.rest_url()
        ))
        .header("ApiKey", key)
        .send()
        .await
        .expect("REST");
    (
        response.status().as_u16(),
        response.text().await.expect("body"),
    )
}

async fn hits(server: &Server) -> HashMap<String, f64> {
    metrics(server).await.expect("metrics")
}

fn tier(m: &HashMap<String, f64>, tier: &str) -> f64 {
    m.get(&format!("kubeconfigd_cache_hits_total{{tier=\"{tier}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

async fn wait_redis_up(server: &Server) {
    let up = eventually(Duration::from_secs(10), || async {
        hits(server)
            .await
            .get("kubeconfigd_cache_redis_up")
            .copied()
            == Some(1.0)
    })
    .await;
    assert!(up, "redis tier never came up:\n{}", server.log_text());
}

async fn hits_misses_and_ttl(backend: &Backend) {
    let a = Server::start(&args(&["--demo", "--cache-ttl", "2s"], backend))
        .await
        .expect("A");
    wait_redis_up(&a).await;
    let (status, first) = fetch(&a, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(status, 200);
    let m = hits(&a).await;
    assert_eq!(
        (tier(&m, "render"), tier(&m, "memory")),
        (1.0, 0.0),
        "first call renders"
    );
    let (_, second) = fetch(&a, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(second, first);
    assert_eq!(
        tier(&hits(&a).await, "memory"),
        1.0,
        "second call is an in-process hit"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            !backend.keys().is_empty()
        })
        .await,
        "value stored in Redis"
    );

    // A second replica sharing the Redis: its first call is a Redis hit, same bytes.
    let b = Server::start(&args(&["--demo", "--cache-ttl", "2s"], backend))
        .await
        .expect("B");
    wait_redis_up(&b).await;
    let (_, from_b) = fetch(&b, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(from_b, first);
    let m = hits(&b).await;
    assert_eq!(
        (tier(&m, "redis"), tier(&m, "render")),
        (1.0, 0.0),
        "B answered from Redis"
    );

    // After the TTL both tiers have expired: the next call renders again.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, again) = fetch(&a, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(again, first, "same inputs, same bytes");
    assert_eq!(
        tier(&hits(&a).await, "render"),
        2.0,
        "expired entries are rendered again"
    );
}

async fn invalidation_across_replicas(backend: &Backend) {
    let fixture_a = Fixture::matrix("seed").expect("fixture");
    let fixture_b = Fixture::matrix("seed").expect("fixture");
    let a = Server::start(&[fixture_a.args(), backend.flags()].concat())
        .await
        .expect("A");
    let b = Server::start(&[fixture_b.args(), backend.flags()].concat())
        .await
        .expect("B");
    wait_redis_up(&a).await;
    wait_redis_up(&b).await;
    let uid = "00000000000000000000aa01";
    fetch(&b, uid, "kubeconfig", "matrix-cluster-viewer").await;
    fetch(&b, uid, "kubeconfig", "matrix-cluster-viewer").await;
    let before = hits(&b).await;
    assert_eq!(tier(&before, "memory"), 1.0);
    assert!(before["kubeconfigd_cache_memory_entries"] >= 1.0);

    let file = fixture_a.inventory().join("oidc-proxy.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace("oidc-extra-scope: email", "oidc-extra-scope: email,groups"),
    )
    .expect("write");
    let invalidated = eventually(Duration::from_secs(1), || async {
        hits(&b)
            .await
            .get("kubeconfigd_cache_invalidations_received_total")
            .copied()
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(
        invalidated,
        "B never heard of A's change:\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    fetch(&b, uid, "kubeconfig", "matrix-cluster-viewer").await;
    let after = hits(&b).await;
    assert_eq!(
        tier(&after, "memory"),
        1.0,
        "B's in-process entry was dropped: no new memory hit"
    );
}

/// Credentials of the demo, in clear and as they appear base64-encoded in a kubeconfig. With `pem`, any
/// PEM at all (sealed values must not even show the public CA).
fn secrets(pem: bool) -> Vec<String> {
    let mut secrets: Vec<String> = [
        "PRIVATE KEY",
        "LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVk", // base64 of "-----BEGIN RSA PRIVATE KEY"
        "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS",  // base64 of "-----BEGIN EC PRIVATE KEY"
        "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS",      // base64 of "-----BEGIN PRIVATE KEY"
        "demo-edge-client-secret",
        "demo-eks-admin-token-",
        "demo-proxy-sa-token-",
        "demo-admin-key",
    ]
    .map(str::to_owned)
    .to_vec();
    if pem {
        secrets.extend(["-----BEGIN".to_owned(), "LS0tLS1CRUdJTi".to_owned()]);
    }
    // Every line of every demo key, and its base64 form's distinctive prefix.
    for entry in std::fs::read_dir(workspace_root().join("deploy/demo/inventory")).expect("demo") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        let mut in_key = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
                in_key = true;
            } else if line.starts_with("-----END") {
                in_key = false;
            } else if in_key && line.len() > 20 {
                secrets.push(line.to_owned());
            }
        }
    }
    secrets
}

async fn fetch_every_demo_asset(server: &Server) -> usize {
    let mut served = 0;
    for uid in DEMO_CLUSTERS {
        for asset in ["kubeconfig", "kubeconfig?frp=false", "adminkubeconfig"] {
            let (status, _) = fetch(server, uid, asset, "demo-admin-key").await;
            assert_eq!(status, 200, "{uid} {asset}");
            served += 1;
        }
    }
    served
}

async fn raw_values_hold_no_secrets(backend: &Backend) {
    let server = Server::start(&args(&["--demo"], backend))
        .await
        .expect("server");
    wait_redis_up(&server).await;
    fetch_every_demo_asset(&server).await;
    // Distinct variants: frp and direct differ only for the two proxied clusters.
    let stored = eventually(Duration::from_secs(3), || async {
        backend.keys().len() == 10
    })
    .await;
    assert!(stored, "expected 10 keys, found {:?}", backend.keys());
    let secrets = secrets(true);
    assert!(secrets.len() > 20, "the scan looks for real key material");
    for (port, key) in backend.keys() {
        let value = backend.get(port, &key);
        assert!(!value.is_empty(), "{key}");
        let text = String::from_utf8_lossy(&value);
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{key} holds {secret:?}");
        }
        assert!(value.starts_with(b"KCS1"), "{key} is sealed");
    }
}

/// What someone who can write to Redis (but does not hold the cache key) can try: plant a kubeconfig of
/// their own under the key a fresh replica will read, in the checksummed plain layout earlier versions
/// accepted, sealed with another key, or giant; and publish invalidations. None of it is served.
async fn planted_values_are_never_served(backend: &Backend) {
    use sha2::Digest as _;
    let a = Server::start(&args(&["--demo", "--cache-memory", "0"], backend))
        .await
        .expect("A");
    wait_redis_up(&a).await;
    let (status, genuine) = fetch(&a, PROD_EAST, "kubeconfig", "demo-viewer-key").await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(2), || async {
            backend.keys().len() == 1
        })
        .await
    );
    let (port, key) = backend.keys().remove(0);
    let evil_yaml = genuine.replace(
        "https://cluster-6470a2b1c5e6f1a2b3c4d5e1.proxy.demo.test:443",
        "https://attacker.example.test:443",
    );
    assert_ne!(evil_yaml, genuine);
    let etag = hex::encode(sha2::Sha256::digest(evil_yaml.as_bytes()));
    let envelope = serde_json::json!({
        "v": 1, "file_name": "prod-east.kubeconfig", "server_kind": "proxy", "auth_kind": "oidc",
        "etag": etag, "carries_credential": false, "yaml": evil_yaml,
    })
    .to_string();
    let mut plain = b"KCP1".to_vec();
    plain.extend_from_slice(&sha2::Sha256::digest(envelope.as_bytes()));
    plain.extend_from_slice(envelope.as_bytes());
    let other_key = kubeconfig_cache::Sealer::from_key_file(&"cd".repeat(32)).expect("key");
    let foreign = other_key.seal(&key, envelope.as_bytes()).expect("seal");
    let mut giant = b"KCS1".to_vec();
    giant.resize(3 << 20, b'x');
    let plants: [(&str, Vec<u8>); 3] = [("plain", plain), ("foreign", foreign), ("giant", giant)];

    // A fresh replica sharing the Redis.
    let b = Server::start(&args(&["--demo", "--cache-memory", "0"], backend))
        .await
        .expect("B");
    wait_redis_up(&b).await;
    let node = backend.node(port);
    for (round, (what, value)) in plants.iter().enumerate() {
        node.set_bytes(&key, value).expect("plant");
        assert_eq!(&backend.get(port, &key)[..4], &value[..4], "{what} planted");
        let (status, served) = fetch(&b, PROD_EAST, "kubeconfig", "demo-viewer-key").await;
        assert_eq!(status, 200, "{what}");
        assert!(!served.contains("attacker"), "{what}: planted bytes served");
        assert_eq!(served, genuine, "{what}: rendered afresh");
        assert_eq!(
            hits(&b).await["kubeconfigd_cache_discarded_total"],
            (round + 1) as f64,
            "{what} discarded"
        );
    }

    // A forged invalidation is counted and ignored; a genuine one (A's edit-free publish is not
    // reachable from outside, so B's own counter of received messages is what must stay put).
    let received_before = hits(&b).await["kubeconfigd_cache_invalidations_received_total"];
    node.cli(&[
        "PUBLISH",
        "kubeconfigd:v1:invalidate",
        "attacker 6470a2b1c5e6f1a2b3c4d5e1",
    ])
    .expect("PUBLISH");
    let forged = eventually(Duration::from_secs(2), || async {
        hits(&b)
            .await
            .get("kubeconfigd_cache_forged_invalidations_total")
            .copied()
            == Some(1.0)
    })
    .await;
    assert!(forged, "forged invalidation not counted:\n{}", b.log_text());
    assert_eq!(
        hits(&b).await["kubeconfigd_cache_invalidations_received_total"],
        received_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_without_a_cache_key_refuses_to_start() {
    let redis = RedisServer::start().expect("redis-server");
    let error = Server::start(&["--demo".to_owned(), "--redis-url".to_owned(), redis.url()])
        .await
        .expect_err("must not start");
    let text = format!("{error:#}");
    assert!(
        text.contains("--cache-key-file") && text.contains("openssl rand -hex 32"),
        "{text}"
    );
}

async fn tampering_causes_a_rerender(backend: &Backend) {
    let server = Server::start(&args(&["--demo", "--cache-memory", "0"], backend))
        .await
        .expect("server");
    wait_redis_up(&server).await;
    let (_, original) = fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            backend.keys().len() == 1
        })
        .await
    );
    let (port, key) = backend.keys().remove(0);
    let value = backend.get(port, &key);
    let offset = value.len() / 2;
    let replacement = if value[offset] == b'A' { "B" } else { "A" };
    backend
        .node(port)
        .cli(&["SETRANGE", &key, &offset.to_string(), replacement])
        .expect("SETRANGE");
    assert_ne!(backend.get(port, &key), value, "one byte flipped");

    let (status, served) = fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(
        (status, served.as_str()),
        (200, original.as_str()),
        "re-rendered, right bytes"
    );
    let m = hits(&server).await;
    assert_eq!(m["kubeconfigd_cache_discarded_total"], 1.0);
    assert_eq!((tier(&m, "redis"), tier(&m, "render")), (0.0, 2.0));

    // Truncated values are discarded too; the re-render stored a good value again meanwhile.
    assert!(
        eventually(Duration::from_secs(2), || async {
            backend.get(port, &key).starts_with(b"KCS1") && backend.get(port, &key) != value
        })
        .await
    );
    backend
        .node(port)
        .cli(&["SET", &key, "KCS1abc"])
        .expect("SET");
    let (_, served) = fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(served, original);
    assert_eq!(
        hits(&server).await["kubeconfigd_cache_discarded_total"],
        2.0
    );
}

async fn redis_dies_mid_stream(backend: &mut Backend) {
    let server = Arc::new(
        Server::start(&args(
            &["--demo", "--cache-memory", "0", "--redis-timeout", "50ms"],
            backend,
        ))
        .await
        .expect("server"),
    );
    wait_redis_up(&server).await;
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (server, done, failed) = (Arc::clone(&server), Arc::clone(&done), Arc::clone(&failed));
        workers.push(tokio::spawn(async move {
            for _ in 0..300 {
                let (status, body) =
                    fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
                if status != 200 || !body.contains("client-key-data") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            done.load(Ordering::Relaxed) >= 250
        })
        .await
    );
    backend.kill();
    assert!(
        eventually(Duration::from_secs(30), || async {
            done.load(Ordering::Relaxed) >= 700
        })
        .await,
        "calls keep flowing with Redis dead"
    );
    // Marked down once the failures add up (a cluster client may first reconnect to a node that is
    // about to die, so allow a few seconds).
    let down = eventually(Duration::from_secs(5), || async {
        hits(&server)
            .await
            .get("kubeconfigd_cache_redis_up")
            .copied()
            == Some(0.0)
    })
    .await;
    assert!(down, "redis never marked down:\n{}", server.log_text());
    backend.restart();
    for worker in workers {
        worker.await.expect("worker");
    }
    assert_eq!(done.load(Ordering::Relaxed), 1200);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no call failed while Redis died:\n{}",
        server.log_text()
    );

    // Redis is used again: the hit counter rises. (Calls probe a Redis marked down once a second, so
    // keep calling until it is marked up: the workers may have finished before the restart.)
    let up = eventually(Duration::from_secs(10), || async {
        fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
        hits(&server)
            .await
            .get("kubeconfigd_cache_redis_up")
            .copied()
            == Some(1.0)
    })
    .await;
    assert!(up, "redis tier never came back:\n{}", server.log_text());
    let before = tier(&hits(&server).await, "redis");
    for _ in 0..20 {
        assert_eq!(
            fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key")
                .await
                .0,
            200
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = tier(&hits(&server).await, "redis");
    assert!(
        after > before,
        "redis hits rose after restart ({before} -> {after}):\n{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(
        log.matches("redis unavailable").count() <= 2,
        "one log line per state change:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_hits_misses_and_ttl() {
    hits_misses_and_ttl(&Backend::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_invalidation_across_replicas() {
    invalidation_across_replicas(&Backend::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_sealed_values_hold_no_secrets() {
    raw_values_hold_no_secrets(&Backend::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_planted_values_are_never_served() {
    planted_values_are_never_served(&Backend::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_tampering_causes_a_rerender() {
    tampering_causes_a_rerender(&Backend::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_redis_dies_mid_stream() {
    redis_dies_mid_stream(&mut Backend::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_custom_ca() {
    let redis = RedisServer::start_tls().expect("TLS redis-server");
    let ca = workspace_root()
        .join("tests/fixtures/tls/ca.crt")
        .display()
        .to_string();
    let server = Server::start(
        &[
            "--demo",
            "--cache-memory",
            "0",
            "--cache-key-file",
            &key_file(),
            "--redis-url",
            &redis.url(),
            "--redis-ca-file",
            &ca,
        ]
        .map(str::to_owned),
    )
    .await
    .expect("server");
    wait_redis_up(&server).await;
    let (_, first) = fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            !redis
                .cli(&["KEYS", "kubeconfigd:*"])
                .expect("keys")
                .is_empty()
        })
        .await
    );
    let (_, second) = fetch(&server, PROD_EAST, "adminkubeconfig", "demo-admin-key").await;
    assert_eq!(first, second);
    assert_eq!(
        tier(&hits(&server).await, "redis"),
        1.0,
        "served from Redis over TLS"
    );

    // A server certificate the configured CA did not sign: Redis is never used, calls still succeed.
    let wrong_ca = workspace_root()
        .join("tests/fixtures/matrix/inventory/pki/ca.crt")
        .display()
        .to_string();
    let distrustful = Server::start(
        &[
            "--demo",
            "--cache-memory",
            "0",
            "--redis-url",
            &redis.url(),
            "--redis-ca-file",
            &wrong_ca,
            "--cache-key-file",
            &key_file(),
        ]
        .map(str::to_owned),
    )
    .await
    .expect("server");
    for _ in 0..3 {
        assert_eq!(
            fetch(&distrustful, PROD_EAST, "adminkubeconfig", "demo-admin-key")
                .await
                .0,
            200
        );
    }
    let m = hits(&distrustful).await;
    assert_eq!(
        (m["kubeconfigd_cache_redis_up"], tier(&m, "redis")),
        (0.0, 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_suite() {
    let mut backend = Backend::cluster();
    hits_misses_and_ttl(&backend).await;
    flush(&backend);
    invalidation_across_replicas(&backend).await;
    flush(&backend);
    raw_values_hold_no_secrets(&backend).await;
    flush(&backend);
    tampering_causes_a_rerender(&backend).await;
    flush(&backend);
    redis_dies_mid_stream(&mut backend).await;
}

fn flush(backend: &Backend) {
    for node in backend.nodes() {
        node.cli(&["FLUSHALL"]).expect("FLUSHALL");
    }
}
