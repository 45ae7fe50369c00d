# Sourced by bench/quick.sh and bench/idle.sh: a sink and one satmesh peer in front of it,
# on loopback, each its own process; both end with the calling script.
#
# Sets BIN (given, or target/release/satmesh built now) and `work` (a temporary directory,
# removed at exit), then `start_sink` sets SINK, SINK_GRPC, SINK_ADMIN and
# `start_peer [VAR=value ...]` (extra environment for the peer) sets PEER, PEER_GRPC,
# PEER_ADMIN. CONFIG=path/to/satmesh.yaml uses another config for the peer.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=target/release/satmesh
fi
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# addresses FILE: the "grpc=A admin=B" of a process's "listening" line, once it is there.
addresses() {
    until grep -q listening "$1" 2>/dev/null; do sleep 0.05; done
    sed -E 's/.*grpc=([^ ]+) admin=([^ ]+).*/\1 \2/' "$1"
}

start_sink() {
    $BIN sink --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$work/sink.out" 2>"$work/sink.err" &
    SINK=$!
    read -r SINK_GRPC SINK_ADMIN < <(addresses "$work/sink.out")
}

start_peer() {
    env SATMESH__SERVER__LISTEN=127.0.0.1:0 SATMESH__ADMIN__LISTEN=127.0.0.1:0 \
        SATMESH__UPSTREAM__STATIC="$SINK_GRPC" "$@" \
        $BIN run --config "${CONFIG:-config/satmesh.yaml}" >"$work/peer.out" 2>"$work/peer.err" &
    PEER=$!
    read -r PEER_GRPC PEER_ADMIN < <(addresses "$work/peer.out")
}
