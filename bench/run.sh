#!/usr/bin/env bash
# Load test: kubeconfigd --demo beside a bare tonic/axum server returning the same bytes, in one run.
#   gRPC GetKubeconfig with h2load (Debian package nghttp2-client); REST GET with wrk (package wrk).
# Prints throughput and p99 for each. Loopback only; every run is bounded by request count or duration.
#   bench/run.sh [requests=50000] [wrk duration=10s]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-50000}
duration=${2:-10s}
for tool in h2load wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nghttp2-client wrk curl)" >&2; exit 1; }
done
cargo build --release -q -p kubeconfigd -p kubeconfigd-e2e --bins
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

uid=6470a2b1c5e6f1a2b3c4d5e1
key=demo-viewer-key
target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50071 --rest-addr 127.0.0.1:8071 ${KUBECONFIGD_BENCH_FLAGS:-} >"$work/kubeconfigd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8071/healthz >/dev/null && break; sleep 0.1; done
curl -sf -H "ApiKey: $key" "http://127.0.0.1:8071/v1/spectroclusters/$uid/assets/kubeconfig" >"$work/body.yaml"
target/release/bare-server --grpc-addr 127.0.0.1:50072 --rest-addr 127.0.0.1:8072 --body "$work/body.yaml" >"$work/bare.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:8072/v1/spectroclusters/$uid/assets/kubeconfig" >/dev/null && break; sleep 0.1; done

# gRPC request body: 5-byte frame header + GetKubeconfigRequest{uid}.
python3 - "$work/request.bin" "$uid" <<'PY'
import struct, sys
uid = sys.argv[2].encode()
message = b"\x0a" + bytes([len(uid)]) + uid
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
PY

grpc_bench() { # name port
  local log="$work/$1.h2load.log"
  # Check the call really succeeds (h2load ignores grpc-status).
  curl -s --http2-prior-knowledge -o /dev/null -D "$work/$1.headers" -H 'content-type: application/grpc' -H 'te: trailers' \
    -H "apikey: $key" --data-binary @"$work/request.bin" "http://127.0.0.1:$2/kubeconfig.v1.KubeconfigService/GetKubeconfig"
  h2load -n "$requests" -c 8 -m 8 -t 2 -H 'content-type: application/grpc' -H 'te: trailers' -H "apikey: $key" \
    -d "$work/request.bin" --log-file="$log" "http://127.0.0.1:$2/kubeconfig.v1.KubeconfigService/GetKubeconfig" >"$work/$1.h2load.out"
  local rps ok p99
  rps=$(grep -Eo 'finished in [0-9.]+[a-z]+, [0-9.]+ req/s' "$work/$1.h2load.out" | grep -Eo '[0-9.]+ req/s')
  ok=$(grep -Eo '[0-9]+ succeeded' "$work/$1.h2load.out")
  p99=$(cut -f3 "$log" | sort -n | awk '{a[NR]=$1} END {printf "%.2f ms", a[int(NR*0.99)]/1000}')
  printf '%-28s %14s  p99 %10s  (%s of %s)\n' "gRPC $1" "$rps" "$p99" "$ok" "$requests"
}
rest_bench() { # name port
  wrk -t 2 -c 16 -d "$duration" --latency -H "ApiKey: $key" "http://127.0.0.1:$2/v1/spectroclusters/$uid/assets/kubeconfig" >"$work/$1.wrk.out"
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2" req/s"}' "$work/$1.wrk.out")
  p99=$(awk '$1=="99%" {print $2}' "$work/$1.wrk.out")
  printf '%-28s %14s  p99 %10s\n' "REST $1" "$rps" "$p99"
}

echo "body: $(wc -c <"$work/body.yaml") bytes; $(nproc) cores; requests=$requests, wrk duration=$duration"
grpc_bench kubeconfigd 50071
grpc_bench bare-tonic 50072
rest_bench kubeconfigd 8071
rest_bench bare-axum 8072
if grep -q 'grpc-status: [1-9]' "$work/kubeconfigd.headers"; then echo "WARNING: kubeconfigd answered with an error status" >&2; fi
