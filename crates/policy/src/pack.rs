//! Kubernetes pack analysis: is OIDC properly configured (`oidc_ok`, docs/access.md)?
//!
//! OIDC is properly configured when both halves are present and non-empty after macro resolution: the
//! API-server side issuer and client id (at the distribution's own path) and a `clientConfig` mapping with
//! `oidc-issuer-url` and `oidc-client-id`. The identity-provider selector can turn OIDC off (`noauth`) or
//! substitute the tenant's OIDC settings (`palette`, `tenant`). The result is either the login settings
//! the kubeconfig's kubelogin entry needs, or every reason why not, each naming the path it concerns.

use serde_norway::Value;

use crate::document::{self, DocumentError};
use crate::macros::{self, Expander, MacroContext};
use crate::oidc::{OidcGap, OidcLogin, OidcSettings, OidcSource, OidcState};
use crate::secret::Secret;

/// The Kubernetes distributions of docs/access.md, told apart by pack name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// PXK, pack `kubernetes`.
    Pxk,
    /// PXK-E, pack `edge-k8s`: API-server settings sit in a YAML string.
    PxkEdge,
    /// K3s, pack `edge-k3s`.
    K3s,
    /// RKE2, packs `edge-rke2` and `kubernetes-rke2`.
    Rke2,
    /// EKS, pack `kubernetes-eks`.
    Eks,
    /// AKS, pack `kubernetes-aks`: custom OIDC is not supported.
    Aks,
    /// GKE, pack `kubernetes-gke`: read as PXK.
    Gke,
    /// Any other pack: read as PXK.
    Generic,
}

impl Distribution {
    /// The distribution a pack name stands for.
    pub fn from_pack_name(name: &str) -> Self {
        match name {
            "kubernetes" => Distribution::Pxk,
            "edge-k8s" => Distribution::PxkEdge,
            "edge-k3s" => Distribution::K3s,
            "edge-rke2" | "kubernetes-rke2" => Distribution::Rke2,
            "kubernetes-eks" => Distribution::Eks,
            "kubernetes-aks" => Distribution::Aks,
            "kubernetes-gke" => Distribution::Gke,
            _ => Distribution::Generic,
        }
    }
}

/// Everything pack analysis reads.
#[derive(Debug, Clone, Copy)]
pub struct PackInput<'a> {
    /// The pack name, e.g. `kubernetes`; selects the distribution and the `.spectro.pack.<name>` macros.
    pub name: &'a str,
    /// The pack values YAML, verbatim.
    pub values: &'a str,
    pub cluster_uid: &'a str,
    pub cluster_name: &'a str,
    /// The service's Spectro Proxy server host, for `{{ .spectro.system.reverseproxy.server }}`.
    pub reverse_proxy_server: Option<&'a str>,
    /// The tenant's OIDC settings, for identity provider `palette` / `tenant`.
    pub tenant_oidc: Option<&'a OidcSettings>,
}

/// Why pack values could not be analysed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("pack values: {0}")]
    Values(#[from] DocumentError),
}

const IDENTITY_PROVIDER_PATHS: [&str; 2] = [
    "pack.palette.config.oidc.identityProvider",
    "pack.palette.config.dashboard.identityProvider",
];
const ISSUER: &str = "oidc-issuer-url";
const CLIENT_ID: &str = "oidc-client-id";

/// A looked-up setting.
enum Field {
    Missing,
    /// Present but unusable; a gap has been recorded.
    Invalid,
    Value(String),
}

struct Reader<'a> {
    expander: Expander<'a>,
    gaps: Vec<OidcGap>,
}

impl Reader<'_> {
    /// Reads the scalar at `path` under `base`, resolving macros against the pack values' root.
    fn text(&mut self, base: &Value, path: &str, shown: &str) -> Field {
        let segments: Vec<&str> = path.split('.').collect();
        match macros::lookup(base, &segments) {
            None | Some(Value::Null) => Field::Missing,
            Some(value) => match macros::scalar_text(value) {
                Some(text) => self.resolve(&text, shown),
                None => {
                    self.gaps.push(OidcGap::WrongType {
                        path: shown.to_owned(),
                        expected: "a single value",
                    });
                    Field::Invalid
                }
            },
        }
    }

    fn resolve(&mut self, text: &str, shown: &str) -> Field {
        match self.expander.resolve(text) {
            Ok(resolved) if resolved.trim().is_empty() => Field::Missing,
            Ok(resolved) => Field::Value(resolved.trim().to_owned()),
            Err(unresolved) => {
                self.gaps.push(OidcGap::UnresolvedMacro {
                    path: shown.to_owned(),
                    text: unresolved.text,
                    why: unresolved.why,
                });
                Field::Invalid
            }
        }
    }
}

/// Analyses a pack's values and says whether OIDC is properly configured.
pub fn analyze(input: &PackInput<'_>) -> Result<OidcState, PackError> {
    analyze_tracked(input).map(|analysis| analysis.state)
}

/// The outcome of [`analyze_tracked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub state: OidcState,
    /// Whether the outcome depends on the service's settings (`reverse_proxy_server`, `tenant_oidc`).
    /// When it does not, the outcome can be kept and the values dropped: the same values analyse the
    /// same way under any tenant.
    pub reads_service_settings: bool,
}

/// Like [`analyze`], and says whether the outcome read the service's settings.
pub fn analyze_tracked(input: &PackInput<'_>) -> Result<Analysis, PackError> {
    let root = document::parse_value(input.values)?;
    let mut reader = Reader {
        expander: Expander::new(
            &root,
            MacroContext {
                pack_name: input.name,
                cluster_uid: input.cluster_uid,
                cluster_name: input.cluster_name,
                reverse_proxy_server: input.reverse_proxy_server,
            },
        ),
        gaps: Vec::new(),
    };
    let mut read_tenant_oidc = false;
    let state = analyze_root(input, &root, &mut reader, &mut read_tenant_oidc);
    Ok(Analysis {
        state,
        reads_service_settings: read_tenant_oidc || reader.expander.read_service_settings,
    })
}

fn analyze_root(
    input: &PackInput<'_>,
    root: &Value,
    reader: &mut Reader<'_>,
    read_tenant_oidc: &mut bool,
) -> OidcState {
    for path in IDENTITY_PROVIDER_PATHS {
        match reader.text(root, path, path) {
            Field::Missing => continue,
            Field::Invalid => return not_configured(std::mem::take(&mut reader.gaps)),
            Field::Value(provider) => match provider.to_ascii_lowercase().as_str() {
                "none" | "custom" => break,
                "noauth" => {
                    return not_configured(vec![OidcGap::IdentityProviderNoAuth {
                        path: path.to_owned(),
                    }]);
                }
                "palette" | "tenant" => {
                    *read_tenant_oidc = true;
                    return match input.tenant_oidc {
                        Some(settings) => OidcState::Configured {
                            login: OidcLogin {
                                issuer_url: settings.issuer_url.clone(),
                                client_id: settings.client_id.clone(),
                                client_secret: settings.client_secret.clone(),
                                extra_scopes: settings.scopes.clone(),
                            },
                            source: OidcSource::TenantSettings,
                        },
                        None => not_configured(vec![OidcGap::TenantOidcMissing {
                            provider,
                            path: path.to_owned(),
                        }]),
                    };
                }
                _ => {
                    return not_configured(vec![OidcGap::UnknownIdentityProvider {
                        value: provider,
                        path: path.to_owned(),
                    }]);
                }
            },
        }
    }

    let distribution = Distribution::from_pack_name(input.name);
    if distribution == Distribution::Aks {
        return not_configured(vec![OidcGap::AksUnsupported]);
    }

    let client_config = read_client_config(reader, root);
    let client_config_present = client_config.is_some();
    let api_server = read_api_server(reader, root, distribution);
    let issuer_present = matches!(api_server.issuer, Field::Value(_));
    for (setting, field) in [
        (ISSUER, &api_server.issuer),
        (CLIENT_ID, &api_server.client_id),
    ] {
        if matches!(field, Field::Missing) {
            reader.gaps.push(OidcGap::ApiServerSettingMissing {
                setting,
                path: api_server.path.clone(),
                client_config_present,
            });
        }
    }
    if !client_config_present
        && !reader
            .gaps
            .iter()
            .any(|g| matches!(g, OidcGap::WrongType { .. }))
    {
        reader
            .gaps
            .push(OidcGap::ClientConfigMissing { issuer_present });
    }
    match client_config.flatten() {
        Some(login) if reader.gaps.is_empty() => OidcState::Configured {
            login,
            source: OidcSource::PackValues,
        },
        _ => not_configured(std::mem::take(&mut reader.gaps)),
    }
}

fn not_configured(gaps: Vec<OidcGap>) -> OidcState {
    OidcState::NotConfigured { gaps }
}

struct ApiServerHalf {
    issuer: Field,
    client_id: Field,
    /// Where the settings were looked for, for messages.
    path: String,
}

fn read_api_server(
    reader: &mut Reader<'_>,
    root: &Value,
    distribution: Distribution,
) -> ApiServerHalf {
    match distribution {
        Distribution::Pxk | Distribution::Gke | Distribution::Generic | Distribution::Aks => {
            let base = "kubeadmconfig.apiServer.extraArgs";
            keyed_half(reader, root, base, [ISSUER, CLIENT_ID], base.to_owned())
        }
        Distribution::Eks => {
            let base = "managedControlPlane.oidcIdentityProvider";
            keyed_half(
                reader,
                root,
                base,
                ["issuerUrl", "clientId"],
                base.to_owned(),
            )
        }
        Distribution::PxkEdge => {
            let inner_base = "clusterConfiguration.apiServer.extraArgs";
            let shown = format!("cluster.config (embedded YAML) → {inner_base}");
            match embedded_config(reader, root) {
                None => missing_half(shown),
                Some(config) => keyed_half(reader, &config, inner_base, [ISSUER, CLIENT_ID], shown),
            }
        }
        Distribution::K3s | Distribution::Rke2 => argument_list_half(reader, root),
    }
}

fn missing_half(path: String) -> ApiServerHalf {
    ApiServerHalf {
        issuer: Field::Missing,
        client_id: Field::Missing,
        path,
    }
}

/// The issuer and client id as two keys under `base` of `root`; `shown` names the place in messages.
fn keyed_half(
    reader: &mut Reader<'_>,
    root: &Value,
    base: &str,
    [issuer, client_id]: [&str; 2],
    shown: String,
) -> ApiServerHalf {
    ApiServerHalf {
        issuer: reader.text(
            root,
            &format!("{base}.{issuer}"),
            &format!("{shown}.{issuer}"),
        ),
        client_id: reader.text(
            root,
            &format!("{base}.{client_id}"),
            &format!("{shown}.{client_id}"),
        ),
        path: shown,
    }
}

/// K3s and RKE2: `name=value` items (optionally `--`-prefixed) of `cluster.config.kube-apiserver-arg`.
fn argument_list_half(reader: &mut Reader<'_>, root: &Value) -> ApiServerHalf {
    let path = "cluster.config.kube-apiserver-arg".to_owned();
    let Some(config) = embedded_config(reader, root) else {
        return missing_half(path);
    };
    let args: Vec<String> = match config.get("kube-apiserver-arg") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items.iter().filter_map(macros::scalar_text).collect(),
        Some(Value::String(single)) => vec![single.clone()],
        Some(_) => {
            reader.gaps.push(OidcGap::WrongType {
                path: path.clone(),
                expected: "a list of `name=value` strings",
            });
            return ApiServerHalf {
                issuer: Field::Invalid,
                client_id: Field::Invalid,
                path,
            };
        }
    };
    let mut arg = |name: &str| {
        let found = args.iter().find_map(|a| {
            a.trim()
                .trim_start_matches("--")
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
        });
        match found {
            Some(value) => reader.resolve(value, &format!("{path}[{name}]")),
            None => Field::Missing,
        }
    };
    ApiServerHalf {
        issuer: arg(ISSUER),
        client_id: arg(CLIENT_ID),
        path,
    }
}

/// `cluster.config`, either a mapping or (PXK-E, some edge packs) a string holding YAML.
fn embedded_config(reader: &mut Reader<'_>, root: &Value) -> Option<Value> {
    match macros::lookup(root, &["cluster", "config"]) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => match document::parse_value(text) {
            Ok(value) => Some(value),
            Err(error) => {
                reader.gaps.push(OidcGap::EmbeddedConfigInvalid {
                    path: "cluster.config".to_owned(),
                    error: error.to_string(),
                });
                None
            }
        },
        Some(value @ Value::Mapping(_)) => Some(value.clone()),
        Some(_) => {
            reader.gaps.push(OidcGap::WrongType {
                path: "cluster.config".to_owned(),
                expected: "a mapping or a YAML string",
            });
            None
        }
    }
}

/// Reads `clientConfig` (under `kubeadmconfig` or at the root): `None` when there is no block,
/// `Some(None)` when the block is incomplete or unusable (the gaps are recorded).
fn read_client_config(reader: &mut Reader<'_>, root: &Value) -> Option<Option<OidcLogin>> {
    let (block, prefix) = [
        (
            "kubeadmconfig.clientConfig",
            &["kubeadmconfig", "clientConfig"][..],
        ),
        ("clientConfig", &["clientConfig"][..]),
    ]
    .into_iter()
    .find_map(|(shown, path)| match macros::lookup(root, path) {
        Some(value @ Value::Mapping(_)) => Some((value, shown)),
        Some(Value::Null) | None => None,
        Some(_) => {
            reader.gaps.push(OidcGap::WrongType {
                path: shown.to_owned(),
                expected: "a mapping",
            });
            None
        }
    })?;
    let at = |key: &str| format!("{prefix}.{key}");
    let issuer = reader.text(block, ISSUER, &at(ISSUER));
    let client_id = reader.text(block, CLIENT_ID, &at(CLIENT_ID));
    let secret = reader.text(block, "oidc-client-secret", &at("oidc-client-secret"));
    let scopes = match block.get("oidc-extra-scope") {
        Some(Value::Sequence(items)) => {
            let mut scopes = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let shown = format!("{}[{i}]", at("oidc-extra-scope"));
                match macros::scalar_text(item).map(|t| reader.resolve(&t, &shown)) {
                    Some(Field::Value(v)) => scopes.push(v),
                    Some(Field::Missing) | Some(Field::Invalid) => {}
                    None => reader.gaps.push(OidcGap::WrongType {
                        path: shown,
                        expected: "a scope name",
                    }),
                }
            }
            Field::Value(scopes.join(","))
        }
        _ => reader.text(block, "oidc-extra-scope", &at("oidc-extra-scope")),
    };
    for (setting, field) in [(ISSUER, &issuer), (CLIENT_ID, &client_id)] {
        if matches!(field, Field::Missing) {
            reader.gaps.push(OidcGap::ClientConfigSettingMissing {
                setting,
                path: at(setting),
            });
        }
    }
    let (Field::Value(issuer_url), Field::Value(client_id)) = (issuer, client_id) else {
        return Some(None);
    };
    let mut extra_scopes: Vec<String> = Vec::new();
    if let Field::Value(list) = scopes {
        for scope in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !extra_scopes.iter().any(|s| s == scope) {
                extra_scopes.push(scope.to_owned());
            }
        }
    }
    // Kept with the cluster for as long as it is served: no spare room (a fleet holds one per cluster).
    extra_scopes.shrink_to_fit();
    let login = OidcLogin {
        issuer_url,
        client_id,
        client_secret: match secret {
            Field::Value(s) => Some(Secret::new(s)),
            _ => None,
        },
        extra_scopes,
    };
    Some(Some(login))
}
