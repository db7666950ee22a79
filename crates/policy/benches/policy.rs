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
