#!/usr/bin/env bash
# What a rate ratio against the bare server means on this machine: kubeconfigd --demo, the bare server,
# and copies of the bare server that spin on the clock for a fixed time on every call (`--busy-ns`:
# pure CPU work, nothing else differs), loaded in one run, interleaved. Prints, for REST (wrk -c32) and
# gRPC (h2load -c4 -m16), each server's median rate, its ratio to the bare server, its CPU per call and
# its preemptions per call. Then, from a straight line fitted to the time per call (1 / rate) of the
# bare server and its spinning copies: how much a microsecond of work per call slows the calls down,
# how many microseconds of work per call kubeconfigd behaves like, and how many a ratio of 0.85×
# leaves room for. Where the load tool shares the cores, a microsecond of work per call costs more than
# a microsecond (the server is preempted more often, and the kernel's part of each call grows).
#   bench/busy.sh [rounds=3] [wrk duration=3s] [h2load requests=100000] [busy ns="1000 2000 4000"]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-3s}
requests=${3:-100000}
read -r -a busy <<<"${4:-1000 2000 4000}"
# shellcheck source=bench/common.sh
source bench/common.sh
target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50071 --rest-addr 127.0.0.1:8071 --admin-addr 127.0.0.1:8073 ${KUBECONFIGD_BENCH_FLAGS:-} >"$work/kubeconfigd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8073/readyz >/dev/null && break; sleep 0.1; done
kill -0 "${pids[0]}" 2>/dev/null || { echo "kubeconfigd exited (ports 50071/8071/8073 in use?):" >&2; cat "$work/kubeconfigd.log" >&2; exit 1; }
curl -sf -H "ApiKey: $key" "http://127.0.0.1:8071/v1/spectroclusters/$uid/assets/kubeconfig" >"$work/body.yaml"

# Servers as "NAME GRPC_PORT REST_PORT PID SPIN_NS" (kubeconfigd's spin: -); the bare ones at 5008x / 808x.
servers=("kubeconfigd 50071 8071 ${pids[0]} -")
port=0
for ns in 0 "${busy[@]}"; do
  name=bare
  [ "$ns" -gt 0 ] && name="bare+${ns}ns"
  target/release/bare-server --grpc-addr "127.0.0.1:$((50080 + port))" --rest-addr "127.0.0.1:$((8080 + port))" \
    --body "$work/body.yaml" --busy-ns "$ns" >"$work/$name.log" 2>&1 & pids+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((8080 + port))/v1/spectroclusters/$uid/assets/kubeconfig" >/dev/null && break; sleep 0.1; done
  kill -0 "$!" 2>/dev/null || { echo "bare-server exited (ports $((50080 + port))/$((8080 + port)) in use?)" >&2; exit 1; }
  servers+=("$name $((50080 + port)) $((8080 + port)) $! $ns")
  port=$((port + 1))
done

echo "body: $(wc -c <"$work/body.yaml") bytes; $(nproc) cores; $rounds interleaved rounds of: wrk $duration (-c32), h2load $requests requests (-c4 -m16)"
for round in $(seq "$rounds"); do
  for server in "${servers[@]}"; do
    set -- $server
    measure "rest-$1" "$4" bench/rest-wrk.sh "$1" "127.0.0.1:$3" "$key" "$uid" "$duration"; echo "round $round: $measured"
  done
  for server in "${servers[@]}"; do
    set -- $server
    measure "grpc-$1" "$4" bench/grpc-h2load.sh "$1" "127.0.0.1:$2" "$key" "$uid" "$requests"; echo "round $round: $measured"
  done
done

for surface in rest grpc; do
  echo "medians, ${surface^^}:"
  base=$(median <<<"${results[$surface-bare]}")
  table=
  for server in "${servers[@]}"; do
    set -- $server
    rate=$(median <<<"${results[$surface-$1]}")
    awk -v n="$1" -v r="$rate" -v b="$base" -v c="$(median <<<"${cpu[$surface-$1]}")" -v p="$(median <<<"${preempted[$surface-$1]}")" \
      'BEGIN {printf "  %-16s %9.0f/s  ratio %.2fx  CPU per call %6.2f us  preempted per call %.3f\n", n, r, r / b, c, p}'
    if [ "$5" = - ]; then ours=$rate; else table+="$5 $rate"$'\n'; fi
  done
  # Time per call (1/rate) grows in a straight line with the spin, as far as the noise lets it: fit
  # it over the bare server and its spinning copies, and read off the spin that matches kubeconfigd.
  awk -v o="$ours" -v b="$base" <<<"$table" '
    NF == 2 { n++; x = $1 / 1000; y = 1e6 / $2; sx += x; sy += y; sxx += x * x; sxy += x * y }
    END {
      m = (n * sxy - sx * sy) / (n * sxx - sx * sx); c = (sy - m * sx) / n
      printf "  each us of work per call adds %.2f us to the time per call (bare: %.2f us); fitted over %d servers\n", m, 1e6 / b, n
      printf "  kubeconfigd (%.2f us per call) runs like the bare server plus about %.1f us of work per call\n", 1e6 / o, (1e6 / o - c) / m
      printf "  a ratio of 0.85x allows about %.1f us of work per call\n", (1e6 / b / 0.85 - c) / m
    }'
done
