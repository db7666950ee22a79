//! Kubeconfig rendering as a pure library: the cluster's facts in, deterministic YAML bytes out.
//!
//! This crate does no I/O, is not async, and depends on neither the policy crate nor any transport or
//! storage crate: it takes its own small input types ([`ClusterSpec`]) and the server converts. Input is
//! validated once, up front ([`Cluster::new`]), so that a cluster with a bad certificate, a key that
//! does not match it, or an unsafe name is refused with an error naming the field, and rendering a
//! validated cluster cannot fail.
//!
//! - [`input`]: what the caller provides.
//! - [`credential`]: PEM validation, and the certificate-matches-key check.
//! - [`document`]: the typed kubeconfig document serialized with serde (never string formatting).
//! - [`output`]: the rendered bytes and their metadata (file name, server kind, auth kind, ETag).

pub mod credential;
pub mod document;
pub mod input;
pub mod output;

pub use credential::CredentialError;
pub use input::{
    AdminCredential, ClusterSpec, IssuedCertificate, OidcLogin, PemBundle, ProxyEndpoint, Request,
    Sensitive,
};
pub use output::{AuthKind, Rendered, ServerKind};

use std::sync::Arc;

use document::{Exec, Kubeconfig, UserEntry};

/// Bumped whenever the rendered bytes for the same input change; part of every cache key.
pub const FORMAT_VERSION: u32 = 1;

/// Why a cluster's facts cannot be rendered. Every variant names the field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{field}: {source}")]
    Credential {
        field: &'static str,
        #[source]
        source: CredentialError,
    },
    #[error(
        "admin.clientCertificate: the certificate does not belong to the private key in admin.clientKey"
    )]
    KeyMismatch,
}

impl RenderError {
    /// The field the error concerns, e.g. `certificateAuthority`.
    pub fn field(&self) -> &'static str {
        match self {
            RenderError::Invalid { field, .. } | RenderError::Credential { field, .. } => field,
            RenderError::KeyMismatch => "admin.clientCertificate",
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> RenderError {
    RenderError::Invalid {
        field,
        message: message.into(),
    }
}

/// The admin credential, validated.
#[derive(Clone)]
enum Credential {
    Certificate {
        certificate: PemBundle,
        /// `None` only for a certificate issued for a key its holder keeps.
        key: Option<PemBundle>,
    },
    Token(Sensitive),
    IssuedPerCaller,
}

/// A cluster whose facts have been validated; rendering it cannot fail.
#[derive(Clone)]
pub struct Cluster {
    name: Arc<str>,
    uid: Arc<str>,
    api_server: Arc<str>,
    /// Held as DER, shared with the caller's record; canonical PEM is rebuilt and base64-encoded when
    /// rendered.
    certificate_authority: PemBundle,
    admin: Credential,
    oidc: Option<OidcLogin>,
    proxy: Option<ValidatedProxy>,
}

#[derive(Clone)]
struct ValidatedProxy {
    server_url: String,
    certificate_authority: Option<PemBundle>,
    token: Option<Sensitive>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("api_server", &self.api_server)
            .field("oidc", &self.oidc.is_some())
            .field("proxy", &self.proxy.as_ref().map(|p| &p.server_url))
            .finish_non_exhaustive()
    }
}

/// Whether `name` is safe as a file name and a YAML key: 1–253 of `[A-Za-z0-9._-]`, not starting with
/// `.` or `-`.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `uid` is a cluster uid this service accepts: `[a-z0-9-]{1,64}`.
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_https_url(field: &'static str, url: &str) -> Result<(), RenderError> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(invalid(field, format!("{url:?} must be an https:// URL")));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, format!("{url:?} is not a valid https URL")));
    }
    Ok(())
}

fn check_host(field: &'static str, host: &str) -> Result<(), RenderError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{host:?} must be a host name without scheme, port or path"),
        ))
    }
}

fn check_token(field: &'static str, token: &str) -> Result<(), RenderError> {
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            "must be a non-empty token without whitespace",
        ));
    }
    Ok(())
}

/// Base64 of the bundle's canonical PEM: what kubeconfig `*-data` fields hold. (SIMD base64: with the
/// ETag digest, encoding is most of what rendering a file with a certificate and key costs.)
fn encode(bundle: &PemBundle) -> String {
    base64_simd::STANDARD.encode_to_string(bundle.to_pem().as_bytes())
}

impl Cluster {
    /// Validates a cluster's facts. Every error names the field it concerns.
    pub fn new(spec: ClusterSpec) -> Result<Self, RenderError> {
        Self::validate(&spec)?;
        Ok(Self::from_validated(spec))
    }

    /// A cluster from facts equal to ones [`Cluster::new`] accepted (rebuilt from the same inputs),
    /// without checking them again: the certificate-and-key match costs tens of microseconds, and a
    /// caller holding many clusters keeps their facts once rather than a validated copy each.
    pub fn from_validated(spec: ClusterSpec) -> Self {
        let proxy = spec.proxy.map(|p| ValidatedProxy {
            server_url: format!("https://cluster-{}.{}:{}", spec.uid, p.server, p.port),
            certificate_authority: p.certificate_authority,
            token: p.token,
        });
        let admin = match spec.admin {
            AdminCredential::ClientCertificate { certificate, key } => Credential::Certificate {
                certificate,
                key: Some(key),
            },
            AdminCredential::Token(token) => Credential::Token(token),
            AdminCredential::IssuedPerCaller => Credential::IssuedPerCaller,
        };
        Cluster {
            certificate_authority: spec.certificate_authority,
            name: spec.name,
            uid: spec.uid,
            api_server: spec.api_server,
            admin,
            oidc: spec.oidc,
            proxy,
        }
    }

    fn validate(spec: &ClusterSpec) -> Result<(), RenderError> {
        if !is_safe_name(&spec.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1-253 of letters, digits, `.`, `_`, `-`, not starting with `.` or `-`",
                    spec.name
                ),
            ));
        }
        if !is_valid_uid(&spec.uid) {
            return Err(invalid(
                "uid",
                format!("{:?} must match [a-z0-9-]{{1,64}}", spec.uid),
            ));
        }
        check_https_url("apiServer", &spec.api_server)?;
        credential::certificates(&spec.certificate_authority).map_err(|source| {
            RenderError::Credential {
                field: "certificateAuthority",
                source,
            }
        })?;
        match &spec.admin {
            AdminCredential::ClientCertificate { certificate, key } => {
                let cert_key =
                    credential::single_certificate_key(certificate).map_err(|source| {
                        RenderError::Credential {
                            field: "admin.clientCertificate",
                            source,
                        }
                    })?;
                let matches = credential::key_matches(key, &cert_key).map_err(|source| {
                    RenderError::Credential {
                        field: "admin.clientKey",
                        source,
                    }
                })?;
                if !matches {
                    return Err(RenderError::KeyMismatch);
                }
            }
            AdminCredential::Token(token) => check_token("admin.token", token.expose())?,
            AdminCredential::IssuedPerCaller => {}
        }
        if let Some(oidc) = &spec.oidc {
            check_https_url("oidc.issuerUrl", &oidc.issuer_url)?;
            if oidc.client_id.trim().is_empty() || oidc.client_id.contains(char::is_whitespace) {
                return Err(invalid(
                    "oidc.clientId",
                    "must be a non-empty id without whitespace",
                ));
            }
            if oidc
                .extra_scopes
                .iter()
                .any(|s| s.is_empty() || s.contains(|c: char| c == ',' || c.is_whitespace()))
            {
                return Err(invalid(
                    "oidc.extraScopes",
                    "each scope must be a single non-empty word",
                ));
            }
        }
        if let Some(p) = &spec.proxy {
            check_host("spectroProxy.server", &p.server)?;
            if p.port == 0 {
                return Err(invalid("spectroProxy.port", "must be between 1 and 65535"));
            }
            if let Some(ca) = &p.certificate_authority {
                credential::certificates(ca).map_err(|source| RenderError::Credential {
                    field: "spectroProxy.certificateAuthority",
                    source,
                })?;
            }
            if let Some(token) = &p.token {
                check_token("spectroProxy.token", token.expose())?;
            }
        }
        Ok(())
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the Spectro Proxy is configured for this cluster.
    pub fn proxy_enabled(&self) -> bool {
        self.proxy.is_some()
    }

    /// Renders one asset.
    pub fn render(&self, request: Request) -> Rendered {
        self.render_using(request, &self.admin)
    }

    /// Whether the file for `request` carries the cluster-admin credential: the admin kubeconfig
    /// always; the kubeconfig when there is no OIDC login and no proxy token in its place.
    pub fn carries_admin_credential(&self, request: Request) -> bool {
        match request {
            Request::AdminKubeconfig => true,
            Request::Kubeconfig { frp } => {
                self.oidc.is_none()
                    && !self
                        .proxy
                        .as_ref()
                        .is_some_and(|p| frp && p.token.is_some())
            }
        }
    }

    /// Renders one asset with `admin` in place of the cluster's admin credential (which is not
    /// used): the same bytes as [`Cluster::render`] but for the user entry, when the file carries the
    /// admin credential at all ([`Cluster::carries_admin_credential`]).
    pub fn render_with_admin(&self, request: Request, admin: &IssuedCertificate) -> Rendered {
        let credential = Credential::Certificate {
            certificate: admin.certificate.clone(),
            key: admin.key.clone(),
        };
        self.render_using(request, &credential)
    }

    fn render_using(&self, request: Request, admin: &Credential) -> Rendered {
        match request {
            Request::Kubeconfig { frp } => self.render_kubeconfig(frp, admin),
            Request::AdminKubeconfig => self.render_admin(admin),
        }
    }

    fn admin_user(admin: &Credential) -> (UserEntry, AuthKind) {
        match admin {
            Credential::Certificate { certificate, key } => (
                UserEntry::certificate(encode(certificate), key.as_ref().map(encode)),
                AuthKind::ClientCertificate,
            ),
            Credential::Token(token) => {
                (UserEntry::token(token.expose().to_owned()), AuthKind::Token)
            }
            Credential::IssuedPerCaller => (UserEntry::default(), AuthKind::ClientCertificate),
        }
    }

    fn render_kubeconfig(&self, frp: bool, admin: &Credential) -> Rendered {
        let proxy = self.proxy.as_ref().filter(|_| frp);
        let (server, server_kind, ca_data) = match proxy {
            Some(p) => (
                p.server_url.clone(),
                ServerKind::Proxy,
                encode(
                    p.certificate_authority
                        .as_ref()
                        .unwrap_or(&self.certificate_authority),
                ),
            ),
            None => (
                self.api_server.to_string(),
                ServerKind::Direct,
                encode(&self.certificate_authority),
            ),
        };
        let (user_suffix, user, auth_kind, carries_credential) =
            match (&self.oidc, proxy.and_then(|p| p.token.as_ref())) {
                (Some(oidc), _) => (
                    "oidc",
                    UserEntry::exec(Exec::kubelogin(oidc)),
                    AuthKind::Oidc,
                    oidc.client_secret.is_some(),
                ),
                (None, Some(token)) => (
                    "admin",
                    UserEntry::token(token.expose().to_owned()),
                    AuthKind::Token,
                    true,
                ),
                (None, None) => {
                    let (user, kind) = Self::admin_user(admin);
                    ("admin", user, kind, carries_secret(admin))
                }
            };
        let doc = Kubeconfig::single(
            &self.name,
            &format!("{}-{user_suffix}", self.name),
            server,
            ca_data,
            user,
        );
        Rendered::new(
            doc.to_yaml(),
            format!("{}.kubeconfig", self.name),
            server_kind,
            auth_kind,
            carries_credential,
        )
    }

    fn render_admin(&self, admin: &Credential) -> Rendered {
        let (user, auth_kind) = Self::admin_user(admin);
        let doc = Kubeconfig::single(
            &self.name,
            &format!("{}-admin", self.name),
            self.api_server.to_string(),
            encode(&self.certificate_authority),
            user,
        );
        Rendered::new(
            doc.to_yaml(),
            format!("admin.{}.kubeconfig", self.name),
            ServerKind::Direct,
            auth_kind,
            carries_secret(admin),
        )
    }
}

/// Whether a credential in a user entry is a secret (a certificate without its key is not).
fn carries_secret(admin: &Credential) -> bool {
    match admin {
        Credential::Certificate { key, .. } => key.is_some(),
        Credential::Token(_) => true,
        Credential::IssuedPerCaller => false,
    }
}
