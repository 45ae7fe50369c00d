//! disk-ab: the disk queue's storage A/B (docs/disk-queue-storage.md).
//!
//! The same workload runs on satmesh's segment log (`DiskQueue`, `fsync: always`) and on
//! a queue built the same way on an embedded store (fjall 3, redb 5). Every store is
//! used through satmesh's own `EventQueue` trait, so the producers, the consumer and
//! the measurements are one code path.
//!
//! # Layout
//! - `embedded.rs`: the queue around an embedded store (writer thread with group commit,
//!   in-order reader of durable records), behind two small traits.
//! - `fjall_store.rs`, `redb_store.rs`: those traits on each store.
//! - `run.rs`: the workloads: steady load, and fill, kill, reopen.
//! - `measure.rs`: bytes written (`/proc/self/io`), CPU time, page-cache eviction.

mod embedded;
mod fjall_store;
mod measure;
mod redb_store;
mod run;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Args, Parser, Subcommand, ValueEnum};
use satmesh::pipeline::{DiskQueue, DiskSettings, EventQueue, Fsync};

#[derive(Parser)]
#[command(about = "The disk queue's storage A/B: satmesh's segment log against fjall and redb")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Producers push records and wait until each is durable; a consumer reads them in
    /// order and acknowledges them. Prints one `result` line.
    Steady(run::SteadyArgs),
    /// Fills a store in a child process, kills it (SIGKILL), then times the reopen, the
    /// first record read and the whole backlog read. Prints one `result` line.
    Recover(run::RecoverArgs),
    /// (Used by `recover`.) Pushes until killed, printing `accepted N` as it goes.
    #[command(hide = true)]
    Fill(run::FillArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Store {
    /// satmesh's segment log (`pipeline.disk`, `fsync: always`).
    Segment,
    /// fjall 3, one keyspace per segment, dropped whole once acknowledged.
    Fjall,
    /// fjall 3, one keyspace, a removal (tombstone) per acknowledged record.
    FjallKeys,
    /// redb 5, one table, acknowledged ranges removed; default (1-phase) commits.
    Redb,
    /// redb 5 with quick repair (2-phase commits, allocator state saved at each commit).
    RedbQuick,
}

#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    #[arg(long, value_enum)]
    pub store: Store,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    /// The directory to work in (a fresh subdirectory is made and removed); on the
    /// disk under test, not a tmpfs.
    #[arg(long, default_value = "disk-ab-data")]
    pub dir: PathBuf,
    /// Segment size (satmesh's `pipeline.disk.segment_bytes`; fjall: records per
    /// keyspace = this / size).
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
}

/// A store opened as a queue, with its count of syncs (segment: fsync/fdatasync calls it
/// made; embedded: durable commits).
pub struct Opened {
    pub queue: Arc<dyn EventQueue>,
    pub syncs: Box<dyn Fn() -> u64 + Send + Sync>,
}

pub fn open(args: &StoreArgs, dir: &std::path::Path) -> anyhow::Result<Opened> {
    let segment_bytes = args.segment_mib * 1024 * 1024;
    let embedded = |log: embedded::Log| {
        let commits = log.commits.clone();
        Opened {
            queue: Arc::new(log),
            syncs: Box::new(move || commits.load(Ordering::Relaxed)),
        }
    };
    Ok(match args.store {
        Store::Segment => {
            let queue = DiskQueue::open(DiskSettings {
                dir: dir.to_owned(),
                max_bytes: 16 * 1024 * 1024 * 1024,
                segment_bytes,
                fsync: Fsync::Always,
                // satmesh's defaults (pipeline.queue_events, pipeline.queue_bytes).
                window_events: 100_000,
                window_bytes: 512 * 1024 * 1024,
            })?;
            let stats = queue.stats();
            Opened {
                queue: Arc::new(queue),
                syncs: Box::new(move || stats.fsyncs.load(Ordering::Relaxed)),
            }
        }
        Store::Fjall => {
            let per_segment = (segment_bytes / args.size.max(1) as u64).max(1);
            let layout = fjall_store::Layout::Segments {
                per_segment,
                memtable_bytes: 2 * segment_bytes,
            };
            embedded(embedded::Log::start(fjall_store::open(dir, layout)?))
        }
        Store::FjallKeys => embedded(embedded::Log::start(fjall_store::open(
            dir,
            fjall_store::Layout::Keys,
        )?)),
        Store::Redb => embedded(embedded::Log::start(redb_store::open(dir, false)?)),
        Store::RedbQuick => embedded(embedded::Log::start(redb_store::open(dir, true)?)),
    })
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Steady(args) => run::steady(args),
        Cmd::Recover(args) => run::recover(args),
        Cmd::Fill(args) => run::fill(args),
    }
}
