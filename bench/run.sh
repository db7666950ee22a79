#!/usr/bin/env bash
# Load test: kubeconfigd --demo beside a bare tonic/axum server returning the same bytes, in one run.
#   gRPC GetKubeconfig with h2load (bench/grpc-h2load.sh; Debian package nghttp2-client);
#   REST GET with wrk (bench/rest-wrk.sh; package wrk).
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
target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50071 --rest-addr 127.0.0.1:8071 --admin-addr 127.0.0.1:8073 ${KUBECONFIGD_BENCH_FLAGS:-} >"$work/kubeconfigd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8073/readyz >/dev/null && break; sleep 0.1; done
curl -sf -H "ApiKey: $key" "http://127.0.0.1:8071/v1/spectroclusters/$uid/assets/kubeconfig" >"$work/body.yaml"
target/release/bare-server --grpc-addr 127.0.0.1:50072 --rest-addr 127.0.0.1:8072 --body "$work/body.yaml" >"$work/bare.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:8072/v1/spectroclusters/$uid/assets/kubeconfig" >/dev/null && break; sleep 0.1; done

echo "body: $(wc -c <"$work/body.yaml") bytes; $(nproc) cores; requests=$requests, wrk duration=$duration"
bench/grpc-h2load.sh kubeconfigd 127.0.0.1:50071 "$key" "$uid" "$requests"
bench/grpc-h2load.sh bare-tonic 127.0.0.1:50072 "$key" "$uid" "$requests"
bench/rest-wrk.sh kubeconfigd 127.0.0.1:8071 "$key" "$uid" "$duration"
bench/rest-wrk.sh bare-axum 127.0.0.1:8072 "$key" "$uid" "$duration"
