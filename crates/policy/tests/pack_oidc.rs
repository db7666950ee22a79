//! OIDC detection with realistic pack values for every distribution of docs/access.md.

use kubeconfig_policy::{
    OidcGap, OidcSettings, OidcSource, OidcState, PackInput, Secret, analyze, analyze_tracked,
};

const UID: &str = "6470a2b1c5e6f1a2b3c4d5e6";

fn analyze_pack(name: &str, values: &str) -> OidcState {
    analyze_with(name, values, None)
}

fn analyze_with(name: &str, values: &str, tenant_oidc: Option<&OidcSettings>) -> OidcState {
    analyze(&PackInput {
        name,
        values,
        cluster_uid: UID,
        cluster_name: "prod-east",
        reverse_proxy_server: Some("proxy.example.test"),
        tenant_oidc,
    })
    .expect("values parse")
}

fn gap_codes(state: &OidcState) -> Vec<&'static str> {
    state.gaps().iter().map(OidcGap::code).collect()
}

// ---------------------------------------------------------------- PXK

const PXK_CONFIGURED: &str = r#"
pack:
  podCIDR: "192.168.0.0/16"
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
      oidc-groups-claim: "groups"
  clientConfig:
    oidc-issuer-url: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer-url }}"
    oidc-client-id: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-client-id }}"
    oidc-client-secret: "example-secret"
    oidc-extra-scope: profile,email
"#;

#[test]
fn pxk_domain_example_is_configured_with_resolved_macros() {
    let state = analyze_pack("kubernetes", PXK_CONFIGURED);
    let OidcState::Configured { login, source } = &state else {
        panic!("{state:?}")
    };
    assert_eq!(*source, OidcSource::PackValues);
    assert_eq!(login.issuer_url, "https://idp.example.test/realms/platform");
    assert_eq!(login.client_id, "k8s-prod");
    assert_eq!(login.client_secret, Some(Secret::new("example-secret")));
    assert_eq!(login.extra_scopes, ["profile", "email"]);
}

#[test]
fn pxk_issuer_only_names_the_missing_client_config() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: "https://idp.example.test/realms/platform"
      oidc-client-id: "k8s-prod"
"#;
    let state = analyze_pack("kubernetes", values);
    assert_eq!(gap_codes(&state), ["CLIENT_CONFIG_MISSING"]);
    assert_eq!(
        state.summary(),
        "the Kubernetes pack has `oidc-issuer-url` but no `clientConfig` block"
    );
}

#[test]
fn pxk_client_config_only_names_the_missing_issuer() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      audit-log-path: /var/log/apiserver/audit.log
  clientConfig:
    oidc-issuer-url: "https://idp.example.test/realms/platform"
    oidc-client-id: "k8s-prod"
"#;
    let state = analyze_pack("kubernetes", values);
    assert_eq!(
        gap_codes(&state),
        ["API_SERVER_SETTING_MISSING", "API_SERVER_SETTING_MISSING"]
    );
    assert!(state.summary().contains("has a `clientConfig` block but no `oidc-issuer-url` at `kubeadmconfig.apiServer.extraArgs`"), "{}", state.summary());
}

#[test]
fn pxk_commented_out_block_is_absent() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: "https://idp.example.test/realms/platform"
      oidc-client-id: "k8s-prod"
  #clientConfig:
  #  oidc-issuer-url: "https://idp.example.test/realms/platform"
  #  oidc-client-id: "k8s-prod"
"#;
    assert_eq!(
        gap_codes(&analyze_pack("kubernetes", values)),
        ["CLIENT_CONFIG_MISSING"]
    );
}

#[test]
fn pxk_client_config_at_the_root_is_accepted() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: https://idp.example.test
      oidc-client-id: k8s
clientConfig:
  oidc-issuer-url: https://idp.example.test
  oidc-client-id: k8s
  oidc-extra-scope: [groups, email]
"#;
    let state = analyze_pack("kubernetes", values);
    assert_eq!(
        state.login().expect("configured").extra_scopes,
        ["groups", "email"]
    );
    assert!(state.login().expect("configured").client_secret.is_none());
}

#[test]
fn empty_values_count_as_missing() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: ""
      oidc-client-id: k8s
  clientConfig:
    oidc-issuer-url: https://idp.example.test
    oidc-client-id: "  "
"#;
    let state = analyze_pack("kubernetes", values);
    assert_eq!(
        gap_codes(&state),
        [
            "CLIENT_CONFIG_SETTING_MISSING",
            "API_SERVER_SETTING_MISSING"
        ]
    );
}

#[test]
fn a_macro_that_does_not_resolve_is_reported() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: "https://idp.example.test"
      oidc-client-id: "k8s"
  clientConfig:
    oidc-issuer-url: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer }}"
    oidc-client-id: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-client-id }}"
"#;
    let state = analyze_pack("kubernetes", values);
    assert_eq!(gap_codes(&state), ["UNRESOLVED_MACRO"]);
    assert!(state.has_unresolved_macro());
    assert!(
        state
            .summary()
            .contains("kubeadmconfig.clientConfig.oidc-issuer-url"),
        "{}",
        state.summary()
    );
    assert!(
        state
            .summary()
            .contains("oidc-issuer` is not in the pack values"),
        "{}",
        state.summary()
    );
}

#[test]
fn system_macros_resolve() {
    let values = r#"
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: "https://{{ .spectro.system.reverseproxy.server }}/oidc/{{ .spectro.system.cluster.uid }}"
      oidc-client-id: "{{ .spectro.system.cluster.name }}"
  clientConfig:
    oidc-issuer-url: "{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer-url }}"
    oidc-client-id: "{{.spectro.system.cluster.name}}"
"#;
    let login = analyze_pack("kubernetes", values)
        .login()
        .cloned()
        .expect("configured");
    assert_eq!(
        login.issuer_url,
        format!("https://proxy.example.test/oidc/{UID}")
    );
    assert_eq!(login.client_id, "prod-east");
}

#[test]
fn noauth_turns_oidc_off_whatever_the_yaml_says() {
    let values = PXK_CONFIGURED.replace("identityProvider: none", "identityProvider: noauth");
    let state = analyze_pack("kubernetes", &values);
    assert_eq!(gap_codes(&state), ["IDENTITY_PROVIDER_NOAUTH"]);
    assert!(
        state
            .summary()
            .contains("pack.palette.config.dashboard.identityProvider")
    );
}

fn tenant_oidc() -> OidcSettings {
    OidcSettings {
        issuer_url: "https://sso.example.test/realms/acme".to_owned(),
        client_id: "palette-kubectl".to_owned(),
        client_secret: None,
        scopes: vec!["profile".to_owned()],
    }
}

#[test]
fn tenant_provider_uses_the_tenant_settings_when_they_exist() {
    let values = "pack:\n  palette:\n    config:\n      oidc:\n        identityProvider: tenant\n";
    let settings = tenant_oidc();
    let state = analyze_with("kubernetes", values, Some(&settings));
    let OidcState::Configured { login, source } = &state else {
        panic!("{state:?}")
    };
    assert_eq!(*source, OidcSource::TenantSettings);
    assert_eq!(login.issuer_url, "https://sso.example.test/realms/acme");
    assert_eq!(login.extra_scopes, ["profile"]);

    let without = analyze_with("kubernetes", values, None);
    assert_eq!(gap_codes(&without), ["TENANT_OIDC_MISSING"]);
    let palette = analyze_with("kubernetes", &values.replace("tenant", "palette"), None);
    assert_eq!(gap_codes(&palette), ["TENANT_OIDC_MISSING"]);
}

#[test]
fn unknown_identity_provider_is_reported() {
    let values = "pack:\n  palette:\n    config:\n      oidc:\n        identityProvider: okta\n";
    assert_eq!(
        gap_codes(&analyze_pack("kubernetes", values)),
        ["UNKNOWN_IDENTITY_PROVIDER"]
    );
}

// ---------------------------------------------------------------- PXK-E

const PXKE_CONFIGURED: &str = r#"
cluster:
  config: |
    clusterConfiguration:
      apiServer:
        extraArgs:
          oidc-issuer-url: "https://idp.example.test/realms/edge"
          oidc-client-id: "edge"
          advertise-address: "0.0.0.0"
    initConfiguration:
      nodeRegistration:
        kubeletExtraArgs:
          node-labels: "env=edge"
clientConfig:
  oidc-issuer-url: "https://idp.example.test/realms/edge"
  oidc-client-id: "edge"
"#;

#[test]
fn pxke_reads_the_yaml_inside_the_string() {
    let login = analyze_pack("edge-k8s", PXKE_CONFIGURED)
        .login()
        .cloned()
        .expect("configured");
    assert_eq!(login.client_id, "edge");
}

#[test]
fn pxke_issuer_only_and_client_config_only() {
    let issuer_only = PXKE_CONFIGURED
        .split("clientConfig:")
        .next()
        .expect("prefix");
    assert_eq!(
        gap_codes(&analyze_pack("edge-k8s", issuer_only)),
        ["CLIENT_CONFIG_MISSING"]
    );
    let client_only = PXKE_CONFIGURED.replace("oidc-issuer-url: \"https://idp.example.test/realms/edge\"\n          oidc-client-id: \"edge\"\n", "");
    let state = analyze_pack("edge-k8s", &client_only);
    assert_eq!(
        gap_codes(&state),
        ["API_SERVER_SETTING_MISSING", "API_SERVER_SETTING_MISSING"]
    );
    assert!(
        state.summary().contains("cluster.config (embedded YAML)"),
        "{}",
        state.summary()
    );
}

#[test]
fn pxke_broken_embedded_yaml_is_reported() {
    let values = "cluster:\n  config: \"clusterConfiguration: [unclosed\"\nclientConfig:\n  oidc-issuer-url: https://i\n  oidc-client-id: c\n";
    let state = analyze_pack("edge-k8s", values);
    assert!(
        gap_codes(&state).contains(&"EMBEDDED_CONFIG_INVALID"),
        "{state:?}"
    );
}

// ---------------------------------------------------------------- K3s / RKE2

const K3S_CONFIGURED: &str = r#"
cluster:
  config:
    kube-apiserver-arg:
      - anonymous-auth=true
      - profiling=false
      - oidc-issuer-url=https://idp.example.test/realms/edge
      - "oidc-client-id={{ .spectro.system.cluster.name }}"
      - oidc-username-claim=email
    kube-controller-manager-arg:
      - profiling=false
clientConfig:
  oidc-issuer-url: https://idp.example.test/realms/edge
  oidc-client-id: prod-east
  oidc-extra-scope: groups
"#;

#[test]
fn k3s_and_rke2_read_the_argument_list() {
    for pack in ["edge-k3s", "edge-rke2", "kubernetes-rke2"] {
        let login = analyze_pack(pack, K3S_CONFIGURED)
            .login()
            .cloned()
            .unwrap_or_else(|| panic!("{pack}"));
        assert_eq!(login.extra_scopes, ["groups"], "{pack}");
    }
    let issuer_only = K3S_CONFIGURED
        .split("clientConfig:")
        .next()
        .expect("prefix");
    assert_eq!(
        gap_codes(&analyze_pack("edge-k3s", issuer_only)),
        ["CLIENT_CONFIG_MISSING"]
    );
    let client_only = K3S_CONFIGURED.replace(
        "      - oidc-issuer-url=https://idp.example.test/realms/edge\n",
        "",
    );
    let state = analyze_pack("edge-rke2", &client_only);
    assert_eq!(gap_codes(&state), ["API_SERVER_SETTING_MISSING"]);
    assert!(
        state
            .summary()
            .contains("cluster.config.kube-apiserver-arg")
    );
}

#[test]
fn rke2_accepts_dashed_arguments_and_reports_bad_list_type() {
    let values = K3S_CONFIGURED.replace("- oidc-issuer-url=", "- --oidc-issuer-url=");
    assert!(analyze_pack("kubernetes-rke2", &values).is_configured());
    let bad = "cluster:\n  config:\n    kube-apiserver-arg: {oidc-issuer-url: x}\nclientConfig:\n  oidc-issuer-url: x\n  oidc-client-id: y\n";
    assert_eq!(gap_codes(&analyze_pack("edge-k3s", bad)), ["WRONG_TYPE"]);
}

// ---------------------------------------------------------------- EKS, AKS, GKE, generic

#[test]
fn eks_reads_the_managed_control_plane() {
    let values = r#"
managedControlPlane:
  logging:
    apiServer: true
  oidcIdentityProvider:
    identityProviderConfigName: "eks-oidc"
    issuerUrl: "https://idp.example.test/realms/eks"
    clientId: "eks"
    usernameClaim: "email"
clientConfig:
  oidc-issuer-url: "{{ .spectro.pack.kubernetes-eks.managedControlPlane.oidcIdentityProvider.issuerUrl }}"
  oidc-client-id: "{{ .spectro.pack.kubernetes-eks.managedControlPlane.oidcIdentityProvider.clientId }}"
  oidc-client-secret: "eks-secret"
"#;
    let login = analyze_pack("kubernetes-eks", values)
        .login()
        .cloned()
        .expect("configured");
    assert_eq!(login.issuer_url, "https://idp.example.test/realms/eks");
    let without = values.replace("issuerUrl: \"https://idp.example.test/realms/eks\"", "");
    let state = analyze_pack("kubernetes-eks", &without);
    assert!(
        gap_codes(&state).contains(&"UNRESOLVED_MACRO")
            || gap_codes(&state).contains(&"API_SERVER_SETTING_MISSING"),
        "{state:?}"
    );
    let client_only = "clientConfig:\n  oidc-issuer-url: https://i\n  oidc-client-id: c\n";
    assert!(
        analyze_pack("kubernetes-eks", client_only)
            .summary()
            .contains("managedControlPlane.oidcIdentityProvider")
    );
}

#[test]
fn aks_is_never_configured() {
    let values = r#"
managedControlPlane:
  aadProfile:
    managed: true
    adminGroupObjectIDs: ["00000000-0000-0000-0000-000000000000"]
kubeadmconfig:
  apiServer:
    extraArgs:
      oidc-issuer-url: https://idp.example.test
      oidc-client-id: k8s
clientConfig:
  oidc-issuer-url: https://idp.example.test
  oidc-client-id: k8s
"#;
    assert_eq!(
        gap_codes(&analyze_pack("kubernetes-aks", values)),
        ["AKS_UNSUPPORTED"]
    );
}

#[test]
fn gke_and_generic_packs_read_as_pxk() {
    let values =
        PXK_CONFIGURED.replace(".spectro.pack.kubernetes.", ".spectro.pack.kubernetes-gke.");
    assert!(analyze_pack("kubernetes-gke", &values).is_configured());
    let values = PXK_CONFIGURED.replace(
        ".spectro.pack.kubernetes.",
        ".spectro.pack.kubernetes-generic.",
    );
    assert!(analyze_pack("kubernetes-generic", &values).is_configured());
    // Macros may only refer to the same pack.
    let other = analyze_pack("kubernetes-gke", PXK_CONFIGURED);
    assert!(other.has_unresolved_macro(), "{other:?}");
}

#[test]
fn an_analysis_says_whether_it_read_the_service_settings() {
    let tracked = |values: &str| {
        analyze_tracked(&PackInput {
            name: "kubernetes",
            values,
            cluster_uid: UID,
            cluster_name: "prod-east",
            reverse_proxy_server: Some("proxy.example.test"),
            tenant_oidc: None,
        })
        .expect("values parse")
    };
    // The certSANs macro names the proxy, but the analysis never reads certSANs.
    let plain = tracked(PXK_CONFIGURED);
    assert!(plain.state.is_configured());
    assert!(!plain.reads_service_settings);
    let via_proxy = tracked(&PXK_CONFIGURED.replace(
        "\"https://idp.example.test/realms/platform\"",
        "\"https://{{ .spectro.system.reverseproxy.server }}/dex\"",
    ));
    assert!(via_proxy.state.is_configured());
    assert!(via_proxy.reads_service_settings);
    let tenant =
        tracked("pack:\n  palette:\n    config:\n      oidc:\n        identityProvider: tenant\n");
    assert!(tenant.reads_service_settings);
}
