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
