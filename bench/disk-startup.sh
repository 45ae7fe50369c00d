#!/usr/bin/env bash
# Start-up time of a disk-queue peer with ~1 GiB queued: fill it through satmesh bench
# (4 KiB segments, the OAP down: 127.0.0.1:9 refuses), kill -9, then time three
# restarts from exec to its "listening" line. The queue lives under target/ (a real disk,
# not tmpfs). Usage: bench/disk-startup.sh (BIN=path uses another build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=target/release/satmesh; fi
work=$(mktemp -d "$PWD/target/startup.XXXX"); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
Q=$work/queue
run_peer() {
  env SATMESH__SERVER__LISTEN=127.0.0.1:0 SATMESH__ADMIN__LISTEN=127.0.0.1:0 \
    SATMESH__UPSTREAM__STATIC=127.0.0.1:9 SATMESH__PIPELINE__QUEUE=disk \
    SATMESH__PIPELINE__DISK__PATH=$Q SATMESH__PIPELINE__DISK__MAX_BYTES=2147483648 \
    SATMESH__PIPELINE__DISK__FSYNC=interval \
    $BIN run --config config/satmesh.yaml >"$work/$1.out" 2>"$work/$1.err" &
  echo $!
}
P=$(run_peer a)
until grep -q listening $work/a.out; do sleep 0.05; done
GRPC=$(sed -E 's/.*grpc=([^ ]+).*/\1/' $work/a.out)
$BIN bench --target $GRPC --connections 8 --streams 2 --size 4096 --messages 270000 --duration 120s >/dev/null 2>&1 || true
du -sh $Q
kill -9 $P; sleep 0.5
for i in 1 2 3; do
  s=$(date +%s.%N)
  P=$(run_peer b$i)
  until grep -q listening $work/b$i.out; do sleep 0.005; done
  e=$(date +%s.%N)
  echo "start to listening with $(du -sh $Q | cut -f1) queued: $(python3 -c "print(f'{$e-$s:.3f}')") s"
  kill -9 $P; sleep 0.3
done
