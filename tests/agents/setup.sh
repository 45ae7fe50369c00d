#!/usr/bin/env bash
# Install the real SkyWalking Python agent for satmesh's integration tests.
#
# Idempotent: creates $REPO/target/agents-venv and installs apache-skywalking==1.2.0 into it,
# doing nothing when that exact version is already there. 1.2.0 is pinned because the
# 1.3.0 wheel on PyPI ships without its generated protocol modules and fails at import.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/target/agents-venv"
PIN="apache-skywalking==1.2.0"
PY="${PYTHON:-python3}"

installed() {
    [ -x "$VENV/bin/python" ] &&
        "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
import skywalking.protocol.common.Common_pb2  # the generated modules must import
sys.exit(0 if m.version("apache-skywalking") == "1.2.0" else 1)
PY
}

mkdir -p "$(dirname "$VENV")"
# Tests running in parallel may call this at once: one installs, the others wait for it.
exec 9>"$VENV.lock"
flock -w 600 9

if installed; then
    echo "agents venv ready: $VENV"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PIN"

if ! installed; then
    echo "setup.sh: $PIN did not install correctly into $VENV" >&2
    exit 1
fi
echo "agents venv ready: $VENV"
