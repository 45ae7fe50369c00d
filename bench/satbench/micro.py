"""The criterion micro-benchmarks: run with cargo, read from criterion's own output.

Each bench writes under its own CRITERION_HOME (criterion's documented override of
target/criterion), so the run reads exactly the estimates it produced.
"""

import json
import os
import shutil
import subprocess

from .procs import COMMANDS, ROOT, relative

# (name, cargo package, bench target)
BENCHES = (
    ("ring", "satmesh-cluster", "ring"),
    ("peek", "satmesh-proto", "peek"),
)


def run(name, package, target, home, log, quick: bool, profile: str | None) -> list[dict]:
    shutil.rmtree(home, ignore_errors=True)
    argv = ["cargo", "bench", "-p", package, "--bench", target]
    if profile:
        argv += ["--profile", profile]
    argv += ["--", "--noplot"]
    if quick:
        # Stop at 5 % spread instead of the benches' 2 s windows, fewer resamples.
        argv += ["--quick", "--nresamples", "1000"]
    shown = " ".join(argv)
    COMMANDS.append((f"micro {name}", f"CRITERION_HOME={relative(home)} {shown}"))
    with open(log, "w") as out:
        rc = subprocess.run(
            argv, cwd=ROOT, env={**os.environ, "CRITERION_HOME": home}, stdout=out, stderr=out
        ).returncode
    if rc != 0:
        raise RuntimeError(f"`{shown}` exited {rc}: {open(log).read()[-2000:]}")
    return read(home)


def read(home: str) -> list[dict]:
    """Every `new/estimates.json` under a criterion home, with its benchmark id."""
    out = []
    for d, _, files in os.walk(home):
        if os.path.basename(d) != "new" or "estimates.json" not in files:
            continue
        est = json.load(open(os.path.join(d, "estimates.json")))
        meta = json.load(open(os.path.join(d, "benchmark.json")))
        out.append(
            {
                "id": meta.get("full_id") or meta.get("title"),
                "mean_ns": est["mean"]["point_estimate"],
                "mean_low_ns": est["mean"]["confidence_interval"]["lower_bound"],
                "mean_high_ns": est["mean"]["confidence_interval"]["upper_bound"],
                "median_ns": est["median"]["point_estimate"],
            }
        )
    return sorted(out, key=lambda e: e["id"])
