"""The scenarios of a run. Each starts its own processes (a fresh sink, and a fresh proxy
unless the path is direct), so a peak RSS belongs to one scenario, and stops them.

Paths: `direct` (agents -> sink, the floor), `satmesh` (agents -> satmesh run -> sink),
`nginx` (agents -> nginx grpc_pass -> sink).
"""

import json
import signal
import threading
import time
import urllib.error

from .procs import Runner, Service, arrived, http, metric, status_kib, wait_until

PATHS = ("direct", "satmesh", "nginx")


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
    """When the last event of a measured run reached the sink. The load generator exits
    up to a second after its load ends (it reports once a second), so its exit does not
    mark the end; the sink is watched from just before the load's end until it is quiet,
    which costs a few dozen /counts requests, not one per 20 ms for the whole run."""

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
        n, t = self.last
        if complete(n):
            return t
        wait_until("every acknowledged event at the sink", lambda: complete(arrived(self.sink)), 120, 0.01)
        return time.monotonic()


def load_args(target, connections, streams, size, call_interval=None):
    args = ["--target", target, "--connections", str(connections), "--streams", str(streams)]
    args += ["--size", str(size)]
    if call_interval:
        args += ["--call-interval", call_interval]
    return args


def throughput(r: Runner, scenario, path, size, connections, streams, warm, seconds) -> dict:
    """Full-speed client-streams of `size`-byte segments; CPU and peak RSS per process."""
    sink, proxy, target = _start(r, scenario, path, connections * streams)
    try:
        load = load_args(target, connections, streams, size)
        r.bench(scenario, load + ["--duration", _ms(warm)], timeout=warm + 60)
        _settle(sink)
        services = [s for s in (proxy, sink) if s]
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
        return {
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
    finally:
        _stop(proxy, sink)


def unary(r: Runner, path, rate, connections, warm, seconds) -> dict:
    """keepAlive unary calls at a fixed rate, no other load: the bench's latency figures."""
    scenario = f"unary {path}"
    sink, proxy, target = _start(r, scenario, path, connections)
    try:
        load = ["--target", target, "--connections", str(connections), "--streams", "0"]
        load += ["--keepalive-rate", str(rate)]
        r.bench(scenario, load + ["--duration", _ms(warm)], timeout=warm + 60)
        rep = r.bench(scenario, load + ["--duration", _ms(seconds)], timeout=seconds + 60)
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


def delivery(r: Runner, path, size, connections, streams, interval, warm, seconds) -> dict:
    """Paced load; the sink's end-to-end latency (bench send time -> sink receipt)."""
    scenario = f"delivery {path}"
    sink, proxy, target = _start(r, scenario, path, connections * streams)
    try:
        load = load_args(target, connections, streams, size, interval)
        r.bench(scenario, load + ["--duration", _ms(warm)], timeout=warm + 60)
        _settle(sink)
        http(f"http://{sink.admin}/latency/reset", b"")
        a0 = arrived(sink)
        rep = r.bench(scenario, load + ["--duration", _ms(seconds)], timeout=seconds + 60)
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


def idle(r: Runner, n: int, timeout: float) -> dict:
    """satmesh's RSS before and after `n` idle agent connections (HTTP/2 set up, no call)."""
    scenario = "idle"
    env = {"SATMESH__SERVER__MAX_CONNECTIONS": "0"}
    sink, proxy, target = _start(r, scenario, "satmesh", 0, env)
    bench = None
    try:
        time.sleep(0.5)
        rss0 = proxy.rss_kib()
        t0 = time.monotonic()
        bench = r.bench_background(
            scenario, ["--idle", str(n), "--target", target, "--duration", _ms(timeout + 60)]
        )

        def held():
            if bench.poll() is not None:
                raise RuntimeError(f"bench --idle exited {bench.returncode}")
            return (metric(proxy.admin, "satmesh_agent_connections") or 0) >= n

        wait_until(f"{n} connections held by satmesh", held, timeout, every=0.2)
        ramp = time.monotonic() - t0
        time.sleep(1.0)  # every handshake finished, buffers allocated
        rss1 = proxy.rss_kib()
        held_now = metric(proxy.admin, "satmesh_agent_connections")
        bench_rss = status_kib(bench.pid, "VmRSS")
        return {
            "connections": n,
            "held": held_now,
            "ramp_seconds": ramp,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
            "peak_rss_kib": proxy.peak_rss_kib(),
            "kib_per_connection": (rss1 - rss0) / n,
            "bench_rss_kib": bench_rss,
        }
    finally:
        if bench is not None and bench.poll() is None:
            bench.send_signal(signal.SIGKILL)
            bench.wait()
        _stop(proxy, sink)
