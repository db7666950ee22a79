//! The Redis credential ledger against a real `redis-server`, driven through the service's own
//! `Ledger` type: a cluster's index can be mostly expired credentials (kept for an hour past
//! expiry), which cannot be produced through the API without waiting out real lifetimes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use kubeconfig_cache::{CacheConfig, RedisConfig, RedisTarget, Sealer, TieredCache};
use kubeconfigd::cached::CachedAsset;
use kubeconfigd::ledger::{Ledger as _, LedgerEntry, PAGE_SCAN_FACTOR, RedisLedger, unix_seconds};
use kubeconfigd_e2e::RedisServer;

fn entry(serial: &str, cluster: &str, not_after: u64) -> LedgerEntry {
    LedgerEntry {
        serial: serial.to_owned(),
        fingerprint: format!("{serial:0>64}"),
        cluster: cluster.to_owned(),
        kubernetes_user: "kubeconfigd:admin:admin@demo.test".to_owned(),
        kubernetes_group: "system:masters".to_owned(),
        issued_to: "admin@demo.test".to_owned(),
        issued_at: not_after - 600,
        not_before: not_after - 660,
        not_after,
        requested_seconds: 600,
        granted_seconds: 600,
        clamped: false,
        caller_key: false,
        reason: String::new(),
        request_id: "r".to_owned(),
        cluster_digest: String::new(),
        revoked: None,
    }
}

async fn ledger(redis: &RedisServer) -> Result<RedisLedger> {
    let cache = TieredCache::<CachedAsset>::new(CacheConfig {
        memory_bytes: 0,
        ttl: Duration::from_secs(60),
        redis: Some(RedisConfig {
            target: RedisTarget::Standalone(redis.url()),
            timeout: Duration::from_secs(2),
            ca: None,
            sealer: Sealer::from_key_file(&"ab".repeat(32)).context("sealing key")?,
        }),
    });
    let remote = Arc::clone(cache.remote().context("a Redis tier")?);
    let ledger = RedisLedger::new(remote);
    // The connection comes up in the background: wait (bounded) until a write is stored.
    let probe = entry("ffff", "probe", unix_seconds(SystemTime::now()) + 600);
    for _ in 0..50 {
        if ledger.record(&probe).await.is_ok() {
            return Ok(ledger);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the Redis ledger never stored an entry")
}

/// Before, a page that found only expired credentials in its bounded scan came back short with no
/// next token, and the listing silently ended there. Now it says where to resume, and paging on
/// finds every unexpired credential exactly once, in order, however long the runs of expired ones.
#[tokio::test]
async fn paging_resumes_past_runs_of_expired_credentials() -> Result<()> {
    let redis = RedisServer::start()?;
    let ledger = ledger(&redis).await?;
    let now = unix_seconds(SystemTime::now());
    let mut live = Vec::new();
    for n in 0..1300_u32 {
        let serial = format!("{n:04x}");
        let unexpired = n < 1000 && n % 97 == 0;
        let not_after = if unexpired { now + 600 } else { now - 60 };
        ledger.record(&entry(&serial, "one", not_after)).await?;
        if unexpired {
            live.push(serial);
        }
    }
    // Members nobody wrote through the ledger: not serials (dropped from the index when a page
    // meets them), and a serial with no entry (dropped too).
    redis.cli(&[
        "ZADD",
        "kubeconfigd:v1:credentials-of:one",
        "0",
        "0100-not-a-serial",
        "0",
        "0200ZZ",
        "0",
        "02ffa",
    ])?;
    let limit = 4;
    let (mut found, mut after, mut pages, mut resumed) = (Vec::new(), String::new(), 0, 0);
    loop {
        let page = ledger.page("one", &after, limit, now).await?;
        pages += 1;
        anyhow::ensure!(pages < 200, "paging did not end");
        anyhow::ensure!(page.entries.len() <= limit, "an oversized page");
        found.extend(page.entries.iter().map(|e| e.serial.clone()));
        match page.resume_after {
            Some(resume) => {
                anyhow::ensure!(
                    page.entries.len() < limit,
                    "a full page needs no resume point"
                );
                anyhow::ensure!(resume > after, "resuming must move forward");
                resumed += 1;
                after = resume;
            }
            None if page.entries.len() == limit => {
                after = page
                    .entries
                    .last()
                    .map(|e| e.serial.clone())
                    .unwrap_or_default();
            }
            None => break,
        }
    }
    assert_eq!(found, live, "every unexpired credential, once, in order");
    let budget = PAGE_SCAN_FACTOR * 16;
    assert!(resumed >= 1300 / budget - 1, "only {resumed} resumed pages");
    let members = String::from_utf8(redis.cli(&[
        "ZRANGE",
        "kubeconfigd:v1:credentials-of:one",
        "0",
        "-1",
    ])?)?;
    for stranger in ["0100-not-a-serial", "0200ZZ", "02ffa"] {
        assert!(
            !members.lines().any(|m| m == stranger),
            "{stranger} is still in the index"
        );
    }
    Ok(())
}
