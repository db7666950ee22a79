"""Python grpcio calls every RPC, with stubs generated from proto/ by grpcio-tools, plus health and
reflection through their own client packages."""

import importlib
import pathlib
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("stubs")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        str(ROOT / "proto/kubeconfig/v1/kubeconfig.proto"),
        str(ROOT / "proto/google/api/annotations.proto"),
        str(ROOT / "proto/google/api/http.proto"),
    ])
    assert code == 0
    sys.path.insert(0, str(out))
    pb = importlib.import_module("kubeconfig.v1.kubeconfig_pb2")
    pb_grpc = importlib.import_module("kubeconfig.v1.kubeconfig_pb2_grpc")
    return pb, pb_grpc


def key(value):
    return (("apikey", value),)


def test_every_rpc(demo, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(demo.grpc) as channel:
        client = pb_grpc.KubeconfigServiceStub(channel)
        kube = client.GetKubeconfig(pb.GetKubeconfigRequest(uid="6470a2b1c5e6f1a2b3c4d5e1", frp=False), metadata=key("demo-viewer-key"))
        assert kube.kubeconfig.server_kind == pb.SERVER_KIND_DIRECT
        assert kube.kubeconfig.file_name == "prod-east.kubeconfig"
        admin = client.GetAdminKubeconfig(pb.GetAdminKubeconfigRequest(uid="6470a2b1c5e6f1a2b3c4d5e3"), metadata=key("demo-admin-key"))
        assert admin.kubeconfig.auth_kind == pb.AUTH_KIND_TOKEN
        access = client.GetKubeconfigAccess(pb.GetKubeconfigAccessRequest(uid="6470a2b1c5e6f1a2b3c4d5e4"), metadata=key("demo-editor-key")).access
        assert not access.kubeconfig.allowed and access.kubeconfig.reason == "OIDC_NOT_CONFIGURED"
        assert [g.code for g in access.oidc.gaps] == ["API_SERVER_SETTING_MISSING", "API_SERVER_SETTING_MISSING"]
        listed = client.ListClusters(pb.ListClustersRequest(page_size=2), metadata=key("demo-admin-key"))
        assert len(listed.clusters) == 2 and listed.next_page_token
        rest = client.ListClusters(pb.ListClustersRequest(page_size=10, page_token=listed.next_page_token), metadata=key("demo-admin-key"))
        names = [c.name for c in listed.clusters] + [c.name for c in rest.clusters]
        assert sorted(names) == sorted(["prod-east", "edge-store-42", "eks-analytics", "edge-factory-7", "prod-minted", "broken-staging"])
        broken = [c for c in rest.clusters if c.name == "broken-staging"][0]
        assert broken.status == pb.CLUSTER_STATUS_UNAVAILABLE and broken.problems

        with pytest.raises(grpc.RpcError) as denied:
            client.GetAdminKubeconfig(pb.GetAdminKubeconfigRequest(uid="6470a2b1c5e6f1a2b3c4d5e1"), metadata=key("demo-viewer-key"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as invalid:
            client.GetKubeconfig(pb.GetKubeconfigRequest(uid="NOT/VALID"), metadata=key("demo-viewer-key"))
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as unavailable:
            client.GetKubeconfig(pb.GetKubeconfigRequest(uid="6470a2b1c5e6f1a2b3c4d5e5"), metadata=key("demo-admin-key"))
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_and_reflection_clients(demo):
    with grpc.insecure_channel(demo.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="kubeconfig.v1.KubeconfigService"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name for r in responses for s in r.list_services_response.service]
        assert "kubeconfig.v1.KubeconfigService" in names


def test_a_malformed_request_message_is_invalid_argument_without_decoder_internals(demo):
    with grpc.insecure_channel(demo.grpc) as channel:
        raw = channel.unary_unary(
            "/kubeconfig.v1.KubeconfigService/GetKubeconfig",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        # Field 1 (uid, length-delimited) claiming 100 bytes that are not there, then a bad wire type.
        for payload in (b"\x0a\x64abc", b"\x0f\x01", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"):
            with pytest.raises(grpc.RpcError) as caught:
                raw(payload, metadata=key("demo-viewer-key"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, payload
            details = caught.value.details()
            assert "not a valid protobuf message" in details
            assert "wire type" not in details and "buffer" not in details and "decode" not in details.lower()
