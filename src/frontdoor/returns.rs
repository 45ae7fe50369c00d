//! Clients that come back. A shed client that reconnects to the same peer did not move:
//! it dials one address (a Rust agent on a single endpoint, a pinned DNS answer), or it
//! cannot be helped by this peer turning it away. Shedding it again would only churn, so
//! such a connection is marked `returned` and the shedder leaves it alone for its life.
//!
//! A client is known by its agent identity (a hash of the service and instance of the
//! first message that carries them; see `ConnInfo::identify`), not by its address: many
//! agents share an address behind NAT or on one host, and one agent's source port changes
//! on every connection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Instant;

/// At most this many shed identities are remembered (older ones are forgotten first).
const MAX_REMEMBERED: usize = 100_000;

/// Identities this peer shed recently, and how many came back.
#[derive(Debug)]
pub struct Returns {
    /// A client seen again within this long after its shed counts as returned.
    window: Duration,
    shed: Mutex<HashMap<u64, Instant>>,
    returned: AtomicU64,
    metric: Option<IntCounter>,
}

impl Returns {
    pub fn new(window: Duration, metric: Option<IntCounter>) -> Returns {
        Returns {
            window,
            shed: Mutex::new(HashMap::new()),
            returned: AtomicU64::new(0),
            metric,
        }
    }

    fn shed_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.shed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers that the client `identity` was shed now.
    pub fn shed(&self, identity: u64) {
        let now = Instant::now();
        let mut shed = self.shed_map();
        if shed.len() >= MAX_REMEMBERED {
            shed.retain(|_, at| now.saturating_duration_since(*at) <= self.window);
        }
        if shed.len() >= MAX_REMEMBERED {
            // Still full of recent sheds: forget the oldest.
            if let Some(oldest) = shed.iter().min_by_key(|(_, at)| **at).map(|(id, _)| *id) {
                shed.remove(&oldest);
            }
        }
        shed.insert(identity, now);
    }

    /// A connection made itself known as `identity`: true (and counted) when this peer
    /// shed that client within the window.
    pub fn arrived(&self, identity: u64) -> bool {
        let Some(at) = self.shed_map().remove(&identity) else {
            return false;
        };
        if Instant::now().saturating_duration_since(at) > self.window {
            return false;
        }
        self.returned.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metric {
            m.inc();
        }
        true
    }

    /// Clients that came back since start.
    pub fn returned(&self) -> u64 {
        self.returned.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_shed_and_seen_again_within_the_window_returned() {
        let r = Returns::new(Duration::from_secs(60), None);
        r.shed(7);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(r.arrived(7));
        assert!(!r.arrived(7), "counted once per shed");
        assert!(!r.arrived(8), "never shed");
        assert_eq!(r.returned(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_seen_after_the_window_did_not_return() {
        let r = Returns::new(Duration::from_secs(60), None);
        r.shed(7);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(!r.arrived(7));
        assert_eq!(r.returned(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_forgets_the_oldest() {
        let r = Returns::new(Duration::from_secs(3600), None);
        for id in 0..MAX_REMEMBERED as u64 {
            r.shed(id);
            if id == 0 {
                tokio::time::advance(Duration::from_millis(1)).await;
            }
        }
        r.shed(u64::MAX);
        assert_eq!(r.shed_map().len(), MAX_REMEMBERED);
        assert!(!r.arrived(0), "the oldest was forgotten");
        assert!(r.arrived(u64::MAX));
    }
}
