//! Property tests of the access rule.

use kubeconfig_policy::{
    Asset, ClusterFacts, ClusterOp, ClusterPermissions, Decision, OidcGap, OidcLogin, OidcSource,
    OidcState, PolicyMode, Tenant, decide,
};
use proptest::prelude::*;

fn permissions() -> impl Strategy<Value = ClusterPermissions> {
    any::<u8>().prop_map(|bits| {
        ClusterOp::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, op)| op)
            .collect()
    })
}

fn oidc_state(configured: bool) -> OidcState {
    if configured {
        OidcState::Configured {
            login: OidcLogin {
                issuer_url: "https://idp.example.test".into(),
                client_id: "k8s".into(),
                client_secret: None,
                extra_scopes: vec![],
            },
            source: OidcSource::PackValues,
        }
    } else {
        OidcState::NotConfigured {
            gaps: vec![OidcGap::ClientConfigMissing {
                issuer_present: true,
            }],
        }
    }
}

fn mode() -> impl Strategy<Value = PolicyMode> {
    prop::sample::select(PolicyMode::ALL.to_vec())
}

fn asset() -> impl Strategy<Value = Asset> {
    prop::sample::select(Asset::ALL.to_vec())
}

const ROLES: [&str; 8] = [
    "Cluster Admin",
    "Cluster Editor",
    "Cluster Viewer",
    "Project Viewer",
    "Project Admin",
    "Cluster Profile Viewer",
    "Deleter",
    "Getter",
];

fn tenant_with(bindings: &[(usize, usize, bool)], mode: PolicyMode) -> Tenant {
    let mut yaml = format!(
        "tenant: t\npolicy: {mode}\nprojects: [{{uid: p}}, {{uid: q}}]\ncustomRoles:\n  - {{name: Deleter, scope: project, permissions: [cluster.delete]}}\n  - {{name: Getter, scope: project, permissions: [cluster.get]}}\nteams:\n  - {{name: sre, members: [u0@x.test]}}\nbindings:\n"
    );
    for (subject, role, in_p) in bindings {
        let subject = if *subject == 3 {
            "team: sre".to_owned()
        } else {
            format!("user: u{subject}@x.test")
        };
        let project = if *in_p { "p" } else { "q" };
        yaml.push_str(&format!(
            "  - {{{subject}, role: {}, project: {project}}}\n",
            ROLES[*role]
        ));
    }
    Tenant::from_yaml(&yaml).expect("generated tenant is valid")
}

fn binding() -> impl Strategy<Value = (usize, usize, bool)> {
    (0usize..4, 0usize..ROLES.len(), any::<bool>())
}

proptest! {
    #[test]
    fn seed_admin_kubeconfig_iff_cluster_delete(perms in permissions(), oidc in any::<bool>(), proxy in any::<bool>()) {
        let state = oidc_state(oidc);
        let facts = ClusterFacts { name: "c", oidc: &state, proxy_enabled: proxy };
        let decision = decide(PolicyMode::Seed, perms, &facts, Asset::AdminKubeconfig);
        if perms.is_empty() {
            prop_assert_eq!(decision, Decision::NotFound);
        } else {
            prop_assert_eq!(decision.is_allowed(), perms.contains(ClusterOp::Delete));
        }
    }

    #[test]
    fn proxy_never_changes_a_decision(perms in permissions(), oidc in any::<bool>(), mode in mode(), asset in asset()) {
        let state = oidc_state(oidc);
        let with = decide(mode, perms, &ClusterFacts { name: "c", oidc: &state, proxy_enabled: true }, asset);
        let without = decide(mode, perms, &ClusterFacts { name: "c", oidc: &state, proxy_enabled: false }, asset);
        prop_assert_eq!(with, without);
    }

    #[test]
    fn adding_a_binding_never_removes_access(
        bindings in prop::collection::vec(binding(), 0..6),
        extra in binding(),
        mode in mode(),
        oidc in any::<bool>(),
        asset in asset(),
        user in 0usize..3,
    ) {
        let before = tenant_with(&bindings, mode);
        let mut more = bindings.clone();
        more.push(extra);
        let after = tenant_with(&more, mode);
        let state = oidc_state(oidc);
        let facts = ClusterFacts { name: "c", oidc: &state, proxy_enabled: false };
        let who = format!("u{user}@x.test");
        let p_before = before.effective_permissions(&before.principal(&who, []), "p");
        let p_after = after.effective_permissions(&after.principal(&who, []), "p");
        let d_before = decide(mode, p_before, &facts, asset);
        let d_after = decide(mode, p_after, &facts, asset);
        if d_before.is_allowed() {
            prop_assert!(d_after.is_allowed());
        }
        if d_before != Decision::NotFound {
            prop_assert_ne!(d_after, Decision::NotFound);
        }
    }
}

fn yaml_fragment() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("oidc-issuer-url: https://idp.example.test".to_owned()),
        Just("oidc-client-id: k8s".to_owned()),
        Just("identityProvider: tenant".to_owned()),
        Just("config: \"clusterConfiguration: {apiServer: {extraArgs: {oidc-issuer-url: x}}}\"".to_owned()),
        Just("kube-apiserver-arg: [oidc-issuer-url=x, \"oidc-client-id={{ .spectro.system.cluster.name }}\"]".to_owned()),
        Just("x: \"{{ .spectro.pack.kubernetes.a.b }}\"".to_owned()),
        Just("oidc-issuer-url: \"https://{{ .spectro.system.reverseproxy.server }}/dex\"".to_owned()),
        Just("identityProvider: palette".to_owned()),
        Just("&a [*a]".to_owned()),
        "[ -~]{0,40}",
    ];
    prop::collection::vec(
        (
            prop::sample::select(vec!["", "  ", "    ", "- "]),
            prop::sample::select(vec![
                "kubeadmconfig:",
                "clientConfig:",
                "apiServer:",
                "extraArgs:",
                "cluster:",
                "pack:",
                "managedControlPlane:",
                "oidcIdentityProvider:",
            ]),
            leaf,
        ),
        0..12,
    )
    .prop_map(|lines| {
        lines
            .into_iter()
            .map(|(indent, key, leaf)| format!("{indent}{key}\n{indent}  {leaf}\n"))
            .collect()
    })
}

proptest! {
    /// What lets the server keep an analysis and drop the values: an outcome that did not read the
    /// service's settings is the same under any other settings.
    #[test]
    fn an_analysis_that_reads_no_service_settings_holds_under_any(values in yaml_fragment(), pack in prop::sample::select(vec!["kubernetes", "edge-k8s", "edge-k3s", "kubernetes-eks"])) {
        let tenant_oidc = kubeconfig_policy::OidcSettings {
            issuer_url: "https://sso.example.test".to_owned(),
            client_id: "palette".to_owned(),
            client_secret: None,
            scopes: Vec::new(),
        };
        let input = |proxy: Option<&'static str>, oidc: Option<&kubeconfig_policy::OidcSettings>| {
            kubeconfig_policy::analyze_tracked(&kubeconfig_policy::PackInput {
                name: pack,
                values: &values,
                cluster_uid: "u",
                cluster_name: "n",
                reverse_proxy_server: proxy,
                tenant_oidc: oidc,
            })
        };
        if let Ok(first) = input(None, None)
            && !first.reads_service_settings
        {
            let other = input(Some("proxy.example.test"), Some(&tenant_oidc)).expect("same values parse");
            prop_assert_eq!(first.state, other.state);
        }
    }

    #[test]
    fn pack_analysis_never_panics(values in yaml_fragment(), pack in prop::sample::select(vec!["kubernetes", "edge-k8s", "edge-k3s", "kubernetes-rke2", "kubernetes-eks", "kubernetes-aks", "kubernetes-gke", "other"])) {
        let result = kubeconfig_policy::analyze(&kubeconfig_policy::PackInput {
            name: pack,
            values: &values,
            cluster_uid: "u",
            cluster_name: "n",
            reverse_proxy_server: None,
            tenant_oidc: None,
        });
        if let Ok(state) = result {
            // Not configured always comes with at least one reason.
            prop_assert!(state.is_configured() || !state.gaps().is_empty());
        }
    }

    #[test]
    fn tenant_parsing_never_panics(text in "[ -~\n]{0,300}") {
        let _ = Tenant::from_yaml(&text);
    }
}

/// A generated tenant: which users are in which team, and the bindings as (subject, role, project).
#[derive(Debug, Clone)]
struct GeneratedTenant {
    /// For each team, the indexes of its members (users are `user-<i>@t.test`).
    teams: Vec<Vec<usize>>,
    bindings: Vec<(GeneratedSubject, kubeconfig_policy::Role, usize)>,
}

#[derive(Debug, Clone)]
enum GeneratedSubject {
    /// A user index and whether the file spells the address in capitals.
    User(usize, bool),
    Team(usize),
}

const USERS: usize = 6;
const TEAMS: usize = 4;
const PROJECTS: usize = 3;

fn generated_tenant() -> impl Strategy<Value = GeneratedTenant> {
    let teams = prop::collection::vec(prop::collection::vec(0..USERS, 0..4), TEAMS);
    let subject = prop_oneof![
        (0..USERS, any::<bool>()).prop_map(|(u, upper)| GeneratedSubject::User(u, upper)),
        (0..TEAMS).prop_map(GeneratedSubject::Team),
    ];
    let binding = (
        subject,
        prop::sample::select(kubeconfig_policy::role::builtin_roles()),
        0..PROJECTS,
    );
    (teams, prop::collection::vec(binding, 0..16))
        .prop_map(|(teams, bindings)| GeneratedTenant { teams, bindings })
}

impl GeneratedTenant {
    fn user(i: usize) -> String {
        format!("user-{i}@t.test")
    }

    fn yaml(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::from("tenant: t\npolicy: seed\nprojects:\n");
        for p in 0..PROJECTS {
            let _ = writeln!(text, "  - uid: p{p}");
        }
        text.push_str("teams:\n");
        for (t, members) in self.teams.iter().enumerate() {
            let _ = writeln!(text, "  - name: team-{t}\n    members:");
            for m in members {
                let _ = writeln!(text, "      - {}", Self::user(*m).to_uppercase());
            }
        }
        text.push_str("bindings: [\n");
        for (subject, role, project) in &self.bindings {
            let subject = match subject {
                GeneratedSubject::User(u, false) => format!("user: {}", Self::user(*u)),
                GeneratedSubject::User(u, true) => {
                    format!("user: {}", Self::user(*u).to_uppercase())
                }
                GeneratedSubject::Team(t) => format!("team: team-{t}"),
            };
            let project = match role.scope() {
                kubeconfig_policy::Scope::Project => format!(", project: p{project}"),
                kubeconfig_policy::Scope::Tenant => String::new(),
            };
            let _ = writeln!(text, "  {{{subject}, role: {:?}{project}}},", role.name());
        }
        text.push_str("]\n");
        text
    }

    /// The rule itself, over the generated lists: the union of the roles of every binding naming the
    /// user (case-insensitively) or one of its teams (from the file or `groups`), tenant-wide or in
    /// `project`.
    fn expected(&self, user: usize, groups: &[usize], project: usize) -> ClusterPermissions {
        let in_team = |t: usize| self.teams[t].contains(&user) || groups.contains(&t);
        self.bindings
            .iter()
            .filter(|(subject, _, _)| match subject {
                GeneratedSubject::User(u, _) => *u == user,
                GeneratedSubject::Team(t) => in_team(*t),
            })
            .filter(|(_, role, p)| match role.scope() {
                kubeconfig_policy::Scope::Project => *p == project,
                kubeconfig_policy::Scope::Tenant => true,
            })
            .fold(ClusterPermissions::NONE, |granted, (_, role, _)| {
                granted.union(role.cluster_permissions())
            })
    }
}

proptest! {
    /// The indexed lookup gives what the rule says for every user, project and `groups` claim
    /// (including a group the file does not declare).
    #[test]
    fn effective_permissions_follow_the_bindings(tenant in generated_tenant(), groups in prop::collection::vec(0..TEAMS, 0..3), caps in any::<bool>()) {
        let parsed = Tenant::from_yaml(&tenant.yaml()).expect("generated tenant parses");
        for user in 0..USERS {
            let address = if caps { GeneratedTenant::user(user).to_uppercase() } else { GeneratedTenant::user(user) };
            let claims = groups.iter().map(|t| format!("team-{t}")).chain(["undeclared".to_owned()]);
            let claims: Vec<String> = claims.collect();
            let principal = parsed.principal(&address, claims.iter().cloned());
            for project in 0..PROJECTS {
                let project = format!("p{project}");
                let expected = tenant.expected(user, &groups, project[1..].parse().expect("a number"));
                prop_assert_eq!(
                    parsed.effective_permissions(&principal, &project),
                    expected,
                    "user {} project {}", user, project
                );
                // The lookup without a principal says the same.
                prop_assert_eq!(
                    parsed.permissions_of(&address, &claims, &project),
                    expected,
                    "permissions_of: user {} project {}", user, project
                );
                // And so does the lookup of the name in canonical form, which does not convert it.
                prop_assert_eq!(
                    parsed.permissions_of_canonical(&kubeconfig_policy::canonical_user(&address), &claims, &project),
                    expected,
                    "permissions_of_canonical: user {} project {}", user, project
                );
            }
        }
    }
}

proptest! {
    /// The borrowed canonical form is the canonical name: e-mails (no `:`) lowercased, other names as
    /// they are, and borrowed exactly when nothing changes.
    #[test]
    fn the_canonical_form_lowercases_only_names_without_a_colon(name in "[A-Za-z0-9:@._-]{0,24}") {
        let form = kubeconfig_policy::canonical_user_form(&name);
        let expected = if name.contains(':') { name.clone() } else { name.to_ascii_lowercase() };
        prop_assert_eq!(form.as_ref(), expected.as_str());
        prop_assert_eq!(matches!(form, std::borrow::Cow::Borrowed(_)), expected == name);
        prop_assert_eq!(kubeconfig_policy::canonical_user(&name), expected);
    }
}
