//! A disk queue's records found while `pipeline.queue` is `memory`: never ignored. The
//! peer opens the directory, delivers what is there first (logged), and queues new
//! messages in memory meanwhile; once all of it is acknowledged the directory holds no
//! segment. [`Leftover`] is the memory queue with the old disk queue in front of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::info;

use super::disk::DiskStats;
use super::queue::{BoxFuture, Depth, EventQueue, QueueClosed};
use super::{DiskQueue, Event, MemoryQueue};

pub struct Leftover {
    /// Closed at once: it only gives back what it holds.
    disk: DiskQueue,
    memory: MemoryQueue,
    /// The disk queue has handed out everything.
    disk_done: AtomicBool,
}

impl Leftover {
    pub fn new(disk: DiskQueue, memory: MemoryQueue) -> Leftover {
        disk.close();
        Leftover {
            disk,
            memory,
            disk_done: AtomicBool::new(false),
        }
    }
}

impl EventQueue for Leftover {
    fn push(&self, event: Event) -> BoxFuture<'_, Result<u64, QueueClosed>> {
        self.memory.push(event)
    }

    fn try_push(&self, event: Event) -> Result<u64, Event> {
        self.memory.try_push(event)
    }

    fn pop<'a>(&'a self, max: usize, out: &'a mut Vec<Event>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if !self.disk_done.load(Ordering::Relaxed) {
                let mut old = Vec::new();
                tokio::select! {
                    more = self.disk.pop(max, &mut old) => {
                        if more {
                            out.extend(old);
                            return true;
                        }
                        info!("records left by the disk queue all handed out");
                        self.disk_done.store(true, Ordering::Relaxed);
                    }
                    more = self.memory.pop(max, out) => {
                        if more {
                            return true;
                        }
                    }
                }
            }
            self.memory.pop(max, out).await
        })
    }

    fn try_pop(&self, max: usize, out: &mut Vec<Event>) {
        let before = out.len();
        self.disk.try_pop(max, out);
        let got = out.len() - before;
        self.memory.try_pop(max - got, out);
    }

    fn release(&self, events: &[Event]) {
        // Records from disk carry their number; memory events have none.
        let (old, new): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| e.seq > 0);
        self.disk.release(&old);
        self.memory.release(&new);
    }

    fn abandon(&self, events: &[Event]) -> bool {
        let (old, new): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| e.seq > 0);
        self.disk.abandon(&old);
        self.memory.abandon(&new);
        // The memory part is lost: the caller counts all of them, which errs towards
        // reporting a loss.
        new.is_empty()
    }

    fn close(&self) {
        self.memory.close();
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        self.disk.finish()
    }

    fn depth(&self) -> Depth {
        let (d, m) = (self.disk.depth(), self.memory.depth());
        Depth {
            events: d.events + m.events,
            bytes: m.bytes,
            ..m
        }
    }

    fn disk(&self) -> Option<Arc<DiskStats>> {
        Some(self.disk.stats())
    }
}
