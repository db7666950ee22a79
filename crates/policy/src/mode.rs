//! The policy mode: which rule set decides access (a tenant setting, docs/access.md "The decision").

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The policy mode, a tenant setting (docs/access.md, "The decision").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum PolicyMode {
    /// The seed page: admin kubeconfig needs `cluster.delete`; kubeconfig needs `cluster.delete`, or
    /// OIDC configured and `cluster.get`.
    #[default]
    #[serde(rename = "seed")]
    Seed,
    /// Palette 4.2: admin kubeconfig needs `cluster.delete`; kubeconfig needs OIDC and `cluster.get`.
    #[serde(rename = "palette-4.2")]
    Palette42,
    /// Palette 4.8: admin kubeconfig needs `cluster.adminKubeconfigDownload`; kubeconfig as 4.2.
    #[serde(rename = "palette-4.8")]
    Palette48,
}

impl PolicyMode {
    /// Every mode.
    pub const ALL: [PolicyMode; 3] = [
        PolicyMode::Seed,
        PolicyMode::Palette42,
        PolicyMode::Palette48,
    ];

    /// The mode's name as written in the tenant file.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Seed => "seed",
            PolicyMode::Palette42 => "palette-4.2",
            PolicyMode::Palette48 => "palette-4.8",
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown policy mode {s:?}; expected seed, palette-4.2 or palette-4.8")
            })
    }
}
