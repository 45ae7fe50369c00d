//! SMOKE TEST of the benchmark, so it cannot rot: `bench/run.sh --smoke` runs every
//! scenario for half a second (direct, satmesh and nginx paths, the connections sweep,
//! unary and delivery latency, the memory queue against the disk queue, idle
//! connections, the criterion benches) and writes its report to a temporary directory.
//! It asserts that the script exits 0 and that the report has every section, each with
//! figures. It asserts NOTHING about speed: the figures of a smoke run are not
//! measurements (the full run, `bench/run.sh`, is on demand and writes
//! docs/BENCHMARKS.md).
//!
//! It uses the satmesh binary cargo built for the tests and criterion's benches in the
//! dev profile, so it compiles nothing in release (scripts/test.sh builds those benches
//! beforehand). nginx and gnuplot are installed by scripts/test.sh (or by the script).

use std::path::Path;
use std::process::Command;

/// The report's sections, as headings.
const SECTIONS: &[&str] = &[
    "## Targets",
    "## Machine",
    "## Commands",
    "## Throughput and CPU per event",
    "## Connections sweep",
    "## Unary keepAlive latency",
    "## Delivery latency",
    "## Disk queue",
    "## Idle connections",
    "## Micro-benchmarks",
];

/// The text of one `## ` section, up to the next.
fn section<'a>(report: &'a str, heading: &str) -> &'a str {
    let start = report
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the report has no `{heading}` section:\n{report}"));
    let body = &report[start + heading.len() + 2..];
    &body[..body.find("\n## ").unwrap_or(body.len())]
}

/// Table rows (not the header's separator) holding at least one figure.
fn rows_with_figures(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| ---") && !l.starts_with("|---"))
        .filter(|l| l.chars().any(|c| c.is_ascii_digit()))
        .count()
}

#[test]
fn bench_smoke_writes_every_section_with_figures() {
    let out = tempfile::tempdir().expect("temp dir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new("bash")
        .arg(root.join("bench/run.sh"))
        .arg("--smoke")
        .arg("--out")
        .arg(out.path())
        .args([
            "--bin",
            env!("CARGO_BIN_EXE_satmesh"),
            "--cargo-profile",
            "dev",
        ])
        .output()
        .expect("bench/run.sh starts");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench/run.sh --smoke failed ({}):\n{stderr}",
        run.status
    );

    let report = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).expect("the report");
    assert!(report.contains("SMOKE RUN"), "a smoke report says so");
    for heading in SECTIONS {
        let text = section(&report, heading);
        for marker in ["**PENDING**", "**FAILED**", "**SKIPPED**", "failed:"] {
            assert!(
                !text.contains(marker),
                "`{heading}` has no figures ({marker}):\n{text}\n\nstderr:\n{stderr}"
            );
        }
        if *heading == "## Commands" {
            // The exact command lines, not a table.
            for command in [
                " sink --listen ",
                " run --config ",
                "nginx -p ",
                " bench --target ",
            ] {
                assert!(text.contains(command), "no `{command}` in:\n{text}");
            }
            assert!(
                text.contains(" bench --idle "),
                "no idle command in:\n{text}"
            );
            for fsync in ["interval", "always"] {
                let peer = format!("SATMESH__PIPELINE__DISK__FSYNC={fsync} ");
                assert!(
                    text.contains(&peer),
                    "no disk-queue peer with `{peer}` in:\n{text}"
                );
            }
            assert!(
                text.contains("cargo bench "),
                "no criterion command in:\n{text}"
            );
        } else {
            assert!(
                rows_with_figures(text) > 0,
                "`{heading}` has no table row with a figure:\n{text}"
            );
        }
    }
    // Every target of issues 5 and 9 got a figure and a verdict (met or missed: a smoke
    // run's verdicts mean nothing): 9 of issue 5, 5 of the disk queue (CPU against the
    // memory queue at each size, events/s with fsync always, bytes written per byte
    // received, paced delivery p99).
    let targets = section(&report, "## Targets");
    assert!(
        !targets.contains("n/a"),
        "a target has no figure:\n{targets}"
    );
    let verdicts = targets
        .lines()
        .filter(|l| l.ends_with("| met |") || l.ends_with("| **missed** |"))
        .count();
    assert_eq!(verdicts, 14, "14 targets, each met or missed:\n{targets}");

    // The plot, and the raw results the report was made from.
    let png = std::fs::read(out.path().join("bench-connections.png")).expect("the plot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "bench-connections.png is a PNG"
    );
    let raw: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("results.json")).expect("results.json"),
    )
    .expect("results.json is JSON");
    assert_eq!(raw["mode"], "smoke");
    for (name, result) in raw["results"].as_object().expect("results by section") {
        assert_eq!(result["status"], "ok", "section {name}: {result}");
    }
}
