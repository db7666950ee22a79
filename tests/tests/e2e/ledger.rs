//! The credential ledgers driven through the service's own `Ledger` type, the Redis one against a
//! real `redis-server`: a cluster's index can be mostly expired credentials (kept for an hour past
//! expiry), which cannot be produced through the API without waiting out real lifetimes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use kubeconfig_cache::{CacheConfig, RedisConfig, RedisTarget, Sealer, TieredCache};
use kubeconfigd::service::cached::CachedAsset;
use kubeconfigd::service::ledger::{
    Ledger, LedgerEntry, MemoryLedger, PAGE_SCAN_FACTOR, RedisLedger, unix_seconds,
};
use kubeconfigd_e2e::RedisServer;

async fn redis_ledger(redis: &RedisServer) -> Result<RedisLedger> {
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
    let probe = LedgerEntry::sample("ffff", "probe", unix_seconds(SystemTime::now()) + 600);
    for _ in 0..50 {
        if ledger.record(&probe).await.is_ok() {
            return Ok(ledger);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the Redis ledger never stored an entry")
}

/// Records 1,300 credentials of cluster `one` (serials `0000`–`0513`): every 97th of the first
/// 1,000 unexpired, all others expired but kept. Pages through them four at a time, and checks that
/// every unexpired one comes back exactly once, in order, and that pages stopped at their scan
/// bound and resumed rather than ending the listing.
async fn pages_past_runs_of_expired_credentials(ledger: &dyn Ledger) -> Result<()> {
    let now = unix_seconds(SystemTime::now());
    let mut live = Vec::new();
    for n in 0..1300_u32 {
        let serial = format!("{n:04x}");
        let unexpired = n < 1000 && n % 97 == 0;
        let not_after = if unexpired { now + 600 } else { now - 60 };
        ledger
            .record(&LedgerEntry::sample(&serial, "one", not_after))
            .await?;
        if unexpired {
            live.push(serial);
        }
    }
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
    assert_eq!(
        found,
        live,
        "{}: every unexpired credential, once, in order",
        ledger.kind()
    );
    let budget = PAGE_SCAN_FACTOR * 16;
    assert!(
        resumed >= 1300 / budget - 1,
        "{}: only {resumed} resumed pages",
        ledger.kind()
    );
    Ok(())
}

/// Before, a Redis page that met only expired credentials in its bounded scan came back short with
/// no next token, and the listing silently ended there (this test then found 2 of the 11); the
/// in-memory ledger had no bound and walked every kept entry on every page.
#[tokio::test]
async fn both_ledgers_page_past_runs_of_expired_credentials() -> Result<()> {
    pages_past_runs_of_expired_credentials(&MemoryLedger::default()).await?;
    let redis = RedisServer::start()?;
    pages_past_runs_of_expired_credentials(&redis_ledger(&redis).await?).await
}

/// Index members nobody wrote through the ledger (a hostile or confused Redis writer) are dropped
/// from the index when a page meets them, and never become a page token.
#[tokio::test]
async fn index_members_that_are_not_credentials_are_dropped() -> Result<()> {
    let redis = RedisServer::start()?;
    let ledger = redis_ledger(&redis).await?;
    let now = unix_seconds(SystemTime::now());
    for serial in ["0a", "0c"] {
        ledger
            .record(&LedgerEntry::sample(serial, "one", now + 600))
            .await?;
    }
    let index = "kubeconfigd:v1:credentials-of:one";
    let strangers = ["0a-not-a-serial", "0bZZ", "0b", "0d"];
    for stranger in strangers {
        redis.cli(&["ZADD", index, "0", stranger])?;
    }
    let page = ledger.page("one", "", 10, now).await?;
    let serials: Vec<_> = page.entries.iter().map(|e| e.serial.as_str()).collect();
    assert_eq!(serials, ["0a", "0c"]);
    assert_eq!(page.resume_after, None);
    let members = String::from_utf8(redis.cli(&["ZRANGE", index, "0", "-1"])?)?;
    for stranger in strangers {
        assert!(
            !members.lines().any(|m| m == stranger),
            "{stranger} is still in the index"
        );
    }
    Ok(())
}
