//! Golden files for every variant, each parsed back by kube-rs's kubeconfig loader.
//!
//! Run with `UPDATE_GOLDEN=1` to rewrite the files after a deliberate format change (and bump
//! `FORMAT_VERSION`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::config::Kubeconfig;
use kubeconfig_render::input::Sensitive;
use kubeconfig_render::{
    AdminCredential, AuthKind, Cluster, ClusterSpec, OidcLogin, PemBundle, ProxyEndpoint, Request,
    ServerKind,
};

/// Test input: PEM text parsed into the form clusters hold.
fn pem(text: &str) -> PemBundle {
    PemBundle::parse(text, "CERTIFICATE").expect("test PEM parses")
}

const CA: &str = include_str!("data/ca.crt");
const PROXY_CA: &str = include_str!("data/proxy-ca.crt");
const ADMIN_CRT: &str = include_str!("data/admin-rsa.crt");
const ADMIN_KEY: &str = include_str!("data/admin-rsa.key");
const UID: &str = "6470a2b1c5e6f1a2b3c4d5e6";

fn oidc(secret: Option<&str>, scopes: &[&str]) -> OidcLogin {
    OidcLogin {
        issuer_url: "https://idp.example.test/realms/platform".to_owned(),
        client_id: "k8s-prod".to_owned(),
        client_secret: secret.map(Sensitive::new),
        extra_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn proxy(ca: Option<&str>, token: Option<&str>) -> ProxyEndpoint {
    ProxyEndpoint {
        server: "proxy.example.test".to_owned(),
        port: 443,
        certificate_authority: ca.map(pem),
        token: token.map(Sensitive::new),
    }
}

fn spec(oidc: Option<OidcLogin>, proxy: Option<ProxyEndpoint>) -> ClusterSpec {
    ClusterSpec {
        name: "prod-east".into(),
        uid: UID.into(),
        api_server: "https://10.10.0.10:6443".into(),
        certificate_authority: pem(CA),
        admin: AdminCredential::ClientCertificate {
            certificate: pem(ADMIN_CRT),
            key: pem(ADMIN_KEY),
        },
        oidc,
        proxy,
    }
}

struct Case {
    file: &'static str,
    spec: ClusterSpec,
    request: Request,
    server: &'static str,
    server_kind: ServerKind,
    ca: &'static str,
    auth: AuthKind,
    file_name: &'static str,
}

fn cases() -> Vec<Case> {
    let proxied = "https://cluster-6470a2b1c5e6f1a2b3c4d5e6.proxy.example.test:443";
    let direct = "https://10.10.0.10:6443";
    let kube = Request::Kubeconfig { frp: true };
    let mut token_spec = spec(None, None);
    token_spec.admin =
        AdminCredential::Token(Sensitive::new("eyJhbGciOiJSUzI1NiJ9.admin-token.sig"));
    vec![
        Case {
            file: "oidc-proxy.yaml",
            spec: spec(
                Some(oidc(Some("example-secret"), &["profile", "email"])),
                Some(proxy(None, None)),
            ),
            request: kube,
            server: proxied,
            server_kind: ServerKind::Proxy,
            ca: CA,
            auth: AuthKind::Oidc,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "oidc-direct.yaml",
            spec: spec(
                Some(oidc(Some("example-secret"), &["profile", "email"])),
                None,
            ),
            request: kube,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::Oidc,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "oidc-proxy-opt-out.yaml",
            spec: spec(Some(oidc(None, &[])), Some(proxy(None, None))),
            request: Request::Kubeconfig { frp: false },
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::Oidc,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "no-oidc-proxy.yaml",
            spec: spec(None, Some(proxy(None, None))),
            request: kube,
            server: proxied,
            server_kind: ServerKind::Proxy,
            ca: CA,
            auth: AuthKind::ClientCertificate,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "no-oidc-direct.yaml",
            spec: spec(None, None),
            request: kube,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::ClientCertificate,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "admin.yaml",
            spec: spec(
                Some(oidc(Some("example-secret"), &["profile"])),
                Some(proxy(None, None)),
            ),
            request: Request::AdminKubeconfig,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::ClientCertificate,
            file_name: "admin.prod-east.kubeconfig",
        },
        Case {
            file: "admin-token.yaml",
            spec: token_spec.clone(),
            request: Request::AdminKubeconfig,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::Token,
            file_name: "admin.prod-east.kubeconfig",
        },
        Case {
            file: "token-direct.yaml",
            spec: token_spec,
            request: kube,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::Token,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "managed-proxy-ca-token.yaml",
            spec: spec(None, Some(proxy(Some(PROXY_CA), Some("proxy-sa-token")))),
            request: kube,
            server: proxied,
            server_kind: ServerKind::Proxy,
            ca: PROXY_CA,
            auth: AuthKind::Token,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "oidc-no-secret-one-scope.yaml",
            spec: spec(Some(oidc(None, &["groups"])), None),
            request: kube,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::Oidc,
            file_name: "prod-east.kubeconfig",
        },
        Case {
            file: "oidc-secret-many-scopes.yaml",
            spec: spec(
                Some(oidc(
                    Some("s3cr3t"),
                    &["openid", "profile", "email", "groups", "offline_access"],
                )),
                None,
            ),
            request: kube,
            server: direct,
            server_kind: ServerKind::Direct,
            ca: CA,
            auth: AuthKind::Oidc,
            file_name: "prod-east.kubeconfig",
        },
    ]
}

fn golden_path(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file)
}

#[test]
fn every_variant_matches_its_golden_file_and_loads_in_kube_rs() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    // Rewriting the expected files makes this test pass whatever is rendered: never in CI.
    assert!(
        !(update && std::env::var_os("CI").is_some()),
        "UPDATE_GOLDEN is set in CI, where it would hide any change to the rendered files"
    );
    for case in cases() {
        let cluster =
            Cluster::new(case.spec.clone()).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let rendered = cluster.render(case.request);
        let path = golden_path(case.file);
        if update {
            std::fs::write(&path, &rendered.yaml).expect("write golden");
        }
        let golden = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        assert_eq!(
            rendered.yaml, golden,
            "{} differs from its golden file",
            case.file
        );
        assert_eq!(rendered.server_kind, case.server_kind, "{}", case.file);
        assert_eq!(rendered.auth_kind, case.auth, "{}", case.file);
        assert_eq!(rendered.file_name, case.file_name, "{}", case.file);
        let secret_free =
            case.auth == AuthKind::Oidc && !rendered.yaml.contains("--oidc-client-secret=");
        assert_eq!(
            rendered.carries_credential, !secret_free,
            "{}: carries_credential",
            case.file
        );

        // Parse back with kube-rs, which nobody here wrote.
        let config = Kubeconfig::from_yaml(&rendered.yaml)
            .unwrap_or_else(|e| panic!("{}: kube-rs refused it: {e}", case.file));
        assert_eq!(config.clusters.len(), 1);
        assert_eq!(config.auth_infos.len(), 1);
        assert_eq!(config.contexts.len(), 1);
        let cluster_entry = config.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(
            cluster_entry.server.as_deref(),
            Some(case.server),
            "{}",
            case.file
        );
        let ca = BASE64
            .decode(
                cluster_entry
                    .certificate_authority_data
                    .as_deref()
                    .expect("ca data"),
            )
            .expect("base64");
        assert_eq!(ca, case.ca.as_bytes(), "{}: CA bytes", case.file);
        let user = config.auth_infos[0].auth_info.as_ref().expect("user");
        match case.auth {
            AuthKind::Oidc => {
                let exec = user.exec.as_ref().expect("exec");
                assert_eq!(exec.command.as_deref(), Some("kubectl"));
                let args = exec.args.as_ref().expect("args");
                assert_eq!(&args[..2], ["oidc-login", "get-token"]);
                assert!(args.contains(
                    &"--oidc-issuer-url=https://idp.example.test/realms/platform".to_owned()
                ));
                assert!(
                    user.client_key_data.is_none() && user.token.is_none(),
                    "{}: no admin credential beside OIDC",
                    case.file
                );
            }
            AuthKind::ClientCertificate => {
                let cert = BASE64
                    .decode(user.client_certificate_data.as_deref().expect("cert"))
                    .expect("base64");
                assert_eq!(cert, ADMIN_CRT.as_bytes());
                assert!(user.client_key_data.is_some() && user.exec.is_none());
            }
            AuthKind::Token => assert!(user.token.is_some() && user.exec.is_none()),
        }
        let context = config.current_context.as_deref().expect("current-context");
        assert_eq!(config.contexts[0].name, context);
    }
}

#[test]
fn rendering_is_deterministic() {
    for case in cases() {
        let a = Cluster::new(case.spec.clone())
            .expect("valid")
            .render(case.request);
        let b = Cluster::new(case.spec.clone())
            .expect("valid")
            .render(case.request);
        assert_eq!(a, b, "{}", case.file);
        assert_eq!(a.etag.len(), 64);
    }
}

#[test]
fn oidc_args_follow_the_domain_format() {
    let cluster = Cluster::new(spec(
        Some(oidc(Some("example-secret"), &["profile", "email"])),
        None,
    ))
    .expect("valid");
    let config = Kubeconfig::from_yaml(&cluster.render(Request::Kubeconfig { frp: true }).yaml)
        .expect("loads");
    let exec = config.auth_infos[0]
        .auth_info
        .as_ref()
        .and_then(|u| u.exec.clone())
        .expect("exec");
    assert_eq!(
        exec.args.expect("args"),
        [
            "oidc-login",
            "get-token",
            "--oidc-issuer-url=https://idp.example.test/realms/platform",
            "--oidc-client-id=k8s-prod",
            "--oidc-client-secret=example-secret",
            "--oidc-extra-scope=profile",
            "--oidc-extra-scope=email",
        ]
    );
    assert_eq!(
        exec.api_version.as_deref(),
        Some("client.authentication.k8s.io/v1beta1")
    );
    assert_eq!(config.auth_infos[0].name, "prod-east-oidc");
    assert_eq!(
        config.current_context.as_deref(),
        Some("prod-east-oidc@prod-east")
    );
}

/// An issued certificate replaces exactly the user entry of the files that carry the admin
/// credential; with no key (the holder keeps theirs) the file carries only the certificate; a cluster
/// whose admin credential is issued per caller never renders a shared one.
#[test]
fn an_issued_certificate_replaces_only_the_admin_user_entry() {
    use kubeconfig_render::IssuedCertificate;
    let issued = IssuedCertificate {
        certificate: pem(include_str!("data/admin-ec.crt")),
        key: Some(pem(include_str!("data/admin-ec.key"))),
    };
    let admin_key_b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        pem(ADMIN_KEY).to_pem(),
    );
    for (oidc_on, proxy_on) in [(false, false), (true, false), (false, true), (true, true)] {
        let cluster = Cluster::new(spec(
            oidc_on.then(|| oidc(None, &[])),
            proxy_on.then(|| proxy(None, Some("proxy-token"))),
        ))
        .unwrap();
        for request in [
            Request::AdminKubeconfig,
            Request::Kubeconfig { frp: true },
            Request::Kubeconfig { frp: false },
        ] {
            let shared = cluster.render(request);
            let minted = cluster.render_with_admin(request, &issued);
            if cluster.carries_admin_credential(request) {
                assert!(shared.yaml.contains(&admin_key_b64), "{request:?}");
                assert!(!minted.yaml.contains(&admin_key_b64), "{request:?}");
                let strip = |yaml: &str| {
                    yaml.lines()
                        .filter(|l| {
                            !l.contains("client-certificate-data") && !l.contains("client-key-data")
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                assert_eq!(strip(&shared.yaml), strip(&minted.yaml), "{request:?}");
                assert!(minted.carries_credential);
            } else {
                assert_eq!(shared.yaml, minted.yaml, "{request:?}");
            }
        }
    }
    let without_key = IssuedCertificate {
        key: None,
        ..issued
    };
    let cluster = Cluster::new(spec(None, None)).unwrap();
    let file = cluster.render_with_admin(Request::AdminKubeconfig, &without_key);
    assert!(file.yaml.contains("client-certificate-data: "));
    assert!(!file.yaml.contains("client-key-data"));
    assert!(!file.carries_credential);

    let mut per_caller = spec(None, None);
    per_caller.admin = AdminCredential::IssuedPerCaller;
    let cluster = Cluster::new(per_caller).unwrap();
    let file = cluster.render(Request::AdminKubeconfig);
    assert!(!file.yaml.contains("client-"), "{}", file.yaml);
    assert!(file.yaml.contains("user: {}"), "{}", file.yaml);
    assert!(!file.carries_credential);
}
