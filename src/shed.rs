//! Cluster-aware shedding. Every `interval` (jittered, so peers do not act in lockstep)
//! the peer asks the pure decision (`satmesh_cluster::balance`) whether it holds more
//! than its share of the tier's connections; if so it drains that many, idle and old
//! ones first, with a graceful GOAWAY (the front door's lifecycle ends their open streams
//! between messages, so nothing is lost). While above its share it also turns new
//! connections away, so clients that re-dial land on another peer. Its latest decision
//! and its last few shed rounds ([`ShedHistory`]) are what `/status` shows of it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use satmesh_cluster::balance::{self, BalanceSettings, ShedDecision};
use satmesh_cluster::{BalanceAction, ClusterView};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config;
use crate::frontdoor::Connections;
use crate::frontdoor::admission::{Admission, Admit, Arrival, TurnAway};
use crate::frontdoor::lifecycle::DrainReason;
use crate::frontdoor::registry::ConnSnapshot;

/// The decision's settings from `balance` (the rest keep the decision's defaults).
pub fn settings(balance: &config::Balance) -> BalanceSettings {
    BalanceSettings {
        tolerance: balance.tolerance,
        below: balance.below,
        step: balance.step,
        max_per_interval: balance.max_per_interval,
        max_staleness: balance.max_staleness,
        ..Default::default()
    }
}

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

/// Which connections to shed first: serving ones only, never one whose agent came back
/// after an earlier shed (it cannot move); idle before busy, then the longest idle, then
/// the oldest.
pub fn pick(mut conns: Vec<ConnSnapshot>, n: usize) -> Vec<ConnSnapshot> {
    conns.retain(|c| c.is_serving() && !c.held);
    conns.sort_by_key(|c| (c.open_streams > 0, c.last_activity, c.opened_at));
    conns.truncate(n);
    conns
}

/// What this peer publishes as its shedder's action, given its latest decision (None:
/// shedding is disabled, `balance.enabled: false`).
pub fn action(latest: Option<&ShedDecision>) -> BalanceAction {
    latest.map_or(BalanceAction::Off, ShedDecision::action)
}

/// Runs the shedding loop until `stop`; `last` holds the latest decision and `history`
/// the rounds that shed (for status).
pub async fn run(
    connections: Connections,
    view: watch::Receiver<Arc<ClusterView>>,
    settings: BalanceSettings,
    interval: Duration,
    last: watch::Sender<ShedDecision>,
    history: ShedHistory,
    stop: CancellationToken,
) {
    loop {
        let wait = interval.mul_f64(rand::rng().random_range(0.8..1.2));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let serving = connections.serving();
        let decision = balance::decide(&view.borrow(), serving as u64, &settings);
        if decision.shed > 0 {
            let chosen = pick(connections.snapshot(), decision.shed);
            let drained = chosen
                .iter()
                .filter(|c| connections.drain_one(c.id, DrainReason::Shed))
                .count();
            let round = ShedRound {
                at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                drained,
                // The registry counts a drain once the connection's task starts it.
                serving: serving.saturating_sub(drained),
                mean: decision.mean.unwrap_or_default(),
            };
            info!(
                shed = round.drained,
                serving = round.serving,
                mean = round.mean,
                "above the tier's share, shedding connections"
            );
            history.push(round);
        }
        last.send_replace(decision);
    }
}

/// One round of [`run`] that shed, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShedRound {
    /// When the round ran (ms since the Unix epoch).
    pub at_ms: u64,
    /// Connections sent a GOAWAY in the round.
    pub drained: usize,
    /// Serving (not draining) connections left after it.
    pub serving: usize,
    /// The tier's mean connections (fair share) the round shed towards.
    pub mean: f64,
}

/// The last few [`ShedRound`]s of this peer, a bounded ring buffer shared between the
/// shedder (writes once a round) and `/status` (reads a copy). Cheap to clone.
#[derive(Clone)]
pub struct ShedHistory {
    rounds: Arc<Mutex<VecDeque<ShedRound>>>,
    capacity: usize,
}

impl Default for ShedHistory {
    fn default() -> Self {
        ShedHistory::new(ShedHistory::CAPACITY)
    }
}

impl ShedHistory {
    /// Rounds kept by default: about the last 20 s of a peer shedding every second.
    pub const CAPACITY: usize = 20;

    /// Keeps the last `capacity` rounds (at least one).
    pub fn new(capacity: usize) -> ShedHistory {
        let capacity = capacity.max(1);
        ShedHistory {
            rounds: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity,
        }
    }

    /// Adds `round`, forgetting the oldest when full.
    pub fn push(&self, round: ShedRound) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if rounds.len() == self.capacity {
            rounds.pop_front();
        }
        rounds.push_back(round);
    }

    /// The rounds kept, newest first.
    pub fn recent(&self) -> Vec<ShedRound> {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(at_ms: u64) -> ShedRound {
        ShedRound {
            at_ms,
            drained: 5,
            serving: 100,
            mean: 66.7,
        }
    }

    #[test]
    fn config_defaults_are_the_decisions_own() {
        // `config/satmesh.yaml` documents these; the decision's tests assume them.
        assert_eq!(
            settings(&config::Balance::default()),
            BalanceSettings::default()
        );
    }

    #[test]
    fn history_keeps_the_newest_rounds_newest_first() {
        let history = ShedHistory::new(3);
        assert!(history.recent().is_empty());
        for at in 1..=5 {
            history.push(round(at));
        }
        let kept: Vec<u64> = history.recent().iter().map(|r| r.at_ms).collect();
        assert_eq!(kept, [5, 4, 3]);
        // Clones share the rounds: the shedder writes, status reads.
        let reader = history.clone();
        history.push(round(6));
        assert_eq!(reader.recent()[0].at_ms, 6);
        assert_eq!(reader.recent().len(), 3);
    }

    #[test]
    fn a_zero_capacity_still_keeps_the_last_round() {
        let history = ShedHistory::new(0);
        history.push(round(1));
        history.push(round(2));
        assert_eq!(history.recent(), [round(2)]);
        assert_eq!(ShedHistory::default().capacity, ShedHistory::CAPACITY);
    }
}
