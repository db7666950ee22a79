#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, property, golden, end-to-end) and the Python
# client suites (grpcurl, grpcio, the Kubernetes Python loader, the README examples).
# Installs what the tests need when it is missing: redis-server, openssl, jq and kubectl (Debian packages),
# and a virtualenv in .venv with the Python clients.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The README examples pipe through jq.
command -v jq >/dev/null 2>&1 || missing+=(jq)
# kubectl signs in with minted admin kubeconfigs in the credentials suite.
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]}: install them (e.g. apt-get install ${missing[*]}) and rerun" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
export PATH="$PWD/.venv/bin:$PATH"

# Every count of passed and failed tests, summed into one line at the end (also when a step fails).
log=$(mktemp)
summary() {
  local status=$?
  local passed failed
  passed=$(grep -Eho '[0-9]+ passed' "$log" | awk '{n += $1} END {print n + 0}')
  failed=$(grep -Eho '[0-9]+ failed' "$log" | awk '{n += $1} END {print n + 0}')
  echo "scripts/test.sh: $passed passed, $failed failed$([ "$status" = 0 ] || echo " (stopped: exit $status)")"
  rm -f "$log"
}
trap summary EXIT

# Every test target is compiled by one command with one feature resolution (the whole workspace), and
# run by one command with the same selection, so nothing is compiled again in between; the binaries
# the end-to-end suites start are built once more without the test-only features.
cargo test --workspace --no-run
cargo build --workspace --bins
# One test at a time, so that the end-to-end suites' timing assertions (a change reaches a file within
# 1 s, …) never measure another test's load; the unit suites take seconds either way. About five
# minutes in all.
cargo test --workspace -- --test-threads=1 2>&1 | tee -a "$log"
.venv/bin/python -m pytest -q tests/python 2>&1 | tee -a "$log"
