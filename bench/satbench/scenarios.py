"""The scenarios of a run. Each starts its own processes (a fresh sink, and a fresh proxy
unless the path is direct), so a peak RSS belongs to one scenario, and stops them.

Paths: `direct` (agents -> sink, the floor), `satmesh` (agents -> satmesh run -> sink),
`nginx` (agents -> nginx grpc_pass -> sink). Queues of the satmesh path: `memory`, and the
disk queue with `fsync: interval` or `fsync: always` (`queue_env`).
"""

import json
import re
import shutil
import signal
import threading
import time
import urllib.error

from .machine import filesystem
from .procs import Runner, Service, arrived, buckets, http, metric, sample, status_kib, wait_until, write_bytes

PATHS = ("direct", "satmesh", "nginx")
QUEUES = ("memory", "interval", "always")


def queue_env(r: Runner, queue: str) -> dict:
    """satmesh's environment for a queue of QUEUES; a disk queue gets a fresh directory."""
    if queue == "memory":
        return {}
    return {
        "SATMESH__PIPELINE__QUEUE": "disk",
        "SATMESH__PIPELINE__DISK__FSYNC": queue,
        "SATMESH__PIPELINE__DISK__PATH": r.scratch("queue"),
    }


def duration_ms(text: str) -> float:
    """A humantime duration of satmesh's config ("20ms", "1s 500ms") in milliseconds."""
    units = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "min": 60e3, "h": 3600e3}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-zµ]+)", text)
    if not parts or any(u not in units for _, u in parts):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def queue_config(r: Runner) -> dict:
    """What the disk queue runs are compared with: the effective pipeline settings of a
    disk-queue peer (config/satmesh.yaml under this environment), and the file system
    its directory is on."""
    p = r.config(queue_env(r, "always"))["pipeline"]
    return {
        "flush_interval": p["flush_interval"],
        "flush_interval_ms": duration_ms(p["flush_interval"]),
        "fsync_interval": p["disk"]["fsync_interval"],
        "segment_bytes": p["disk"]["segment_bytes"],
        "filesystem": filesystem(r.work),
    }


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _start(r: Runner, scenario: str, path: str, streams_total: int, satmesh_env=None):
    """The sink, the proxy of `path` (None for direct), and the address agents use."""
    sink = r.sink(scenario)
    proxy = None
    try:
        if path == "satmesh":
            proxy = r.satmesh(scenario, sink.grpc, satmesh_env)
        elif path == "nginx":
            proxy = r.nginx(scenario, [sink.grpc], keepalive=max(16, streams_total))
    except BaseException:
        sink.stop()
        raise
    return sink, proxy, (proxy or sink).grpc


def _stop(*services: Service | None):
    for s in services:
        if s is not None:
            s.stop()


def _drop_queue(satmesh_env: dict | None):
    """Deletes a stopped peer's disk queue directory (what is left there is its last
    segment and acknowledgements: the run's logs are elsewhere)."""
    path = (satmesh_env or {}).get("SATMESH__PIPELINE__DISK__PATH")
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _settle(sink: Service, quiet: float = 0.15, timeout: float = 60):
    """Waits until nothing more arrives at the sink (a proxy's queue has drained)."""
    last = [arrived(sink), time.monotonic()]

    def check():
        now = arrived(sink)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - last[1] >= quiet

    wait_until("the sink to settle", check, timeout)


class _LastArrival:
    """When the last event of a measured run reached the sink. The load generator's exit
    does not mark it: satmesh acknowledges once queued and delivers after, and the exit
    itself lags. The sink is watched from just before the load's end until it is quiet:
    a few dozen /counts requests, not one every 10 ms for the whole run (the requests
    cost the sink CPU, and the poller competes for the same cores)."""

    def __init__(self, sink: Service, load_end: float, quiet: float = 0.2):
        self.sink, self.quiet = sink, quiet
        self.last = None
        self.thread = threading.Thread(target=self._watch, args=(load_end,), daemon=True)
        self.thread.start()

    def _watch(self, load_end):
        time.sleep(max(0.0, load_end - 0.05 - time.monotonic()))
        n, t = arrived(self.sink), time.monotonic()
        while time.monotonic() - t < self.quiet:
            time.sleep(0.01)
            now = arrived(self.sink)
            if now != n:
                n, t = now, time.monotonic()
        self.last = (n, t)

    def wait(self, complete) -> float:
        """The time everything had arrived; waits for the stragglers the watch missed."""
        self.thread.join()
        if self.last is not None and complete(self.last[0]):
            return self.last[1]
        wait_until("every acknowledged event at the sink", lambda: complete(arrived(self.sink)), 120, 0.01)
        return time.monotonic()


def load_args(target, connections, streams, size, call_interval=None):
    args = ["--target", target, "--connections", str(connections), "--streams", str(streams)]
    args += ["--size", str(size)]
    if call_interval:
        args += ["--call-interval", call_interval]
    return args


def throughput(r: Runner, scenario, path, size, connections, streams, warm, seconds,
               satmesh_env=None, queue_figures=False) -> dict:
    """Full-speed client-streams of `size`-byte segments; CPU and peak RSS per process.
    With `queue_figures`, satmesh's queue over the same window too (`_queue_figures`)."""
    sink, proxy, target = _start(r, scenario, path, connections * streams, satmesh_env)
    try:
        load = load_args(target, connections, streams, size)
        r.bench(scenario, load + ["--duration", _ms(warm)], timeout=warm + 60)
        _settle(sink)
        services = [s for s in (proxy, sink) if s]
        queue0 = _queue_sample(proxy) if queue_figures else None
        cpu0 = {s.role: s.cpu() for s in services}
        a0, t0 = arrived(sink), time.monotonic()
        last = _LastArrival(sink, t0 + seconds)
        rep = r.bench(scenario, load + ["--duration", _ms(seconds)], timeout=seconds + 60)
        # Everything acknowledged to the agents must reach the sink inside the window:
        # satmesh answers once queued, and its delivery work is part of its cost.
        t1 = last.wait(lambda n: n - a0 >= rep["messages"])
        events = arrived(sink) - a0
        if events == 0:
            raise RuntimeError(f"no event reached the sink; bench errors {rep.get('errors_by_status')}")
        procs = {"bench": dict(rep["process"])}
        for s in services:
            key = "proxy" if s is proxy else "sink"
            procs[key] = {"cpu_seconds": s.cpu() - cpu0[s.role], "peak_rss_kib": s.peak_rss_kib()}
            if s.role == "nginx":
                procs[key]["processes"] = len(s.pids())
        for p in procs.values():
            p["cpu_us_per_event"] = p["cpu_seconds"] / events * 1e6 if events else None
        run = {
            "path": path,
            "size": size,
            "connections": connections,
            "streams": streams,
            "seconds": t1 - t0,
            "events": events,
            "events_per_second": events / (t1 - t0),
            "acknowledged": rep["messages"],
            "errors_by_status": rep.get("errors_by_status", {}),
            "processes": procs,
        }
        if queue_figures:
            run["queue_figures"] = _queue_figures(queue0, _queue_sample(proxy), t1 - t0, events * size)
        return run
    finally:
        _stop(proxy, sink)
        _drop_queue(satmesh_env)


def _queue_sample(proxy: Service) -> dict:
    return {"metrics": http(f"http://{proxy.admin}/metrics").decode(), "written": write_bytes(proxy.proc.pid)}


SETTLE = "satmesh_disk_settle_seconds"


def _queue_figures(before: dict, after: dict, seconds: float, payload_bytes: int) -> dict:
    """satmesh's queue between two samples: fsyncs, bytes written to storage (records,
    acknowledgements, its log) per payload byte received, and the time report calls
    waited for their OK after their last message (the settle histogram's delta; its p99
    is the upper bound of the bucket holding it)."""
    m0, m1 = before["metrics"], after["metrics"]
    delta = lambda name: (sample(m1, name) or 0) - (sample(m0, name) or 0)  # noqa: E731
    b0, b1 = buckets(m0, SETTLE), buckets(m1, SETTLE)
    waits = sorted(((float(le), le, n - b0.get(le, 0)) for le, n in b1.items()))
    calls = waits[-1][2] if waits else 0
    p99 = next((le for _, le, n in waits if n >= 0.99 * calls), None) if calls else None
    written = after["written"] - before["written"]
    return {
        "disk": (sample(m1, "satmesh_disk_bytes_limit") or 0) > 0,
        "fsyncs": delta("satmesh_disk_fsyncs_total"),
        "fsyncs_per_second": delta("satmesh_disk_fsyncs_total") / seconds,
        "bytes_written": written,
        "written_per_payload_byte": written / payload_bytes if payload_bytes else None,
        "disk_queue_bytes_written": delta("satmesh_disk_bytes_written_total"),
        "records_read_back": delta("satmesh_disk_records_read_total"),
        "ok_waits": calls,
        # The bucket's upper bound as written: seconds, or "+Inf" beyond the last bound.
        "ok_wait_p99_le": p99,
        "ok_wait_last_bound": waits[-2][1] if len(waits) > 1 else None,
    }


def unary(r: Runner, path, rate, connections, warm, seconds) -> dict:
    """keepAlive unary calls at a fixed rate, no other load: the bench's latency figures."""
    scenario = f"unary {path}"
    sink, proxy, target = _start(r, scenario, path, connections)
    try:
        load = ["--target", target, "--connections", str(connections), "--streams", "0"]
        load += ["--keepalive-rate", str(rate)]
        r.bench(scenario, load + ["--duration", _ms(warm)], timeout=warm + 60)
        rep = r.bench(scenario, load + ["--duration", _ms(seconds)], timeout=seconds + 60)
        if rep["unary"]["calls"] == 0:
            raise RuntimeError(f"no keepAlive call succeeded; bench errors {rep.get('errors_by_status')}")
        return {
            "path": path,
            "rate": rate,
            "connections": connections,
            "unary": rep["unary"],
            "errors_by_status": rep.get("errors_by_status", {}),
        }
    finally:
        _stop(proxy, sink)


def sink_has_latency(r: Runner) -> bool:
    sink = r.sink("probe")
    try:
        http(f"http://{sink.admin}/latency")
        return True
    except urllib.error.HTTPError:
        return False
    finally:
        sink.stop()


def delivery(r: Runner, path, size, connections, streams, interval, warm, seconds,
             satmesh_env=None, scenario=None) -> dict:
    """Paced load; the sink's end-to-end latency (bench send time -> sink receipt)."""
    scenario = scenario or f"delivery {path}"
    sink, proxy, target = _start(r, scenario, path, connections * streams, satmesh_env)
    try:
        load = load_args(target, connections, streams, size, interval)
        r.bench(scenario, load + ["--duration", _ms(warm)], timeout=warm + 60)
        _settle(sink)
        http(f"http://{sink.admin}/latency/reset", b"")
        a0 = arrived(sink)
        rep = r.bench(scenario, load + ["--duration", _ms(seconds)], timeout=seconds + 60)
        if rep["messages"] == 0:
            raise RuntimeError(f"no event was acknowledged; bench errors {rep.get('errors_by_status')}")
        wait_until("every event at the sink", lambda: arrived(sink) - a0 >= rep["messages"], 60)
        lat = json.loads(http(f"http://{sink.admin}/latency"))
        return {
            "path": path,
            "size": size,
            "connections": connections,
            "streams": streams,
            "call_interval": interval,
            "events_per_second": rep["messages_per_second"],
            "latency": lat,
            "errors_by_status": rep.get("errors_by_status", {}),
        }
    finally:
        _stop(proxy, sink)
        _drop_queue(satmesh_env)


def idle(r: Runner, n: int, timeout: float, hold: float = 3.0) -> dict:
    """satmesh's RSS before and while it holds `n` idle agent connections (each made one
    keepAlive call, as an agent's first heartbeat, then went quiet)."""
    scenario = "idle"
    env = {"SATMESH__SERVER__MAX_CONNECTIONS": "0"}
    sink, proxy, target = _start(r, scenario, "satmesh", 0, env)
    bench = None
    try:
        # Warm up first (runtime workers, the upstream connection, the first batch), so
        # the difference is the connections' alone.
        warm = r.bench_background(scenario, ["--idle", "50", "--target", target, "--duration", "0s"])
        if warm.wait(timeout=60) != 0:
            raise RuntimeError(f"bench --idle 50 exited {warm.returncode}")
        time.sleep(1.0)
        rss0 = proxy.rss_kib()
        t0 = time.monotonic()
        bench = r.bench_background(
            scenario, ["--idle", str(n), "--target", target, "--duration", _ms(hold), "--json"]
        )

        def held():
            if bench.poll() is not None:
                raise RuntimeError(f"bench --idle exited {bench.returncode} before holding {n}")
            return (metric(proxy.admin, "satmesh_agent_connections") or 0) >= n

        wait_until(f"{n} connections held by satmesh", held, timeout, every=0.1)
        ramp = time.monotonic() - t0
        time.sleep(1.0)  # every handshake and call finished
        rss1 = proxy.rss_kib()
        held_now = metric(proxy.admin, "satmesh_agent_connections")
        bench_rss = status_kib(bench.pid, "VmRSS")
        if bench.wait(timeout=hold + 30) != 0:
            raise RuntimeError(f"bench --idle exited {bench.returncode}")
        report = json.loads(open(bench.args_out).read().strip().splitlines()[-1])
        return {
            "connections": n,
            "held": held_now,
            "ramp_seconds": ramp,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "peak_rss_kib": proxy.peak_rss_kib(),
            "kib_per_connection": (rss1 - rss0) / n,
            "bench_rss_kib": bench_rss,
            "bench_report": report,
        }
    finally:
        if bench is not None and bench.poll() is None:
            bench.send_signal(signal.SIGKILL)
            bench.wait()
        _stop(proxy, sink)
