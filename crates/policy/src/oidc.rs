//! The OIDC vocabulary shared by pack analysis, the tenant file and the decision: the tenant's own
//! identity-provider settings, the kubelogin settings a configured pack yields, and the reasons a pack
//! is not configured (docs/access.md, "When OIDC is properly configured").

use std::fmt;

use serde::Deserialize;

use crate::secret::Secret;

/// The tenant's own identity provider, used by packs whose identity provider is `palette` or `tenant`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OidcSettings {
    pub issuer_url: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// The settings a kubelogin entry needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcLogin {
    pub issuer_url: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub extra_scopes: Vec<String>,
}

/// Where configured OIDC settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OidcSource {
    /// The pack values' `clientConfig`.
    PackValues,
    /// The tenant's OIDC settings (identity provider `palette` or `tenant`).
    TenantSettings,
}

/// One reason OIDC is not properly configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OidcGap {
    /// The identity-provider selector is `noauth`.
    IdentityProviderNoAuth { path: String },
    /// The selector asks for the tenant's OIDC, but the tenant has none.
    TenantOidcMissing { provider: String, path: String },
    /// The selector holds a value this service does not know.
    UnknownIdentityProvider { value: String, path: String },
    /// AKS clusters authenticate through Entra ID; custom OIDC is unsupported.
    AksUnsupported,
    /// An API-server side setting is missing or empty.
    ApiServerSettingMissing {
        setting: &'static str,
        path: String,
        /// Whether a `clientConfig` block was found (for the message).
        client_config_present: bool,
    },
    /// No `clientConfig` mapping at either accepted place.
    ClientConfigMissing {
        /// Whether the API-server side issuer was found (for the message).
        issuer_present: bool,
    },
    /// `clientConfig` exists but lacks a required setting.
    ClientConfigSettingMissing { setting: &'static str, path: String },
    /// A macro in a value the analysis needs could not be resolved.
    UnresolvedMacro {
        path: String,
        text: String,
        why: String,
    },
    /// A value has the wrong YAML type.
    WrongType {
        path: String,
        expected: &'static str,
    },
    /// PXK-E's embedded `cluster.config` string is not valid YAML.
    EmbeddedConfigInvalid { path: String, error: String },
}

impl OidcGap {
    /// A short machine-readable code for the gap.
    pub fn code(&self) -> &'static str {
        match self {
            OidcGap::IdentityProviderNoAuth { .. } => "IDENTITY_PROVIDER_NOAUTH",
            OidcGap::TenantOidcMissing { .. } => "TENANT_OIDC_MISSING",
            OidcGap::UnknownIdentityProvider { .. } => "UNKNOWN_IDENTITY_PROVIDER",
            OidcGap::AksUnsupported => "AKS_UNSUPPORTED",
            OidcGap::ApiServerSettingMissing { .. } => "API_SERVER_SETTING_MISSING",
            OidcGap::ClientConfigMissing { .. } => "CLIENT_CONFIG_MISSING",
            OidcGap::ClientConfigSettingMissing { .. } => "CLIENT_CONFIG_SETTING_MISSING",
            OidcGap::UnresolvedMacro { .. } => "UNRESOLVED_MACRO",
            OidcGap::WrongType { .. } => "WRONG_TYPE",
            OidcGap::EmbeddedConfigInvalid { .. } => "EMBEDDED_CONFIG_INVALID",
        }
    }
}

impl fmt::Display for OidcGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OidcGap::IdentityProviderNoAuth { path } => {
                write!(f, "the pack's identity provider is `noauth` (`{path}`), which turns OIDC off")
            }
            OidcGap::TenantOidcMissing { provider, path } => write!(
                f,
                "the pack's identity provider is `{provider}` (`{path}`) but the tenant has no OIDC settings"
            ),
            OidcGap::UnknownIdentityProvider { value, path } => write!(
                f,
                "the pack's identity provider `{value}` (`{path}`) is not one of noauth, none, palette, tenant"
            ),
            OidcGap::AksUnsupported => f.write_str(
                "AKS clusters authenticate through Entra ID (`managedControlPlane.aadProfile`); custom OIDC is not supported",
            ),
            OidcGap::ApiServerSettingMissing { setting, path, client_config_present } => {
                if *client_config_present {
                    write!(f, "the Kubernetes pack has a `clientConfig` block but no `{setting}` at `{path}`")
                } else {
                    write!(f, "the Kubernetes pack has no `{setting}` at `{path}`")
                }
            }
            OidcGap::ClientConfigMissing { issuer_present } => {
                if *issuer_present {
                    f.write_str("the Kubernetes pack has `oidc-issuer-url` but no `clientConfig` block")
                } else {
                    f.write_str("the Kubernetes pack has no `clientConfig` block (at `kubeadmconfig.clientConfig` or the root)")
                }
            }
            OidcGap::ClientConfigSettingMissing { setting, path } => {
                write!(f, "the pack's `clientConfig` has no `{setting}` (`{path}`)")
            }
            OidcGap::UnresolvedMacro { path, text, why } => {
                write!(f, "`{path}` holds the macro `{text}`, which cannot be resolved: {why}")
            }
            OidcGap::WrongType { path, expected } => write!(f, "`{path}` must be {expected}"),
            OidcGap::EmbeddedConfigInvalid { path, error } => {
                write!(f, "`{path}` is not valid YAML: {error}")
            }
        }
    }
}

/// The outcome of pack analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcState {
    /// OIDC is properly configured; these are the kubelogin settings.
    Configured {
        login: OidcLogin,
        source: OidcSource,
    },
    /// OIDC is not properly configured, for these reasons (never empty).
    NotConfigured { gaps: Vec<OidcGap> },
}

impl OidcState {
    /// Whether OIDC is properly configured.
    pub fn is_configured(&self) -> bool {
        matches!(self, OidcState::Configured { .. })
    }

    /// The login settings, when configured.
    pub fn login(&self) -> Option<&OidcLogin> {
        match self {
            OidcState::Configured { login, .. } => Some(login),
            OidcState::NotConfigured { .. } => None,
        }
    }

    /// The reasons OIDC is not configured (empty when it is).
    pub fn gaps(&self) -> &[OidcGap] {
        match self {
            OidcState::Configured { .. } => &[],
            OidcState::NotConfigured { gaps } => gaps,
        }
    }

    /// Whether a macro could not be resolved: the pack is then broken rather than merely unconfigured.
    pub fn has_unresolved_macro(&self) -> bool {
        self.gaps()
            .iter()
            .any(|g| matches!(g, OidcGap::UnresolvedMacro { .. }))
    }

    /// One sentence on why OIDC is not configured; empty when it is.
    pub fn summary(&self) -> String {
        self.gaps()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}
