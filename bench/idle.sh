#!/usr/bin/env bash
# What an idle agent connection costs a peer: satmesh bench --idle N -> satmesh run ->
# satmesh sink, on loopback. Reads satmesh's resident memory (VmRSS, /proc/PID/status)
# before the N connections, while they are held (every one made a keepAlive call and
# went quiet), and after they closed, and prints KiB per connection.
#
#   bench/idle.sh [N] [HOLD_SECONDS]
# BIN=path/to/satmesh uses a given build instead of building target/release/satmesh.
# SETTLE=S reads the held figure S seconds (default 1) after the last connection is set
# up; keep it below HOLD_SECONDS.
# Extra SATMESH__ variables reach the peer (e.g. SATMESH__SERVER__READ_BUFFER_BYTES).
set -euo pipefail
N=${1:-1000}; HOLD=${2:-4}
. "$(dirname "$0")/local.sh"
start_sink
start_peer SATMESH__SERVER__MAX_CONNECTIONS=$((N + 1000))

rss() { awk '/^VmRSS/ {print $2}' "/proc/$PEER/status"; }
conns() { curl -s "http://$PEER_ADMIN/metrics" | awk '/^satmesh_agent_connections / {print $2}'; }

# Warm up: the runtime's workers, the upstream connection, the first batches.
$BIN bench --target "$PEER_GRPC" --idle 50 --duration 0s >/dev/null 2>&1
sleep 1
r0=$(rss)
$BIN bench --target "$PEER_GRPC" --idle "$N" --duration "${HOLD}s" --json >"$work/idle.json" 2>"$work/idle.err" &
BENCH=$!
until grep -q "idle: set up" "$work/idle.err" 2>/dev/null; do sleep 0.1; done
sleep "${SETTLE:-1}"
r1=$(rss); open=$(conns)
wait $BENCH
sleep 1
r2=$(rss)
python3 - "$N" "$r0" "$r1" "$r2" "$open" "$work/idle.json" <<'PY'
import json, sys
n, r0, r1, r2 = map(int, sys.argv[1:5])
open_ = sys.argv[5]
report = json.load(open(sys.argv[6]))
print(f"{report['established']} of {n} established ({report['served']} served, failures {report['failures']}) "
      f"in {report['setup_seconds']:.1f} s; peer saw {open_} open; {report['closed_early']} closed early")
print(f"satmesh VmRSS: {r0} KiB before, {r1} KiB with {n} idle connections, {r2} KiB after they closed")
print(f"per idle connection: {(r1 - r0) / n:.2f} KiB")
PY
