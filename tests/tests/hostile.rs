//! Hostile inventories against the real binary: a macro expansion bomb, references that leave the
//! inventory, special files, a second file claiming a served uid, and what low-privilege callers may
//! learn about problems. Each case fails on a server without the matching defence.

use std::time::{Duration, Instant};

use kubeconfig_proto::kubeconfig::v1::{
    GetAdminKubeconfigRequest, GetKubeconfigAccessRequest, GetKubeconfigRequest,
};
use kubeconfigd_e2e::{Fixture, Server, eventually, with_key};

const ADMIN: &str = "matrix-cluster-admin";
const VIEWER: &str = "matrix-cluster-viewer";
/// A cluster of the matrix fixture that the hostile files do not touch (`oidc-direct.yaml`).
const STEADY: &str = "00000000000000000000aa03";
const STEADY_FILE: &str = "oidc-direct.yaml";
const TEMPLATE: &str = "no-oidc-direct.yaml";
const TEMPLATE_UID: &str = "00000000000000000000aa04";

/// A copy of the template cluster file with another uid and name, and `edit` applied.
fn cluster_file(fixture: &Fixture, uid: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(fixture.inventory().join(TEMPLATE)).expect("template");
    edit(
        text.replace(TEMPLATE_UID, uid)
            .replace("name: no-oidc-direct", &format!("name: c-{uid}")),
    )
}

async fn access(
    server: &Server,
    uid: &str,
    key: &str,
) -> Result<(Vec<String>, String), tonic::Code> {
    let mut client = server.client().await.expect("client");
    client
        .get_kubeconfig_access(with_key(
            GetKubeconfigAccessRequest {
                uid: uid.to_owned(),
            },
            key,
        ))
        .await
        .map(|r| {
            let access = r.into_inner().access.expect("access");
            let message = access.kubeconfig.map(|k| k.message).unwrap_or_default();
            (access.problems, message)
        })
        .map_err(|s| s.code())
}

async fn admin_file(server: &Server, uid: &str) -> Result<String, tonic::Status> {
    let mut client = server.client().await.expect("client");
    client
        .get_admin_kubeconfig(with_key(
            GetAdminKubeconfigRequest {
                uid: uid.to_owned(),
            },
            ADMIN,
        ))
        .await
        .map(|r| r.into_inner().kubeconfig.expect("kubeconfig").yaml)
}

async fn kubeconfig_ok(server: &Server, uid: &str) -> bool {
    let mut client = server.client().await.expect("client");
    client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: uid.to_owned(),
                frp: None,
            },
            ADMIN,
        ))
        .await
        .is_ok()
}

/// Waits until the cluster's problems (as its admin sees them) contain every one of `needles`.
async fn reported(server: &Server, uid: &str, needles: &[&str]) -> bool {
    eventually(Duration::from_secs(3), || async {
        access(server, uid, ADMIN).await.is_ok_and(|(problems, _)| {
            needles
                .iter()
                .all(|n| problems.iter().any(|p| p.contains(n)))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_macro_expansion_bomb_makes_one_cluster_unavailable_and_slows_nothing() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let uid = "00000000000000000000bb01";
    // 11 KB: thirty references per level, seven levels; 30^7 copies of 32 bytes when expanded naively.
    let mut values = String::from("    l0: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'\n");
    for level in 1..=7 {
        let refs = format!("{{{{ .spectro.pack.kubernetes.l{} }}}}", level - 1).repeat(30);
        values.push_str(&format!("    l{level}: '{refs}'\n"));
    }
    let bomb = cluster_file(&fixture, uid, |text| {
        text.replace(
            "oidc-issuer-url: \"https://idp.matrix.test/realms/platform\"",
            "oidc-issuer-url: \"{{ .spectro.pack.kubernetes.l7 }}\"",
        ) + &values
    });
    assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());
    let started = Instant::now();
    std::fs::write(fixture.inventory().join("bomb.yaml"), bomb).expect("write");
    assert!(
        reported(
            &server,
            uid,
            &["kubernetesPack.values", "oidc-issuer-url", "more than"]
        )
        .await,
        "bomb not reported:\n{}",
        server.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        admin_file(&server, uid).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    // Everything else is served, and later edits still apply.
    assert!(kubeconfig_ok(&server, STEADY).await);
    let other = fixture.inventory().join(STEADY_FILE);
    let text = std::fs::read_to_string(&other).expect("read");
    std::fs::write(
        &other,
        text.replace("https://10.0.0.3:6443", "https://10.0.0.33:6443"),
    )
    .expect("write");
    assert!(
        eventually(Duration::from_secs(2), || async {
            admin_file(&server, STEADY)
                .await
                .is_ok_and(|y| y.contains("10.0.0.33"))
        })
        .await,
        "a later edit was not applied:\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_stay_inside_the_inventory_but_secret_volumes_work() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let outside = inventory.parent().expect("parent").join("server-secret");
    std::fs::write(&outside, "the-server-jwt-secret\n").expect("write");
    std::os::unix::fs::symlink(&outside, inventory.join("pki/escape")).expect("symlink");
    let token_file = |uid: &str, reference: &str| {
        cluster_file(&fixture, uid, |text| {
            text.replace(
                "  clientCertificateFile: pki/admin-rsa.crt\n  clientKeyFile: pki/admin-rsa.key\n",
                &format!("  tokenFile: {reference}\n"),
            )
        })
    };
    let cases = [
        (
            "00000000000000000000bb02",
            "../server-secret".to_owned(),
            "outside the inventory",
        ),
        (
            "00000000000000000000bb03",
            outside.display().to_string(),
            "absolute path",
        ),
        (
            "00000000000000000000bb04",
            "pki/escape".to_owned(),
            "outside the inventory",
        ),
    ];
    // A Kubernetes Secret volume: `ca.crt -> ..data/ca.crt`, `..data -> ..2026_11_28_00_00_00.1`.
    let volume = inventory.join("volume");
    std::fs::create_dir_all(volume.join("..2026_11_28_00_00_00.1")).expect("mkdir");
    std::fs::copy(
        inventory.join("pki/ca.crt"),
        volume.join("..2026_11_28_00_00_00.1/ca.crt"),
    )
    .expect("copy");
    std::os::unix::fs::symlink("..2026_11_28_00_00_00.1", volume.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/ca.crt", volume.join("ca.crt")).expect("symlink");
    let volume_uid = "00000000000000000000bb05";
    std::fs::write(
        inventory.join("volume-ca.yaml"),
        cluster_file(&fixture, volume_uid, |t| {
            t.replace(
                "certificateAuthorityFile: pki/ca.crt",
                "certificateAuthorityFile: volume/ca.crt",
            )
        }),
    )
    .expect("write");
    for (uid, reference, _) in &cases {
        std::fs::write(
            inventory.join(format!("{uid}.yaml")),
            token_file(uid, reference),
        )
        .expect("write");
    }
    let server = Server::start(&fixture.args()).await.expect("server");
    for (uid, reference, why) in &cases {
        // The file yields no cluster; the log names the file, the field and why.
        let log = server.log_text();
        assert!(
            log.lines().any(|l| l.contains(&format!("{uid}.yaml"))
                && l.contains("admin.tokenFile")
                && l.contains(why)),
            "{reference}:\n{log}"
        );
        let error = admin_file(&server, uid).await.expect_err("never served");
        assert_eq!(error.code(), tonic::Code::NotFound, "{reference}");
    }
    assert!(
        admin_file(&server, volume_uid).await.is_ok(),
        "a Secret-volume reference is served:\n{}",
        server.log_text()
    );
    assert!(!server.log_text().contains("the-server-jwt-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_are_refused_and_never_stall_reloads() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let fifo = inventory.join("pki/fifo.key");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let uid = "00000000000000000000bb06";
    std::fs::write(
        inventory.join("fifo.yaml"),
        cluster_file(&fixture, uid, |t| {
            t.replace(
                "clientKeyFile: pki/admin-rsa.key",
                "clientKeyFile: pki/fifo.key",
            )
        }),
    )
    .expect("write");
    let refused = eventually(Duration::from_secs(3), || async {
        server.log_text().lines().any(|l| {
            l.contains("fifo.yaml")
                && l.contains("admin.clientKeyFile")
                && l.contains("not a regular file")
        })
    })
    .await;
    assert!(refused, "{}", server.log_text());
    assert_eq!(
        admin_file(&server, uid)
            .await
            .expect_err("never served")
            .code(),
        tonic::Code::NotFound
    );
    // Reloads go on: an edit elsewhere is applied.
    let other = inventory.join(STEADY_FILE);
    let text = std::fs::read_to_string(&other).expect("read");
    std::fs::write(
        &other,
        text.replace("https://10.0.0.3:6443", "https://10.0.0.34:6443"),
    )
    .expect("write");
    assert!(
        eventually(Duration::from_secs(2), || async {
            admin_file(&server, STEADY)
                .await
                .is_ok_and(|y| y.contains("10.0.0.34"))
        })
        .await,
        "reloads stalled:\n{}",
        server.log_text()
    );
    // A cluster file that is itself a FIFO, or a link to /dev/zero, is skipped or refused.
    assert!(
        std::process::Command::new("mkfifo")
            .arg(inventory.join("pipe.yaml"))
            .status()
            .expect("mkfifo")
            .success()
    );
    std::os::unix::fs::symlink("/dev/zero", inventory.join("zero.yaml")).expect("symlink");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(kubeconfig_ok(&server, STEADY).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_file_never_takes_over_a_served_uid() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let original = admin_file(&server, TEMPLATE_UID).await.expect("served");
    assert!(original.contains("10.0.0.4:6443"));
    // A newcomer whose name sorts first, claiming the same uid with another API server.
    let intruder = std::fs::read_to_string(inventory.join(TEMPLATE))
        .expect("read")
        .replace(
            "https://10.0.0.4:6443",
            "https://attacker.example.test:6443",
        );
    std::fs::write(inventory.join("aaa-intruder.yaml"), intruder).expect("write");
    assert!(
        reported(
            &server,
            TEMPLATE_UID,
            &["aaa-intruder.yaml", "already served from"]
        )
        .await,
        "{:?}\n{}",
        access(&server, TEMPLATE_UID, ADMIN).await,
        server.log_text()
    );
    assert_eq!(
        admin_file(&server, TEMPLATE_UID).await.expect("served"),
        original
    );
    assert!(server.log_text().contains("aaa-intruder.yaml"));
    drop(server);

    // At start nobody served it before: every claimant is refused, naming the files.
    let restarted = Server::start(&fixture.args()).await.expect("server");
    let error = admin_file(&restarted, TEMPLATE_UID)
        .await
        .expect_err("unavailable");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("aaa-intruder.yaml") && error.message().contains(TEMPLATE),
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_details_only_for_those_who_may_download_the_admin_kubeconfig() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let broken = cluster_file(&fixture, "00000000000000000000bb07", |t| {
        t.replace(
            "apiServer: https://10.0.0.4:6443",
            "apiServer: http://10.0.0.4:6443",
        )
    });
    let server = Server::start(&fixture.args()).await.expect("server");
    let file = fixture.inventory().join(TEMPLATE);
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace("name: no-oidc-direct", "name: [unclosed"),
    )
    .expect("write");
    assert!(reported(&server, TEMPLATE_UID, &[TEMPLATE, "line "]).await);
    let (problems, _) = access(&server, TEMPLATE_UID, VIEWER)
        .await
        .expect("visible");
    assert_eq!(problems, vec!["EDIT_NOT_APPLIED".to_owned()]);

    // An unusable record: the admin learns which field, the viewer only that it is unavailable.
    std::fs::write(fixture.inventory().join("broken.yaml"), broken).expect("write");
    assert!(
        reported(&server, "00000000000000000000bb07", &["apiServer"]).await,
        "{:?}\n{}",
        access(&server, "00000000000000000000bb07", ADMIN).await,
        server.log_text()
    );
    let (problems, message) = access(&server, "00000000000000000000bb07", VIEWER)
        .await
        .expect("visible");
    assert_eq!(problems, vec!["CLUSTER_UNAVAILABLE".to_owned()]);
    assert!(
        !message.contains("apiServer") && !message.contains("http:"),
        "{message}"
    );
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/spectroclusters/00000000000000000000bb07/assets/kubeconfig",
            server.rest_url()
        ))
        .header("ApiKey", VIEWER)
        .send()
        .await
        .expect("REST");
    assert_eq!(response.status().as_u16(), 503);
    let body = response.text().await.expect("body");
    assert!(
        body.contains("CLUSTER_UNAVAILABLE") && !body.contains("apiServer"),
        "{body}"
    );
}
