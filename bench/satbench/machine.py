"""Facts about the machine and the software a run used, for the report."""

import os
import platform
import subprocess

from .procs import ROOT


def _cmd(*argv) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (p.stdout or p.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _first(path: str, key: str) -> str:
    try:
        for line in open(path):
            if line.startswith(key):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def filesystem(path: str) -> str:
    """The file system holding `path` (its longest mount point), e.g. `ext4 on /dev/vda`:
    on tmpfs an fsync costs nothing and nothing is written to a device."""
    path = os.path.realpath(path)
    best, found = "", "unknown"
    try:
        for line in open("/proc/self/mountinfo"):
            fields = line.split()
            mount, tail = fields[4], fields[fields.index("-") + 1 :]
            inside = path == mount or path.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, found = mount, f"{tail[0]} on {tail[1]}"
    except (OSError, ValueError, IndexError):
        pass
    return found


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def facts(start: bool) -> dict:
    """At the start: the machine and versions. At the end: only what changes."""
    if not start:
        return {"loadavg_end": loadavg()}
    mem_kib = int(_first("/proc/meminfo", "MemTotal").split()[0])
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout
    return {
        "cpu": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "nproc": int(_cmd("nproc")),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first("/etc/os-release", "PRETTY_NAME"),
        "rustc": _cmd("rustc", "-V"),
        "nginx": _cmd("nginx", "-v"),
        "gnuplot": _cmd("gnuplot", "--version"),
        "python": platform.python_version(),
        "commit": _cmd("git", "rev-parse", "--short", "HEAD") + (" (with local changes)" if dirty.strip() else ""),
        "loadavg_start": loadavg(),
    }
