"""Every kind of served kubeconfig loaded by the Python Kubernetes client's loader."""

import urllib.request

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.kube_config import KubeConfigLoader

UIDS = {
    "oidc-proxy": "00000000000000000000aa01",
    "no-oidc-proxy": "00000000000000000000aa02",
    "oidc-direct": "00000000000000000000aa03",
    "no-oidc-direct": "00000000000000000000aa04",
}


def fetch(server, uid, asset, key="matrix-cluster-admin"):
    request = urllib.request.Request(f"{server.rest}/v1/spectroclusters/{uid}/assets/{asset}", headers={"ApiKey": key})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


@pytest.mark.parametrize("name", sorted(UIDS))
@pytest.mark.parametrize("asset", ["kubeconfig", "adminkubeconfig"])
def test_python_loader_accepts_every_variant(matrix, tmp_path, name, asset):
    text = fetch(matrix, UIDS[name], asset)
    path = tmp_path / "config"
    path.write_text(text)
    document = yaml.safe_load(text)
    expected_server = document["clusters"][0]["cluster"]["server"]
    user = document["users"][0]["user"]
    if "exec" in user:
        # The loader would run kubelogin on load; check what it parsed without running it.
        loader = KubeConfigLoader(config_dict=document)
        loader.set_active_context()
        assert loader._cluster["server"] == expected_server
        assert loader._user["exec"]["command"] == "kubectl"
        assert list(loader._user["exec"]["args"])[:2] == ["oidc-login", "get-token"]
    else:
        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(config_file=str(path), client_configuration=configuration)
        assert configuration.host == expected_server
        assert configuration.cert_file and configuration.key_file and configuration.ssl_ca_cert
    if asset == "adminkubeconfig":
        assert "proxy" not in expected_server
    elif name.endswith("proxy"):
        assert expected_server.startswith("https://cluster-")
