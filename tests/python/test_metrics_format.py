"""End to end: `/metrics` answers in the Prometheus text format by default and in OpenMetrics when the
scraper asks for it, and each answer parses with the reference parser of its format (the Python
`prometheus_client` package) into the same families and counts."""

import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from conftest import Server

UID = "6470a2b1c5e6f1a2b3c4d5e2"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"


@pytest.fixture(scope="module")
def server():
    """A server of its own: the counts below are exactly this module's calls."""
    server = Server(["--demo"])
    yield server
    server.stop()


def download(server, key):
    request = urllib.request.Request(
        f"{server.rest}/v1/spectroclusters/{UID}/assets/kubeconfig", headers={"ApiKey": key}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def scrape(server, accept=None):
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(f"{server.admin}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def samples(families):
    """{family name: (type, unit, {(sample name, sorted labels): value})}"""
    out = {}
    for family in families:
        values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[family.name] = (family.type, family.unit, values)
    return out


def calls(edge, method, code):
    return ("kubeconfigd_calls_total", (("code", code), ("edge", edge), ("method", method)))


def test_both_formats_parse_with_the_same_counts(server):
    assert download(server, "demo-viewer-key") == 200
    assert download(server, "demo-viewer-key") == 200
    assert download(server, "not-a-key") == 401

    default_type, default_text = scrape(server)
    plain_type, plain_text = scrape(server, "text/plain;version=0.0.4")
    open_type, open_text = scrape(server, OPENMETRICS)

    assert default_type == plain_type == "text/plain; version=0.0.4; charset=utf-8"
    assert open_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert "# EOF" not in plain_text
    assert open_text.endswith("# EOF\n")
    # A counter's family: named with `_total` in the Prometheus text, without it in OpenMetrics.
    assert "# TYPE kubeconfigd_calls_total counter\n" in plain_text
    assert "# TYPE kubeconfigd_calls counter\n" in open_text

    plain = samples(parse_prometheus(plain_text))
    openmetrics = samples(parse_openmetrics(open_text))

    for parsed in (plain, openmetrics):
        kind, _, values = parsed["kubeconfigd_calls"]
        assert kind == "counter"
        assert values == {
            calls("rest", "GetKubeconfig", "OK"): 2.0,
            calls("rest", "GetKubeconfig", "Unauthorized"): 1.0,
        }
        kind, _, values = parsed["kubeconfigd_call_duration_seconds"]
        assert kind == "histogram"
        labels = (("edge", "rest"), ("method", "GetKubeconfig"))
        assert values[("kubeconfigd_call_duration_seconds_count", labels)] == 3.0
        assert values[("kubeconfigd_call_duration_seconds_bucket", tuple(sorted([*labels, ("le", "+Inf")])))] == 3.0
        kind, _, values = parsed["kubeconfigd_cache_hits"]
        assert kind == "counter"
        assert values[("kubeconfigd_cache_hits_total", (("tier", "render"),))] == 1.0
        assert values[("kubeconfigd_cache_hits_total", (("tier", "memory"),))] == 1.0
        kind, _, values = parsed["kubeconfigd_clusters_loaded"]
        assert kind == "gauge"
        assert values[("kubeconfigd_clusters_loaded", ())] > 0
        # One load, not all applied: the demo's broken-staging is broken on purpose.
        kind, _, values = parsed["kubeconfigd_inventory_reloads"]
        assert values[("kubeconfigd_inventory_reloads_total", (("result", "failed"),))] == 1.0
        assert values[("kubeconfigd_inventory_reloads_total", (("result", "ok"),))] == 0.0

    assert openmetrics["kubeconfigd_call_duration_seconds"][1] == "seconds"
    # The same families either way, and the same values for the calls (nothing was called in between).
    assert plain.keys() == openmetrics.keys()
    assert plain["kubeconfigd_calls"][2] == openmetrics["kubeconfigd_calls"][2]
