//! Senders: take events off the queue and group them into one batch per lane, flushed
//! when it holds `batch_size` events or its oldest event is `flush_interval` old. Each
//! flushed batch is delivered by its own task; `max_inflight_batches` bounds them, and a
//! sender that cannot start another delivery stops taking events (backpressure).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::queue::BoxFuture;
use super::{Event, EventQueue, Lane, Placement};

/// Where a flushed batch goes: the delivery driver in a peer, a collector in tests.
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, lane: Lane, events: Vec<Event>) -> BoxFuture<'_, ()>;
}

impl Deliver for super::delivery::Delivery {
    fn deliver(&self, lane: Lane, events: Vec<Event>) -> BoxFuture<'_, ()> {
        Box::pin(super::delivery::Delivery::deliver(self, lane, events))
    }
}

struct Pending {
    events: Vec<Event>,
    due: Instant,
}

pub struct Batcher {
    pub queue: Arc<dyn EventQueue>,
    pub delivery: Arc<dyn Deliver>,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// Permits for batches being delivered; all of them free means nothing in flight.
    pub inflight: Arc<Semaphore>,
    /// The shared ring: events with a routing key are batched per owning node.
    pub placement: Option<Arc<dyn Placement>>,
}

impl Batcher {
    /// Runs one sender until the queue is closed and empty; everything popped has been
    /// handed to a delivery task when this returns.
    pub async fn run(self: Arc<Self>) {
        // Few lanes are open at once (methods x tokens x owning nodes), and consecutive
        // events mostly share one: a scan comparing fields beats hashing every event.
        let mut lanes: Vec<(Lane, Pending)> = Vec::new();
        let mut popped = Vec::with_capacity(self.batch_size);
        loop {
            let due = lanes.iter().map(|(_, p)| p.due).min();
            let open = tokio::select! {
                biased;
                open = self.queue.pop(self.batch_size, &mut popped) => open,
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => true,
            };
            for event in popped.drain(..) {
                let target = event
                    .key
                    .as_ref()
                    .zip(self.placement.as_ref())
                    .and_then(|(k, p)| p.place(k));
                let i = match lanes.iter().position(|(l, _)| l.holds(&event, target)) {
                    Some(i) => i,
                    None => {
                        let pending = Pending {
                            events: Vec::with_capacity(self.batch_size.min(512)),
                            due: Instant::from_std(event.enqueued) + self.flush_interval,
                        };
                        lanes.push((event.lane(target), pending));
                        lanes.len() - 1
                    }
                };
                let pending = &mut lanes[i].1;
                pending.events.push(event);
                if pending.events.len() >= self.batch_size {
                    let (lane, full) = lanes.swap_remove(i);
                    self.flush(lane, full.events).await;
                }
            }
            let now = Instant::now();
            let mut i = 0;
            while i < lanes.len() {
                if !open || lanes[i].1.due <= now {
                    let (lane, pending) = lanes.swap_remove(i);
                    self.flush(lane, pending.events).await;
                } else {
                    i += 1;
                }
            }
            if !open {
                return;
            }
        }
    }

    async fn flush(&self, lane: Lane, events: Vec<Event>) {
        let permit = self
            .inflight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let delivery = self.delivery.clone();
        tokio::spawn(async move {
            delivery.deliver(lane, events).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::MemoryQueue;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    /// Records each batch with the (paused) time it was flushed.
    struct Collect(mpsc::UnboundedSender<(Instant, Lane, usize)>);

    impl Deliver for Collect {
        fn deliver(&self, lane: Lane, events: Vec<Event>) -> BoxFuture<'_, ()> {
            let _ = self.0.send((Instant::now(), lane, events.len()));
            Box::pin(async {})
        }
    }

    fn event(method: u16, auth: Option<&'static str>) -> Event {
        Event {
            method,
            auth: auth.map(|a| Bytes::from_static(a.as_bytes())),
            payload: Bytes::from_static(b"x"),
            enqueued: Instant::now().into_std(),
            key: None,
            seq: 0,
        }
    }

    fn start(
        queue: Arc<MemoryQueue>,
        batch_size: usize,
    ) -> mpsc::UnboundedReceiver<(Instant, Lane, usize)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let batcher = Arc::new(Batcher {
            queue,
            delivery: Arc::new(Collect(tx)),
            batch_size,
            flush_interval: Duration::from_millis(20),
            inflight: Arc::new(Semaphore::new(4)),
            placement: None,
        });
        tokio::spawn(batcher.run());
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_a_partial_one_after_the_interval() {
        let queue = Arc::new(MemoryQueue::new(1000, 1 << 20));
        let mut batches = start(queue.clone(), 3);
        let t0 = Instant::now();
        for _ in 0..4 {
            queue.push(event(0, None)).await.unwrap();
        }
        let (at, _, n) = batches.recv().await.unwrap();
        assert_eq!(
            (n, at - t0),
            (3, Duration::ZERO),
            "full batch flushed without waiting"
        );
        let (at, _, n) = batches.recv().await.unwrap();
        assert_eq!(
            (n, at - t0),
            (1, Duration::from_millis(20)),
            "partial batch flushed at the interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lanes_never_mix_paths_or_tokens() {
        let queue = Arc::new(MemoryQueue::new(1000, 1 << 20));
        let mut batches = start(queue.clone(), 100);
        for e in [
            event(0, Some("a")),
            event(0, Some("b")),
            event(1, Some("a")),
            event(0, Some("a")),
        ] {
            queue.push(e).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            let (_, lane, n) = batches.recv().await.unwrap();
            got.push((lane.method, lane.auth, n));
        }
        got.sort();
        let a = Some(Bytes::from_static(b"a"));
        assert_eq!(
            got,
            [
                (0, a.clone(), 2),
                (0, Some(Bytes::from_static(b"b")), 1),
                (1, a, 1)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_queue_flushes_what_is_pending() {
        let queue = Arc::new(MemoryQueue::new(1000, 1 << 20));
        let mut batches = start(queue.clone(), 100);
        queue.push(event(0, None)).await.unwrap();
        tokio::task::yield_now().await;
        queue.close();
        let (_, _, n) = batches.recv().await.unwrap();
        assert_eq!(n, 1);
    }
}
