//! The kubeconfig document as typed structs. Field order is declaration order, so serialization is
//! deterministic for the same input.

use serde::Serialize;

use crate::input::OidcLogin;

/// The hint kubectl shows when kubelogin is missing.
pub const KUBELOGIN_INSTALL_HINT: &str = "This kubeconfig signs in through OIDC with kubelogin, a kubectl plugin. \
Install it with `kubectl krew install oidc-login` (or see https://github.com/int128/kubelogin), then run any kubectl command.";

#[derive(Debug, Serialize)]
pub(crate) struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<NamedCluster>,
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    current_context: String,
    preferences: Preferences,
    users: Vec<NamedUser>,
}

#[derive(Debug, Serialize)]
struct Preferences {}

#[derive(Debug, Serialize)]
struct NamedCluster {
    name: String,
    cluster: ClusterEntry,
}

#[derive(Debug, Serialize)]
struct ClusterEntry {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
}

#[derive(Debug, Serialize)]
struct NamedContext {
    name: String,
    context: ContextEntry,
}

#[derive(Debug, Serialize)]
struct ContextEntry {
    cluster: String,
    user: String,
}

#[derive(Debug, Serialize)]
struct NamedUser {
    name: String,
    user: UserEntry,
}

/// A kubeconfig user entry: exactly one kind of credential.
#[derive(Debug, Default, Serialize)]
pub(crate) struct UserEntry {
    #[serde(
        rename = "client-certificate-data",
        skip_serializing_if = "Option::is_none"
    )]
    client_certificate_data: Option<String>,
    #[serde(rename = "client-key-data", skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec: Option<Exec>,
}

impl UserEntry {
    pub(crate) fn certificate(certificate_data: String, key_data: String) -> Self {
        UserEntry {
            client_certificate_data: Some(certificate_data),
            client_key_data: Some(key_data),
            ..Default::default()
        }
    }

    pub(crate) fn token(token: String) -> Self {
        UserEntry {
            token: Some(token),
            ..Default::default()
        }
    }

    pub(crate) fn exec(exec: Exec) -> Self {
        UserEntry {
            exec: Some(exec),
            ..Default::default()
        }
    }
}

/// The kubelogin exec plugin entry (docs/access.md, "The two files per cluster").
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Exec {
    api_version: &'static str,
    command: &'static str,
    args: Vec<String>,
    interactive_mode: &'static str,
    provide_cluster_info: bool,
    install_hint: &'static str,
}

impl Exec {
    pub(crate) fn kubelogin(oidc: &OidcLogin) -> Self {
        let mut args = vec![
            "oidc-login".to_owned(),
            "get-token".to_owned(),
            format!("--oidc-issuer-url={}", oidc.issuer_url),
            format!("--oidc-client-id={}", oidc.client_id),
        ];
        if let Some(secret) = &oidc.client_secret {
            args.push(format!("--oidc-client-secret={}", secret.expose()));
        }
        args.extend(
            oidc.extra_scopes
                .iter()
                .map(|s| format!("--oidc-extra-scope={s}")),
        );
        Exec {
            api_version: "client.authentication.k8s.io/v1beta1",
            command: "kubectl",
            args,
            interactive_mode: "IfAvailable",
            provide_cluster_info: false,
            install_hint: KUBELOGIN_INSTALL_HINT,
        }
    }
}

impl Kubeconfig {
    /// One cluster, one user, one context named `<user>@<cluster>`, set as current.
    pub(crate) fn single(
        cluster_name: &str,
        user_name: &str,
        server: String,
        ca_data: String,
        user: UserEntry,
    ) -> Self {
        let context = format!("{user_name}@{cluster_name}");
        Kubeconfig {
            api_version: "v1",
            kind: "Config",
            clusters: vec![NamedCluster {
                name: cluster_name.to_owned(),
                cluster: ClusterEntry {
                    server,
                    certificate_authority_data: ca_data,
                },
            }],
            contexts: vec![NamedContext {
                name: context.clone(),
                context: ContextEntry {
                    cluster: cluster_name.to_owned(),
                    user: user_name.to_owned(),
                },
            }],
            current_context: context,
            preferences: Preferences {},
            users: vec![NamedUser {
                name: user_name.to_owned(),
                user,
            }],
        }
    }

    pub(crate) fn to_yaml(&self) -> String {
        // Serializing plain structs of strings and bools to a String cannot fail.
        serde_norway::to_string(self)
            .unwrap_or_else(|e| unreachable!("kubeconfig serialization failed: {e}"))
    }
}
