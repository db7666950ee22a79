#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer on the stable toolchain and runs each for a given time.
#   fuzz/run.sh [seconds per target] [target ...]     (default: 60 s, every target)
# Prints each target's executions and the total; exits non-zero on a crash (the input is kept under
# fuzz/artifacts/<target>/). Corpora start from fuzz/corpus/<target> (small, in the repository) and grow
# in fuzz/target/corpus/<target> (not committed).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(cluster_record pack_analysis tenant_file credentials agent_messages)
fi

# rustc's stable flags for libFuzzer's coverage feedback (what cargo-fuzz passes, minus sanitizers,
# which need a nightly compiler).
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps these flags off build scripts and proc macros (they are not linked with
# libFuzzer).
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bins --target "$host"

total=0
for target in "${targets[@]}"; do
  mkdir -p "target/corpus/$target" "artifacts/$target"
  log=$(mktemp)
  status=0
  "target/$host/release/$target" "target/corpus/$target" "corpus/$target" \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=5 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  total=$((total + runs))
  echo "$target: $runs executions in ${seconds}s, exit $status"
  if ((status != 0)); then
    tail -40 "$log"
    exit "$status"
  fi
  rm -f "$log"
done
echo "total: $total executions, no crash"
