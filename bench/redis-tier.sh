#!/usr/bin/env bash
# The Redis tier against Redis itself, in one run: kubeconfigd --demo with the in-process tier off (so
# every call reads the sealed value from Redis, authenticates and decodes it, and serves it) under wrk,
# beside redis-benchmark GET of a value the size of the kubeconfig, both with 32 connections and no
# pipelining, in interleaved rounds. Prints each run, the medians and their ratio.
#   bench/redis-tier.sh [rounds=3] [wrk duration=5s]
# Needs redis-server and redis-benchmark (Debian redis-server, redis-tools), wrk and curl. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-5s}
for tool in redis-server redis-benchmark wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
cargo build --release -q -p kubeconfigd
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

redis_port=6391
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
target/release/kubeconfigd --demo --cache-memory 0 --redis-url "redis://127.0.0.1:$redis_port" \
  --cache-key-file tests/fixtures/cache.key --grpc-addr 127.0.0.1:50081 --rest-addr 127.0.0.1:8081 \
  --admin-addr 127.0.0.1:8083 >"$work/kubeconfigd.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8083/readyz >/dev/null && break; sleep 0.1; done
kill -0 "${pids[1]}" 2>/dev/null || { echo "kubeconfigd exited (ports in use?):" >&2; cat "$work/kubeconfigd.log" >&2; exit 1; }
uid=6470a2b1c5e6f1a2b3c4d5e1
url="http://127.0.0.1:8081/v1/spectroclusters/$uid/assets/kubeconfig"
size=$(curl -sf -H "ApiKey: demo-viewer-key" "$url" | wc -c)
sleep 0.5
curl -sf -H "ApiKey: demo-viewer-key" "$url" >/dev/null
tiers=$(curl -sf http://127.0.0.1:8083/metrics | grep '^kubeconfigd_cache_hits_total')
grep -q 'tier="redis"} [1-9]' <<<"$tiers" || { echo "the call was not served from Redis:" >&2; echo "$tiers" >&2; exit 1; }

tier() { curl -sf http://127.0.0.1:8083/metrics | awk -v t="$1" -F'[{}" ]+' '$1 == "kubeconfigd_cache_hits_total" && $3 == t {print $4}'; }
redis_before=$(tier redis) flight_before=$(tier in_flight)
echo "value: $size bytes of kubeconfig (stored sealed); $(nproc) cores; $rounds interleaved rounds"
ours=() theirs=()
for round in $(seq "$rounds"); do
  rps=$(wrk -t 2 -c 32 -d "$duration" -H "ApiKey: demo-viewer-key" "$url" | awk '/Requests\/sec/ {print $2}')
  echo "round $round: kubeconfigd REST, Redis tier   $rps req/s"
  ours+=("$rps")
  rps=$(redis-benchmark -p "$redis_port" -t set,get -n 200000 -c 32 -d "$size" -q | tr '\r' '\n' | awk '/^GET: [0-9.]+ requests per second/ {print $2}')
  echo "round $round: redis-benchmark GET          $rps req/s"
  theirs+=("$rps")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
awk -v o="$(median "${ours[@]}")" -v b="$(median "${theirs[@]}")" \
  'BEGIN {printf "medians: kubeconfigd %.0f/s, redis-benchmark GET %.0f/s, ratio %.2fx\n", o, b, o / b}'
# Concurrent calls for the same file share one Redis read (single flight): say how the calls were
# answered, so the figure is not read as "one Redis round trip per call".
redis_reads=$(( $(tier redis) - redis_before )) shared=$(( $(tier in_flight) - flight_before ))
awk -v r="$redis_reads" -v s="$shared" 'BEGIN {printf "kubeconfigd calls: %d answered by their own Redis read, %d by a concurrent read of the same value (%.0f%%)\n", r, s, 100 * s / (r + s)}'
grep -q 'tier="render"} 1$' <(curl -sf http://127.0.0.1:8083/metrics) || echo "note: more than one render happened (Redis entries expired or were refused)" >&2
