//! The generated fleets of the scale benchmarks and the soak: a tenant file and cluster files with
//! distinct key material per cluster (its own CA and admin key, ECDSA P-256, PEM inline), a mix of
//! distributions, OIDC states and proxy settings, spread over several projects.
//!
//! The tenant's users: `admin@scale.test` (Tenant Admin, API key `scale-admin-key`) and one viewer per
//! project, `viewer-p<p>@scale.test` (API key `scale-viewer-p<p>-key`).

use std::fmt::Write as _;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sha2::{Digest as _, Sha256};

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The uid of cluster `index`: 24 hex characters, like Palette's.
pub fn uid(index: usize) -> String {
    format!("5ca1e{index:019x}")
}

fn pack(index: usize) -> (&'static str, String) {
    match index % 4 {
        0 => (
            "kubernetes",
            format!(
                "kubeadmconfig:\n  apiServer:\n    extraArgs:\n      oidc-issuer-url: \"https://idp.scale.test/realms/r{r}\"\n      oidc-client-id: \"k8s-{index}\"\n  clientConfig:\n    oidc-issuer-url: \"{{{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-issuer-url }}}}\"\n    oidc-client-id: \"{{{{ .spectro.pack.kubernetes.kubeadmconfig.apiServer.extraArgs.oidc-client-id }}}}\"\n    oidc-extra-scope: email\n",
                r = index % 7
            ),
        ),
        1 => (
            "edge-k3s",
            format!(
                "cluster:\n  config:\n    kube-apiserver-arg:\n      - oidc-issuer-url=https://idp.scale.test/realms/edge\n      - oidc-client-id=edge-{index}\nclientConfig:\n  oidc-issuer-url: https://idp.scale.test/realms/edge\n  oidc-client-id: edge-{index}\n"
            ),
        ),
        2 => (
            "kubernetes-eks",
            format!(
                "managedControlPlane:\n  oidcIdentityProvider:\n    issuerUrl: https://idp.scale.test/realms/eks\n    clientId: eks-{index}\n"
            ),
        ),
        _ => (
            "kubernetes",
            "kubeadmconfig:\n  apiServer:\n    extraArgs:\n      anonymous-auth: \"false\"\n"
                .to_owned(),
        ),
    }
}

/// One cluster file: its own CA, an admin certificate signed by it, and the admin key.
pub fn cluster_file(index: usize, projects: usize) -> Result<String, rcgen::Error> {
    cluster_file_with(index, projects, AdminCredential::Static)
}

/// How a generated cluster's admin kubeconfig gets its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCredential {
    /// One admin certificate and key in the file, shared by every caller.
    Static,
    /// Minted per caller: the file holds the client CA (the cluster CA) and its key.
    Minted,
}

/// One cluster file with the admin credential `admin`.
pub fn cluster_file_with(
    index: usize,
    projects: usize,
    admin: AdminCredential,
) -> Result<String, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("cluster-{index}-ca"));
    let ca_cert = ca.self_signed(&ca_key)?;
    let (pack_name, values) = pack(index);
    let credential = match admin {
        AdminCredential::Static => {
            let issuer = Issuer::from_params(&ca, &ca_key);
            let admin_key = KeyPair::generate()?;
            let mut admin = CertificateParams::new(Vec::<String>::new())?;
            admin
                .distinguished_name
                .push(DnType::CommonName, "kubernetes-admin");
            admin
                .distinguished_name
                .push(DnType::OrganizationName, "system:masters");
            let admin_cert = admin.signed_by(&admin_key, &issuer)?;
            format!(
                "admin:\n  clientCertificate: |\n{cert}  clientKey: |\n{key}",
                cert = indent(&admin_cert.pem(), 4),
                key = indent(&admin_key.serialize_pem(), 4),
            )
        }
        AdminCredential::Minted => format!(
            "adminCredential: minted\nclientCa:\n  certificate: |\n{cert}  key: |\n{key}",
            cert = indent(&ca_cert.pem(), 4),
            key = indent(&ca_key.serialize_pem(), 4),
        ),
    };
    let mut text = format!(
        "# Generated for scale benchmarks; the key material protects nothing.\nuid: {uid}\nname: c{index:06}\nproject: p{project}\napiServer: https://10.{a}.{b}.{c}:6443\ncertificateAuthority: |\n{ca}{credential}kubernetesPack:\n  name: {pack_name}\n  version: \"1.30.0\"\n  values: |\n{values}",
        uid = uid(index),
        project = index % projects,
        a = (index >> 16) & 0xff,
        b = (index >> 8) & 0xff,
        c = index & 0xff,
        ca = indent(&ca_cert.pem(), 2),
        values = indent(&values, 4),
    );
    if index.is_multiple_of(3) {
        text.push_str("spectroProxy:\n  enabled: true\n");
    }
    Ok(text)
}

/// The `sha256:` form of an API key in a tenant file.
pub fn api_key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The tenant file for `projects` projects.
pub fn tenant_file(projects: usize) -> String {
    let mut text = String::from(
        "# Generated for scale benchmarks.\ntenant: scale\npolicy: seed\nreverseProxy:\n  server: proxy.scale.test\n  port: 443\nprojects:\n",
    );
    for p in 0..projects {
        let _ = writeln!(text, "  - uid: p{p}\n    name: Project {p}");
    }
    text.push_str("users:\n");
    let _ = writeln!(
        text,
        "  - email: admin@scale.test\n    apiKeys:\n      - sha256:{}",
        api_key_hash("scale-admin-key")
    );
    for p in 0..projects {
        let _ = writeln!(
            text,
            "  - email: viewer-p{p}@scale.test\n    apiKeys:\n      - sha256:{}",
            api_key_hash(&format!("scale-viewer-p{p}-key"))
        );
    }
    text.push_str("bindings:\n  - user: admin@scale.test\n    role: Tenant Admin\n");
    for p in 0..projects {
        let _ = writeln!(
            text,
            "  - user: viewer-p{p}@scale.test\n    role: Cluster Viewer\n    project: p{p}"
        );
    }
    text
}
