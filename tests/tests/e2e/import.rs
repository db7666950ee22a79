//! `kubeconfigd import`, run as an operator would: kubeconfigs made here the way kubeadm, k3s and
//! Cluster API write them (certificates from the real `openssl` CLI), a token kubeconfig, a file of
//! several contexts and an exec-plugin one are imported; `kubeconfigd check` passes; the server
//! serves each cluster's admin kubeconfig with the source's server, CA and credential (compared
//! field by field, and loaded by kubectl). A second run writes nothing; a changed source rewrites one
//! file; hostile inputs are refused and write nothing.

// The helpers below run only inside tests: a panic is how they report a broken precondition.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use kube::config::Kubeconfig;
use kubeconfig_proto::kubeconfig::v1::GetAdminKubeconfigRequest;
use kubeconfigd_e2e::{Server, binary, with_key};
use secrecy::ExposeSecret as _;

const ADMIN_KEY: &str = "import-admin-key";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A working directory: a cluster CA and admin client certificate per cluster (made by openssl),
/// the inventory, and a tenant whose admin may download every admin kubeconfig.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let workspace = Workspace {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(workspace.inventory()).unwrap();
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(ADMIN_KEY.as_bytes()));
        std::fs::write(
            workspace.path("tenant.yaml"),
            format!(
                "tenant: acme\nprojects:\n  - uid: platform\n    name: Platform\n  - uid: team-a\n    name: Team A\n  - uid: team-b\n    name: Team B\nusers:\n  - email: admin@acme.test\n    apiKeys: [\"sha256:{hash}\"]\nbindings:\n  - user: admin@acme.test\n    role: Tenant Admin\n"
            ),
        )
        .unwrap();
        workspace
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn inventory(&self) -> PathBuf {
        self.path("inventory")
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `<name>-ca.crt`/`.key` and `<name>-admin.crt`/`.key` (CN kubernetes-admin, O system:masters),
    /// EC keys in SEC1 form as kubeadm and k3s write them.
    fn pki(&self, name: &str) {
        let ca = format!("{name}-ca");
        let admin = format!("{name}-admin");
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{ca}.key"),
        ]);
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}-ca"),
        ]);
        self.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{admin}.key"),
        ]);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{admin}.key"),
            "-out",
            &format!("{admin}.csr"),
            "-subj",
            "/O=system:masters/CN=kubernetes-admin",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{admin}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{admin}.crt"),
            "-days",
            "1",
        ]);
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// One cluster entry, one user entry and one context of a kubeconfig, as YAML list items.
    fn entries(&self, pki: &str, cluster: &str, server: &str, user: &str) -> (String, String) {
        (
            format!(
                "- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n",
                b64(&self.read(&format!("{pki}-ca.crt")))
            ),
            format!(
                "- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&self.read(&format!("{pki}-admin.crt"))),
                b64(&self.read(&format!("{pki}-admin.key")))
            ),
        )
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn import(&self, args: &[&str]) -> Output {
        Command::new(binary().unwrap())
            .arg("import")
            .arg("--inventory")
            .arg(self.inventory())
            .arg("--tenant")
            .arg(self.path("tenant.yaml"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Every file of the inventory with its content and modification time.
    fn snapshot(&self) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
        std::fs::read_dir(self.inventory())
            .unwrap()
            .flatten()
            .map(|e| {
                let metadata = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    (
                        std::fs::read(e.path()).unwrap(),
                        metadata.modified().unwrap(),
                    ),
                )
            })
            .collect()
    }
}

fn kubeconfig(
    clusters: &[(String, String)],
    contexts: &[(&str, &str, &str)],
    current: &str,
) -> String {
    let mut text = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (cluster, _) in clusters {
        text.push_str(cluster);
    }
    text.push_str("users:\n");
    for (_, user) in clusters {
        text.push_str(user);
    }
    text.push_str("contexts:\n");
    for (name, cluster, user) in contexts {
        text.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {cluster}\n    user: {user}\n"
        ));
    }
    text.push_str(&format!("current-context: {current}\n"));
    text
}

/// What a kubeconfig's context says: server, CA (PEM text), and the credential (certificate and
/// key PEM, or token).
#[derive(Debug, PartialEq, Eq)]
struct Parts {
    server: String,
    ca: String,
    certificate: Option<String>,
    key: Option<String>,
    token: Option<String>,
}

fn decode(data: &str) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
    .unwrap()
}

/// PEM compared by its base64 body: the server re-encodes what it read.
fn body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>()
}

fn parts(text: &str, context: Option<&str>) -> Parts {
    let config = Kubeconfig::from_yaml(text).unwrap();
    let context_name = context
        .map(str::to_owned)
        .or(config.current_context.clone())
        .unwrap();
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .unwrap();
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .unwrap();
    let user = config
        .auth_infos
        .iter()
        .find(|u| Some(&u.name) == context.user.as_ref())
        .and_then(|u| u.auth_info.clone())
        .unwrap();
    Parts {
        server: cluster.server.unwrap(),
        ca: body(&decode(
            cluster.certificate_authority_data.as_deref().unwrap(),
        )),
        certificate: user
            .client_certificate_data
            .as_deref()
            .map(|d| body(&decode(d))),
        key: user
            .client_key_data
            .as_ref()
            .map(|d| body(&decode(d.expose_secret()))),
        token: user.token.as_ref().map(|t| t.expose_secret().to_owned()),
    }
}

/// The uids the summary lists for `status` (`added`, `changed`, `unchanged`).
fn listed(output: &Output, status: &str) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(status))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_clusters_are_served_with_the_sources_server_ca_and_credential() {
    let w = Workspace::new();
    for pki in ["kubeadm", "k3s", "one", "two", "capi-a", "capi-b"] {
        w.pki(pki);
    }
    // kubeadm's admin.conf.
    let kubeadm = w.entries(
        "kubeadm",
        "kubernetes",
        "https://10.0.0.10:6443",
        "kubernetes-admin",
    );
    let admin_conf = w.write(
        "admin.conf",
        &kubeconfig(
            &[kubeadm],
            &[(
                "kubernetes-admin@kubernetes",
                "kubernetes",
                "kubernetes-admin",
            )],
            "kubernetes-admin@kubernetes",
        ),
    );
    // k3s's k3s.yaml: everything named `default`.
    let k3s = w.entries("k3s", "default", "https://127.0.0.1:6443", "default");
    let k3s_yaml = w.write(
        "k3s.yaml",
        &kubeconfig(&[k3s], &[("default", "default", "default")], "default"),
    );
    // A token kubeconfig.
    let token_yaml = w.write(
        "token.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: edge\n  cluster:\n    server: https://edge.example.test:443\n    certificate-authority-data: {}\nusers:\n- name: robot\n  user:\n    token: edge-admin-token\ncontexts:\n- name: edge\n  context: {{cluster: edge, user: robot}}\ncurrent-context: edge\n",
            b64(&w.read("one-ca.crt"))
        ),
    );
    // Two contexts in one file.
    let one = w.entries("one", "one", "https://one.example.test:6443", "one-admin");
    let two = w.entries("two", "two", "https://two.example.test:6443", "two-admin");
    let multi = w.write(
        "multi.yaml",
        &kubeconfig(
            &[one, two],
            &[("one", "one", "one-admin"), ("two", "two", "two-admin")],
            "one",
        ),
    );
    // Cluster API Secrets, as kubectl lists them.
    let capi_kubeconfig = |pki: &str, name: &str| {
        let entries = w.entries(
            pki,
            name,
            &format!("https://{name}.capi.test:6443"),
            &format!("{name}-admin"),
        );
        kubeconfig(
            &[entries],
            &[(
                &format!("{name}-admin@{name}"),
                name,
                &format!("{name}-admin"),
            )],
            &format!("{name}-admin@{name}"),
        )
    };
    let secret = |namespace: &str, name: &str, pki: &str| {
        format!(
            "- apiVersion: v1\n  kind: Secret\n  type: cluster.x-k8s.io/secret\n  metadata:\n    name: {name}-kubeconfig\n    namespace: {namespace}\n    labels:\n      cluster.x-k8s.io/cluster-name: {name}\n  data:\n    value: {}\n",
            b64(capi_kubeconfig(pki, name).as_bytes())
        )
    };
    // Cluster API labels a cluster's other Secrets too (its CAs, etcd, keys): listed first here, as
    // kubectl sorts them, they are left aside.
    let sibling = "- apiVersion: v1\n  kind: Secret\n  metadata:\n    name: alpha-ca\n    namespace: team-a\n    labels:\n      cluster.x-k8s.io/cluster-name: alpha\n  data:\n    tls.crt: eA==\n";
    let secrets = w.write(
        "secrets.yaml",
        &format!(
            "apiVersion: v1\nkind: List\nitems:\n{sibling}{}{}",
            secret("team-a", "alpha", "capi-a"),
            secret("team-b", "beta", "capi-b")
        ),
    );
    // An exec-plugin kubeconfig (as EKS writes).
    let exec_yaml = w.write(
        "eks.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: arn:aws:eks:eu-west-1:123456789012:cluster/prod\n  cluster:\n    server: https://eks.example.test\n    certificate-authority-data: {}\nusers:\n- name: arn:aws:eks:eu-west-1:123456789012:cluster/prod\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: aws\n      args: [eks, get-token, --cluster-name, prod]\ncontexts:\n- name: arn:aws:eks:eu-west-1:123456789012:cluster/prod\n  context:\n    cluster: arn:aws:eks:eu-west-1:123456789012:cluster/prod\n    user: arn:aws:eks:eu-west-1:123456789012:cluster/prod\ncurrent-context: arn:aws:eks:eu-west-1:123456789012:cluster/prod\n",
            b64(&w.read("two-ca.crt"))
        ),
    );

    let s = |p: &Path| p.display().to_string();
    let run = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &s(&admin_conf),
        "--kubeconfig",
        &s(&k3s_yaml),
        "--kubeconfig",
        &s(&token_yaml),
        "--kubeconfig",
        &s(&multi),
        "--kubeconfig",
        &s(&exec_yaml),
    ]);
    // The exec-plugin cluster is skipped with its reason; the rest are written.
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(text(&run).contains("exec plugin (aws)"), "{}", text(&run));
    assert_eq!(listed(&run, "added").len(), 5, "{}", text(&run));
    let capi = w.import(&["--project-from-namespace", "--capi-secrets", &s(&secrets)]);
    assert_eq!(capi.status.code(), Some(0), "{}", text(&capi));
    assert_eq!(listed(&capi, "added").len(), 2, "{}", text(&capi));
    assert!(
        text(&capi).contains("1 other Secrets left aside"),
        "{}",
        text(&capi)
    );

    // Every file is private and loads as the server loads it.
    for entry in std::fs::read_dir(w.inventory()).unwrap().flatten() {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            entry.metadata().unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let check = Command::new(binary().unwrap())
        .args(["check", "--inventory"])
        .arg(w.inventory())
        .arg("--tenant")
        .arg(w.path("tenant.yaml"))
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));

    // Served: each admin kubeconfig carries the source's server, CA and credential.
    let server = Server::start(&[
        "--tenant".to_owned(),
        s(&w.path("tenant.yaml")),
        "--inventory".to_owned(),
        s(&w.inventory()),
    ])
    .await
    .unwrap();
    let client = server.client().await.unwrap();
    let sources: Vec<(&Output, String, Option<&str>, &Path)> = vec![
        (
            &run,
            "kubernetes-admin-kubernetes".to_owned(),
            None,
            &admin_conf,
        ),
        (&run, "default".to_owned(), None, &k3s_yaml),
        (&run, "edge".to_owned(), None, &token_yaml),
        (&run, "one".to_owned(), Some("one"), &multi),
        (&run, "two".to_owned(), Some("two"), &multi),
    ];
    let summary_uid = |output: &Output, name: &str| -> String {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with("added") && l.split_whitespace().nth(2) == Some(name))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} in {}", text(output)))
    };
    let served = |uid: String| {
        let mut client = client.clone();
        async move {
            client
                .get_admin_kubeconfig(with_key(
                    GetAdminKubeconfigRequest {
                        uid,
                        ..Default::default()
                    },
                    ADMIN_KEY,
                ))
                .await
                .expect("served")
                .into_inner()
                .kubeconfig
                .expect("kubeconfig")
                .yaml
        }
    };
    for (output, name, context, source) in sources {
        let uid = summary_uid(output, &name);
        let yaml = served(uid).await;
        let source_text = std::fs::read_to_string(source).unwrap();
        assert_eq!(parts(&yaml, None), parts(&source_text, context), "{name}");
        // kubectl reads it.
        let file = w.write(&format!("served-{name}.yaml"), &yaml);
        let view = Command::new("kubectl")
            .args(["config", "view", "--raw", "--kubeconfig"])
            .arg(&file)
            .output()
            .expect("kubectl is installed (the test command installs it)");
        assert!(view.status.success(), "kubectl: {}", text(&view));
    }
    for (name, pki) in [("alpha", "capi-a"), ("beta", "capi-b")] {
        let uid = summary_uid(&capi, name);
        let yaml = served(uid).await;
        assert_eq!(
            parts(&yaml, None),
            parts(&capi_kubeconfig(pki, name), None),
            "{name}"
        );
    }

    // A second run changes nothing on disk.
    let before = w.snapshot();
    let again = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &s(&admin_conf),
        "--kubeconfig",
        &s(&multi),
    ]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(listed(&again, "unchanged").len(), 3, "{}", text(&again));
    assert_eq!(w.snapshot(), before);
    // The same source under another file name is the same cluster file.
    std::fs::copy(&admin_conf, w.path("copy-of-admin.conf")).unwrap();
    let renamed = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &s(&w.path("copy-of-admin.conf")),
    ]);
    assert_eq!(listed(&renamed, "unchanged").len(), 1, "{}", text(&renamed));
    assert_eq!(w.snapshot(), before);
    // A changed source rewrites its file only.
    std::fs::write(
        &token_yaml,
        std::fs::read_to_string(&token_yaml)
            .unwrap()
            .replace("edge-admin-token", "rotated-token"),
    )
    .unwrap();
    let rotated = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &s(&token_yaml),
        "--kubeconfig",
        &s(&admin_conf),
    ]);
    assert_eq!(listed(&rotated, "changed").len(), 1, "{}", text(&rotated));
    assert_eq!(listed(&rotated, "unchanged").len(), 1, "{}", text(&rotated));
    let after = w.snapshot();
    let differing: Vec<&String> = after
        .keys()
        .filter(|k| after.get(*k) != before.get(*k))
        .collect();
    assert_eq!(differing.len(), 1, "{differing:?}");

    // The exec-plugin cluster is served once it mints with a client CA.
    let minted = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &s(&exec_yaml),
        "--admin-credential",
        "minted",
        "--mint-ca-cert",
        &s(&w.path("two-ca.crt")),
        "--mint-ca-key",
        &s(&w.path("two-ca.key")),
    ]);
    assert_eq!(minted.status.code(), Some(0), "{}", text(&minted));
    assert!(
        text(&minted).contains(" prod "),
        "the ARN's cluster name: {}",
        text(&minted)
    );
    // Served (the server picks the new file up within a second): the source's server and CA, and a
    // client certificate minted for the caller where the source had its exec plugin.
    let uid = summary_uid(&minted, "prod");
    let mut yaml = None;
    for _ in 0..50 {
        let mut client = client.clone();
        if let Ok(response) = client
            .get_admin_kubeconfig(with_key(
                GetAdminKubeconfigRequest {
                    uid: uid.clone(),
                    ..Default::default()
                },
                ADMIN_KEY,
            ))
            .await
        {
            yaml = response.into_inner().kubeconfig.map(|k| k.yaml);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let yaml = yaml.expect("the minted cluster is served");
    let (served_parts, source_parts) = (
        parts(&yaml, None),
        parts(&std::fs::read_to_string(&exec_yaml).unwrap(), None),
    );
    assert_eq!(
        (&served_parts.server, &served_parts.ca),
        (&source_parts.server, &source_parts.ca)
    );
    assert!(served_parts.certificate.is_some() && served_parts.key.is_some());
    let file = w.write("served-prod.yaml", &yaml);
    let view = Command::new("kubectl")
        .args(["config", "view", "--raw", "--kubeconfig"])
        .arg(&file)
        .output()
        .expect("kubectl");
    assert!(view.status.success(), "kubectl: {}", text(&view));
}

#[test]
fn hostile_inputs_are_refused_and_write_nothing() {
    let w = Workspace::new();
    w.pki("x");
    let (cluster, user) = w.entries("x", "x", "https://x.example.test:6443", "x-admin");
    let traversal = w.write(
        "traversal.yaml",
        &kubeconfig(
            &[(cluster.clone(), user.clone())],
            &[("../../x", "x", "x-admin")],
            "../../x",
        ),
    );
    // Forty thousand times a thousand aliases expanded: refused by the alias budget, at once.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, previous) in ["a", "b", "c", "d", "e", "f", "g", "h"].iter().enumerate() {
        let name = (b'b' + i as u8) as char;
        bomb.push_str(&format!("{name}: &{name} [*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous},*{previous}]\n"));
    }
    let bomb = w.write("bomb.yaml", &bomb);
    let large = w.path("large.yaml");
    std::fs::File::create(&large)
        .unwrap()
        .set_len(50 * 1024 * 1024)
        .unwrap();
    let not_kubeconfig = w.write(
        "tenant-copy.yaml",
        &std::fs::read_to_string(w.path("tenant.yaml")).unwrap(),
    );
    let deployment = w.write(
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    );
    let good = w.write(
        "good.yaml",
        &kubeconfig(&[(cluster, user)], &[("good", "x", "x-admin")], "good"),
    );
    for (input, expected) in [
        (&traversal, "cannot name a cluster"),
        (&bomb, "repetition limit"),
        (&large, "at most"),
        (&not_kubeconfig, "not a kubeconfig"),
        (&deployment, "not a kubeconfig"),
    ] {
        // With a good input beside it: still nothing is written.
        let output = w.import(&[
            "--project",
            "platform",
            "--kubeconfig",
            &good.display().to_string(),
            "--kubeconfig",
            &input.display().to_string(),
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}: {}",
            input.display(),
            text(&output)
        );
        assert!(
            text(&output).contains(expected),
            "{}: {}",
            input.display(),
            text(&output)
        );
        assert!(
            text(&output).contains("nothing was written"),
            "{}",
            text(&output)
        );
        assert_eq!(std::fs::read_dir(w.inventory()).unwrap().count(), 0);
    }
    // A file the import did not write is not replaced without --force.
    let uid_output = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &good.display().to_string(),
        "--dry-run",
    ]);
    let uid = listed(&uid_output, "added").pop().unwrap();
    std::fs::write(
        w.inventory().join(format!("{uid}.yaml")),
        "uid: hand-written\n",
    )
    .unwrap();
    let refused = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &good.display().to_string(),
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("--force"), "{}", text(&refused));
    let forced = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &good.display().to_string(),
        "--force",
    ]);
    assert_eq!(listed(&forced, "changed"), [uid], "{}", text(&forced));
    // A Secret whose kubeconfig cannot be read is that cluster's problem, not the file's.
    let bad_secret = w.write(
        "bad-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: gamma-kubeconfig\n  namespace: team-a\n  labels:\n    cluster.x-k8s.io/cluster-name: gamma\ndata:\n  value: '%%% not base64'\n",
    );
    let skipped = w.import(&[
        "--project",
        "platform",
        "--capi-secrets",
        &bad_secret.display().to_string(),
    ]);
    assert_eq!(skipped.status.code(), Some(1), "{}", text(&skipped));
    assert!(
        text(&skipped).contains("data.value: not base64"),
        "{}",
        text(&skipped)
    );
    // A context that cannot be served does not hide another for the same API server; a file outside
    // the inventory is read only from an --inline-from directory.
    std::fs::write(w.path("token.txt"), "a-token\n").unwrap();
    let mixed = w.write(
        "mixed.yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: m\n  cluster:\n    server: https://mixed.example.test:6443\n    certificate-authority-data: {}\nusers:\n- name: pw\n  user: {{username: admin, password: secret}}\n- name: tok\n  user: {{tokenFile: token.txt}}\ncontexts:\n- name: pw\n  context: {{cluster: m, user: pw}}\n- name: tok\n  context: {{cluster: m, user: tok}}\n",
            b64(&w.read("x-ca.crt"))
        ),
    );
    let refused = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &mixed.display().to_string(),
        "--dry-run",
    ]);
    assert!(
        text(&refused).contains("--inline-from"),
        "{}",
        text(&refused)
    );
    assert!(
        text(&refused).contains("context pw: the same cluster as"),
        "{}",
        text(&refused)
    );
    let inlined = w.import(&[
        "--project",
        "platform",
        "--kubeconfig",
        &mixed.display().to_string(),
        "--dry-run",
        "--inline-from",
        &w.dir.path().display().to_string(),
    ]);
    assert_eq!(listed(&inlined, "added").len(), 1, "{}", text(&inlined));
    // A project the tenant lacks stops the import.
    let unknown = w.import(&[
        "--project",
        "nowhere",
        "--kubeconfig",
        &good.display().to_string(),
    ]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        text(&unknown).contains("\"nowhere\" is not in"),
        "{}",
        text(&unknown)
    );
}
