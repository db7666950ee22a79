"""The measuring half of bench/sidecar.sh: change-to-file latency through the real server and the real
kubeconfig-agent, and the server's memory per idle WatchKubeconfigs stream. Loopback only; every loop
is bounded in count and time."""

import argparse
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from scale import rss_bytes, stubs  # noqa: E402

UID = "00000000000000000000aa04"
KEY = "matrix-tenant-admin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="kubeconfigd-sidecar-"))
    shutil.copytree(ROOT / "tests/fixtures/matrix", work / "fixture")
    inventory = work / "fixture/inventory"
    grpc_port, rest_port, admin_port, health_port = free_port(), free_port(), free_port(), free_port()
    log = open(work / "server.log", "w")
    server = subprocess.Popen(
        [args.server, "--inventory", str(inventory), "--tenant", str(work / "fixture/tenant.yaml"),
         "--grpc-addr", f"127.0.0.1:{grpc_port}", "--rest-addr", f"127.0.0.1:{rest_port}",
         "--admin-addr", f"127.0.0.1:{admin_port}", "--max-watch-streams-per-caller", str(args.streams + 10)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"})
    agent = None
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/readyz", time.monotonic() + 30)
        key_file = work / "agent.key"
        key_file.write_text(KEY + "\n")
        out = work / "out"
        agent = subprocess.Popen(
            [args.agent, "--server", f"http://127.0.0.1:{grpc_port}", "--api-key-file", str(key_file),
             "--cluster", UID, "--out-dir", str(out), "--health-addr", f"127.0.0.1:{health_port}"],
            stdout=open(work / "agent.log", "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"})
        wait_http(f"http://127.0.0.1:{health_port}/readyz", time.monotonic() + 30)

        # Change-to-file latency: one edit at a time, timed until the agent's file holds it.
        cluster_file = inventory / "no-oidc-direct.yaml"
        original = cluster_file.read_text()
        target = out / "no-oidc-direct.kubeconfig"
        latencies = []
        for i in range(args.edits):
            marker = f"https://10.{i // 250}.{i % 250}.77:6443"
            tmp = cluster_file.with_name(".edit.tmp")
            tmp.write_text(original.replace("https://10.0.0.4:6443", marker))
            t0 = time.monotonic()
            os.rename(tmp, cluster_file)
            deadline = t0 + 10
            while marker not in target.read_text():
                assert time.monotonic() < deadline, f"edit {i} not on disk within 10 s"
                time.sleep(0.002)
            latencies.append(time.monotonic() - t0)
            time.sleep(0.05)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"change-to-file latency over {args.edits} edits: median {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")

        # Memory per idle stream: open N watches of every cluster, wait for each SYNCED, compare RSS.
        import grpc

        pb, pb_grpc = stubs()
        time.sleep(1)
        before = rss_bytes(server.pid)
        channels = [grpc.insecure_channel(f"127.0.0.1:{grpc_port}") for _ in range(max(1, args.streams // 100))]
        calls, synced = [], threading.Semaphore(0)

        def consume(call):
            try:
                for event in call:
                    if event.type == pb.WatchKubeconfigsResponse.TYPE_SYNCED:
                        synced.release()
            except grpc.RpcError:
                pass

        for i in range(args.streams):
            stub = pb_grpc.KubeconfigServiceStub(channels[i % len(channels)])
            call = stub.WatchKubeconfigs(pb.WatchKubeconfigsRequest(), metadata=(("apikey", KEY),))
            calls.append(call)
            threading.Thread(target=consume, args=(call,), daemon=True).start()
        deadline = time.monotonic() + 120
        for _ in range(args.streams):
            assert synced.acquire(timeout=max(0.1, deadline - time.monotonic())), "streams did not sync in time"
        time.sleep(2)
        after = rss_bytes(server.pid)
        print(f"server RSS: {before / 2**20:.1f} MiB idle, {after / 2**20:.1f} MiB with {args.streams} idle streams: "
              f"{(after - before) / args.streams / 1024:.1f} KiB per stream")
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=10)
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
