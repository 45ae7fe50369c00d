"""The processes of a benchmark run and what /proc says about them.

Every process is started here (sink, satmesh peer, nginx, load generator), every command
line is logged for the report, and every process is killed when the run ends, even on an
error or Ctrl-C. CPU time is utime + stime from /proc/PID/stat; peak RSS is VmHWM from
/proc/PID/status; bytes written to storage are write_bytes from /proc/PID/io. The load
generator's figures come from wait4's rusage instead, because it has exited when they are
read.
"""

import atexit
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every process started and still to reap; killed at exit.
_LIVE: list[subprocess.Popen] = []
# Processes started by those (nginx workers): a killed master would orphan them.
_EXTRA: list[int] = []
# (scenario, command) in start order, addresses replaced by names, for the report.
COMMANDS: list[tuple[str, str]] = []
_ADDRS: dict[str, str] = {}


def _cleanup(*_):
    for p in reversed(_LIVE):
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for pid in _EXTRA:
        _kill_worker(pid)


def _kill_worker(pid: int):
    """Kills an nginx worker left behind, checking first that the pid is still one."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "nginx":
                return
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *a: (_cleanup(), os._exit(143)))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status (VmHWM: peak RSS, VmRSS: RSS now)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def write_bytes(pid: int) -> int:
    """Bytes a live process caused to be written to storage (all its threads): counted
    when it dirties a page of the page cache, so a write is charged before it is flushed."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def free_port() -> int:
    """A port free now, for nginx (which cannot tell which port 0 gave it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, timeout: float = 5.0) -> bytes:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def wait_until(what: str, check, timeout: float, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def relative(path: str) -> str:
    """A path inside the repository relative to its root; others as they are."""
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + "/") else path


def _named(cmd: str) -> str:
    for addr, name in _ADDRS.items():
        cmd = cmd.replace(addr, name)
    return cmd


def _spawn(scenario, argv, env_extra, out, err) -> subprocess.Popen:
    env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_extra.items())
    shown = [relative(a) for a in argv]
    COMMANDS.append((scenario, _named((env_text + " " if env_text else "") + shlex.join(shown))))
    p = subprocess.Popen(
        argv,
        env={**os.environ, **env_extra},
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        cwd=ROOT,
    )
    _LIVE.append(p)
    return p


@dataclass
class Service:
    """A long-lived process of a scenario: the sink, a satmesh peer or nginx."""

    role: str
    proc: subprocess.Popen
    grpc: str = ""
    admin: str = ""
    extra_pids: list[int] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [self.proc.pid] + self.extra_pids

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def peak_rss_kib(self) -> int:
        return sum(status_kib(p, "VmHWM") for p in self.pids())

    def rss_kib(self) -> int:
        return sum(status_kib(p, "VmRSS") for p in self.pids())

    def stop(self):
        if self.proc.poll() is None:
            # nginx: TERM to the master stops its workers; the others need no grace.
            self.proc.send_signal(signal.SIGTERM if self.role == "nginx" else signal.SIGKILL)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.extra_pids:
            _kill_worker(pid)


def _listening(path: str, timeout: float = 20.0) -> tuple[str, str]:
    """Waits for `... listening grpc=A admin=B` in a process's stdout file."""

    def check():
        try:
            text = open(path).read()
        except FileNotFoundError:
            return None
        m = re.search(r"listening grpc=(\S+) admin=(\S+)", text)
        return m.groups() if m else None

    return wait_until(f"listening in {path}", check, timeout)


class Runner:
    """Starts the processes of one run: one binary, one scratch directory."""

    def __init__(self, binary: str, work: str):
        self.binary = binary
        self.work = work
        self.n = 0

    def _files(self, name):
        self.n += 1
        base = os.path.join(self.work, f"{self.n:03d}-{name}")
        return base + ".out", base + ".err"

    def sink(self, scenario: str) -> Service:
        out, err = self._files("sink")
        argv = [self.binary, "sink", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        p = _spawn(scenario, argv, {}, open(out, "w"), open(err, "w"))
        grpc, admin = _listening(out)
        _ADDRS.update({grpc: "$SINK", admin: "$SINK_ADMIN"})
        return Service("sink", p, grpc, admin)

    def satmesh(self, scenario: str, upstream: str, env: dict | None = None) -> Service:
        out, err = self._files("satmesh")
        env = {
            "SATMESH__SERVER__LISTEN": "127.0.0.1:0",
            "SATMESH__ADMIN__LISTEN": "127.0.0.1:0",
            "SATMESH__UPSTREAM__STATIC": upstream,
            **(env or {}),
        }
        argv = [self.binary, "run", "--config", os.path.join(ROOT, "config/satmesh.yaml")]
        p = _spawn(scenario, argv, env, open(out, "w"), open(err, "w"))
        grpc, admin = _listening(out)
        _ADDRS.update({grpc: "$PROXY", admin: "$PROXY_ADMIN"})
        return Service("satmesh", p, grpc, admin)

    def scratch(self, name: str) -> str:
        """A fresh path in the run's directory, not created (satmesh creates its disk
        queue's directory); shown as `$NAME_DIR` in the command lines."""
        self.n += 1
        path = os.path.join(self.work, f"{self.n:03d}-{name}")
        _ADDRS[path] = f"${name.upper().replace('-', '_')}_DIR"
        return path

    def config(self, env: dict | None = None) -> dict:
        """The effective config of `satmesh run` with `env`, as `satmesh check-config`
        prints it (config/satmesh.yaml, then the environment)."""
        argv = [self.binary, "check-config", os.path.join(ROOT, "config/satmesh.yaml")]
        p = subprocess.run(argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"satmesh check-config exited {p.returncode}: {p.stderr[-2000:]}")
        return json.loads(p.stdout)

    def nginx(self, scenario: str, upstreams: list[str], keepalive: int) -> Service:
        self.n += 1
        d = os.path.join(self.work, f"{self.n:03d}-nginx")
        os.makedirs(d)
        # Workers drop to `nobody` when the master runs as root: let them in.
        os.chmod(d, 0o755)
        listen = f"127.0.0.1:{free_port()}"
        conf = open(os.path.join(ROOT, "bench/nginx.conf")).read()
        for k, v in {
            "@WORKERS@": "auto",
            "@DIR@": d,
            "@LISTEN@": listen,
            "@KEEPALIVE@": str(keepalive),
            "@SERVERS@": "\n".join(f"        server {u};" for u in upstreams),
        }.items():
            conf = conf.replace(k, v)
        path = os.path.join(d, "nginx.conf")
        open(path, "w").write(conf)
        _ADDRS.update({listen: "$PROXY", d: "$NGINX_DIR"})
        argv = ["nginx", "-p", d, "-c", path, "-e", os.path.join(d, "error.log")]
        p = _spawn(scenario, argv, {}, open(os.path.join(d, "out"), "w"), subprocess.STDOUT)

        def ready():
            if p.poll() is not None:
                raise RuntimeError(f"nginx exited {p.returncode}: {open(os.path.join(d, 'error.log')).read()}")
            try:
                socket.create_connection(("127.0.0.1", int(listen.rsplit(":", 1)[1])), 0.2).close()
            except OSError:
                return None
            return children(p.pid)

        wait_until("nginx workers", ready, 20)
        time.sleep(0.3)  # every worker forked
        workers = children(p.pid)
        _EXTRA.extend(workers)
        return Service("nginx", p, listen, "", workers)

    def bench(self, scenario: str, args: list[str], timeout: float) -> dict:
        """Runs `satmesh bench ... --json` to its end: its JSON report, plus its own CPU
        seconds and peak RSS (from wait4's rusage) under `process`."""
        out, err = self._files("bench")
        argv = [self.binary, "bench", *args, "--json"]
        p = _spawn(scenario, argv, {}, open(out, "w"), open(err, "w"))
        watchdog = threading.Timer(timeout, p.kill)
        watchdog.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            watchdog.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        _LIVE.remove(p)
        if p.returncode != 0:
            raise RuntimeError(f"bench exited {p.returncode}: {open(err).read()[-2000:]}")
        text = open(out).read().strip().splitlines()
        report = json.loads(text[-1])
        report["process"] = {
            "cpu_seconds": ru.ru_utime + ru.ru_stime,
            "peak_rss_kib": ru.ru_maxrss,
        }
        return report

    def bench_background(self, scenario: str, args: list[str]) -> subprocess.Popen:
        """`satmesh bench ...` left running; its stdout file is `args_out`."""
        out, err = self._files("bench")
        p = _spawn(scenario, [self.binary, "bench", *args], {}, open(out, "w"), open(err, "w"))
        p.args_out = out
        return p


def bench_supports(binary: str, flag: str) -> bool:
    """Whether this build's `satmesh bench` knows a flag (some land in parallel)."""
    text = subprocess.run([binary, "bench", "--help"], capture_output=True, text=True).stdout
    return re.search(rf"(^|\s){re.escape(flag)}\b", text) is not None


def arrived(sink: Service) -> int:
    """Messages the sink acknowledged, over every method."""
    counts = json.loads(http(f"http://{sink.admin}/counts"))
    return sum(m["messages"] for m in counts["methods"].values())


def metric(admin: str, name: str) -> float | None:
    return sample(http(f"http://{admin}/metrics").decode(), name)


def sample(text: str, name: str) -> float | None:
    """An unlabelled sample of a Prometheus text exposition."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def buckets(text: str, name: str) -> dict[str, int]:
    """A histogram's cumulative buckets, by their `le` label as written ("0.005", "+Inf")."""
    pattern = rf'^{re.escape(name)}_bucket\{{le="([^"]+)"\}} (\S+)$'
    return {le: int(float(n)) for le, n in re.findall(pattern, text, re.M)}
