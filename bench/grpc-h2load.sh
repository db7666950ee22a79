#!/usr/bin/env bash
# h2load against GetKubeconfig on one gRPC address; prints throughput and p99.
#   bench/grpc-h2load.sh NAME HOST:PORT API_KEY UID REQUESTS [extra h2load flags, e.g. --rps=N]
# h2load ignores grpc-status, so the script first checks with curl that the call really succeeds.
set -euo pipefail
name=$1 address=$2 key=$3 uid=$4 requests=$5
shift 5
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/request.bin" "$uid" <<'PY'
import struct, sys
uid = sys.argv[2].encode()
message = b"\x0a" + bytes([len(uid)]) + uid  # GetKubeconfigRequest{uid}
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
PY
url="http://$address/kubeconfig.v1.KubeconfigService/GetKubeconfig"
curl -s --http2-prior-knowledge -o /dev/null -D "$work/headers" -H 'content-type: application/grpc' -H 'te: trailers' \
  -H "apikey: $key" --data-binary @"$work/request.bin" "$url"
if grep -qi 'grpc-status: [1-9]' "$work/headers"; then
  echo "$name: the call fails ($(grep -i grpc-message "$work/headers" | tr -d '\r')); not measuring" >&2
  exit 1
fi
h2load -n "$requests" -c 4 -m 16 -t 2 "$@" -H 'content-type: application/grpc' -H 'te: trailers' -H "apikey: $key" \
  -d "$work/request.bin" --log-file="$work/log" "$url" >"$work/out"
rps=$(grep -Eo 'finished in [0-9.]+[a-z]+, [0-9.]+ req/s' "$work/out" | grep -Eo '[0-9.]+ req/s')
ok=$(grep -Eo '[0-9]+ succeeded' "$work/out")
p99=$(cut -f3 "$work/log" | sort -n | awk '{a[NR]=$1} END {printf "%.2f ms", a[int(NR*0.99)]/1000}')
printf '%-28s %14s  p99 %10s  (%s of %s)\n' "gRPC $name" "$rps" "$p99" "$ok" "$requests"
