//! Client certificates: the identity in a certificate that the TLS handshake verified against
//! `--client-ca-file`. A URI SAN `spiffe://trust-domain/path` names the user by that SPIFFE ID;
//! otherwise the subject's CN is the user and its O entries are the groups (kube-apiserver's
//! convention).

use super::{Identity, Method, Proof};

/// What a verified client certificate says. Read once per connection, at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub user: String,
    pub groups: Vec<String>,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The issuer's subject, as text.
    pub issuer: String,
    /// `notAfter`, seconds since the epoch.
    pub not_after: u64,
}

impl PeerCertificate {
    /// The identity it proves at `now`, or `None` once it has expired.
    pub fn identity_at(&self, now: u64) -> Option<Identity> {
        (now <= self.not_after).then(|| Identity {
            user: self.user.clone(),
            groups: self.groups.clone(),
            proof: Proof {
                method: Method::Certificate {
                    serial: self.serial.clone(),
                    issuer: self.issuer.clone(),
                },
                expires_at: Some(self.not_after),
            },
        })
    }
}
