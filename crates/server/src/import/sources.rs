//! What `kubeconfigd import` reads: kubeconfig files (every context, or those named) and Cluster API
//! kubeconfig Secrets (one object or a `List`, YAML or JSON, as `kubectl get secrets -o yaml` prints
//! them). Each becomes a [`Found`]: a cluster with its API server, CA and admin credential, or the
//! reason it cannot be imported. Inputs are parsed within the same alias and depth budgets as every
//! other YAML the server reads, and bounded in size; a file that is not what it claims to be is an
//! [`InputError`] (the import then writes nothing).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::config::{AuthInfo, Kubeconfig};
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};

/// The largest input file, in bytes (a `List` of a few hundred Cluster API Secrets fits).
pub const MAX_INPUT_BYTES: u64 = 16 * 1024 * 1024;

/// The largest kubeconfig inside a Cluster API Secret, decoded.
const MAX_EMBEDDED_BYTES: usize = 1024 * 1024;

/// The label Cluster API puts on a workload cluster's kubeconfig Secret.
pub const CAPI_CLUSTER_LABEL: &str = "cluster.x-k8s.io/cluster-name";

/// A problem with an input as a whole: nothing is written.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct InputError {
    pub source_name: String,
    pub message: String,
}

fn input_error(source_name: &str, message: impl Into<String>) -> InputError {
    InputError {
        source_name: source_name.to_owned(),
        message: message.into(),
    }
}

/// PEM text, or a file the source refers to (resolved against the source's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    Inline(String),
    Reference(PathBuf),
}

/// A cluster's static admin credential as the source gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminSource {
    Certificate {
        certificate: Material,
        key: Material,
    },
    Token(Material),
}

/// One cluster an input names.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where it came from, for the summary: `FILE, context NAME` or `FILE, Secret NS/NAME`.
    pub origin: String,
    /// The same without the file: `context NAME`, `Secret NS/NAME` (written into the cluster file).
    pub source: String,
    pub uid: String,
    pub name: String,
    /// The Cluster API namespace, when it came from a Secret (`--project-from-namespace`).
    pub namespace: Option<String>,
    /// What it is, or why it cannot be imported.
    pub cluster: Result<Cluster, String>,
}

/// What an imported cluster file is made from.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub server: String,
    pub certificate_authority: Material,
    /// `Err` with the reason when the user authenticates in a way kubeconfigd cannot hand out (an
    /// exec plugin, an auth provider, a password): only a minted admin credential can serve it.
    pub admin: Result<AdminSource, String>,
}

/// Reads an input of at most [`MAX_INPUT_BYTES`]: a regular file, or standard input for `-`.
pub fn read_input(path: &Path) -> Result<String, InputError> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| input_error("standard input", e.to_string()))?;
    } else {
        let metadata = std::fs::metadata(path).map_err(|e| input_error(&name, e.to_string()))?;
        if !metadata.is_file() {
            return Err(input_error(&name, "not a regular file"));
        }
        if metadata.len() > MAX_INPUT_BYTES {
            return Err(input_error(
                &name,
                format!(
                    "{} bytes; an input may be at most {MAX_INPUT_BYTES} bytes",
                    metadata.len()
                ),
            ));
        }
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| input_error(&name, e.to_string()))?;
    }
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(input_error(
            &name,
            format!("more than {MAX_INPUT_BYTES} bytes; an input may be at most that"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| input_error(&name, "not UTF-8 text"))
}

/// Parses an input of at most `limit` bytes within the YAML budgets; an error names the input and line.
fn parse_yaml(
    text: &str,
    source_name: &str,
    limit: usize,
) -> Result<serde_norway::Value, InputError> {
    kubeconfig_policy::document::parse_within(text, limit).map_err(|e| {
        let line = e.line().map(|l| format!("line {l}: ")).unwrap_or_default();
        input_error(source_name, format!("{line}{e}"))
    })
}

/// Parses a kubeconfig; `source_name` names it in errors.
fn parse_kubeconfig(text: &str, source_name: &str, limit: usize) -> Result<Kubeconfig, InputError> {
    let value = parse_yaml(text, source_name, limit)?;
    if !value.is_mapping() {
        return Err(input_error(
            source_name,
            "not a kubeconfig (not a YAML mapping)",
        ));
    }
    let kind = value.get("kind").and_then(serde_norway::Value::as_str);
    if kind.is_some_and(|k| k != "Config") {
        return Err(input_error(
            source_name,
            format!(
                "not a kubeconfig (kind {:?}, expected Config)",
                kind.unwrap_or_default()
            ),
        ));
    }
    let config: Kubeconfig = serde_norway::from_value(value)
        .map_err(|e| input_error(source_name, format!("not a kubeconfig: {e}")))?;
    if config.contexts.is_empty() {
        return Err(input_error(source_name, "not a kubeconfig (no contexts)"));
    }
    Ok(config)
}

/// The clusters of a kubeconfig file: every context, or those in `only` (a name in `only` that the
/// file lacks is not an error here: the caller checks that every name was found in some input).
pub fn from_kubeconfig(path: &Path, text: &str, only: &[String]) -> Result<Vec<Found>, InputError> {
    let source_name = path.display().to_string();
    let config = parse_kubeconfig(text, &source_name, MAX_INPUT_BYTES as usize)?;
    // Relative file references in a kubeconfig are relative to its own directory.
    let base = if path == Path::new("-") {
        std::env::current_dir().unwrap_or_default()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let mut found = Vec::new();
    for context in &config.contexts {
        if !only.is_empty() && !only.contains(&context.name) {
            continue;
        }
        let source = format!("context {}", context.name);
        let origin = format!("{source_name}, {source}");
        let name = cluster_name(&context.name).map_err(|m| input_error(&origin, m))?;
        let cluster = cluster_of(&config, &context.name, &base);
        let uid = match &cluster {
            Ok(c) => uid_of(&["kubeconfig", &c.server]),
            Err(_) => uid_of(&["kubeconfig-context", &context.name]),
        };
        found.push(Found {
            origin,
            source,
            uid,
            name,
            namespace: None,
            cluster,
        });
    }
    Ok(found)
}

/// The clusters of a file of Cluster API kubeconfig Secrets: a `List` (or `SecretList`) of them,
/// or one Secret, with how many Secrets were left aside. Cluster API labels every Secret of a cluster
/// (its CAs, etcd, service-account keys) with the cluster name; only `<cluster>-kubeconfig` holds the
/// admin kubeconfig, so the others are left aside, not reported as problems. The name is the
/// cluster-name label; the uid comes from it and the namespace, so a cluster keeps its uid across
/// imports whatever else changes. A Secret whose kubeconfig cannot be read is that cluster's problem
/// (skipped with the reason), not the file's.
pub fn from_capi_secrets(path: &Path, text: &str) -> Result<(Vec<Found>, usize), InputError> {
    let source_name = path.display().to_string();
    let value: serde_norway::Value = parse_yaml(text, &source_name, MAX_INPUT_BYTES as usize)?;
    let kind = value.get("kind").and_then(serde_norway::Value::as_str);
    let items: Vec<&serde_norway::Value> = match kind {
        Some("List" | "SecretList") => value
            .get("items")
            .and_then(serde_norway::Value::as_sequence)
            .map(|items| items.iter().collect())
            .unwrap_or_default(),
        Some("Secret") => vec![&value],
        other => {
            return Err(input_error(
                &source_name,
                format!(
                    "not a Secret or a List of Secrets (kind {:?}); save the output of `kubectl get secrets -A -l {CAPI_CLUSTER_LABEL} -o yaml`",
                    other.unwrap_or_default()
                ),
            ));
        }
    };
    let mut found = Vec::new();
    let mut aside = 0;
    for (i, item) in items.into_iter().enumerate() {
        let text_of = |path: &[&str]| -> Option<String> {
            let mut v = item;
            for key in path {
                v = v.get(*key)?;
            }
            v.as_str().map(str::to_owned)
        };
        if item.get("kind").and_then(serde_norway::Value::as_str) != Some("Secret") {
            return Err(input_error(
                &source_name,
                format!("items[{i}]: not a Secret"),
            ));
        }
        let secret = text_of(&["metadata", "name"]).unwrap_or_default();
        let namespace = text_of(&["metadata", "namespace"]).unwrap_or_else(|| "default".to_owned());
        let Some(label) = text_of(&["metadata", "labels", CAPI_CLUSTER_LABEL]) else {
            aside += 1;
            continue;
        };
        if secret != format!("{label}-kubeconfig") {
            aside += 1;
            continue;
        }
        let source = format!("Secret {namespace}/{secret}");
        let origin = format!("{source_name}, {source}");
        let name = cluster_name(&label).map_err(|m| input_error(&origin, m))?;
        let uid = uid_of(&["capi", &namespace, &label]);
        let cluster = text_of(&["data", "value"])
            .ok_or_else(|| "no data.value (Cluster API keeps the kubeconfig there)".to_owned())
            .and_then(|encoded| embedded_cluster(&encoded, &origin));
        found.push(Found {
            origin,
            source,
            uid,
            name,
            namespace: Some(namespace),
            cluster,
        });
    }
    Ok((found, aside))
}

/// The cluster of a Secret's `data.value`: base64 of a kubeconfig with inline data.
fn embedded_cluster(encoded: &str, origin: &str) -> Result<Cluster, String> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "data.value: not base64".to_owned())?;
    if decoded.len() > MAX_EMBEDDED_BYTES {
        return Err(format!(
            "data.value: larger than {MAX_EMBEDDED_BYTES} bytes"
        ));
    }
    let embedded =
        String::from_utf8(decoded).map_err(|_| "data.value: not UTF-8 text".to_owned())?;
    let config = parse_kubeconfig(
        &embedded,
        &format!("{origin}, data.value"),
        MAX_EMBEDDED_BYTES,
    )
    .map_err(|e| e.message)?;
    let context = config
        .current_context
        .clone()
        .or_else(|| (config.contexts.len() == 1).then(|| config.contexts[0].name.clone()))
        .ok_or("its kubeconfig has several contexts and no current-context")?;
    // An embedded kubeconfig cannot refer to files next to it: only inline data.
    let cluster = cluster_of(&config, &context, Path::new(""))?;
    if matches!(cluster.certificate_authority, Material::Reference(_)) {
        return Err("its kubeconfig refers to a CA file; a Secret's must be inline".to_owned());
    }
    Ok(cluster)
}

/// A stable uid: the first 96 bits of a SHA-256 over what identifies the cluster, in hex (24
/// characters, like Palette's).
pub fn uid_of(parts: &[&str]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    hex::encode(&digest.finalize()[..12])
}

/// The cluster name for a context or cluster name: an EKS ARN (`arn:…:cluster/NAME`) gives NAME;
/// `@` and `:` (as in kubeadm's `kubernetes-admin@kubernetes`) become `-`. Anything else that a
/// cluster name cannot hold — a `/`, a space, a control character, a leading `.` — is refused.
pub fn cluster_name(name: &str) -> Result<String, String> {
    let base = match name.strip_prefix("arn:") {
        Some(arn) => arn.rsplit_once(":cluster/").map_or(name, |(_, n)| n),
        None => name,
    };
    let mapped: String = base
        .chars()
        .map(|c| if c == '@' || c == ':' { '-' } else { c })
        .collect();
    if kubeconfig_render::is_safe_name(&mapped) && mapped.len() <= 63 {
        Ok(mapped)
    } else {
        Err(format!(
            "{name:?} cannot name a cluster (1-63 letters, digits, `.`, `_`, `-`, not starting with `.` or `-`); rename the context, or import it alone with --context and --name"
        ))
    }
}

/// The cluster a context names, resolved against `base` for file references.
fn cluster_of(config: &Kubeconfig, context: &str, base: &Path) -> Result<Cluster, String> {
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("context {context:?} is not in the file"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| format!("cluster {:?} is not in the file", context.cluster))?;
    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or("the cluster has no server")?;
    if !server.starts_with("https://") {
        return Err(format!(
            "server {server:?}: kubeconfigd serves https API servers only"
        ));
    }
    let certificate_authority = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Material::Inline(pem_of("certificate-authority-data", data)?),
        (None, Some(file)) => Material::Reference(base.join(file)),
        (None, None) => {
            return Err("the cluster has no CA (certificate-authority-data or certificate-authority); kubeconfigd serves clusters with one".to_owned());
        }
    };
    let user = context.user.as_deref().unwrap_or_default();
    let auth = config
        .auth_infos
        .iter()
        .find(|u| u.name == user)
        .and_then(|u| u.auth_info.as_ref())
        .ok_or_else(|| format!("user {user:?} is not in the file"))?;
    Ok(Cluster {
        server,
        certificate_authority,
        admin: admin_of(auth, base),
    })
}

/// The admin credential a user entry carries, or why it cannot be handed out.
fn admin_of(auth: &AuthInfo, base: &Path) -> Result<AdminSource, String> {
    if auth.exec.is_some() {
        let command = auth
            .exec
            .as_ref()
            .and_then(|e| e.command.as_deref())
            .unwrap_or("?");
        return Err(format!(
            "the user signs in through an exec plugin ({command}): there is no credential to hand out; import it with --admin-credential minted and a client CA"
        ));
    }
    if let Some(provider) = &auth.auth_provider {
        return Err(format!(
            "the user signs in through the {:?} auth provider: there is no credential to hand out; import it with --admin-credential minted and a client CA",
            provider.name
        ));
    }
    let certificate = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => Some(Material::Inline(pem_of("client-certificate-data", data)?)),
        (None, Some(file)) => Some(Material::Reference(base.join(file))),
        (None, None) => None,
    };
    let key = match (&auth.client_key_data, &auth.client_key) {
        (Some(data), _) => Some(Material::Inline(pem_of(
            "client-key-data",
            data.expose_secret(),
        )?)),
        (None, Some(file)) => Some(Material::Reference(base.join(file))),
        (None, None) => None,
    };
    match (certificate, key) {
        (Some(certificate), Some(key)) => return Ok(AdminSource::Certificate { certificate, key }),
        (Some(_), None) | (None, Some(_)) => {
            return Err("the user has a client certificate without its key, or a key without its certificate".to_owned());
        }
        (None, None) => {}
    }
    if let Some(token) = &auth.token {
        let token = token.expose_secret().trim();
        if !token.is_empty() {
            return Ok(AdminSource::Token(Material::Inline(token.to_owned())));
        }
    }
    if let Some(file) = &auth.token_file {
        return Ok(AdminSource::Token(Material::Reference(base.join(file))));
    }
    if auth.username.is_some() || auth.password.is_some() {
        return Err("the user signs in with a password: kubeconfigd hands out client certificates and tokens only".to_owned());
    }
    Err("the user has no credential (no client certificate, token or token file)".to_owned())
}

/// A kubeconfig `…-data` field: base64 of PEM text.
fn pem_of(field: &str, data: &str) -> Result<String, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| format!("{field}: not base64"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{field}: not PEM text"))?;
    if !text.contains("-----BEGIN ") {
        return Err(format!("{field}: not PEM"));
    }
    Ok(text)
}

/// What found clusters say about one another: a uid (an API server, or a Cluster API name) named
/// twice in one run is imported once — from the first entry that can be served (it reads and has a
/// credential to hand out), else the first — and the others are skipped, naming it. An entry that
/// cannot be served therefore never hides one that can.
pub fn first_of_each(found: Vec<Found>) -> Vec<Found> {
    let usable = |f: &Found| f.cluster.as_ref().is_ok_and(|c| c.admin.is_ok());
    let mut chosen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        match chosen.get(&f.uid) {
            Some(&first) if usable(&found[first]) || !usable(f) => {}
            _ => {
                chosen.insert(f.uid.clone(), i);
            }
        }
    }
    let names: Vec<String> = found.iter().map(|f| f.origin.clone()).collect();
    found
        .into_iter()
        .enumerate()
        .map(|(i, mut f)| {
            let first = chosen[&f.uid];
            if first != i {
                let hint = if f.namespace.is_none() {
                    "; import one with --context"
                } else {
                    ""
                };
                f.cluster = Err(format!(
                    "the same cluster as {} (the same API server or Cluster API name){hint}",
                    names[first]
                ));
            }
            f
        })
        .collect()
}
