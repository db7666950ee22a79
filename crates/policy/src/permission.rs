//! Permission strings (`resource.operation`) and the set of `cluster.*` permissions a caller holds.
//!
//! Only `cluster.*` permissions take part in kubeconfig decisions, so they are kept as a small bit set
//! ([`ClusterPermissions`]); other well-formed permissions are validated against a catalog and carried
//! along so that a typo in a custom role is a load error rather than a silent no-op.

use std::fmt;
use std::str::FromStr;

/// One operation on the `cluster` resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterOp {
    Create,
    Delete,
    Get,
    Import,
    List,
    Update,
    AdminKubeconfigDownload,
}

impl ClusterOp {
    /// Every cluster operation, in catalog order.
    pub const ALL: [ClusterOp; 7] = [
        ClusterOp::Create,
        ClusterOp::Delete,
        ClusterOp::Get,
        ClusterOp::Import,
        ClusterOp::List,
        ClusterOp::Update,
        ClusterOp::AdminKubeconfigDownload,
    ];

    /// The operation's name as written after `cluster.`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterOp::Create => "create",
            ClusterOp::Delete => "delete",
            ClusterOp::Get => "get",
            ClusterOp::Import => "import",
            ClusterOp::List => "list",
            ClusterOp::Update => "update",
            ClusterOp::AdminKubeconfigDownload => "adminKubeconfigDownload",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        ClusterOp::ALL.into_iter().find(|op| op.as_str() == name)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The `cluster.*` permissions held on one cluster: a bit set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClusterPermissions(u8);

impl ClusterPermissions {
    /// No cluster permission at all.
    pub const NONE: ClusterPermissions = ClusterPermissions(0);

    /// Every cluster permission.
    pub fn all() -> Self {
        ClusterOp::ALL.into_iter().collect()
    }

    /// Whether `op` is held.
    pub fn contains(self, op: ClusterOp) -> bool {
        self.0 & op.bit() != 0
    }

    /// This set plus `op`.
    #[must_use]
    pub fn with(self, op: ClusterOp) -> Self {
        ClusterPermissions(self.0 | op.bit())
    }

    /// The union of two sets.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        ClusterPermissions(self.0 | other.0)
    }

    /// True when no cluster permission is held (the cluster is then invisible to the caller).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The held operations, in catalog order.
    pub fn iter(self) -> impl Iterator<Item = ClusterOp> {
        ClusterOp::ALL
            .into_iter()
            .filter(move |op| self.contains(*op))
    }
}

impl FromIterator<ClusterOp> for ClusterPermissions {
    fn from_iter<I: IntoIterator<Item = ClusterOp>>(iter: I) -> Self {
        iter.into_iter()
            .fold(ClusterPermissions::NONE, ClusterPermissions::with)
    }
}

impl fmt::Debug for ClusterPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterPermissions({self})")
    }
}

impl fmt::Display for ClusterPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, op) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "cluster.{}", op.as_str())?;
        }
        Ok(())
    }
}

/// Resources other than `cluster` that a custom role may name, with the operations each accepts.
const OTHER_RESOURCES: &[(&str, &[&str])] = &[
    (
        "appDeployment",
        &["create", "delete", "get", "list", "update"],
    ),
    ("appProfile", &["create", "delete", "get", "list", "update"]),
    ("audit", &["get", "list"]),
    (
        "cloudaccount",
        &["create", "delete", "get", "list", "update"],
    ),
    (
        "clusterGroup",
        &["create", "delete", "get", "list", "update"],
    ),
    (
        "clusterProfile",
        &["create", "delete", "get", "list", "publish", "update"],
    ),
    ("edgehost", &["create", "delete", "get", "list", "update"]),
    ("location", &["create", "delete", "get", "list", "update"]),
    ("macro", &["create", "delete", "get", "list", "update"]),
    (
        "packRegistry",
        &["create", "delete", "get", "list", "update"],
    ),
    ("project", &["create", "delete", "get", "list", "update"]),
    ("registry", &["create", "delete", "get", "list", "update"]),
    ("role", &["create", "delete", "get", "list", "update"]),
    ("sshKey", &["create", "delete", "get", "list", "update"]),
    ("tag", &["update"]),
    ("team", &["create", "delete", "get", "list", "update"]),
    ("user", &["create", "delete", "get", "list", "update"]),
    (
        "virtualCluster",
        &["create", "delete", "get", "list", "update"],
    ),
    ("workspace", &["create", "delete", "get", "list", "update"]),
];

/// A validated permission string, `resource.operation`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Permission {
    resource: String,
    operation: String,
}

impl Permission {
    /// The resource key, e.g. `cluster`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The operation, e.g. `delete`.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// The cluster operation this permission grants, if it is a `cluster.*` permission.
    pub fn cluster_op(&self) -> Option<ClusterOp> {
        if self.resource == "cluster" {
            ClusterOp::from_name(&self.operation)
        } else {
            None
        }
    }
}

impl From<ClusterOp> for Permission {
    fn from(op: ClusterOp) -> Self {
        Permission {
            resource: "cluster".to_owned(),
            operation: op.as_str().to_owned(),
        }
    }
}

/// Why a permission string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("`{0}` is not a permission: expected `resource.operation`, e.g. `cluster.get`")]
    Malformed(String),
    #[error("unknown resource `{resource}` in permission `{text}`")]
    UnknownResource { text: String, resource: String },
    #[error(
        "unknown operation `{operation}` in permission `{text}`; `{resource}` accepts: {accepted}"
    )]
    UnknownOperation {
        text: String,
        resource: String,
        operation: String,
        accepted: String,
    },
}

impl FromStr for Permission {
    type Err = PermissionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (resource, operation) = text
            .split_once('.')
            .filter(|(r, o)| !r.is_empty() && !o.is_empty() && !o.contains('.'))
            .ok_or_else(|| PermissionError::Malformed(text.to_owned()))?;
        let accepted: Vec<&str> = if resource == "cluster" {
            ClusterOp::ALL.iter().map(|op| op.as_str()).collect()
        } else {
            OTHER_RESOURCES
                .iter()
                .find(|(name, _)| *name == resource)
                .map(|(_, ops)| ops.to_vec())
                .ok_or_else(|| PermissionError::UnknownResource {
                    text: text.to_owned(),
                    resource: resource.to_owned(),
                })?
        };
        if !accepted.contains(&operation) {
            return Err(PermissionError::UnknownOperation {
                text: text.to_owned(),
                resource: resource.to_owned(),
                operation: operation.to_owned(),
                accepted: accepted.join(", "),
            });
        }
        Ok(Permission {
            resource: resource.to_owned(),
            operation: operation.to_owned(),
        })
    }
}

impl TryFrom<String> for Permission {
    type Error = PermissionError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.resource, self.operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_permissions_parse_to_ops() {
        let p: Permission = "cluster.adminKubeconfigDownload".parse().unwrap();
        assert_eq!(p.cluster_op(), Some(ClusterOp::AdminKubeconfigDownload));
        let p: Permission = "clusterProfile.publish".parse().unwrap();
        assert_eq!(p.cluster_op(), None);
    }

    #[test]
    fn bad_permissions_are_named() {
        for bad in [
            "cluster",
            "cluster.",
            ".get",
            "cluster.get.x",
            "cluster.destroy",
            "clusters.get",
        ] {
            let err = bad.parse::<Permission>().unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn set_displays_in_catalog_order() {
        let set: ClusterPermissions = [ClusterOp::List, ClusterOp::Get].into_iter().collect();
        assert_eq!(set.to_string(), "cluster.get, cluster.list");
        assert_eq!(ClusterPermissions::NONE.to_string(), "none");
        assert!(ClusterPermissions::all().contains(ClusterOp::AdminKubeconfigDownload));
    }
}
