#!/usr/bin/env python3
"""Medians and spread (min-max) of disk-ab `result` lines, as Markdown tables.

    python3 bench/disk-ab/summarize.py bench/disk-ab/results/rounds.txt
"""
import statistics
import sys
from collections import defaultdict

STEADY = [
    ("eps", "events/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 1),
    ("stall_ms", "max stall ms", 0),
    ("events_per_sync", "events/sync", 1),
    ("wa", "device bytes / payload byte", 2),
    ("cpu_us_per_event", "CPU µs/event", 1),
    ("rss_mib", "peak RSS MiB", 0),
]
RECOVER = [
    ("fill_eps", "fill events/s", 0),
    ("on_disk_mib", "on disk MiB", 0),
    ("open_ms", "reopen ms", 0),
    ("first_ms", "first record ms", 0),
    ("all_ms", "all read ms", 0),
    ("lost", "lost", 0),
]
ORDER = ["Segment", "Fjall", "FjallKeys", "Redb", "RedbQuick"]


def parse(path):
    rows = []
    for line in open(path):
        if not line.startswith("result "):
            continue
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
        rows.append(fields)
    return rows


def cell(values, digits):
    nums = [float(v) for v in values]
    med = statistics.median(nums)
    if len(nums) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(nums):,.{digits}f}–{max(nums):,.{digits}f})"


def table(rows, key, columns, title, paired=None):
    """`paired`: a field shown as well as the ratio to the segment log's run of the same
    workload and round (the machine's load changes between rounds, less within one)."""
    groups = defaultdict(list)
    segment = {}
    for r in rows:
        groups[key(r)].append(r)
        if r["store"] == "Segment":
            segment[(key(r)[0], r.get("round"))] = r
    print(f"\n{title}\n")
    extra = [f"{paired} ÷ segment's, same round"] if paired else []
    print("| workload | store | runs | " + " | ".join([c[1] for c in columns] + extra) + " |")
    print("|---" * (3 + len(columns) + len(extra)) + "|")
    for k in sorted(groups, key=lambda k: (k[0], ORDER.index(k[1]) if k[1] in ORDER else 9)):
        rs = groups[k]
        cells = [cell([r[c[0]] for r in rs], c[2]) for c in columns]
        if paired:
            ratios = [
                float(r[paired]) / float(segment[(k[0], r.get("round"))][paired])
                for r in rs
                if (k[0], r.get("round")) in segment
            ]
            cells.append(cell(ratios, 2) if ratios else "")
        print(f"| {k[0]} | {k[1]} | {len(rs)} | " + " | ".join(cells) + " |")


def main():
    rows = []
    for path in sys.argv[1:]:
        rows += parse(path)
    steady = [r for r in rows if r.get("mode") == "steady"]
    recover = [r for r in rows if r.get("mode") == "recover"]
    table(
        steady,
        lambda r: (f"{int(r['size']):>4} B × {r['batch']}/call", r["store"]),
        STEADY,
        "Steady load: 16 producers, median (min–max) over rounds",
        paired="eps",
    )
    table(
        recover,
        lambda r: (f"{int(r['size']):>4} B {'cold' if r['cold'] == 'true' else 'warm'}", r["store"]),
        RECOVER,
        "Recovery after SIGKILL: median (min–max) over rounds",
        paired="all_ms",
    )


if __name__ == "__main__":
    main()
