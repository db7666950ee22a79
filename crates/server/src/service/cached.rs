//! How a rendered kubeconfig is stored in the cache: a small JSON envelope whose ETag is checked
//! against the bytes when it is read back. (Authenticity comes from sealing, which the cache applies to
//! everything in Redis; this check only catches our own bugs.) Whether a value carries a credential is
//! not stored: nothing read back may claim it does not.

use kubeconfig_cache::Cacheable;
use kubeconfig_render::{AuthKind, Rendered, ServerKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A rendered kubeconfig as the cache holds it, with the header values of its HTTP download made
/// the first time it is downloaded (every later download of the same cached file shares them).
#[derive(Debug, Clone)]
pub struct CachedAsset(pub Rendered, std::sync::OnceLock<HttpHeaders>);

/// Headers of a file's HTTP download that depend on the file alone.
#[derive(Debug, Clone)]
pub struct HttpHeaders {
    /// `"<etag>"`.
    pub etag: http::HeaderValue,
    /// Every header of a download (200) answer: Content-Type, Content-Disposition
    /// (`attachment; filename="<file name>"`), ETag, Cache-Control, Content-Length, and an
    /// `x-request-id` placeholder that each answer overwrites in place. A download clones the map
    /// (no hashing, one allocation) instead of inserting each header into an empty one.
    pub download: http::HeaderMap,
}

/// The placeholder of a download's `x-request-id`, overwritten by every answer.
pub const REQUEST_ID_PLACEHOLDER: &str = "-";

impl CachedAsset {
    pub fn new(rendered: Rendered) -> Self {
        Self(rendered, std::sync::OnceLock::new())
    }

    /// The file's download headers, made once per cached file.
    pub fn http_headers(&self) -> &HttpHeaders {
        self.1.get_or_init(|| {
            use http::header;
            let etag = header_value(&["\"", &self.0.etag, "\""], "\"\"");
            let mut download = http::HeaderMap::with_capacity(6);
            download.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            download.insert(
                header::CONTENT_DISPOSITION,
                header_value(
                    &["attachment; filename=\"", &self.0.file_name, "\""],
                    "attachment",
                ),
            );
            download.insert(header::ETAG, etag.clone());
            download.insert(
                header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            download.insert(header::CONTENT_LENGTH, self.0.yaml.len().into());
            download.insert(
                http::HeaderName::from_static("x-request-id"),
                http::HeaderValue::from_static(REQUEST_ID_PLACEHOLDER),
            );
            HttpHeaders { etag, download }
        })
    }
}

/// A header value joined from `parts`, or `fallback` when the result is not a valid header value
/// (a file name with a control character).
fn header_value(parts: &[&str], fallback: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_str(&parts.concat())
        .unwrap_or_else(|_| http::HeaderValue::from_static(fallback))
}

impl PartialEq for CachedAsset {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for CachedAsset {}

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
        Some(CachedAsset::new(Rendered {
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
        // The header values (made on the first download) are counted too: the etag and file name
        // again, with their fixed text.
        let r = &self.0;
        u32::try_from(r.yaml.len() + 2 * (r.file_name.len() + r.etag.len()) + 128)
            .unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedAsset {
        let yaml = "apiVersion: v1\n".to_owned();
        CachedAsset::new(Rendered {
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
