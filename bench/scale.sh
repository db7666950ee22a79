#!/usr/bin/env bash
# Fleet-scale benchmark: generates N cluster files (distinct key material each), starts kubeconfigd on
# them and reports time to ready, RSS after load (beside the files' total bytes), one-file edit ->
# served latency and the CPU it cost, sustained edits per second with their lag, and ListClusters pages
# of 500. Loopback only; every phase is bounded in time.
#   bench/scale.sh N [sustained seconds=60] [edits per second=100] [--starts-only]
# Starts: three cold (the page cache dropped first; needs root, says so otherwise) and three warm; the
# RSS one second after ready, once the allocator has returned what the load freed (warm starts, 15 s
# later), and the peak of the load.
# Needs the Python virtualenv of scripts/test.sh (.venv, for grpcio) or python3 with grpcio-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:?usage: bench/scale.sh N [sustained seconds] [edits per second]}
seconds=${2:-60}
rate=${3:-100}
python=.venv/bin/python
[ -x "$python" ] || python=python3
cargo build --release -q -p kubeconfigd -p kubeconfigd-e2e --bins
fleet=bench/results/fleet-$count
if [ ! -f "$fleet/.complete" ]; then
  rm -rf "$fleet"
  echo "generating $count clusters into $fleet"
  target/release/inventory-gen "$fleet" "$count" 8
  touch "$fleet/.complete"
fi
exec "$python" bench/scale.py --binary target/release/kubeconfigd --fleet "$fleet" \
  --count "$count" --seconds "$seconds" --rate "$rate" "${@:4}"
