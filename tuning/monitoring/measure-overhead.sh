#!/usr/bin/env bash
# What serving /metrics costs: trove bench's embedded node with the endpoint off, then on and
# scraped every second, alternating, RUNS times each; then `trove gate` judges "on" against
# "off" as its baseline (exit 0: no regression beyond the thresholds and the noise floor).
#
#   tuning/monitoring/measure-overhead.sh [RUNS] [DURATION_S]      (defaults 5 and 5)
#
# Needs curl and a release build (cargo build --release). Writes into a temporary folder,
# which it names at the end; removes nothing else and leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
duration=${2:-5}
trove=./target/release/trove
out=$(mktemp -d -t trove-metrics-overhead.XXXXXX)
port=19790
for i in $(seq 1 "$runs"); do
  "$trove" bench --duration "$duration" --quiet --out "$out/off/$i" >/dev/null
  (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics" || true; done) &
  scraper=$!
  "$trove" bench --duration "$duration" --quiet --metrics-listen "127.0.0.1:$port" \
    --out "$out/on/$i" >/dev/null
  kill "$scraper"
  wait "$scraper" 2>/dev/null || true
done
rate() { grep -o '"achieved_rate_per_s": [0-9.e+]*' "$1" | head -1 | awk '{print $2}'; }
for side in off on; do
  printf '%s:' "$side"
  for i in $(seq 1 "$runs"); do printf ' %.0f' "$(rate "$out/$side/$i/summary.json")"; done
  echo
done
"$trove" gate --baseline "$out/baseline.json" --current "$out"/off/*/summary.json --update-baseline >/dev/null
set +e
"$trove" gate --baseline "$out/baseline.json" --current "$out"/on/*/summary.json --markdown "$out/gate.md"
verdict=$?
echo "reports in $out (gate exit $verdict)"
exit "$verdict"
