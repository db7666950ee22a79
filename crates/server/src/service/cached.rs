//! How a rendered kubeconfig is stored in the cache: a small JSON envelope whose ETag is checked
//! against the bytes when it is read back. (Authenticity comes from sealing, which the cache applies to
//! everything in Redis; this check only catches our own bugs.) Whether a value carries a credential is
//! not stored: nothing read back may claim it does not.

use kubeconfig_cache::Cacheable;
use kubeconfig_render::{AuthKind, Rendered, ServerKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A rendered kubeconfig as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedAsset(pub Rendered);

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    file_name: String,
    server_kind: String,
    auth_kind: String,
    etag: String,
    yaml: String,
}

fn server_kind(kind: ServerKind) -> &'static str {
    match kind {
        ServerKind::Proxy => "proxy",
        ServerKind::Direct => "direct",
    }
}

fn auth_kind(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Oidc => "oidc",
        AuthKind::ClientCertificate => "client-certificate",
        AuthKind::Token => "token",
    }
}

impl Cacheable for CachedAsset {
    fn encode(&self) -> Vec<u8> {
        let r = &self.0;
        let envelope = Envelope {
            v: 1,
            file_name: r.file_name.clone(),
            server_kind: server_kind(r.server_kind).to_owned(),
            auth_kind: auth_kind(r.auth_kind).to_owned(),
            etag: r.etag.clone(),
            yaml: r.yaml.clone(),
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let e: Envelope = serde_json::from_slice(bytes).ok()?;
        if e.v != 1 || hex::encode(Sha256::digest(e.yaml.as_bytes())) != e.etag {
            return None;
        }
        let server_kind = [ServerKind::Proxy, ServerKind::Direct]
            .into_iter()
            .find(|k| server_kind(*k) == e.server_kind)?;
        let auth_kind = [AuthKind::Oidc, AuthKind::ClientCertificate, AuthKind::Token]
            .into_iter()
            .find(|k| auth_kind(*k) == e.auth_kind)?;
        Some(CachedAsset(Rendered {
            yaml: e.yaml,
            file_name: e.file_name,
            server_kind,
            auth_kind,
            etag: e.etag,
            // Decided by the server, never by a stored value: assume the worst.
            carries_credential: true,
        }))
    }

    fn weight(&self) -> u32 {
        u32::try_from(self.0.yaml.len() + self.0.file_name.len() + self.0.etag.len() + 64)
            .unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedAsset {
        let yaml = "apiVersion: v1\n".to_owned();
        CachedAsset(Rendered {
            etag: hex::encode(Sha256::digest(yaml.as_bytes())),
            yaml,
            file_name: "a.kubeconfig".to_owned(),
            server_kind: ServerKind::Proxy,
            auth_kind: AuthKind::Oidc,
            carries_credential: true,
        })
    }

    #[test]
    fn round_trip_and_corruption() {
        let asset = sample();
        assert_eq!(CachedAsset::decode(&asset.encode()), Some(asset.clone()));
        let corrupted = String::from_utf8(asset.encode())
            .unwrap()
            .replace("apiVersion", "apiVersiom");
        assert_eq!(CachedAsset::decode(corrupted.as_bytes()), None);
        assert_eq!(CachedAsset::decode(b"not json"), None);
    }
}
