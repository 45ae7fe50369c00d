"""The connections plot: throughput and CPU per event against connections (gnuplot)."""

import os
import shutil
import subprocess

SCRIPT = """
set terminal pngcairo size 900,760 font "sans,10"
set output '{png}'
set multiplot layout 2,1 title "{title}"
set logscale x 2
set xtics ({xtics})
set lmargin 12
set rmargin 26
set key outside right top
set grid
set xlabel "agent connections (x {streams} client-streams, {size} B segments)"
set ylabel "events/s at the sink"
set format y "%.0s%c"
set yrange [0:*]
set style line 1 lc rgb "#606060" lw 2 pt 7 dt 2
set style line 2 lc rgb "#1f77b4" lw 2 pt 7
set style line 3 lc rgb "#ff7f0e" lw 2 pt 7
plot '{dat}' using 1:2 with linespoints ls 1 title "direct (floor)", \\
     '' using 1:3 with linespoints ls 2 title "satmesh", \\
     '' using 1:4 with linespoints ls 3 title "nginx"
set ylabel "CPU us per event"
set format y "%g"
plot '{dat}' using 1:7 with linespoints ls 1 title "sink, direct (floor)", \\
     '' using 1:5 with linespoints ls 2 title "satmesh process", \\
     '' using 1:6 with linespoints ls 3 title "nginx processes"
unset multiplot
"""


def _get(runs, path, conns, f):
    for r in runs:
        if r["path"] == path and r["connections"] == conns and "error" not in r:
            v = f(r)
            return "NaN" if v is None else f"{v:.6g}"
    return "NaN"


def write(sweep_runs: list[dict], raw_dir: str, png: str, title: str) -> str | None:
    """Writes the PNG; returns why not when it cannot."""
    if not sweep_runs:
        return "no sweep results"
    if shutil.which("gnuplot") is None:
        return "gnuplot is not installed"
    conns = sorted({r["connections"] for r in sweep_runs})
    dat = os.path.join(raw_dir, "sweep.dat")
    proxy = lambda r: r["processes"]["proxy"]["cpu_us_per_event"]  # noqa: E731
    with open(dat, "w") as f:
        f.write("# connections eps_direct eps_satmesh eps_nginx cpu_satmesh cpu_nginx cpu_sink_direct\n")
        for c in conns:
            cols = [
                _get(sweep_runs, "direct", c, lambda r: r["events_per_second"]),
                _get(sweep_runs, "satmesh", c, lambda r: r["events_per_second"]),
                _get(sweep_runs, "nginx", c, lambda r: r["events_per_second"]),
                _get(sweep_runs, "satmesh", c, proxy),
                _get(sweep_runs, "nginx", c, proxy),
                _get(sweep_runs, "direct", c, lambda r: r["processes"]["sink"]["cpu_us_per_event"]),
            ]
            f.write(f"{c} {' '.join(cols)}\n")
    first = sweep_runs[0]
    script = SCRIPT.format(
        png=png,
        dat=dat,
        title=title,
        xtics=", ".join(str(c) for c in conns),
        streams=first["streams"],
        size=first["size"],
    )
    gp = os.path.join(raw_dir, "sweep.gp")
    open(gp, "w").write(script)
    p = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if p.returncode != 0:
        return f"gnuplot failed: {p.stderr.strip()[-500:]}"
    return None
