//! Processes: the real `satmesh` binary started as a peer or as the sink, on ephemeral
//! loopback ports, stopped by signal; other commands run to their end; free ports for
//! listeners that must be known before they start.

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// The satmesh binary under test, built by cargo for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_satmesh");

/// A running satmesh process with the addresses it printed.
pub struct Proc {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `satmesh ARGS` and waits for its `... listening grpc=A admin=B` line.
    pub async fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn satmesh");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("satmesh printed no listening line within 20 s")
            .expect("read stdout")
            .expect("satmesh exited before listening");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .expect("address")
        };
        let (grpc, admin) = (field("grpc="), field("admin="));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc {
            child,
            grpc,
            admin,
            _dir: None,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("satmesh did not exit in time after SIGTERM")
            .expect("wait")
    }
}

/// Starts a sink with extra flags.
pub async fn sink(flags: &[&str]) -> Proc {
    let mut args = vec!["sink", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    Proc::spawn(&args, &[]).await
}

/// Starts a peer with a config: listeners on port 0, `upstream.static` = `oaps`, plus
/// `extra` YAML sections.
pub async fn satmesh(oaps: &[SocketAddr], extra: &str) -> Proc {
    satmesh_env(oaps, extra, &[]).await
}

/// Like [`satmesh`], with `SATMESH__...` environment overrides. Listeners and the OAP
/// list come by environment, so `extra` may hold any section.
pub async fn satmesh_env(oaps: &[SocketAddr], extra: &str, envs: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("satmesh.yaml");
    std::fs::write(&path, extra).expect("write config");
    let list: Vec<String> = oaps.iter().map(|a| a.to_string()).collect();
    let list = list.join(",");
    let mut all = vec![
        ("SATMESH__SERVER__LISTEN", "127.0.0.1:0"),
        ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0"),
        ("SATMESH__UPSTREAM__STATIC", list.as_str()),
    ];
    all.extend_from_slice(envs);
    let mut p = Proc::spawn(
        &["run", "--config", path.to_str().expect("utf-8 path")],
        &all,
    )
    .await;
    p._dir = Some(dir);
    p
}

/// Runs `cmd` to its end with stdout and stderr captured; kills it and fails with what it
/// printed so far after `within`.
pub async fn run_to_end(what: &str, cmd: &mut Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let ended = tokio::time::timeout(within, async {
        tokio::try_join!(
            child.wait(),
            out.read_to_end(&mut stdout),
            err.read_to_end(&mut stderr)
        )
    })
    .await;
    // What was read before a timeout stays in the buffers, for the message.
    let status = match ended {
        Ok(Ok((status, _, _))) => status,
        Ok(Err(e)) => panic!("waiting on {what}: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "{what} did not exit within {within:?}\n{}",
                printed(what, &stdout, &stderr)
            );
        }
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The last lines a process printed on stdout and on stderr, for failure messages.
pub fn printed(what: &str, stdout: &[u8], stderr: &[u8]) -> String {
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    format!(
        "--- {what} stdout (tail) ---\n{}\n--- {what} stderr (tail) ---\n{}\n---",
        tail(stdout),
        tail(stderr)
    )
}

/// A free TCP port on loopback (for listeners that must be known before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on loopback (gossip ports peers list as seeds).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
