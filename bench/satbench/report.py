"""docs/BENCHMARKS.md from a run's raw results: targets first, then every section."""

import os
import re
import time

from . import plot, targets
from .procs import relative

PNG = "bench-connections.png"


def num(v, digits=0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def us(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def kib(v) -> str:
    return "n/a" if v is None else f"{v / 1024:,.1f} MiB" if v >= 10240 else f"{v:,} KiB"


def size_name(b: int) -> str:
    return f"{b // 1024} KiB" if b % 1024 == 0 else f"{b} B"


def _short(error: str) -> str:
    return error.replace("|", "/").replace("\n", " ")[:160]


def _failed(lead: list[str], run: dict, width: int) -> list[str]:
    """The table row of a scenario that failed: its identifying cells, the error, blanks."""
    return lead + [f"failed: {_short(run['error'])}"] + [""] * (width - len(lead) - 1)


def _status(res: dict) -> list[str]:
    """The line a section shows instead of figures, if it has none."""
    if res["status"] == "ok":
        return []
    word = {"pending": "PENDING", "failed": "FAILED", "skipped": "SKIPPED"}[res["status"]]
    return [f"**{word}**: {res.get('reason', '')}", ""]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(head) - 1)
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def machine(doc) -> list[str]:
    m = doc["machine"]
    rows = [
        ["CPU", f"{m['cpu']}, {m['nproc']} cores usable (`nproc`)"],
        ["memory", f"{m['memory_gib']} GiB"],
        ["OS, kernel", f"{m['os']}, Linux {m['kernel']}"],
        ["rustc", m["rustc"]],
        ["nginx", m["nginx"]],
        ["gnuplot, python", f"{m['gnuplot']}, Python {m['python']}"],
        ["satmesh", f"commit {m['commit']}, binary `{doc['binary']}` ("
         + ("given with `--bin`" if doc["binary_given"] else f"cargo profile `{doc['cargo_profile']}`")
         + f"); criterion benches built with cargo profile `{doc['cargo_profile']}`"],
        ["load average (1, 5, 15 min)", f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end"],
    ]
    return ["## Machine", "", "| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows] + [""]


def commands(doc) -> list[str]:
    seen, lines = set(), []
    for _, cmd in doc["commands"]:
        generic = re.sub(r"--duration \d+ms", "--duration D", cmd)
        if generic not in seen:
            seen.add(generic)
            lines.append(generic)
    out = ["## Commands", ""]
    out += [
        "Every process is started by `bench/satbench/procs.py`; these are its command lines,",
        "each once (`$SINK`, `$PROXY` are the addresses of that scenario's sink and proxy, all",
        "on 127.0.0.1 with ports the kernel picked; `D` is the warm-up or measured duration).",
        "nginx's config is `bench/nginx.conf` with its `@NAMES@` filled in.",
        "",
        "```sh",
    ]
    return out + lines + ["```", ""]


def throughput(doc) -> list[str]:
    res = doc["results"]["throughput"]
    plan = doc["plan"]
    out = ["## Throughput and CPU per event", ""]
    out += [
        f"The same load on every path: {plan['connections']} agent connections x {plan['streams']}"
        f" client-streams of 50 trace segments per call, as fast as answers come back, for"
        f" {plan['seconds']:g} s after a {plan['warm']:g} s warm-up. Each scenario starts a fresh"
        " sink and proxy. The window ends when everything acknowledged to the agents has"
        " reached the sink (satmesh answers once queued), so a proxy's delivery work is in"
        " its figure. CPU is utime + stime from `/proc/PID/stat` (nginx: master + workers"
        " summed); the load generator's comes from `wait4`. Peak RSS is `VmHWM` (nginx:"
        " summed over its processes, which counts shared pages more than once).",
        "",
    ]
    out += _status(res)
    if "runs" not in res:
        return out
    many = len(targets.rounds(res["runs"])) > 1
    if many:
        out += [f"{len(targets.rounds(res['runs']))} rounds, each running every size and path in"
                " turn. A ratio is taken within one round; the targets above use the round whose"
                " satmesh/nginx CPU ratio is the median.", ""]
    head = (["round"] if many else []) + [
            "path", "events/s at the sink", "proxy CPU us/event", "sink CPU us/event",
            "load generator CPU us/event", "all processes us/event", "proxy peak RSS",
            "sink peak RSS", "errors"]
    for size in plan["sizes"]:
        rows = []
        for r in (r for r in res["runs"] if r["size"] == size):
            lead = [num(r.get("round", 1))] if many else []
            if "error" in r:
                rows.append(_failed(lead + [r["path"]], r, len(head)))
                continue
            p = r["processes"]
            proxy = p.get("proxy")
            total = sum(x["cpu_seconds"] for x in p.values()) / r["events"] * 1e6 if r["events"] else None
            name = r["path"] + (f" ({proxy['processes']} processes)" if proxy and "processes" in proxy else "")
            rows.append(lead + [
                name, num(r["events_per_second"]),
                us(proxy["cpu_us_per_event"]) if proxy else "-",
                us(p["sink"]["cpu_us_per_event"]), us(p["bench"]["cpu_us_per_event"]), us(total),
                kib(proxy["peak_rss_kib"]) if proxy else "-", kib(p["sink"]["peak_rss_kib"]),
                ", ".join(f"{k} {v}" for k, v in r["errors_by_status"].items()) or "0",
            ])
        out += [f"### {size_name(size)} segments", ""] + _table(head, rows) + [""]
    out += ["### Ratios (same run)", ""]
    rows = []
    for size in plan["sizes"]:
        middle = targets.median_round(res["runs"], size)
        for n in targets.rounds(res["runs"]):
            rt = targets.ratios(res["runs"], size, n)
            label = size_name(size) + (f", round {n}" + (" (median)" if n == middle else "") if many else "")
            rows.append([label] + [f"{v:.2f}" if v is not None else "n/a" for v in rt.values()])
    out += _table(["size"] + list(targets.RATIO_NAMES), rows) + [""]
    return out


def sweep(doc, plot_error) -> list[str]:
    res = doc["results"]["sweep"]
    plan = doc["plan"]
    out = ["## Connections sweep", ""]
    out += [
        f"{size_name(plan['sweep_size'])} segments, {plan['streams']} client-streams per connection,"
        f" {plan['sweep_seconds']:g} s per point after a {plan['sweep_warm']:g} s warm-up, otherwise"
        " as above.",
        "",
    ]
    out += _status(res)
    if "runs" not in res:
        return out
    out += [f"![throughput and CPU per event against connections]({PNG})", ""] if not plot_error else [
        f"(no plot: {plot_error})", ""]
    head = ["connections", "path", "events/s", "proxy CPU us/event", "sink CPU us/event", "proxy peak RSS"]
    rows = []
    for r in res["runs"]:
        if "error" in r:
            rows.append(_failed([str(r["connections"]), r["path"]], r, len(head)))
            continue
        proxy = r["processes"].get("proxy")
        rows.append([
            str(r["connections"]), r["path"], num(r["events_per_second"]),
            us(proxy["cpu_us_per_event"]) if proxy else "-",
            us(r["processes"]["sink"]["cpu_us_per_event"]),
            kib(proxy["peak_rss_kib"]) if proxy else "-",
        ])
    return out + _table(head, rows) + [""]


def unary(doc) -> list[str]:
    res = doc["results"]["unary"]
    plan = doc["plan"]
    rounds = plan.get("unary_rounds", 1)
    out = ["## Unary keepAlive latency", ""]
    out += [
        f"`keepAlive` unary calls at {plan['unary_rate']}/s over {plan['unary_connections']}"
        f" connections, nothing else, for {plan['unary_seconds']:g} s after a"
        f" {plan['unary_warm']:g} s warm-up; the latency the agent sees, from the load"
        " generator. satmesh answers once the call is queued (keepAlive is async); nginx waits"
        f" for the sink. {rounds} round(s) of direct, satmesh, nginx in turn; each path's"
        " figure is the median of its rounds, and added = that median minus direct's.",
        "",
    ]
    out += _status(res)
    if "runs" not in res:
        return out
    medians = targets.unary_medians(res["runs"])
    direct = medians.get("direct")
    head = ["path", "rounds", "calls", "p50 us", "p99 us", "p999 us", "added p50", "added p99", "added p999"]
    rows = []
    for path, m in medians.items():
        added = [
            num(m[k] - direct[k]) if direct and path != "direct" else "-"
            for k in ("p50_us", "p99_us", "p999_us")
        ]
        rows.append([path, num(m["rounds"]), num(m["calls"]), num(m["p50_us"]), num(m["p99_us"]),
                     num(m["p999_us"])] + added)
    out += _table(head, rows) + [""]
    out += ["Every round:", ""]
    head = ["round", "path", "calls", "p50 us", "p99 us", "p999 us", "max us"]
    rows = []
    for r in res["runs"]:
        if "error" in r:
            rows.append(_failed([num(r.get("round", 1)), r["path"]], r, len(head)))
            continue
        u = r["unary"]
        rows.append([num(r.get("round", 1)), r["path"], num(u["calls"]), num(u["p50_us"]),
                     num(u["p99_us"]), num(u["p999_us"]), num(u["max_us"])])
    return out + _table(head, rows) + [""]


def delivery(doc) -> list[str]:
    res = doc["results"]["delivery"]
    plan = doc["plan"]
    out = ["## Delivery latency", ""]
    out += [
        f"Paced load: {plan['connections']} connections x {plan['streams']} streams of"
        f" {size_name(plan['delivery_size'])} segments, {plan['delivery_interval']} between two"
        f" calls of a stream, for {plan['delivery_seconds']:g} s. The sink's `GET /latency`:"
        " from the send time the load generator writes into each segment's traceId to the"
        " sink's receipt (`POST /latency/reset` after the warm-up). satmesh batches: a batch"
        " leaves at 500 events or when its oldest event is 20 ms old (flush_interval).",
        "",
    ]
    out += _status(res)
    if "runs" not in res:
        return out
    head = ["path", "events/s", "events timed", "p50 us", "p99 us", "p999 us", "max us"]
    rows = [
        _failed([r["path"]], r, len(head)) if "error" in r else
        [r["path"], num(r["events_per_second"]), num(r["latency"]["count"]),
         num(r["latency"]["p50_us"]), num(r["latency"]["p99_us"]),
         num(r["latency"]["p999_us"]), num(r["latency"]["max_us"])]
        for r in res["runs"]
    ]
    return out + _table(head, rows) + [""]


def _ok_wait(q: dict) -> str:
    """The OK wait p99 as the bucket bound holding it; "-" when no call waited."""
    le = q.get("ok_wait_p99_le")
    if le is None:
        return "-"
    if le == "+Inf":
        return f"> {float(q['ok_wait_last_bound']) * 1000:g} ms"
    return f"<= {float(le) * 1000:g} ms"


def disk_queue(doc) -> list[str]:
    res = doc["results"].get("queue", {"status": "skipped", "reason": "not in these results"})
    plan = doc["plan"]
    cfg = res.get("config", {})
    out = ["## Disk queue", ""]
    out += [
        f"satmesh with each queue (`pipeline.queue: memory`; `disk` with `fsync: interval`;"
        f" `disk` with `fsync: always`) on the throughput section's load: {plan['connections']}"
        f" connections x {plan['streams']} client-streams at full speed, {plan['seconds']:g} s after"
        f" a {plan['warm']:g} s warm-up, a fresh sink, peer and queue directory each run;"
        f" {plan.get('queue_rounds', 1)} round(s) of every size and queue in turn. The queue's"
        f" directory is in the run's scratch directory, on {cfg.get('filesystem', 'n/a')};"
        f" flush_interval {cfg.get('flush_interval', 'n/a')}, fsync_interval"
        f" {cfg.get('fsync_interval', 'n/a')} (`satmesh check-config`: config/satmesh.yaml with"
        " the run's environment). CPU: satmesh's, until everything acknowledged reached the"
        " sink; x memory: over the memory queue's CPU per event in the same round. fsyncs/s:"
        " `satmesh_disk_fsyncs_total`. written / received: satmesh's `write_bytes` in"
        " `/proc/PID/io` (pages it dirtied: records, acknowledgements, its log) over the payload"
        " bytes that arrived (events x size). OK wait p99: `satmesh_disk_settle_seconds`, the time"
        " a report call waited after its last message for the queue to hold it, as the upper"
        " bound of the bucket holding the 99th percentile. Delivery p99 (paced): the delivery"
        f" section's paced load ({plan['delivery_interval']} between calls) at"
        f" {size_name(plan['delivery_size'])} through each queue, the sink's p99, median of the"
        " rounds. The table shows each size's median round by disk always / memory CPU.",
        "",
    ]
    out += _status(res)
    if "runs" not in res:
        return out
    runs, paced = res["runs"], res.get("paced", [])
    head = ["size", "queue", "events/s", "satmesh CPU us/event", "x memory", "fsyncs/s",
            "written / received", "OK wait p99", "delivery p99 (paced)"]
    rows = []
    for size in plan["sizes"]:
        middle = targets.queue_median_round(runs, size)
        for queue, name in targets.QUEUE_NAMES.items():
            lead = [f"{size_name(size)}" + (f" (round {middle})" if middle and len(targets.rounds(runs)) > 1 else ""), name]
            p99, _ = targets.paced_p99_us(paced, queue) if size == plan["delivery_size"] else (None, 0)
            paced_cell = "-" if size != plan["delivery_size"] else "n/a" if p99 is None else f"{p99 / 1000:.1f} ms"
            r = targets.queue_run(runs, size, queue, middle)
            if r is None:
                bad = next((x for x in runs if x["size"] == size and x["queue"] == queue and x["round"] == middle
                            and "error" in x), None)
                rows.append(_failed(lead, bad, len(head)) if bad else lead + ["n/a"] * (len(head) - 3) + [paced_cell])
                continue
            q = r["queue_figures"]
            disk = q["disk"]
            ratio = targets.queue_ratio(runs, size, queue, middle)
            rows.append(lead + [
                num(r["events_per_second"]), us(r["processes"]["proxy"]["cpu_us_per_event"]),
                "-" if queue == "memory" else us(ratio),
                num(q["fsyncs_per_second"]) if disk else "-",
                us(q["written_per_payload_byte"]), _ok_wait(q) if disk else "-", paced_cell,
            ])
    out += _table(head, rows) + [""]
    out += ["Every round (events/s, satmesh CPU us/event; a ratio to memory is within its round):", ""]
    head = ["size", "round"] + [f"{name}" for name in targets.QUEUE_NAMES.values()]
    rows = []
    for size in plan["sizes"]:
        for n in targets.rounds(runs):
            cells = []
            for queue in targets.QUEUE_NAMES:
                r = targets.queue_run(runs, size, queue, n)
                ratio = targets.queue_ratio(runs, size, queue, n)
                cells.append("failed" if r is None else f"{num(r['events_per_second'])}/s, "
                             f"{us(r['processes']['proxy']['cpu_us_per_event'])} us"
                             + (f" ({ratio:.2f}x)" if ratio is not None and queue != "memory" else ""))
            rows.append([size_name(size), num(n)] + cells)
    out += _table(head, rows) + [""]
    out += ["Paced delivery, every round (the sink's latency):", ""]
    head = ["round", "queue", "events/s", "events timed", "p50 us", "p99 us", "p999 us", "max us"]
    rows = [
        _failed([num(r["round"]), targets.QUEUE_NAMES[r["queue"]]], r, len(head)) if "error" in r else
        [num(r["round"]), targets.QUEUE_NAMES[r["queue"]], num(r["events_per_second"]),
         num(r["latency"]["count"]), num(r["latency"]["p50_us"]), num(r["latency"]["p99_us"]),
         num(r["latency"]["p999_us"]), num(r["latency"]["max_us"])]
        for r in paced
    ]
    return out + _table(head, rows) + [""]


def idle(doc) -> list[str]:
    res = doc["results"]["idle"]
    out = ["## Idle connections", ""]
    out += [
        "`satmesh bench --idle N` opens N agent connections to one satmesh peer, makes one"
        " keepAlive call on each (as an agent's first heartbeat) and holds them, quiet"
        " (`server.max_connections` 0 for the run; `ulimit -n` raised by bench/run.sh)."
        " satmesh's RSS (`VmRSS`) is read after a warm-up (50 idle connections, closed), and"
        " 1 s after `satmesh_agent_connections` reached N; per connection = the difference / N.",
        "",
    ]
    out += _status(res)
    if "runs" not in res:
        return out
    head = ["connections", "held", "ramp-up s", "RSS before", "RSS after", "per connection",
            "satmesh peak RSS", "load generator RSS"]
    rows = [
        _failed([num(r["connections"])], r, len(head)) if "error" in r else
        [num(r["connections"]), num(r["held"]), f"{r['ramp_seconds']:.1f}", kib(r["rss_before_kib"]),
         kib(r["rss_after_kib"]), f"{r['kib_per_connection']:.2f} KiB", kib(r["peak_rss_kib"]),
         kib(r["bench_rss_kib"])]
        for r in res["runs"]
    ]
    return out + _table(head, rows) + [""]


def micro(doc) -> list[str]:
    res = doc["results"]["micro"]
    out = ["## Micro-benchmarks", ""]
    out += [
        "criterion, `cargo bench -p satmesh-cluster --bench ring` (ring lookup with 2000"
        " virtual nodes per OAP node; `shared` loads the published ring first, as the hot"
        " path does) and `cargo bench -p satmesh-proto --bench peek` (service and instance"
        " of a full SegmentObject, MeterData, MeterDataCollection). Mean with its 95 %"
        " confidence interval.",
        "",
    ]
    out += _status(res)
    if res["status"] != "ok":
        return out
    rows = []
    for name, entries in res["benches"].items():
        for e in entries:
            rows.append([name, f"`{e['id']}`", f"{e['mean_ns']:,.1f}",
                         f"{e['mean_low_ns']:,.1f} - {e['mean_high_ns']:,.1f}", f"{e['median_ns']:,.1f}"])
    if not rows:
        rows.append(["(none)", "criterion wrote no estimates", "", "", ""])
    return out + _table(["bench", "id", "mean ns", "95 % CI ns", "median ns"], rows) + [""]


def write(doc: dict, out_dir: str, raw: str) -> str:
    res = doc["results"]
    smoke = doc["mode"] == "smoke"
    sweep_runs = res["sweep"].get("runs", [])
    plot_error = plot.write(sweep_runs, os.path.dirname(raw), os.path.join(out_dir, PNG),
                            "satmesh vs nginx vs direct" + (" (smoke)" if smoke else ""))
    when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(doc["started"]))
    cmd = "bench/run.sh" + (" --smoke" if smoke else "")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{cmd}` on {when} ({doc['wall_seconds']:.0f} s); do not edit by hand."
        f" Raw results: `{relative(raw)}`.",
        "",
    ]
    if smoke:
        lines += [
            "**SMOKE RUN**: every step ran for half a second to show the script works. The",
            "figures are not measurements; `bench/run.sh` (about 13 minutes) makes them.",
            "",
        ]
    lines += [
        "All processes run on one machine, on loopback, and share its cores: the load"
        " generator, the proxy and the sink compete for CPU, so events/s is a property of"
        " the whole set. CPU time per event is the figure to compare between proxies.",
        "",
    ]
    lines += targets.section(doc)
    # The profile behind a missed target is written by hand (bench/analysis.md): it
    # explains figures, so it is kept next to them but not generated.
    analysis = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analysis.md")
    if not smoke and os.path.exists(analysis):
        with open(analysis) as f:
            lines += [f.read().rstrip(), ""]
    lines += ["## How to run", "", "```sh",
              "bench/run.sh                 # full run, about 13 minutes: docs/BENCHMARKS.md, target/bench/",
              "bench/run.sh --smoke --out /tmp/b   # seconds: what CI runs (tests/integration/bench_smoke.rs)",
              "bench/run.sh --only throughput,sweep   # some sections",
              "bench/run.sh --only queue    # the memory queue against the disk queue (issue 9)",
              "```", "",
              "bench/run.sh installs Debian's `nginx` and `gnuplot-nox` if missing, raises"
              " `ulimit -n`, builds `satmesh` (release) and runs `python3 -m satbench`"
              " (`bench/satbench/`, standard library only).",
              "",
              "nginx runs with `worker_processes auto` (one worker per core, Debian's default):"
              " satmesh's tokio runtime also runs one worker thread per core, so both proxies"
              " may use every core, and each is charged for all of its processes or threads."
              " Its upstream `keepalive` is at least the number of concurrent client streams"
              " (nginx opens one upstream connection per client stream), and"
              " `keepalive_requests` is raised so it never closes agents' connections after"
              " 1000 calls.",
              ""]
    lines += machine(doc) + commands(doc)
    lines += throughput(doc) + sweep(doc, plot_error) + unary(doc) + delivery(doc) + disk_queue(doc)
    lines += idle(doc) + micro(doc)
    lines += ["## Time per section", ""] + _table(
        ["section", "seconds"], [[k, f"{v['wall_seconds']:.0f}"] for k, v in res.items()]
    ) + [""]
    path = os.path.join(out_dir, "BENCHMARKS.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
