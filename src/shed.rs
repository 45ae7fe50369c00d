//! Cluster-aware shedding. Every `interval` (jittered, so peers do not act in lockstep)
//! the peer asks the pure decision (`satmesh_cluster::balance`) whether it holds more
//! than its share of the tier's connections; if so it drains that many, idle and old
//! ones first, with a graceful GOAWAY (the front door's lifecycle ends their open streams
//! between messages, so nothing is lost). While above its share it also turns new
//! connections away, so clients that re-dial land on another peer.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use satmesh_cluster::ClusterView;
use satmesh_cluster::balance::{self, Balance, BalanceSettings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::frontdoor::Connections;
use crate::frontdoor::admission::{Admission, Admit, Arrival, TurnAway};
use crate::frontdoor::lifecycle::DrainReason;
use crate::frontdoor::registry::ConnSnapshot;

/// Turns connections away while this peer is above its share of the tier.
pub struct OverShare {
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub settings: BalanceSettings,
}

impl Admission for OverShare {
    fn admit(&self, arrival: &Arrival) -> Admit {
        if balance::admits(&self.view.borrow(), arrival.serving as u64, &self.settings) {
            Admit::Serve
        } else {
            Admit::TurnAway(TurnAway::OverShare)
        }
    }
}

/// Which connections to shed first: serving ones only; idle before busy, then the
/// longest idle, then the oldest.
pub fn pick(mut conns: Vec<ConnSnapshot>, n: usize) -> Vec<ConnSnapshot> {
    conns.retain(ConnSnapshot::is_serving);
    conns.sort_by_key(|c| (c.open_streams > 0, c.last_activity, c.opened_at));
    conns.truncate(n);
    conns
}

/// Runs the shedding loop until `stop`; `last` holds the latest decision (for status).
pub async fn run(
    connections: Connections,
    view: watch::Receiver<Arc<ClusterView>>,
    settings: BalanceSettings,
    interval: Duration,
    last: watch::Sender<Balance>,
    stop: CancellationToken,
) {
    loop {
        let wait = interval.mul_f64(rand::rng().random_range(0.8..1.2));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let decision = balance::decide(&view.borrow(), connections.serving() as u64, &settings);
        if decision.shed > 0 {
            let chosen = pick(connections.snapshot(), decision.shed);
            let drained = chosen
                .iter()
                .filter(|c| connections.drain_one(c.id, DrainReason::Shed))
                .count();
            info!(
                shed = drained,
                serving = connections.serving(),
                mean = decision.mean.unwrap_or_default(),
                "above the tier's share, shedding connections"
            );
        }
        last.send_replace(decision);
    }
}
