//! The tenant file (docs/files.md): projects, custom roles, teams, users, API key hashes, bindings
//! and the tenant-wide settings (policy mode, Spectro Proxy server, tenant OIDC).
//!
//! Parsing happens in two steps. `serde` reads the shape (unknown fields are refused so that a typo such
//! as `bindngs:` cannot silently drop every binding; shape errors carry the parser's line). Then
//! cross-references are checked and every problem is reported with its field path, e.g.
//! `bindings[2].role: unknown role "Cluster Boss"`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;

use crate::credentials::CredentialSettings;
use crate::document::{self, DocumentError};
use crate::mode::PolicyMode;
use crate::oidc::OidcSettings;
use crate::permission::{ClusterPermissions, Permission};
use crate::role::{Role, RoleCatalog, Scope};

/// The Spectro Proxy server, a service-level setting.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReverseProxy {
    /// Host name without scheme or port.
    pub server: String,
    /// Port, 443 unless set.
    #[serde(default = "default_proxy_port")]
    pub port: u16,
    /// The proxy's CA (PEM), when it differs from the clusters' CAs.
    #[serde(default)]
    pub certificate_authority: Option<String>,
}

fn default_proxy_port() -> u16 {
    443
}

/// A project of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub uid: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The stored form of an API key: the SHA-256 of the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    /// Wraps a digest.
    pub fn from_digest(digest: [u8; 32]) -> Self {
        ApiKeyHash(digest)
    }

    /// The digest bytes (compare them in constant time).
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash(sha256:{}…)", hex::encode(&self.0[..4]))
    }
}

impl TryFrom<String> for ApiKeyHash {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let hex_part = text.strip_prefix("sha256:").ok_or_else(|| {
            "an API key hash must look like `sha256:<64 hex characters>`".to_owned()
        })?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut digest).map_err(|_| {
            format!(
                "an API key hash must be `sha256:` followed by 64 hex characters; got {} characters after `sha256:`",
                hex_part.len()
            )
        })?;
        Ok(ApiKeyHash(digest))
    }
}

/// The form in which a user name is stored and compared: an e-mail address (a name without `:`) is
/// compared case-insensitively, so it is lowercased (ASCII only: Unicode folding would map look-alikes
/// such as the Kelvin sign onto `k`); any other name — a Kubernetes user such as
/// `system:serviceaccount:payments:deployer`, a SPIFFE ID — is compared exactly, as Kubernetes and
/// SPIFFE compare them (a SPIFFE path is case-sensitive).
pub fn canonical_user(name: &str) -> String {
    canonical_user_form(name).into_owned()
}

/// [`canonical_user`] without a copy when the name is already in canonical form (the usual case).
pub fn canonical_user_form(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains(':') || !name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    }
}

/// Why `name` cannot be a user name, if it cannot: it must be printable ASCII without spaces, at most
/// 256 bytes, so that it reads the same in a log line, an audit record and a certificate subject.
pub fn user_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > 256 {
        Some("is longer than 256 bytes")
    } else if !name.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without spaces or control characters")
    } else {
        None
    }
}

/// A user of the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's name in [`canonical_user`] form: a lowercased e-mail address (`email:`), or a
    /// user name such as a service account or SPIFFE ID (`username:`).
    pub name: String,
    /// Hashes of the user's API keys.
    pub api_keys: Vec<ApiKeyHash>,
}

/// Who a binding grants a role to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Team(String),
}

/// A role granted to a user or team, tenant-wide or in one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub subject: Subject,
    pub role: String,
    pub project: Option<String>,
    cluster: ClusterPermissions,
}

/// The caller as the policy sees it: a user and the teams it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    user: String,
    teams: BTreeSet<String>,
}

impl Principal {
    /// A principal from a user name and team names; the name is compared in [`canonical_user`] form.
    pub fn new(user: &str, teams: impl IntoIterator<Item = String>) -> Self {
        Principal {
            user: canonical_user(user),
            teams: teams.into_iter().collect(),
        }
    }

    /// The teams it counts as a member of, in order.
    pub fn teams(&self) -> impl Iterator<Item = &str> {
        self.teams.iter().map(String::as_str)
    }
}

/// One problem in the tenant file, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// The 1-based line of the field in the file, when it can be found.
    pub line: Option<usize>,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a tenant file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// The YAML could not be read or has the wrong shape (carries the line when the parser gives one).
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// The YAML is well-formed but inconsistent; every problem found is listed.
    #[error("{}", join_errors(.0))]
    Fields(Vec<FieldError>),
}

impl TenantError {
    /// The 1-based line of the problem, when the parser gave one.
    pub fn line(&self) -> Option<usize> {
        match self {
            TenantError::Document(e) => e.line(),
            TenantError::Fields(_) => None,
        }
    }
}

fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTenant {
    tenant: String,
    #[serde(default)]
    policy: PolicyMode,
    #[serde(default)]
    reverse_proxy: Option<ReverseProxy>,
    #[serde(default)]
    oidc: Option<OidcSettings>,
    #[serde(default)]
    credentials: CredentialSettings,
    #[serde(default)]
    projects: Vec<Project>,
    #[serde(default)]
    custom_roles: Vec<RawRole>,
    #[serde(default)]
    teams: Vec<RawTeam>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    bindings: Vec<RawBinding>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    name: String,
    scope: Scope,
    permissions: Vec<Permission>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUser {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    api_keys: Vec<ApiKeyHash>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    team: Option<String>,
    role: String,
    #[serde(default)]
    project: Option<String>,
}

/// A validated tenant file.
#[derive(Debug, Clone)]
pub struct Tenant {
    name: String,
    policy: PolicyMode,
    reverse_proxy: Option<ReverseProxy>,
    oidc: Option<OidcSettings>,
    credentials: CredentialSettings,
    projects: BTreeMap<String, Project>,
    users: BTreeMap<String, User>,
    grants: Grants,
}

/// The teams and bindings of the file, indexed by who they concern: a call looks up its caller's user
/// and teams instead of scanning every team and binding. (Scanning cost a call 55 µs on a 0.7 MiB
/// tenant file of 1,500 projects, a thousand times what it cost on a tenant of ten bindings; and a
/// listing, which asks once per project, 14 ms.)
///
/// The maps hash with foldhash (seeded per process), not SipHash: their keys are fixed when the file
/// loads and a call only looks up, so no caller can grow a bucket.
#[derive(Debug, Clone, Default)]
struct Grants {
    /// The file teams of each (lowercased) member, in name order.
    teams_of: Map<Vec<String>>,
    /// What each user's own bindings grant.
    users: Map<Grant>,
    /// What each team's bindings grant.
    teams: Map<Grant>,
}

type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// The bindings of one subject, merged: what they grant everywhere and in each project.
#[derive(Debug, Clone, Default)]
struct Grant {
    tenant_wide: ClusterPermissions,
    projects: Map<ClusterPermissions>,
}

impl Grant {
    fn on(&self, project: &str) -> ClusterPermissions {
        self.projects
            .get(project)
            .map_or(self.tenant_wide, |granted| self.tenant_wide.union(*granted))
    }
}

impl Grants {
    fn new(teams: BTreeMap<String, BTreeSet<String>>, bindings: Vec<Binding>) -> Self {
        let mut grants = Grants::default();
        for (team, members) in teams {
            for member in members {
                grants
                    .teams_of
                    .entry(member)
                    .or_default()
                    .push(team.clone());
            }
        }
        for binding in bindings {
            let grant = match binding.subject {
                Subject::User(user) => grants.users.entry(user).or_default(),
                Subject::Team(team) => grants.teams.entry(team).or_default(),
            };
            match binding.project {
                None => grant.tenant_wide = grant.tenant_wide.union(binding.cluster),
                Some(project) => {
                    let granted = grant.projects.entry(project).or_default();
                    *granted = granted.union(binding.cluster);
                }
            }
        }
        grants
    }
}

struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
            line: None,
        });
    }
}

/// Each section of the tenant file, validated: what is usable, with every problem recorded.
impl Problems {
    fn projects(&mut self, raw: Vec<Project>) -> BTreeMap<String, Project> {
        let mut projects = BTreeMap::new();
        for (i, project) in raw.into_iter().enumerate() {
            if !is_identifier(&project.uid) {
                self.add(
                    format!("projects[{i}].uid"),
                    format!(
                        "{:?} is not a project uid (letters, digits, `-`, `_`, `.`)",
                        project.uid
                    ),
                );
            } else if projects.contains_key(&project.uid) {
                self.add(
                    format!("projects[{i}].uid"),
                    format!("duplicate project {:?}", project.uid),
                );
            } else {
                projects.insert(project.uid.clone(), project);
            }
        }
        projects
    }

    fn roles(&mut self, raw: Vec<RawRole>) -> RoleCatalog {
        let mut roles = RoleCatalog::builtin();
        for (i, role) in raw.into_iter().enumerate() {
            if role.name.trim().is_empty() {
                self.add(format!("customRoles[{i}].name"), "must not be empty");
                continue;
            }
            let name = role.name.clone();
            if let Err(existing) =
                roles.insert(Role::custom(role.name, role.scope, role.permissions))
            {
                let what = if existing.is_builtin() {
                    "a built-in role"
                } else {
                    "another custom role"
                };
                self.add(
                format!("customRoles[{i}].name"),
                format!("{name:?} has the same name as {what} ({:?}); role names are case-insensitive", existing.name()),
            );
            }
        }
        roles
    }

    fn teams(&mut self, raw: Vec<RawTeam>) -> BTreeMap<String, BTreeSet<String>> {
        let mut teams: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (i, team) in raw.into_iter().enumerate() {
            if team.name.trim().is_empty() {
                self.add(format!("teams[{i}].name"), "must not be empty");
                continue;
            }
            let duplicate = format!("duplicate team {:?}", team.name);
            match teams.entry(team.name) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    self.add(format!("teams[{i}].name"), duplicate)
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(team.members.iter().map(|m| canonical_user(m)).collect());
                }
            }
        }
        teams
    }

    fn users(&mut self, raw: Vec<RawUser>) -> BTreeMap<String, User> {
        let mut users = BTreeMap::new();
        let mut key_owner: BTreeMap<ApiKeyHash, String> = BTreeMap::new();
        for (i, user) in raw.into_iter().enumerate() {
            let (field, name) = match (&user.email, &user.username) {
                (Some(email), None) => {
                    let email = email.trim().to_ascii_lowercase();
                    if email.is_empty() || !email.contains('@') || email.contains(':') {
                        self.add(
                            format!("users[{i}].email"),
                            format!(
                                "{:?} is not an e-mail address",
                                user.email.unwrap_or_default()
                            ),
                        );
                        continue;
                    }
                    ("email", email)
                }
                (None, Some(username)) => {
                    if let Some(problem) = user_name_problem(username) {
                        self.add(
                            format!("users[{i}].username"),
                            format!("{username:?} {problem}"),
                        );
                        continue;
                    }
                    ("username", canonical_user(username))
                }
                (Some(_), Some(_)) => {
                    self.add(
                        format!("users[{i}]"),
                        "has both `email` and `username`; a user has one name",
                    );
                    continue;
                }
                (None, None) => {
                    self.add(format!("users[{i}]"), "needs an `email` or a `username`");
                    continue;
                }
            };
            let email = name;
            if users.contains_key(&email) {
                self.add(
                    format!("users[{i}].{field}"),
                    format!("duplicate user {email:?}"),
                );
                continue;
            }
            for (k, key) in user.api_keys.iter().enumerate() {
                if let Some(owner) = key_owner.insert(*key, email.clone()) {
                    self.add(
                        format!("users[{i}].apiKeys[{k}]"),
                        format!("the same API key hash is already listed for {owner:?}"),
                    );
                }
            }
            users.insert(
                email.clone(),
                User {
                    name: email,
                    api_keys: user.api_keys,
                },
            );
        }
        users
    }

    fn bindings(
        &mut self,
        raw: Vec<RawBinding>,
        roles: &RoleCatalog,
        teams: &BTreeMap<String, BTreeSet<String>>,
        projects: &BTreeMap<String, Project>,
    ) -> Vec<Binding> {
        let mut bindings = Vec::new();
        for (i, binding) in raw.into_iter().enumerate() {
            let at = |field: &str| format!("bindings[{i}].{field}");
            let subject = match (binding.user, binding.team) {
                (Some(user), None) if !user.trim().is_empty() => {
                    Subject::User(canonical_user(user.trim()))
                }
                (None, Some(team)) => {
                    if !teams.contains_key(&team) {
                        self.add(
                            at("team"),
                            format!("unknown team {team:?}; declare it under `teams`"),
                        );
                        continue;
                    }
                    Subject::Team(team)
                }
                (Some(_), Some(_)) => {
                    self.add(
                        format!("bindings[{i}]"),
                        "has both `user` and `team`; a binding names one",
                    );
                    continue;
                }
                _ => {
                    self.add(format!("bindings[{i}]"), "needs a `user` or a `team`");
                    continue;
                }
            };
            let Some(role) = roles.get(&binding.role) else {
                self.add(at("role"), format!("unknown role {:?}", binding.role));
                continue;
            };
            match (role.scope(), &binding.project) {
                (Scope::Project, None) => {
                    self.add(
                        at("project"),
                        format!("{:?} is a project role and needs a `project`", role.name()),
                    );
                    continue;
                }
                (Scope::Tenant, Some(_)) => {
                    self.add(
                        at("project"),
                        format!(
                            "{:?} is a tenant role and cannot be bound to a project",
                            role.name()
                        ),
                    );
                    continue;
                }
                (Scope::Project, Some(project)) if !projects.contains_key(project) => {
                    self.add(at("project"), format!("unknown project {project:?}"));
                    continue;
                }
                _ => {}
            }
            bindings.push(Binding {
                subject,
                role: role.name().to_owned(),
                project: binding.project,
                cluster: role.cluster_permissions(),
            });
        }
        bindings
    }
}

fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Tenant {
    /// Parses and validates a tenant file.
    pub fn from_yaml(text: &str) -> Result<Self, TenantError> {
        let raw: RawTenant = document::parse(text)?;
        let mut problems = Problems(Vec::new());
        if raw.tenant.trim().is_empty() {
            problems.add("tenant", "must not be empty");
        }
        if let Some(proxy) = &raw.reverse_proxy {
            check_proxy(proxy, &mut problems);
        }
        if let Some(oidc) = &raw.oidc {
            check_oidc(oidc, &mut problems);
        }
        for (field, message) in raw.credentials.problems() {
            problems.add(field, message);
        }
        let projects = problems.projects(raw.projects);
        let roles = problems.roles(raw.custom_roles);
        let teams = problems.teams(raw.teams);
        let users = problems.users(raw.users);
        let bindings = problems.bindings(raw.bindings, &roles, &teams, &projects);
        if !problems.0.is_empty() {
            let mut errors = problems.0;
            for error in &mut errors {
                error.line = document::line_of(text, &error.field);
            }
            return Err(TenantError::Fields(errors));
        }
        Ok(Tenant {
            name: raw.tenant,
            policy: raw.policy,
            reverse_proxy: raw.reverse_proxy,
            oidc: raw.oidc,
            credentials: raw.credentials,
            projects,
            users,
            grants: Grants::new(teams, bindings),
        })
    }

    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy mode in force.
    pub fn policy(&self) -> PolicyMode {
        self.policy
    }

    /// The Spectro Proxy server, when configured.
    pub fn reverse_proxy(&self) -> Option<&ReverseProxy> {
        self.reverse_proxy.as_ref()
    }

    /// The admin credential settings (defaults when the file has no `credentials` section).
    pub fn credentials(&self) -> &CredentialSettings {
        &self.credentials
    }

    /// The tenant's own OIDC settings, when configured.
    pub fn oidc(&self) -> Option<&OidcSettings> {
        self.oidc.as_ref()
    }

    /// Whether a project with this uid exists.
    pub fn has_project(&self, uid: &str) -> bool {
        self.projects.contains_key(uid)
    }

    /// The uids of the tenant's projects, in order.
    pub fn project_uids(&self) -> impl Iterator<Item = &str> {
        self.projects.keys().map(String::as_str)
    }

    /// Every user listed in the file.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// The principal for a user: its teams from the file plus `extra_teams` (e.g. a JWT `groups` claim).
    pub fn principal(
        &self,
        user: &str,
        extra_teams: impl IntoIterator<Item = String>,
    ) -> Principal {
        let user = canonical_user(user);
        let file_teams = self.grants.teams_of.get(&user).into_iter().flatten();
        Principal {
            teams: file_teams.cloned().chain(extra_teams).collect(),
            user,
        }
    }

    /// What [`Tenant::effective_permissions`] says for the principal of `user` and `extra_teams` on a
    /// cluster of `project`, without building the principal: no copy of the name or the teams (this is
    /// asked on every download).
    pub fn permissions_of(
        &self,
        user: &str,
        extra_teams: &[String],
        project: &str,
    ) -> ClusterPermissions {
        self.permissions_of_canonical(&canonical_user_form(user), extra_teams, project)
    }

    /// [`Tenant::permissions_of`] for a user name already in [`canonical_user`] form (an
    /// authenticated caller's is), without scanning it again.
    pub fn permissions_of_canonical(
        &self,
        user: &str,
        extra_teams: &[String],
        project: &str,
    ) -> ClusterPermissions {
        let own = self
            .grants
            .users
            .get(user)
            .map_or(ClusterPermissions::NONE, |grant| grant.on(project));
        let file_teams = self.grants.teams_of.get(user).into_iter().flatten();
        // A team named twice (by the file and a credential) grants the same again: the union does
        // not care, so no set is built.
        file_teams
            .chain(extra_teams)
            .filter_map(|team| self.grants.teams.get(team))
            .fold(own, |granted, grant| granted.union(grant.on(project)))
    }

    /// The union of the cluster permissions of every binding that applies to `principal` on a cluster of
    /// `project`: tenant-scope bindings and bindings in that project. Costs the principal's teams, not
    /// the tenant's bindings.
    pub fn effective_permissions(
        &self,
        principal: &Principal,
        project: &str,
    ) -> ClusterPermissions {
        let own = self
            .grants
            .users
            .get(&principal.user)
            .map_or(ClusterPermissions::NONE, |grant| grant.on(project));
        principal
            .teams
            .iter()
            .filter_map(|team| self.grants.teams.get(team))
            .fold(own, |granted, grant| granted.union(grant.on(project)))
    }
}

fn check_proxy(proxy: &ReverseProxy, problems: &mut Problems) {
    let server = proxy.server.trim();
    if server.is_empty() {
        problems.add("reverseProxy.server", "must not be empty");
    } else if server.contains("://")
        || server.contains('/')
        || server.contains(':')
        || server.contains(char::is_whitespace)
    {
        problems.add(
            "reverseProxy.server",
            format!("{server:?} must be a host name only, without scheme, port or path"),
        );
    }
    if proxy.port == 0 {
        problems.add("reverseProxy.port", "must be between 1 and 65535");
    }
}

fn check_oidc(oidc: &OidcSettings, problems: &mut Problems) {
    if !oidc.issuer_url.starts_with("https://") || oidc.issuer_url.len() <= "https://".len() {
        problems.add(
            "oidc.issuerUrl",
            format!("{:?} must be an https URL", oidc.issuer_url),
        );
    }
    if oidc.client_id.trim().is_empty() {
        problems.add("oidc.clientId", "must not be empty");
    }
    for (i, scope) in oidc.scopes.iter().enumerate() {
        if scope.is_empty() || scope.contains(|c: char| c == ',' || c.is_whitespace()) {
            problems.add(
                format!("oidc.scopes[{i}]"),
                format!("{scope:?} is not a single scope name"),
            );
        }
    }
}
