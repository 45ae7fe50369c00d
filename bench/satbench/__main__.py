"""bench/run.sh's body: runs every scenario, keeps the raw results, writes the report.

Sections, in order (SECTIONS; `--only` picks some): throughput (direct, satmesh, nginx at
full speed), sweep (connections), unary (keepAlive latency), delivery (paced latency),
queue (satmesh's memory queue against its disk queue, fsync interval and always), idle
(10,000 idle connections), micro (criterion benches).

    python3 -m satbench [--smoke] [--out DIR] [--bin PATH] [--cargo-profile NAME]
                        [--only SECTION,...]

(with bench/ on PYTHONPATH, as bench/run.sh runs it after its install steps.)
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from . import micro, report, scenarios
from .machine import facts
from .procs import COMMANDS, ROOT, Runner, bench_supports, relative

# The load of each section. The full run takes about 13 minutes on 2 cores (the queue
# section about 5); the smoke runs every step for a second or less, so CI sees it work,
# not how fast.
FULL = {
    "sizes": [300, 4096],
    "connections": 8,
    "streams": 2,
    "warm": 2.0,
    "seconds": 10.0,
    # Rounds of every size and path in turn; a ratio is taken within a round (the same
    # stretch of the shared machine) and the report's figure is the median round.
    "throughput_rounds": 3,
    "sweep_connections": [1, 4, 16, 64],
    "sweep_size": 300,
    "sweep_warm": 1.0,
    "sweep_seconds": 5.0,
    "unary_rate": 500,
    "unary_connections": 4,
    "unary_warm": 1.0,
    "unary_seconds": 10.0,
    # Rounds of direct, satmesh, nginx in turn; the figures are each path's median round,
    # so one noisy stretch of the shared machine does not decide the comparison.
    "unary_rounds": 3,
    "delivery_size": 300,
    "delivery_interval": "10ms",
    "delivery_warm": 1.0,
    "delivery_seconds": 8.0,
    # Rounds of every size and queue (memory, disk fsync interval, disk fsync always) in
    # turn through satmesh at full speed, then each queue at the delivery section's paced
    # load; a ratio to the memory queue is taken within a round.
    "queue_rounds": 3,
    "idle_connections": 10000,
    "idle_timeout": 120.0,
    "micro_quick": False,
}
SMOKE = {
    **FULL,
    "warm": 0.2,
    "seconds": 0.5,
    "throughput_rounds": 1,
    "sweep_connections": [1, 4],
    "sweep_warm": 0.2,
    "sweep_seconds": 0.5,
    "unary_rate": 200,
    "unary_warm": 0.2,
    "unary_seconds": 0.5,
    "unary_rounds": 1,
    "delivery_warm": 0.2,
    "delivery_seconds": 0.5,
    "queue_rounds": 1,
    "idle_connections": 200,
    "idle_timeout": 30.0,
    "micro_quick": True,
}
SECTIONS = ("throughput", "sweep", "unary", "delivery", "queue", "idle", "micro")


def build(profile: str) -> str:
    cmd = ["cargo", "build", "--profile", profile, "--bin", "satmesh"]
    COMMANDS.append(("build", " ".join(cmd)))
    subprocess.run(cmd, cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "debug" if profile == "dev" else profile, "satmesh")


def pending(reason: str) -> dict:
    return {"status": "pending", "reason": reason}


def attempt(name: str, run, **what) -> dict:
    """One scenario; a failure is recorded in its place and the section goes on."""
    print(f"satbench: {name}", file=sys.stderr)
    try:
        return run()
    except Exception as e:
        traceback.print_exc()
        return {**what, "error": f"{type(e).__name__}: {e}"}


def with_runs(runs: list[dict]) -> dict:
    failed = [r for r in runs if "error" in r]
    if failed:
        return {"status": "failed", "reason": f"{len(failed)} of {len(runs)} scenarios failed", "runs": runs}
    return {"status": "ok", "runs": runs}


def section_throughput(r, plan, args):
    c, s = plan["connections"], plan["streams"]
    runs = []
    for round_ in range(1, plan.get("throughput_rounds", 1) + 1):
        for size in plan["sizes"]:
            for path in scenarios.PATHS:
                name = f"throughput {path} {size} B (round {round_})"
                run = attempt(
                    name,
                    lambda: scenarios.throughput(r, name, path, size, c, s, plan["warm"], plan["seconds"]),
                    path=path, size=size, connections=c, streams=s,
                )
                runs.append({**run, "round": round_})
    return with_runs(runs)


def section_sweep(r, plan, args):
    runs = []
    size, s = plan["sweep_size"], plan["streams"]
    for conns in plan["sweep_connections"]:
        for path in scenarios.PATHS:
            name = f"sweep {path} {conns} connections"
            runs.append(attempt(
                name,
                lambda: scenarios.throughput(
                    r, name, path, size, conns, s, plan["sweep_warm"], plan["sweep_seconds"]
                ),
                path=path, size=size, connections=conns, streams=s,
            ))
    return with_runs(runs)


def section_unary(r, plan, args):
    if not bench_supports(r.binary, "--keepalive-rate"):
        return pending("`satmesh bench --keepalive-rate` is not in this build yet")
    runs = []
    for round_ in range(1, plan.get("unary_rounds", 1) + 1):
        for path in scenarios.PATHS:
            run = attempt(
                f"unary {path} (round {round_})",
                lambda: scenarios.unary(
                    r, path, plan["unary_rate"], plan["unary_connections"],
                    plan["unary_warm"], plan["unary_seconds"],
                ),
                path=path,
            )
            runs.append({**run, "round": round_})
    return with_runs(runs)


def section_delivery(r, plan, args):
    if not scenarios.sink_has_latency(r):
        return pending("the sink's `GET /latency` is not in this build yet")
    runs = [
        attempt(
            f"delivery {path}",
            lambda: scenarios.delivery(
                r, path, plan["delivery_size"], plan["connections"], plan["streams"],
                plan["delivery_interval"], plan["delivery_warm"], plan["delivery_seconds"],
            ),
            path=path,
        )
        for path in scenarios.PATHS
    ]
    return with_runs(runs)


def section_queue(r, plan, args):
    """Issue 9: the memory queue and the disk queue (fsync interval, always) on the same
    load: full speed at every size with the disk figures, then paced for the latency."""
    config = scenarios.queue_config(r)
    c, s = plan["connections"], plan["streams"]
    runs, paced = [], []
    for round_ in range(1, plan["queue_rounds"] + 1):
        for size in plan["sizes"]:
            for queue in scenarios.QUEUES:
                name = f"queue {queue} {size} B (round {round_})"
                run = attempt(
                    name,
                    lambda: scenarios.throughput(
                        r, name, "satmesh", size, c, s, plan["warm"], plan["seconds"],
                        scenarios.queue_env(r, queue), queue_figures=True,
                    ),
                    size=size,
                )
                runs.append({**run, "queue": queue, "round": round_})
        for queue in scenarios.QUEUES:
            name = f"queue delivery {queue} (round {round_})"
            run = attempt(
                name,
                lambda: scenarios.delivery(
                    r, "satmesh", plan["delivery_size"], c, s, plan["delivery_interval"],
                    plan["delivery_warm"], plan["delivery_seconds"], scenarios.queue_env(r, queue), name,
                ),
            )
            paced.append({**run, "queue": queue, "round": round_})
    result = with_runs(runs + paced)
    return {**result, "runs": runs, "paced": paced, "config": config}


def section_idle(r, plan, args):
    if not bench_supports(r.binary, "--idle"):
        return pending("`satmesh bench --idle` (tools/src/load/idle.rs) is not in this build yet")
    n = plan["idle_connections"]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 1024:
        return {"status": "failed", "reason": f"open-files limit {soft} < {n} connections + 1024 (bench/run.sh raises it to the hard limit)"}
    run = attempt(f"idle {n}", lambda: scenarios.idle(r, n, plan["idle_timeout"]), connections=n)
    return with_runs([run])


def section_micro(r, plan, args):
    found = {}
    for name, package, target in micro.BENCHES:
        print(f"satbench: criterion {name}", file=sys.stderr)
        home = os.path.join(args.raw, "criterion", name)
        log = os.path.join(args.raw, f"criterion-{name}.log")
        found[name] = micro.run(
            name, package, target, home, log, plan["micro_quick"],
            None if args.cargo_profile == "release" else args.cargo_profile,
        )
    return {"status": "ok", "benches": found}


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Issue 5's benchmark: direct, satmesh and nginx paths under the same load,"
        " a connections sweep, unary and delivery latency, the memory and disk queues (issue 9),"
        " idle connections, criterion benches; writes BENCHMARKS.md, bench-connections.png and"
        " results.json.",
    )
    ap.add_argument("--smoke", action="store_true", help="seconds, not minutes (CI)")
    ap.add_argument("--out", help="write the report, plot and raw JSON here (default: docs/ and target/bench/)")
    ap.add_argument("--bin", help="a satmesh binary to use instead of building one")
    ap.add_argument("--cargo-profile", default="release", help="cargo profile of the build and the criterion benches")
    ap.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    args = ap.parse_args()
    plan = SMOKE if args.smoke else FULL
    out = os.path.abspath(args.out) if args.out else os.path.join(ROOT, "docs")
    args.raw = os.path.abspath(args.out) if args.out else os.path.join(ROOT, "target", "bench")
    os.makedirs(out, exist_ok=True)
    os.makedirs(args.raw, exist_ok=True)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    if only - set(SECTIONS):
        ap.error(f"unknown section(s) {','.join(sorted(only - set(SECTIONS)))}; known: {','.join(SECTIONS)}")

    started = time.time()
    machine = facts(start=True)
    binary = os.path.abspath(args.bin) if args.bin else build(args.cargo_profile)
    work = tempfile.mkdtemp(prefix="satbench-")
    runner = Runner(binary, work)
    results = {}
    failed = False
    for name in SECTIONS:
        if name not in only:
            results[name] = {"status": "skipped", "reason": "not in --only", "wall_seconds": 0.0}
            continue
        t0 = time.monotonic()
        try:
            results[name] = globals()[f"section_{name}"](runner, plan, args)
        except Exception as e:
            traceback.print_exc()
            results[name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            failed = True
        results[name]["wall_seconds"] = time.monotonic() - t0
        failed |= results[name]["status"] == "failed"

    doc = {
        "mode": "smoke" if args.smoke else "full",
        "started": started,
        "wall_seconds": time.time() - started,
        "binary": relative(binary),
        "binary_given": bool(args.bin),
        "cargo_profile": args.cargo_profile,
        "plan": plan,
        "machine": {**machine, **facts(start=False)},
        "results": results,
        "commands": COMMANDS,
    }
    if failed:
        doc["logs"] = work  # every process's stdout and stderr, kept to look at
    else:
        shutil.rmtree(work)
    raw = os.path.join(args.raw, "results.json")
    with open(raw, "w") as f:
        json.dump(doc, f, indent=1)
    md = report.write(doc, out, raw)
    print(f"satbench: wrote {md} and {raw} in {doc['wall_seconds']:.0f} s", file=sys.stderr)
    for name, res in results.items():
        if res["status"] != "ok":
            print(f"satbench: {name}: {res['status']}: {res.get('reason', '')}", file=sys.stderr)
    if failed:
        print(f"satbench: the processes' logs are in {work}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
