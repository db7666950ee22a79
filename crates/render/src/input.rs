//! What the caller provides to render a cluster's kubeconfigs. Secret-bearing fields are [`Sensitive`]
//! so that `Debug` never prints them.

use std::fmt;
use std::sync::Arc;

pub use crate::credential::PemBundle;

/// A value that must not appear in logs: `Debug` prints `<redacted>`. Shared, not copied, by clones:
/// a record and the cluster prepared from it hold one copy of each credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(Arc<str>);

impl Sensitive {
    /// Wraps a value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Sensitive(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The cluster-admin credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCredential {
    /// A client certificate and its private key (PKCS#8, PKCS#1 RSA or SEC1 EC). A [`PemBundle`] never
    /// prints its content.
    ClientCertificate {
        certificate: PemBundle,
        key: PemBundle,
    },
    /// A bearer token.
    Token(Sensitive),
    /// No shared credential: each caller gets one issued for them (a minted client certificate),
    /// rendered with [`crate::Cluster::render_with_admin`]. Rendering a file that carries the admin
    /// credential without one gives a user entry with no credential at all, never a shared one.
    IssuedPerCaller,
}

/// A client certificate issued for one caller, in place of the cluster's admin credential. Without a
/// key when the caller keeps theirs (the kubeconfig then carries only the certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub certificate: PemBundle,
    pub key: Option<PemBundle>,
}

/// kubelogin settings.
#[derive(Clone, PartialEq, Eq)]
pub struct OidcLogin {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Option<Sensitive>,
    pub extra_scopes: Vec<String>,
}

impl fmt::Debug for OidcLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcLogin")
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("extra_scopes", &self.extra_scopes)
            .finish()
    }
}

/// The Spectro Proxy endpoint for a cluster that has the proxy enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEndpoint {
    /// The proxy server host, without scheme.
    pub server: String,
    pub port: u16,
    /// The proxy's CA, replacing the cluster CA in the proxied kubeconfig (imported / managed).
    pub certificate_authority: Option<PemBundle>,
    /// A service-account token replacing the admin credential in the proxied kubeconfig.
    pub token: Option<Sensitive>,
}

/// Everything needed to render a cluster's two kubeconfigs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Shared with the caller's own copy, not duplicated per cluster.
    pub name: Arc<str>,
    pub uid: Arc<str>,
    /// The API server's https URL.
    pub api_server: Arc<str>,
    /// The cluster CA (one or more certificates).
    pub certificate_authority: PemBundle,
    pub admin: AdminCredential,
    /// Present when OIDC is properly configured.
    pub oidc: Option<OidcLogin>,
    /// Present when the Spectro Proxy is enabled.
    pub proxy: Option<ProxyEndpoint>,
}

/// Which file to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// The kubeconfig; `frp: false` asks for the direct variant even when the proxy is enabled.
    Kubeconfig { frp: bool },
    /// The admin kubeconfig (always direct).
    AdminKubeconfig,
}
