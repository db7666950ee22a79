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
    /// A client certificate, with its key unless the holder keeps the key (an issued certificate
    /// for a caller's own key).
    pub(crate) fn certificate(certificate_data: String, key_data: Option<String>) -> Self {
        UserEntry {
            client_certificate_data: Some(certificate_data),
            client_key_data: key_data,
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

    /// The YAML text. Written directly when every string in it is one the YAML serializer writes
    /// unquoted (almost always: names, URLs, base64 and flags), else by the serializer; the bytes are
    /// the same either way (a property test compares them), the direct path is several times faster.
    pub(crate) fn to_yaml(&self) -> String {
        self.to_yaml_direct()
            .unwrap_or_else(|| self.to_yaml_serialized())
    }

    fn to_yaml_serialized(&self) -> String {
        // Serializing plain structs of strings and bools to a String cannot fail.
        serde_norway::to_string(self)
            .unwrap_or_else(|e| unreachable!("kubeconfig serialization failed: {e}"))
    }

    fn to_yaml_direct(&self) -> Option<String> {
        let [cluster] = self.clusters.as_slice() else {
            return None;
        };
        let [context] = self.contexts.as_slice() else {
            return None;
        };
        let [user] = self.users.as_slice() else {
            return None;
        };
        let mut out = String::with_capacity(
            512 + cluster.cluster.certificate_authority_data.len()
                + user
                    .user
                    .client_certificate_data
                    .as_ref()
                    .map_or(0, String::len)
                + user.user.client_key_data.as_ref().map_or(0, String::len),
        );
        let line = |out: &mut String, prefix: &str, value: &str| -> Option<()> {
            if !is_plain(value) {
                return None;
            }
            out.push_str(prefix);
            out.push_str(value);
            out.push('\n');
            Some(())
        };
        line(&mut out, "apiVersion: ", self.api_version)?;
        line(&mut out, "kind: ", self.kind)?;
        out.push_str("clusters:\n");
        line(&mut out, "- name: ", &cluster.name)?;
        out.push_str("  cluster:\n");
        line(&mut out, "    server: ", &cluster.cluster.server)?;
        line(
            &mut out,
            "    certificate-authority-data: ",
            &cluster.cluster.certificate_authority_data,
        )?;
        out.push_str("contexts:\n");
        line(&mut out, "- name: ", &context.name)?;
        out.push_str("  context:\n");
        line(&mut out, "    cluster: ", &context.context.cluster)?;
        line(&mut out, "    user: ", &context.context.user)?;
        line(&mut out, "current-context: ", &self.current_context)?;
        out.push_str("preferences: {}\nusers:\n");
        line(&mut out, "- name: ", &user.name)?;
        out.push_str("  user:\n");
        let entry = &user.user;
        if entry.client_certificate_data.is_none() && entry.token.is_none() && entry.exec.is_none()
        {
            // An entry without a credential is `{}`: left to the serializer.
            return None;
        }
        if let Some(data) = &entry.client_certificate_data {
            line(&mut out, "    client-certificate-data: ", data)?;
        }
        if let Some(data) = &entry.client_key_data {
            line(&mut out, "    client-key-data: ", data)?;
        }
        if let Some(token) = &entry.token {
            line(&mut out, "    token: ", token)?;
        }
        if let Some(exec) = &entry.exec {
            out.push_str("    exec:\n");
            line(&mut out, "      apiVersion: ", exec.api_version)?;
            line(&mut out, "      command: ", exec.command)?;
            out.push_str("      args:\n");
            for arg in &exec.args {
                line(&mut out, "      - ", arg)?;
            }
            line(&mut out, "      interactiveMode: ", exec.interactive_mode)?;
            out.push_str(if exec.provide_cluster_info {
                "      provideClusterInfo: true\n"
            } else {
                "      provideClusterInfo: false\n"
            });
            if exec.install_hint != KUBELOGIN_INSTALL_HINT {
                return None;
            }
            out.push_str("      installHint: ");
            out.push_str(install_hint_scalar()?);
            out.push('\n');
        }
        Some(out)
    }
}

/// The install hint as the serializer writes it (it has spaces and punctuation, so it is not
/// [`is_plain`]); a constant, serialized once.
fn install_hint_scalar() -> Option<&'static str> {
    static HINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HINT.get_or_init(|| {
        serde_norway::to_string(KUBELOGIN_INSTALL_HINT)
            .ok()
            .map(|s| s.trim_end_matches('\n').to_owned())
            .filter(|s| !s.contains('\n'))
    })
    .as_deref()
}

/// Whether the YAML serializer writes `value` as a plain (unquoted) scalar, decided conservatively:
/// `false` for anything in doubt, which only costs the slower path. Plain here means: starts with a
/// letter, or with `-` followed by a letter or `-` (`--flag=…`; never `---`, and never `-0` or `-1.5`,
/// which read back as numbers); has only letters, digits and
/// `. _ / : = @ + -`; does not end with `:`; and cannot be read back as anything but a string (a YAML
/// 1.1 boolean or null, or a special float such as `inf`/`nan`, which start with a letter).
pub(crate) fn is_plain(value: &str) -> bool {
    let bytes = value.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    let starts_well = first.is_ascii_alphabetic()
        || (first == b'-'
            && bytes
                .get(1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'-')
            && !value.starts_with("---"));
    let chars_ok = bytes.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'_' | b'/' | b':' | b'=' | b'@' | b'+' | b'-')
    });
    if !starts_well || !chars_ok || value.ends_with(':') {
        return false;
    }
    const NOT_STRINGS: [&str; 14] = [
        "y",
        "n",
        "yes",
        "no",
        "on",
        "off",
        "true",
        "false",
        "null",
        "inf",
        "infinity",
        "nan",
        "-inf",
        "-infinity",
    ];
    !NOT_STRINGS
        .iter()
        .any(|word| value.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn document(name: &str, server: &str, arg: &str, token: Option<&str>) -> Kubeconfig {
        let user = match token {
            Some(token) => UserEntry::token(token.to_owned()),
            None => UserEntry::exec(Exec {
                api_version: "client.authentication.k8s.io/v1beta1",
                command: "kubectl",
                args: vec!["oidc-login".to_owned(), arg.to_owned()],
                interactive_mode: "IfAvailable",
                provide_cluster_info: false,
                install_hint: KUBELOGIN_INSTALL_HINT,
            }),
        };
        Kubeconfig::single(
            name,
            &format!("{name}-oidc"),
            server.to_owned(),
            "LS0tLS1CRUdJTg==".to_owned(),
            user,
        )
    }

    proptest! {
        /// Whatever the strings, the text is the serializer's: directly written when they are plain,
        /// serialized otherwise.
        #[test]
        fn direct_text_is_the_serializers(
            name in "[-a-zA-Z0-9._:=@+/ #'\"]{0,12}",
            server in "(https://)?[-a-zA-Z0-9.:/]{0,20}",
            // The second form is number-like (`-0`, `-1.5e3`, `0x1f`, `1_000`, `12:30`), so it
            // comes up often rather than by luck.
            arg in "(-|--)?[-a-zA-Z0-9._:=@+/~ ]{0,16}|-?[0-9.][0-9a-fxob._:e+-]{0,6}",
            token in proptest::option::of("[-a-zA-Z0-9._:+/=]{0,12}"),
        ) {
            let doc = document(&name, &server, &arg, token.as_deref());
            let direct = doc.to_yaml_direct();
            prop_assert_eq!(doc.to_yaml(), doc.to_yaml_serialized());
            if let Some(direct) = direct {
                prop_assert_eq!(direct, doc.to_yaml_serialized());
            }
        }
    }

    #[test]
    fn words_that_read_back_as_other_types_are_not_plain() {
        for word in [
            "true", "No", "NULL", "y", "inf", "NaN", "1.5", "0x1f", "---x", "a:", "", "-", "-0",
            "-1.5", "-0x1f", "-1e5",
        ] {
            assert!(!is_plain(word), "{word}");
        }
        for word in [
            "prod-east",
            "https://10.0.0.1:6443",
            "--oidc-client-id=k8s",
            "LS0tLS1C==",
        ] {
            assert!(is_plain(word), "{word}");
        }
        // The usual documents take the direct path.
        for token in [None, Some("eyJhbGciOiJSUzI1NiJ9.admin-token.sig")] {
            let doc = document(
                "prod-east",
                "https://10.0.0.1:6443",
                "--oidc-client-id=k8s",
                token,
            );
            assert_eq!(doc.to_yaml_direct(), Some(doc.to_yaml_serialized()));
        }
    }
}
