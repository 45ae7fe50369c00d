"""Issue 5's targets and the disk queue's (issue 9), checked against the figures of the
same run."""

import re
import statistics

RATIO_NAMES = (
    "satmesh / nginx: proxy CPU per event",
    "satmesh proxy / direct sink: CPU per event",
    "satmesh / nginx: all processes' CPU per event",
    "satmesh / nginx: events/s",
    "satmesh / direct: events/s",
)


def unary_medians(runs) -> dict:
    """Each path's median over its unary rounds of p50, p99, p999 (us) and its calls."""
    by_path = {}
    for r in runs:
        if "error" not in r:
            by_path.setdefault(r["path"], []).append(r["unary"])
    return {
        path: {
            **{k: statistics.median(u[k] for u in rounds) for k in ("p50_us", "p99_us", "p999_us")},
            "rounds": len(rounds),
            "calls": sum(u["calls"] for u in rounds),
        }
        for path, rounds in by_path.items()
    }


def _run(runs, path, size, round_=None):
    """The successful run of a path and size (in a round), if any."""
    return next((r for r in runs if r["path"] == path and r["size"] == size and "error" not in r
                 and (round_ is None or r.get("round", 1) == round_)), None)


def rounds(runs) -> list:
    """The throughput rounds in the results (runs without one are round 1)."""
    return sorted({r.get("round", 1) for r in runs})


def median_round(runs, size):
    """The round whose satmesh/nginx proxy CPU ratio at `size` is the median (the lower
    middle one for an even count); None when no round has both."""
    key = RATIO_NAMES[0]
    scored = [(v, n) for n in rounds(runs) if (v := ratios(runs, size, n)[key]) is not None]
    if not scored:
        return None
    scored.sort()
    return scored[(len(scored) - 1) // 2][1]


def _div(a, b):
    return a / b if a is not None and b else None


def _total(r):
    return sum(p["cpu_seconds"] for p in r["processes"].values()) / r["events"] * 1e6 if r and r["events"] else None


def ratios(runs, size, round_=None) -> dict:
    s, n, d = (_run(runs, p, size, round_) for p in ("satmesh", "nginx", "direct"))
    proxy = lambda r: r["processes"]["proxy"]["cpu_us_per_event"] if r else None  # noqa: E731
    floor = d["processes"]["sink"]["cpu_us_per_event"] if d else None
    eps = lambda r: r["events_per_second"] if r else None  # noqa: E731
    return dict(zip(RATIO_NAMES, (
        _div(proxy(s), proxy(n)),
        _div(proxy(s), floor),
        _div(_total(s), _total(n)),
        _div(eps(s), eps(n)),
        _div(eps(s), eps(d)),
    )))


def _missing(section, *runs) -> str:
    """Why a target has no figure: its section did not run, or a run it needs failed."""
    if section["status"] in ("pending", "skipped"):
        return section["status"]
    return "a scenario it needs failed"


def _verdict(value, limit):
    if value is None:
        return "n/a"
    return "met" if value <= limit else "**missed**"


def _rows(doc):
    """(target, measured, verdict) for every target of issue 5, then the disk queue's."""
    res = doc["results"]
    rows = []
    tp = res["throughput"]
    for size in doc["plan"]["sizes"]:
        name = _name(size)
        runs = tp.get("runs", [])
        middle = median_round(runs, size)
        s, n, d = (_run(runs, p, size, middle) for p in ("satmesh", "nginx", "direct"))
        many = len(rounds(runs)) > 1
        of = f" (median of {len(rounds(runs))} rounds: round {middle})" if many and middle else ""
        # satmesh's proxy CPU per event against: nginx's proxy, the direct path's sink.
        for target, other, role, vs, limit in (
            (f"satmesh CPU/event <= nginx's, {name}", n, "proxy", "", 1.0),
            (f"satmesh CPU/event <= ~1.5x the receive-only sink's, {name}", d, "sink",
             " (direct path's sink)", 1.5),
        ):
            if s and other:
                sc, oc = s["processes"]["proxy"]["cpu_us_per_event"], other["processes"][role]["cpu_us_per_event"]
                ratio = _div(sc, oc)
                rows.append((target, f"{sc:.2f} us vs {oc:.2f} us{vs}: {ratio:.2f}x{of}", _verdict(ratio, limit)))
            else:
                rows.append((target, _missing(tp, s, other), "n/a"))
    idle = res["idle"]
    if idle["status"] == "ok":  # every run of a section "ok" succeeded
        r = idle["runs"][0]
        rows.append((f"{r['connections']:,} idle connections: <= 10 KiB each",
                     f"{r['kib_per_connection']:.2f} KiB", _verdict(r["kib_per_connection"], 10.0)))
    else:
        rows.append(("10,000 idle connections: <= 10 KiB each", idle["status"], "n/a"))
    un = res["unary"]
    if un["status"] == "ok":
        p99 = {path: m["p99_us"] for path, m in unary_medians(un["runs"]).items()}
        sa, na = p99["satmesh"] - p99["direct"], p99["nginx"] - p99["direct"]
        rows.append(("unary p99 added by satmesh <= added by nginx",
                     f"{sa:,.0f} us vs {na:,.0f} us", "met" if sa <= na else "**missed**"))
    else:
        rows.append(("unary p99 added by satmesh <= added by nginx", un["status"], "n/a"))
    de = res["delivery"]
    if de["status"] == "ok":
        p99 = next(r["latency"]["p99_us"] for r in de["runs"] if r["path"] == "satmesh")
        rows.append(("async delivery p99 through satmesh <= flush 20 ms + 10 ms",
                     f"{p99 / 1000:.1f} ms", _verdict(p99 / 1000, 30.0)))
    else:
        rows.append(("async delivery p99 through satmesh <= flush 20 ms + 10 ms", de["status"], "n/a"))
    mi = res["micro"]
    ring = [e for e in mi.get("benches", {}).get("ring", []) if "/shared/" in e["id"]]
    peek = [e for e in mi.get("benches", {}).get("peek", []) if re.search(r"segment_(8\d{3})B", e["id"])]
    if ring:
        worst = max(ring, key=lambda e: e["mean_ns"])
        rows.append(("ring lookup <= 200 ns", f"{worst['mean_ns']:.0f} ns (`{worst['id']}`, worst)",
                     _verdict(worst["mean_ns"], 200.0)))
    else:
        rows.append(("ring lookup <= 200 ns", mi["status"] if mi["status"] != "ok" else "no estimate", "n/a"))
    if peek:
        e = peek[0]
        rows.append(("routing-key peek <= 2 us on 8 KiB", f"{e['mean_ns'] / 1000:.2f} us (`{e['id']}`)",
                     _verdict(e["mean_ns"], 2000.0)))
    else:
        rows.append(("routing-key peek <= 2 us on 8 KiB", mi["status"] if mi["status"] != "ok" else "no estimate", "n/a"))
    return rows + _queue_rows(doc)


# The disk queue (issue 9): the `queue` section's runs carry `queue` (scenarios.QUEUES).
QUEUE_NAMES = {"memory": "memory", "interval": "disk, fsync interval", "always": "disk, fsync always"}


def queue_run(runs, size, queue, round_):
    return next((r for r in runs if r["size"] == size and r["queue"] == queue
                 and r["round"] == round_ and "error" not in r), None)


def _cpu(r):
    return r["processes"]["proxy"]["cpu_us_per_event"] if r else None


def queue_ratio(runs, size, queue, round_):
    """satmesh's CPU per event with `queue` over the memory queue's, in the same round."""
    return _div(_cpu(queue_run(runs, size, queue, round_)), _cpu(queue_run(runs, size, "memory", round_)))


def queue_median_round(runs, size):
    """The round whose disk always / memory CPU ratio at `size` is the median (the lower
    middle one), else the same by disk interval; else the first round with a figure."""
    for queue in ("always", "interval"):
        scored = sorted((v, n) for n in rounds(runs) if (v := queue_ratio(runs, size, queue, n)) is not None)
        if scored:
            return scored[(len(scored) - 1) // 2][1]
    return next((r["round"] for r in runs if r["size"] == size and "error" not in r), None)


def paced_p99_us(paced, queue):
    """The median over rounds of the paced delivery p99 (us) through `queue`, and how
    many rounds it is of."""
    got = [r["latency"]["p99_us"] for r in paced if r["queue"] == queue and "error" not in r]
    return (statistics.median(got), len(got)) if got else (None, 0)


def _worst(parts: dict, limit, at_least=False) -> str:
    """The verdict on the worst of some figures (None: a run failed, no verdict)."""
    values = [v for v in parts.values() if v is not None]
    if not values or len(values) < len(parts):
        return "n/a"
    return "met" if (min(values) >= limit if at_least else max(values) <= limit) else "**missed**"


def _fig(v, unit="", digits=2) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


def _queue_rows(doc):
    """The disk queue's targets, each on the median round of its size."""
    res = doc["results"].get("queue", {"status": "skipped"})
    runs, paced = res.get("runs", []), res.get("paced", [])
    sizes = doc["plan"]["sizes"]
    middle = {size: queue_median_round(runs, size) for size in sizes}
    many = len(rounds(runs)) > 1

    def of(size):
        return f" (median of {len(rounds(runs))} rounds: round {middle[size]})" if many and middle[size] else ""

    def run(size, queue):
        return queue_run(runs, size, queue, middle.get(size))

    rows = []
    for size in sizes:
        target = f"disk queue: satmesh CPU/event <= 1.5x the memory queue's, {_name(size)}"
        parts = {q: queue_ratio(runs, size, q, middle[size]) for q in ("interval", "always")}
        figure = (f"interval {_fig(parts['interval'], 'x')}, always {_fig(parts['always'], 'x')}"
                  f" of memory's {_fig(_cpu(run(size, 'memory')), ' us')}{of(size)}")
        rows.append(_queue_row(res, target, parts, figure, 1.5))

    always = run(300, "always")
    eps = always["events_per_second"] if always else None
    rows.append(_queue_row(res, "disk queue, fsync always: >= 200,000 events/s at 300 B", {"always": eps},
                           f"{_fig(eps, ' events/s', 0)}{of(300)}", 200_000, at_least=True))

    parts = {(size, q): r["queue_figures"]["written_per_payload_byte"] if (r := run(size, q)) else None
             for size in sizes for q in ("interval", "always")}
    figure = "; ".join(f"{_name(size)}: interval {_fig(parts[(size, 'interval')])}, always"
                       f" {_fig(parts[(size, 'always')])}" for size in sizes) + (" (median rounds)" if many else "")
    rows.append(_queue_row(res, "disk queue: bytes written to disk per byte received <= 1.2", parts, figure, 1.2))

    target = "async delivery p99 through the disk queue <= flush_interval + 20 ms"
    flush = res.get("config", {}).get("flush_interval_ms")
    medians = {q: paced_p99_us(paced, q) for q in ("interval", "always")}
    parts = {q: p99 / 1000 if p99 is not None else None for q, (p99, _) in medians.items()}
    counts = {n for _, n in medians.values()}
    of_rounds = (f"; median of {max(counts)} rounds" if len(counts) == 1 and max(counts) > 1
                 else "; median of each queue's rounds" if len(counts) > 1 else "")
    if flush is None:
        rows.append((target, _missing(res), "n/a"))
    else:
        figure = (f"interval {_fig(parts['interval'], ' ms', 1)}, always {_fig(parts['always'], ' ms', 1)}"
                  f" (paced; limit {flush + 20:g} ms{of_rounds})")
        rows.append(_queue_row(res, target, parts, figure, flush + 20))
    return rows


def _queue_row(res, target, parts: dict, figure: str, limit, at_least=False):
    """(target, figure, verdict on the worst part); no figure when every part is missing."""
    if all(v is None for v in parts.values()):
        return (target, _missing(res), "n/a")
    return (target, figure, _worst(parts, limit, at_least))


def _name(size) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def section(doc) -> list[str]:
    out = ["## Targets", ""]
    if doc["mode"] == "smoke":
        out += ["(smoke run: the verdicts below mean nothing)", ""]
    out += ["| target (issue 5; disk queue: issue 9) | measured in this run | |", "|---|---|---|"]
    out += [f"| {t} | {m} | {v} |" for t, m, v in _rows(doc)]
    return out + [""]
