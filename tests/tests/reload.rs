//! Reloading: an edit is served within 2 s, a broken edit keeps the old version (and is reported),
//! deleting a file makes the cluster 404, and nothing else is affected.

use std::time::Duration;

use kubeconfig_proto::kubeconfig::v1::{GetKubeconfigAccessRequest, GetKubeconfigRequest};
use kubeconfigd_e2e::{Fixture, Server, eventually, with_key};

const UID: &str = "00000000000000000000aa04";
const OTHER: &str = "00000000000000000000aa03";
const KEY: &str = "matrix-cluster-admin";

async fn server_of(yaml: &Server, uid: &str) -> Result<String, tonic::Code> {
    let mut client = yaml.client().await.expect("client");
    client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: uid.to_owned(),
                frp: None,
            },
            KEY,
        ))
        .await
        .map(|r| r.into_inner().kubeconfig.expect("kubeconfig").yaml)
        .map_err(|s| s.code())
}

/// The problems `GetKubeconfigAccess` reports for a cluster.
async fn problems_of(server: &Server, uid: &str) -> Vec<String> {
    let mut client = server.client().await.expect("client");
    client
        .get_kubeconfig_access(with_key(
            GetKubeconfigAccessRequest {
                uid: uid.to_owned(),
            },
            KEY,
        ))
        .await
        .expect("access")
        .into_inner()
        .access
        .expect("access")
        .problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_served_broken_edits_are_not_and_deletes_are_404() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let file = fixture.inventory().join("no-oidc-direct.yaml");
    let original = std::fs::read_to_string(&file).expect("read");
    assert!(
        server_of(&server, UID)
            .await
            .expect("served")
            .contains("https://10.0.0.4:6443")
    );

    // 1. A good edit is served within 2 s.
    std::fs::write(
        &file,
        original.replace("https://10.0.0.4:6443", "https://10.9.9.9:6443"),
    )
    .expect("write");
    let changed = eventually(Duration::from_secs(2), || async {
        server_of(&server, UID)
            .await
            .is_ok_and(|yaml| yaml.contains("https://10.9.9.9:6443"))
    })
    .await;
    assert!(
        changed,
        "edit not served within 2 s:\n{}",
        server.log_text()
    );

    // 2. A broken edit (YAML syntax) keeps the previous version and is reported with file and line.
    std::fs::write(
        &file,
        original.replace("name: no-oidc-direct", "name: [unclosed"),
    )
    .expect("write");
    let reported = eventually(Duration::from_secs(2), || async {
        problems_of(&server, UID)
            .await
            .iter()
            .any(|p| p.contains("no-oidc-direct.yaml: line ") && p.contains("not applied"))
    })
    .await;
    assert!(reported, "broken edit not reported:\n{}", server.log_text());
    assert!(
        server_of(&server, UID)
            .await
            .expect("still served")
            .contains("https://10.9.9.9:6443")
    );
    assert!(
        server.log_text().contains("no-oidc-direct.yaml: line "),
        "log names file and line"
    );

    // 3. A broken edit of the content (key does not match certificate) also keeps the old version.
    std::fs::write(
        &file,
        original
            .replace("pki/admin-rsa.crt", "pki/proxy-ca.crt")
            .replace("https://10.0.0.4:6443", "https://10.8.8.8:6443"),
    )
    .expect("write");
    let reported = eventually(Duration::from_secs(2), || async {
        server
            .log_text()
            .contains("does not belong to the private key")
    })
    .await;
    assert!(reported, "content error not logged:\n{}", server.log_text());
    assert!(
        server_of(&server, UID)
            .await
            .expect("still served")
            .contains("https://10.9.9.9:6443")
    );

    // 4. Deleting the file makes the cluster 404; the others are unaffected.
    std::fs::remove_file(&file).expect("delete");
    let gone = eventually(Duration::from_secs(2), || async {
        server_of(&server, UID).await == Err(tonic::Code::NotFound)
    })
    .await;
    assert!(gone, "deleted cluster still served:\n{}", server.log_text());
    assert!(
        server_of(&server, OTHER).await.is_ok(),
        "other clusters unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_tenant_edit_keeps_the_last_good_tenant() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let tenant = std::fs::read_to_string(fixture.tenant()).expect("read");
    std::fs::write(
        fixture.tenant(),
        tenant.replace(
            "role: Cluster Admin\n    project: platform",
            "role: Cluster Boss\n    project: platform",
        ),
    )
    .expect("write");
    let reported = eventually(Duration::from_secs(2), || async {
        server.log_text().contains("bindings[0].role: unknown role")
    })
    .await;
    assert!(
        reported,
        "tenant problem not logged:\n{}",
        server.log_text()
    );
    assert!(
        server_of(&server, UID).await.is_ok(),
        "the last good tenant still grants access"
    );
    let problems = problems_of(&server, UID).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("tenant file") && p.contains("unknown role")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_bad_cluster_is_unavailable_on_its_own() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let good = std::fs::read_to_string(fixture.inventory().join("oidc-direct.yaml")).expect("read");
    let bad = good
        .replace("00000000000000000000aa03", "00000000000000000000bb01")
        .replace("name: oidc-direct", "name: bad-macro")
        .replace("extraArgs.oidc-client-id }}", "extraArgs.oidc-client }}");
    std::fs::write(fixture.inventory().join("bad-macro.yaml"), bad).expect("write");
    let unavailable = eventually(Duration::from_secs(2), || async {
        server_of(&server, "00000000000000000000bb01").await == Err(tonic::Code::Unavailable)
    })
    .await;
    assert!(unavailable, "bad cluster not 503:\n{}", server.log_text());
    let mut client = server.client().await.expect("client");
    let status = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: "00000000000000000000bb01".to_owned(),
                frp: None,
            },
            KEY,
        ))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("oidc-client` is not in the pack values"),
        "{}",
        status.message()
    );
    // Invisible to a user without access: 404, not 503.
    let status = client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: "00000000000000000000bb01".to_owned(),
                frp: None,
            },
            "matrix-no-access",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(server_of(&server, OTHER).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_referenced_file_is_served_within_2_s() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let before = server_of(&server, UID).await.expect("served");
    let pki = fixture.inventory().join("pki");
    // Rotate the cluster CA file the record refers to (`certificateAuthorityFile: pki/ca.crt`).
    std::fs::copy(pki.join("proxy-ca.crt"), pki.join("ca.crt")).expect("rotate");
    let changed = eventually(Duration::from_secs(2), || async {
        server_of(&server, UID)
            .await
            .is_ok_and(|yaml| yaml != before)
    })
    .await;
    assert!(
        changed,
        "rotated CA file not served within 2 s:\n{}",
        server.log_text()
    );
}
