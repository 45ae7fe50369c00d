//! The asynchronous pipeline (`pipeline`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// The asynchronous pipeline: queue, batching, senders.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    /// Events (messages) the queue holds, in flight included; a full queue stops reading
    /// agents' streams (HTTP/2 flow control) instead of dropping.
    pub queue_events: usize,
    /// Payload bytes the queue holds, in flight included.
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
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            queue_events: 100_000,
            queue_bytes: 512 * 1024 * 1024,
            batch_size: 500,
            flush_interval: Duration::from_millis(20),
            senders: 2,
            max_inflight_batches: 64,
            max_rejections: 3,
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
        Ok(())
    }
}
