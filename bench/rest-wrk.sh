#!/usr/bin/env bash
# wrk against the REST kubeconfig GET on one address; prints throughput, p99 and the number of calls.
#   bench/rest-wrk.sh NAME HOST:PORT API_KEY UID DURATION
set -euo pipefail
name=$1 address=$2 key=$3 uid=$4 duration=$5
out=$(mktemp)
trap 'rm -f "$out"' EXIT
wrk -t 2 -c 32 -d "$duration" --latency -H "ApiKey: $key" "http://$address/v1/spectroclusters/$uid/assets/kubeconfig" >"$out"
if grep -q "Non-2xx" "$out"; then
  echo "$name: some responses were not 2xx" >&2
  exit 1
fi
rps=$(awk '/Requests\/sec/ {print $2" req/s"}' "$out")
p99=$(awk '$1=="99%" {print $2}' "$out")
calls=$(awk '/requests in/ {print $1}' "$out")
printf '%-28s %14s  p99 %10s  (%s calls)\n' "REST $name" "$rps" "$p99" "$calls"
