#!/usr/bin/env bash
# Runs the whole test suite ROUNDS times in a row on a loaded machine and lists every
# failure: the hunt for tests that depend on luck in timing.
#
#   scripts/flake-hunt.sh [ROUNDS] [-- NEXTEST ARGS...]
#
# The load: a `satmesh sink` and a `satmesh bench` against it (8 connections x 2 streams,
# full speed) at nice 10, restarted every 60 s for as long as the rounds run, so the
# tests share the cores with a busy neighbour as they do on a loaded CI machine. Each
# round's nextest output goes to target/flake-hunt/round-N.log; the summary lists the
# failed tests of every round. Exits 1 if any round failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
shift || true
[ "${1:-}" = "--" ] && shift
out=target/flake-hunt
mkdir -p "$out"

cargo build --workspace --all-targets --quiet
BIN=target/debug/satmesh
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The neighbour: sink + bench, each bench bounded to 60 s, looped until the rounds end.
nice -n 10 $BIN sink --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$work/sink.out" 2>/dev/null &
until grep -q listening "$work/sink.out" 2>/dev/null; do sleep 0.05; done
sink_grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' "$work/sink.out")
(
    while true; do
        nice -n 10 $BIN bench --target "$sink_grpc" --connections 8 --streams 2 \
            --duration 60s >/dev/null 2>&1 || sleep 1
    done
) &

failed_rounds=0
: >"$out/summary.txt"
for round in $(seq "$ROUNDS"); do
    start=$(date +%s)
    if cargo nextest run --workspace --no-fail-fast "$@" >"$out/round-$round.log" 2>&1; then
        status=passed
    else
        status=FAILED
        failed_rounds=$((failed_rounds + 1))
    fi
    took=$(($(date +%s) - start))
    line="round $round: $status in ${took}s"
    fails=$(grep -E '^\s+(FAIL|TIMEOUT|SIGSEGV|SIGABRT) ' "$out/round-$round.log" | sort -u || true)
    echo "$line" | tee -a "$out/summary.txt"
    [ -n "$fails" ] && echo "$fails" | tee -a "$out/summary.txt"
done
echo "$failed_rounds of $ROUNDS rounds failed (logs in $out/)" | tee -a "$out/summary.txt"
[ "$failed_rounds" = 0 ]
