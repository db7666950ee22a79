//! Access rules for kubeconfig delivery, as a pure library: who may download a cluster's kubeconfig and
//! admin kubeconfig, and why not.
//!
//! This crate does no I/O and is not async; it must not depend on transport or storage crates (tonic,
//! prost, tokio, redis, axum). It takes text in and gives typed values out.
//!
//! - [`permission`]: `resource.operation` strings and the `cluster.*` permission set.
//! - [`role`]: built-in and custom roles with their scopes.
//! - [`tenant`]: the tenant file — projects, roles, teams, users, API key hashes, bindings — and the
//!   effective permissions of a principal on a cluster.
//! - [`pack`]: Kubernetes pack analysis: is OIDC properly configured, per distribution.
//! - [`macros`]: pack macro resolution.
//! - [`mode`]: the policy modes.
//! - [`oidc`]: OIDC settings, login facts and the reasons a pack is not configured.
//! - [`decision`]: [`decide`], from the mode, the permissions and the cluster's facts.
//! - [`document`]: bounded YAML parsing shared by all of the above.
//! - [`secret`]: a string that never prints.

pub mod credentials;
pub mod decision;
pub mod document;
pub mod macros;
pub mod mode;
pub mod oidc;
pub mod pack;
pub mod permission;
pub mod role;
pub mod secret;
pub mod tenant;

pub use credentials::{
    AdminCredentialMode, CredentialSettings, MAX_LIFETIME_SECONDS, MIN_LIFETIME_SECONDS,
};
pub use decision::{Asset, ClusterFacts, Decision, Denial, DenyCode, decide, may_download_admin};
pub use document::{DocumentError, MAX_DOCUMENT_BYTES};
pub use mode::PolicyMode;
pub use oidc::{OidcGap, OidcLogin, OidcSettings, OidcSource, OidcState};
pub use pack::{Analysis, Distribution, PackError, PackInput, analyze, analyze_tracked};
pub use permission::{ClusterOp, ClusterPermissions, Permission, PermissionError};
pub use role::{Role, RoleCatalog, Scope};
pub use secret::Secret;
pub use tenant::{
    ApiKeyHash, Binding, FieldError, Principal, Project, ReverseProxy, Subject, Tenant,
    TenantError, User, canonical_user, canonical_user_form, user_name_problem,
};
