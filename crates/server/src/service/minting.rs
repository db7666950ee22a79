//! Minting admin credentials for a caller: the lifetime (asked for, clamped), reuse of a credential
//! issued earlier while more than half its lifetime remains, the mint itself, the ledger entry (before
//! the credential is handed out: a credential the ledger does not know is never served) and the audit
//! event. The access decision is made before, by the core; this only decides what an allowed caller
//! receives.

use crate::audit::{Auditor, Auth, Event, Record};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use kubeconfig_mint::{ClientPublicKey, KeySource, Subject, Validity};
use kubeconfig_policy::MIN_LIFETIME_SECONDS;
use kubeconfig_render::{IssuedCertificate, PemBundle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::loading::record::{ClientCa, ClusterEntry, Minting};
use crate::service::error::{CoreError, ErrorKind};
use crate::service::ledger::{Ledger, LedgerEntry, unix_seconds};

/// What the caller asks of a minted credential.
#[derive(Debug, Clone, Default)]
pub struct MintOptions {
    /// The lifetime asked for; the cluster's default when `None`.
    pub expiration_seconds: Option<i64>,
    /// The caller's own key (a `PUBLIC KEY` or `CERTIFICATE REQUEST` PEM block).
    pub client_key: Option<String>,
    /// Why the caller needs the file.
    pub reason: String,
}

/// A credential for one caller: what goes into the file, and the ledger's record of it.
#[derive(Debug, Clone)]
pub struct MintedCredential {
    pub certificate: IssuedCertificate,
    pub entry: LedgerEntry,
    /// Whether it was issued earlier and reused.
    pub reused: bool,
}

/// Counters of minting.
#[derive(Debug, Clone, Copy, Default)]
pub struct MintStats {
    pub minted: u64,
    pub reused: u64,
    pub ledger_failures: u64,
    /// Mints refused by the per-caller rate limit.
    pub rate_limited: u64,
    /// Ledger values read back that did not authenticate.
    pub forged: u64,
}

/// Mints and reuses credentials, recording each in the ledger.
pub struct Minter {
    ledger: Arc<dyn Ledger>,
    /// Concurrent requests for the same credential wait for each other (by key hash), so a burst
    /// mints once and the rest reuse.
    stripes: Vec<tokio::sync::Mutex<()>>,
    minted: AtomicU64,
    reused: AtomicU64,
    ledger_failures: AtomicU64,
    /// The warning about them, at most once per interval (every one is counted).
    ledger_failure_warning: kubeconfig_logline::Throttle,
    rate_limited: AtomicU64,
    /// Mints per caller in any sixty seconds; 0 disables the limit.
    max_per_minute: u32,
    recent: std::sync::Mutex<RecentMints>,
    /// Serials revoked here, for the watches of this replica to replace at once.
    revocations: tokio::sync::broadcast::Sender<String>,
    /// Where `credential issued` records go.
    auditor: Arc<Auditor>,
}

/// The window of the per-caller mint limit.
const MINT_WINDOW: Duration = Duration::from_secs(60);

/// The times of each caller's mints in the last [`MINT_WINDOW`]: a sliding window, so that no sixty
/// seconds ever see more than the limit (a fixed window per calendar minute lets twice the limit
/// through across a minute boundary). A caller's record holds at most `limit` instants; callers with
/// nothing left in the window are dropped whenever the map has doubled since it was last swept, so
/// the memory follows the callers of the last minute.
#[derive(Debug, Default)]
struct RecentMints {
    callers: std::collections::HashMap<String, std::collections::VecDeque<Instant>>,
    sweep_at: usize,
}

impl RecentMints {
    /// Takes one of `user`'s `limit` mints in the window ending at `now`, or says how long until one
    /// is free.
    fn take(&mut self, user: &str, limit: u32, now: Instant) -> Result<(), Duration> {
        let limit = limit as usize;
        let window_start = now.checked_sub(MINT_WINDOW);
        let expired = |at: &Instant| window_start.is_some_and(|start| *at <= start);
        if self.callers.len() >= self.sweep_at {
            self.callers
                .retain(|_, times| times.back().is_some_and(|at| !expired(at)));
            self.sweep_at = (self.callers.len() * 2).max(1024);
        }
        let times = self.callers.entry(user.to_owned()).or_default();
        while times.front().is_some_and(expired) {
            times.pop_front();
        }
        if times.len() >= limit {
            let oldest = times.front().copied().unwrap_or(now);
            return Err((oldest + MINT_WINDOW).saturating_duration_since(now));
        }
        times.push_back(now);
        Ok(())
    }
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("ledger", &self.ledger.kind())
            .finish_non_exhaustive()
    }
}

/// A credential kept for reuse (sealed when it is in Redis).
#[derive(Serialize, Deserialize)]
struct Kept {
    serial: String,
    certificate: String,
    key: Option<String>,
}

/// Hex SHA-256 over what a minted credential depends on in the cluster: the API server, the cluster CA
/// and the client CA. A credential recorded with another value is stale.
pub fn cluster_digest(cluster: &ClusterEntry, ca: Option<&ClientCa>) -> String {
    let mut digest = Sha256::new();
    digest.update(cluster.record.api_server().as_bytes());
    digest.update([0]);
    digest.update(cluster.record.certificate_authority_der());
    digest.update([0]);
    if let Some(ca) = ca {
        digest.update(ca.certificate_der());
    }
    hex::encode(digest.finalize())
}

impl Minter {
    pub fn new(ledger: Arc<dyn Ledger>) -> Self {
        Minter {
            ledger,
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            minted: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            ledger_failures: AtomicU64::new(0),
            ledger_failure_warning: Default::default(),
            rate_limited: AtomicU64::new(0),
            max_per_minute: 0,
            recent: std::sync::Mutex::default(),
            revocations: tokio::sync::broadcast::channel(256).0,
            auditor: Arc::new(Auditor::default()),
        }
    }

    /// Sends `credential issued` records to `auditor` (by default, to the log).
    pub fn with_auditor(mut self, auditor: Arc<Auditor>) -> Self {
        self.auditor = auditor;
        self
    }

    /// Serials revoked on this replica from now on.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.revocations.subscribe()
    }

    /// Tells this replica's watches that a serial was revoked.
    pub fn revoked(&self, serial: &str) {
        // Nobody watching is fine.
        let _ = self.revocations.send(serial.to_owned());
    }

    /// Limits fresh mints to `per_minute` per caller (0: no limit). Reuse is never limited: the limit
    /// bounds what one caller can make the ledger and the CPU do, not how often they download.
    pub fn with_rate_limit(mut self, per_minute: u32) -> Self {
        self.max_per_minute = per_minute;
        self
    }

    /// Takes one of the caller's mints of the last sixty seconds, or refuses.
    fn take_mint(&self, user: &str, now: Instant) -> Result<(), CoreError> {
        if self.max_per_minute == 0 {
            return Ok(());
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .take(user, self.max_per_minute, now)
            .map_err(|wait| {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                CoreError::new(
                    ErrorKind::TooManyRequests,
                    format!(
                        "at most {} admin credentials are minted per caller per minute (in any sixty seconds); retry in {} s (a download within half a credential's lifetime reuses it and is not limited)",
                        self.max_per_minute,
                        wait.as_secs().max(1)
                    ),
                )
            })
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn stats(&self) -> MintStats {
        MintStats {
            minted: self.minted.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            ledger_failures: self.ledger_failures.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            forged: self.ledger.forged(),
        }
    }

    /// The lifetime granted for `asked` (seconds), and whether it was cut to the maximum.
    pub fn lifetime(minting: &Minting, asked: Option<i64>) -> Result<(u64, u64, bool), CoreError> {
        let requested = match asked {
            None => minting.default_lifetime_seconds,
            Some(seconds) if seconds < MIN_LIFETIME_SECONDS as i64 => {
                return Err(CoreError::bad_request(format!(
                    "expiration_seconds must be at least {MIN_LIFETIME_SECONDS} (got {seconds})"
                )));
            }
            Some(seconds) => seconds as u64,
        };
        let granted = requested.min(minting.max_lifetime_seconds);
        Ok((requested, granted, granted < requested))
    }

    /// A credential for `user` (with the groups of their token) on `cluster`: reused when one issued
    /// for the same user, cluster revision, key and lifetime has more than half its lifetime left
    /// (and is not revoked), else minted and recorded — unless `may_mint` is false, when there is
    /// then none (UNAVAILABLE: nothing to reuse).
    pub async fn credential(
        &self,
        (user, groups, auth): (&str, &[String], &Auth),
        cluster: &ClusterEntry,
        (minting, ca): (&Minting, &ClientCa),
        options: &MintOptions,
        request_id: &str,
        may_mint: bool,
    ) -> Result<MintedCredential, CoreError> {
        let (requested, granted, clamped) = Self::lifetime(minting, options.expiration_seconds)?;
        let client_key = options
            .client_key
            .as_deref()
            .map(ClientPublicKey::from_pem)
            .transpose()
            .map_err(|e| CoreError::bad_request(format!("public_key/csr: {e}")))?;
        if client_key
            .as_ref()
            .is_some_and(|key| !key.possession_proven() && !minting.allow_bare_public_keys)
        {
            return Err(CoreError::bad_request(
                "public_key: a bare public key proves nothing about who holds its private key; send a csr (a CERTIFICATE REQUEST signed with the key) instead (this tenant does not set credentials.allowBarePublicKeys)",
            ));
        }
        let key_kind = client_key.as_ref().map_or_else(
            || "generated-p256".to_owned(),
            |k| format!("spki-{}", k.digest()),
        );
        let reuse_digest = Sha256::digest(
            format!(
                "{user}\0{}\0{}\0{key_kind}\0{granted}",
                cluster.uid(),
                cluster.revision
            )
            .as_bytes(),
        );
        let reuse_key = hex::encode(reuse_digest);
        let stripe = usize::from(reuse_digest[0]) % self.stripes.len();
        let _turn = self.stripes[stripe].lock().await;
        let now = SystemTime::now();
        if let Some(mut kept) = self.reusable(&reuse_key, granted, now).await {
            kept.entry.requested_seconds = requested;
            kept.entry.clamped = clamped;
            if may_mint {
                // A long-poll looking whether the held file is still current serves nothing.
                self.reused.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(kept);
        }
        if !may_mint {
            return Err(CoreError::new(
                ErrorKind::Unavailable,
                "no credential kept for reuse",
            ));
        }
        self.take_mint(user, Instant::now())?;
        let authority = ca.authority().map_err(|reason| {
            tracing::error!(cluster = %cluster.uid(), %reason, "the client CA cannot sign");
            CoreError::new(
                ErrorKind::Unavailable,
                format!(
                    "cluster {} cannot mint admin credentials: {reason}",
                    cluster.name()
                ),
            )
        })?;
        let common_name = format!("{}{user}", minting.user_prefix);
        // Checked: the lifetime is bounded when the tenant file loads, but an expiry past what the
        // clock can represent must be a refusal, never a panic.
        let not_after = now
            .checked_add(Duration::from_secs(granted))
            .ok_or_else(|| {
                CoreError::bad_request(format!(
                    "a lifetime of {granted} seconds ends past what a certificate can say"
                ))
            })?;
        let not_before = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        let issued = authority
            .issue(
                Subject {
                    common_name: &common_name,
                    organization: Some(&minting.group),
                },
                Validity {
                    not_before,
                    not_after,
                },
                client_key
                    .as_ref()
                    .map_or(KeySource::Generate, KeySource::Client),
            )
            .map_err(|e| CoreError::bad_request(e.to_string()))?;
        let entry = LedgerEntry {
            serial: issued.serial.clone(),
            fingerprint: issued.fingerprint.clone(),
            cluster: cluster.uid().to_string(),
            kubernetes_user: common_name,
            kubernetes_group: minting.group.to_string(),
            issued_to: user.to_owned(),
            issued_groups: groups.to_vec(),
            issued_at: unix_seconds(now),
            not_before: unix_seconds(issued.not_before),
            not_after: unix_seconds(issued.not_after),
            requested_seconds: requested,
            granted_seconds: granted,
            clamped,
            caller_key: client_key.is_some(),
            reason: options.reason.clone(),
            request_id: request_id.to_owned(),
            cluster_digest: cluster_digest(cluster, Some(ca)),
            revoked: None,
        };
        if let Err(error) = self.ledger.record(&entry).await {
            self.ledger_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = self.ledger_failure_warning.due() {
                tracing::warn!(cluster = %cluster.uid(), %error, held_back, "a minted credential could not be recorded; it was not served (at most one such warning per 10 s, with the count held back; all are counted in kubeconfigd_credential_ledger_failures)");
            }
            return Err(CoreError::new(
                ErrorKind::Unavailable,
                "the credential ledger cannot be written right now, so no credential was issued; retry shortly",
            ));
        }
        let certificate = IssuedCertificate {
            certificate: PemBundle::from_der("CERTIFICATE", &issued.certificate_der),
            key: issued
                .private_key
                .as_ref()
                .map(|key| PemBundle::from_der("PRIVATE KEY", key.pkcs8_der())),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let kept = Kept {
            serial: entry.serial.clone(),
            certificate: b64.encode(&issued.certificate_der),
            key: issued
                .private_key
                .as_ref()
                .map(|k| b64.encode(k.pkcs8_der())),
        };
        if let Ok(bytes) = serde_json::to_vec(&kept) {
            self.ledger
                .keep_reusable(&reuse_key, bytes, Duration::from_secs(granted / 2))
                .await;
        }
        self.minted.fetch_add(1, Ordering::Relaxed);
        let mut record = Record::new(Event::CredentialIssued, user, auth);
        record
            .with("cluster", &**cluster.uid())
            .with("serial", entry.serial.as_str())
            .with("fingerprint", entry.fingerprint.as_str())
            .with("kubernetes_user", entry.kubernetes_user.as_str())
            .with("not_after", entry.not_after)
            .with("granted_seconds", granted)
            .with("clamped", clamped)
            .with("caller_key", entry.caller_key)
            .with("reason", entry.reason.as_str())
            .with("request_id", request_id);
        // In required mode the download that carries the credential waits for its own record,
        // which is queued after this one and written no earlier.
        let _ = self.auditor.record(&record);
        drop(record);
        Ok(MintedCredential {
            certificate,
            entry,
            reused: false,
        })
    }

    /// A kept credential that may still be handed out: recorded, not revoked, and more than half of
    /// `granted` left.
    async fn reusable(&self, key: &str, granted: u64, now: SystemTime) -> Option<MintedCredential> {
        let bytes = self.ledger.reusable(key).await?;
        let kept: Kept = serde_json::from_slice(&bytes).ok()?;
        let entry = self.ledger.by_serial(&kept.serial).await.ok()??;
        let left = entry.not_after.saturating_sub(unix_seconds(now));
        if entry.revoked.is_some() || left * 2 <= granted {
            return None;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let certificate_der = b64.decode(kept.certificate).ok()?;
        // The kept certificate must be the one the ledger recorded under that serial.
        if hex::encode(Sha256::digest(&certificate_der)) != entry.fingerprint {
            return None;
        }
        let key = match kept.key {
            Some(key) => Some(PemBundle::from_der("PRIVATE KEY", &b64.decode(key).ok()?)),
            None => None,
        };
        Some(MintedCredential {
            certificate: IssuedCertificate {
                certificate: PemBundle::from_der("CERTIFICATE", &certificate_der),
                key,
            },
            entry,
            reused: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mint_limit_holds_across_a_minute_boundary() {
        let minter = Minter::new(Arc::new(crate::service::ledger::MemoryLedger::default()))
            .with_rate_limit(2);
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        // Two at the end of one minute, then the next minute starts.
        assert!(minter.take_mint("a", at(58)).is_ok());
        assert!(minter.take_mint("a", at(59)).is_ok());
        assert!(
            minter.take_mint("a", at(61)).is_err(),
            "three in three seconds"
        );
        assert!(
            minter.take_mint("a", at(117)).is_err(),
            "three within a minute"
        );
        assert!(
            minter.take_mint("b", at(61)).is_ok(),
            "each caller has a budget"
        );
        // Each mint frees its place a minute after it was taken.
        assert!(minter.take_mint("a", at(118)).is_ok());
        assert!(minter.take_mint("a", at(118)).is_err());
        assert!(minter.take_mint("a", at(119)).is_ok());
        assert!(minter.take_mint("a", at(120)).is_err());
        assert_eq!(minter.stats().rate_limited, 4);
    }

    #[test]
    fn a_refusal_says_when_the_next_mint_is_free() {
        let mut recent = RecentMints::default();
        let start = Instant::now();
        assert_eq!(recent.take("a", 1, start), Ok(()));
        assert_eq!(
            recent.take("a", 1, start + Duration::from_secs(45)),
            Err(Duration::from_secs(15))
        );
    }

    #[test]
    fn callers_with_nothing_in_the_window_are_forgotten() {
        let mut recent = RecentMints::default();
        let start = Instant::now();
        for n in 0..2000 {
            recent.take(&format!("u{n}"), 5, start).expect("first mint");
        }
        let later = start + Duration::from_secs(61);
        for n in 0..2000 {
            recent.take(&format!("v{n}"), 5, later).expect("first mint");
        }
        assert!(
            recent.callers.len() < 3000,
            "the callers of a minute ago were swept: {}",
            recent.callers.len()
        );
    }
}
