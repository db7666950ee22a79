"""Serving TLS: grpcurl, grpcio and an HTTPS client verify the server against the test CA; plaintext is
refused; a bad certificate file stops the service at start with the flag named."""

import http.client
import json
import subprocess
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import TLS, Server, binary


@pytest.fixture(scope="module")
def tls_demo():
    server = Server(["--demo"], tls=True)
    yield server
    server.stop()


def test_grpcurl_over_tls(grpcurl, tls_demo):
    result = subprocess.run(
        [grpcurl, "-cacert", str(TLS / "ca.crt"), "-H", "apikey: demo-viewer-key", "-d", '{"uid": "6470a2b1c5e6f1a2b3c4d5e1"}',
         tls_demo.grpc, "kubeconfig.v1.KubeconfigService/GetKubeconfig"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kubeconfig"]["fileName"] == "prod-east.kubeconfig"
    plaintext = subprocess.run([grpcurl, "-plaintext", "-connect-timeout", "2", tls_demo.grpc, "list"], capture_output=True, text=True, timeout=30)
    assert plaintext.returncode != 0


def test_grpcio_and_https_verify_the_server(tls_demo):
    credentials = grpc.ssl_channel_credentials(root_certificates=(TLS / "ca.crt").read_bytes())
    with grpc.secure_channel(tls_demo.grpc, credentials) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    request = urllib.request.Request(
        f"{tls_demo.rest}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e1/assets/kubeconfig", headers={"ApiKey": "demo-viewer-key"}
    )
    with urllib.request.urlopen(request, timeout=10, context=tls_demo.ssl_context) as response:
        assert response.status == 200
        assert b"kind: Config" in response.read()
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_demo.rest_port}/healthz", timeout=5).read()


def test_a_bad_certificate_file_names_the_flag(tmp_path):
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate")
    result = subprocess.run(
        [str(binary()), "--demo", "--tls-cert-file", str(bad), "--tls-key-file", str(TLS / "server.key"),
         "--grpc-addr", "127.0.0.1:0", "--rest-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "--tls-cert-file" in result.stderr
    assert "PRIVATE" not in result.stderr
