#!/usr/bin/env bash
# Two kubeconfigd builds beside the bare baseline in the same interleaved rounds (other, this, bare,
# other, this, bare…), so that a change is measured against the noise of this shared machine instead of
# across runs minutes apart: gRPC GetKubeconfig with h2load (-c4 -m16) and the REST GET with wrk (-c32),
# the demo's prod-east kubeconfig, in-process cache hits. Prints the median rate of each and its ratio to
# the bare server; then the median CPU time (user + system, from /proc) each server spent per call
# during those runs, and the bare server's CPU per call divided by it. The load tools share the two
# cores with the servers, so the rate moves with whatever else runs; the CPU a server spends per call
# moves much less, and shows what a change did to the server itself.
#   bench/compare.sh OTHER_BINARY [rounds=7] [wrk duration=3s] [h2load requests=30000]
# OTHER_BINARY is another build's kubeconfigd, e.g. from `git worktree add ../before <commit>` and
# `cargo build --release` there. KUBECONFIGD_OTHER_ENV (e.g. `RUST_LOG=warn`) is put in the other
# build's environment, so the same binary can be compared with itself under another setting.
set -euo pipefail
cd "$(dirname "$0")/.."
other=${1:?usage: bench/compare.sh OTHER_BINARY [rounds] [duration] [requests]}
rounds=${2:-7}
duration=${3:-3s}
requests=${4:-30000}
[ -x "$other" ] || { echo "$other is not an executable" >&2; exit 1; }
# shellcheck source=bench/common.sh
source bench/common.sh
# started NAME REST_PORT: waits until the server answers on its REST port; fails if it exited.
started() {
  for _ in $(seq 100); do
    curl -sf -o "$work/$1.body" -H "ApiKey: $key" "http://127.0.0.1:$2/v1/spectroclusters/$uid/assets/kubeconfig" && return
    sleep 0.1
  done
  echo "$1 did not start (ports in use?):" >&2; cat "$work/$1.log" >&2; exit 1
}
env ${KUBECONFIGD_OTHER_ENV:-} "$other" --demo --grpc-addr 127.0.0.1:50091 --rest-addr 127.0.0.1:8091 --admin-addr 127.0.0.1:8093 >"$work/other.log" 2>&1 & pids+=($!)
started other 8091
target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50071 --rest-addr 127.0.0.1:8071 --admin-addr 127.0.0.1:8073 >"$work/this.log" 2>&1 & pids+=($!)
started this 8071
cmp -s "$work/other.body" "$work/this.body" || echo "note: the two builds serve different bytes" >&2
target/release/bare-server --grpc-addr 127.0.0.1:50072 --rest-addr 127.0.0.1:8072 --body "$work/this.body" >"$work/bare.log" 2>&1 & pids+=($!)
started bare 8072

echo "$rounds interleaved rounds of: h2load $requests requests (-c4 -m16), wrk $duration (-c32); $(nproc) cores"
for _ in $(seq "$rounds"); do
  for target in "other 50091 8091 ${pids[0]}" "this 50071 8071 ${pids[1]}" "bare 50072 8072 ${pids[2]}"; do
    set -- $target
    measure "grpc-$1" "$4" bench/grpc-h2load.sh "$1" "127.0.0.1:$2" "$key" "$uid" "$requests"
    measure "rest-$1" "$4" bench/rest-wrk.sh "$1" "127.0.0.1:$3" "$key" "$uid" "$duration"
  done
done
for surface in grpc rest; do
  o=$(median <<<"${results[$surface-other]}") t=$(median <<<"${results[$surface-this]}") b=$(median <<<"${results[$surface-bare]}")
  awk -v s="$surface" -v o="$o" -v t="$t" -v b="$b" \
    'BEGIN {printf "%-4s other %7.0f/s (%.2fx)  this %7.0f/s (%.2fx)  bare %7.0f/s\n", s, o, o / b, t, t / b, b}'
done
echo "CPU per call (bare's divided by each):"
for surface in grpc rest; do
  o=$(median <<<"${cpu[$surface-other]}") t=$(median <<<"${cpu[$surface-this]}") b=$(median <<<"${cpu[$surface-bare]}")
  awk -v s="$surface" -v o="$o" -v t="$t" -v b="$b" \
    'BEGIN {printf "%-4s other %5.2f us (%.2fx)  this %5.2f us (%.2fx)  bare %5.2f us\n", s, o, b / o, t, b / t, b}'
done
echo "preemptions per call (involuntary context switches of the server's threads):"
for surface in grpc rest; do
  o=$(median <<<"${preempted[$surface-other]}") t=$(median <<<"${preempted[$surface-this]}") b=$(median <<<"${preempted[$surface-bare]}")
  awk -v s="$surface" -v o="$o" -v t="$t" -v b="$b" 'BEGIN {printf "%-4s other %.3f  this %.3f  bare %.3f\n", s, o, t, b}'
done
