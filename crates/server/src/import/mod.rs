//! `kubeconfigd import` (docs/import.md): turns the admin kubeconfigs a platform team already has —
//! kubeadm's `admin.conf`, k3s's `k3s.yaml`, Cluster API's `<cluster>-kubeconfig` Secrets, a token
//! kubeconfig — into cluster files of an inventory directory.
//!
//! Every cluster gets a stable uid ([`sources::uid_of`]: its API server, or its Cluster API namespace
//! and name), so a second run updates files instead of adding clusters, and a run over unchanged
//! sources writes nothing. Each file is written atomically (a `0600` temporary file in the same
//! directory, then a rename) and only after it loads with the server's own code ([`Record::parse`]
//! and [`prepare`], the checks of `kubeconfigd check`); a file the import did not write is never
//! replaced without `--force`. A problem with an input as a whole (not a kubeconfig, too large, a
//! context name that cannot name a cluster) stops the import before anything is written; a cluster
//! that cannot be served (an exec-plugin user, no CA, a key outside the inventory) is skipped with
//! its reason and the rest are written.

pub mod sources;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kubeconfig_policy::Tenant;
use serde::Serialize;

use crate::loading::record::{Availability, Record, prepare};
use sources::{AdminSource, Found, InputError, Material};

/// The first line of every file the import writes: how it recognises its own files.
pub const MARKER: &str = "# Written by `kubeconfigd import`.";

/// The largest file a cluster file may refer to, and so the largest one inlined.
const MAX_REFERENCED_BYTES: u64 = 256 * 1024;

/// What to import, and how (the flags of `kubeconfigd import`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub inventory: PathBuf,
    pub tenant: Option<PathBuf>,
    pub kubeconfigs: Vec<PathBuf>,
    pub contexts: Vec<String>,
    pub capi_secrets: Vec<PathBuf>,
    pub project: Option<String>,
    pub project_from_namespace: bool,
    pub name: Option<String>,
    pub pack_values: Option<PathBuf>,
    pub pack_name: String,
    pub proxy: bool,
    /// `--admin-credential minted`: every cluster mints admin credentials with this client CA
    /// (certificate, key) instead of handing out the source's credential.
    pub mint_with: Option<(PathBuf, PathBuf)>,
    /// Directories whose files a kubeconfig may refer to and have copied into the cluster file
    /// (`--inline-from`): a hostile kubeconfig can name any file, so only these are read.
    pub inline_from: Vec<PathBuf>,
    pub dry_run: bool,
    pub force: bool,
}

/// What happened to one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Added,
    Changed,
    Unchanged,
    Skipped(String),
}

/// One line of the summary.
#[derive(Debug, Clone)]
pub struct Line {
    pub origin: String,
    pub uid: String,
    pub name: String,
    /// The file written (or that would be), inside the inventory.
    pub file: PathBuf,
    pub outcome: Outcome,
}

/// The summary of an import.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub lines: Vec<Line>,
    /// Whether the files were written without pack values (so without OIDC).
    pub without_oidc: bool,
    /// Cluster API Secrets that are not a cluster's `<cluster>-kubeconfig` (its CAs and keys).
    pub secrets_aside: usize,
    pub dry_run: bool,
}

impl Summary {
    pub fn skipped(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| matches!(l.outcome, Outcome::Skipped(_)))
            .count()
    }

    fn count(&self, outcome: &Outcome) -> usize {
        self.lines.iter().filter(|l| &l.outcome == outcome).count()
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let would = if self.dry_run { "would be" } else { "are" };
        for line in &self.lines {
            let file = line.file.file_name().unwrap_or_default().to_string_lossy();
            match &line.outcome {
                Outcome::Skipped(reason) => writeln!(f, "skipped    {}: {reason}", line.origin)?,
                outcome => {
                    let word = match outcome {
                        Outcome::Added => "added",
                        Outcome::Changed => "changed",
                        _ => "unchanged",
                    };
                    writeln!(
                        f,
                        "{word:<10} {} {} ({file}) from {}",
                        line.uid, line.name, line.origin
                    )?;
                }
            }
        }
        let written = self.count(&Outcome::Added) + self.count(&Outcome::Changed);
        write!(
            f,
            "{} added, {} changed, {} unchanged, {} skipped{}",
            self.count(&Outcome::Added),
            self.count(&Outcome::Changed),
            self.count(&Outcome::Unchanged),
            self.skipped(),
            if self.dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        )?;
        if self.secrets_aside > 0 {
            write!(
                f,
                "\n{} other Secrets left aside (only a cluster's <cluster>-kubeconfig Secret holds its kubeconfig)",
                self.secrets_aside
            )?;
        }
        if self.without_oidc && written + self.count(&Outcome::Unchanged) > 0 {
            write!(
                f,
                "\nno --pack-values: the clusters {would} written without OIDC settings, so only their admin kubeconfig is served"
            )?;
        }
        Ok(())
    }
}

/// Why an import wrote nothing at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Usage(String),
}

/// Runs an import: reads every input, plans every file, then writes (unless a dry run).
pub fn run(options: &Options) -> Result<Summary, ImportError> {
    let usage = |m: String| ImportError::Usage(m);
    if options.kubeconfigs.is_empty() && options.capi_secrets.is_empty() {
        return Err(usage(
            "nothing to import: give --kubeconfig FILE (or - for standard input) or --capi-secrets FILE"
                .to_owned(),
        ));
    }
    let inventory = options.inventory.canonicalize().map_err(|e| {
        usage(format!(
            "--inventory {}: {e} (create the directory first)",
            options.inventory.display()
        ))
    })?;
    if !inventory.is_dir() {
        return Err(usage(format!(
            "--inventory {}: not a directory",
            inventory.display()
        )));
    }
    let mut found = Vec::new();
    for path in &options.kubeconfigs {
        let text = sources::read_input(path)?;
        found.extend(sources::from_kubeconfig(path, &text, &options.contexts)?);
    }
    let mut aside = 0;
    for path in &options.capi_secrets {
        let text = sources::read_input(path)?;
        let (clusters, others) = sources::from_capi_secrets(path, &text)?;
        found.extend(clusters);
        aside += others;
    }
    for context in &options.contexts {
        if !found
            .iter()
            .any(|f| f.origin.ends_with(&format!(", context {context}")))
        {
            return Err(usage(format!(
                "--context {context}: no input has this context"
            )));
        }
    }
    if let Some(name) = &options.name {
        if found.len() != 1 {
            return Err(usage(format!(
                "--name names one cluster, but the inputs have {} (pick one with --context)",
                found.len()
            )));
        }
        found[0].name = sources::cluster_name(name).map_err(|m| usage(format!("--name: {m}")))?;
    }
    let found = sources::first_of_each(found);
    let tenant = tenant_for(options, &found)?;
    let pack_values = match &options.pack_values {
        None => String::new(),
        Some(path) => {
            let text = sources::read_input(path)?;
            kubeconfig_policy::document::parse_value(&text)
                .map_err(|e| usage(format!("--pack-values {}: not YAML: {e}", path.display())))?;
            text
        }
    };
    let mint_with = options.mint_with.as_ref().map(|(certificate, key)| {
        (
            Material::Reference(certificate.clone()),
            Material::Reference(key.clone()),
        )
    });
    let claimed = claimed_uids(&inventory);
    let inline_from: Vec<PathBuf> = options
        .inline_from
        .iter()
        .map(|dir| {
            dir.canonicalize()
                .map_err(|e| usage(format!("--inline-from {}: {e}", dir.display())))
        })
        .collect::<Result<_, _>>()?;
    let mut summary = Summary {
        secrets_aside: aside,
        without_oidc: options.pack_values.is_none(),
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let mut writes = Vec::new();
    for found in found {
        let file = inventory.join(format!("{}.yaml", found.uid));
        let project = project_of(options, &found);
        let planned = (|| {
            let cluster = found.cluster.clone()?;
            if let Some(other) = claimed.get(&found.uid).filter(|other| **other != file) {
                return Err(format!(
                    "uid {} is already served from {}",
                    found.uid,
                    other.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
            let text = render(
                &found,
                &cluster,
                &project,
                (&options.pack_name, &pack_values),
                options.proxy,
                mint_with.as_ref(),
                &inventory,
                &inline_from,
            )?;
            validate(&text, &inventory, &tenant)?;
            let outcome = match std::fs::read_to_string(&file) {
                Ok(existing) if existing == text => Outcome::Unchanged,
                Ok(existing) if !existing.starts_with(MARKER) && !options.force => {
                    return Err(format!(
                        "{} exists and was not written by an import; pass --force to replace it",
                        file.display()
                    ));
                }
                Ok(_) => Outcome::Changed,
                Err(_) => Outcome::Added,
            };
            Ok((text, outcome))
        })();
        let outcome = match planned {
            Ok((text, outcome)) => {
                if matches!(outcome, Outcome::Added | Outcome::Changed) {
                    writes.push((file.clone(), text));
                }
                outcome
            }
            Err(reason) => Outcome::Skipped(reason),
        };
        summary.lines.push(Line {
            origin: found.origin,
            uid: found.uid,
            name: found.name,
            file,
            outcome,
        });
    }
    if !options.dry_run {
        for (file, text) in &writes {
            if let Err(error) = write_atomically(file, text) {
                let line = summary
                    .lines
                    .iter_mut()
                    .find(|l| &l.file == file)
                    .expect("planned files have lines");
                line.outcome =
                    Outcome::Skipped(format!("{}: not written: {error}", file.display()));
            }
        }
    }
    Ok(summary)
}

/// The project a cluster goes to.
fn project_of(options: &Options, found: &Found) -> String {
    match (&found.namespace, options.project_from_namespace) {
        (Some(namespace), true) => namespace.clone(),
        _ => options.project.clone().unwrap_or_default(),
    }
}

/// The tenant the files are checked against: `--tenant` (every project must be in it), else one
/// with just the projects the import uses.
fn tenant_for(options: &Options, found: &[Found]) -> Result<Arc<Tenant>, ImportError> {
    let usage = |m: String| ImportError::Usage(m);
    let projects: BTreeSet<String> = found.iter().map(|f| project_of(options, f)).collect();
    if projects.contains("") {
        return Err(usage(
            "no project: give --project UID (or --project-from-namespace for Cluster API Secrets)"
                .to_owned(),
        ));
    }
    match &options.tenant {
        Some(path) => {
            let text = crate::loading::files::read_text(
                path,
                kubeconfig_policy::document::MAX_DOCUMENT_BYTES as u64,
            )
            .map_err(|e| usage(format!("--tenant {}: {e}", path.display())))?;
            let tenant = Tenant::from_yaml(&text)
                .map_err(|e| usage(format!("--tenant {}: {e}", path.display())))?;
            for project in &projects {
                if !tenant.project_uids().any(|uid| uid == project) {
                    return Err(usage(format!(
                        "project {project:?} is not in {} (its projects: {})",
                        path.display(),
                        tenant.project_uids().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
            Ok(Arc::new(tenant))
        }
        None => {
            let mut text = String::from("tenant: import\nprojects:\n");
            for project in &projects {
                let _ = writeln!(text, "  - uid: {project:?}\n    name: {project:?}");
            }
            Tenant::from_yaml(&text)
                .map(Arc::new)
                .map_err(|e| usage(format!("project: {e}")))
        }
    }
}

/// The uid each cluster file of the inventory claims (files that do not parse claim none).
fn claimed_uids(inventory: &Path) -> BTreeMap<String, PathBuf> {
    #[derive(serde::Deserialize)]
    struct Uid {
        uid: String,
    }
    let mut claimed = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(inventory) else {
        return claimed;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !yaml {
            continue;
        }
        if let Ok(text) = crate::loading::files::read_text(&path, 1024 * 1024)
            && let Ok(Uid { uid }) = kubeconfig_policy::document::parse::<Uid>(&text)
        {
            claimed.entry(uid).or_insert(path);
        }
    }
    claimed
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterFile<'a> {
    uid: &'a str,
    name: &'a str,
    project: &'a str,
    api_server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<AdminFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_credential: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ca: Option<ClientCaFile>,
    kubernetes_pack: PackFile<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spectro_proxy: Option<ProxyFile>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct AdminFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct ClientCaFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_file: Option<String>,
}

#[derive(Serialize)]
struct PackFile<'a> {
    name: &'a str,
    values: &'a str,
}

#[derive(Serialize)]
struct ProxyFile {
    enabled: bool,
}

/// Where a cluster file takes one of its materials from: inline text, or a path relative to the
/// inventory. A reference outside the inventory is copied in when it is under one of `inline_from`
/// (or is `given` by the operator's own flags), else refused: the server reads only files inside the
/// inventory, and a kubeconfig from elsewhere can name any file.
fn place(
    field: &str,
    material: &Material,
    inventory: &Path,
    inline_from: &[PathBuf],
    given: bool,
) -> Result<(Option<String>, Option<String>), String> {
    match material {
        Material::Inline(text) => Ok((Some(text.clone()), None)),
        Material::Reference(path) => {
            let resolved = path
                .canonicalize()
                .map_err(|e| format!("{field} refers to {}: {e}", path.display()))?;
            if let Ok(relative) = resolved.strip_prefix(inventory) {
                return Ok((None, Some(relative.to_string_lossy().into_owned())));
            }
            if !given && !inline_from.iter().any(|dir| resolved.starts_with(dir)) {
                return Err(format!(
                    "{field} refers to {}, outside the inventory: copy it into {}, or pass --inline-from with its directory to copy its content into the cluster file",
                    path.display(),
                    inventory.display()
                ));
            }
            let text = crate::loading::files::read_text(&resolved, MAX_REFERENCED_BYTES)
                .map_err(|e| format!("{field}: {}: {e}", path.display()))?;
            Ok((Some(text), None))
        }
    }
}

/// The text of a cluster file.
#[allow(clippy::too_many_arguments)]
fn render(
    found: &Found,
    cluster: &sources::Cluster,
    project: &str,
    (pack_name, pack_values): (&str, &str),
    proxy: bool,
    mint_with: Option<&(Material, Material)>,
    inventory: &Path,
    inline_from: &[PathBuf],
) -> Result<String, String> {
    let (certificate_authority, certificate_authority_file) = place(
        "the CA",
        &cluster.certificate_authority,
        inventory,
        inline_from,
        false,
    )?;
    let (admin, admin_credential, client_ca) = match mint_with {
        Some((certificate, key)) => {
            let (certificate, certificate_file) =
                place("--mint-ca-cert", certificate, inventory, inline_from, true)?;
            let (key, key_file) = place("--mint-ca-key", key, inventory, inline_from, true)?;
            let ca = ClientCaFile {
                certificate,
                certificate_file,
                key,
                key_file,
            };
            (None, Some("minted"), Some(ca))
        }
        None => {
            let admin = match cluster.admin.clone()? {
                AdminSource::Certificate { certificate, key } => {
                    let (client_certificate, client_certificate_file) = place(
                        "the client certificate",
                        &certificate,
                        inventory,
                        inline_from,
                        false,
                    )?;
                    let (client_key, client_key_file) =
                        place("the client key", &key, inventory, inline_from, false)?;
                    AdminFile {
                        client_certificate,
                        client_certificate_file,
                        client_key,
                        client_key_file,
                        ..AdminFile::default()
                    }
                }
                AdminSource::Token(token) => {
                    let (token, token_file) =
                        place("the token file", &token, inventory, inline_from, false)?;
                    AdminFile {
                        token,
                        token_file,
                        ..AdminFile::default()
                    }
                }
            };
            (Some(admin), Some("static"), None)
        }
    };
    let file = ClusterFile {
        uid: &found.uid,
        name: &found.name,
        project,
        api_server: &cluster.server,
        certificate_authority,
        certificate_authority_file,
        admin,
        admin_credential,
        client_ca,
        kubernetes_pack: PackFile {
            name: pack_name,
            values: pack_values,
        },
        spectro_proxy: proxy.then_some(ProxyFile { enabled: true }),
    };
    let body = serde_norway::to_string(&file).map_err(|e| format!("cannot write YAML: {e}"))?;
    // The source named without its file's path, so that the same cluster read from a file of another
    // name (a temporary copy) is the same file.
    Ok(format!(
        "{MARKER} Re-running it replaces this file; remove this line to keep edits.\n# From: {}\n{body}",
        found.source.replace('\n', " ")
    ))
}

/// Loads `text` as the server would (referenced files read from the inventory) and prepares it
/// under `tenant`: `Err` says why it would not be served.
fn validate(text: &str, inventory: &Path, tenant: &Tenant) -> Result<(), String> {
    let record = Record::parse(text, Some(inventory))
        .map_err(|e| format!("the cluster file would not load: {e}"))?;
    match prepare(&Arc::new(record), tenant).availability {
        Availability::Ready(_) => Ok(()),
        Availability::Unavailable(reason) => Err(format!("it would not be served: {reason}")),
    }
}

/// Writes `text` to `file` through a `0600` temporary file in the same directory and a rename, so the
/// server never reads half a file.
fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let directory = file.parent().unwrap_or(Path::new("."));
    let temporary = directory.join(format!(
        ".{}.import-{}",
        file.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        // A leftover of an interrupted run is removed; `create_new` never follows a link planted there.
        let _ = std::fs::remove_file(&temporary);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&temporary, file)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
