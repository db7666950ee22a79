"""End to end: the real binary exports spans over OTLP/gRPC to a receiver this test starts; the spans
arrive with the caller's trace id and our attributes, and nothing secret."""

import time
import urllib.request

from conftest import Server
from otlp_receiver import start

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def test_spans_reach_an_otlp_receiver_with_the_callers_trace_id(monkeypatch):
    grpc_server, receiver, port = start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "kubeconfigd-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "500")
        server = Server(["--demo"])
        try:
            request = urllib.request.Request(
                f"{server.rest}/v1/spectroclusters/6470a2b1c5e6f1a2b3c4d5e2/assets/kubeconfig",
                headers={"ApiKey": "demo-viewer-key", "traceparent": TRACEPARENT},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                body = response.read().decode()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with receiver.lock:
                    ours = [(r, s) for r, s in receiver.spans if s.trace_id.hex() == TRACE_ID]
                if ours:
                    break
                time.sleep(0.1)
        finally:
            server.stop()  # SIGTERM: the exporters flush on shutdown
        with receiver.lock:
            ours = [(r, s) for r, s in receiver.spans if s.trace_id.hex() == TRACE_ID]
            metric_names = set(receiver.metric_names)
        assert ours, f"no span with the caller's trace id; log:\n{server.log_text()}"
        resource, span = ours[0]
        assert resource.get("service.name") == "kubeconfigd-test"
        assert span.name == "GET /v1/spectroclusters/{uid}/assets/kubeconfig"
        attributes = {a.key: (a.value.string_value or a.value.int_value) for a in span.attributes}
        assert attributes["kubeconfig.cluster_uid"] == "6470a2b1c5e6f1a2b3c4d5e2"
        assert attributes["kubeconfig.decision"] == "allow"
        assert attributes["enduser.id"] == "viewer@demo.test"
        assert attributes["http.response.status_code"] == 200
        assert span.parent_span_id.hex() == "b7ad6b7169203331"
        exported = repr([s for _, s in receiver.spans])
        for secret in ["demo-viewer-key", "demo-edge-client-secret", "PRIVATE KEY", body[:80]]:
            assert secret not in exported
        expected_metrics = {
            "kubeconfigd.calls",
            "rpc.server.duration",
            "kubeconfigd.cache.hits",
            "kubeconfigd.redis.errors",
            "kubeconfigd.clusters",
            "kubeconfigd.inventory.reloads",
        }
        assert expected_metrics <= metric_names, metric_names
    finally:
        grpc_server.stop(0)
