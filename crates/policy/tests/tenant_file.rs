//! Tenant file validation: every inconsistency is an error naming its field.

use kubeconfig_policy::{PolicyMode, Tenant, TenantError};

fn errors(yaml: &str) -> String {
    Tenant::from_yaml(yaml)
        .expect_err("must be refused")
        .to_string()
}

const BASE: &str = "tenant: acme\nprojects:\n  - uid: platform\n";

#[test]
fn the_domain_example_loads() {
    let yaml = r#"
tenant: acme
policy: seed
reverseProxy:
  server: proxy.example.test
  port: 443
oidc:
  issuerUrl: https://sso.example.test/realms/acme
  clientId: palette-kubectl
  clientSecret: example-secret
  scopes: [profile, email]
projects:
  - uid: platform
    name: Platform
customRoles:
  - name: Cluster Deleter
    scope: project
    permissions: [cluster.get, cluster.list, cluster.delete]
teams:
  - name: sre
    members: [dana@example.test]
users:
  - email: alice@example.test
    apiKeys:
      - sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
bindings:
  - user: alice@example.test
    role: Cluster Admin
    project: platform
  - team: sre
    role: cluster deleter
    project: platform
"#;
    let tenant = Tenant::from_yaml(yaml).expect("loads");
    assert_eq!(tenant.policy(), PolicyMode::Seed);
    assert_eq!(tenant.reverse_proxy().expect("proxy").port, 443);
    assert!(
        !format!("{tenant:?}").contains("example-secret"),
        "Debug must not print the client secret"
    );
}

#[test]
fn unknown_role_in_a_binding() {
    let e = errors(&format!(
        "{BASE}bindings:\n  - user: a@x.test\n    role: Cluster Boss\n    project: platform\n"
    ));
    // The line of the field, found in the text after parsing.
    assert_eq!(e, "line 6: bindings[0].role: unknown role \"Cluster Boss\"");
}

#[test]
fn unknown_permission_carries_path_and_line() {
    let err = Tenant::from_yaml(&format!("{BASE}customRoles:\n  - name: R\n    scope: project\n    permissions: [cluster.get, cluster.destroy]\n")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("customRoles[0].permissions"), "{text}");
    assert!(text.contains("cluster.destroy"), "{text}");
    assert_eq!(err.line(), Some(7), "{text}");
}

#[test]
fn project_role_without_project_and_tenant_role_with_project() {
    let e = errors(&format!(
        "{BASE}bindings:\n  - user: a@x.test\n    role: Cluster Viewer\n  - user: a@x.test\n    role: Tenant Admin\n    project: platform\n"
    ));
    assert!(
        e.contains(
            "bindings[0].project: \"Cluster Viewer\" is a project role and needs a `project`"
        ),
        "{e}"
    );
    assert!(e.contains("bindings[1].project: \"Tenant Admin\" is a tenant role and cannot be bound to a project"), "{e}");
}

#[test]
fn duplicate_user_and_duplicate_key() {
    let key = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    let e = errors(&format!(
        "{BASE}users:\n  - email: A@x.test\n    apiKeys: [{key}]\n  - email: a@x.test\n  - email: b@x.test\n    apiKeys: [{key}]\n"
    ));
    assert!(
        e.contains("users[1].email: duplicate user \"a@x.test\""),
        "{e}"
    );
    assert!(
        e.contains("users[2].apiKeys[0]: the same API key hash is already listed for \"a@x.test\""),
        "{e}"
    );
}

#[test]
fn malformed_api_key_hash() {
    let err = Tenant::from_yaml(&format!(
        "{BASE}users:\n  - email: a@x.test\n    apiKeys: [sha256:abc]\n"
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("users[0].apiKeys") && text.contains("64 hex characters"),
        "{text}"
    );
    assert_eq!(err.line(), Some(6));
    let text = errors(&format!(
        "{BASE}users:\n  - email: a@x.test\n    apiKeys: [md5:abc]\n"
    ));
    assert!(text.contains("sha256:"), "{text}");
}

#[test]
fn binding_to_unknown_project_and_team() {
    let e = errors(&format!(
        "{BASE}bindings:\n  - user: a@x.test\n    role: Cluster Viewer\n    project: nowhere\n  - team: ghosts\n    role: Tenant Viewer\n"
    ));
    assert!(
        e.contains("bindings[0].project: unknown project \"nowhere\""),
        "{e}"
    );
    assert!(
        e.contains("bindings[1].team: unknown team \"ghosts\""),
        "{e}"
    );
}

#[test]
fn wrong_types_unknown_fields_and_bad_settings() {
    let err = Tenant::from_yaml("tenant: t\nbindngs: []\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `bindngs`"), "{err}");
    assert!(matches!(err, TenantError::Document(_)));
    let err = Tenant::from_yaml("tenant: t\npolicy: strict\n").unwrap_err();
    assert!(
        err.to_string().contains("policy") && err.line() == Some(2),
        "{err}"
    );
    let err = Tenant::from_yaml("tenant: t\nprojects: 5\n").unwrap_err();
    assert!(err.to_string().contains("projects"), "{err}");
    let e = errors(
        "tenant: t\nreverseProxy:\n  server: https://proxy.example.test\noidc:\n  issuerUrl: http://idp\n  clientId: ''\n",
    );
    assert!(
        e.contains("reverseProxy.server")
            && e.contains("oidc.issuerUrl")
            && e.contains("oidc.clientId"),
        "{e}"
    );
}

#[test]
fn custom_role_may_not_shadow_a_builtin() {
    let e = errors(
        "tenant: t\ncustomRoles:\n  - name: cluster admin\n    scope: project\n    permissions: [cluster.get]\n",
    );
    assert!(
        e.contains("customRoles[0].name") && e.contains("built-in role"),
        "{e}"
    );
}

#[test]
fn a_credential_lifetime_beyond_a_year_is_refused_naming_the_field() {
    for huge in ["18446744073709551615", "31536001"] {
        let e = errors(&format!(
            "{BASE}credentials:\n  maxLifetimeSeconds: {huge}\n"
        ));
        assert!(
            e.contains("credentials.maxLifetimeSeconds") && e.contains("at most 31536000"),
            "{e}"
        );
    }
    let e = errors(&format!(
        "{BASE}credentials:\n  maxLifetimeSeconds: 31536000\n  defaultLifetimeSeconds: 18446744073709551615\n"
    ));
    assert!(e.contains("credentials.defaultLifetimeSeconds"), "{e}");
    let tenant = Tenant::from_yaml(&format!(
        "{BASE}credentials:\n  maxLifetimeSeconds: 31536000\n"
    ))
    .expect("a year is accepted");
    assert_eq!(tenant.credentials().max_lifetime_seconds, 31_536_000);
}

#[test]
fn a_user_may_be_named_by_a_username_instead_of_an_email() {
    let yaml = format!(
        "{BASE}users:\n  - username: system:serviceaccount:payments:deployer\n  - username: spiffe://acme.test/ns/payments/sa/Deployer\n  - email: Ada@X.test\nbindings:\n  - user: system:serviceaccount:payments:deployer\n    role: Cluster Admin\n    project: platform\n  - user: spiffe://acme.test/ns/payments/sa/Deployer\n    role: Cluster Viewer\n    project: platform\n"
    );
    let tenant = Tenant::from_yaml(&yaml).expect("loads");
    let names: Vec<&str> = tenant.users().map(|u| u.name.as_str()).collect();
    assert!(names.contains(&"ada@x.test"), "{names:?}");
    assert!(
        names.contains(&"spiffe://acme.test/ns/payments/sa/Deployer"),
        "a name with `:` keeps its case: {names:?}"
    );
    let allowed = |user: &str| {
        !tenant
            .effective_permissions(&tenant.principal(user, []), "platform")
            .is_empty()
    };
    assert!(allowed("system:serviceaccount:payments:deployer"));
    assert!(allowed("spiffe://acme.test/ns/payments/sa/Deployer"));
    assert!(
        !allowed("spiffe://acme.test/ns/payments/sa/deployer"),
        "a SPIFFE path is compared exactly"
    );
    assert!(!allowed("system:serviceaccount:payments:other"));
}

#[test]
fn a_username_must_be_printable_and_a_user_has_one_name() {
    let e = errors(&format!(
        "{BASE}users:\n  - username: \"evil\\nuser\"\n  - username: \"a b\"\n  - email: a@x.test\n    username: a\n  - apiKeys: []\n  - email: \"system:x@y\"\n"
    ));
    for expected in [
        "users[0].username: \"evil\\nuser\" must be printable ASCII without spaces or control characters",
        "users[1].username: \"a b\" must be printable ASCII",
        "users[2]: has both `email` and `username`",
        "users[3]: needs an `email` or a `username`",
        "users[4].email: \"system:x@y\" is not an e-mail address",
    ] {
        assert!(e.contains(expected), "missing {expected:?} in {e}");
    }
}
