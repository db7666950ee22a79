//! `kubeconfigd check` and `kubeconfigd hash-key`, run as an operator would, against what the server
//! itself does with the same files.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};

use kubeconfig_proto::kubeconfig::v1::GetKubeconfigRequest;
use kubeconfigd_e2e::{Fixture, Server, binary, with_key};

fn check(fixture: &Fixture) -> (bool, BTreeSet<String>) {
    let output = Command::new(binary().expect("binary"))
        .arg("check")
        .arg("--inventory")
        .arg(fixture.inventory())
        .arg("--tenant")
        .arg(fixture.tenant())
        .output()
        .expect("run check");
    let problems = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (output.status.success(), problems)
}

#[tokio::test]
async fn check_reports_exactly_what_the_server_reports() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    assert_eq!(check(&fixture), (true, BTreeSet::new()), "a clean fixture");

    let inventory = fixture.inventory();
    let good = std::fs::read_to_string(inventory.join("no-oidc-direct.yaml")).expect("read");
    let uid = "00000000000000000000aa04";
    std::fs::write(
        inventory.join("zz-broken.yaml"),
        "uid: x\nname: [unclosed\n",
    )
    .expect("write");
    std::fs::write(
        inventory.join("zz-project.yaml"),
        good.replace(uid, "00000000000000000000bb01")
            .replace("project: platform", "project: nowhere"),
    )
    .expect("write");
    std::fs::write(inventory.join("zz-duplicate.yaml"), &good).expect("write");
    // A special file where a cluster file should be: refused, without blocking.
    let fifo = Command::new("mkfifo")
        .arg(inventory.join("zz-fifo.yaml"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    std::fs::write(
        inventory.join("zz-escape.yaml"),
        good.replace(uid, "00000000000000000000bb02").replace(
            "certificateAuthorityFile: pki/ca.crt",
            "certificateAuthorityFile: ../tenant.yaml",
        ),
    )
    .expect("write");

    let (ok, problems) = check(&fixture);
    assert!(!ok);
    for needle in [
        "zz-broken.yaml: line 2",
        "zz-project.yaml: project: \"nowhere\"",
        "zz-duplicate.yaml",
        "zz-escape.yaml: certificateAuthorityFile",
        "zz-fifo.yaml",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle} not in {problems:#?}"
        );
    }

    // The server, started on the same files, logs the same problems.
    let mut args = fixture.args();
    args.extend(["--log-format".to_owned(), "json".to_owned()]);
    let server = Server::start(&args).await.expect("server");
    let logged: BTreeSet<String> = server
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "file not applied")
        .filter_map(|line| line["problem"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(problems, logged);
    drop(server);

    // A tenant file the server cannot start with: check says so, naming file and line.
    std::fs::write(fixture.tenant(), "tenant: acme\nprojects: [unclosed\n").expect("write");
    let (ok, problems) = check(&fixture);
    assert!(!ok);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("tenant.yaml") && p.contains("line 2")),
        "{problems:#?}"
    );
}

/// `kubeconfigd hash-key` with `input` on standard input.
fn hash_key(input: &[u8]) -> std::process::Output {
    let mut child = Command::new(binary().expect("binary"))
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hash-key");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    child.wait_with_output().expect("output")
}

#[tokio::test]
async fn hash_key_output_is_accepted_by_the_server() {
    let fixture = Fixture::matrix("seed").expect("fixture");
    let output = hash_key(b"a-brand-new-key-0042\n");
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).expect("utf8");
    let line = line.trim();
    assert!(
        line.starts_with("sha256:") && line.len() == 7 + 64,
        "{line}"
    );

    // The line goes under the cluster admin's apiKeys; the new key then works.
    let tenant = std::fs::read_to_string(fixture.tenant()).expect("tenant");
    let tenant = tenant.replacen(
        "  - email: cluster-admin@matrix.test\n    apiKeys:\n",
        &format!("  - email: cluster-admin@matrix.test\n    apiKeys:\n      - {line}\n"),
        1,
    );
    std::fs::write(fixture.tenant(), tenant).expect("write");
    let server = Server::start(&fixture.args()).await.expect("server");
    let mut client = server.client().await.expect("client");
    client
        .get_kubeconfig(with_key(
            GetKubeconfigRequest {
                uid: "00000000000000000000aa04".to_owned(),
                frp: None,
            },
            "a-brand-new-key-0042",
        ))
        .await
        .expect("the new key is accepted");

    // Whitespace inside a key is refused with a message.
    let output = hash_key(b"two words\n");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("visible ASCII"));
}
