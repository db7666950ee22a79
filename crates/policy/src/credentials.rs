//! The tenant's settings for admin credentials: whether clusters hand out their shared admin credential
//! (`static`) or mint a short-lived client certificate per caller (`minted`), and the limits of minting.

use serde::Deserialize;

/// How a cluster's admin credential is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminCredentialMode {
    /// The credential in the cluster file, the same for every caller.
    Static,
    /// A client certificate minted per caller, signed by the cluster's client CA.
    Minted,
}

impl AdminCredentialMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminCredentialMode::Static => "static",
            AdminCredentialMode::Minted => "minted",
        }
    }
}

/// The shortest lifetime a caller may ask for, in seconds (as Kubernetes' own CertificateSigningRequest
/// `expirationSeconds`).
pub const MIN_LIFETIME_SECONDS: u64 = 600;

/// The longest lifetime a tenant may allow, in seconds (365 days). A client certificate of a
/// cluster-admin lives until it expires (Kubernetes cannot revoke it), and a bound keeps every
/// expiry well inside what clocks and certificates can represent.
pub const MAX_LIFETIME_SECONDS: u64 = 365 * 86_400;

/// The `credentials` section of the tenant file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialSettings {
    /// The mode of clusters whose file does not say. Unset: `minted` for clusters whose file has a
    /// `clientCa`, `static` for the others.
    #[serde(default)]
    pub admin_credential: Option<AdminCredentialMode>,
    /// The lifetime when the caller asks for none, in seconds.
    #[serde(default = "default_lifetime")]
    pub default_lifetime_seconds: u64,
    /// The longest lifetime granted, in seconds; longer requests are cut to it.
    #[serde(default = "max_lifetime")]
    pub max_lifetime_seconds: u64,
    /// Prefixed to the caller's user name to form the certificate's CN (the Kubernetes user).
    #[serde(default = "user_prefix")]
    pub user_prefix: String,
    /// The certificate's O (the Kubernetes group) for clusters whose `clientCa` does not name one.
    #[serde(default = "admin_group")]
    pub admin_group: String,
    /// Refuse admin kubeconfig downloads that give no reason.
    #[serde(default)]
    pub require_reason_for_admin: bool,
    /// Certify a bare `public_key` a caller sends. Off by default: a bare key proves nothing about
    /// who holds its private key, so only a CSR (signed with the key) is certified.
    #[serde(default)]
    pub allow_bare_public_keys: bool,
}

fn default_lifetime() -> u64 {
    3600
}

fn max_lifetime() -> u64 {
    86_400
}

fn user_prefix() -> String {
    "kubeconfigd:admin:".to_owned()
}

fn admin_group() -> String {
    "system:masters".to_owned()
}

impl Default for CredentialSettings {
    fn default() -> Self {
        CredentialSettings {
            admin_credential: None,
            default_lifetime_seconds: default_lifetime(),
            max_lifetime_seconds: max_lifetime(),
            user_prefix: user_prefix(),
            admin_group: admin_group(),
            require_reason_for_admin: false,
            allow_bare_public_keys: false,
        }
    }
}

impl CredentialSettings {
    /// Every problem with the settings, as (field, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if !(MIN_LIFETIME_SECONDS..=MAX_LIFETIME_SECONDS).contains(&self.max_lifetime_seconds) {
            problems.push((
                "credentials.maxLifetimeSeconds",
                format!(
                    "must be at least {MIN_LIFETIME_SECONDS} and at most {MAX_LIFETIME_SECONDS} (365 days), got {}",
                    self.max_lifetime_seconds
                ),
            ));
        }
        let max = self
            .max_lifetime_seconds
            .clamp(MIN_LIFETIME_SECONDS, MAX_LIFETIME_SECONDS);
        if !(MIN_LIFETIME_SECONDS..=max).contains(&self.default_lifetime_seconds) {
            problems.push((
                "credentials.defaultLifetimeSeconds",
                format!("must be between {MIN_LIFETIME_SECONDS} and maxLifetimeSeconds ({max})"),
            ));
        }
        if self.user_prefix.chars().any(char::is_control) || self.user_prefix.len() > 64 {
            problems.push((
                "credentials.userPrefix",
                "must be at most 64 characters without control characters".to_owned(),
            ));
        }
        if self.admin_group.trim().is_empty()
            || self.admin_group.chars().any(char::is_control)
            || self.admin_group.len() > 128
        {
            problems.push((
                "credentials.adminGroup",
                "must be 1-128 characters without control characters".to_owned(),
            ));
        }
        problems
    }
}
