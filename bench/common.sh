# Shared by the load scripts under bench/ (sourced, not run): checks the load tools, builds the release
# binaries, makes a work directory removed at exit with every server started into `pids`, and defines
# the demo cluster and key the loads use, `rate` (the req/s figure of a load script's line), `median`
# (of whitespace-separated numbers on stdin) and `measure` (one load, its rate and the server's CPU per
# call recorded).
for tool in h2load wrk curl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nghttp2-client wrk curl)" >&2; exit 1; }
done
cargo build --release -q -p kubeconfigd -p kubeconfigd-e2e --bins
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

uid=6470a2b1c5e6f1a2b3c4d5e1
key=demo-viewer-key
rate() { awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "req/s") print $i}'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Times the scheduler took a CPU away from any thread of PID (involuntary context switches): with the
# load tool on the same cores, a server is preempted more often the more CPU it uses per call, and each
# preemption costs system time again, so this is part of why the rates move from day to day.
preemptions() { cat "/proc/$1"/task/*/status 2>/dev/null | awk '/^nonvoluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }
# measure SLOT PID LOAD_SCRIPT ARGS...: runs a load script against the server PID, keeps its line in
# `measured`, and appends its rate to results[SLOT] and the CPU time (user + system, from /proc) the
# server spent per call, in microseconds, to cpu[SLOT], and its preemptions per call to preempted[SLOT].
# The call count comes from the line: `(N calls)` (wrk) or `(N succeeded of M)` (h2load).
declare -A results cpu preempted
measure() {
  local slot=$1 pid=$2 before switches calls
  shift 2
  before=$(cpu_ticks "$pid") switches=$(preemptions "$pid")
  measured=$("$@")
  calls=$(grep -Eo '[0-9]+ (calls|succeeded)' <<<"$measured" | grep -Eo '[0-9]+')
  results[$slot]+="$(rate <<<"$measured") "
  cpu[$slot]+="$(awk -v t="$(( $(cpu_ticks "$pid") - before ))" -v hz="$(getconf CLK_TCK)" -v n="$calls" \
    'BEGIN {printf "%.3f", t / hz * 1e6 / n}') "
  preempted[$slot]+="$(awk -v p="$(( $(preemptions "$pid") - switches ))" -v n="$calls" 'BEGIN {printf "%.3f", p / n}') "
}
