#!/usr/bin/env bash
# First throughput figure: agents (satmesh bench) -> satmesh run -> satmesh sink, on
# loopback, each a separate process. Reports events/s arrived at the sink and satmesh's
# CPU time per forwarded event, read from /proc/PID/stat (utime + stime).
#
#   bench/quick.sh [SIZE_BYTES] [SECONDS] [CONNECTIONS] [STREAMS]
set -euo pipefail
SIZE=${1:-300}; SECS=${2:-10}; CONNS=${3:-8}; STREAMS=${4:-2}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/satmesh
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

$BIN sink --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$work/sink.out" 2>"$work/sink.err" &
SINK=$!
until grep -q listening "$work/sink.out" 2>/dev/null; do sleep 0.05; done
read -r SINK_GRPC SINK_ADMIN < <(sed -E 's/.*grpc=([^ ]+) admin=([^ ]+).*/\1 \2/' "$work/sink.out")

SATMESH__SERVER__LISTEN=127.0.0.1:0 SATMESH__ADMIN__LISTEN=127.0.0.1:0 \
SATMESH__UPSTREAM__STATIC=$SINK_GRPC $BIN run --config config/satmesh.yaml >"$work/peer.out" 2>"$work/peer.err" &
PEER=$!
until grep -q listening "$work/peer.out" 2>/dev/null; do sleep 0.05; done
read -r PEER_GRPC PEER_ADMIN < <(sed -E 's/.*grpc=([^ ]+) admin=([^ ]+).*/\1 \2/' "$work/peer.out")

ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
arrived() { curl -s "http://$SINK_ADMIN/counts" | python3 -c 'import json,sys; print(sum(m["messages"] for m in json.load(sys.stdin)["methods"].values()))'; }

# Warm up the connections, then measure.
$BIN bench --target "$PEER_GRPC" --connections "$CONNS" --streams "$STREAMS" --size "$SIZE" --duration 2s >/dev/null 2>&1
sleep 0.5
c0=$(cpu $PEER); s0=$(cpu $SINK); a0=$(arrived); t0=$(date +%s.%N)
$BIN bench --target "$PEER_GRPC" --connections "$CONNS" --streams "$STREAMS" --size "$SIZE" --duration "${SECS}s" --json >"$work/bench.json" 2>/dev/null &
BENCH=$!
wait $BENCH
# Let the last batches land.
sleep 0.5
c1=$(cpu $PEER); s1=$(cpu $SINK); a1=$(arrived); t1=$(date +%s.%N)
python3 - "$c0" "$c1" "$s0" "$s1" "$a0" "$a1" "$t0" "$t1" "$work/bench.json" "$SIZE" "$CONNS" "$STREAMS" <<'PY'
import json, sys
c0, c1, s0, s1, a0, a1, t0, t1 = map(float, sys.argv[1:9])
bench = json.load(open(sys.argv[9]))
size, conns, streams = sys.argv[10:13]
events = a1 - a0
print(f"message size {size} B, {conns} connections x {streams} streams, {bench['seconds']:.1f} s")
print(f"acknowledged to agents: {bench['messages']} ({bench['messages_per_second']:.0f}/s), errors {bench['errors_by_status']}")
print(f"arrived at the sink:    {events:.0f} ({events / bench['seconds']:.0f} events/s)")
print(f"satmesh CPU: {c1 - c0:.2f} s = {(c1 - c0) / events * 1e6:.2f} us per forwarded event")
print(f"sink CPU:    {s1 - s0:.2f} s = {(s1 - s0) / events * 1e6:.2f} us per received event")
PY
