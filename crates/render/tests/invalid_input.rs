//! Bad input is a typed error naming the field; key material never appears in messages.

use kubeconfig_render::input::Sensitive;
use kubeconfig_render::{
    AdminCredential, Cluster, ClusterSpec, CredentialError, PemBundle, RenderError,
};

/// Test input: PEM text parsed into the form clusters hold.
fn pem(text: &str) -> PemBundle {
    PemBundle::parse(text, "CERTIFICATE").expect("test PEM parses")
}

const CA: &str = include_str!("data/ca.crt");
const RSA_CRT: &str = include_str!("data/admin-rsa.crt");
const RSA_KEY: &str = include_str!("data/admin-rsa.key");
const EC_CRT: &str = include_str!("data/admin-ec.crt");
const EC_KEY: &str = include_str!("data/admin-ec.key");
const EC_PKCS8_KEY: &str = include_str!("data/admin-ec.pkcs8.key");
const P384_CRT: &str = include_str!("data/admin-p384.crt");
const P384_KEY: &str = include_str!("data/admin-p384.key");

fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "prod-east".into(),
        uid: "6470a2b1c5e6f1a2b3c4d5e6".into(),
        api_server: "https://10.10.0.10:6443".into(),
        certificate_authority: pem(CA),
        admin: AdminCredential::ClientCertificate {
            certificate: pem(RSA_CRT),
            key: pem(RSA_KEY),
        },
        oidc: None,
        proxy: None,
    }
}

fn with_admin(certificate: &str, key: &str) -> ClusterSpec {
    ClusterSpec {
        admin: AdminCredential::ClientCertificate {
            certificate: pem(certificate),
            key: pem(key),
        },
        ..spec()
    }
}

#[test]
fn every_supported_key_format_matches_its_certificate() {
    for (crt, key) in [
        (RSA_CRT, RSA_KEY),
        (EC_CRT, EC_KEY),
        (EC_CRT, EC_PKCS8_KEY),
        (P384_CRT, P384_KEY),
    ] {
        Cluster::new(with_admin(crt, key)).expect("matching pair is accepted");
    }
}

#[test]
fn certificate_that_does_not_match_the_key() {
    let err = Cluster::new(with_admin(RSA_CRT, EC_KEY)).unwrap_err();
    assert_eq!(err, RenderError::KeyMismatch);
    let err = Cluster::new(with_admin(EC_CRT, P384_KEY)).unwrap_err();
    assert_eq!(err, RenderError::KeyMismatch);
    assert_eq!(err.field(), "admin.clientCertificate");
    // Same curve, another key: the fast (ring) check and the portable one agree.
    let other = include_str!("data/other-ec.key");
    assert_eq!(
        Cluster::new(with_admin(EC_CRT, other)).unwrap_err(),
        RenderError::KeyMismatch
    );
}

#[test]
fn non_pem_ca() {
    let err = PemBundle::parse("not a certificate", "CERTIFICATE").unwrap_err();
    assert!(matches!(&err, CredentialError::NotPem { .. }), "{err:?}");
    // Valid PEM around DER that is no certificate: refused when the cluster is validated.
    let garbled = CA.replace("MII", "MIX");
    match PemBundle::parse(&garbled, "CERTIFICATE") {
        Err(err) => assert!(matches!(err, CredentialError::BadPem { .. }), "{err:?}"),
        Ok(bundle) => {
            let err = Cluster::new(ClusterSpec {
                certificate_authority: bundle,
                ..spec()
            })
            .unwrap_err();
            assert_eq!(err.field(), "certificateAuthority", "{err}");
        }
    }
}

#[test]
fn key_where_a_certificate_belongs() {
    let err = Cluster::new(ClusterSpec {
        certificate_authority: pem(RSA_KEY),
        ..spec()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificateAuthority: expected a PEM `CERTIFICATE` block, found `RSA PRIVATE KEY`"
    );
    let err = Cluster::new(with_admin(EC_KEY, EC_KEY)).unwrap_err();
    assert_eq!(err.field(), "admin.clientCertificate");
    assert!(
        !err.to_string()
            .contains(EC_KEY.lines().nth(1).expect("line")),
        "no key material in messages"
    );
}

#[test]
fn certificate_where_a_key_belongs() {
    let err = Cluster::new(with_admin(RSA_CRT, RSA_CRT)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "admin.clientKey: expected a PEM `PRIVATE KEY` block, found `CERTIFICATE`"
    );
}

#[test]
fn http_server_is_refused() {
    let err = Cluster::new(ClusterSpec {
        api_server: "http://10.10.0.10:6443".into(),
        ..spec()
    })
    .unwrap_err();
    assert_eq!(err.field(), "apiServer");
    assert!(err.to_string().contains("https://"), "{err}");
}

#[test]
fn unsafe_names_are_refused() {
    for name in ["", "a/b", "a:b", "a\nb", ".hidden", "-x", "a b"] {
        let err = Cluster::new(ClusterSpec {
            name: name.into(),
            ..spec()
        })
        .unwrap_err();
        assert_eq!(err.field(), "name", "{name:?}");
    }
}

#[test]
fn bad_token_and_uid() {
    let err = Cluster::new(ClusterSpec {
        admin: AdminCredential::Token(Sensitive::new("a b")),
        ..spec()
    })
    .unwrap_err();
    assert_eq!(err.field(), "admin.token");
    let err = Cluster::new(ClusterSpec {
        uid: "UPPER".into(),
        ..spec()
    })
    .unwrap_err();
    assert_eq!(err.field(), "uid");
}

#[test]
fn debug_output_carries_no_secrets() {
    let spec = spec();
    assert!(!format!("{spec:?}").contains("PRIVATE KEY"));
    let cluster = Cluster::new(spec).expect("valid");
    let rendered = cluster.render(kubeconfig_render::Request::AdminKubeconfig);
    let debug = format!("{cluster:?} {rendered:?}");
    assert!(
        !debug.contains("client-key-data") && !debug.contains("LS0t"),
        "{debug}"
    );
}
