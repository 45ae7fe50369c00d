//! The workloads. Every store runs the same code; only `crate::open` differs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use satmesh::pipeline::{Event, EventQueue};
use tokio::sync::Semaphore;

use crate::StoreArgs;
use crate::measure::{self, Io};

#[derive(Args, Clone, Debug)]
pub struct SteadyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Records in the run, in all.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Producer tasks; each has one call in flight.
    #[arg(long, default_value_t = 16)]
    pub producers: u64,
    /// Records per call: pushed together, the call accepted once the last is durable.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Records pushed and not yet acknowledged, at most.
    #[arg(long, default_value_t = 100_000)]
    pub backlog: usize,
}

#[derive(Args, Clone, Debug)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Payload MiB to fill before the kill.
    #[arg(long, default_value_t = 1024)]
    pub fill_mib: u64,
    #[arg(long, default_value_t = 16)]
    pub producers: u64,
    #[arg(long, default_value_t = 64)]
    pub batch: u64,
    /// Drop the store's files from the page cache before the reopen (as after a host
    /// restart); otherwise they are cached (as after a process kill).
    #[arg(long)]
    pub cold: bool,
}

#[derive(Args, Clone, Debug)]
pub struct FillArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long)]
    pub path: PathBuf,
    #[arg(long)]
    pub producers: u64,
    #[arg(long)]
    pub batch: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn fresh_dir(args: &StoreArgs) -> anyhow::Result<PathBuf> {
    let path = args
        .dir
        .join(format!("{:?}-{}", args.store, std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    Ok(path)
}

fn event(payload: Bytes) -> Event {
    Event {
        method: 0,
        auth: None,
        payload,
        enqueued: Instant::now(),
        key: None,
        seq: 0,
    }
}

/// Pushes one call of `batch` records and waits until its last is durable.
async fn call(
    q: &dyn EventQueue,
    pool: &[Bytes],
    at: &mut usize,
    batch: u64,
) -> anyhow::Result<()> {
    let mut last = 0;
    for _ in 0..batch {
        *at = (*at + 1) % pool.len();
        last = q.push(event(pool[*at].clone())).await?;
    }
    if let Some(settled) = q.settle(last) {
        settled.await?;
    }
    Ok(())
}

pub fn steady(args: SteadyArgs) -> anyhow::Result<()> {
    let dir = fresh_dir(&args.store)?;
    let rt = runtime()?;
    let io_before = Io::now();
    let cpu_before = measure::cpu_seconds();
    let opened = rt.block_on(async { crate::open(&args.store, &dir) })?;
    let q = opened.queue.clone();
    let pool = Arc::new(measure::payloads(args.store.size, 1024));
    let calls = args.events / args.batch / args.producers;
    let total = calls * args.batch * args.producers;
    let (latency, mut accepts, consumed, wall) = rt.block_on(async {
        let backlog = Arc::new(Semaphore::new(args.backlog));
        let start = Instant::now();
        let consumer = tokio::spawn({
            let (q, backlog) = (q.clone(), backlog.clone());
            async move {
                let (mut got, mut next, mut out) = (0u64, 0u64, Vec::new());
                while got < total {
                    out.clear();
                    if !q.pop(512, &mut out).await {
                        break;
                    }
                    for e in &out {
                        anyhow::ensure!(e.seq > next, "record {} after {next}", e.seq);
                        next = e.seq;
                    }
                    got += out.len() as u64;
                    q.release(&out);
                    backlog.add_permits(out.len());
                }
                Ok(got)
            }
        });
        let mut producers = Vec::new();
        for p in 0..args.producers {
            let (q, backlog, pool) = (q.clone(), backlog.clone(), pool.clone());
            let batch = args.batch;
            producers.push(tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3)?;
                let mut accepts = Vec::with_capacity(calls as usize);
                let mut at = (p as usize * 61) % pool.len();
                for _ in 0..calls {
                    backlog.acquire_many(batch as u32).await?.forget();
                    let t0 = Instant::now();
                    call(&*q, &pool, &mut at, batch).await?;
                    let now = Instant::now();
                    latency.record((now - t0).as_micros() as u64)?;
                    accepts.push((now - start).as_nanos() as u64);
                }
                anyhow::Ok((latency, accepts))
            }));
        }
        let mut latency = Histogram::<u64>::new(3)?;
        let mut accepts = Vec::new();
        for p in producers {
            let (l, a) = p.await??;
            latency.add(&l)?;
            accepts.extend(a);
        }
        let wall = start.elapsed();
        let consumed = consumer.await??;
        q.close();
        q.finish().await;
        anyhow::Ok((latency, accepts, consumed, wall))
    })?;
    let syncs = (opened.syncs)();
    let cpu = measure::cpu_seconds() - cpu_before;
    drop(q);
    drop(opened);
    drop(rt);
    // Deleting the files first cancels dirty data never written back: what is left is
    // what reached the device.
    std::fs::remove_dir_all(&dir)?;
    let io = Io::now();
    accepts.sort_unstable();
    // The longest gaps between records accepted one after another, with when they ended.
    let mut gaps: Vec<(u64, u64)> = accepts.windows(2).map(|w| (w[1] - w[0], w[1])).collect();
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    let stall = gaps.first().map_or(0, |g| g.0);
    let worst: Vec<String> = gaps
        .iter()
        .take(3)
        .map(|(gap, at)| format!("{:.1}s:{:.0}ms", *at as f64 / 1e9, *gap as f64 / 1e6))
        .collect();
    let over_50ms = gaps.iter().filter(|g| g.0 > 50_000_000).count();
    let payload = total * args.store.size as u64;
    let secs = wall.as_secs_f64();
    println!(
        "result mode=steady store={:?} size={} events={total} producers={} batch={} consumed={consumed} \
         secs={secs:.2} eps={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.1} stall_ms={:.1} \
         stalls_over_50ms={over_50ms} worst={} rss_mib={} syncs={syncs} events_per_sync={:.1} wa={:.2} wa_gross={:.2} cpu_s={cpu:.2} cpu_us_per_event={:.1}",
        args.store.store,
        args.store.size,
        args.producers,
        args.batch,
        total as f64 / secs,
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.value_at_quantile(0.999) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
        stall as f64 / 1e6,
        worst.join(","),
        measure::peak_rss_kib() / 1024,
        total as f64 / syncs.max(1) as f64,
        io.net_since(&io_before) as f64 / payload as f64,
        (io.write_bytes - io_before.write_bytes) as f64 / payload as f64,
        cpu * 1e6 / total as f64,
    );
    anyhow::ensure!(consumed == total, "consumed {consumed} of {total}");
    Ok(())
}

/// The child of `recover`: pushes calls until it is killed.
pub fn fill(args: FillArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let opened = crate::open(&args.store, &args.path)?;
        let pool = Arc::new(measure::payloads(args.store.size, 1024));
        let accepted = Arc::new(AtomicU64::new(0));
        for p in 0..args.producers {
            let (q, pool, accepted) = (opened.queue.clone(), pool.clone(), accepted.clone());
            let batch = args.batch;
            tokio::spawn(async move {
                let mut at = (p as usize * 61) % pool.len();
                loop {
                    if let Err(e) = call(&*q, &pool, &mut at, batch).await {
                        eprintln!("fill: {e:#}");
                        return;
                    }
                    accepted.fetch_add(batch, Ordering::Relaxed);
                }
            });
        }
        let mut stdout = std::io::stdout();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writeln!(stdout, "accepted {}", accepted.load(Ordering::Relaxed))?;
            stdout.flush()?;
        }
    })
}

pub fn recover(args: RecoverArgs) -> anyhow::Result<()> {
    let dir = fresh_dir(&args.store)?;
    let target = args.fill_mib * 1024 * 1024 / args.store.size as u64;
    let fill_start = Instant::now();
    let accepted = fill_and_kill(&args, &dir, target)?;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let on_disk = measure::dir_bytes(&dir);
    if args.cold {
        measure::evict(&dir)?;
    }
    let rt = runtime()?;
    let (open, first, all, read) = rt.block_on(async {
        let t0 = Instant::now();
        let opened = crate::open(&args.store, &dir)?;
        let open = t0.elapsed();
        let q = opened.queue.clone();
        let (mut read, mut first, mut last, mut prev) = (0u64, None, t0, 0u64);
        let mut out = Vec::new();
        loop {
            out.clear();
            // Everything read: nothing more comes (the writer is idle).
            let wait = if read >= accepted {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(60)
            };
            match tokio::time::timeout(wait, q.pop(4096, &mut out)).await {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
            last = Instant::now();
            first.get_or_insert(last - t0);
            for e in &out {
                anyhow::ensure!(e.seq > prev, "record {} after {prev}", e.seq);
                prev = e.seq;
            }
            read += out.len() as u64;
            q.release(&out);
        }
        q.close();
        q.finish().await;
        anyhow::Ok((open, first.unwrap_or_default(), last - t0, read))
    })?;
    drop(rt);
    std::fs::remove_dir_all(&dir)?;
    println!(
        "result mode=recover store={:?} size={} cold={} accepted={accepted} read={read} lost={} \
         fill_secs={fill_secs:.1} fill_eps={:.0} on_disk_mib={:.0} open_ms={:.1} first_ms={:.1} all_ms={:.0} read_eps={:.0} rss_mib={}",
        args.store.store,
        args.store.size,
        args.cold,
        accepted.saturating_sub(read),
        accepted as f64 / fill_secs,
        on_disk as f64 / 1048576.0,
        open.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        all.as_secs_f64() * 1e3,
        read as f64 / all.as_secs_f64(),
        measure::peak_rss_kib() / 1024,
    );
    anyhow::ensure!(
        read >= accepted,
        "{} accepted records lost",
        accepted - read
    );
    Ok(())
}

/// Runs `fill` in a child until it reports `target` records accepted, then kills it
/// with SIGKILL (no clean shutdown). Returns the accepted count it had reported.
fn fill_and_kill(args: &RecoverArgs, dir: &Path, target: u64) -> anyhow::Result<u64> {
    let s = &args.store;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["fill", "--store"])
        .arg(
            s.store
                .to_possible_value()
                .context("store name")?
                .get_name(),
        )
        .args([
            "--size",
            &s.size.to_string(),
            "--segment-mib",
            &s.segment_mib.to_string(),
        ])
        .arg("--path")
        .arg(dir)
        .args([
            "--producers",
            &args.producers.to_string(),
            "--batch",
            &args.batch.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut accepted = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(n) = line.strip_prefix("accepted ").and_then(|n| n.parse().ok()) {
            accepted = n;
            if accepted >= target {
                break;
            }
        }
    }
    child.kill()?;
    let status = child.wait()?;
    anyhow::ensure!(
        accepted >= target,
        "the fill stopped at {accepted} records ({status})"
    );
    Ok(accepted)
}
