//! Client certificates: the identity in a certificate that the TLS handshake verified against
//! `--client-ca-file`. A URI SAN `spiffe://trust-domain/path` names the user by that SPIFFE ID;
//! otherwise the subject's CN is the user (lowercased, as a token's) and its O entries are the groups
//! (kube-apiserver's convention). The certificate is read once per connection, right after the
//! handshake; each call checks that it has not expired since, so a long-lived connection stops
//! authenticating when its certificate does.
//!
//! Trust can also end before expiry: a CRL that now lists the certificate, or a CA bundle without
//! its issuer. The verifier in service is kept in a [`ClientTrust`] with a generation that every
//! reload of the CA bundle or CRLs bumps; a connection's certificate remembers the generation it was
//! last verified at, and the first call after a reload verifies its chain again with the new
//! verifier (once per connection and reload; other calls compare two integers). A certificate that
//! fails is refused from then on, and streams open with it end ([`PeerCertificate::distrusted`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use super::{Identity, Method, Proof};

/// The client-certificate verifier in service, replaced when `--client-ca-file` or
/// `--client-crl-file` changes, with a count of the replacements.
pub struct ClientTrust {
    verifier: ArcSwap<Arc<dyn ClientCertVerifier>>,
    generation: AtomicU64,
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

/// The mark of a certificate that failed a check: refused from then on.
const DISTRUSTED: u64 = u64::MAX;

impl ClientTrust {
    pub fn new(verifier: Arc<dyn ClientCertVerifier>) -> Arc<Self> {
        Arc::new(ClientTrust {
            verifier: ArcSwap::from_pointee(verifier),
            generation: AtomicU64::new(0),
            changes: tokio::sync::watch::channel(0).0,
        })
    }

    /// How many times the verifier was replaced. Read it before taking the TLS configuration for a
    /// handshake: a certificate verified then is current for this generation or an older one, never
    /// a newer one.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `verifier` in service (after the handshake configuration built with it), and tells every
    /// stream open with a certificate to check it again.
    pub fn install(&self, verifier: Arc<dyn ClientCertVerifier>) {
        self.verifier.store(Arc::new(verifier));
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.changes.send_replace(generation);
    }

    /// Whether the verifier in service accepts `chain` (leaf first) now.
    fn accepts(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .load()
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}

/// How a connection's certificate is checked again when the trust changes.
#[derive(Debug)]
pub struct Rechecked {
    trust: Arc<ClientTrust>,
    /// The chain the peer presented, leaf first.
    chain: Vec<CertificateDer<'static>>,
    /// The generation it was last verified at, or [`DISTRUSTED`].
    verified_at: AtomicU64,
}

impl Rechecked {
    /// `chain` as a handshake verified it at generation `generation` of `trust` (or later).
    pub fn new(
        trust: Arc<ClientTrust>,
        chain: Vec<CertificateDer<'static>>,
        generation: u64,
    ) -> Self {
        Rechecked {
            trust,
            chain,
            verified_at: AtomicU64::new(generation),
        }
    }

    /// Whether the trust in service still accepts it: verified again after a reload, once.
    fn holds(&self) -> bool {
        let current = self.trust.generation();
        let verified_at = self.verified_at.load(Ordering::Acquire);
        if verified_at == current {
            return true;
        }
        if verified_at == DISTRUSTED {
            return false;
        }
        let accepted = self.trust.accepts(&self.chain);
        self.verified_at.store(
            if accepted { current } else { DISTRUSTED },
            Ordering::Release,
        );
        if !accepted {
            tracing::info!(
                "a connection's client certificate is no longer trusted (revoked, or its CA removed): its calls are refused"
            );
        }
        accepted
    }
}

/// What a verified client certificate says. Read once per connection, at the handshake.
#[derive(Debug)]
pub struct PeerCertificate {
    /// The user it names; empty when it names none that can be used (no CN and no SPIFFE ID, a
    /// malformed SPIFFE ID, several URI SANs next to one, or names with control or non-ASCII
    /// characters): such a certificate never authenticates, whatever else the call presents.
    pub user: Arc<str>,
    pub groups: Arc<[String]>,
    /// Serial number, lowercase hex.
    pub serial: Arc<str>,
    /// The issuer's subject, as text.
    pub issuer: Arc<str>,
    /// `notAfter`, seconds since the epoch.
    pub not_after: u64,
    /// The trust it is checked against again when the CA bundle or CRLs change; `None` when nothing
    /// can change it (a certificate that names no one, a test's).
    pub rechecked: Option<Rechecked>,
}

impl PeerCertificate {
    /// The identity it proves at `now`, or `None` once it has expired, is no longer trusted, or
    /// when it names no one.
    pub fn identity_at(&self, now: u64) -> Option<Identity> {
        let trusted = self.rechecked.as_ref().is_none_or(Rechecked::holds);
        (now <= self.not_after && !self.user.is_empty() && trusted).then(|| Identity {
            user: Arc::clone(&self.user),
            groups: Arc::clone(&self.groups),
            proof: Proof {
                method: Method::Certificate {
                    serial: Arc::clone(&self.serial),
                    issuer: Arc::clone(&self.issuer),
                },
                expires_at: Some(self.not_after),
            },
        })
    }

    /// Resolves once the certificate is no longer trusted (a reload of the CA bundle or CRLs that
    /// refuses its chain); never, when nothing can change that. A stream opened with it ends then.
    pub async fn distrusted(&self) {
        let Some(rechecked) = &self.rechecked else {
            return std::future::pending().await;
        };
        // Subscribed before the check, so that a reload in between is not missed.
        let mut changes = rechecked.trust.changes.subscribe();
        loop {
            if !rechecked.holds() {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Reads a verified leaf certificate (DER). `Err` only when it does not parse at all (the
    /// handshake verified it, so that does not happen); a certificate that names no usable identity
    /// is returned with an empty user, next to the [`Refusal`] saying why.
    pub fn from_der(der: &[u8]) -> Result<(Self, Option<Refusal>), String> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("client certificate does not parse: {e}"))?;
        let serial = format!("{:x}", certificate.serial);
        let issuer = certificate.issuer().to_string();
        let not_after = u64::try_from(certificate.validity().not_after.timestamp()).unwrap_or(0);
        let (user, groups, refusal) = match identity_of(&certificate) {
            Ok((user, groups)) => (user, groups, None),
            Err(refusal) => (String::new(), Vec::new(), Some(refusal)),
        };
        Ok((
            PeerCertificate {
                user: user.into(),
                groups: groups.into(),
                serial: serial.into(),
                issuer: issuer.into(),
                not_after,
                rechecked: None,
            },
            refusal,
        ))
    }
}

/// Why a verified certificate names no usable identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No SPIFFE ID and no subject CN.
    NoName,
    /// A `spiffe:` URI SAN that is not a valid SPIFFE ID.
    BadSpiffeId,
    /// A SPIFFE ID next to other URI SANs (an SVID has exactly one).
    SeveralUris,
    /// Several subject CNs.
    SeveralNames,
    /// A name or group with control, non-ASCII or no characters.
    BadCharacters,
    /// The extensions do not parse.
    Malformed,
    /// A subject CN that is a SPIFFE ID: SPIFFE identities come only from the URI SAN.
    SpiffeCommonName,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NoName => "it has neither a SPIFFE ID nor a subject CN",
            Refusal::BadSpiffeId => "its spiffe: URI SAN is not a valid SPIFFE ID",
            Refusal::SeveralUris => "it has a SPIFFE ID and other URI SANs",
            Refusal::SeveralNames => "it has several subject CNs",
            Refusal::BadCharacters => "a name or group has control or non-ASCII characters",
            Refusal::Malformed => "its extensions do not parse",
            Refusal::SpiffeCommonName => {
                "its subject CN is a SPIFFE ID; a SPIFFE ID is read only from the URI SAN"
            }
        })
    }
}

/// The user and groups a certificate names.
fn identity_of(
    certificate: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(String, Vec<String>), Refusal> {
    let uris: Vec<&str> = certificate
        .subject_alternative_name()
        .map_err(|_| Refusal::Malformed)?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let subject = certificate.subject();
    let text = |value: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        value
            .as_str()
            .map_err(|_| Refusal::BadCharacters)
            .and_then(checked)
    };
    let names: Vec<String> = subject
        .iter_common_name()
        .map(text)
        .collect::<Result<_, _>>()?;
    let organizations: Vec<String> = subject
        .iter_organization()
        .map(text)
        .collect::<Result<_, _>>()?;
    identity_from(&uris, names, organizations)
}

/// The identity from a certificate's URI SANs, subject CNs and subject O entries.
fn identity_from(
    uris: &[&str],
    names: Vec<String>,
    organizations: Vec<String>,
) -> Result<(String, Vec<String>), Refusal> {
    let spiffe = uris.iter().filter(|uri| is_spiffe_scheme(uri)).count();
    if spiffe > 0 {
        if uris.len() > 1 {
            return Err(Refusal::SeveralUris);
        }
        let id = uris[0];
        if !valid_spiffe_id(id) {
            return Err(Refusal::BadSpiffeId);
        }
        // An SVID's subject is not its identity: its O entries are not groups.
        return Ok((id.to_owned(), Vec::new()));
    }
    let mut names = names.into_iter();
    // Folded as every user name is (an e-mail lowercased as ASCII, so no look-alike folds onto
    // another name; a name with `:` kept exactly).
    let user = kubeconfig_policy::canonical_user(&names.next().ok_or(Refusal::NoName)?);
    if names.next().is_some() {
        return Err(Refusal::SeveralNames);
    }
    if user
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
    {
        return Err(Refusal::SpiffeCommonName);
    }
    let mut groups: Vec<String> = Vec::with_capacity(organizations.len());
    for group in organizations {
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    Ok((user, groups))
}

/// A name or group: printable ASCII, not empty.
fn checked(value: &str) -> Result<String, Refusal> {
    if value.is_empty() || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Refusal::BadCharacters);
    }
    Ok(value.to_owned())
}

fn is_spiffe_scheme(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("spiffe:"))
}

/// A SPIFFE ID as the SPIFFE-ID specification defines it: `spiffe://` (lowercase), a trust domain of
/// lowercase letters, digits, `.`, `-` and `_`, then a path of `/`-separated segments of letters,
/// digits, `.`, `-` and `_` (none empty, `.` or `..`, no trailing `/`). Query, fragment, userinfo,
/// port and percent-encoding are thereby refused. At most 2048 bytes.
pub fn valid_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    if id.len() > 2048 {
        return false;
    }
    let (domain, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b));
    if !domain_ok {
        return false;
    }
    if path.is_empty() {
        return true;
    }
    path[1..].split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn a_spiffe_id_is_the_user() {
        let (user, groups) = identity_from(
            &["spiffe://acme.test/ns/payments/sa/deployer"],
            strings(&["ignored"]),
            strings(&["ignored-too"]),
        )
        .expect("identity");
        assert_eq!(user, "spiffe://acme.test/ns/payments/sa/deployer");
        assert!(groups.is_empty(), "an SVID's O entries are not groups");
        assert!(valid_spiffe_id("spiffe://acme.test"));
    }

    #[test]
    fn cn_is_the_user_and_each_o_a_group() {
        let (user, groups) = identity_from(
            &["https://not-spiffe.test/x"],
            strings(&["Alice@ACME.test"]),
            strings(&["payments", "ops", "payments"]),
        )
        .expect("identity");
        assert_eq!(user, "alice@acme.test", "folded as a token's user is");
        assert_eq!(groups, ["payments", "ops"]);
        assert_eq!(
            identity_from(&[], Vec::new(), strings(&["ops"])),
            Err(Refusal::NoName)
        );
        assert_eq!(
            identity_from(&[], strings(&["a", "b"]), Vec::new()),
            Err(Refusal::SeveralNames)
        );
        for spiffe in [
            "spiffe://acme.test/ns/prod/sa/admin",
            "SPIFFE://acme.test/x",
        ] {
            assert_eq!(
                identity_from(&[], strings(&[spiffe]), Vec::new()),
                Err(Refusal::SpiffeCommonName),
                "a SPIFFE ID comes only from the URI SAN"
            );
        }
    }

    #[test]
    fn malformed_spiffe_ids_are_refused() {
        for bad in [
            "spiffe://",
            "spiffe:///path",
            "SPIFFE://acme.test/x",
            "spiffe://Acme.test/x",
            "spiffe://acme.test/x?y=1",
            "spiffe://acme.test/x#frag",
            "spiffe://user@acme.test/x",
            "spiffe://acme.test:8443/x",
            "spiffe://acme.test/",
            "spiffe://acme.test//x",
            "spiffe://acme.test/x/../y",
            "spiffe://acme.test/x/./y",
            "spiffe://acme.test/x%20y",
            "spiffe:acme.test/x",
        ] {
            assert!(!valid_spiffe_id(bad), "{bad}");
            assert_eq!(
                identity_from(&[bad], strings(&["cn"]), Vec::new()),
                Err(Refusal::BadSpiffeId),
                "{bad}: a bad SPIFFE ID is not excused by a CN"
            );
        }
    }

    #[test]
    fn a_spiffe_id_must_be_the_only_uri() {
        assert_eq!(
            identity_from(
                &["spiffe://acme.test/a", "spiffe://acme.test/b"],
                Vec::new(),
                Vec::new()
            ),
            Err(Refusal::SeveralUris)
        );
        assert_eq!(
            identity_from(
                &["https://acme.test/", "spiffe://acme.test/a"],
                strings(&["cn"]),
                Vec::new()
            ),
            Err(Refusal::SeveralUris)
        );
    }

    #[test]
    fn control_and_non_ascii_characters_are_refused() {
        for bad in ["a\nb", "a\u{0}b", "tab\there", "caf\u{e9}", "del\u{7f}", ""] {
            assert_eq!(checked(bad), Err(Refusal::BadCharacters), "{bad:?}");
        }
        assert_eq!(checked("Some User").as_deref(), Ok("Some User"));
    }

    #[test]
    fn a_certificate_naming_no_one_or_expired_never_authenticates() {
        let certificate = PeerCertificate {
            user: "alice@acme.test".into(),
            groups: strings(&["ops"]).into(),
            serial: "1f".into(),
            issuer: "CN=ca".into(),
            not_after: 1000,
            rechecked: None,
        };
        let identity = certificate
            .identity_at(1000)
            .expect("valid until not_after");
        assert_eq!(*identity.groups, ["ops"]);
        assert_eq!(identity.proof.expires_at, Some(1000));
        assert!(certificate.identity_at(1001).is_none(), "expired");
        let nameless = PeerCertificate {
            user: Arc::from(""),
            ..certificate
        };
        assert!(nameless.identity_at(0).is_none());
    }
}
