//! The access decision: may this caller download this asset of this cluster?
//!
//! [`decide`] is a pure function of the policy mode, the caller's effective `cluster.*` permissions, and
//! the cluster's facts. A denial is a value carrying a stable code and a message the user can act on.

use std::fmt;

use crate::mode::PolicyMode;
use crate::oidc::OidcState;
use crate::permission::{ClusterOp, ClusterPermissions};

/// The two files served per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    Kubeconfig,
    AdminKubeconfig,
}

impl Asset {
    /// Both assets.
    pub const ALL: [Asset; 2] = [Asset::Kubeconfig, Asset::AdminKubeconfig];

    /// A stable lowercase name (`kubeconfig`, `admin-kubeconfig`).
    pub fn as_str(self) -> &'static str {
        match self {
            Asset::Kubeconfig => "kubeconfig",
            Asset::AdminKubeconfig => "admin-kubeconfig",
        }
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Asset::Kubeconfig => "kubeconfig",
            Asset::AdminKubeconfig => "admin kubeconfig",
        })
    }
}

/// The facts about a cluster that a decision depends on (and one it must not depend on).
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    /// The cluster's name, for messages.
    pub name: &'a str,
    /// Whether OIDC is properly configured, and why not.
    pub oidc: &'a OidcState,
    /// Whether the Spectro Proxy is enabled. It never changes a decision.
    pub proxy_enabled: bool,
}

/// Stable codes for denials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyCode {
    /// `cluster.delete` is required (admin kubeconfig in seed / palette-4.2).
    ClusterDeleteRequired,
    /// `cluster.adminKubeconfigDownload` is required (admin kubeconfig in palette-4.8).
    AdminKubeconfigDownloadRequired,
    /// The kubeconfig needs OIDC, and OIDC is not properly configured.
    OidcNotConfigured,
    /// OIDC is configured but the caller lacks `cluster.get`.
    ClusterGetRequired,
}

impl DenyCode {
    /// The code as sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::ClusterDeleteRequired => "CLUSTER_DELETE_REQUIRED",
            DenyCode::AdminKubeconfigDownloadRequired => "ADMIN_KUBECONFIG_DOWNLOAD_REQUIRED",
            DenyCode::OidcNotConfigured => "OIDC_NOT_CONFIGURED",
            DenyCode::ClusterGetRequired => "CLUSTER_GET_REQUIRED",
        }
    }
}

impl fmt::Display for DenyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial: a code and a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    pub message: String,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The caller may download the asset.
    Allow,
    /// The caller sees the cluster but may not download the asset.
    Deny(Denial),
    /// The caller holds no `cluster.*` permission: the cluster is invisible, answered as not found.
    NotFound,
}

impl Decision {
    /// Whether the asset may be served.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Whether `permissions` allow the admin kubeconfig under `mode` (it depends on no cluster fact). Those
/// who may are also the ones told the details of a cluster's problems.
pub fn may_download_admin(mode: PolicyMode, permissions: ClusterPermissions) -> bool {
    match mode {
        PolicyMode::Seed | PolicyMode::Palette42 => permissions.contains(ClusterOp::Delete),
        PolicyMode::Palette48 => permissions.contains(ClusterOp::AdminKubeconfigDownload),
    }
}

/// Decides whether a caller holding `permissions` may download `asset` of the cluster described by
/// `cluster` under `mode`.
pub fn decide(
    mode: PolicyMode,
    permissions: ClusterPermissions,
    cluster: &ClusterFacts<'_>,
    asset: Asset,
) -> Decision {
    if permissions.is_empty() {
        return Decision::NotFound;
    }
    let delete = permissions.contains(ClusterOp::Delete);
    let get = permissions.contains(ClusterOp::Get);
    let oidc_ok = cluster.oidc.is_configured();
    let name = cluster.name;
    match asset {
        Asset::AdminKubeconfig => {
            let allowed = may_download_admin(mode, permissions);
            let (code, needs) = match mode {
                PolicyMode::Seed | PolicyMode::Palette42 => (
                    DenyCode::ClusterDeleteRequired,
                    "`cluster.delete` (Cluster Admin, Project Admin, Tenant Admin, or a custom role holding it)",
                ),
                PolicyMode::Palette48 => (
                    DenyCode::AdminKubeconfigDownloadRequired,
                    "`cluster.adminKubeconfigDownload` (Cluster Admin, Project Admin, Tenant Admin, or a custom role holding it)",
                ),
            };
            if allowed {
                Decision::Allow
            } else {
                Decision::Deny(Denial {
                    code,
                    message: format!(
                        "admin kubeconfig for cluster {name} needs {needs}; you have {permissions}"
                    ),
                })
            }
        }
        Asset::Kubeconfig => {
            if mode == PolicyMode::Seed && delete {
                return Decision::Allow;
            }
            if oidc_ok && get {
                return Decision::Allow;
            }
            if !oidc_ok {
                let alternative = if mode == PolicyMode::Seed {
                    " (or to holders of `cluster.delete`, e.g. Cluster Admin)"
                } else {
                    ""
                };
                return Decision::Deny(Denial {
                    code: DenyCode::OidcNotConfigured,
                    message: format!(
                        "kubeconfig for cluster {name} is available to you only when OIDC is configured{alternative}; {}",
                        cluster.oidc.summary()
                    ),
                });
            }
            Decision::Deny(Denial {
                code: DenyCode::ClusterGetRequired,
                message: format!(
                    "kubeconfig for cluster {name} needs `cluster.get` (e.g. Cluster Viewer); you have {permissions}"
                ),
            })
        }
    }
}
