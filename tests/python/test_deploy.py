"""The example manifests under deploy/kubernetes: valid against the Kubernetes schemas (offline, with
kubernetes-validate, strict), and every file mounted into a container readable by the user it runs as."""

import pathlib
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def documents():
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def pod_specs():
    for path, document in documents():
        spec = document.get("spec", {})
        if document["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield path, document["metadata"]["name"], spec["template"]["spec"]
        elif document["kind"] == "Pod":
            yield path, document["metadata"]["name"], spec


def test_every_manifest_is_valid_against_the_kubernetes_schemas():
    assert MANIFESTS
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", *map(str, MANIFESTS)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def readable(mode, owner_uid, group, uid, groups):
    if uid == 0:
        return True
    if owner_uid == uid and mode & 0o400:
        return True
    if group in groups and mode & 0o040:
        return True
    return bool(mode & 0o004)


def unreadable_mounts(pod):
    """Files of secret and configMap volumes the containers cannot read, as (container, volume)."""
    security = pod.get("securityContext", {})
    fs_group = security.get("fsGroup")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    problems = []
    for container in pod.get("initContainers", []) + pod["containers"]:
        context = {**security, **container.get("securityContext", {})}
        uid = context.get("runAsUser", 0)
        groups = {context.get("runAsGroup", 0), *security.get("supplementalGroups", [])}
        if fs_group is not None:
            groups.add(fs_group)
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            source = volume.get("secret") or volume.get("configMap") or volume.get("projected")
            if source is None:
                continue
            mode = source.get("defaultMode", 0o644)
            # Kubelet writes these files as root; with an fsGroup it hands them to that group and adds
            # group read (its volume ownership step ORs in r--r-----).
            group = 0
            if fs_group is not None:
                group, mode = fs_group, mode | 0o440
            if not readable(mode, 0, group, uid, groups):
                problems.append((container["name"], mount["name"]))
    return problems


def test_the_pod_user_can_read_every_mounted_file():
    specs = list(pod_specs())
    assert specs
    for path, name, pod in specs:
        assert unreadable_mounts(pod) == [], f"{path.name}: {name}"


def test_the_readability_check_catches_a_secret_the_user_cannot_read():
    pod = {
        "securityContext": {"runAsUser": 65532},
        "containers": [{"name": "c", "volumeMounts": [{"name": "s", "mountPath": "/s"}]}],
        "volumes": [{"name": "s", "secret": {"secretName": "x", "defaultMode": 0o400}}],
    }
    assert unreadable_mounts(pod) == [("c", "s")]
    pod["securityContext"]["fsGroup"] = 65532
    assert unreadable_mounts(pod) == []


def test_the_agent_accepts_every_manifest_flag():
    """Runs the real kubeconfig-agent with each manifest's arguments: flag errors exit 2 (clap); a
    missing credential file at start-up is a later, different failure."""
    agent = ROOT / "target" / "debug" / "kubeconfig-agent"
    assert agent.is_file(), "build the workspace first (cargo build --workspace --bins)"
    checked = 0
    for path, name, pod in pod_specs():
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container.get("command", [""])[0].endswith("kubeconfig-agent"):
                args = [a.replace("http://kubeconfigd:50051", "http://127.0.0.1:9") for a in container["args"]]
                args = [a for a in args if not a.startswith(("--health-addr", "--once"))]
                result = subprocess.run([str(agent), *args, "--once", "--once-timeout=1ms"],
                                        capture_output=True, text=True, timeout=30)
                assert result.returncode == 1, f"{path.name}/{name}: {result.stderr}"
                assert "token-file" in result.stderr or "api-key-file" in result.stderr, result.stderr
                checked += 1
    assert checked == 2


def kubeconfigd_deployment():
    return next(d for _, d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "kubeconfigd")


def seconds(flag, args):
    value = next(a.split("=", 1)[1] for a in args if a.startswith(f"--{flag}="))
    assert value.endswith("s"), value
    return float(value[:-1])


def test_rollouts_and_disruptions_keep_a_replica_serving():
    deployment = kubeconfigd_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "kubeconfigd")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    budget = seconds("shutdown-delay", container["args"]) + seconds("shutdown-grace", container["args"])
    assert pod["terminationGracePeriodSeconds"] > budget
    budgets = [d for _, d in documents() if d["kind"] == "PodDisruptionBudget"]
    assert any(b["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"] and b["spec"].get("minAvailable", 0) >= 1 for b in budgets)
    headless = [d for _, d in documents() if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert any(h["spec"]["selector"] == spec["selector"]["matchLabels"] for h in headless)


def test_grpcio_applies_the_shipped_retry_policy():
    """gRPC's C core (grpcio) takes deploy/kubernetes/grpc-service-config.json as it is, and with it a
    call that a server answers UNAVAILABLE twice succeeds; without it, the same call fails."""
    from concurrent import futures

    import grpc

    text = (ROOT / "deploy" / "kubernetes" / "grpc-service-config.json").read_text()
    attempts = []

    def who_am_i(request, context):
        attempts.append(1)
        if len(attempts) % 3 != 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return b""

    handler = grpc.method_handlers_generic_handler(
        "kubeconfig.v1.KubeconfigService", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.service_config", text), ("grpc.enable_retries", 1)]
        ) as channel:
            assert channel.unary_unary("/kubeconfig.v1.KubeconfigService/WhoAmI")(b"", timeout=10) == b""
        assert len(attempts) == 3
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.service_config", "{}"), ("grpc.enable_retries", 1)]
        ) as channel:
            try:
                channel.unary_unary("/kubeconfig.v1.KubeconfigService/WhoAmI")(b"", timeout=10)
                raise AssertionError("without the policy the first UNAVAILABLE is the answer")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert len(attempts) == 4
    finally:
        server.stop(None)
