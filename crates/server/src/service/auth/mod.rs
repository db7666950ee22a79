//! Authentication (docs/identity.md): who the caller is, from up to three credentials — an API key
//! looked up by its SHA-256 among the tenant's hashes ([`ApiKeys`]), a JWT bearer token verified
//! against the issuer its `iss` names ([`issuers`]: `--authentication-config` and `--jwt-*`), and a
//! client certificate verified by the TLS handshake ([`certificates`]). Every credential presented must verify, and when several are presented they
//! must name the same user, or the call is refused: one is never silently preferred to another.
//! Every failure is the same 401 with no hint which part was wrong.

pub mod certificates;
pub mod configuration;
pub mod issuers;
pub mod jwks;
pub mod remembered;
pub mod tokens;

use std::sync::Arc;

use kubeconfig_policy::ApiKeyHash;
use sha2::{Digest, Sha256};

pub use certificates::{ClientTrust, PeerCertificate, Rechecked};
pub use issuers::{Background, Issuers, TokenSettings};
pub use remembered::Recalled;
pub use tokens::{CLOCK_SKEW_SECONDS, JwtVerifier};

use crate::service::error::CoreError;

/// What the caller presented. `Debug` never prints the key or token.
#[derive(Default, Clone)]
pub struct Credentials {
    pub api_key: Option<String>,
    pub bearer: Option<String>,
    /// The client certificate the connection's TLS handshake verified, if any.
    pub certificate: Option<Arc<PeerCertificate>>,
    /// `ProjectUid` / `projectuid`: narrows the call to one project.
    pub project: Option<String>,
    /// The call's request id (for the audit trail).
    pub request_id: crate::telemetry::RequestId,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .field("certificate", &self.certificate)
            .field("project", &self.project)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl Credentials {
    /// Reads `apikey`, `authorization: Bearer …` and `projectuid` from HTTP headers or gRPC metadata
    /// (header names are case-insensitive, so `ApiKey` and `apikey` are the same).
    pub fn from_headers(
        headers: &http::HeaderMap,
        request_id: crate::telemetry::RequestId,
    ) -> Self {
        // Names built once, not parsed on every lookup.
        const API_KEY: http::HeaderName = http::HeaderName::from_static("apikey");
        const PROJECT: http::HeaderName = http::HeaderName::from_static("projectuid");
        // One pass over the (few) headers instead of a hashed look-up per name, most of which miss;
        // the first value of a name counts, as `HeaderMap::get` would take it.
        let (mut api_key, mut authorization, mut project) = (None, None, None);
        for (name, value) in headers {
            let slot = if *name == http::header::AUTHORIZATION {
                &mut authorization
            } else if *name == API_KEY {
                &mut api_key
            } else if *name == PROJECT {
                &mut project
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        let text = |value: Option<&http::HeaderValue>| {
            value.and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        Credentials {
            api_key: text(api_key),
            bearer: authorization
                .and_then(|v| v.to_str().ok())
                .and_then(Credentials::bearer_from_authorization),
            certificate: None,
            project: text(project),
            request_id,
        }
    }

    /// The same credentials with the connection's verified client certificate.
    #[must_use]
    pub fn with_certificate(mut self, certificate: Option<Arc<PeerCertificate>>) -> Self {
        self.certificate = certificate;
        self
    }

    /// Reads an `Authorization` header value; anything but `Bearer <token>` counts as no token.
    pub fn bearer_from_authorization(value: &str) -> Option<String> {
        let (scheme, token) = value.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .then(|| token.trim().to_owned())
    }
}

/// How a credential proved who the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// An API key from the tenant file.
    ApiKey,
    /// A bearer token signed by this issuer (its `iss`).
    Token { issuer: Arc<str> },
    /// A client certificate, by its serial number (hex) and issuer's subject.
    Certificate { serial: Arc<str>, issuer: Arc<str> },
}

/// One verified credential of a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub method: Method,
    /// When it stops being valid (seconds since the epoch); `None` for an API key.
    pub expires_at: Option<u64>,
}

/// Who a verified credential says its holder is. Shared, not copied, from what remembers it (a
/// verified token, a connection's certificate, the tenant's keys): a call clones pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user name: an e-mail, a Kubernetes user such as `system:serviceaccount:ns:name`, or a
    /// SPIFFE ID (already prefixed as the issuer's claim mapping says).
    pub user: Arc<str>,
    /// Groups (teams) the credential asserts.
    pub groups: Arc<[String]>,
    pub proof: Proof,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user name (e-mails lowercased); shared with what authenticated it.
    pub user: Arc<str>,
    /// Teams from the credentials (file teams are added by the tenant).
    pub groups: Arc<[String]>,
    /// The project the call is narrowed to, if any.
    pub project: Option<String>,
    /// Every credential that proved the caller, in the order API key, token, certificate (usually
    /// one, kept inline).
    pub proofs: smallvec::SmallVec<[Proof; 1]>,
}

impl Caller {
    /// When the first of the caller's credentials expires (seconds since the epoch), if any does:
    /// a stream opened with them ends then.
    pub fn expires_at(&self) -> Option<u64> {
        self.proofs.iter().filter_map(|p| p.expires_at).min()
    }
}

/// The groups of a credential that asserts none: one shared empty list, not an allocation per call.
fn no_groups() -> Arc<[String]> {
    static NONE: std::sync::LazyLock<Arc<[String]>> = std::sync::LazyLock::new(|| Arc::from([]));
    Arc::clone(&NONE)
}

/// Seconds since the epoch.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The tenant's API keys by their SHA-256, each with the user it belongs to.
///
/// A presented key is hashed and looked up: one hash and one map probe whatever the number of keys.
/// The probe compares digests, not keys, so its timing can at most tell an attacker something about
/// the digest of a key they already chose; it says nothing about a stored key (finding a key from its
/// digest is a preimage search). The map hashes with foldhash (seeded per process), not SipHash: its
/// keys are fixed when the tenant file loads and a lookup never inserts, so no caller can grow a
/// bucket.
///
/// A key that matched is remembered by its exact bytes, as a verified token is ([`remembered`]): a
/// caller presents the same key on every call, and its SHA-256 was the largest single cost of a
/// cached download. Only keys that matched are remembered, so a caller cannot choose what fills it;
/// each tenant file's keys have their own (a reload forgets them all).
#[derive(Debug)]
pub struct ApiKeys {
    /// Each key's user, in canonical form ([`kubeconfig_policy::canonical_user`]).
    users: std::collections::HashMap<ApiKeyHash, Arc<str>, foldhash::fast::RandomState>,
    matched: remembered::Remembered<str>,
}

/// Bytes of keys and user names remembered per tenant file.
const REMEMBERED_KEY_BYTES: u64 = 1 << 20;

impl Default for ApiKeys {
    fn default() -> Self {
        ApiKeys::new([])
    }
}

impl remembered::Weighed for str {
    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

impl ApiKeys {
    /// The index of `keys`; when two users list the same key, the first keeps it. A key whose user
    /// has a name no caller can have ([`kubeconfig_policy::user_name_problem`]) matches nobody, as a
    /// call presenting it would be refused anyway; names are kept in canonical form, so a call
    /// neither checks nor converts them again.
    pub fn new(keys: impl IntoIterator<Item = (ApiKeyHash, String)>) -> Self {
        let mut users = std::collections::HashMap::default();
        for (hash, user) in keys {
            if kubeconfig_policy::user_name_problem(&user).is_some() {
                tracing::debug!(
                    "an API key's user has a name no caller can have; it matches nobody"
                );
                continue;
            }
            users
                .entry(hash)
                .or_insert_with(|| Arc::from(kubeconfig_policy::canonical_user(&user)));
        }
        ApiKeys {
            users,
            matched: remembered::Remembered::new(REMEMBERED_KEY_BYTES),
        }
    }

    /// The user a presented key belongs to, in canonical form.
    pub fn user_of(&self, key: &str) -> Option<Arc<str>> {
        if let Some(user) = self.matched.get(key) {
            return Some(user);
        }
        let presented = ApiKeyHash::from_digest(Sha256::digest(key.as_bytes()).into());
        let user = Arc::clone(self.users.get(&presented)?);
        self.matched.insert(key, Arc::clone(&user));
        Some(user)
    }
}

/// Authenticates a caller from every credential it presented: each must verify, and all must name
/// the same user (groups are the union of what each asserts; the earliest expiry bounds the call).
pub async fn authenticate(
    credentials: &Credentials,
    keys: &ApiKeys,
    issuers: &Issuers,
) -> Result<Caller, CoreError> {
    // Held inline: a caller presents one to three credentials. The clock is read only by the
    // credentials that expire (the common call presents an API key alone).
    let mut identities: smallvec::SmallVec<[Identity; 1]> = smallvec::SmallVec::new();
    if let Some(key) = credentials.api_key.as_deref().filter(|k| !k.is_empty()) {
        let user = keys.user_of(key).ok_or_else(CoreError::unauthenticated)?;
        identities.push(Identity {
            user,
            groups: no_groups(),
            proof: Proof {
                method: Method::ApiKey,
                expires_at: None,
            },
        });
    }
    if let Some(token) = credentials.bearer.as_deref() {
        let identity = match issuers.recall(token, now_seconds()) {
            Recalled::Known(identity) => Some(identity),
            Recalled::Refused => None,
            // Boxed: the first sight of a token (a signature check, perhaps a key fetch) is rare,
            // and its future would otherwise enlarge every call's.
            Recalled::Unknown => Box::pin(issuers.verify(token)).await,
        };
        identities.push(identity.ok_or_else(CoreError::unauthenticated)?);
    }
    if let Some(certificate) = &credentials.certificate {
        identities.push(
            certificate
                .identity_at(now_seconds())
                .ok_or_else(CoreError::unauthenticated)?,
        );
    }
    let project = credentials.project.clone().filter(|p| !p.is_empty());
    caller_of(identities, project)
}

/// The caller the verified identities agree on, or 401 when there is none, they disagree, or a name
/// is not one a user can have (control characters, spaces, non-ASCII: see
/// [`kubeconfig_policy::user_name_problem`]). Names are compared in their canonical form (e-mails
/// lowercased, other names exactly).
fn caller_of(
    identities: impl IntoIterator<Item = Identity>,
    project: Option<String>,
) -> Result<Caller, CoreError> {
    let mut identities = identities.into_iter().map(|identity| {
        if kubeconfig_policy::user_name_problem(&identity.user).is_some() {
            tracing::debug!("refused: a credential names a user no tenant file can list");
            return Err(CoreError::unauthenticated());
        }
        // Shared as it is when already canonical (the usual case), else converted once.
        let user: Arc<str> = match kubeconfig_policy::canonical_user_form(&identity.user) {
            std::borrow::Cow::Borrowed(_) => Arc::clone(&identity.user),
            std::borrow::Cow::Owned(canonical) => Arc::from(canonical),
        };
        Ok((user, identity))
    });
    let (user, first) = identities.next().ok_or_else(CoreError::unauthenticated)??;
    let mut caller = Caller {
        user,
        groups: first.groups,
        project,
        proofs: smallvec::smallvec![first.proof],
    };
    for identity in identities {
        let (user, identity) = identity?;
        if *user != *caller.user {
            tracing::debug!("refused: the credentials presented name different users");
            return Err(CoreError::unauthenticated());
        }
        if identity.groups.iter().any(|g| !caller.groups.contains(g)) {
            let mut groups = caller.groups.to_vec();
            for group in identity.groups.iter() {
                if !groups.contains(group) {
                    groups.push(group.clone());
                }
            }
            caller.groups = groups.into();
        }
        caller.proofs.push(identity.proof);
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::error::ErrorKind;

    fn keys() -> ApiKeys {
        let hash = ApiKeyHash::from_digest(Sha256::digest(b"right-key").into());
        let other = ApiKeyHash::from_digest(Sha256::digest(b"other-key").into());
        ApiKeys::new([
            (hash, "a@x.test".to_owned()),
            (other, "b@x.test".to_owned()),
            (hash, "c@x.test".to_owned()),
        ])
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn credentials_are_the_first_value_of_each_header_whatever_its_case_or_place() {
        let mut headers = http::HeaderMap::new();
        headers.insert("user-agent", http::HeaderValue::from_static("x"));
        headers.append("ApiKey", http::HeaderValue::from_static("first-key"));
        headers.append("projectuid", http::HeaderValue::from_static("p1"));
        headers.append("apikey", http::HeaderValue::from_static("second-key"));
        headers.append(
            "Authorization",
            http::HeaderValue::from_static("Bearer  t0k "),
        );
        headers.append(
            "authorization",
            http::HeaderValue::from_static("Bearer other"),
        );
        let credentials = Credentials::from_headers(&headers, Default::default());
        assert_eq!(credentials.api_key.as_deref(), Some("first-key"));
        assert_eq!(credentials.bearer.as_deref(), Some("t0k"));
        assert_eq!(credentials.project.as_deref(), Some("p1"));
        let none = Credentials::from_headers(&http::HeaderMap::new(), Default::default());
        assert!(none.api_key.is_none() && none.bearer.is_none() && none.project.is_none());
        let mut basic = http::HeaderMap::new();
        basic.insert(
            "authorization",
            http::HeaderValue::from_static("Basic YTpi"),
        );
        assert!(
            Credentials::from_headers(&basic, Default::default())
                .bearer
                .is_none()
        );
    }

    #[test]
    fn api_key_matches_only_its_hash() {
        assert_eq!(
            keys()
                .user_of("right-key")
                .map(|u| u.to_string())
                .as_deref(),
            Some("a@x.test")
        );
        assert_eq!(
            keys()
                .user_of("other-key")
                .map(|u| u.to_string())
                .as_deref(),
            Some("b@x.test")
        );
        assert_eq!(keys().user_of("wrong-key"), None);
        assert_eq!(keys().user_of(""), None);
        let creds = Credentials {
            api_key: Some("wrong-key".into()),
            ..Default::default()
        };
        assert_eq!(
            block_on(authenticate(&creds, &keys(), &Issuers::default())).unwrap_err(),
            CoreError::unauthenticated()
        );
    }

    #[test]
    fn bearer_parsing_and_debug_redaction() {
        assert_eq!(
            Credentials::bearer_from_authorization("Bearer abc"),
            Some("abc".to_owned())
        );
        assert_eq!(Credentials::bearer_from_authorization("Basic abc"), None);
        let creds = Credentials {
            api_key: Some("secret-key".into()),
            bearer: Some("tok".into()),
            ..Default::default()
        };
        let debug = format!("{creds:?}");
        assert!(
            !debug.contains("secret-key") && !debug.contains("tok\""),
            "{debug}"
        );
    }

    #[test]
    fn no_credentials_is_unauthenticated() {
        let kind = |creds: &Credentials| {
            block_on(authenticate(creds, &keys(), &Issuers::default()))
                .expect_err("refused")
                .kind()
        };
        assert_eq!(kind(&Credentials::default()), ErrorKind::Unauthenticated);
        let creds = Credentials {
            bearer: Some("x.y.z".into()),
            ..Default::default()
        };
        assert_eq!(
            kind(&creds),
            ErrorKind::Unauthenticated,
            "a token without a verifier is refused"
        );
        let creds = Credentials {
            api_key: Some("right-key".into()),
            bearer: Some("x.y.z".into()),
            ..Default::default()
        };
        assert_eq!(
            kind(&creds),
            ErrorKind::Unauthenticated,
            "a good key does not excuse a bad token"
        );
    }

    fn identity(user: &str, groups: &[&str], method: Method, expires_at: Option<u64>) -> Identity {
        Identity {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            proof: Proof { method, expires_at },
        }
    }

    #[test]
    fn several_credentials_must_name_one_user() {
        let key = identity("a@x.test", &[], Method::ApiKey, None);
        let token = identity(
            "a@x.test",
            &["ops"],
            Method::Token {
                issuer: "https://issuer.test".into(),
            },
            Some(2000),
        );
        let certificate = identity(
            "a@x.test",
            &["ops", "dev"],
            Method::Certificate {
                serial: "01".into(),
                issuer: "CN=ca".into(),
            },
            Some(1000),
        );
        let caller = caller_of(vec![key.clone(), token, certificate], None).expect("agree");
        assert_eq!(*caller.groups, ["ops", "dev"]);
        assert_eq!(caller.proofs.len(), 3);
        assert_eq!(caller.expires_at(), Some(1000));
        let other = identity(
            "b@x.test",
            &[],
            Method::Certificate {
                serial: "02".into(),
                issuer: "CN=ca".into(),
            },
            Some(1000),
        );
        assert_eq!(
            caller_of(vec![key, other], None).unwrap_err(),
            CoreError::unauthenticated()
        );
        assert_eq!(
            caller_of(Vec::new(), None).unwrap_err(),
            CoreError::unauthenticated()
        );
    }

    #[test]
    fn names_are_compared_canonically_and_unprintable_ones_refused() {
        let token = |user: &str| {
            identity(
                user,
                &[],
                Method::Token {
                    issuer: "https://issuer.test".into(),
                },
                Some(2000),
            )
        };
        let key = identity("ada@x.test", &[], Method::ApiKey, None);
        assert_eq!(
            caller_of(vec![key.clone(), token("Ada@X.test")], None)
                .expect("one user")
                .user,
            Arc::from("ada@x.test")
        );
        let account = caller_of(vec![token("system:serviceaccount:Payments:deployer")], None)
            .expect("a service account");
        assert_eq!(&*account.user, "system:serviceaccount:Payments:deployer");
        for bad in ["evil\nuser", "a b", "k\u{212a}@x.test", ""] {
            assert_eq!(
                caller_of(vec![token(bad)], None).unwrap_err(),
                CoreError::unauthenticated(),
                "{bad:?}"
            );
        }
    }
}
