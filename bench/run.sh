#!/usr/bin/env bash
# The benchmark of issues 5 and 9, in one run (about 13 minutes on 2 cores; --smoke:
# under a minute).
#
#   bench/run.sh [--smoke] [--out DIR] [--bin PATH] [--cargo-profile NAME] [--only SECTION,...]
#   sections: throughput, sweep, unary, delivery, queue, idle, micro
#
# With the same load per message size it measures each path: agents -> sink (direct, the
# floor), agents -> satmesh -> sink, agents -> nginx grpc_pass -> sink; then a sweep over
# the number of connections, unary keepAlive latency at a fixed rate, delivery latency at
# a paced load, satmesh's memory queue against its disk queue (fsync interval and always:
# CPU, fsyncs/s, bytes written per byte received, the wait for the OK, paced delivery
# latency), 10,000 idle connections held by satmesh, and the criterion benches of the
# ring lookup and the routing-key peek. For every process: CPU seconds (/proc) and peak
# RSS. It writes docs/BENCHMARKS.md, docs/bench-connections.png and the raw results in
# target/bench/ (or all three in --out DIR).
#
# Here: install what is missing (Debian's nginx and gnuplot-nox), raise the open-files
# limit, then hand over to bench/satbench/ (Python, standard library only), which builds
# satmesh unless --bin is given.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)   # paths in the arguments stay relative to the caller

export PATH="$PATH:/usr/sbin:/sbin"   # nginx lives in /usr/sbin
need() { # need COMMAND PACKAGE: install PACKAGE unless COMMAND exists
    command -v "$1" >/dev/null 2>&1 && return
    echo "bench/run.sh: installing $2" >&2
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}
# Debian's nginx carries the grpc and http_v2 modules (`nginx -V`); nginx-light is only
# a transitional name for it on bookworm.
need nginx nginx
need gnuplot gnuplot-nox

# 10,000 idle connections: satmesh holds one descriptor each, the load generator one each.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m satbench "$@"
