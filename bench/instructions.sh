#!/usr/bin/env bash
# Instructions per cached download, kubeconfigd --demo against the bare baseline, counted by callgrind
# (valgrind): unlike throughput on a shared machine, the count is the same from run to run, so it shows
# what a change to the per-call path did. Each server runs under callgrind on loopback; after a
# warm-up call the counters are zeroed, N calls are made (REST: h2load --h1 -c4; gRPC: h2load -c4
# -m16), and the counters are dumped. Prints instructions per call and the ratio, then the functions
# with the most instructions (inclusive) in kubeconfigd's REST run.
#   bench/instructions.sh [calls=5000]
# KUBECONFIGD_BENCH_FLAGS passes extra flags to kubeconfigd (e.g. `--log-format json`).
# Notes: valgrind does not run SHA-NI, so SHA-256 (hashing the API key) counts several times what it
# costs on a CPU that has it; `rep movsb` copies count one instruction per byte.
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-5000}
for tool in valgrind callgrind_annotate callgrind_control h2load curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install valgrind nghttp2-client curl)" >&2; exit 1; }
done
cargo build --release -q -p kubeconfigd -p kubeconfigd-e2e --bins
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
uid=6470a2b1c5e6f1a2b3c4d5e1
key=demo-viewer-key
rest_url="http://127.0.0.1:8075/v1/spectroclusters/$uid/assets/kubeconfig"
grpc_url="http://127.0.0.1:50075/kubeconfig.v1.KubeconfigService/GetKubeconfig"
python3 - "$work/request.bin" "$uid" <<'PY'
import struct, sys
uid = sys.argv[2].encode()
message = b"\x0a" + bytes([len(uid)]) + uid  # GetKubeconfigRequest{uid}
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
PY

# count NAME SURFACE COMMAND...: runs COMMAND under callgrind, makes $calls calls on SURFACE, prints
# the instructions per call and leaves the profile in $work/NAME-SURFACE.out.
count() {
  local name=$1 surface=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$work/$name-$surface.raw" "$@" >"$work/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -sf -o /dev/null -H "ApiKey: $key" "$rest_url" && break; sleep 0.2; done
  curl -sf -o "$work/body.yaml" -H "ApiKey: $key" "$rest_url" || { echo "$name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
  callgrind_control -z "$pid" >/dev/null 2>&1
  if [ "$surface" = rest ]; then
    h2load --h1 -n "$calls" -c 4 -t 1 -H "ApiKey: $key" "$rest_url" >"$work/load.txt"
  else
    h2load -n "$calls" -c 4 -m 16 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
      -H "apikey: $key" -d "$work/request.bin" "$grpc_url" >"$work/load.txt"
  fi
  grep -q "$calls succeeded" "$work/load.txt" || { echo "$name $surface: not every call succeeded" >&2; cat "$work/load.txt" >&2; exit 1; }
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  # The dump made after zeroing is the second file callgrind wrote.
  cp "$(ls "$work/$name-$surface.raw".* | sort | tail -1)" "$work/$name-$surface.out"
  callgrind_annotate "$work/$name-$surface.out" | awk -v n="$calls" '/PROGRAM TOTALS/ {gsub(",", "", $1); print int($1 / n)}'
}

target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50075 --rest-addr 127.0.0.1:8075 --admin-addr 127.0.0.1:8076 >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf -o "$work/body.yaml" -H "ApiKey: $key" "$rest_url" && break; sleep 0.1; done
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
cp "$work/body.yaml" "$work/bare-body.yaml"

declare -A per_call
for surface in rest grpc; do
  per_call[ours-$surface]=$(count ours "$surface" target/release/kubeconfigd --demo --grpc-addr 127.0.0.1:50075 --rest-addr 127.0.0.1:8075 --admin-addr 127.0.0.1:8076 ${KUBECONFIGD_BENCH_FLAGS:-})
  per_call[bare-$surface]=$(count bare "$surface" target/release/bare-server --grpc-addr 127.0.0.1:50075 --rest-addr 127.0.0.1:8075 --body "$work/bare-body.yaml")
done
echo "instructions per cached download ($calls calls each; $(wc -c <"$work/bare-body.yaml") bytes):"
for surface in rest grpc; do
  awk -v s="$surface" -v o="${per_call[ours-$surface]}" -v b="${per_call[bare-$surface]}" \
    'BEGIN {printf "%-5s kubeconfigd %7d  bare %7d  ratio %.2fx\n", s, o, b, o / b}'
done
echo "kubeconfigd REST: functions by inclusive instructions per call (below 90 % of the total):"
callgrind_annotate --inclusive=yes --threshold=100 "$work/ours-rest.out" |
  awk -v n="$calls" -v total="${per_call[ours-rest]}" '
    /^ *[0-9,]+ \(/ && !/PROGRAM TOTALS/ {
      c = $1; gsub(",", "", c); per = c / n
      name = $0
      sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, "", name)  # the count and share
      sub(/ \[[^]]*\]$/, "", name)                  # the binary
      sub(/^[^ ]*\.(rs|c|h|S):/, "", name)           # the source file, keep the function
      if (per < 0.9 * total && !(name in seen)) { seen[name] = 1; printf "%8d  %s\n", per, substr(name, 1, 120); if (++shown == 25) exit }
    }'
