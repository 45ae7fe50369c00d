//! The command lines the docs show are ones the binary accepts, and every flag a command
//! has is documented. Each command line of README.md, deploy/README.md and docs/*.md (in
//! code blocks, and the usage column of a table) is parsed by the real `satmesh` with
//! `SATMESH_PARSE_ONLY` set: clap's own parser, nothing run. Each row of a flag table is
//! parsed the same way under the command its section is about.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use crate::support::processes::BIN;

/// Sample values for the placeholders the docs use, matched as whole words.
const PLACEHOLDERS: &[(&str, &str)] = &[
    ("ADDR[,ADDR...]", "127.0.0.1:11800,127.0.0.1:11801"),
    ("ADDR", "127.0.0.1:11800"),
    ("$SINK", "127.0.0.1:11800"),
    ("$PROXY", "127.0.0.1:11801"),
    ("FILE", "config/satmesh.yaml"),
    ("BYTES", "300"),
    ("N", "100"),
    ("M", "2"),
    ("K", "4"),
    ("S", "1"),
    ("R", "10"),
    ("D", "10s"),
];

/// What comes before satmesh's own arguments on a command line of the docs.
const PREFIXES: &[&str] = &[
    "satmesh ",
    "cargo run --release -- ",
    "target/release/satmesh ",
];

/// Arguments a command cannot be parsed without, added to a flag table's rows.
const REQUIRED: &[(&str, &[&str])] = &[("bench", &["--target", "127.0.0.1:11800"])];

/// A command line found in the docs: where, and satmesh's arguments.
#[derive(Debug)]
struct Found {
    at: String,
    args: Vec<String>,
}

/// What one doc file says about the command line.
#[derive(Default)]
struct Doc {
    /// Command lines from code blocks and usage columns.
    commands: Vec<Found>,
    /// Rows of flag tables, already made into command lines.
    flag_rows: Vec<Found>,
    /// Flags named per command, in its usage line or its flag table.
    documented: BTreeMap<String, BTreeSet<String>>,
}

fn substitute(word: &str) -> String {
    PLACEHOLDERS
        .iter()
        .find(|(p, _)| *p == word)
        .map_or(word, |(_, v)| v)
        .to_owned()
}

/// satmesh's arguments of `line` when it is a satmesh command line: environment
/// assignments in front and a trailing `# comment` dropped.
fn command_args(line: &str) -> Option<Vec<String>> {
    let line = line.split(" #").next()?.trim();
    let mut rest = line;
    while let Some((word, after)) = rest.split_once(' ') {
        let is_assignment = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        if !is_assignment {
            break;
        }
        rest = after.trim_start();
    }
    let args = PREFIXES.iter().find_map(|p| rest.strip_prefix(p))?;
    Some(args.split_whitespace().map(substitute).collect())
}

/// The code spans (`...`) of a markdown table cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// A usage line (`satmesh demo [--agents N] [--duration 30s]`) as a command line: the
/// optional parts given, `[flags]` left out.
fn usage_args(usage: &str) -> Option<Vec<String>> {
    let usage = usage.replace("[flags]", "");
    let words: Vec<String> = usage
        .split_whitespace()
        .map(|w| {
            if PLACEHOLDERS.iter().any(|(p, _)| *p == w) {
                w.to_owned()
            } else {
                w.replace(['[', ']'], "")
            }
        })
        .collect();
    command_args(&words.join(" "))
}

fn read_doc(root: &Path, path: &Path) -> Doc {
    let text = std::fs::read_to_string(path).expect("read doc");
    let name = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let mut doc = Doc::default();
    let (mut in_code, mut section, mut flag_table) = (false, None::<String>, false);
    for (i, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", i + 1);
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            if let Some(args) = command_args(line) {
                doc.commands.push(Found { at, args });
            }
            continue;
        }
        if line.starts_with('#') {
            // The command a section is about, e.g. "### `satmesh bench`".
            section = code_spans(line)
                .iter()
                .find_map(|s| s.strip_prefix("satmesh "))
                .map(|c| c.split_whitespace().next().unwrap_or("").to_owned());
            continue;
        }
        let Some(row) = line.strip_prefix('|') else {
            flag_table = false;
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells[0] == "flag" {
            flag_table = true;
            continue;
        }
        let first = code_spans(cells[0]);
        if flag_table && let (Some(command), Some(usage)) = (&section, first.first()) {
            let mut words = usage.split_whitespace();
            let flag = words.next().expect("a flag").to_owned();
            let mut value: Vec<String> = words.map(substitute).collect();
            let default = cells.get(1).map_or("", |d| d.trim_matches('`'));
            if value.is_empty() && default != "off" {
                assert!(
                    !default.contains(' ') && !matches!(default, "none" | "required"),
                    "{at}: no value to try {flag} with (give a placeholder or a default)"
                );
                value.push(default.to_owned());
            }
            let mut args = vec![command.clone()];
            if let Some((_, required)) = REQUIRED.iter().find(|(c, _)| c == command)
                && required[0] != flag
            {
                args.extend(required.iter().map(|a| a.to_string()));
            }
            args.push(flag.clone());
            args.extend(value);
            doc.documented
                .entry(command.clone())
                .or_default()
                .insert(flag);
            doc.flag_rows.push(Found { at, args });
        } else if let Some(args) = first.first().and_then(|u| usage_args(u)) {
            let flags = args.iter().filter(|a| a.starts_with("--")).cloned();
            doc.documented
                .entry(args[0].clone())
                .or_default()
                .extend(flags);
            doc.commands.push(Found { at, args });
        }
    }
    doc
}

fn docs() -> Vec<Doc> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("README.md"), root.join("deploy/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            paths.push(path);
        }
    }
    paths.iter().map(|p| read_doc(root, p)).collect()
}

/// Runs the binary's parser over `args`: None when it accepts them, else what it said.
fn parse(args: &[String]) -> Option<String> {
    let out = Command::new(BIN)
        .args(args)
        .env("SATMESH_PARSE_ONLY", "1")
        .output()
        .expect("run satmesh");
    (!out.status.success()).then(|| {
        format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn failures<'a>(found: impl Iterator<Item = &'a Found>) -> Vec<String> {
    found
        .filter_map(|f| {
            parse(&f.args).map(|why| format!("{}: satmesh {}\n  {why}", f.at, f.args.join(" ")))
        })
        .collect()
}

#[test]
fn every_command_line_in_the_docs_parses() {
    let docs = docs();
    let commands: Vec<&Found> = docs.iter().flat_map(|d| &d.commands).collect();
    // The quickstart, the command table and the benchmark commands at least.
    assert!(commands.len() >= 20, "only {} found", commands.len());
    for command in ["run", "check-config", "sink", "demo", "bench", "status"] {
        assert!(
            commands.iter().any(|c| c.args[0] == command),
            "no `satmesh {command}` line in the docs"
        );
    }
    let bad = failures(commands.into_iter());
    assert!(
        bad.is_empty(),
        "command lines the binary rejects:\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_row_of_a_flag_table_is_a_flag_of_its_command() {
    let docs = docs();
    let rows: Vec<&Found> = docs.iter().flat_map(|d| &d.flag_rows).collect();
    for command in ["bench", "sink"] {
        assert!(
            rows.iter().filter(|r| r.args[0] == command).count() >= 5,
            "the flag table of `satmesh {command}` was not found"
        );
    }
    let bad = failures(rows.into_iter());
    assert!(
        bad.is_empty(),
        "flag table rows the binary rejects:\n{}",
        bad.join("\n")
    );
}

/// The long flags `satmesh COMMAND --help` lists.
fn flags_of(command: &str) -> BTreeSet<String> {
    let out = Command::new(BIN)
        .args([command, "--help"])
        .output()
        .expect("run satmesh");
    assert!(out.status.success(), "satmesh {command} --help failed");
    String::from_utf8(out.stdout)
        .expect("utf-8 help")
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| l.split([' ', ',', '=', '<']))
        .filter(|w| w.starts_with("--") && *w != "--help" && *w != "--version")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_flag_of_every_command_is_documented() {
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for doc in docs() {
        for (command, flags) in doc.documented {
            documented.entry(command).or_default().extend(flags);
        }
    }
    let mut missing = Vec::new();
    for command in ["run", "check-config", "sink", "demo", "bench", "status"] {
        let known = documented.get(command).cloned().unwrap_or_default();
        for flag in flags_of(command).difference(&known) {
            missing.push(format!("satmesh {command} {flag}"));
        }
    }
    assert!(
        missing.is_empty(),
        "flags neither in a usage line nor in a flag table:\n{}",
        missing.join("\n")
    );
}

#[test]
fn parse_only_still_rejects_what_clap_rejects() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let why = parse(&args(&["demo", "--no-such-flag"])).expect("an unknown flag is rejected");
    assert!(
        why.contains("exit Some(2)") && why.contains("--no-such-flag"),
        "{why}"
    );
    assert!(
        parse(&args(&["bench", "--connections", "8"])).is_some(),
        "--target is required"
    );
    assert!(
        parse(&args(&["demo", "--duration", "soon"])).is_some(),
        "a bad duration"
    );
    assert!(parse(&args(&["demo", "--duration", "30s"])).is_none());
}
