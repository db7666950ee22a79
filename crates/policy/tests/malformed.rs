//! Hostile and malformed input: every case is a typed error with a useful message, fast.

use kubeconfig_policy::{DocumentError, PackError, PackInput, Tenant, TenantError, analyze};

fn analyze_values(values: &str) -> Result<kubeconfig_policy::OidcState, PackError> {
    analyze(&PackInput {
        name: "kubernetes",
        values,
        cluster_uid: "u",
        cluster_name: "n",
        reverse_proxy_server: None,
        tenant_oidc: None,
    })
}

const BILLION_LAUGHS: &str = r#"
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"#;

#[test]
fn broken_yaml_is_a_syntax_error_with_a_line() {
    let err = analyze_values("kubeadmconfig:\n  apiServer: [\n  x: y\n").unwrap_err();
    let PackError::Values(DocumentError::Invalid { line, .. }) = &err else {
        panic!("{err:?}")
    };
    assert!(line.is_some(), "{err}");
    assert!(err.to_string().starts_with("pack values:"), "{err}");
}

#[test]
fn wrong_types_are_reported_as_gaps_not_panics() {
    let state = analyze_values("kubeadmconfig:\n  apiServer:\n    extraArgs:\n      oidc-issuer-url: [a, b]\n  clientConfig: 42\n").expect("parses");
    let summary = state.summary();
    assert!(
        summary
            .contains("`kubeadmconfig.apiServer.extraArgs.oidc-issuer-url` must be a single value"),
        "{summary}"
    );
    assert!(
        summary.contains("`kubeadmconfig.clientConfig` must be a mapping"),
        "{summary}"
    );
}

#[test]
fn billion_laughs_is_refused_in_pack_values_and_tenant_file() {
    let err = analyze_values(BILLION_LAUGHS).unwrap_err();
    assert!(err.to_string().contains("repetition limit"), "{err}");
    let err = Tenant::from_yaml(&format!("tenant: t\n{BILLION_LAUGHS}")).unwrap_err();
    assert!(matches!(err, TenantError::Document(_)), "{err}");
}

#[test]
fn ten_mebibyte_document_is_refused_by_size() {
    let big = format!(
        "kubeadmconfig:\n  blob: \"{}\"\n",
        "x".repeat(10 * 1024 * 1024)
    );
    let err = analyze_values(&big).unwrap_err();
    assert!(
        matches!(
            err,
            PackError::Values(DocumentError::TooLarge {
                limit: 1_048_576,
                ..
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("limit is 1048576 bytes"), "{err}");
    let err = Tenant::from_yaml(&big).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let err = analyze_values(&deep).expect_err("refused");
    assert!(err.to_string().contains("nest"), "{err}");
}
