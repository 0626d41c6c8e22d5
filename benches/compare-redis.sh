#!/usr/bin/env bash
# Compares trove with Redis on the same event stream, at the same rates.
#
# Starts a redis-server of its own on a free loopback port, with persistence off, runs
# `trove bench --peer redis` once per workload preset and rate (open loop), or once per preset
# in closed loop, and prints one table: for each preset and rate, trove's figure, Redis's, and
# trove / Redis. Both presets by default: the default mix, about half of whose events the
# rules refuse (cheaply), and accept-heavy, whose events mostly succeed. The redis-server it started
# is stopped on every way out it can see (end, error, Ctrl-C, TERM, HUP; not SIGKILL).
#
# Usage:
#   benches/compare-redis.sh [--rates "5000 10000 20000"] [--closed N] [--out DIR]
#                            [--presets "default accept-heavy"] [--trove PATH]
#                            [--redis-cpus LIST] [-- FLAGS FOR trove bench]
#
#   --rates LIST      open-loop rates in events/s, space- or comma-separated (default: 5000 10000 20000)
#   --closed N        one closed-loop run with N events in flight per connection instead
#   --presets LIST    workload presets (`trove bench --preset`), space- or comma-separated
#                     (default: default accept-heavy)
#   --out DIR         where each run's reports go, one folder per run (default: a new temp folder)
#   --trove PATH      the trove binary (default: $TROVE, else target/release/trove)
#   --redis-cpus LIST pin redis-server to these CPUs (taskset), as trove's node is pinned
#   -- FLAGS          passed as they are to every `trove bench` run (--duration, --client-cpus,
#                     --node-cpus, --connections, --seed, ...)
#
# Needs redis-server and redis-cli (Debian/Ubuntu: apt-get install redis-server) and python3 or
# jq to read the runs' summary.json (schema trove.bench.summary/v1).
# Exit status: 0 done, 1 a run failed, 2 bad usage, 3 something needed is not installed.
set -euo pipefail

die() {
    local status=$1
    shift
    echo "compare-redis: $*" >&2
    exit "$status"
}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rates="5000 10000 20000"
closed=""
presets="default accept-heavy"
out_dir=""
trove=${TROVE:-$repo_root/target/release/trove}
redis_cpus=""
bench_flags=()

while (($# > 0)); do
    case $1 in
    --rates) rates=${2:?--rates needs a list of rates}; shift 2 ;;
    --closed) closed=${2:?--closed needs a number of events in flight}; shift 2 ;;
    --presets) presets=${2:?--presets needs a list of workload presets}; shift 2 ;;
    --out) out_dir=${2:?--out needs a folder}; shift 2 ;;
    --trove) trove=${2:?--trove needs the path of the trove binary}; shift 2 ;;
    --redis-cpus) redis_cpus=${2:?--redis-cpus needs a CPU list}; shift 2 ;;
    --) shift; bench_flags=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die 2 "unknown flag '$1' (see --help)" ;;
    esac
done

rates=${rates//,/ }
for rate in $rates; do
    if [[ ! $rate =~ ^[0-9]+([.][0-9]+)?$ || $rate =~ ^0+([.]0+)?$ ]]; then
        die 2 "'$rate' is not a rate: give positive numbers of events per second"
    fi
done
presets=${presets//,/ }
for preset in $presets; do
    [[ $preset =~ ^[a-z-]+$ ]] || die 2 "'$preset' is not a workload preset (default, accept-heavy)"
done
if [[ -n $closed && ! $closed =~ ^[1-9][0-9]*$ ]]; then
    die 2 "--closed '$closed' is not a positive number of events in flight"
fi

# What this script needs, checked before anything starts.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    die 3 "redis-server (and redis-cli) are not installed; install them with
    apt-get install redis-server      (Debian, Ubuntu)
    dnf install redis                 (Fedora)
    brew install redis                (macOS)
and run this script again"
fi
if command -v jq >/dev/null; then
    json_reader=jq
elif command -v python3 >/dev/null; then
    json_reader=python3
else
    die 3 "reading the runs' summary.json needs jq or python3; install one (apt-get install jq)"
fi
[[ -x $trove ]] || die 3 "no trove binary at $trove; build it with 'cargo build --release' or pass --trove PATH"
bench_help=$("$trove" bench --help 2>&1) || die 3 "'$trove bench --help' failed: $bench_help"
for flag in --peer --redis-addr --rate --closed --quiet --out --preset; do
    grep -q -- "$flag" <<<"$bench_help" || die 3 "this trove's 'bench' has no $flag flag; build a newer trove"
done
if [[ -n $redis_cpus ]]; then
    command -v taskset >/dev/null || die 3 "--redis-cpus needs taskset (apt-get install util-linux)"
fi

work_dir=$(mktemp -d "${TMPDIR:-/tmp}/compare-redis.XXXXXX")
[[ -n $out_dir ]] || out_dir=$work_dir/reports
mkdir -p "$out_dir"
redis_pid=""
bench_pid=""

stop_redis() {
    if [[ -n $redis_pid ]] && kill -0 "$redis_pid" 2>/dev/null; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    redis_pid=""
}
cleanup() {
    if [[ -n $bench_pid ]]; then
        kill "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    stop_redis
    # Reports asked for with --out stay; only the scratch folder (and reports in it) goes
    # when they were not asked for somewhere else.
    if [[ $out_dir != "$work_dir"/* ]]; then
        rm -rf "$work_dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# A port nothing listens on: a connection to it is refused.
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# Starts redis-server on a free port (trying again if another process takes it first).
start_redis() {
    local attempt pinning=()
    [[ -z $redis_cpus ]] || pinning=(taskset -c "$redis_cpus")
    for attempt in 1 2 3 4 5; do
        redis_port=$(free_port) || die 1 "found no free loopback port"
        "${pinning[@]}" redis-server --bind 127.0.0.1 --port "$redis_port" \
            --save '' --appendonly no --dir "$work_dir" \
            --logfile "$work_dir/redis.log" --daemonize no &
        redis_pid=$!
        for _ in $(seq 1 50); do
            if redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
                return 0
            fi
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        stop_redis
        echo "compare-redis: redis-server did not start on port $redis_port (attempt $attempt)" >&2
    done
    die 1 "redis-server would not start; its log: $(tail -5 "$work_dir/redis.log" 2>/dev/null)"
}

# Prints the rows of one run's summary as TSV: metric, trove, Redis, trove / Redis ("-": none).
summary_rows() {
    local summary=$1
    if [[ $json_reader == jq ]]; then
        jq -r '
            def row(name; figure; ratio): [name, (.main | figure), (.peer | figure), ratio];
            if .peer == null then error("no peer results: did trove bench run --peer redis?") else . end
            | [ row("achieved rate (/s)"; .achieved_rate_per_s; .ratios_to_peer.achieved_rate),
                row("corrected p50 (us)"; .latency_us.corrected.p50; .ratios_to_peer.corrected_p50),
                row("corrected p99 (us)"; .latency_us.corrected.p99; .ratios_to_peer.corrected_p99),
                row("corrected p99.9 (us)"; .latency_us.corrected.p999; .ratios_to_peer.corrected_p999),
                row("uncorrected p50 (us)"; .latency_us.uncorrected.p50; .ratios_to_peer.uncorrected_p50),
                row("uncorrected p99 (us)"; .latency_us.uncorrected.p99; .ratios_to_peer.uncorrected_p99),
                row("errors"; .events.errors; null) ]
            | .[] | map(if . == null then "-" else tostring end) | @tsv' "$summary"
    else
        python3 - "$summary" <<'PY'
import json, sys

summary = json.load(open(sys.argv[1]))
if summary["peer"] is None:
    sys.exit("no peer results: did trove bench run --peer redis?")
ratios = summary["ratios_to_peer"] or {}

def figure(run, path):
    for key in path:
        run = run[key]
    return run

rows = [
    ("achieved rate (/s)", ["achieved_rate_per_s"], "achieved_rate"),
    ("corrected p50 (us)", ["latency_us", "corrected", "p50"], "corrected_p50"),
    ("corrected p99 (us)", ["latency_us", "corrected", "p99"], "corrected_p99"),
    ("corrected p99.9 (us)", ["latency_us", "corrected", "p999"], "corrected_p999"),
    ("uncorrected p50 (us)", ["latency_us", "uncorrected", "p50"], "uncorrected_p50"),
    ("uncorrected p99 (us)", ["latency_us", "uncorrected", "p99"], "uncorrected_p99"),
    ("errors", ["events", "errors"], None),
]
for name, path, ratio in rows:
    values = [figure(summary["main"], path), figure(summary["peer"], path), ratios.get(ratio)]
    print("\t".join([name] + ["-" if value is None else str(value) for value in values]))
PY
    fi
}

# Prints $1 with $2 decimals and the suffix $3, or "-" for none.
number() {
    if [[ $1 == - ]]; then echo -; else printf '%.*f%s' "$2" "$1" "${3:-}"; fi
}

# Adds the rows of one run's summary to the table, labelled with its load.
table=()
add_rows() {
    local load=$1 summary=$2 rows metric ours theirs ratio decimals
    rows=$(summary_rows "$summary") || die 1 "cannot read $summary"
    while IFS=$'\t' read -r metric ours theirs ratio; do
        decimals=1
        [[ $metric != errors ]] || decimals=0
        table+=("$(printf '%-26s %-22s %14s %14s %12s' "$load" "$metric" \
            "$(number "$ours" "$decimals")" "$(number "$theirs" "$decimals")" \
            "$(number "$ratio" 2 x)")")
    done <<<"$rows"
}

# One `trove bench` run against trove and the Redis peer; $1 names it, the rest are its load
# flags. It runs in the background so that a signal to this script is handled at once.
run_bench() {
    local name=$1 status=0
    shift
    redis-cli -p "$redis_port" flushall >/dev/null ||
        die 1 "cannot empty the benchmark's redis-server"
    echo "compare-redis: running trove bench $* against trove and Redis" >&2
    "$trove" bench "$@" --peer redis --redis-addr "127.0.0.1:$redis_port" --quiet \
        --out "$out_dir/$name" "${bench_flags[@]}" &
    bench_pid=$!
    wait "$bench_pid" || status=$?
    bench_pid=""
    ((status == 0)) || die 1 "trove bench $* failed (exit $status); see its messages above"
}

start_redis
echo "compare-redis: redis-server $(redis-server --version | grep -o 'v=[^ ]*') on 127.0.0.1:$redis_port (pid $redis_pid)" >&2

for preset in $presets; do
    if [[ -n $closed ]]; then
        run_bench "$preset-closed-$closed" --preset "$preset" --closed "$closed"
        add_rows "$preset closed $closed" "$out_dir/$preset-closed-$closed/summary.json"
    else
        for rate in $rates; do
            run_bench "$preset-rate-$rate" --preset "$preset" --rate "$rate"
            add_rows "$preset $rate/s" "$out_dir/$preset-rate-$rate/summary.json"
        done
    fi
done
stop_redis

echo
printf '%-26s %-22s %14s %14s %12s\n' "load" "metric" "trove" "redis" "trove/redis"
printf '%s\n' "${table[@]}"
echo
echo "Ratios are trove / Redis: below 1x trove is faster for latencies, above 1x it achieves more for rates."
echo "Reports (summary.json, .hgrm, .hlog, plots) of each run: $out_dir"
