//! Pipeline: the asynchronous path. The front door pushes one event per agent message
//! onto a bounded queue (and answers the agent only after that); senders take events off,
//! group them into batches per lane, and the delivery driver gets each batch acknowledged
//! by an OAP, retrying on other nodes, before the queue's room is given back.
//!
//! - `queue`: the `EventQueue` trait and the in-memory queue.
//! - `batcher`: sender tasks forming batches by size or age.
//! - `delivery`: the one retry/acknowledgement driver every batch goes through.

pub mod batcher;
pub mod delivery;
pub mod queue;

use std::time::Instant;

use bytes::Bytes;

use crate::protocol::MethodId;

/// One agent message on its way to an OAP.
#[derive(Clone, Debug)]
pub struct Event {
    pub method: MethodId,
    /// The agent's `authentication` value, when batches carry agents' own tokens.
    pub auth: Option<Bytes>,
    /// The message exactly as the agent sent it.
    pub payload: Bytes,
    pub enqueued: Instant,
}

/// Events that may share one upstream call: same path, same token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lane {
    pub method: MethodId,
    pub auth: Option<Bytes>,
}

impl Event {
    pub fn lane(&self) -> Lane {
        Lane {
            method: self.method,
            auth: self.auth.clone(),
        }
    }
}

pub use queue::{EventQueue, MemoryQueue, QueueClosed};
