//! One cluster file of the inventory (docs/files.md): its format, and how a record plus the
//! tenant become a servable cluster (or an unavailable one, with the reason).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kubeconfig_mint::Authority;
use kubeconfig_policy::{AdminCredentialMode, OidcState, PackInput, ReverseProxy, Tenant};
use kubeconfig_render::input::Sensitive;
use kubeconfig_render::{
    AdminCredential, Cluster, ClusterSpec, IssuedCertificate, PemBundle, ProxyEndpoint,
    RenderError, Rendered, Request,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The largest file a record may refer to (certificate, key, token), in bytes.
const MAX_REFERENCED_FILE_BYTES: u64 = 256 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRecord {
    uid: String,
    name: String,
    project: String,
    api_server: String,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    certificate_authority_file: Option<PathBuf>,
    /// Absent only when the cluster mints its admin credentials.
    #[serde(default)]
    admin: Option<RawAdmin>,
    /// `static` or `minted`; the tenant's `credentials.adminCredential` when absent.
    #[serde(default)]
    admin_credential: Option<AdminCredentialMode>,
    #[serde(default)]
    client_ca: Option<RawClientCa>,
    kubernetes_pack: RawPack,
    #[serde(default)]
    spectro_proxy: Option<RawProxy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAdmin {
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    client_certificate_file: Option<PathBuf>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    client_key_file: Option<PathBuf>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawClientCa {
    #[serde(default)]
    certificate: Option<String>,
    #[serde(default)]
    certificate_file: Option<PathBuf>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    /// The Kubernetes group minted certificates carry (their O); the tenant's when absent.
    #[serde(default)]
    admin_group: Option<String>,
    /// A maximum lifetime tighter than the tenant's, in seconds.
    #[serde(default)]
    max_lifetime_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    name: String,
    /// Accepted for the operator's reference; rendering does not depend on it.
    #[serde(default, rename = "version")]
    _version: Option<String>,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProxy {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    certificate_authority: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

/// A parsed cluster file with every referenced file read in. `Debug` omits credentials.
///
/// Kept between reloads so that a tenant edit re-prepares clusters without reading their files again,
/// so it is kept small: certificates and keys are held as DER (not PEM text) and shared with the
/// prepared cluster, names are shared with the served entry, and the pack values are dropped once
/// analysed when the outcome cannot depend on the tenant ([`Record::settle`]).
pub struct Record {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub project: Arc<str>,
    api_server: Arc<str>,
    /// The certificates and keys as DER. A block that is not PEM at all makes the record unusable
    /// (with the field named), like any other unusable field, rather than unparseable.
    credentials: Result<Credentials, Box<RenderError>>,
    pack: Pack,
    /// Boxed: a cluster without the proxy then takes a pointer's room, not the record's.
    proxy: Option<Box<ProxyRecord>>,
    admin_credential: Option<AdminCredentialMode>,
    /// SHA-256 over the file and everything it refers to.
    content_digest: [u8; 32],
}

struct Credentials {
    certificate_authority: PemBundle,
    /// `None` when the file gives none (allowed only for a cluster that mints).
    admin: Option<AdminCredential>,
    /// Boxed: most clusters have none, and an inline one would take its room in every record.
    client_ca: Option<Box<ClientCa>>,
    /// The Spectro Proxy's CA given in the record.
    proxy_certificate_authority: Option<PemBundle>,
}

/// The cluster's client CA: what minted admin credentials are signed with.
pub struct ClientCa {
    certificate: PemBundle,
    key: PemBundle,
    admin_group: Option<Arc<str>>,
    max_lifetime_seconds: Option<u64>,
    /// Built on first use (converting the key and signing a probe costs up to a few milliseconds,
    /// too much for every cluster of a large fleet at load), then kept with the record.
    authority: std::sync::OnceLock<Result<Arc<Authority>, String>>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("admin_group", &self.admin_group)
            .field("max_lifetime_seconds", &self.max_lifetime_seconds)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// The CA ready to sign, or why it cannot (the message names the field).
    pub fn authority(&self) -> Result<Arc<Authority>, String> {
        self.authority
            .get_or_init(|| {
                let (Some((_, certificate)), Some((label, key))) =
                    (self.certificate.blocks().next(), self.key.blocks().next())
                else {
                    return Err("clientCa: certificate or key is empty".to_owned());
                };
                Authority::new(certificate, label, key)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// The CA certificate's DER.
    pub fn certificate_der(&self) -> &[u8] {
        self.certificate.blocks().next().map_or(&[], |(_, der)| der)
    }
}

struct ProxyRecord {
    has_certificate_authority: bool,
    token: Option<Sensitive>,
}

fn pem(
    field: &'static str,
    text: &str,
    expected: &'static str,
) -> Result<PemBundle, Box<RenderError>> {
    PemBundle::parse(text, expected)
        .map_err(|source| Box::new(RenderError::Credential { field, source }))
}

/// Pack analyses that found OIDC not configured, by their gaps: one copy for every record of a load
/// whose pack has the same gaps ([`Record::share_analysis`]).
pub type SharedAnalyses =
    std::sync::Mutex<std::collections::HashMap<Vec<kubeconfig_policy::OidcGap>, Arc<OidcState>>>;

/// How many distinct analyses [`SharedAnalyses`] keeps (a gap may quote a cluster's own text).
pub const SHARED_ANALYSES: usize = 1024;

/// A record's Kubernetes pack: its values until analysed, then the outcome alone when that cannot
/// change with the tenant.
/// (Both variants are boxed or shared: a record is kept for every cluster of the fleet.)
enum Pack {
    Values(Box<PackValues>),
    Analysed(Result<Arc<OidcState>, Box<Unusable>>),
}

struct PackValues {
    name: String,
    values: String,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("uid", &self.uid)
            .field("name", &self.name)
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

/// Why a cluster file could not be read as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RecordError {
    pub message: String,
    /// 1-based line in the cluster file, when known.
    pub line: Option<usize>,
}

fn record_error(message: impl Into<String>) -> RecordError {
    RecordError {
        message: message.into(),
        line: None,
    }
}

/// What reading one cluster file accumulates: the digest of everything read, and the files referred to
/// (as joined to the inventory directory, whether or not they could be read), so that a change to one
/// of them can be traced back to this cluster file.
struct Reading<'a> {
    base: Option<&'a Path>,
    digest: Sha256,
    references: &'a mut Vec<PathBuf>,
}

fn read_referenced(
    reading: &mut Reading<'_>,
    field: &str,
    path: &Path,
) -> Result<String, RecordError> {
    let Some(base) = reading.base else {
        return Err(record_error(format!(
            "{field}: file references are not allowed here"
        )));
    };
    if !path.is_absolute() {
        reading.references.push(base.join(path));
    }
    let text = crate::loading::files::read_confined(base, path, MAX_REFERENCED_FILE_BYTES)
        .map_err(|e| record_error(format!("{field}: {}: {e}", path.display())))?;
    reading.digest.update(field.as_bytes());
    reading.digest.update(text.as_bytes());
    Ok(text)
}

fn inline_or_file(
    reading: &mut Reading<'_>,
    field: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<String>, RecordError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(record_error(format!(
            "{field}: give the value inline or `{field}File`, not both"
        ))),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => read_referenced(reading, &format!("{field}File"), &path).map(Some),
        (None, None) => Ok(None),
    }
}

impl Record {
    /// The pack analysis under `tenant`, and whether it read the tenant's settings.
    fn analysis(&self, tenant: &Tenant) -> (Result<Arc<OidcState>, Unusable>, bool) {
        match &self.pack {
            Pack::Analysed(outcome) => (outcome.clone().map_err(|e| *e), false),
            Pack::Values(pack) => {
                let analysis = kubeconfig_policy::analyze_tracked(&PackInput {
                    name: &pack.name,
                    values: &pack.values,
                    cluster_uid: &self.uid,
                    cluster_name: &self.name,
                    reverse_proxy_server: tenant.reverse_proxy().map(|p| p.server.as_str()),
                    tenant_oidc: tenant.oidc(),
                });
                match analysis {
                    Ok(a) => (Ok(Arc::new(a.state)), a.reads_service_settings),
                    Err(e) => (Err(Unusable::PackValues(e)), false),
                }
            }
        }
    }

    /// Shares the record's pack analysis with every record of `shared` whose pack is not configured
    /// for the same reasons: packs of one shape give the same gaps (their paths and settings), and a
    /// fleet holds many of each. Configured analyses name each cluster's client and are kept as they
    /// are. At most [`SHARED_ANALYSES`] distinct ones are kept in `shared`.
    pub fn share_analysis(&mut self, shared: &SharedAnalyses) {
        let Pack::Analysed(Ok(state)) = &mut self.pack else {
            return;
        };
        let OidcState::NotConfigured { gaps } = &**state else {
            return;
        };
        let Ok(mut shared) = shared.lock() else {
            return;
        };
        if let Some(existing) = shared.get(gaps) {
            *state = Arc::clone(existing);
        } else if shared.len() < SHARED_ANALYSES {
            shared.insert(gaps.clone(), Arc::clone(state));
        }
    }

    /// Drops the pack values when their analysis does not depend on the tenant, keeping the outcome.
    /// A later [`prepare`] under any tenant gives what it would have given with the values.
    pub fn settle(mut self, tenant: &Tenant) -> Self {
        if matches!(self.pack, Pack::Values(_)) {
            let (outcome, reads_tenant) = self.analysis(tenant);
            if !reads_tenant {
                self.pack = Pack::Analysed(outcome.map_err(Box::new));
            }
        }
        self
    }

    /// The API server's URL.
    pub fn api_server(&self) -> &str {
        &self.api_server
    }

    /// The cluster CA's certificates, DER, one after another (empty when they could not be read).
    pub fn certificate_authority_der(&self) -> Vec<u8> {
        self.credentials
            .as_ref()
            .map(|c| {
                c.certificate_authority
                    .blocks()
                    .flat_map(|(_, der)| der.iter().copied())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The client CA, when the file has one.
    pub fn client_ca(&self) -> Option<&ClientCa> {
        self.credentials.as_ref().ok()?.client_ca.as_deref()
    }

    /// SHA-256 over the cluster file's SHA-256 and every file it refers to.
    pub fn content_digest(&self) -> &[u8; 32] {
        &self.content_digest
    }

    /// Parses a cluster file. `base` is the directory relative file references resolve against
    /// (`None` forbids file references, as for the built-in demo).
    pub fn parse(text: &str, base: Option<&Path>) -> Result<Self, RecordError> {
        Self::parse_with_references(text, &Sha256::digest(text).into(), base, &mut Vec::new())
    }

    /// Like [`Record::parse`] given the text's SHA-256 (the loader has it already: the text is
    /// hashed once), and collects the files the record refers to into `references` (also when
    /// parsing fails on one of them).
    pub fn parse_with_references(
        text: &str,
        text_digest: &[u8; 32],
        base: Option<&Path>,
        references: &mut Vec<PathBuf>,
    ) -> Result<Self, RecordError> {
        let raw: RawRecord = kubeconfig_policy::document::parse(text).map_err(|e| RecordError {
            line: e.line(),
            message: e.to_string(),
        })?;
        let mut reading = Reading {
            base,
            digest: Sha256::new(),
            references,
        };
        reading.digest.update(text_digest);
        if !kubeconfig_render::is_valid_uid(&raw.uid) {
            return Err(record_error(format!(
                "uid: {:?} must match [a-z0-9-]{{1,64}}",
                raw.uid
            )));
        }
        if raw.project.trim().is_empty() {
            return Err(record_error("project: must not be empty"));
        }
        let certificate_authority = inline_or_file(
            &mut reading,
            "certificateAuthority",
            raw.certificate_authority,
            raw.certificate_authority_file,
        )?
        .ok_or_else(|| {
            record_error("certificateAuthority: required (inline PEM or certificateAuthorityFile)")
        })?;
        let admin = match raw.admin {
            None => None,
            Some(a) => Some(parse_admin(&mut reading, a)?),
        };
        let client_ca = match raw.client_ca {
            None => None,
            Some(ca) => {
                let certificate = inline_or_file(
                    &mut reading,
                    "clientCa.certificate",
                    ca.certificate,
                    ca.certificate_file,
                )?
                .ok_or_else(|| {
                    record_error("clientCa.certificate: required (inline PEM or certificateFile)")
                })?;
                let key = inline_or_file(&mut reading, "clientCa.key", ca.key, ca.key_file)?
                    .ok_or_else(|| {
                        record_error("clientCa.key: required (inline PEM or keyFile)")
                    })?;
                if let Some(group) = &ca.admin_group {
                    reading.digest.update(b"clientCa.adminGroup");
                    reading.digest.update(group.as_bytes());
                }
                Some((certificate, key, ca.admin_group, ca.max_lifetime_seconds))
            }
        };
        let (proxy, proxy_certificate_authority) = match raw.spectro_proxy {
            Some(p) if p.enabled => {
                let token =
                    inline_or_file(&mut reading, "spectroProxy.token", p.token, p.token_file)?;
                let proxy = ProxyRecord {
                    has_certificate_authority: p.certificate_authority.is_some(),
                    token: token.map(|t| Sensitive::new(t.trim())),
                };
                (Some(Box::new(proxy)), p.certificate_authority)
            }
            _ => (None, None),
        };
        let credentials = (|| {
            Ok(Credentials {
                certificate_authority: pem(
                    "certificateAuthority",
                    &certificate_authority,
                    "CERTIFICATE",
                )?,
                admin: match admin {
                    None => None,
                    Some(Ok((certificate, key))) => Some(AdminCredential::ClientCertificate {
                        certificate: pem("admin.clientCertificate", &certificate, "CERTIFICATE")?,
                        key: pem("admin.clientKey", &key, "PRIVATE KEY")?,
                    }),
                    Some(Err(token)) => Some(AdminCredential::Token(token)),
                },
                client_ca: match client_ca {
                    None => None,
                    Some((certificate, key, admin_group, max_lifetime_seconds)) => {
                        Some(Box::new(ClientCa {
                            certificate: pem("clientCa.certificate", &certificate, "CERTIFICATE")?,
                            key: pem("clientCa.key", &key, "PRIVATE KEY")?,
                            admin_group: admin_group.map(Arc::from),
                            max_lifetime_seconds,
                            authority: std::sync::OnceLock::new(),
                        }))
                    }
                },
                proxy_certificate_authority: proxy_certificate_authority
                    .map(|ca| pem("spectroProxy.certificateAuthority", &ca, "CERTIFICATE"))
                    .transpose()?,
            })
        })();
        Ok(Record {
            uid: raw.uid.into(),
            name: raw.name.into(),
            project: raw.project.into(),
            api_server: raw.api_server.into(),
            credentials,
            pack: Pack::Values(Box::new(PackValues {
                name: raw.kubernetes_pack.name,
                values: raw.kubernetes_pack.values,
            })),
            proxy,
            admin_credential: raw.admin_credential,
            content_digest: reading.digest.finalize().into(),
        })
    }
}

/// The static admin credential's PEM texts (certificate and key) or token.
type RawAdminCredential = Result<(String, String), Sensitive>;

fn parse_admin(reading: &mut Reading<'_>, a: RawAdmin) -> Result<RawAdminCredential, RecordError> {
    let certificate = inline_or_file(
        reading,
        "admin.clientCertificate",
        a.client_certificate,
        a.client_certificate_file,
    )?;
    let key = inline_or_file(reading, "admin.clientKey", a.client_key, a.client_key_file)?;
    let token = inline_or_file(reading, "admin.token", a.token, a.token_file)?;
    let admin = match (certificate, key, token) {
        (Some(certificate), Some(key), None) => Ok((certificate, key)),
        (None, None, Some(token)) => Err(Sensitive::new(token.trim())),
        (Some(_), None, None) => {
            return Err(record_error(
                "admin.clientKey: required with admin.clientCertificate",
            ));
        }
        (None, Some(_), None) => {
            return Err(record_error(
                "admin.clientCertificate: required with admin.clientKey",
            ));
        }
        (None, None, None) => {
            return Err(record_error(
                "admin: needs clientCertificate + clientKey, or token",
            ));
        }
        _ => {
            return Err(record_error(
                "admin: give clientCertificate + clientKey, or token, not both",
            ));
        }
    };
    Ok(admin)
}

/// What a cluster that passed every check under its tenant adds to its record. Nothing is copied from
/// the record: its files are rendered from the record itself ([`ClusterEntry::renderer`]).
#[derive(Debug, Clone)]
pub struct Ready {
    /// Shared with the record when the pack's analysis does not depend on the tenant.
    pub oidc: Arc<OidcState>,
    /// The CA of the Spectro Proxy endpoint, when it replaces the cluster's own.
    proxy_certificate_authority: Option<PemBundle>,
    /// Set when the cluster mints its admin credentials.
    pub minting: Option<Minting>,
}

/// How a cluster that mints its admin credentials mints them (the tenant's settings with the
/// cluster's own where it has them).
#[derive(Debug, Clone)]
pub struct Minting {
    /// The certificates' O.
    pub group: Arc<str>,
    /// The CN's prefix before the caller's user name.
    pub user_prefix: Arc<str>,
    pub default_lifetime_seconds: u64,
    pub max_lifetime_seconds: u64,
    pub require_reason: bool,
    /// Whether a bare public key (no proof of possession) is certified.
    pub allow_bare_public_keys: bool,
}

/// Whether a cluster can be served.
#[derive(Debug, Clone)]
pub enum Availability {
    Ready(Ready),
    /// The record is unusable; the reason names the field.
    Unavailable(String),
}

/// SHA-256 over everything a cluster's rendered bytes depend on; shown as lowercase hex. Kept as
/// the 32 bytes (a fleet holds one per cluster) and encoded where it is shown: [`Revision::hex`] is a
/// few dozen instructions, on the stack.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Revision {
    digest: [u8; 32],
}

impl Revision {
    pub fn new(digest: [u8; 32]) -> Self {
        Revision { digest }
    }

    /// The digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The digest in lowercase hex.
    pub fn hex(&self) -> RevisionHex {
        let mut hex = [0u8; 64];
        // 64 bytes is exactly the room 32 bytes need.
        let _ = hex::encode_to_slice(self.digest, &mut hex);
        RevisionHex(hex)
    }
}

/// A [`Revision`] in lowercase hex.
#[derive(Debug, Clone, Copy)]
pub struct RevisionHex([u8; 64]);

impl RevisionHex {
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

impl std::fmt::Debug for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A cluster of the inventory as served. Names and the file path are shared with the record and the
/// inventory's indexes rather than copied.
#[derive(Debug, Clone)]
pub struct ClusterEntry {
    /// The record the entry was prepared from (its uid, name and project; its files are rendered
    /// from it).
    pub record: Arc<Record>,
    pub proxy_enabled: bool,
    pub availability: Availability,
    /// Hex SHA-256 over everything the rendered bytes depend on: the record, its referenced files and
    /// the tenant settings that affect rendering. Changes whenever the output could.
    pub revision: Revision,
    /// Problems to report: in detail to those who may download the admin kubeconfig, as codes to
    /// everyone else who can see the cluster.
    pub problems: Vec<Problem>,
}

/// What kind of problem a cluster has; the stable code low-privilege callers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemCode {
    /// The latest edit of the cluster file was not applied; the previous version is served.
    EditNotApplied,
    /// The cluster record is unusable.
    ClusterUnavailable,
    /// Another file claims the same uid.
    UidConflict,
    /// The latest edit of the tenant file was not applied.
    TenantEditNotApplied,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::EditNotApplied => "EDIT_NOT_APPLIED",
            ProblemCode::ClusterUnavailable => "CLUSTER_UNAVAILABLE",
            ProblemCode::UidConflict => "UID_CONFLICT",
            ProblemCode::TenantEditNotApplied => "TENANT_EDIT_NOT_APPLIED",
        }
    }
}

/// A problem with its detail (file, line, field: only for those allowed to know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: ProblemCode,
    pub detail: String,
}

impl Problem {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Problem {
            code,
            detail: detail.into(),
        }
    }
}

impl ClusterEntry {
    pub fn uid(&self) -> &Arc<str> {
        &self.record.uid
    }

    pub fn name(&self) -> &Arc<str> {
        &self.record.name
    }

    pub fn project(&self) -> &Arc<str> {
        &self.record.project
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.availability, Availability::Ready(_))
    }

    /// What renders the cluster's files under `tenant`, the tenant the entry was prepared under (the
    /// snapshot's). `None` when the entry is not ready (or, which cannot happen for an entry of a
    /// snapshot, when `tenant` lacks what the entry was prepared with).
    pub fn renderer<'a>(&'a self, tenant: &'a Tenant) -> Option<Renderer<'a>> {
        let Availability::Ready(ready) = &self.availability else {
            return None;
        };
        let credentials = self.record.credentials.as_ref().ok()?;
        let proxy = match self.record.proxy.as_deref() {
            Some(proxy) => Some((tenant.reverse_proxy()?, proxy)),
            None => None,
        };
        Some(Renderer {
            record: &self.record,
            credentials,
            ready,
            proxy,
        })
    }
}

/// A ready cluster's inputs, borrowed: renders any of its files without checking them again.
pub struct Renderer<'a> {
    record: &'a Record,
    credentials: &'a Credentials,
    ready: &'a Ready,
    proxy: Option<(&'a ReverseProxy, &'a ProxyRecord)>,
}

impl std::fmt::Debug for Renderer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("uid", &self.record.uid)
            .finish_non_exhaustive()
    }
}

impl Renderer<'_> {
    pub fn render(&self, request: Request) -> Rendered {
        self.cluster().render(request)
    }

    /// How the cluster mints, when it does.
    pub fn minting(&self) -> Option<(&Minting, &ClientCa)> {
        Some((
            self.ready.minting.as_ref()?,
            self.credentials.client_ca.as_deref()?,
        ))
    }

    /// Whether the file for `request` carries the admin credential (minted per caller, when the
    /// cluster mints).
    pub fn carries_admin_credential(&self, request: Request) -> bool {
        self.cluster().carries_admin_credential(request)
    }

    /// The file for `request` with `issued` as its admin credential.
    pub fn render_with_admin(&self, request: Request, issued: &IssuedCertificate) -> Rendered {
        self.cluster().render_with_admin(request, issued)
    }

    fn cluster(&self) -> Cluster {
        let spec = spec(
            self.record,
            self.credentials,
            self.ready.minting.is_some(),
            &self.ready.oidc,
            self.proxy.map(|(server, record)| {
                (
                    server,
                    record,
                    self.ready.proxy_certificate_authority.clone(),
                )
            }),
        );
        Cluster::from_validated(spec)
    }
}

/// Turns a record into a servable cluster under `tenant`'s settings, or an unavailable one.
pub fn prepare(record: &Arc<Record>, tenant: &Tenant) -> ClusterEntry {
    let proxy_server = tenant.reverse_proxy();
    let mut digest = Sha256::new();
    digest.update(record.content_digest);
    if let Some(p) = proxy_server {
        digest.update(format!("proxy:{}:{}", p.server, p.port).as_bytes());
        digest.update(
            p.certificate_authority
                .as_deref()
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    if let Some(o) = tenant.oidc() {
        digest.update(
            format!(
                "oidc:{}:{}:{}:",
                o.issuer_url,
                o.client_id,
                o.scopes.join(",")
            )
            .as_bytes(),
        );
        digest.update(
            o.client_secret
                .as_ref()
                .map(|s| s.expose())
                .unwrap_or_default()
                .as_bytes(),
        );
    }
    let settings = tenant.credentials();
    digest.update(
        format!(
            "credentials:{:?}:{}:{}:{}:{}:{}",
            settings.admin_credential.map(|m| m.as_str()),
            settings.default_lifetime_seconds,
            settings.max_lifetime_seconds,
            settings.user_prefix,
            settings.admin_group,
            settings.require_reason_for_admin,
        )
        .as_bytes(),
    );
    let revision = Revision::new(digest.finalize().into());
    let availability = match build(record, tenant) {
        Ok(ready) => Availability::Ready(ready),
        Err(reason) => Availability::Unavailable(reason.to_string()),
    };
    ClusterEntry {
        record: Arc::clone(record),
        proxy_enabled: record.proxy.is_some(),
        availability,
        revision,
        problems: Vec::new(),
    }
}

/// Why a record that parsed cannot be served (the message names the field).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unusable {
    #[error("project: {0:?} is not a project of the tenant file")]
    UnknownProject(String),
    #[error("kubernetesPack.values: {0}")]
    PackValues(kubeconfig_policy::PackError),
    #[error("kubernetesPack.values: {0}")]
    UnresolvedMacro(String),
    #[error("spectroProxy.enabled: the tenant file has no reverseProxy server")]
    NoProxyServer,
    #[error(
        "adminCredential: minted needs clientCa (the client CA's certificate and signing key) in the cluster file"
    )]
    MintedWithoutClientCa,
    #[error(
        "admin: required when the admin credential is static (give clientCertificate + clientKey, or token; or mint with clientCa)"
    )]
    NoAdminCredential,
    #[error("{0}")]
    ClientCa(String),
    #[error("{0}")]
    Render(#[from] kubeconfig_render::RenderError),
}

fn build(record: &Record, tenant: &Tenant) -> Result<Ready, Unusable> {
    if !tenant.has_project(&record.project) {
        return Err(Unusable::UnknownProject(record.project.to_string()));
    }
    let oidc = record.analysis(tenant).0?;
    if oidc.has_unresolved_macro() {
        return Err(Unusable::UnresolvedMacro(oidc.summary()));
    }
    let credentials = record
        .credentials
        .as_ref()
        .map_err(|e| Unusable::Render((**e).clone()))?;
    let (proxy, proxy_certificate_authority) = match record.proxy.as_deref() {
        None => (None, None),
        Some(p) => {
            let server = tenant.reverse_proxy().ok_or(Unusable::NoProxyServer)?;
            // Palette-deployed clusters carry the proxy host in their API certificate, so the cluster CA
            // stays. An imported or managed cluster (one with a proxy token) trusts the proxy's CA: the
            // record's own, else the service-wide one.
            let certificate_authority = match (p.has_certificate_authority, &p.token) {
                (true, _) => credentials.proxy_certificate_authority.clone(),
                (false, Some(_)) => server
                    .certificate_authority
                    .as_deref()
                    .map(|ca| {
                        PemBundle::parse(ca, "CERTIFICATE").map_err(|source| {
                            RenderError::Credential {
                                field: "reverseProxy.certificateAuthority",
                                source,
                            }
                        })
                    })
                    .transpose()?,
                (false, None) => None,
            };
            (
                Some((server, p, certificate_authority.clone())),
                certificate_authority,
            )
        }
    };
    let settings = tenant.credentials();
    let mode = record
        .admin_credential
        .or(settings.admin_credential)
        .unwrap_or(if credentials.client_ca.is_some() {
            AdminCredentialMode::Minted
        } else {
            AdminCredentialMode::Static
        });
    let minting = match mode {
        AdminCredentialMode::Static => {
            if credentials.admin.is_none() {
                return Err(Unusable::NoAdminCredential);
            }
            None
        }
        AdminCredentialMode::Minted => {
            let ca = credentials
                .client_ca
                .as_deref()
                .ok_or(Unusable::MintedWithoutClientCa)?;
            check_client_ca(ca)?;
            let group = ca
                .admin_group
                .clone()
                .unwrap_or_else(|| Arc::from(settings.admin_group.as_str()));
            if group.trim().is_empty() || group.chars().any(char::is_control) {
                return Err(Unusable::ClientCa(
                    "clientCa.adminGroup: must not be empty or hold control characters".to_owned(),
                ));
            }
            let max = ca
                .max_lifetime_seconds
                .map_or(settings.max_lifetime_seconds, |m| {
                    m.min(settings.max_lifetime_seconds)
                });
            if max < kubeconfig_policy::MIN_LIFETIME_SECONDS {
                return Err(Unusable::ClientCa(format!(
                    "clientCa.maxLifetimeSeconds: must be at least {}",
                    kubeconfig_policy::MIN_LIFETIME_SECONDS
                )));
            }
            Some(Minting {
                group,
                user_prefix: Arc::from(settings.user_prefix.as_str()),
                default_lifetime_seconds: settings.default_lifetime_seconds.min(max),
                max_lifetime_seconds: max,
                require_reason: settings.require_reason_for_admin,
                allow_bare_public_keys: settings.allow_bare_public_keys,
            })
        }
    };
    Cluster::new(spec(record, credentials, minting.is_some(), &oidc, proxy))?;
    Ok(Ready {
        oidc,
        proxy_certificate_authority,
        minting,
    })
}

/// The cheap checks of a client CA, done at load: one certificate, and the key belongs to it. (That
/// the certificate is a CA whose subject can be reproduced is checked when it first signs.)
fn check_client_ca(ca: &ClientCa) -> Result<(), Unusable> {
    use kubeconfig_render::credential;
    let certificate = credential::single_certificate_key(&ca.certificate)
        .map_err(|e| Unusable::ClientCa(format!("clientCa.certificate: {e}")))?;
    match credential::key_matches(&ca.key, &certificate) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Unusable::ClientCa(
            "clientCa.key: the key does not belong to the certificate in clientCa.certificate"
                .to_owned(),
        )),
        Err(e) => Err(Unusable::ClientCa(format!("clientCa.key: {e}"))),
    }
}

/// The renderer's input for a record under the tenant's settings: shares every credential and name.
fn spec(
    record: &Record,
    credentials: &Credentials,
    minted: bool,
    oidc: &OidcState,
    proxy: Option<(&ReverseProxy, &ProxyRecord, Option<PemBundle>)>,
) -> ClusterSpec {
    ClusterSpec {
        name: Arc::clone(&record.name),
        uid: Arc::clone(&record.uid),
        api_server: Arc::clone(&record.api_server),
        certificate_authority: credentials.certificate_authority.clone(),
        // A cluster that mints never renders its shared credential, whatever the file holds.
        admin: match (&credentials.admin, minted) {
            (Some(admin), false) => admin.clone(),
            _ => AdminCredential::IssuedPerCaller,
        },
        oidc: oidc.login().map(|login| kubeconfig_render::OidcLogin {
            issuer_url: login.issuer_url.clone(),
            client_id: login.client_id.clone(),
            client_secret: login
                .client_secret
                .as_ref()
                .map(|s| Sensitive::new(s.expose())),
            extra_scopes: login.extra_scopes.clone(),
        }),
        proxy: proxy.map(|(server, record, certificate_authority)| ProxyEndpoint {
            server: server.server.clone(),
            port: server.port,
            certificate_authority,
            token: record.token.clone(),
        }),
    }
}
