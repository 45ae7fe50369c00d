//! Idle agents: N HTTP/2 connections that each make one tiny call and then hold the
//! connection open doing nothing, as a fleet of quiet agents does between two reports.
//! Used by `satmesh bench --idle N` and `tests/integration/idle_connections.rs` to measure
//! what an idle connection costs a peer.
//!
//! Each connection is a bare hyper HTTP/2 client (h2c, prior knowledge, as agents dial)
//! driven by one task: no tonic channel, no buffer task, so 10,000 of them fit in one
//! process. The call is `ManagementService/keepAlive` with an `InstancePingPkg`, the
//! heartbeat every agent sends first, so the peer has served a stream on the connection
//! (HPACK tables, stream slab, the async path) before it goes quiet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::KEEPALIVE_PATH;
use satmesh_proto::codec::grpc_frame;

/// Connections set up at once: enough to open 10,000 in a few seconds on loopback,
/// few enough not to overflow the peer's accept backlog.
const CONNECT_CONCURRENCY: usize = 128;

/// Time for one connection's TCP connect, HTTP/2 handshake and call.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct IdleSpec {
    pub target: SocketAddr,
    pub connections: usize,
    /// How long every connection is held once all are set up.
    pub hold: Duration,
    /// Make one keepAlive call on each connection (as an agent does) before going quiet.
    pub call: bool,
}

/// Live counters, so a caller can tell when every connection is set up.
#[derive(Debug, Default)]
pub struct IdleProgress {
    /// HTTP/2 handshake done.
    pub established: AtomicU64,
    /// Connect, handshake or call failed, or timed out.
    pub failed: AtomicU64,
    /// The call was answered with grpc-status 0.
    pub served: AtomicU64,
    /// Connections whose setup ended (either way): `connections` once all are done.
    pub settled: AtomicU64,
    /// Established connections the peer closed before the hold ended.
    pub closed_early: AtomicU64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub established: u64,
    pub failed: u64,
    pub served: u64,
    pub closed_early: u64,
    /// Time from the first connect until every connection was set up or had failed.
    pub setup_seconds: f64,
    pub held_seconds: f64,
    pub failures: BTreeMap<String, u64>,
}

/// Opens `spec.connections` idle connections, holds them for `spec.hold` after the last
/// one is set up (or until `stop`), then closes them all.
pub async fn run(
    spec: IdleSpec,
    progress: Arc<IdleProgress>,
    stop: CancellationToken,
) -> IdleReport {
    raise_nofile_limit(spec.connections as u64 + 256);
    let started = Instant::now();
    let release = CancellationToken::new();
    let failures = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..spec.connections {
        let (progress, failures, gate, release) = (
            progress.clone(),
            failures.clone(),
            gate.clone(),
            release.clone(),
        );
        let call = spec.call.then(|| {
            let ping =
                super::meter::ping(&format!("idle-svc-{}", i % 16), &format!("idle-inst-{i}"));
            grpc_frame(&ping)
        });
        let target = spec.target;
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate never closes");
            let setup = tokio::time::timeout(SETUP_TIMEOUT, set_up(target, call)).await;
            drop(permit);
            let held = match setup {
                Ok(Ok(held)) => {
                    progress.established.fetch_add(1, Ordering::Relaxed);
                    if held.served {
                        progress.served.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(held)
                }
                Ok(Err(e)) => {
                    if e.established {
                        progress.established.fetch_add(1, Ordering::Relaxed);
                    }
                    count(&failures, e.kind);
                    None
                }
                Err(_) => {
                    count(&failures, "setup timed out");
                    None
                }
            };
            if held.is_none() {
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            progress.settled.fetch_add(1, Ordering::Relaxed);
            let Some(mut held) = held else { return };
            tokio::select! {
                _ = release.cancelled() => {}
                _ = &mut held.conn => {
                    progress.closed_early.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Dropping the sender and the connection closes the socket.
            drop(held);
        });
    }
    let all = spec.connections as u64;
    while progress.settled.load(Ordering::Relaxed) < all && !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    let held_from = Instant::now();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(spec.hold) => {}
    }
    let held_seconds = held_from.elapsed().as_secs_f64();
    release.cancel();
    while tasks.join_next().await.is_some() {}
    IdleReport {
        connections: spec.connections,
        established: progress.established.load(Ordering::Relaxed),
        failed: progress.failed.load(Ordering::Relaxed),
        served: progress.served.load(Ordering::Relaxed),
        closed_early: progress.closed_early.load(Ordering::Relaxed),
        setup_seconds,
        held_seconds,
        failures: failures.lock().expect("failures lock").clone(),
    }
}

/// One set-up connection: its sender must live, or hyper closes the connection.
struct Held {
    _send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    conn: std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>,
    served: bool,
}

struct SetupError {
    kind: &'static str,
    established: bool,
}

async fn set_up(target: SocketAddr, call: Option<Bytes>) -> Result<Held, SetupError> {
    fn fail<E>(kind: &'static str) -> impl FnOnce(E) -> SetupError {
        move |_| SetupError {
            kind,
            established: false,
        }
    }
    let stream = TcpStream::connect(target).await.map_err(fail("connect"))?;
    stream.set_nodelay(true).map_err(fail("connect"))?;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(fail("handshake"))?;
    let mut conn: std::pin::Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>> =
        Box::pin(conn);
    let Some(body) = call else {
        return Ok(Held {
            _send: send,
            conn,
            served: false,
        });
    };
    let exchange = async {
        send.ready().await.map_err(|_| "call")?;
        let request = http::Request::post(format!("http://{target}{KEEPALIVE_PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body))
            .map_err(|_| "call")?;
        let response = send.send_request(request).await.map_err(|_| "call")?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|_| "call")?;
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"));
        match status.map(|s| s.as_bytes()) {
            Some(b"0") => Ok(()),
            _ => Err("call status"),
        }
    };
    let result = tokio::select! {
        r = exchange => r,
        _ = &mut conn => Err("closed during the call"),
    };
    match result {
        Ok(()) => Ok(Held {
            _send: send,
            conn,
            served: true,
        }),
        Err(kind) => Err(SetupError {
            kind,
            established: true,
        }),
    }
}

fn count(failures: &std::sync::Mutex<BTreeMap<String, u64>>, kind: &str) {
    *failures
        .lock()
        .expect("failures lock")
        .entry(kind.to_owned())
        .or_default() += 1;
}

/// Raises the soft open-file limit towards `wanted` (at most the hard limit): one
/// descriptor per connection, and the default soft limit is often 1024. Returns the
/// limit in force.
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => {
            if limit < wanted {
                tracing::warn!(limit, wanted, "open file limit is below what is wanted");
            }
            limit
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open file limit");
            0
        }
    }
}

/// `satmesh bench --idle N`: opens N idle connections, prints one line once all are set
/// up (`idle: set up ...`), holds them for `hold`, then prints the report.
pub async fn bench(
    target: SocketAddr,
    connections: usize,
    hold: Duration,
    json: bool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let progress = Arc::new(IdleProgress::default());
    let spec = IdleSpec {
        target,
        connections,
        hold,
        call: true,
    };
    let run = tokio::spawn(run(spec, progress.clone(), stop));
    let all = connections as u64;
    while progress.settled.load(Ordering::Relaxed) < all && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "idle: set up {} established, {} served, {} failed; holding for {}",
        progress.established.load(Ordering::Relaxed),
        progress.served.load(Ordering::Relaxed),
        progress.failed.load(Ordering::Relaxed),
        humantime::format_duration(hold)
    );
    let report = run.await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} of {} connections established ({} served, {} failed {:?}) in {:.1} s, held {:.1} s, {} closed early by the peer",
            report.established,
            report.connections,
            report.served,
            report.failed,
            report.failures,
            report.setup_seconds,
            report.held_seconds,
            report.closed_early
        );
    }
    Ok(())
}
