"""The real Go grpcurl against the server: reflection, describe, a kubeconfig, health."""

import json
import subprocess


def run(*args):
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    return result.returncode, result.stdout, result.stderr


def test_lists_services_through_reflection(grpcurl, demo):
    code, out, err = run(grpcurl, "-plaintext", demo.grpc, "list")
    assert code == 0, err
    services = out.split()
    assert "kubeconfig.v1.KubeconfigService" in services
    assert "grpc.health.v1.Health" in services


def test_describes_the_service_with_http_annotations(grpcurl, demo):
    code, out, err = run(grpcurl, "-plaintext", demo.grpc, "describe", "kubeconfig.v1.KubeconfigService")
    assert code == 0, err
    for rpc in ["GetKubeconfig", "GetAdminKubeconfig", "GetKubeconfigAccess", "ListClusters"]:
        assert f"rpc {rpc} " in out
    assert "/v1/spectroclusters/{uid}/assets/kubeconfig" in out
    assert "/v1/spectroclusters/{uid}/assets/adminKubeconfig" in out


def test_gets_a_kubeconfig_with_an_api_key(grpcurl, demo):
    code, out, err = run(
        grpcurl, "-plaintext", "-H", "apikey: demo-viewer-key",
        "-d", '{"uid": "6470a2b1c5e6f1a2b3c4d5e2"}',
        demo.grpc, "kubeconfig.v1.KubeconfigService/GetKubeconfig",
    )
    assert code == 0, err
    kubeconfig = json.loads(out)["kubeconfig"]
    assert kubeconfig["fileName"] == "edge-store-42.kubeconfig"
    assert kubeconfig["authKind"] == "AUTH_KIND_OIDC"
    assert "server: https://192.168.42.10:6443" in kubeconfig["yaml"]


def test_denial_and_bad_key(grpcurl, demo):
    code, _, err = run(
        grpcurl, "-plaintext", "-H", "apikey: demo-viewer-key", "-d", '{"uid": "6470a2b1c5e6f1a2b3c4d5e1"}',
        demo.grpc, "kubeconfig.v1.KubeconfigService/GetAdminKubeconfig",
    )
    assert code != 0
    assert "PermissionDenied" in err and "cluster.delete" in err
    # The google.rpc.ErrorInfo detail is decodable through reflection.
    assert '"reason":"OperationForbidden"' in err and '"denyReason":"CLUSTER_DELETE_REQUIRED"' in err
    code, _, err = run(
        grpcurl, "-plaintext", "-H", "apikey: nope", "-d", '{"uid": "6470a2b1c5e6f1a2b3c4d5e1"}',
        demo.grpc, "kubeconfig.v1.KubeconfigService/GetKubeconfig",
    )
    assert code != 0 and "Unauthenticated" in err


def test_health_is_serving(grpcurl, demo):
    for service in ["", "kubeconfig.v1.KubeconfigService"]:
        code, out, err = run(grpcurl, "-plaintext", "-d", json.dumps({"service": service}), demo.grpc, "grpc.health.v1.Health/Check")
        assert code == 0, err
        assert json.loads(out)["status"] == "SERVING"


def test_watch_streams_events_as_they_come(grpcurl, demo):
    # grpcurl prints each message of a server stream as it arrives; -max-time ends the watch.
    result = subprocess.run(
        [grpcurl, "-plaintext", "-max-time", "2", "-H", "apikey: demo-viewer-key",
         "-d", '{"cluster_uids": ["6470a2b1c5e6f1a2b3c4d5e2"]}',
         demo.grpc, "kubeconfig.v1.KubeconfigService/WatchKubeconfigs"],
        capture_output=True, text=True, timeout=30,
    )
    # The stream is cut by -max-time, which grpcurl reports as DeadlineExceeded.
    assert "DeadlineExceeded" in result.stderr, result.stderr
    events = [json.loads(chunk) for chunk in result.stdout.replace("}\n{", "}\x00{").split("\x00") if chunk.strip()]
    assert [e["type"] for e in events] == ["TYPE_UPSERT", "TYPE_SYNCED"]
    assert events[0]["kubeconfig"]["fileName"] == "edge-store-42.kubeconfig"
