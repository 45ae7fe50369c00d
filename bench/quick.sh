#!/usr/bin/env bash
# First throughput figure: agents (satmesh bench) -> satmesh run -> satmesh sink, on
# loopback, each a separate process. Reports events/s arrived at the sink and satmesh's
# CPU time per forwarded event, read from /proc/PID/stat (utime + stime).
#
#   bench/quick.sh [SIZE_BYTES] [SECONDS] [CONNECTIONS] [STREAMS]
# CALL_INTERVAL=10ms paces each stream (a moderate load, for the latency figure).
# PEER_ENV="SATMESH__PIPELINE__QUEUE=disk ..." runs the peer with that environment (its
# disk queue directory inside the run's temporary directory unless set); then the disk
# figures are printed too: fsyncs/s, bytes the peer wrote to the device per payload byte
# received (/proc/PID/io write_bytes), and the p99 of the time a call waited for its OK.
# BIN=path/to/satmesh uses a given build instead of building target/release/satmesh.
# The delivery latency (queued -> acknowledged by the OAP) is read from satmesh's
# histogram: the figure is the upper bound of the bucket holding the quantile.
set -euo pipefail
SIZE=${1:-300}; SECS=${2:-10}; CONNS=${3:-8}; STREAMS=${4:-2}
. "$(dirname "$0")/local.sh"
start_sink
# shellcheck disable=SC2086 # PEER_ENV is a list of VAR=value words
start_peer SATMESH__PIPELINE__DISK__PATH="$work/queue" ${PEER_ENV:-}

ticks=$(getconf CLK_TCK)
cpu() { awk -v t="$ticks" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
arrived() { curl -s "http://$SINK_ADMIN/counts" | python3 -c 'import json,sys; print(sum(m["messages"] for m in json.load(sys.stdin)["methods"].values()))'; }

# Warm up the connections, then measure.
$BIN bench --target "$PEER_GRPC" --connections "$CONNS" --streams "$STREAMS" --size "$SIZE" --duration 2s >/dev/null 2>&1
sleep 0.5
c0=$(cpu $PEER); s0=$(cpu $SINK); a0=$(arrived); t0=$(date +%s.%N); w0=$(written $PEER)
curl -s "http://$PEER_ADMIN/metrics" >"$work/m0"
$BIN bench --target "$PEER_GRPC" --connections "$CONNS" --streams "$STREAMS" --size "$SIZE" \
    --duration "${SECS}s" --call-interval "${CALL_INTERVAL:-0s}" --json >"$work/bench.json" 2>/dev/null &
BENCH=$!
wait $BENCH
# Let everything acknowledged land before the second CPU sample: that work is theirs.
acked=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["messages"])' "$work/bench.json")
for _ in $(seq 600); do
    [ $(( $(arrived) - a0 )) -ge "$acked" ] && break
    sleep 0.05
done
c1=$(cpu $PEER); s1=$(cpu $SINK); a1=$(arrived); t1=$(date +%s.%N); w1=$(written $PEER)
curl -s "http://$PEER_ADMIN/metrics" >"$work/m1"
python3 - "$c0" "$c1" "$s0" "$s1" "$a0" "$a1" "$t0" "$t1" "$work/bench.json" "$SIZE" "$CONNS" "$STREAMS" "$work/m0" "$work/m1" "$w0" "$w1" <<'PY'
import json, re, sys
c0, c1, s0, s1, a0, a1, t0, t1 = map(float, sys.argv[1:9])
bench = json.load(open(sys.argv[9]))
size, conns, streams = sys.argv[10:13]
events = a1 - a0
print(f"message size {size} B, {conns} connections x {streams} streams, {bench['seconds']:.1f} s")
print(f"acknowledged to agents: {bench['messages']} ({bench['messages_per_second']:.0f}/s), errors {bench['errors_by_status']}")
print(f"arrived at the sink:    {events:.0f} ({events / bench['seconds']:.0f} events/s)")
print(f"satmesh CPU: {c1 - c0:.2f} s = {(c1 - c0) / events * 1e6:.2f} us per forwarded event")
print(f"sink CPU:    {s1 - s0:.2f} s = {(s1 - s0) / events * 1e6:.2f} us per received event")

def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'satmesh_delivery_latency_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
        if m:
            out[float(m.group(1))] = int(m.group(2))
    return out
b0, b1 = buckets(sys.argv[13]), buckets(sys.argv[14])
delta = sorted((le, b1[le] - b0.get(le, 0)) for le in b1)
total = delta[-1][1] if delta else 0
def quantile(q):
    for le, n in delta:
        if n >= q * total:
            return f"<= {le * 1000:g} ms"
    return "n/a"
print(f"delivery latency (queued -> OAP ack): p50 {quantile(0.5)}, p99 {quantile(0.99)}, p999 {quantile(0.999)}")

def sample(path, name):
    for line in open(path):
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
fsyncs = sample(sys.argv[14], "satmesh_disk_fsyncs_total") - sample(sys.argv[13], "satmesh_disk_fsyncs_total")
if sample(sys.argv[14], "satmesh_disk_bytes_limit") > 0:
    w0, w1 = float(sys.argv[15]), float(sys.argv[16])
    seconds = t1 - t0
    settle = {}
    for path, sign in ((sys.argv[13], -1), (sys.argv[14], 1)):
        for line in open(path):
            m = re.match(r'satmesh_disk_settle_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
            if m:
                settle[float(m.group(1))] = settle.get(float(m.group(1)), 0) + sign * int(m.group(2))
    waits = sorted(settle.items())
    n = waits[-1][1] if waits else 0
    p99 = next((f"<= {le * 1000:g} ms" for le, c in waits if c >= 0.99 * n), "n/a")
    print(f"disk: {fsyncs / seconds:.0f} fsyncs/s, {(w1 - w0) / (events * int(size)):.2f} bytes written per payload byte, OK wait p99 {p99} ({n} calls waited)")
PY
