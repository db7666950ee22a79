//! Benchmarks of every rendering variant and of validation.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use kubeconfig_render::input::Sensitive;
use kubeconfig_render::{
    AdminCredential, Cluster, ClusterSpec, OidcLogin, PemBundle, ProxyEndpoint, Request,
};

/// Test input: PEM text parsed into the form clusters hold.
fn pem(text: &str) -> PemBundle {
    PemBundle::parse(text, "CERTIFICATE").expect("test PEM parses")
}

fn spec(oidc: bool, proxy: bool, token: bool) -> ClusterSpec {
    ClusterSpec {
        name: "prod-east".into(),
        uid: "6470a2b1c5e6f1a2b3c4d5e6".into(),
        api_server: "https://10.10.0.10:6443".into(),
        certificate_authority: pem(include_str!("../tests/data/ca.crt")),
        admin: if token {
            AdminCredential::Token(Sensitive::new("eyJhbGciOiJSUzI1NiJ9.admin-token.sig"))
        } else {
            AdminCredential::ClientCertificate {
                certificate: pem(include_str!("../tests/data/admin-rsa.crt")),
                key: pem(include_str!("../tests/data/admin-rsa.key")),
            }
        },
        oidc: oidc.then(|| OidcLogin {
            issuer_url: "https://idp.example.test/realms/platform".to_owned(),
            client_id: "k8s-prod".to_owned(),
            client_secret: Some(Sensitive::new("example-secret")),
            extra_scopes: vec!["profile".to_owned(), "email".to_owned()],
        }),
        proxy: proxy.then(|| ProxyEndpoint {
            server: "proxy.example.test".to_owned(),
            port: 443,
            certificate_authority: None,
            token: None,
        }),
    }
}

fn benches(c: &mut Criterion) {
    let kube = Request::Kubeconfig { frp: true };
    for (name, s, request) in [
        ("render/oidc-proxy", spec(true, true, false), kube),
        ("render/oidc-direct", spec(true, false, false), kube),
        ("render/no-oidc-proxy", spec(false, true, false), kube),
        ("render/no-oidc-direct", spec(false, false, false), kube),
        (
            "render/admin-certificate",
            spec(true, true, false),
            Request::AdminKubeconfig,
        ),
        (
            "render/admin-token",
            spec(false, false, true),
            Request::AdminKubeconfig,
        ),
    ] {
        let cluster = Cluster::new(s).expect("valid");
        c.bench_function(name, |b| {
            b.iter(|| black_box(&cluster).render(black_box(request)))
        });
    }
    // The least any render does: hand out a copy of the bytes and their digest (the ETag). Compare the
    // render times with this, measured in the same run.
    let rendered = Cluster::new(spec(true, true, false))
        .expect("valid")
        .render(Request::AdminKubeconfig);
    c.bench_function("baseline/copy-and-digest-admin-kubeconfig", |b| {
        b.iter(|| {
            let copy = black_box(&rendered.yaml).clone();
            let digest = <sha2::Sha256 as sha2::Digest>::digest(copy.as_bytes());
            (copy, digest)
        })
    });
    let s = spec(true, true, false);
    c.bench_function("validate/rsa-certificate-and-key", |b| {
        b.iter(|| Cluster::new(black_box(s.clone())))
    });
}

criterion_group! {
    name = render;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = benches
}
criterion_main!(render);
