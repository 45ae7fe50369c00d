//! The queue between the front door and the senders.
//!
//! `EventQueue` is the seam between the front door and the store (this in-memory queue,
//! or the disk queue of `disk`): the pipeline only pushes, pops and releases. Room is taken on push and given back on `release`, after
//! the OAP acknowledged (or the event was counted as dropped), so events in flight count
//! against the bound and memory stays bounded while an OAP is down.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::Semaphore;

use super::Event;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
#[error("the queue is closed")]
pub struct QueueClosed;

/// Events and bytes held (queued or in flight).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub events: usize,
    pub bytes: usize,
    pub capacity_events: usize,
    pub capacity_bytes: usize,
}

// `try_push` gives a whole event back when there is no room, so the caller's `push`
// waits with it: no copy, no allocation on the usual path.
#[allow(clippy::result_large_err)]
pub trait EventQueue: Send + Sync + 'static {
    /// Waits for room, then takes the event; returns its number in the queue (0 when the
    /// queue does not number events). The agent may be told OK once [`settle`] says so.
    ///
    /// [`settle`]: EventQueue::settle
    fn push(&self, event: Event) -> BoxFuture<'_, Result<u64, QueueClosed>>;

    /// Takes the event if there is room now, without waiting or allocating; gives it
    /// back otherwise (then `push` waits for room).
    fn try_push(&self, event: Event) -> Result<u64, Event>;

    /// None when every event pushed up to number `upto` is the queue's responsibility
    /// already (the memory queue: at once); otherwise a future that resolves once it is
    /// (the disk queue: written, or synced with `fsync: always`). Called once per call
    /// before the agent is answered, with the number of its last pushed event.
    fn settle(&self, upto: u64) -> Option<BoxFuture<'_, Result<(), QueueClosed>>> {
        let _ = upto;
        None
    }

    /// Waits for at least one event, then moves up to `max` into `out` without waiting.
    /// Returns false once the queue is closed and empty.
    fn pop<'a>(&'a self, max: usize, out: &'a mut Vec<Event>) -> BoxFuture<'a, bool>;

    /// Moves up to `max` events into `out` if any are there, without waiting.
    fn try_pop(&self, max: usize, out: &mut Vec<Event>);

    /// These events left the pipeline (acknowledged, or dropped as rejected): give their
    /// room back; a durable queue forgets them.
    fn release(&self, events: &[Event]);

    /// These events are given up at the shutdown deadline, not delivered. Returns true
    /// when the queue keeps them for the next start (the disk queue), false when they are
    /// lost (the memory queue: counted as dropped by the caller).
    fn abandon(&self, events: &[Event]) -> bool {
        self.release(events);
        false
    }

    /// No more pushes; pops drain what is left.
    fn close(&self);

    /// Ends the queue's own work (the disk queue: syncs and stops its writer and reader);
    /// called once, last, at shutdown.
    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn depth(&self) -> Depth;

    /// The disk queue's figures, for `/metrics`.
    fn disk(&self) -> Option<std::sync::Arc<super::disk::DiskStats>> {
        None
    }
}

/// `EventQueue::pop` over the channel a queue hands its events out on: waits for one,
/// then takes up to `max` in all without waiting; false once it is closed and empty.
pub(super) async fn pop_channel(
    rx: &async_channel::Receiver<Event>,
    max: usize,
    out: &mut Vec<Event>,
) -> bool {
    match rx.recv().await {
        Ok(first) => {
            out.push(first);
            try_pop_channel(rx, max.saturating_sub(1), out);
            true
        }
        Err(_) => false,
    }
}

/// `EventQueue::try_pop` over such a channel.
pub(super) fn try_pop_channel(
    rx: &async_channel::Receiver<Event>,
    max: usize,
    out: &mut Vec<Event>,
) {
    for _ in 0..max {
        match rx.try_recv() {
            Ok(event) => out.push(event),
            Err(_) => break,
        }
    }
}

/// A bounded in-memory queue: FIFO, many producers, many consumers.
pub struct MemoryQueue {
    tx: async_channel::Sender<Event>,
    rx: async_channel::Receiver<Event>,
    /// Room in events; pushers wait here in FIFO order when the queue is full.
    events: Semaphore,
    /// Room in payload bytes.
    bytes: Semaphore,
    capacity_events: usize,
    capacity_bytes: usize,
}

impl MemoryQueue {
    pub fn new(capacity_events: usize, capacity_bytes: usize) -> MemoryQueue {
        let (tx, rx) = async_channel::unbounded();
        MemoryQueue {
            tx,
            rx,
            events: Semaphore::new(capacity_events),
            bytes: Semaphore::new(capacity_bytes),
            capacity_events,
            capacity_bytes,
        }
    }

    /// Bytes of room an event takes; one larger than the whole queue takes all of it.
    fn cost(&self, event: &Event) -> u32 {
        event
            .payload
            .len()
            .min(self.capacity_bytes)
            .min(u32::MAX as usize) as u32
    }
}

impl EventQueue for MemoryQueue {
    fn push(&self, event: Event) -> BoxFuture<'_, Result<u64, QueueClosed>> {
        Box::pin(async move {
            let cost = self.cost(&event);
            // The permits are guards until the event is in: a push dropped while it waits
            // for room (its agent went away) gives back what it had taken.
            let events = self.events.acquire().await.map_err(|_| QueueClosed)?;
            let bytes = self
                .bytes
                .acquire_many(cost)
                .await
                .map_err(|_| QueueClosed)?;
            self.tx.try_send(event).map_err(|_| QueueClosed)?;
            events.forget();
            bytes.forget();
            Ok(0)
        })
    }

    fn try_push(&self, event: Event) -> Result<u64, Event> {
        // Permits are only free when nobody waits for them (a release serves waiters
        // first), so this never overtakes a waiting push.
        let Ok(events) = self.events.try_acquire() else {
            return Err(event);
        };
        let Ok(bytes) = self.bytes.try_acquire_many(self.cost(&event)) else {
            return Err(event);
        };
        self.tx.try_send(event).map_err(|e| e.into_inner())?;
        events.forget();
        bytes.forget();
        Ok(0)
    }

    fn pop<'a>(&'a self, max: usize, out: &'a mut Vec<Event>) -> BoxFuture<'a, bool> {
        Box::pin(pop_channel(&self.rx, max, out))
    }

    fn try_pop(&self, max: usize, out: &mut Vec<Event>) {
        try_pop_channel(&self.rx, max, out);
    }

    fn release(&self, events: &[Event]) {
        let bytes: usize = events.iter().map(|e| self.cost(e) as usize).sum();
        self.events.add_permits(events.len());
        self.bytes.add_permits(bytes);
    }

    fn close(&self) {
        self.events.close();
        self.bytes.close();
        self.tx.close();
    }

    fn depth(&self) -> Depth {
        Depth {
            events: self
                .capacity_events
                .saturating_sub(self.events.available_permits()),
            bytes: self
                .capacity_bytes
                .saturating_sub(self.bytes.available_permits()),
            capacity_events: self.capacity_events,
            capacity_bytes: self.capacity_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    fn event(len: usize) -> Event {
        Event {
            method: 0,
            auth: None,
            payload: Bytes::from(vec![0; len]),
            enqueued: Instant::now(),
            key: None,
            seq: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn try_push_takes_room_only_when_there_is_some() {
        let q = MemoryQueue::new(2, 100);
        assert!(q.try_push(event(60)).is_ok());
        let back = q.try_push(event(60)).expect_err("not enough bytes");
        assert_eq!(back.payload.len(), 60, "the event is given back");
        assert_eq!(q.depth().events, 1, "a failed try takes no room");
        assert!(q.try_push(event(40)).is_ok());
        assert!(q.try_push(event(0)).is_err(), "no event slot");
        let mut out = Vec::new();
        assert!(q.pop(10, &mut out).await);
        assert_eq!(out.len(), 2);
        q.release(&out);
        assert!(q.try_push(event(100)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_push_given_up_while_waiting_for_bytes_keeps_no_room() {
        let q = MemoryQueue::new(3, 100);
        q.push(event(100)).await.unwrap();
        // An event slot is free but the bytes are not: the push waits, then its agent
        // goes away and the push is dropped.
        let gave_up = tokio::time::timeout(Duration::from_secs(1), q.push(event(10))).await;
        assert!(gave_up.is_err(), "waits for bytes");
        let mut out = Vec::new();
        assert!(q.pop(10, &mut out).await);
        q.release(&out);
        assert_eq!(q.depth().events, 0);
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(1), q.push(event(10)))
                .await
                .expect("all three event slots are free again")
                .unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_waits_until_release() {
        let q = MemoryQueue::new(2, 1000);
        q.push(event(1)).await.unwrap();
        q.push(event(1)).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_secs(1), q.push(event(1))).await;
        assert!(blocked.is_err(), "third push must wait for room");
        let mut out = Vec::new();
        assert!(q.pop(10, &mut out).await);
        assert_eq!(out.len(), 2);
        // Popping alone frees nothing: the events are still in flight.
        assert_eq!(q.depth().events, 2);
        q.release(&out[..1]);
        q.push(event(1)).await.unwrap();
        assert_eq!(q.depth().events, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_bound_applies_and_oversize_takes_everything() {
        let q = MemoryQueue::new(100, 10);
        q.push(event(8)).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_secs(1), q.push(event(5))).await;
        assert!(blocked.is_err());
        let mut out = Vec::new();
        q.pop(10, &mut out).await;
        q.release(&out);
        q.push(event(50)).await.unwrap();
        assert_eq!(q.depth().bytes, 10);
    }

    #[tokio::test]
    async fn close_drains_then_ends() {
        let q = MemoryQueue::new(10, 100);
        q.push(event(1)).await.unwrap();
        q.close();
        assert!(q.push(event(1)).await.is_err());
        let mut out = Vec::new();
        assert!(q.pop(10, &mut out).await);
        assert_eq!(out.len(), 1);
        assert!(!q.pop(10, &mut out).await);
    }
}
