//! Real agents: the SkyWalking Python agent (PyPI) and `sw-rust-agent` (tests/rust-agent),
//! installed or built on first use, run to their end with their JSON summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use super::processes::{BIN, printed, run_to_end};

static PYTHON_VENV: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
static RUST_AGENT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// The Python agent's script (PyPI `apache-skywalking`), run by [`python_bin`].
pub const PYTHON_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/python_agent.py");

/// The Python interpreter of `target/agents-venv` (apache-skywalking 1.2.0), made by
/// tests/agents/setup.sh on first use.
pub async fn python_bin() -> &'static Path {
    PYTHON_VENV
        .get_or_init(|| async {
            let repo = env!("CARGO_MANIFEST_DIR");
            let mut setup = Command::new("bash");
            setup.arg(format!("{repo}/tests/agents/setup.sh"));
            let what = "tests/agents/setup.sh";
            let out = run_to_end(what, &mut setup, Duration::from_secs(600)).await;
            assert!(
                out.status.success(),
                "{what} failed (it installs apache-skywalking==1.2.0 from PyPI into \
                 target/agents-venv)\n{}",
                printed(what, &out.stdout, &out.stderr)
            );
            Path::new(repo).join("target/agents-venv/bin/python")
        })
        .await
}

/// `sw-rust-agent` (tests/rust-agent), built on first use next to the satmesh binary
/// under test, with the same profile.
pub async fn rust_agent_bin() -> &'static Path {
    RUST_AGENT
        .get_or_init(|| async {
            let profile_dir = Path::new(BIN).parent().expect("binary dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let bin = profile_dir.join("sw-rust-agent");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args([
                    "build",
                    "-p",
                    "satmesh-rust-agent",
                    "--bin",
                    "sw-rust-agent",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    build.arg("--release");
                }
                Some(other) => {
                    build.args(["--profile", other]);
                }
            }
            let what = "cargo build -p satmesh-rust-agent";
            let out = run_to_end(what, &mut build, Duration::from_secs(900)).await;
            assert!(
                out.status.success() && bin.exists(),
                "could not build {} (its build needs `protoc`: apt-get install \
                 protobuf-compiler)\n{}",
                bin.display(),
                printed(what, &out.stdout, &out.stderr)
            );
            bin
        })
        .await
}

/// `sw-rust-agent` reporting to `collector`; add its flags (`--service`, `--segments`, ...).
pub async fn rust_agent(collector: impl std::fmt::Display) -> Command {
    let mut cmd = Command::new(rust_agent_bin().await);
    cmd.env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector.to_string());
    cmd
}

/// The Python agent reporting to `collector`, `SW_AGENT_AUTHENTICATION` cleared (a token
/// comes only by `--token`); add its flags (`--service`, `--segments`, ...).
pub async fn python_agent(collector: impl std::fmt::Display) -> Command {
    let mut cmd = Command::new(python_bin().await);
    cmd.arg(PYTHON_AGENT)
        .env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector.to_string())
        .env_remove("SW_AGENT_AUTHENTICATION");
    cmd
}

/// What an agent said when it ended.
pub struct AgentRun {
    /// The JSON summary line it printed last on stdout.
    pub summary: Value,
    /// The tails of its stdout and stderr, for failure messages.
    pub output: String,
}

/// Runs an agent to its end (killed, and failing, after `within`): it must exit 0 and
/// print its JSON summary.
pub async fn run_agent(what: &str, cmd: &mut Command, within: Duration) -> AgentRun {
    let out = run_to_end(what, cmd, within).await;
    let output = printed(what, &out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "{what} exited with {}\n{output}",
        out.status
    );
    AgentRun {
        summary: agent_summary(&out.stdout),
        output,
    }
}

/// The JSON summary an agent printed last on stdout: its last line that is a JSON object.
pub fn agent_summary(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .find(Value::is_object)
        .unwrap_or_else(|| panic!("the agent printed no JSON summary:\n{text}"))
}
