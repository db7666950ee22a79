//! The seed page's access tables, in every policy mode, over every role of interest.
//!
//! Expected outcomes are literal, in `tests/fixtures/matrix/expected.txt` at the workspace root; the
//! server's end-to-end suite checks the same file through gRPC and REST.

use kubeconfig_policy::{
    Asset, ClusterFacts, Decision, OidcState, PackInput, PolicyMode, Tenant, analyze, decide,
};

const TENANT: &str = include_str!("../../../tests/fixtures/matrix/tenant.yaml");
const EXPECTED: &str = include_str!("../../../tests/fixtures/matrix/expected.txt");

const OIDC_VALUES: &str = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: "https://idp.example.test/realms/platform"
      oidc-client-id: "k8s"
  clientConfig:
    oidc-issuer-url: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer-url }}"
    oidc-client-id: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-client-id }}"
"#;

const ISSUER_ONLY_VALUES: &str = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: "https://idp.example.test/realms/platform"
      oidc-client-id: "k8s"
"#;

fn oidc_state(values: &str) -> OidcState {
    analyze(&PackInput {
        name: "kubernetes",
        values,
        cluster_uid: "6470a2b1c5e6f1a2b3c4d5e6",
        cluster_name: "prod-east",
        reverse_proxy_server: Some("proxy.matrix.test"),
        tenant_oidc: None,
    })
    .expect("pack values parse")
}

fn letter(decision: &Decision) -> char {
    match decision {
        Decision::Allow => 'Y',
        Decision::NotFound => '-',
        Decision::Deny(denial) => match denial.code.as_str() {
            "OIDC_NOT_CONFIGURED" => 'O',
            "CLUSTER_DELETE_REQUIRED" => 'D',
            "ADMIN_KUBECONFIG_DOWNLOAD_REQUIRED" => 'K',
            "CLUSTER_GET_REQUIRED" => 'G',
            other => panic!("unexpected deny code {other}"),
        },
    }
}

/// The expected table: (mode, user slug, kubeconfig letters, admin letters).
pub fn expected_rows() -> Vec<(PolicyMode, String, String, String)> {
    EXPECTED
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            assert_eq!(cols.len(), 4, "bad row {l:?}");
            (
                cols[0].parse().expect("mode"),
                cols[1].to_owned(),
                cols[2].to_owned(),
                cols[3].to_owned(),
            )
        })
        .collect()
}

#[test]
fn every_mode_reproduces_its_table() {
    let with_oidc = oidc_state(OIDC_VALUES);
    let without_oidc = oidc_state(ISSUER_ONLY_VALUES);
    assert!(with_oidc.is_configured());
    assert!(!without_oidc.is_configured());
    // OIDC+proxy, no OIDC+proxy, OIDC direct, no OIDC direct.
    let kinds = [
        (&with_oidc, true),
        (&without_oidc, true),
        (&with_oidc, false),
        (&without_oidc, false),
    ];

    let rows = expected_rows();
    assert_eq!(rows.len(), 27, "3 modes x 9 roles");
    for (mode, user, kube_expected, admin_expected) in rows {
        let tenant = Tenant::from_yaml(&TENANT.replace("policy: seed", &format!("policy: {mode}")))
            .expect("tenant");
        assert_eq!(tenant.policy(), mode);
        let principal = tenant.principal(&format!("{user}@matrix.test"), []);
        let permissions = tenant.effective_permissions(&principal, "platform");
        for (asset, expected) in [
            (Asset::Kubeconfig, &kube_expected),
            (Asset::AdminKubeconfig, &admin_expected),
        ] {
            let got: String = kinds
                .iter()
                .map(|(oidc, proxy_enabled)| {
                    let facts = ClusterFacts {
                        name: "prod-east",
                        oidc,
                        proxy_enabled: *proxy_enabled,
                    };
                    letter(&decide(tenant.policy(), permissions, &facts, asset))
                })
                .collect();
            assert_eq!(&got, expected, "mode {mode}, user {user}, {asset}");
        }
    }
}

#[test]
fn denial_messages_name_what_is_missing() {
    let tenant = Tenant::from_yaml(TENANT).expect("tenant");
    let viewer = tenant.effective_permissions(
        &tenant.principal("cluster-viewer@matrix.test", []),
        "platform",
    );
    let without_oidc = oidc_state(ISSUER_ONLY_VALUES);
    let facts = ClusterFacts {
        name: "prod-east",
        oidc: &without_oidc,
        proxy_enabled: true,
    };
    let Decision::Deny(kube) = decide(PolicyMode::Seed, viewer, &facts, Asset::Kubeconfig) else {
        panic!("viewer must be denied without OIDC");
    };
    assert!(kube.message.contains("prod-east"), "{}", kube.message);
    assert!(
        kube.message
            .contains("has `oidc-issuer-url` but no `clientConfig` block"),
        "{}",
        kube.message
    );
    let Decision::Deny(admin) = decide(PolicyMode::Seed, viewer, &facts, Asset::AdminKubeconfig)
    else {
        panic!("viewer must be denied the admin kubeconfig");
    };
    assert!(
        admin
            .message
            .contains("needs `cluster.delete` (Cluster Admin"),
        "{}",
        admin.message
    );
}

#[test]
fn team_and_jwt_group_bindings_count() {
    let yaml = r#"
tenant: t
projects: [{uid: p}]
teams:
  - name: sre
    members: [Dana@Example.test]
  - name: from-idp
bindings:
  - team: sre
    role: cluster viewer
    project: p
  - team: from-idp
    role: Cluster Admin
    project: p
"#;
    let tenant = Tenant::from_yaml(yaml).expect("tenant");
    let dana = tenant.principal("dana@example.test", []);
    assert_eq!(
        tenant.effective_permissions(&dana, "p").to_string(),
        "cluster.get, cluster.list"
    );
    assert!(tenant.effective_permissions(&dana, "elsewhere").is_empty());
    let jwt_user = tenant.principal("eve@example.test", ["from-idp".to_owned()]);
    assert!(
        tenant
            .effective_permissions(&jwt_user, "p")
            .contains(kubeconfig_policy::ClusterOp::Delete)
    );
}

/// A caller who sees a cluster (`cluster.list`) but may not read it (`cluster.get`) is told exactly
/// that, in every mode, when OIDC would otherwise let them have the kubeconfig.
#[test]
fn visible_without_get_is_cluster_get_required() {
    use kubeconfig_policy::{ClusterOp, ClusterPermissions, DenyCode};
    let oidc = oidc_state(OIDC_VALUES);
    let facts = ClusterFacts {
        name: "prod-east",
        oidc: &oidc,
        proxy_enabled: false,
    };
    let list_only = ClusterPermissions::default().with(ClusterOp::List);
    for mode in PolicyMode::ALL {
        match decide(mode, list_only, &facts, Asset::Kubeconfig) {
            Decision::Deny(denial) => {
                assert_eq!(denial.code, DenyCode::ClusterGetRequired, "{mode}");
                assert!(denial.message.contains("cluster.get"), "{}", denial.message);
            }
            other => panic!("{mode}: {other:?}"),
        }
    }
}
