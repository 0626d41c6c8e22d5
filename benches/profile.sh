#!/usr/bin/env bash
# Records where a trove node's shards spend their time during a benchmark, as flame graphs.
#
# Runs `trove bench` (an embedded node and its load generator in one process), samples the
# process with `perf record -g` on the software cpu-clock (it works on VMs without a hardware
# PMU) during the measured phase, and draws two SVG flame graphs with inferno:
#   shards.svg   the node's shard threads only (trove-shard-N): where a shard's time goes
#   process.svg  every thread, load generator included
# plus perf.data, the folded stacks (shards.folded, process.folded) and the bench's output.
#
# Usage:
#   benches/profile.sh [--seconds S] [--frequency HZ] [--out DIR] [--trove PATH]
#                      [-- FLAGS FOR trove bench]
#
#   --seconds S       seconds of samples, taken after the bench's 1 s warm-up (default 4)
#   --frequency HZ    samples per second per CPU (default 1999)
#   --out DIR         where everything goes (default: a new folder profile.XXXXXX in $TMPDIR)
#   --trove PATH      the trove binary (default: $TROVE, else target/release/trove)
#   -- FLAGS          passed as they are to `trove bench` (default: one shard on CPU 1, the
#                     generator on CPU 0, one connection: --node-cpus 1 --client-cpus 0
#                     --connections 1); --duration is set from --seconds
#
# Needs perf (Debian: apt-get install linux-perf) and inferno's collapse-perf and flamegraph
# binaries (cargo install inferno --locked). Without perf it says so and skips (exit 0).
# Exit status: 0 done or skipped, 1 the run failed, 2 bad usage, 3 inferno is not installed
# or perf may not sample.
set -euo pipefail

die() {
    local status=$1
    shift
    echo "profile: $*" >&2
    exit "$status"
}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=4
frequency=1999
out_dir=""
trove=${TROVE:-$repo_root/target/release/trove}
bench_flags=(--node-cpus 1 --client-cpus 0 --connections 1)

while (($# > 0)); do
    case $1 in
    --seconds) seconds=${2:?--seconds needs a number of seconds}; shift 2 ;;
    --frequency) frequency=${2:?--frequency needs samples per second}; shift 2 ;;
    --out) out_dir=${2:?--out needs a folder}; shift 2 ;;
    --trove) trove=${2:?--trove needs the path of the trove binary}; shift 2 ;;
    --) shift; bench_flags=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die 2 "unknown flag '$1' (see --help)" ;;
    esac
done

[[ $seconds =~ ^[1-9][0-9]*$ ]] || die 2 "--seconds '$seconds' is not a whole number of seconds above 0"
[[ $frequency =~ ^[1-9][0-9]*$ ]] || die 2 "--frequency '$frequency' is not a number of samples per second"
for flag in "${bench_flags[@]}"; do
    [[ $flag != --duration* ]] || die 2 "--duration is set from --seconds; leave it out of the bench flags"
done

if ! command -v perf >/dev/null; then
    echo "profile: skipped: perf is not installed (Debian: apt-get install linux-perf; Ubuntu: linux-tools-generic)" >&2
    exit 0
fi
if ! perf record -e cpu-clock -o /dev/null -q -- true >/dev/null 2>&1; then
    die 3 "perf may not sample here; run as root or lower kernel.perf_event_paranoid (sysctl -w kernel.perf_event_paranoid=1), and allow perf_event_open in a container"
fi
for tool in inferno-collapse-perf inferno-flamegraph; do
    command -v "$tool" >/dev/null || die 3 "$tool is not installed; install inferno's tools with
    cargo install inferno --locked
and run this script again"
done
[[ -x $trove ]] || die 3 "no trove binary at $trove; build it with 'cargo build --release' or pass --trove PATH"

[[ -n $out_dir ]] || out_dir=$(mktemp -d "${TMPDIR:-/tmp}/profile.XXXXXX")
mkdir -p "$out_dir"
bench_pid=""
cleanup() {
    if [[ -n $bench_pid ]]; then
        kill "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# The bench measures for --duration after a 1 s warm-up; the samples start once the warm-up is
# over and stop a little before the end, so that set-up and shutdown stay out of them.
"$trove" bench "${bench_flags[@]}" --duration $((seconds + 1)) >"$out_dir/bench.txt" 2>&1 &
bench_pid=$!
sleep 1.5
kill -0 "$bench_pid" 2>/dev/null || die 1 "trove bench ended before sampling began: $(tail -5 "$out_dir/bench.txt")"
echo "profile: sampling trove bench (pid $bench_pid) for $seconds s at $frequency Hz" >&2
perf record -e cpu-clock -F "$frequency" -g -p "$bench_pid" -o "$out_dir/perf.data" -- sleep "$seconds" \
    2>"$out_dir/perf-record.txt" || die 1 "perf record failed: $(tail -3 "$out_dir/perf-record.txt")"
status=0
wait "$bench_pid" || status=$?
bench_pid=""
((status == 0)) || die 1 "trove bench failed (exit $status): $(tail -5 "$out_dir/bench.txt")"

perf script -i "$out_dir/perf.data" >"$out_dir/perf.script" 2>/dev/null ||
    die 1 "perf script could not read $out_dir/perf.data"
# perf script prints one block per sample, its first line starting with the thread's name.
awk 'BEGIN { RS = ""; ORS = "\n\n" } /^trove-shard-/' "$out_dir/perf.script" |
    inferno-collapse-perf >"$out_dir/shards.folded"
inferno-collapse-perf <"$out_dir/perf.script" >"$out_dir/process.folded"
[[ -s $out_dir/shards.folded ]] ||
    die 1 "no samples of a trove-shard thread; was the node embedded (no --target)?"
inferno-flamegraph --title "trove node: shard threads (${bench_flags[*]})" \
    <"$out_dir/shards.folded" >"$out_dir/shards.svg"
inferno-flamegraph --title "trove bench: whole process (${bench_flags[*]})" \
    <"$out_dir/process.folded" >"$out_dir/process.svg"
rm -f "$out_dir/perf.script"

grep -E "achieved rate" "$out_dir/bench.txt" >&2 || true
echo "profile: flame graphs $out_dir/shards.svg (shard threads) and $out_dir/process.svg (everything)" >&2
