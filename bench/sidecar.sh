#!/usr/bin/env bash
# Sidecar benchmark: change-to-file latency (median, p99) through kubeconfigd and kubeconfig-agent over
# N edits, and the server's memory per idle WatchKubeconfigs stream with M streams open.
#   bench/sidecar.sh [edits=100] [streams=1000]
# Needs the Python virtualenv of scripts/test.sh (.venv, for grpcio) or python3 with grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
cargo build --release -q -p kubeconfigd -p kubeconfig-agent --bins
exec "$python" bench/sidecar.py --server target/release/kubeconfigd --agent target/release/kubeconfig-agent \
  --edits "${1:-100}" --streams "${2:-1000}"
