//! The shedding decision: pure, from a view of the tier and this peer's own exact count.
//!
//! A ready peer above the tier's mean by more than `tolerance`, while another ready peer
//! is well below the mean, sheds part of its excess each interval and turns new
//! connections away, so clients that reconnect (through an L4 virtual IP that picks a
//! random peer, or a multi-address target dialled first-address-first) land elsewhere.
//! It never sheds on stale gossip, never below its fair share, and never while it is the
//! only ready peer.
//!
//! The result is a [`ShedDecision`]; what it publishes ([`ShedDecision::action`]) and why
//! it holds back ([`Hold`]) are typed with the facts, since peers gossip them.

use std::time::Duration;

use crate::facts::{BalanceAction, Hold};
use crate::view::ClusterView;

/// Thresholds of the decision; the `balance.*` config keys.
#[derive(Clone, Debug, PartialEq)]
pub struct BalanceSettings {
    /// A peer sheds once its connections exceed the mean by more than this fraction, and
    /// stops when back within it. Default 0.10.
    pub tolerance: f64,
    /// ...but only while another ready peer is below the mean by at least this fraction
    /// (there is somewhere for clients to go). Default 0.10.
    pub below: f64,
    /// Connections shed per interval at most, as a fraction of the excess. Default 0.25.
    pub step: f64,
    /// ...and never more than this many per interval. Default 50.
    pub max_per_interval: usize,
    /// Peers whose heartbeat is older than this make the view stale: no shedding on it.
    /// Default 3 s.
    pub max_staleness: Duration,
    /// A mean below this many connections is too small to balance. Default 2.
    pub min_mean: f64,
}

impl Default for BalanceSettings {
    fn default() -> Self {
        BalanceSettings {
            tolerance: 0.10,
            below: 0.10,
            step: 0.25,
            max_per_interval: 50,
            max_staleness: Duration::from_secs(3),
            min_mean: 2.0,
        }
    }
}

/// What this peer should do now. The default is "not decided yet".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShedDecision {
    /// Connections to drain now.
    pub shed: usize,
    /// Turn new connections away (the peer is above its share by the tolerance).
    pub turn_away: bool,
    /// Mean connections of ready peers (the fair share), when known.
    pub mean: Option<f64>,
    /// Why nothing is drained, for logs and the status page.
    pub hold: Option<Hold>,
}

impl ShedDecision {
    /// What the decision does, as the peer publishes it in `balance_action`: shedding
    /// comes first, then turning away; a peer within tolerance is balanced, and one held
    /// back for another reason publishes that reason.
    pub fn action(&self) -> BalanceAction {
        if self.shed > 0 {
            BalanceAction::Shedding
        } else if self.turn_away {
            BalanceAction::TurningAway
        } else {
            match self.hold {
                Some(Hold::WithinTolerance) => BalanceAction::Balanced,
                Some(hold) => BalanceAction::Held(hold),
                None => BalanceAction::Unknown,
            }
        }
    }
}

fn hold(reason: Hold) -> ShedDecision {
    ShedDecision {
        hold: Some(reason),
        ..ShedDecision::default()
    }
}

/// Decides from `view` (gossip) and `own` (this peer's exact serving connections). Other
/// peers count their serving connections too ([`PeerFacts::serving`]): a draining
/// connection's agent has already reconnected, so counting it would count that agent
/// twice, and a peer that shed recently would look fuller than it is for as long as its
/// draining connections stay open (up to ~30 s with the Rust agent), holding the others
/// back.
///
/// [`PeerFacts::serving`]: crate::facts::PeerFacts::serving
pub fn decide(view: &ClusterView, own: u64, settings: &BalanceSettings) -> ShedDecision {
    let share = match share(view, own, settings) {
        Ok(share) => share,
        Err(held) => return held,
    };
    let Share {
        mean,
        ceiling,
        room_elsewhere,
    } = share;
    let above = own > ceiling;
    if !above || !room_elsewhere {
        let why = if above {
            Hold::NoPeerWellBelowMean
        } else {
            Hold::WithinTolerance
        };
        // At the ceiling itself new connections are already turned away.
        return ShedDecision {
            mean: Some(mean),
            turn_away: room_elsewhere && own >= ceiling,
            ..hold(why)
        };
    }
    // Shed down to the ceiling, never below the fair share. A peer at its ceiling turns
    // new connections away, so a client it sheds cannot come straight back.
    let excess = own - ceiling.max(mean.ceil() as u64);
    let shed = ((excess as f64 * settings.step).ceil() as usize)
        .clamp(1, settings.max_per_interval)
        .min(excess as usize);
    ShedDecision {
        shed,
        turn_away: true,
        mean: Some(mean),
        hold: None,
    }
}

/// Whether a new connection is welcome: not when this peer is at or above its share by
/// the tolerance while another ready peer is well below the mean (the client should try
/// the next peer).
pub fn admits(view: &ClusterView, own: u64, settings: &BalanceSettings) -> bool {
    match share(view, own, settings) {
        Ok(Share {
            ceiling,
            room_elsewhere,
            ..
        }) => !(room_elsewhere && own >= ceiling),
        Err(_) => true,
    }
}

struct Share {
    mean: f64,
    /// The mean plus the tolerance, in whole connections: above it a peer sheds, at it a
    /// peer turns new connections away.
    ceiling: u64,
    /// Another ready peer is well below the mean.
    room_elsewhere: bool,
}

fn share(view: &ClusterView, own: u64, settings: &BalanceSettings) -> Result<Share, ShedDecision> {
    let Some(me) = view.self_peer() else {
        return Err(hold(Hold::NotInView));
    };
    if !me.is_live_ready() {
        return Err(hold(Hold::NotReady));
    }
    let stale_ms = settings.max_staleness.as_millis() as u64;
    if view
        .live()
        .any(|p| !p.is_self && p.last_seen_ms_ago > stale_ms)
    {
        return Err(hold(Hold::StaleGossip));
    }
    let counts: Vec<(bool, u64)> = view
        .live_ready()
        .map(|p| (p.is_self, if p.is_self { own } else { p.facts.serving() }))
        .collect();
    if counts.len() < 2 {
        return Err(hold(Hold::OnlyReadyPeer));
    }
    let total: u64 = counts.iter().map(|(_, c)| c).sum();
    let mean = total as f64 / counts.len() as f64;
    if mean < settings.min_mean {
        return Err(ShedDecision {
            mean: Some(mean),
            ..hold(Hold::TooFewConnections)
        });
    }
    let room_elsewhere = counts
        .iter()
        .any(|(me, c)| !me && (*c as f64) < mean * (1.0 - settings.below));
    // The small epsilon keeps 100 * 1.1 from landing just above 110.
    let ceiling = (mean * (1.0 + settings.tolerance) + 1e-9).floor() as u64;
    Ok(Share {
        mean,
        ceiling,
        room_elsewhere,
    })
}

#[cfg(test)]
mod tests;
