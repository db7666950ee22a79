//! Every issuer whose bearer tokens are accepted ([`Issuers`]): the entries of `--authentication-config`
//! (each with keys from discovery, inline or a file) and the single issuer of the `--jwt-*` flags. A
//! token goes to the entry its unverified `iss` names exactly; only then is its signature checked,
//! with the key its `kid` names, and only for the algorithms that key's type allows.
//!
//! Keys are refreshed every `--jwks-refresh-interval` (a failed fetch keeps the last good keys), and
//! at once when a token names a `kid` the set lacks — but at most once per
//! `--jwks-min-refresh-interval` per issuer, one fetch at a time (callers wait for it, bounded), and a
//! caller that comes while refreshing is rate-limited is refused at once: a flood of made-up `kid`s
//! costs the issuer one request per interval, not one per token. An issuer never reached refuses its
//! tokens; it is said in `/readyz`'s text (the server stays ready: everything else is served), in the
//! log and in the metrics.
//!
//! A verified token is remembered by its bytes ([`super::remembered`]) together with the entry
//! and the key that verified it: when the configuration is reloaded, or the key leaves the issuer's
//! set, the remembered answer is no longer used (and the cache entries of a removed key are dropped).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Validation};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Map, Value};

use super::configuration::{AuthenticationConfiguration, JwtAuthenticator, KeySource};
use super::jwks::{self, KeySet};
use super::remembered::{Recalled, Remembered, Weighed};
use super::tokens::{JwtVerifier, has_crit_header, lifetime_allowed, still_valid};
use super::{CLOCK_SKEW_SECONDS, Identity, Method, Proof, now_seconds};
use crate::loading::reloading;

/// How long a caller waits for a key fetch it triggered or found in flight.
const FETCH_WAIT: Duration = Duration::from_secs(6);

/// How often the background task looks at the issuers (file stamps, due refreshes).
const TICK: Duration = Duration::from_secs(1);

/// After a failed fetch, the next one is due after at most this long (not a full refresh interval).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// How many bytes of verified tokens are remembered (see [`super::tokens`]).
const VERIFIED_TOKEN_BYTES: u64 = 16 * 1024 * 1024;

/// Settings that hold for every issuer.
#[derive(Debug, Clone, Copy)]
pub struct TokenSettings {
    /// `--jwt-max-lifetime`: longest a token may still be used, from now.
    pub max_lifetime: Duration,
    /// `--jwks-refresh-interval`.
    pub refresh_interval: Duration,
    /// `--jwks-min-refresh-interval`.
    pub min_refresh_interval: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            max_lifetime: Duration::from_secs(24 * 3600),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(3),
        }
    }
}

/// The keys of one issuer and how they are kept: survives a configuration reload that leaves the
/// issuer's key source as it was.
struct Keys {
    issuer: String,
    source: KeySource,
    tls: Option<Arc<rustls::ClientConfig>>,
    current: ArcSwap<KeySet>,
    /// Held by the one fetch in flight.
    gate: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<FetchState>,
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
}

#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_failed: bool,
    /// Whether keys were ever loaded.
    loaded: bool,
    last_error: Option<String>,
    /// The stamp of a `jwksFile` when last read.
    file_stamp: Option<reloading::Stamp>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Keys {
    fn new(issuer: &str, source: &KeySource) -> Result<Self, String> {
        let tls = match source {
            KeySource::Discovery {
                certificate_authority,
                ..
            } => Some(jwks::client_config(certificate_authority.as_deref())?),
            _ => None,
        };
        let keys = Keys {
            issuer: issuer.to_owned(),
            source: source.clone(),
            tls,
            current: ArcSwap::from_pointee(KeySet::default()),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            state: Mutex::new(FetchState::default()),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
        };
        match source {
            KeySource::Inline(jwks) => {
                let bytes = serde_json::to_vec(jwks).map_err(|e| e.to_string())?;
                let parsed = jwks::parse(&bytes).map_err(|e| e.to_string())?;
                keys.current
                    .store(Arc::new(KeySet::carry_over(&KeySet::default(), parsed)));
                keys.state().loaded = true;
            }
            KeySource::File(path) => {
                let stamp = reloading::stamp_of(path);
                let parsed = read_jwks_file(path)?;
                keys.current
                    .store(Arc::new(KeySet::carry_over(&KeySet::default(), parsed)));
                let mut state = keys.state();
                state.loaded = true;
                state.file_stamp = stamp;
            }
            KeySource::Discovery { .. } => {}
        }
        Ok(keys)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether keys can be fetched again (discovery or a file; not inline keys).
    fn refreshable(&self) -> bool {
        !matches!(self.source, KeySource::Inline(_))
    }

    /// Reads the keys again (a fetch, or the file) and puts them in service; a failure keeps the keys
    /// in service. Runs with the gate held.
    async fn refresh(&self, verified: &VerifiedCache) {
        self.state().last_attempt = Some(Instant::now());
        let result = match &self.source {
            KeySource::Discovery { discovery_url, .. } => match &self.tls {
                Some(tls) => jwks::fetch(&self.issuer, discovery_url, tls)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no TLS configuration".to_owned()),
            },
            KeySource::File(path) => {
                let stamp = reloading::stamp_of(path);
                let read = read_jwks_file(path);
                self.state().file_stamp = stamp;
                read
            }
            KeySource::Inline(_) => return,
        };
        match result {
            Ok(parsed) => {
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                let previous = self.current.load_full();
                let next = KeySet::carry_over(&previous, parsed);
                let removed: HashSet<u64> = previous
                    .keys
                    .iter()
                    .map(|k| k.serial)
                    .filter(|serial| !next.holds(*serial))
                    .collect();
                let count = next.keys.len();
                self.current.store(Arc::new(next));
                {
                    let mut state = self.state();
                    if !state.loaded || state.last_failed {
                        tracing::info!(issuer = %self.issuer, keys = count, "issuer keys loaded");
                    }
                    state.loaded = true;
                    state.last_failed = false;
                    state.last_error = None;
                }
                if !removed.is_empty() {
                    tracing::info!(issuer = %self.issuer, removed = removed.len(), "issuer keys removed; tokens they verified are refused");
                    let issuer = self.issuer.clone();
                    verified.retain(|token| {
                        token.issuer.config.issuer.url != issuer
                            || !removed.contains(&token.key_serial)
                    });
                }
            }
            Err(error) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                let mut state = self.state();
                if state.loaded {
                    tracing::warn!(issuer = %self.issuer, %error, "issuer keys not refreshed; keeping the last good keys");
                } else {
                    tracing::warn!(issuer = %self.issuer, %error, "issuer never reached: its tokens are refused");
                }
                state.last_failed = true;
                state.last_error = Some(error);
            }
        }
    }

    /// Whether the background task should refresh now.
    fn due(&self, settings: &TokenSettings) -> bool {
        let state = self.state();
        match &self.source {
            KeySource::Inline(_) => false,
            KeySource::File(path) => reloading::stamp_of(path) != state.file_stamp,
            KeySource::Discovery { .. } => match state.last_attempt {
                None => true,
                Some(at) => {
                    let wait = if state.last_failed {
                        settings
                            .refresh_interval
                            .min(RETRY_AFTER_FAILURE)
                            .max(settings.min_refresh_interval)
                    } else {
                        settings.refresh_interval
                    };
                    at.elapsed() >= wait
                }
            },
        }
    }
}

fn read_jwks_file(path: &std::path::Path) -> Result<Vec<jsonwebtoken::jwk::Jwk>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(jwks::MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > jwks::MAX_RESPONSE_BYTES {
        return Err(format!(
            "{}: larger than {} bytes",
            path.display(),
            jwks::MAX_RESPONSE_BYTES
        ));
    }
    jwks::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// One configured issuer: its entry and its keys.
#[derive(Debug)]
struct Issuer {
    config: JwtAuthenticator,
    /// `config.issuer.url`, shared with every identity it proves.
    url: Arc<str>,
    keys: Arc<Keys>,
}

/// The configured issuers by URL, as of one load of the file.
#[derive(Debug, Default)]
pub struct Table {
    issuers: Vec<Arc<Issuer>>,
}

impl Table {
    fn get(&self, url: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| i.config.issuer.url == url)
    }

    /// Builds the table of `config`, reusing the keys of `previous` for every issuer whose key source
    /// did not change. `legacy` is the issuer of `--jwt-issuer`, which no entry may repeat.
    fn build(
        config: &AuthenticationConfiguration,
        previous: &Table,
        legacy: Option<&str>,
    ) -> Result<Table, String> {
        let mut issuers = Vec::with_capacity(config.jwt.len());
        for (i, entry) in config.jwt.iter().enumerate() {
            let url = &entry.issuer.url;
            if legacy == Some(url.as_str()) {
                return Err(format!(
                    "jwt[{i}].issuer.url: {url} is also --jwt-issuer; configure it in one place"
                ));
            }
            let keys = match previous
                .get(url)
                .filter(|old| old.keys.source == entry.issuer.keys)
            {
                Some(old) => Arc::clone(&old.keys),
                None => Arc::new(Keys::new(url, &entry.issuer.keys).map_err(|e| {
                    let field = match entry.issuer.keys {
                        KeySource::File(_) => "jwksFile",
                        KeySource::Inline(_) => "jwks",
                        KeySource::Discovery { .. } => "certificateAuthority",
                    };
                    format!("jwt[{i}].issuer.{field}: {e}")
                })?),
            };
            issuers.push(Arc::new(Issuer {
                url: Arc::from(entry.issuer.url.as_str()),
                config: entry.clone(),
                keys,
            }));
        }
        Ok(Table { issuers })
    }
}

/// A token that passed every check, with what verified it.
#[derive(Debug)]
struct Verified {
    issuer: Arc<Issuer>,
    key_serial: u64,
    user: Arc<str>,
    groups: Arc<[String]>,
    exp: u64,
    nbf: Option<u64>,
    iat: Option<u64>,
}

impl Weighed for Verified {
    fn weight(&self) -> u64 {
        let text = self.user.len() + self.groups.iter().map(String::len).sum::<usize>();
        (text + 160 + 24 * self.groups.len()) as u64
    }
}

impl Verified {
    fn valid_at(&self, now: u64, max_lifetime: u64) -> bool {
        still_valid((self.exp, self.nbf, self.iat), now, max_lifetime)
    }
}

type VerifiedCache = Remembered<Verified>;

/// Every issuer whose tokens are accepted.
pub struct Issuers {
    legacy: Option<JwtVerifier>,
    table: Arc<ArcSwap<Table>>,
    settings: TokenSettings,
    verified: VerifiedCache,
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuers")
            .field("legacy", &self.legacy)
            .field("issuers", &self.table.load().issuers.len())
            .finish_non_exhaustive()
    }
}

impl Default for Issuers {
    fn default() -> Self {
        Issuers::new(None)
    }
}

/// Keeps the background work of [`Issuers`] (refreshes, the configuration file watch) alive.
#[derive(Debug)]
pub struct Background {
    _refresher: tokio::task::JoinHandle<()>,
    _reloading: Option<reloading::Reloading>,
}

impl Drop for Background {
    fn drop(&mut self) {
        self._refresher.abort();
    }
}

impl Issuers {
    /// The issuer of `--jwt-*`, when given, and no configured ones.
    pub fn new(legacy: Option<JwtVerifier>) -> Self {
        Issuers {
            legacy,
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            settings: TokenSettings::default(),
            verified: Remembered::new(VERIFIED_TOKEN_BYTES),
        }
    }

    /// The same, with these settings and the issuers of `config` (keys from discovery are fetched by
    /// [`Issuers::spawn`]).
    pub fn configured(
        legacy: Option<JwtVerifier>,
        settings: TokenSettings,
        config: Option<&AuthenticationConfiguration>,
    ) -> Result<Self, String> {
        let mut issuers = Issuers::new(legacy);
        issuers.settings = settings;
        if let Some(config) = config {
            let table = Table::build(config, &Table::default(), issuers.legacy_issuer())?;
            issuers.table.store(Arc::new(table));
        }
        Ok(issuers)
    }

    fn legacy_issuer(&self) -> Option<&str> {
        self.legacy.as_ref().map(JwtVerifier::issuer)
    }

    /// Starts the background work: fetching and refreshing keys, and re-reading `config_file` (the
    /// `--authentication-config` file) when it changes. Dropping what is returned stops it.
    pub fn spawn(self: &Arc<Self>, config_file: Option<PathBuf>) -> Background {
        let reloading = config_file.map(|path| {
            let table = Arc::clone(&self.table);
            let legacy = self.legacy_issuer().map(str::to_owned);
            let file = path.clone();
            let this = Arc::downgrade(self);
            reloading::spawn(
                "authentication configuration",
                vec![path],
                Arc::clone(&self.table),
                move || {
                    let config =
                        AuthenticationConfiguration::load(&file).map_err(|e| e.to_string())?;
                    Table::build(&config, &table.load(), legacy.as_deref())
                },
                move |_| {
                    if let Some(this) = this.upgrade() {
                        this.tick();
                    }
                },
            )
        });
        let this = Arc::downgrade(self);
        let refresher = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(this) = this.upgrade() else { return };
                this.tick();
            }
        });
        Background {
            _refresher: refresher,
            _reloading: reloading,
        }
    }

    /// Starts the refreshes that are due (each in its own task, one per issuer at a time).
    fn tick(&self) {
        let table = self.table.load_full();
        for issuer in &table.issuers {
            let keys = &issuer.keys;
            if !keys.due(&self.settings) {
                continue;
            }
            let Ok(guard) = Arc::clone(&keys.gate).try_lock_owned() else {
                continue;
            };
            let keys = Arc::clone(keys);
            let verified = self.verified.clone();
            tokio::spawn(async move {
                keys.refresh(&verified).await;
                drop(guard);
            });
        }
    }

    /// What is known of `token` at `now` without checking a signature: who it names, when it was
    /// verified (by a configured issuer or the `--jwt-*` one) and is still valid — its entry still
    /// configured, its key still in the issuer's set.
    pub fn recall(&self, token: &str, now: u64) -> Recalled {
        let Some(known) = self.verified.get(token) else {
            return match &self.legacy {
                Some(legacy) => legacy.recall(token, now),
                None => Recalled::Unknown,
            };
        };
        let current = self
            .table
            .load()
            .issuers
            .iter()
            .any(|i| Arc::ptr_eq(i, &known.issuer))
            && known.issuer.keys.current.load().holds(known.key_serial);
        if current && known.valid_at(now, self.settings.max_lifetime.as_secs()) {
            return Recalled::Known(identity_of(&known));
        }
        self.verified.forget(token);
        if current {
            // Expired, or beyond the lifetime allowed from now: nothing to check again.
            Recalled::Refused
        } else {
            // Its entry was reloaded or its key replaced: the token may verify anew.
            Recalled::Unknown
        }
    }

    /// Who a valid token names, or `None`.
    pub async fn verify(&self, token: &str) -> Option<Identity> {
        let max_lifetime = self.settings.max_lifetime.as_secs();
        match self.recall(token, now_seconds()) {
            Recalled::Known(identity) => return Some(identity),
            Recalled::Refused => return None,
            Recalled::Unknown => {}
        }
        // A remembered token is the same bytes as one that passed this check.
        if has_crit_header(token) {
            return None;
        }
        let iss = unverified_issuer(token)?;
        if self.legacy_issuer() == Some(iss.as_str()) {
            return self.legacy.as_ref()?.verify(token);
        }
        let issuer = Arc::clone(self.table.load().get(&iss)?);
        let header = jsonwebtoken::decode_header(token).ok()?;
        let mut candidates = issuer
            .keys
            .current
            .load()
            .candidates(header.kid.as_deref(), header.alg);
        if candidates.is_empty() {
            self.refresh_for_unknown_key(&issuer.keys).await;
            candidates = issuer
                .keys
                .current
                .load()
                .candidates(header.kid.as_deref(), header.alg);
        }
        let (verified, reusable) = candidates
            .iter()
            .find_map(|key| check(&issuer, key, header.alg, token, now_seconds(), max_lifetime))?;
        let verified = Arc::new(verified);
        if reusable {
            self.verified.insert(token, Arc::clone(&verified));
        }
        Some(identity_of(&verified))
    }

    /// A token names a key the issuer's set lacks: fetch again and wait for it, unless a fetch
    /// happened less than `--jwks-min-refresh-interval` ago or is in flight (then return at once).
    async fn refresh_for_unknown_key(&self, keys: &Arc<Keys>) {
        if !keys.refreshable() {
            return;
        }
        // When someone else's fetch is in flight, refuse at once rather than wait for it, so that
        // tokens naming made-up keys cannot hold request slots while an issuer is slow or
        // down (only the caller that started the fetch waits; a client with a genuinely new
        // key retries and is served once the keys are in).
        if let Ok(guard) = Arc::clone(&keys.gate).try_lock_owned() {
            let recent = keys
                .state()
                .last_attempt
                .is_some_and(|at| at.elapsed() < self.settings.min_refresh_interval);
            if recent {
                return;
            }
            let fetching = {
                let keys = Arc::clone(keys);
                let verified = self.verified.clone();
                tokio::spawn(async move {
                    keys.refresh(&verified).await;
                    drop(guard);
                })
            };
            let _ = tokio::time::timeout(FETCH_WAIT, fetching).await;
        }
    }

    /// Lines for `/readyz`: one per configured issuer without keys (never reached, or a bad file).
    pub fn readiness_detail(&self) -> String {
        let mut out = String::new();
        for issuer in &self.table.load().issuers {
            let state = issuer.keys.state();
            if !state.loaded {
                let _ = writeln!(
                    out,
                    "issuer {}: no keys yet, its tokens are refused ({})",
                    issuer.config.issuer.url,
                    state.last_error.as_deref().unwrap_or("not fetched yet")
                );
            }
        }
        out
    }
}

/// The issuers' metrics for `/metrics`, read at each scrape (the table changes with the configuration
/// file): one label value per configured issuer.
impl Collector for Issuers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let table = self.table.load();
        if table.issuers.is_empty() {
            return Ok(());
        }
        {
            let mut keys = encoder.encode_descriptor(
                "kubeconfigd_jwt_issuer_keys",
                "Verifying keys in service per configured token issuer (0: its tokens are refused).",
                None,
                MetricType::Gauge,
            )?;
            for issuer in &table.issuers {
                let labels = [("issuer", issuer.config.issuer.url.as_str())];
                ConstGauge::new(issuer.keys.current.load().keys.len() as u64)
                    .encode(keys.encode_family(&labels)?)?;
            }
        }
        // A counter: the encoder adds `_total`.
        let mut fetches = encoder.encode_descriptor(
            "kubeconfigd_jwks_fetches",
            "Key set fetches (or jwksFile reads) per configured token issuer, by result.",
            None,
            MetricType::Counter,
        )?;
        for issuer in &table.issuers {
            for (result, count) in [
                ("ok", &issuer.keys.fetches_ok),
                ("error", &issuer.keys.fetches_failed),
            ] {
                let labels = [
                    ("issuer", issuer.config.issuer.url.as_str()),
                    ("result", result),
                ];
                ConstCounter::new(count.load(Ordering::Relaxed))
                    .encode(fetches.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn identity_of(verified: &Verified) -> Identity {
    Identity {
        user: Arc::clone(&verified.user),
        groups: Arc::clone(&verified.groups),
        proof: Proof {
            method: Method::Token {
                issuer: Arc::clone(&verified.issuer.url),
            },
            expires_at: Some(verified.exp),
        },
    }
}

/// The `iss` of a token, read without checking anything (to pick the entry that will).
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// Every check of a token against one key: signature, `iss`, `aud`, times, then the claim rules and
/// mappings. With whether it may be reused (see [`super::tokens`]).
fn check(
    issuer: &Arc<Issuer>,
    key: &jwks::VerifyingKey,
    alg: Algorithm,
    token: &str,
    now: u64,
    max_lifetime: u64,
) -> Option<(Verified, bool)> {
    if !key.algorithms.contains(&alg) {
        return None;
    }
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&issuer.config.issuer.url]);
    validation.set_audience(&issuer.config.issuer.audiences);
    validation.leeway = CLOCK_SKEW_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.required_spec_claims =
        HashSet::from(["exp".to_owned(), "iss".to_owned(), "aud".to_owned()]);
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        .ok()?
        .claims;
    let exp = claims.get("exp")?.as_u64()?;
    let iat = match claims.get("iat") {
        None => None,
        Some(iat) => Some(iat.as_u64()?),
    };
    if !lifetime_allowed(exp, iat, now, max_lifetime) {
        return None;
    }
    let (user, groups) = map_claims(&issuer.config, &claims)?;
    let nbf = claims.get("nbf").and_then(Value::as_u64);
    let reusable = claims.get("nbf").is_none() || nbf.is_some();
    Some((
        Verified {
            issuer: Arc::clone(issuer),
            key_serial: key.serial,
            user: user.into(),
            groups: groups.into(),
            exp,
            nbf,
            iat,
        },
        reusable,
    ))
}

/// The user and groups the claims name under an entry's rules and mappings, or `None` when a rule
/// fails or a mapped claim is missing or malformed.
fn map_claims(
    config: &JwtAuthenticator,
    claims: &Map<String, Value>,
) -> Option<(String, Vec<String>)> {
    for rule in &config.claim_validation_rules {
        if claims.get(&rule.claim).and_then(Value::as_str) != Some(rule.required_value.as_str()) {
            return None;
        }
    }
    let username = &config.claim_mappings.username;
    let value = claims.get(&username.claim)?.as_str()?;
    if value.is_empty() {
        return None;
    }
    // As in Kubernetes: an e-mail names the caller only when a present `email_verified` is true.
    if username.claim == "email"
        && claims
            .get("email_verified")
            .is_some_and(|v| v != &Value::Bool(true))
    {
        return None;
    }
    // An `email` claim names an e-mail user or no one: a value with `:` or without `@` could name a
    // service account or SPIFFE user through an identity provider that lets people set their address.
    if username.claim == "email" && (value.contains(':') || !value.contains('@')) {
        return None;
    }
    let user = format!("{}{value}", username.prefix);
    // ASCII only, folded as ASCII (see `super::tokens`: Unicode folding maps look-alikes together).
    if !user.is_ascii() {
        return None;
    }
    let mut groups = Vec::new();
    if let Some(mapping) = &config.claim_mappings.groups {
        match claims.get(&mapping.claim) {
            None | Some(Value::Null) => {}
            Some(Value::String(group)) => groups.push(format!("{}{group}", mapping.prefix)),
            Some(Value::Array(values)) => {
                for value in values {
                    groups.push(format!("{}{}", mapping.prefix, value.as_str()?));
                }
            }
            Some(_) => return None,
        }
    }
    Some((kubeconfig_policy::canonical_user(&user), groups))
}

#[cfg(test)]
mod tests;
