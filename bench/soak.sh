#!/usr/bin/env bash
# The soak-and-chaos run (docs/benchmarks.md, "The soak"): two kubeconfigd replicas sharing Redis — a
# standalone Redis, then a Redis Cluster of 3 masters + 3 replicas — under mixed gRPC and REST load at
# half the rate they sustain (measured at the start), 1,000 watch streams, real kubeconfig-agent
# processes and about 10 inventory edits a second (a tenth of them revocations), while faults are
# injected at known times: Redis restarted and frozen, a cluster master killed and brought back, each
# replica stopped with SIGTERM and started again, the inventory volume rewritten. Prints a table per
# fault window and the rules checked; exits non-zero when one breaks.
#   bench/soak.sh [duration=10m] [soak flags: --topology standalone|cluster|both, --clusters N, ...]
#   bench/soak.sh 60s --load-share 0.3   # the profile CI runs (.ci/run): about 3 minutes for both topologies
# Release build (a debug build cannot carry this load on two cores). Needs redis-server and redis-cli
# (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10m}
shift || true
cargo build --release -q -p kubeconfigd -p kubeconfig-agent -p kubeconfigd-e2e --bins
exec target/release/soak --duration "$duration" "$@"
