//! The example Kubernetes manifest passes flags this binary accepts, and its probes and ports match them.

use clap::Parser as _;
use kubeconfigd::config::Args;
use serde::Deserialize as _;

#[test]
fn the_example_deployment_uses_flags_that_parse() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/kubernetes/kubeconfigd.yaml"
    );
    let text = std::fs::read_to_string(path).expect("manifest");
    let documents: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|document| serde_norway::Value::deserialize(document).expect("valid YAML"))
        .collect();
    let deployment = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string").to_owned())
        .collect();
    let parsed = Args::try_parse_from(std::iter::once("kubeconfigd".to_owned()).chain(args))
        .expect("the manifest's flags parse");
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().expect("port"))
        .collect();
    assert!(
        ports.contains(&u64::from(parsed.grpc_addr().port())),
        "gRPC port exposed"
    );
    assert!(
        ports.contains(&u64::from(parsed.rest_addr().port())),
        "REST port exposed"
    );
    assert!(
        ports.contains(&u64::from(parsed.admin_addr().port())),
        "admin port exposed"
    );
    let admin_port_name = container["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(parsed.admin_addr().port())))
        .and_then(|p| p["name"].as_str())
        .expect("the admin port has a name");
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(
            container[probe]["httpGet"]["port"], admin_port_name,
            "{probe}"
        );
    }
    assert!(
        documents.iter().any(|d| d["kind"] == "PodDisruptionBudget"),
        "a PodDisruptionBudget"
    );
}
