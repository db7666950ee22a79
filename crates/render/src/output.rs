//! A rendered kubeconfig and what it contains.

use sha2::{Digest, Sha256};

/// Where the kubeconfig's server points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// Through the Spectro Proxy.
    Proxy,
    /// Directly at the API server.
    Direct,
}

/// The kind of credential in the kubeconfig's user entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// kubelogin (OIDC) exec plugin.
    Oidc,
    /// Client certificate and key.
    ClientCertificate,
    /// Bearer token.
    Token,
}

/// A rendered kubeconfig file. `Debug` omits the body, which carries credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The YAML text.
    pub yaml: String,
    /// `<name>.kubeconfig` or `admin.<name>.kubeconfig`.
    pub file_name: String,
    pub server_kind: ServerKind,
    pub auth_kind: AuthKind,
    /// Lowercase hex SHA-256 of `yaml`.
    pub etag: String,
    /// Whether the file carries a credential (client key, token or OIDC client secret), which must
    /// never be stored or logged in the clear.
    pub carries_credential: bool,
}

impl Rendered {
    pub(crate) fn new(
        yaml: String,
        file_name: String,
        server_kind: ServerKind,
        auth_kind: AuthKind,
        carries_credential: bool,
    ) -> Self {
        let etag = hex::encode(Sha256::digest(yaml.as_bytes()));
        Rendered {
            yaml,
            file_name,
            server_kind,
            auth_kind,
            etag,
            carries_credential,
        }
    }
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("file_name", &self.file_name)
            .field("server_kind", &self.server_kind)
            .field("auth_kind", &self.auth_kind)
            .field("etag", &self.etag)
            .field("carries_credential", &self.carries_credential)
            .field("bytes", &self.yaml.len())
            .finish()
    }
}
