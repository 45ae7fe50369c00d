//! Senders: take events off the queue and group them into one batch per lane, flushed
//! when it holds `batch_size` events or its oldest event is `flush_interval` old. Each
//! flushed batch is delivered by its own task; `max_inflight_batches` bounds them, and a
//! sender that cannot start another delivery stops taking events (backpressure).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::delivery::Delivery;
use super::{Event, EventQueue, Lane};

struct Pending {
    events: Vec<Event>,
    due: Instant,
}

pub struct Batcher {
    pub queue: Arc<dyn EventQueue>,
    pub delivery: Arc<Delivery>,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// Permits for batches being delivered; all of them free means nothing in flight.
    pub inflight: Arc<Semaphore>,
}

impl Batcher {
    /// Runs one sender until the queue is closed and empty; everything popped has been
    /// handed to a delivery task when this returns.
    pub async fn run(self: Arc<Self>) {
        let mut lanes: HashMap<Lane, Pending> = HashMap::new();
        let mut popped = Vec::with_capacity(self.batch_size);
        loop {
            let due = lanes.values().map(|p| p.due).min();
            let open = tokio::select! {
                biased;
                open = self.queue.pop(self.batch_size, &mut popped) => open,
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => true,
            };
            for event in popped.drain(..) {
                let lane = event.lane();
                let pending = lanes.entry(lane.clone()).or_insert_with(|| Pending {
                    events: Vec::new(),
                    due: Instant::from_std(event.enqueued) + self.flush_interval,
                });
                pending.events.push(event);
                if pending.events.len() >= self.batch_size {
                    let full = lanes.remove(&lane).expect("just inserted");
                    self.flush(lane, full.events).await;
                }
            }
            let now = Instant::now();
            let expired: Vec<Lane> = lanes
                .iter()
                .filter(|(_, p)| !open || p.due <= now)
                .map(|(lane, _)| lane.clone())
                .collect();
            for lane in expired {
                let pending = lanes.remove(&lane).expect("listed above");
                self.flush(lane, pending.events).await;
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
