//! Benchmarks of `decide` and of pack analysis.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kubeconfig_policy::{Asset, ClusterFacts, PackInput, PolicyMode, Tenant, analyze, decide};

const PXK: &str = r#"
pack:
  palette:
    config:
      dashboard:
        identityProvider: none
kubeadmconfig:
  apiServer:
    certSANs:
      - "cluster-{{ .spectro.system.cluster.uid }}.{{ .spectro.system.reverseproxy.server }}"
    extraArgs:
      oidc-issuer-url: "https://idp.example.test/realms/platform"
      oidc-client-id: "k8s-prod"
      oidc-username-claim: "email"
  clientConfig:
    oidc-issuer-url: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer-url }}"
    oidc-client-id: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-client-id }}"
    oidc-client-secret: "example-secret"
    oidc-extra-scope: profile,email
"#;

const PXKE: &str = r#"
cluster:
  config: |
    clusterConfiguration:
      apiServer:
        extraArgs:
          oidc-issuer-url: "https://idp.example.test/realms/edge"
          oidc-client-id: "edge"
clientConfig:
  oidc-issuer-url: "https://idp.example.test/realms/edge"
  oidc-client-id: "edge"
"#;

fn input<'a>(name: &'a str, values: &'a str) -> PackInput<'a> {
    PackInput {
        name,
        values,
        cluster_uid: "6470a2b1c5e6f1a2b3c4d5e6",
        cluster_name: "prod-east",
        reverse_proxy_server: Some("proxy.example.test"),
        tenant_oidc: None,
    }
}

/// Projects of the large tenant (with 10 members per team, about 0.7 MiB of the 1 MiB a tenant file
/// may have).
const LARGE_PROJECTS: usize = 1_500;

/// A tenant of `projects` projects, each with a team of `members` members bound to Cluster Viewer
/// and its first member bound to Cluster Admin there, plus a tenant admin: 2 × `projects` + 1
/// bindings, `projects` teams, `projects` × `members` users.
fn large_tenant(projects: usize, members: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::from("tenant: large\npolicy: seed\nprojects:\n");
    for p in 0..projects {
        let _ = writeln!(text, "  - uid: p{p}");
    }
    text.push_str("teams:\n");
    for p in 0..projects {
        let _ = writeln!(text, "  - name: team-{p}\n    members:");
        for m in 0..members {
            let _ = writeln!(text, "      - member-{p}-{m}@large.test");
        }
    }
    text.push_str("bindings:\n  - user: admin@large.test\n    role: Tenant Admin\n");
    for p in 0..projects {
        let _ = writeln!(
            text,
            "  - team: team-{p}\n    role: Cluster Viewer\n    project: p{p}\n  - user: member-{p}-0@large.test\n    role: Cluster Admin\n    project: p{p}"
        );
    }
    text
}

fn benches(c: &mut Criterion) {
    let tenant = Tenant::from_yaml(include_str!("../../../tests/fixtures/matrix/tenant.yaml"))
        .expect("tenant");
    let oidc = analyze(&input("kubernetes", PXK)).expect("pack");
    let no_oidc = analyze(&input("kubernetes", "kubeadmconfig: {}")).expect("pack");
    let viewer = tenant.effective_permissions(
        &tenant.principal("cluster-viewer@matrix.test", []),
        "platform",
    );
    let admin = tenant.effective_permissions(
        &tenant.principal("cluster-admin@matrix.test", []),
        "platform",
    );

    c.bench_function("decide/allow", |b| {
        let facts = ClusterFacts {
            name: "prod-east",
            oidc: &oidc,
            proxy_enabled: true,
        };
        b.iter(|| {
            decide(
                PolicyMode::Seed,
                black_box(admin),
                black_box(&facts),
                Asset::AdminKubeconfig,
            )
        })
    });
    c.bench_function("decide/deny-oidc", |b| {
        let facts = ClusterFacts {
            name: "prod-east",
            oidc: &no_oidc,
            proxy_enabled: true,
        };
        b.iter(|| {
            decide(
                PolicyMode::Seed,
                black_box(viewer),
                black_box(&facts),
                Asset::Kubeconfig,
            )
        })
    });
    c.bench_function("effective_permissions", |b| {
        let principal = tenant.principal("cluster-viewer@matrix.test", []);
        b.iter(|| tenant.effective_permissions(black_box(&principal), "platform"))
    });
    // What a call pays to know its caller's permissions (principal, then the permissions on one
    // project), on the access-matrix tenant (2 projects, 9 users, 9 bindings) and on a large one; and
    // what a project-by-project listing pays on the large one. The large tenant's figures should
    // stay near the small one's: a call should cost its caller's grants, not the tenant's size.
    let large = Tenant::from_yaml(&large_tenant(LARGE_PROJECTS, 10)).expect("large tenant");
    let mut caller_access = c.benchmark_group("caller_access");
    for (name, tenant, user, project) in [
        (
            "matrix-tenant",
            &tenant,
            "cluster-viewer@matrix.test",
            "platform",
        ),
        ("large-tenant", &large, "member-7-3@large.test", "p7"),
    ] {
        caller_access.bench_function(name, |b| {
            b.iter(|| {
                let principal = tenant.principal(black_box(user), []);
                tenant.effective_permissions(&principal, black_box(project))
            })
        });
    }
    caller_access.bench_function("large-tenant-every-project", |b| {
        let projects: Vec<&str> = large.project_uids().collect();
        b.iter(|| {
            let principal = large.principal(black_box("member-7-3@large.test"), []);
            projects
                .iter()
                .filter(|p| !large.effective_permissions(&principal, p).is_empty())
                .count()
        })
    });
    caller_access.finish();
    c.bench_function("analyze/pxk", |b| {
        b.iter(|| analyze(black_box(&input("kubernetes", PXK))))
    });
    c.bench_function("analyze/pxk-e", |b| {
        b.iter(|| analyze(black_box(&input("edge-k8s", PXKE))))
    });
    let laughs = include_str!("billion-laughs.yaml");
    c.bench_function("analyze/billion-laughs-refused", |b| {
        b.iter(|| analyze(black_box(&input("kubernetes", laughs))))
    });
    let deep = format!("{}{}", "[".repeat(500_000), "]".repeat(500_000));
    c.bench_function("analyze/1MiB-nesting-refused", |b| {
        b.iter(|| analyze(black_box(&input("kubernetes", &deep))))
    });
}

criterion_group! {
    name = policy;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = benches
}
criterion_main!(policy);
