//! Roles: the built-in Palette roles (docs/access.md) and the tenant's custom roles.
//!
//! Role names are case-insensitive; a [`RoleCatalog`] looks them up by their lowercased name.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::permission::{ClusterOp, ClusterPermissions, Permission};

/// Where a role may be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Bound without a project; applies to every cluster of the tenant.
    Tenant,
    /// Bound in one project; applies to the clusters of that project.
    Project,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Tenant => "tenant",
            Scope::Project => "project",
        })
    }
}

/// A named set of permissions with a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    name: String,
    scope: Scope,
    permissions: Vec<Permission>,
    cluster: ClusterPermissions,
    builtin: bool,
}

impl Role {
    /// A custom role from its validated parts.
    pub fn custom(name: impl Into<String>, scope: Scope, permissions: Vec<Permission>) -> Self {
        let cluster = permissions
            .iter()
            .filter_map(Permission::cluster_op)
            .collect();
        Role {
            name: name.into(),
            scope,
            permissions,
            cluster,
            builtin: false,
        }
    }

    fn builtin(name: &str, scope: Scope, ops: &[ClusterOp]) -> Self {
        let mut role = Role::custom(
            name,
            scope,
            ops.iter().map(|op| Permission::from(*op)).collect(),
        );
        role.builtin = true;
        role
    }

    /// The role's display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the role may be bound.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Every permission the role holds.
    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    /// The role's `cluster.*` permissions.
    pub fn cluster_permissions(&self) -> ClusterPermissions {
        self.cluster
    }

    /// Whether this is one of Palette's built-in roles.
    pub fn is_builtin(&self) -> bool {
        self.builtin
    }
}

const ADMIN_OPS: &[ClusterOp] = &ClusterOp::ALL;
const EDITOR_OPS: &[ClusterOp] = &[ClusterOp::Get, ClusterOp::List, ClusterOp::Update];
const VIEWER_OPS: &[ClusterOp] = &[ClusterOp::Get, ClusterOp::List];

/// The built-in roles (docs/access.md, "Permissions and visibility").
pub fn builtin_roles() -> Vec<Role> {
    let mut roles = vec![
        Role::builtin("Project Admin", Scope::Project, ADMIN_OPS),
        Role::builtin("Project Editor", Scope::Project, EDITOR_OPS),
        Role::builtin("Project Viewer", Scope::Project, VIEWER_OPS),
        Role::builtin("Cluster Admin", Scope::Project, ADMIN_OPS),
        Role::builtin("Cluster Editor", Scope::Project, EDITOR_OPS),
        Role::builtin("Cluster Viewer", Scope::Project, VIEWER_OPS),
        Role::builtin("Tenant Admin", Scope::Tenant, ADMIN_OPS),
        Role::builtin("Tenant Project Admin", Scope::Tenant, ADMIN_OPS),
        Role::builtin("Tenant Viewer", Scope::Tenant, VIEWER_OPS),
    ];
    for family in ["Cluster Profile", "App Deployment", "Cloud Account"] {
        for level in ["Admin", "Editor", "Viewer"] {
            roles.push(Role::builtin(
                &format!("{family} {level}"),
                Scope::Project,
                &[],
            ));
        }
    }
    roles
}

/// Roles by case-insensitive name.
#[derive(Debug, Clone)]
pub struct RoleCatalog {
    roles: BTreeMap<String, Role>,
}

impl RoleCatalog {
    /// A catalog holding only the built-in roles.
    pub fn builtin() -> Self {
        let roles = builtin_roles()
            .into_iter()
            .map(|r| (r.name.to_lowercase(), r))
            .collect();
        RoleCatalog { roles }
    }

    /// Adds a role; returns the existing role if the name is taken (names are case-insensitive).
    pub fn insert(&mut self, role: Role) -> Result<(), &Role> {
        let key = role.name.to_lowercase();
        if self.roles.contains_key(&key) {
            return Err(&self.roles[&key]);
        }
        self.roles.insert(key, role);
        Ok(())
    }

    /// Looks a role up by name, ignoring case.
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.roles.get(&name.to_lowercase())
    }

    /// Every role, ordered by lowercased name.
    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case() {
        let catalog = RoleCatalog::builtin();
        let role = catalog.get("cLuStEr aDmIn").unwrap();
        assert_eq!(role.name(), "Cluster Admin");
        assert!(role.cluster_permissions().contains(ClusterOp::Delete));
        assert!(
            catalog
                .get("cluster profile viewer")
                .unwrap()
                .cluster_permissions()
                .is_empty()
        );
    }

    #[test]
    fn builtin_scopes_follow_the_table() {
        let catalog = RoleCatalog::builtin();
        assert_eq!(catalog.get("Tenant Viewer").unwrap().scope(), Scope::Tenant);
        assert_eq!(
            catalog.get("Project Viewer").unwrap().scope(),
            Scope::Project
        );
    }
}
