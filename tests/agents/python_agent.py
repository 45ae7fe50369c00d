"""Report a fixed amount of every signal with the real SkyWalking Python agent (1.2.0).

Run with the venv that tests/agents/setup.sh makes. The collector and the token come from
the agent's own environment variables (SW_AGENT_COLLECTOR_BACKEND_SERVICES,
SW_AGENT_AUTHENTICATION); --service, --instance and --token override SW_AGENT_NAME,
SW_AGENT_INSTANCE_NAME and SW_AGENT_AUTHENTICATION.

What it does: starts the agent (profiling, plugins and PVM meters off, log reporter on, meter
period 1 s), creates N segments (an entry span containing a local span), emits N log records
at WARNING through the logging module, registers a Counter, a Gauge and a Histogram and lets
the agent's meter service report them until at least N MeterData went out, waits for one
keep-alive, then stops the agent (which flushes its queues) and joins its reporter threads so
every stream it opened has finished.

How it counts: the agent's gRPC report clients are wrapped before start, so every message
its stream generators yield to grpc is counted, per stream call. A call that returned OK
moves its count to `segments`/`logs`/`meters`: the collector acknowledged those messages. A
call that raised moves its count to `lost` and bumps `stream_errors`. The printed JSON line:

  {"service":..,"instance":..,"segments":N,"logs":N,"meters":M,"properties":1,"pings":P,
   "created":{"segments":N,"logs":N},"lost":{..},"stream_errors":0,"management_errors":0}
"""

import argparse
import json
import logging
import os
import sys
import threading
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service", required=True)
    p.add_argument("--instance", required=True)
    p.add_argument("--segments", type=int, default=10)
    p.add_argument("--logs", type=int, default=10)
    p.add_argument("--meters", type=int, default=3, help="MeterData messages to send at least")
    p.add_argument("--token", default=None, help="authentication metadata on every call")
    p.add_argument("--rate-per-sec", type=float, default=None, help="pace segments and logs")
    p.add_argument("--timeout-secs", type=float, default=30.0, help="bound on every wait")
    return p.parse_args()


def configure_env(args):
    """The agent reads its config from the environment when skywalking.config is imported."""
    if "SW_AGENT_COLLECTOR_BACKEND_SERVICES" not in os.environ:
        sys.exit("python_agent.py: SW_AGENT_COLLECTOR_BACKEND_SERVICES (host:port) is not set")
    os.environ["SW_AGENT_NAME"] = args.service
    os.environ["SW_AGENT_INSTANCE_NAME"] = args.instance
    if args.token is not None:
        os.environ["SW_AGENT_AUTHENTICATION"] = args.token
    defaults = {
        "SW_AGENT_PROTOCOL": "grpc",
        "SW_AGENT_PROFILE_ACTIVE": "false",
        "SW_AGENT_DISABLE_PLUGINS": "sw_.*",
        "SW_AGENT_LOG_REPORTER_ACTIVE": "true",
        "SW_AGENT_LOG_REPORTER_LEVEL": "WARNING",
        "SW_AGENT_METER_REPORTER_ACTIVE": "true",
        "SW_AGENT_METER_REPORTER_PERIOD": "1",
        "SW_AGENT_PVM_METER_REPORTER_ACTIVE": "false",
        "SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD": "1",
        "SW_AGENT_LOGGING_LEVEL": "WARNING",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


class Stats:
    """Messages per kind: yielded into a still-running call, acknowledged, or lost."""

    KINDS = ("segments", "logs", "meters")

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = {k: 0 for k in self.KINDS}
        self.acked = {k: 0 for k in self.KINDS}
        self.lost = {k: 0 for k in self.KINDS}
        self.stream_errors = 0
        self.properties = 0
        self.pings = 0
        self.management_errors = 0

    def yielded(self, kind):
        """Acknowledged plus still in flight: what the agent has put on the wire so far."""
        with self.lock:
            return self.acked[kind] + self.in_flight[kind]


def wrap_report(cls, kind, stats):
    orig = cls.report

    def report(self, generator):
        n = 0
        ended = False

        def counted():
            nonlocal n
            for item in generator:
                with stats.lock:
                    if ended:
                        # grpc's request thread can pull one more message after the call
                        # already failed (a connection cut): it never reaches the wire.
                        stats.lost[kind] += 1
                    else:
                        n += 1
                        stats.in_flight[kind] += 1
                yield item

        try:
            orig(self, counted())
        except BaseException:
            with stats.lock:
                ended = True
                stats.in_flight[kind] -= n
                stats.lost[kind] += n
                stats.stream_errors += 1
            raise
        with stats.lock:
            ended = True
            stats.in_flight[kind] -= n
            stats.acked[kind] += n

    cls.report = report


def wrap_unary(cls, name, field, stats):
    orig = getattr(cls, name)

    def call(self, *a, **kw):
        try:
            result = orig(self, *a, **kw)
        except BaseException:
            with stats.lock:
                stats.management_errors += 1
            raise
        with stats.lock:
            setattr(stats, field, getattr(stats, field) + 1)
        return result

    setattr(cls, name, call)


def wait_until(what, timeout, done):
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def main():
    args = parse_args()
    configure_env(args)

    from skywalking import agent, config
    from skywalking.client import grpc as sw_grpc
    from skywalking.trace.context import get_context

    stats = Stats()
    wrap_report(sw_grpc.GrpcTraceSegmentReportService, "segments", stats)
    wrap_report(sw_grpc.GrpcLogDataReportService, "logs", stats)
    wrap_report(sw_grpc.GrpcMeterReportService, "meters", stats)
    wrap_unary(sw_grpc.GrpcServiceManagementClient, "send_instance_props", "properties", stats)
    wrap_unary(sw_grpc.GrpcServiceManagementClient, "send_heart_beat", "pings", stats)

    agent.start()

    pace = (1.0 / args.rate_per_sec) if args.rate_per_sec else 0.0
    created = {"segments": 0, "logs": 0}

    for i in range(args.segments):
        with get_context().new_entry_span(op=f"/satmesh-test/{i}"):
            with get_context().new_local_span(op="satmesh-test-local"):
                pass
        created["segments"] += 1
        if pace:
            time.sleep(pace)

    log = logging.getLogger("satmesh-test")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    for i in range(args.logs):
        log.warning("satmesh test log %d", i)
        created["logs"] += 1
        if pace:
            time.sleep(pace)

    if args.meters > 0:
        from skywalking.meter.counter import Counter, CounterMode
        from skywalking.meter.gauge import Gauge
        from skywalking.meter.histogram import Histogram

        counter = Counter.Builder("satmesh_test_counter", CounterMode.INCREMENT).build()
        counter.increment(1)
        Gauge.Builder("satmesh_test_gauge", iter(range(1, 1_000_000))).build()
        hist = Histogram.Builder("satmesh_test_histogram", [1, 5, 10]).build()
        hist.add_value(3)
        wait_until("meter reports", args.timeout_secs, lambda: stats.yielded("meters") >= args.meters)

    wait_until("the first keep-alive", args.timeout_secs, lambda: stats.pings >= 1)

    # stop() flushes every queue through new stream calls; the reporter threads may still be
    # inside a call they opened before, so join them: once stop() set the finished flag, each
    # returns after its current call.
    agent.agent.stop()
    names = {"HeartbeatThread", "SegmentReportThread", "LogReportThread", "MeterReportThread"}
    deadline = time.monotonic() + args.timeout_secs
    for t in threading.enumerate():
        if t.name in names:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                sys.exit(f"python_agent.py: agent thread {t.name} still running after stop")

    with stats.lock:
        if any(stats.in_flight.values()):
            sys.exit(f"python_agent.py: calls still in flight after stop: {stats.in_flight}")
        print(
            json.dumps(
                {
                    "service": config.agent_name,
                    "instance": config.agent_instance_name,
                    "segments": stats.acked["segments"],
                    "logs": stats.acked["logs"],
                    "meters": stats.acked["meters"],
                    "properties": stats.properties,
                    "pings": stats.pings,
                    "created": created,
                    "lost": stats.lost,
                    "stream_errors": stats.stream_errors,
                    "management_errors": stats.management_errors,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
