//! The credential the agent presents, and when to present a new one. Workload credentials are short
//! lived and replaced on disk under the agent: the kubelet rewrites a projected service-account token
//! (through a `..data` symlink swap) well before it expires, and a SPIFFE helper or cert-manager's CSI
//! driver rewrites a client certificate the same way. A watch stream is authenticated once, when it
//! opens, and the server ends it once the credential no longer holds; so the agent reads its
//! credential files at every connection, checks them for changes while it watches, and reconnects
//! with the new credential as soon as one appears — and, should none appear, re-reads them shortly
//! before the token it holds expires. Nothing here logs or formats a secret: only the flag naming the
//! file, and when the token expires.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// The file holding the bearer credential, re-read at every connection and whenever it changes.
#[derive(Debug, Clone)]
pub enum CredentialFile {
    ApiKey(PathBuf),
    Token(PathBuf),
}

impl CredentialFile {
    /// The flag that names the file (for messages).
    pub fn flag(&self) -> &'static str {
        match self {
            CredentialFile::ApiKey(_) => "--api-key-file",
            CredentialFile::Token(_) => "--token-file",
        }
    }
}

/// Where the agent's credentials come from: a bearer credential, a client certificate, or both.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub secret: Option<CredentialFile>,
    /// The client certificate and its key (PEM), for mutual TLS.
    pub certificate: Option<(PathBuf, PathBuf)>,
}

impl Sources {
    /// The flags naming the credential files (for messages), e.g. `--token-file`.
    pub fn flags(&self) -> String {
        let mut flags = Vec::new();
        if let Some(secret) = &self.secret {
            flags.push(secret.flag());
        }
        if self.certificate.is_some() {
            flags.push("--cert-file/--key-file");
        }
        flags.join(" and ")
    }
}

/// The credentials read for one connection. Its `Debug` shows no secret.
#[derive(Clone)]
pub struct Presented {
    /// The metadata entry carrying the bearer credential.
    header: Option<(&'static str, AsciiMetadataValue)>,
    /// The client certificate and key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// When the token expires, if it is a JWT with an `exp`.
    pub expires: Option<SystemTime>,
    /// A digest of everything read, to tell whether the files changed.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("header", &self.header.as_ref().map(|(name, _)| *name))
            .field("identity", &self.identity.is_some())
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Presented {
    /// Puts the bearer credential, if any, on a request.
    pub fn authorize(&self, metadata: &mut MetadataMap) {
        if let Some((name, value)) = &self.header {
            metadata.insert(*name, value.clone());
        }
    }
}

fn read_file(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if bytes.trim_ascii().is_empty() {
        return Err(format!("{flag} {} is empty", path.display()));
    }
    Ok(bytes)
}

/// Reads every credential file once.
pub fn read(sources: &Sources) -> Result<Presented, String> {
    let mut digest = Sha256::new();
    let mut absorb = |part: &[u8]| {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    };
    let mut header = None;
    let mut expires = None;
    if let Some(secret) = &sources.secret {
        let (CredentialFile::ApiKey(path) | CredentialFile::Token(path)) = secret;
        let bytes = read_file(path, secret.flag())?;
        let text = std::str::from_utf8(bytes.trim_ascii())
            .map_err(|_| format!("{} {} is not text", secret.flag(), path.display()))?;
        absorb(text.as_bytes());
        let (name, value) = match secret {
            CredentialFile::ApiKey(_) => ("apikey", text.to_owned()),
            CredentialFile::Token(_) => {
                expires = token_expiry(text);
                ("authorization", format!("Bearer {text}"))
            }
        };
        let value = value.parse().map_err(|_| {
            format!(
                "{} {}: not a valid header value",
                secret.flag(),
                path.display()
            )
        })?;
        header = Some((name, value));
    }
    let mut identity = None;
    if let Some((cert, key)) = &sources.certificate {
        let cert = read_file(cert, "--cert-file")?;
        let key = read_file(key, "--key-file")?;
        absorb(&cert);
        absorb(&key);
        identity = Some((cert, key));
    }
    Ok(Presented {
        header,
        identity,
        expires,
        fingerprint: digest.finalize().into(),
    })
}

/// When a JWT expires, read from its `exp` claim without checking the signature (the server checks
/// it; the agent only needs to know when to present a new one). A token that is not a JWT, or has no
/// numeric `exp`, has no known expiry.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    if !(0.0..=1e11).contains(&exp) {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs_f64(exp))
}

/// The most a token is renewed ahead of its expiry.
const RENEW_MARGIN: Duration = Duration::from_secs(60);

/// How long after connecting with a token that has `remaining` lifetime left the agent re-reads the
/// token file, if it has not noticed a change by then: `remaining - min(60 s, remaining / 5)`, the
/// later of `exp - 60 s` and 80% of the remaining lifetime.
///
/// This is the fallback; the regular path is noticing the kubelet's rewrite, which it does at 80% of
/// the token's lifetime. Re-reading at 80% too would race that rewrite and mostly find the old token;
/// a minute before expiry the new token has long been there, and a minute leaves room for several
/// reconnection attempts. A short-lived token (under five minutes) gets a fifth of its remaining life
/// instead, so that the margin never swallows the lifetime.
pub fn renew_after(remaining: Duration) -> Duration {
    remaining.saturating_sub(RENEW_MARGIN.min(remaining / 5))
}

/// What a watch does about its credential: checks the files every `check_every`, and once more when
/// the token in hand is due for renewal.
#[derive(Debug)]
pub struct Renewal {
    check_every: Duration,
    next_check: Instant,
    renew_at: Option<Instant>,
    fingerprint: [u8; 32],
    /// The last problem logged with the files, so that it is logged once.
    complained: Option<String>,
}

impl Renewal {
    pub fn new(presented: &Presented, check_every: Duration) -> Renewal {
        Self::new_at(presented, check_every, Instant::now(), SystemTime::now())
    }

    fn new_at(
        presented: &Presented,
        check_every: Duration,
        now: Instant,
        wall: SystemTime,
    ) -> Renewal {
        let renew_at = presented.expires.map(|expires| {
            let remaining = expires.duration_since(wall).unwrap_or_default();
            now + renew_after(remaining)
        });
        Renewal {
            check_every,
            next_check: now + check_every,
            renew_at,
            fingerprint: presented.fingerprint,
            complained: None,
        }
    }

    /// When [`Renewal::check`] has something to do next.
    pub fn wake(&self) -> Instant {
        self.renew_at
            .map_or(self.next_check, |at| at.min(self.next_check))
    }

    /// Re-reads the files when due. Returns why the watch should reconnect: the files hold a new
    /// credential, and `usable` accepts it (e.g. the TLS settings can be built from a new certificate
    /// and key). An unreadable, unusable or already expired one is logged once and not used; the
    /// current watch goes on with the credential it opened with.
    pub fn check(
        &mut self,
        sources: &Sources,
        usable: impl Fn(&Presented) -> Result<(), String>,
    ) -> Option<String> {
        self.check_at(sources, usable, Instant::now(), SystemTime::now())
    }

    fn check_at(
        &mut self,
        sources: &Sources,
        usable: impl Fn(&Presented) -> Result<(), String>,
        now: Instant,
        wall: SystemTime,
    ) -> Option<String> {
        let renewing = self.renew_at.is_some_and(|at| at <= now);
        if now < self.next_check && !renewing {
            return None;
        }
        self.next_check = now + self.check_every;
        let problem = match read(sources) {
            Ok(fresh) if fresh.fingerprint == self.fingerprint => {
                if renewing {
                    self.renew_at = None;
                    tracing::warn!(
                        files = %sources.flags(),
                        "the token in hand expires soon and the file still holds it; reconnecting as soon as it is replaced"
                    );
                }
                return None;
            }
            Ok(fresh) if fresh.expires.is_some_and(|at| at <= wall) => {
                format!("{} holds an expired token", sources.flags())
            }
            Ok(fresh) => match usable(&fresh) {
                Err(message) => message,
                Ok(()) => {
                    let why = if renewing {
                        "the token in hand is about to expire"
                    } else {
                        "changed"
                    };
                    return Some(format!(
                        "{} {why}: reconnecting with the new credential",
                        sources.flags()
                    ));
                }
            },
            Err(message) => message,
        };
        if self.complained.as_ref() != Some(&problem) {
            tracing::warn!(problem = %problem, "cannot use the renewed credential yet; keeping the current watch");
            self.complained = Some(problem);
        }
        None
    }
}

/// Whether the credential files are readable and hold something other than `fingerprint` (`None`:
/// nothing was read before).
pub fn changed(sources: &Sources, fingerprint: Option<&[u8; 32]>) -> bool {
    read(sources).is_ok_and(|fresh| Some(&fresh.fingerprint) != fingerprint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.c2lnbmF0dXJl",
            encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            encode(claims)
        )
    }

    #[test]
    fn the_expiry_is_the_exp_claim_of_a_jwt_and_unknown_otherwise() {
        assert_eq!(
            token_expiry(&jwt(r#"{"exp":1700000000,"aud":"kubeconfigd"}"#)),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            token_expiry(&jwt(r#"{"exp":1700000000.5}"#)),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500))
        );
        // Padded base64 is tolerated.
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":12}"#);
        assert_eq!(
            token_expiry(&format!("e30.{payload}==.c2ln")),
            Some(UNIX_EPOCH + Duration::from_secs(12))
        );
        for token in [
            "an-api-key-or-opaque-token".to_owned(),
            jwt(r#"{"aud":"kubeconfigd"}"#),
            jwt(r#"{"exp":"1700000000"}"#),
            jwt(r#"{"exp":-5}"#),
            jwt(r#"{"exp":1e300}"#),
            jwt("not json"),
            "a.!!!.c".to_owned(),
            format!("{}.extra", jwt(r#"{"exp":1700000000}"#)),
            "only.two".to_owned(),
        ] {
            assert_eq!(token_expiry(&token), None, "{token}");
        }
    }

    #[test]
    fn a_token_is_renewed_a_minute_before_expiry_or_at_four_fifths_when_short() {
        let s = Duration::from_secs;
        assert_eq!(renew_after(s(3600)), s(3540));
        assert_eq!(renew_after(s(600)), s(540));
        assert_eq!(renew_after(s(300)), s(240), "where both rules meet");
        assert_eq!(renew_after(s(100)), s(80));
        assert_eq!(renew_after(s(8)), Duration::from_millis(6400));
        assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
        for remaining in (0..10_000).step_by(7).map(s) {
            let after = renew_after(remaining);
            assert!(after <= remaining, "never after expiry");
            assert!(after >= remaining * 4 / 5, "never before 80%");
            assert!(remaining - after <= RENEW_MARGIN);
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn reading_the_files_presents_the_credential_and_hides_it_from_debug() {
        let dir = tempfile::tempdir().expect("dir");
        let token = dir.path().join("token");
        write(&token, &format!("{}\n", jwt(r#"{"exp":4000000000}"#)));
        let sources = Sources {
            secret: Some(CredentialFile::Token(token.clone())),
            certificate: None,
        };
        let presented = read(&sources).expect("read");
        let mut metadata = MetadataMap::new();
        presented.authorize(&mut metadata);
        let value = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(value, format!("Bearer {}", jwt(r#"{"exp":4000000000}"#)));
        assert_eq!(
            presented.expires,
            Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
        assert!(!format!("{presented:?}").contains("Bearer"));
        assert!(!changed(&sources, Some(&presented.fingerprint)));
        write(&token, "another\n");
        assert!(changed(&sources, Some(&presented.fingerprint)));
        write(&token, "\n");
        assert!(read(&sources).is_err(), "an empty file is no credential");
        assert!(!changed(&sources, None));
        assert!(
            !changed(&sources, Some(&presented.fingerprint)),
            "an unreadable file is no change to act on"
        );
        write(&token, "readable again\n");
        assert!(changed(&sources, None), "readable at last");
    }

    #[test]
    fn a_watch_reconnects_when_the_file_changes_or_the_token_is_due() {
        let dir = tempfile::tempdir().expect("dir");
        let token = dir.path().join("token");
        let sources = Sources {
            secret: Some(CredentialFile::Token(token.clone())),
            certificate: None,
        };
        // The clocks, advanced by hand: wall-clock seconds since the epoch, and a monotonic instant.
        let epoch = 1_800_000_000u64;
        let wall = |at: u64| UNIX_EPOCH + Duration::from_secs(at);
        let start = Instant::now();
        let mono = |at: u64| start + Duration::from_secs(at - epoch);
        let expiring = |at: u64| jwt(&format!(r#"{{"exp":{at}}}"#));
        let ok = |_: &Presented| Ok(());
        let renewal_at = |check_every: u64| {
            let presented = read(&sources).expect("read");
            Renewal::new_at(
                &presented,
                Duration::from_secs(check_every),
                mono(epoch),
                wall(epoch),
            )
        };

        // A token with 100 s left, files checked every hour: only the expiry wakes the watch, 80 s in.
        write(&token, &expiring(epoch + 100));
        let mut renewal = renewal_at(3600);
        assert_eq!(renewal.wake(), mono(epoch + 80));
        write(&token, &expiring(epoch + 700));
        assert_eq!(
            renewal.check_at(&sources, ok, mono(epoch + 79), wall(epoch + 79)),
            None,
            "not yet due"
        );
        let reason = renewal
            .check_at(&sources, ok, mono(epoch + 80), wall(epoch + 80))
            .expect("due, and the file holds a new token");
        assert!(reason.contains("--token-file"), "{reason}");
        assert!(!reason.contains("Bearer"), "{reason}");

        // Due, but the file still holds the same token: no reconnection, and no busy loop.
        write(&token, &expiring(epoch + 10));
        let mut renewal = renewal_at(3600);
        assert_eq!(renewal.wake(), mono(epoch + 8));
        assert_eq!(
            renewal.check_at(&sources, ok, mono(epoch + 8), wall(epoch + 8)),
            None
        );
        assert_eq!(renewal.wake(), mono(epoch + 8 + 3600));

        // Checked every 5 s: a change is noticed at the next check; an empty file or an expired
        // token is not used, and the watch goes on.
        write(&token, "opaque-token");
        let mut renewal = renewal_at(5);
        assert_eq!(renewal.wake(), mono(epoch + 5));
        write(&token, "");
        assert_eq!(
            renewal.check_at(&sources, ok, mono(epoch + 5), wall(epoch + 5)),
            None
        );
        assert_eq!(renewal.wake(), mono(epoch + 10));
        write(&token, &expiring(epoch + 9));
        assert_eq!(
            renewal.check_at(&sources, ok, mono(epoch + 10), wall(epoch + 10)),
            None,
            "an expired token is not used"
        );
        write(&token, "refused-token");
        let refuse = |_: &Presented| Err("unusable".to_owned());
        assert_eq!(
            renewal.check_at(&sources, refuse, mono(epoch + 15), wall(epoch + 15)),
            None,
            "an unusable credential is not used"
        );
        write(&token, "opaque-token-2");
        assert_eq!(
            renewal.check_at(&sources, ok, mono(epoch + 17), wall(epoch + 17)),
            None,
            "not before the next check"
        );
        assert!(
            renewal
                .check_at(&sources, ok, mono(epoch + 20), wall(epoch + 20))
                .is_some()
        );
    }
}
