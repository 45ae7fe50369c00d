//! The asynchronous pipeline (`pipeline`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The asynchronous pipeline: queue, batching, senders.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    /// Where queued messages are kept: `memory` (lost if the process dies) or `disk`
    /// (`pipeline.disk`: what an agent was told OK about survives a crash).
    pub queue: QueueKind,
    /// Events (messages) the queue holds, in flight included; a full queue stops reading
    /// agents' streams (HTTP/2 flow control) instead of dropping. With the disk queue:
    /// events read back from disk and not yet acknowledged (its memory window).
    pub queue_events: usize,
    /// Payload bytes the queue holds, in flight included (disk queue: of its window).
    pub queue_bytes: usize,
    /// A batch is sent when it holds this many events...
    pub batch_size: usize,
    /// ...or when its oldest event has waited this long.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Tasks that take events off the queue and form batches.
    pub senders: usize,
    /// Batches being delivered at once, across all OAP nodes.
    pub max_inflight_batches: usize,
    /// Times an OAP may reject a batch with a non-transient status (e.g. INVALID_ARGUMENT)
    /// before it is dropped and counted; transient failures are retried without limit.
    pub max_rejections: u32,
    /// The disk queue (`queue: disk`).
    pub disk: Disk,
}

/// `pipeline.queue`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    #[default]
    Memory,
    Disk,
}

/// `pipeline.disk.fsync`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    /// An agent is told OK only once a write holding its messages is durable
    /// (fdatasync); agents whose messages arrive together share one sync.
    #[default]
    Always,
    /// OK once written (a killed process loses nothing, the page cache survives it),
    /// synced every `fsync_interval` (a host crash may lose up to that interval).
    Interval,
}

/// `pipeline.disk`: the disk queue.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Disk {
    /// The queue's directory (created if missing). One satmesh owns it at a time: a
    /// second one on the same path exits 2. Also read when `queue` is `memory`: records
    /// left there by a disk-queue run are delivered first.
    pub path: PathBuf,
    /// The bound on the queue's files; at it, agents are slowed (as by a full memory
    /// queue), nothing is dropped.
    pub max_bytes: u64,
    /// Segment file size: a segment is deleted once all its records are acknowledged
    /// (at most a quarter of `max_bytes` is used).
    pub segment_bytes: u64,
    pub fsync: FsyncMode,
    /// With `fsync: interval`, how often written records are synced; in both modes, how
    /// often acknowledgements are.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
}

impl Default for Disk {
    fn default() -> Self {
        Disk {
            path: PathBuf::from("/var/lib/satmesh/queue"),
            max_bytes: 4 * 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            fsync: FsyncMode::Always,
            fsync_interval: Duration::from_millis(100),
        }
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            queue: QueueKind::Memory,
            queue_events: 100_000,
            queue_bytes: 512 * 1024 * 1024,
            batch_size: 500,
            flush_interval: Duration::from_millis(20),
            senders: 2,
            max_inflight_batches: 64,
            max_rejections: 3,
            disk: Disk::default(),
        }
    }
}

impl Pipeline {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("pipeline.queue_events", self.queue_events),
            ("pipeline.queue_bytes", self.queue_bytes),
            ("pipeline.batch_size", self.batch_size),
            ("pipeline.senders", self.senders),
            ("pipeline.max_inflight_batches", self.max_inflight_batches),
            ("pipeline.max_rejections", self.max_rejections as usize),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.flush_interval.is_zero() {
            return Err(invalid("pipeline.flush_interval", "must be more than 0"));
        }
        let disk = &self.disk;
        if disk.path.as_os_str().is_empty() {
            return Err(invalid("pipeline.disk.path", "must name a directory"));
        }
        if disk.max_bytes < 1024 * 1024 {
            return Err(invalid(
                "pipeline.disk.max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        if disk.segment_bytes < 64 * 1024 {
            return Err(invalid(
                "pipeline.disk.segment_bytes",
                "must be at least 64 KiB (65536)",
            ));
        }
        if disk.fsync_interval.is_zero() {
            return Err(invalid(
                "pipeline.disk.fsync_interval",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}
