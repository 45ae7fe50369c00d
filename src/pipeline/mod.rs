//! Pipeline: the asynchronous path. The front door pushes one event per agent message
//! onto a bounded queue (and answers the agent only after that); senders take events off,
//! group them into batches per lane, and the delivery driver gets each batch acknowledged
//! by an OAP, retrying on other nodes, before the queue's room is given back.
//!
//! - `queue`: the `EventQueue` trait and the in-memory queue.
//! - `disk`: the disk queue (`pipeline.queue: disk`), which survives a crash.
//! - `leftover`: a disk queue's records found by a memory-queue peer, delivered first.
//! - `batcher`: sender tasks forming batches by size or age.
//! - `delivery`: the one retry/acknowledgement driver every batch goes through.

pub mod batcher;
pub mod delivery;
pub mod disk;
pub mod leftover;
pub mod queue;

use std::net::SocketAddr;
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
    /// For fixed routing: the call's routing key (`satmesh_cluster::route_key` of its
    /// first message's service and instance); None otherwise.
    pub key: Option<Bytes>,
    /// The disk queue's number for it (acknowledged by number); 0 until then, and in the
    /// memory queue.
    pub seq: u64,
}

/// Events that may share one upstream call: same path, same token, and for fixed
/// routing the same OAP node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lane {
    pub method: MethodId,
    pub auth: Option<Bytes>,
    /// The node a fixed-routed batch must reach; None for round-robin and weighted.
    pub target: Option<SocketAddr>,
}

impl Lane {
    /// Whether `event`, owned by `target`, belongs to this lane.
    pub fn holds(&self, event: &Event, target: Option<SocketAddr>) -> bool {
        self.method == event.method && self.target == target && self.auth == event.auth
    }
}

impl Event {
    pub fn lane(&self, target: Option<SocketAddr>) -> Lane {
        Lane {
            method: self.method,
            auth: self.auth.clone(),
            target,
        }
    }
}

/// Where a routing key goes: the shared ring in a peer.
pub trait Placement: Send + Sync + 'static {
    /// The OAP node that owns `key` now; None while no node is placed (empty ring).
    fn place(&self, key: &[u8]) -> Option<SocketAddr>;
}

/// The routing key of a call from its first message, when the message carries one.
pub fn key_of(payload: crate::protocol::Payload, message: &[u8]) -> Option<Bytes> {
    let (fields, collection) = payload.key_fields()?;
    let key = if collection {
        satmesh_proto::peek_first_key(message, fields).ok()??
    } else {
        satmesh_proto::peek_key(message, fields).ok()?
    };
    Some(satmesh_cluster::route_key(key.service, key.instance).into())
}

pub use disk::{DiskQueue, DiskSettings, Fsync};
pub use queue::{EventQueue, MemoryQueue, QueueClosed};
