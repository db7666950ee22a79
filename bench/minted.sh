#!/usr/bin/env bash
# The minted-admin-credential path under load, beside the static admin kubeconfig of the same server, in
# one run (kubeconfigd --demo, REST admin path, wrk -c32), interleaved rounds, medians and ratios:
#   static  prod-east's admin kubeconfig (a cached file: the baseline)
#   reused  prod-minted's admin kubeconfig, one caller and lifetime (a credential minted once, then
#           reused while more than half its lifetime remains: what a burst costs)
#   minted  prod-minted's admin kubeconfig with a different lifetime on every request (each one a fresh
#           certificate, signed, recorded in the ledger: the cost of minting itself)
# KUBECONFIGD_BENCH_FLAGS adds flags (e.g. `--redis-url redis://127.0.0.1:6379 --cache-key-file F` for
# the Redis ledger).
# The minted path's lifetimes cover 600..86000 s, 28000 per round: keep its duration short enough that
# a round asks for fewer (the fresh-mint count printed per round shows it; 2s is right on 2 cores).
#   bench/minted.sh [duration=2s] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-2s}
rounds=${2:-3}
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install wrk curl)" >&2; exit 1; }
done
cargo build --release -q -p kubeconfigd
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# The per-caller mint limit is lifted: one caller drives the whole load here.
target/release/kubeconfigd --demo --max-mints-per-minute 0 --grpc-addr 127.0.0.1:50081 --rest-addr 127.0.0.1:8081 --admin-addr 127.0.0.1:8083 ${KUBECONFIGD_BENCH_FLAGS:-} >"$work/kubeconfigd.log" 2>&1 & pid=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:8083/readyz >/dev/null && break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null || { echo "kubeconfigd exited (ports 50081/8081/8083 in use?):" >&2; cat "$work/kubeconfigd.log" >&2; exit 1; }
base=http://127.0.0.1:8081/v1/spectroclusters
static="$base/6470a2b1c5e6f1a2b3c4d5e1/assets/adminkubeconfig"
minted="$base/6470a2b1c5e6f1a2b3c4d5e7/assets/adminkubeconfig"
curl -sf -H 'ApiKey: demo-admin-key' "$minted" -o /dev/null || { echo "the minted path fails; not measuring" >&2; exit 1; }
cat >"$work/fresh.lua" <<'LUA'
-- A lifetime no other request of the run asks for: every request mints (the reuse key includes the
-- lifetime). Each round and each wrk thread takes its own range of 600..86000 seconds.
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
local n = 0
request = function()
  n = n + 1
  local round = tonumber(os.getenv("ROUND") or "0")
  local lifetime = 600 + (round * 28000 + id * 14000 + n) % 85400
  return wrk.format("GET", wrk.path .. "?expirationSeconds=" .. lifetime)
end
LUA
run() { # name url [script]
  local out="$work/out" args=(-t 2 -c 32 -d "$duration" --latency -H 'ApiKey: demo-admin-key')
  [ -n "${3:-}" ] && args+=(-s "$3")
  wrk "${args[@]}" "$2" >"$out"
  if grep -q "Non-2xx" "$out"; then echo "$1: some responses were not 2xx" >&2; exit 1; fi
  printf '%-8s %12s req/s  p99 %s\n' "$1" "$(awk '/Requests\/sec/ {print $2}' "$out")" "$(awk '$1=="99%" {print $2}' "$out")"
}
metric() { curl -s http://127.0.0.1:8083/metrics | awk -v m="$1" '$1==m {print $2}'; }
echo "$(nproc) cores; $rounds interleaved rounds of wrk $duration (-c32) per path"
declare -A results
for round in $(seq "$rounds"); do
  for target in "static $static" "reused $minted" "minted $minted $work/fresh.lua"; do
    set -- $target
    before=$(metric kubeconfigd_credentials_minted_total)
    line=$(ROUND=$round run "$1" "$2" "${3:-}")
    after=$(metric kubeconfigd_credentials_minted_total)
    echo "round $round: $line  (fresh mints: $(awk -v a="$after" -v b="$before" 'BEGIN {print a - b}'))"
    results[$1]+="$(awk '{print $2}' <<<"$line") "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
s=$(median <<<"${results[static]}") r=$(median <<<"${results[reused]}") m=$(median <<<"${results[minted]}")
echo "medians: static $s/s, reused $r/s (ratio $(awk -v a="$r" -v b="$s" 'BEGIN {printf "%.2f", a / b}')x), minted $m/s (ratio $(awk -v a="$m" -v b="$s" 'BEGIN {printf "%.3f", a / b}')x)"
echo "counters: minted $(metric kubeconfigd_credentials_minted_total), reused $(metric kubeconfigd_credentials_reused_total), ledger failures $(metric kubeconfigd_credential_ledger_failures_total)"
