"""Issue 5's targets, checked against the figures of the same run."""

import re

RATIO_NAMES = (
    "satmesh / nginx: proxy CPU per event",
    "satmesh proxy / direct sink: CPU per event",
    "satmesh / nginx: all processes' CPU per event",
    "satmesh / nginx: events/s",
    "satmesh / direct: events/s",
)


def unary_medians(runs) -> dict:
    """Each path's median over its unary rounds of p50, p99, p999 (us) and its calls."""
    import statistics
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
    if section["status"] in ("pending", "skipped"):
        return section["status"]
    return "a scenario it needs failed"


def _verdict(value, limit):
    if value is None:
        return "n/a"
    return "met" if value <= limit else "**missed**"


def _rows(doc):
    """(target, measured, verdict) for every target of issue 5."""
    res = doc["results"]
    rows = []
    tp = res["throughput"]
    for size in doc["plan"]["sizes"]:
        name = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"
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
    return rows


def section(doc) -> list[str]:
    out = ["## Targets", ""]
    if doc["mode"] == "smoke":
        out += ["(smoke run: the verdicts below mean nothing)", ""]
    out += ["| target (issue 5) | measured in this run | |", "|---|---|---|"]
    out += [f"| {t} | {m} | {v} |" for t, m, v in _rows(doc)]
    return out + [""]
