#!/usr/bin/env bash
# Load test: kubeconfigd --demo beside a bare tonic/axum server returning the same bytes, in one run.
#   gRPC GetKubeconfig with h2load (bench/grpc-h2load.sh; Debian package nghttp2-client);
#   REST GET with wrk (bench/rest-wrk.sh; package wrk).
# Rounds are interleaved (ours, bare, ours, bare…) so that a noisy neighbour hits both alike. Loopback
# only; every run is bounded by request count or duration.
# Prints each run, then the medians and the ratio kubeconfigd / bare for each surface, with the CPU time
# (user + system, from /proc) each server spent per call in those runs and the bare server's divided by
# ours (the load tools share the cores, so the rate moves with them; the CPU per call moves less), and
# how often each server's threads were preempted per call (see `preemptions` in bench/common.sh); then
# both gRPC servers at half the bare server's maximum rate, with their p99s and its ratio.
#   bench/run.sh [requests=30000] [wrk duration=5s] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-30000}
duration=${2:-5s}
rounds=${3:-3}
# shellcheck source=bench/common.sh
source bench/common.sh
target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50071 --rest-addr 127.0.0.1:8071 --admin-addr 127.0.0.1:8073 ${KUBECONFIGD_BENCH_FLAGS:-} >"$work/kubeconfigd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8073/readyz >/dev/null && break; sleep 0.1; done
# A server left over from another run would answer on these ports instead: make sure ours is the one.
kill -0 "${pids[0]}" 2>/dev/null || { echo "kubeconfigd exited (ports 50071/8071/8073 in use?):" >&2; cat "$work/kubeconfigd.log" >&2; exit 1; }
curl -sf -H "ApiKey: $key" "http://127.0.0.1:8071/v1/spectroclusters/$uid/assets/kubeconfig" >"$work/body.yaml"
target/release/bare-server --grpc-addr 127.0.0.1:50072 --rest-addr 127.0.0.1:8072 --body "$work/body.yaml" >"$work/bare.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:8072/v1/spectroclusters/$uid/assets/kubeconfig" >/dev/null && break; sleep 0.1; done
kill -0 "${pids[1]}" 2>/dev/null || { echo "bare-server exited (ports 50072/8072 in use?)" >&2; exit 1; }

echo "body: $(wc -c <"$work/body.yaml") bytes; $(nproc) cores; $rounds interleaved rounds of: h2load $requests requests (-c4 -m16), wrk $duration (-c32)"
for round in $(seq "$rounds"); do
  for target in "kubeconfigd 127.0.0.1:50071 ${pids[0]}" "bare-tonic 127.0.0.1:50072 ${pids[1]}"; do
    set -- $target
    measure "grpc-$1" "$3" bench/grpc-h2load.sh "$1" "$2" "$key" "$uid" "$requests"; echo "round $round: $measured"
  done
  for target in "kubeconfigd 127.0.0.1:8071 ${pids[0]}" "bare-axum 127.0.0.1:8072 ${pids[1]}"; do
    set -- $target
    measure "rest-$1" "$3" bench/rest-wrk.sh "$1" "$2" "$key" "$uid" "$duration"; echo "round $round: $measured"
  done
done
ratio() {
  local ours base ours_cpu base_cpu
  ours=$(median <<<"${results[$1]}") base=$(median <<<"${results[$2]}")
  ours_cpu=$(median <<<"${cpu[$1]}") base_cpu=$(median <<<"${cpu[$2]}")
  awk -v o="$ours" -v b="$base" -v oc="$ours_cpu" -v bc="$base_cpu" -v n="$3" \
    -v op="$(median <<<"${preempted[$1]}")" -v bp="$(median <<<"${preempted[$2]}")" \
    'BEGIN {printf "%-5s kubeconfigd %9.0f/s  bare %9.0f/s  ratio %.2fx   CPU per call %.2f us / %.2f us (bare/ours %.2fx)   preempted per call %.3f / %.3f\n", n, o, b, o / b, oc, bc, bc / oc, op, bp}'
}
echo "medians:"
ratio grpc-kubeconfigd grpc-bare-tonic gRPC
ratio rest-kubeconfigd rest-bare-axum REST

# Latency under a fixed load: both servers at half of the bare server's median maximum gRPC rate
# (h2load --rps per client, 4 clients), p99 of each and their ratio (target: kubeconfigd's p99 at most
# 1.2x the bare server's at the same rate).
bare_max=$(median <<<"${results[grpc-bare-tonic]}")
rate=$(awk -v m="$bare_max" 'BEGIN {printf "%d", m / 2}')
per_client=$(( rate / 4 ))
paced() { # name address -> p99 in ms
  local log="$work/paced-$1.log"
  bench/grpc-h2load.sh "$1" "$2" "$key" "$uid" "$((rate * 5))" --rps="$per_client" >"$log"
  awk '{for (i = 1; i < NF; i++) if ($i == "p99") print $(i + 1)}' "$log"
}
declare -A p99s
for round in $(seq "$rounds"); do
  for target in "kubeconfigd 127.0.0.1:50071" "bare-tonic 127.0.0.1:50072"; do
    set -- $target
    p=$(paced "$1" "$2"); echo "paced round $round at $rate/s: $1 p99 $p ms"
    p99s[$1]+="$p "
  done
done
ours=$(median <<<"${p99s[kubeconfigd]}") base=$(median <<<"${p99s[bare-tonic]}")
awk -v o="$ours" -v b="$base" -v r="$rate" 'BEGIN {printf "gRPC at %d/s (half the bare maximum): p99 kubeconfigd %.2f ms  bare %.2f ms  ratio %.2fx\n", r, o, b, o / b}'
