#!/usr/bin/env bash
# Interleaved rounds of the disk queue's storage A/B (docs/disk-queue-storage.md): each
# round runs every workload on every store, one run at a time, so a noisy stretch of a
# shared machine lands on all stores alike. Appends each run's `result` line to $OUT.
#   ROUNDS=3 STORES="segment fjall redb" DIR=/var/tmp/disk-ab OUT=results.txt bench/disk-ab/rounds.sh
# WHAT=steady|recover|both (both). DIR must be on the disk under test, not a tmpfs.
set -euo pipefail
cd "$(dirname "$0")"
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/disk-ab}
ROUNDS=${ROUNDS:-3}
STORES=${STORES:-segment fjall redb}
DIR=${DIR:-/var/tmp/disk-ab}
OUT=${OUT:-results/results.txt}
WHAT=${WHAT:-both}
FILL_MIB=${FILL_MIB:-1024}
mkdir -p "$DIR" "$(dirname "$OUT")"

run() {
    echo "round=$round $*" >&2
    "$BIN" "$@" --dir "$DIR" | sed "s/^result /result round=$round /" | tee -a "$OUT"
}

# Workloads, one a line: a store is appended. Every store runs a workload back to back,
# so their figures of a round were taken under about the same load.
WORKLOADS=(
    # One record per call: 16 calls in flight, each waits for its sync.
    "steady --size 300 --events 500000"
    "steady --size 4096 --events 200000"
    # 64 records per call: the store's write path, not the sync, is the limit.
    "steady --size 300 --events 2000000 --batch 64"
    "steady --size 4096 --events 250000 --batch 64"
    # Fill, SIGKILL, reopen: page cache kept (a process restart) or dropped (a host's).
    "recover --size 300 --fill-mib $FILL_MIB"
    "recover --size 300 --fill-mib $FILL_MIB --cold"
    "recover --size 4096 --fill-mib $FILL_MIB"
    "recover --size 4096 --fill-mib $FILL_MIB --cold"
)

for round in $(seq 1 "$ROUNDS"); do
    for workload in "${WORKLOADS[@]}"; do
        case "$WHAT:$workload" in
            steady:recover* | recover:steady*) continue ;;
        esac
        for store in $STORES; do
            # shellcheck disable=SC2086 # the workload is words
            run $workload --store "$store"
        done
    done
done
