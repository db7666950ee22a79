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
        server
            .logged(|l| l.contains("no-oidc-direct.yaml: line "))
            .await,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_directory_made_after_start_is_watched() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    let server = Server::start(&fixture.args()).await.expect("server");
    let before = server_of(&server, UID).await.expect("served");
    // A directory that did not exist at start, and a cluster file moved over to a CA file in it.
    let late = inventory.join("late");
    std::fs::create_dir(&late).expect("mkdir");
    std::fs::copy(inventory.join("pki/ca.crt"), late.join("ca.crt")).expect("copy");
    let file = inventory.join("no-oidc-direct.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace(
            "certificateAuthorityFile: pki/ca.crt",
            "certificateAuthorityFile: late/ca.crt",
        )
        .replace("10.0.0.4:6443", "10.0.0.41:6443"),
    )
    .expect("write");
    assert!(
        eventually(Duration::from_secs(2), || async {
            server_of(&server, UID)
                .await
                .is_ok_and(|y| y.contains("10.0.0.41"))
        })
        .await,
        "the edit was not served within 2 s:\n{}",
        server.log_text()
    );
    // Its CA rotated in place: seen through the new directory's own watch, well before a rescan.
    std::fs::copy(inventory.join("pki/proxy-ca.crt"), late.join("ca.crt")).expect("rotate");
    let old_ca = ca_data(&before);
    assert!(
        !old_ca.is_empty(),
        "no certificate-authority-data in:\n{before}"
    );
    let rotated = eventually(Duration::from_secs(2), || async {
        server_of(&server, UID)
            .await
            .is_ok_and(|y| y.contains("10.0.0.41") && ca_data(&y) != old_ca)
    })
    .await;
    assert!(
        rotated,
        "a CA rotated in a directory made after start was not served within 2 s:\n{}",
        server.log_text()
    );
}

/// The `certificate-authority-data` value of a kubeconfig.
fn ca_data(yaml: &str) -> String {
    yaml.lines()
        .find_map(|line| line.trim().strip_prefix("certificate-authority-data: "))
        .unwrap_or_default()
        .to_owned()
}

/// `kubeconfigd_inventory_files_parsed_total` now.
async fn parsed(server: &Server) -> f64 {
    kubeconfigd_e2e::metrics(server).await.expect("metrics")["kubeconfigd_inventory_files_parsed_total"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edit_reads_one_file_and_a_key_file_only_its_referrers() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    // Two clusters that refer to a CA file no other cluster uses.
    std::fs::create_dir_all(inventory.join("extra")).expect("mkdir");
    std::fs::copy(inventory.join("pki/ca.crt"), inventory.join("extra/ca.crt")).expect("copy");
    let template = std::fs::read_to_string(inventory.join("no-oidc-direct.yaml")).expect("read");
    for n in 1..=2 {
        let uid = format!("00000000000000000000cc0{n}");
        std::fs::write(
            inventory.join(format!("extra-{n}.yaml")),
            template
                .replace(UID, &uid)
                .replace("name: no-oidc-direct", &format!("name: extra-{n}"))
                .replace(
                    "certificateAuthorityFile: pki/ca.crt",
                    "certificateAuthorityFile: extra/ca.crt",
                ),
        )
        .expect("write");
    }
    let server = Server::start(&fixture.args()).await.expect("server");
    assert_eq!(
        parsed(&server).await,
        6.0,
        "the first load reads every file once"
    );

    let file = inventory.join("no-oidc-direct.yaml");
    std::fs::write(&file, template.replace("10.0.0.4:6443", "10.0.0.40:6443")).expect("write");
    assert!(
        eventually(Duration::from_secs(1), || async {
            server_of(&server, UID)
                .await
                .is_ok_and(|y| y.contains("10.0.0.40"))
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(parsed(&server).await, 7.0, "one edit, one file read");

    let pem = std::fs::read_to_string(inventory.join("extra/ca.crt")).expect("read");
    std::fs::write(inventory.join("extra/ca.crt"), format!("{pem}\n")).expect("write");
    assert!(
        eventually(Duration::from_secs(2), || async {
            parsed(&server).await >= 9.0
        })
        .await,
        "both referrers read again"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(parsed(&server).await, 9.0, "and nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_swap_and_a_recreated_directory_are_picked_up() {
    use std::os::unix::fs::symlink;
    let fixture = Fixture::matrix("seed").expect("fixture");
    let inventory = fixture.inventory();
    // A Kubernetes Secret volume inside the inventory: vol/ca.crt -> ..data/ca.crt -> ..v1/ca.crt.
    let volume = inventory.join("vol");
    std::fs::create_dir_all(volume.join("..v1")).expect("mkdir");
    std::fs::copy(inventory.join("pki/ca.crt"), volume.join("..v1/ca.crt")).expect("copy");
    symlink("..v1", volume.join("..data")).expect("symlink");
    symlink("..data/ca.crt", volume.join("ca.crt")).expect("symlink");
    let file = inventory.join("no-oidc-direct.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(
        &file,
        text.replace(
            "certificateAuthorityFile: pki/ca.crt",
            "certificateAuthorityFile: vol/ca.crt",
        ),
    )
    .expect("write");
    let server = Server::start(&fixture.args()).await.expect("server");
    let before = server_of(&server, UID).await.expect("served");

    // kubelet's update: a new timestamped directory, a new link, renamed over `..data`.
    std::fs::create_dir_all(volume.join("..v2")).expect("mkdir");
    std::fs::copy(
        inventory.join("pki/proxy-ca.crt"),
        volume.join("..v2/ca.crt"),
    )
    .expect("copy");
    symlink("..v2", volume.join("..data_tmp")).expect("symlink");
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("rename");
    std::fs::remove_dir_all(volume.join("..v1")).expect("remove");
    let swapped = eventually(Duration::from_secs(1), || async {
        server_of(&server, UID).await.is_ok_and(|y| y != before)
    })
    .await;
    assert!(
        swapped,
        "the swap was not picked up within 1 s:\n{}",
        server.log_text()
    );

    // The whole directory deleted and recreated (with an edit): served within 1 s of its return, and
    // the clusters keep serving while it is gone.
    let moved = fixture.inventory().with_file_name("inventory.old");
    std::fs::rename(&inventory, &moved).expect("move away");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server_of(&server, OTHER).await.is_ok(),
        "served while the directory is gone"
    );
    let staging = fixture.inventory().with_file_name("staging");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&moved)
        .arg(&staging)
        .status()
        .expect("cp");
    let staged = staging.join("oidc-direct.yaml");
    let other = std::fs::read_to_string(&staged).expect("read");
    std::fs::write(&staged, other.replace("10.0.0.3:6443", "10.0.0.30:6443")).expect("write");
    std::fs::rename(&staging, &inventory).expect("recreate");
    let back = eventually(Duration::from_secs(1), || async {
        server_of(&server, OTHER)
            .await
            .is_ok_and(|y| y.contains("10.0.0.30"))
    })
    .await;
    assert!(
        back,
        "the recreated directory was not picked up within 1 s:\n{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_neither_repeat_nor_skip_across_an_add_and_a_remove() {
    use kubeconfig_proto::kubeconfig::v1::ListClustersRequest;
    let fixture = Fixture::matrix("seed").expect("fixture");
    let server = Server::start(&fixture.args()).await.expect("server");
    let client = server.client().await.expect("client");
    let page = |token: String| {
        let mut client = client.clone();
        async move {
            client
                .list_clusters(with_key(
                    ListClustersRequest {
                        page_size: 2,
                        page_token: token,
                    },
                    KEY,
                ))
                .await
                .expect("list")
                .into_inner()
        }
    };
    let first = page(String::new()).await;
    let first_uids: Vec<String> = first.clusters.iter().map(|c| c.uid.clone()).collect();
    assert_eq!(
        first_uids,
        ["00000000000000000000aa01", "00000000000000000000aa02"]
    );
    // Between pages: a cluster added before the token, and one after it removed.
    let inventory = fixture.inventory();
    let text = std::fs::read_to_string(inventory.join("no-oidc-direct.yaml")).expect("read");
    std::fs::write(
        inventory.join("early.yaml"),
        text.replace(UID, "00000000000000000000aa00")
            .replace("name: no-oidc-direct", "name: early"),
    )
    .expect("write");
    std::fs::remove_file(inventory.join("oidc-direct.yaml")).expect("remove");
    assert!(
        eventually(Duration::from_secs(2), || async {
            server_of(&server, "00000000000000000000aa00").await.is_ok()
                && server_of(&server, OTHER).await == Err(tonic::Code::NotFound)
        })
        .await
    );
    let second = page(first.next_page_token.clone()).await;
    let second_uids: Vec<String> = second.clusters.iter().map(|c| c.uid.clone()).collect();
    assert_eq!(
        second_uids,
        [UID],
        "after the token: aa03 is gone, aa04 follows, nothing repeats"
    );
    assert!(second.next_page_token.is_empty());
}

/// A long first load (thousands of files) is watched from outside: meanwhile the process is alive
/// (`/healthz` 200, so a liveness probe does not kill a pod on a slow volume), not ready (`/readyz`
/// 503, so no traffic is routed to it) and refuses downloads as unavailable (503) rather than
/// leaving them hanging or answering 404 for a cluster it has not read yet; then it is ready and
/// serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_first_load_is_alive_not_ready_and_answers_503() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let template =
        std::fs::read_to_string(fixture.inventory().join("oidc-direct.yaml")).expect("read");
    assert!(template.contains(OTHER), "the template holds its uid");
    for i in 0..3000 {
        let uid = format!("cc{i:022}");
        std::fs::write(
            fixture.inventory().join(format!("copy-{i:05}.yaml")),
            template.replace(OTHER, &uid),
        )
        .expect("write");
    }
    let mut server = Server::spawn_loading(&fixture.args()).expect("spawn");
    let client = reqwest::Client::new();
    let status = |path: String, key: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut request = client.get(path).timeout(Duration::from_secs(2));
            if let Some(key) = key {
                request = request.header("ApiKey", key);
            }
            request.send().await.map(|r| r.status().as_u16()).ok()
        }
    };
    let (mut seen_loading, mut ready) = (false, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let readyz = status(format!("{}/readyz", server.admin_url()), None).await;
        let healthz = status(format!("{}/healthz", server.admin_url()), None).await;
        let download = status(
            format!(
                "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
                server.rest_url()
            ),
            Some(KEY),
        )
        .await;
        match (readyz, healthz, download) {
            // A listener not bound yet (they are bound one after another at start).
            (None, _, _) | (_, None, _) | (_, _, None) => {}
            (Some(503), Some(200), Some(503)) => {
                seen_loading = true;
                // The probe says why it is not ready (the load may have ended since the last poll).
                if let Ok(response) = client
                    .get(format!("{}/readyz", server.admin_url()))
                    .send()
                    .await
                    && response.status() == 503
                {
                    let body = response.text().await.unwrap_or_default();
                    assert!(
                        body.starts_with("loading the inventory") || body.starts_with("not ready"),
                        "/readyz while loading: {body}"
                    );
                }
            }
            // The load finished between the two polls: the snapshot is in service a moment before
            // readiness turns on.
            (Some(503), Some(200), Some(200)) if seen_loading => {}
            (Some(200), Some(200), _) => {
                ready = true;
                break;
            }
            other => panic!(
                "while loading: (readyz, healthz, download) = {other:?}\n{}",
                server.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "not ready within 60 s:\n{}", server.log_text());
    assert!(
        seen_loading,
        "the load finished before it could be observed (make it longer):\n{}",
        server.log_text()
    );
    server.wait_until_ready().await.expect("ready");
    let served = status(
        format!(
            "{}/v1/spectroclusters/{UID}/assets/kubeconfig",
            server.rest_url()
        ),
        Some(KEY),
    )
    .await;
    assert_eq!(served, Some(200));
}
