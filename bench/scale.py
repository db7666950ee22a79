"""The measuring half of bench/scale.sh: starts kubeconfigd on a generated fleet and reports each figure
of the fleet-scale targets. Every loop is bounded in count and time; loopback only."""

import argparse
import concurrent.futures
import importlib
import os
import pathlib
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uid(index):
    return f"5ca1e{index:019x}"


def cpu_seconds(pid):
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_bytes(pid, field="VmRSS"):
    match = re.search(rf"{field}:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) * 1024


def drop_page_cache():
    """Empties the page cache (root only): the next start reads every file from the device."""
    if os.geteuid() != 0:
        return False
    subprocess.run(["sync"], check=True)
    pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
    return True


def get(url, key="scale-admin-key", timeout=5):
    request = urllib.request.Request(url, headers={"ApiKey": key})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def stubs():
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="kubeconfigd-stubs-")
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
        str(ROOT / "proto/kubeconfig/v1/kubeconfig.proto"),
        str(ROOT / "proto/google/api/annotations.proto"), str(ROOT / "proto/google/api/http.proto"),
    ])
    assert code == 0
    sys.path.insert(0, out)
    return (importlib.import_module("kubeconfig.v1.kubeconfig_pb2"),
            importlib.import_module("kubeconfig.v1.kubeconfig_pb2_grpc"))


def set_api_server(path, host_port):
    text = path.read_text()
    text = re.sub(r"^apiServer: .*$", f"apiServer: https://{host_port}", text, count=1, flags=re.M)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def wait_served(rest, index, marker, deadline):
    url = f"{rest}/v1/spectroclusters/{uid(index)}/assets/adminkubeconfig"
    while time.monotonic() < deadline:
        try:
            if marker in get(url):
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.005)
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--fleet", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--starts-only", action="store_true", help="measure the starts, skip the edits")
    args = parser.parse_args()
    fleet = pathlib.Path(args.fleet)
    inventory = fleet / "inventory"
    files_bytes = sum(p.stat().st_size for p in inventory.iterdir())
    grpc_port, rest_port, admin_port = free_port(), free_port(), free_port()
    rest = f"http://127.0.0.1:{rest_port}"
    log = open(fleet / "kubeconfigd.log", "w")
    command = [args.binary, "--inventory", str(inventory), "--tenant", str(fleet / "tenant.yaml"),
               "--grpc-addr", f"127.0.0.1:{grpc_port}", "--rest-addr", f"127.0.0.1:{rest_port}",
               "--admin-addr", f"127.0.0.1:{admin_port}", "--cache-memory", "16MiB"]
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}

    seen_while_loading = set()

    def start():
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        while True:
            assert process.poll() is None, "kubeconfigd exited"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1):
                    return process, time.monotonic() - began
            except OSError:
                assert time.monotonic() - began < 300, "not ready within 300 s"
                # While loading, the API answers (503) rather than leaving callers hanging.
                try:
                    get(f"{rest}/v1/spectroclusters/{uid(0)}/assets/kubeconfig", timeout=1)
                    seen_while_loading.add("200 (the load had just finished)")
                except urllib.error.HTTPError as e:
                    seen_while_loading.add(str(e.code))
                except OSError:
                    pass
                time.sleep(0.02)

    # Three cold starts (the page cache dropped before each, when run as root), then three warm ones
    # (the files were just read): the median of each, the RSS one second after ready, and the peak
    # RSS (VmHWM) of the start.
    results = {"cold": [], "warm": []}
    cold_dropped = True
    process = None
    for kind in ("cold", "warm"):
        for attempt in range(3):
            if kind == "cold":
                cold_dropped &= drop_page_cache()
            process, ready = start()
            time.sleep(1)
            soon = rss_bytes(process.pid)
            settled = None
            if kind == "warm":
                # The allocator returns what the load freed some seconds later, on the next allocations
                # after its purge delay: serve a metrics scrape a second for 15 s, then read again.
                for _ in range(15):
                    time.sleep(1)
                    get(f"http://127.0.0.1:{admin_port}/metrics")
                settled = rss_bytes(process.pid)
            results[kind].append((ready, soon, rss_bytes(process.pid, "VmHWM"), settled))
            if not (kind == "warm" and attempt == 2):
                process.terminate()
                process.wait(timeout=30)
    try:
        mib = 2**20
        print(f"clusters: {args.count}, files: {files_bytes / mib:.1f} MiB")
        for kind, runs in results.items():
            note = "" if kind == "warm" or cold_dropped else " (NOT cold: dropping the page cache needs root)"
            print(f"ready to serve, {kind}: median {statistics.median(r[0] for r in runs):.2f} s "
                  f"(starts: {', '.join(f'{r[0]:.2f}' for r in runs)} s){note}")
        every = results["cold"] + results["warm"]
        rss = statistics.median(r[1] for r in every)
        peak = statistics.median(r[2] for r in every)
        print(f"API answers while loading: {', '.join(sorted(seen_while_loading)) or 'none seen'}")
        settled = statistics.median(r[3] for r in results["warm"])
        print(f"RSS 1 s after ready: median {rss / mib:.1f} MiB = files + {(rss - files_bytes) / mib:.1f} MiB")
        print(f"RSS after load (15 s after ready, serving scrapes; warm starts): median {settled / mib:.1f} MiB "
              f"= files + {(settled - files_bytes) / mib:.1f} MiB "
              f"(target: files + 48 MiB = {(files_bytes + 48 * mib) / mib:.1f} MiB)")
        print(f"peak RSS while loading: median {peak / mib:.1f} MiB = files + {(peak - files_bytes) / mib:.1f} MiB "
              f"(target: files + 96 MiB = {(files_bytes + 96 * mib) / mib:.1f} MiB)")
        if args.starts_only:
            return

        # One-file edits, one at a time: latency and the server's CPU for each.
        latencies, cpus = [], []
        run = random.randrange(250)  # markers differ from any earlier run's edits
        for round_ in range(10):
            index = 1 + round_ * 7
            marker = f"10.250.{run}.{round_}:{7000 + round_}"
            time.sleep(0.3)
            cpu_before = cpu_seconds(process.pid)
            t0 = time.monotonic()
            set_api_server(inventory / f"c{index:06}.yaml", marker)
            seen = wait_served(rest, index, marker, t0 + 10)
            assert seen is not None, f"edit {round_} not served within 10 s"
            latencies.append(seen - t0)
            time.sleep(0.2)  # let the reload task finish its bookkeeping before sampling CPU
            cpus.append(cpu_seconds(process.pid) - cpu_before)
        print(f"one-file edit served: median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms; server CPU per edit (incl. polling requests): "
              f"median {statistics.median(cpus) * 1000:.0f} ms")

        # ListClusters pages of 500.
        import grpc

        pb, pb_grpc = stubs()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            client = pb_grpc.KubeconfigServiceStub(channel)
            for who, key in (("tenant admin", "scale-admin-key"), ("one-project viewer", "scale-viewer-p3-key")):
                times, token = [], ""
                for _ in range(20):
                    t0 = time.monotonic()
                    page = client.ListClusters(pb.ListClustersRequest(page_size=500, page_token=token),
                                               metadata=(("apikey", key),), timeout=10)
                    times.append(time.monotonic() - t0)
                    assert len(page.clusters) == min(500, len(page.clusters)) and page.clusters
                    token = page.next_page_token
                print(f"ListClusters page of 500 ({who}): median {statistics.median(times) * 1000:.1f} ms, "
                      f"max {max(times) * 1000:.1f} ms")

        # Sustained edits: `rate` files a second for `seconds`, each checked until served.
        total = args.rate * args.seconds
        lags = []
        lock = threading.Lock()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=16)
        futures = []
        begin = time.monotonic()
        cpu_before = cpu_seconds(process.pid)
        for n in range(total):
            due = begin + n / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            index = (n * 13) % min(args.count, 50_000)
            marker = f"10.{run}.{n // 250 % 250}.{n % 250}:{10000 + n % 50000}"
            t0 = time.monotonic()
            set_api_server(inventory / f"c{index:06}.yaml", marker)

            def check(index=index, marker=marker, t0=t0):
                seen = wait_served(rest, index, marker, t0 + 30)
                with lock:
                    lags.append(None if seen is None else seen - t0)

            futures.append(pool.submit(check))
        written = time.monotonic() - begin
        concurrent.futures.wait(futures, timeout=60)
        pool.shutdown(wait=False, cancel_futures=True)
        cpu = cpu_seconds(process.pid) - cpu_before
        served = [lag for lag in lags if lag is not None]
        late = sum(1 for lag in served if lag > 2)
        missing = total - len(served)
        served.sort()
        p99 = served[int(len(served) * 0.99) - 1] if served else float("nan")
        print(f"sustained edits: {total} in {written:.1f} s ({total / written:.0f}/s); served {len(served)}, "
              f"never {missing}, later than 2 s {late}; lag median {statistics.median(served) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {served[-1] * 1000:.0f} ms; server CPU {cpu:.1f} s")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
