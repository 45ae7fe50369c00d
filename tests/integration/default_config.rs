//! `config/satmesh.yaml` is the documented default config: it must load to exactly
//! `Config::default()`, name every key, and pass `satmesh check-config`. The CLI's
//! config errors must name the key at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use satmesh::config::Config;
use serde_json::Value;

fn default_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/satmesh.yaml")
}

fn defaults() -> Value {
    serde_json::to_value(Config::default()).expect("defaults serialize")
}

/// `satmesh check-config [file]` with `env` on top of a process environment cleared of
/// every `SATMESH__` variable.
fn check_config(file: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_satmesh"));
    cmd.arg("check-config");
    if let Some(file) = file {
        cmd.arg(file);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("SATMESH__") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run satmesh check-config")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "check-config failed: {:?}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "check-config printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn assert_fails_naming(output: &Output, word: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected exit status 2; stderr: {stderr}"
    );
    assert!(
        stderr.contains(word),
        "the error should name `{word}`; stderr: {stderr}"
    );
}

/// Every leaf of `value` as its key path. Arrays, scalars, nulls and empty maps are leaves.
fn leaves(value: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        leaf => out.push((path.clone(), leaf.clone())),
    }
}

/// The lines of the block under `section:` (a key at column 0), up to the next key at
/// column 0.
fn section_lines<'a>(text: &'a str, section: &str) -> Vec<&'a str> {
    let header = format!("{section}:");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != header);
    assert!(
        lines.next().is_some(),
        "config/satmesh.yaml has no `{header}` section"
    );
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .collect()
}

#[test]
fn default_file_loads_to_the_built_in_defaults() {
    let config = Config::load(Some(&default_file()), Some(HashMap::new()))
        .expect("config/satmesh.yaml loads");
    assert_eq!(
        serde_json::to_value(&config).unwrap(),
        defaults(),
        "config/satmesh.yaml differs from Config::default()"
    );
}

#[test]
fn default_file_names_every_key() {
    let text = std::fs::read_to_string(default_file()).expect("read config/satmesh.yaml");
    let mut all = Vec::new();
    leaves(&defaults(), &mut Vec::new(), &mut all);
    assert!(all.len() > 20, "too few keys: {all:?}");
    for (path, value) in all {
        assert!(
            (2..=3).contains(&path.len()),
            "update this test for deeper keys: {path:?}"
        );
        let (section, key) = (&path[0], &path[path.len() - 1]);
        let mut block = section_lines(&text, section);
        if path.len() == 3 {
            // A subsection (`pipeline.disk`): the lines indented under its `disk:` line.
            let sub = format!("{}:", path[1]);
            block = block
                .iter()
                .skip_while(|l| l.trim_start() != sub)
                .skip(1)
                .take_while(|l| l.is_empty() || l.starts_with("    "))
                .copied()
                .collect();
        }
        let set = block
            .iter()
            .any(|l| l.trim_start().starts_with(&format!("{key}:")));
        let commented = block.iter().any(|l| {
            l.trim_start()
                .strip_prefix('#')
                .is_some_and(|rest| rest.trim_start().starts_with(&format!("{key}:")))
        });
        if value.is_null() {
            assert!(
                commented && !set,
                "`{section}.{key}` defaults to unset: it should appear commented out, with an example"
            );
        } else {
            assert!(
                set,
                "`{section}.{key}:` is missing from config/satmesh.yaml"
            );
        }
    }
}

#[test]
fn check_config_prints_the_defaults_for_the_default_file() {
    let output = check_config(Some(&default_file()), &[]);
    assert_eq!(stdout_json(&output), defaults());
}

#[test]
fn check_config_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "server:\n  lisen: x\n").unwrap();
    assert_fails_naming(&check_config(Some(&path), &[]), "lisen");
}

#[test]
fn check_config_names_a_bad_environment_value() {
    let output = check_config(
        Some(&default_file()),
        &[("SATMESH__SERVER__MAX_MESSAGE_BYTES", "abc")],
    );
    assert_fails_naming(&output, "max_message_bytes");
}

#[test]
fn check_config_splits_environment_lists_on_commas() {
    let output = check_config(
        Some(&default_file()),
        &[("SATMESH__UPSTREAM__STATIC", "a:1,b:2")],
    );
    let config = stdout_json(&output);
    assert_eq!(
        config["upstream"]["static"],
        serde_json::json!(["a:1", "b:2"])
    );
    // Nothing else moved.
    let mut expected = defaults();
    expected["upstream"]["static"] = serde_json::json!(["a:1", "b:2"]);
    assert_eq!(config, expected);
}
