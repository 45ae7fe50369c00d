//! The `balance_action` fact: what a peer's shedder did last, and why it held back.
//!
//! The decision itself ([`crate::balance`]) produces these values; they live here because
//! they are published: their strings are the gossip wire form and what `/status` shows, so
//! they stay stable. A value this version does not know (a newer peer's) is kept as it
//! came ([`BalanceAction::Other`]) and shown as-is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why the shedder drained nothing this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hold {
    /// This peer is not in its own view yet (gossip has not produced one): it knows no
    /// fair share to compare with.
    NotInView,
    /// This peer is draining: its connections leave anyway, and it takes no part in
    /// balancing the tier.
    NotReady,
    /// A live peer's heartbeat is older than `balance.max_staleness`: its count may be out
    /// of date, and shedding on it could send clients to a peer that is already full.
    StaleGossip,
    /// No other live ready peer: there is nowhere for shed clients to go.
    OnlyReadyPeer,
    /// The tier's mean is below `balance.min_mean`: with so few connections one move
    /// swings the balance, so moving them gains nothing.
    TooFewConnections,
    /// Above the ceiling, but no other ready peer is below the mean by `balance.below`:
    /// shed clients would only land on peers about as full.
    NoPeerWellBelowMean,
    /// At or below the ceiling (the mean plus `balance.tolerance`): balanced enough. The
    /// decision publishes this as [`BalanceAction::Balanced`] (or turning away, at the
    /// ceiling itself).
    WithinTolerance,
}

impl Hold {
    /// Every reason, for tests and parsing.
    pub const ALL: [Hold; 7] = [
        Hold::NotInView,
        Hold::NotReady,
        Hold::StaleGossip,
        Hold::OnlyReadyPeer,
        Hold::TooFewConnections,
        Hold::NoPeerWellBelowMean,
        Hold::WithinTolerance,
    ];

    /// The stable form, for logs, gossip and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hold::NotInView => "not in view",
            Hold::NotReady => "not ready",
            Hold::StaleGossip => "stale gossip",
            Hold::OnlyReadyPeer => "only ready peer",
            Hold::TooFewConnections => "too few connections",
            Hold::NoPeerWellBelowMean => "no peer well below the mean",
            Hold::WithinTolerance => "within tolerance",
        }
    }

    fn parse(value: &str) -> Option<Hold> {
        Hold::ALL.into_iter().find(|h| h.as_str() == value)
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a peer's shedder did last, as it publishes it in `balance_action`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum BalanceAction {
    /// No decision yet, or a peer that predates the fact: `` (empty).
    #[default]
    Unknown,
    /// Over its share: it drains connections this round. `shedding`
    Shedding,
    /// At or above its ceiling with nothing to drain this round: new connections are
    /// turned away. `turning_away`
    TurningAway,
    /// Within the tolerance of its fair share. `balanced`
    Balanced,
    /// Balancing is disabled on that peer (`balance.enabled: false`). `off`
    Off,
    /// The peer is shutting down; its shedder has stopped. `draining`
    Draining,
    /// It did nothing, for this reason (its [`Hold::as_str`]).
    Held(Hold),
    /// A value this version does not know (from a newer peer), kept as it came. Made by
    /// [`BalanceAction::parse`] only, so it never holds a known value.
    Other(String),
}

impl BalanceAction {
    /// The gossiped form; [`BalanceAction::parse`] reads it back.
    pub fn as_str(&self) -> &str {
        match self {
            BalanceAction::Unknown => "",
            BalanceAction::Shedding => "shedding",
            BalanceAction::TurningAway => "turning_away",
            BalanceAction::Balanced => "balanced",
            BalanceAction::Off => "off",
            BalanceAction::Draining => "draining",
            BalanceAction::Held(hold) => hold.as_str(),
            BalanceAction::Other(value) => value,
        }
    }

    /// Reads a gossiped value; never fails (an unknown one is [`BalanceAction::Other`]).
    pub fn parse(value: &str) -> BalanceAction {
        match value {
            "" => BalanceAction::Unknown,
            "shedding" => BalanceAction::Shedding,
            "turning_away" => BalanceAction::TurningAway,
            "balanced" => BalanceAction::Balanced,
            "off" => BalanceAction::Off,
            "draining" => BalanceAction::Draining,
            other => Hold::parse(other).map_or_else(
                || BalanceAction::Other(other.to_owned()),
                BalanceAction::Held,
            ),
        }
    }
}

impl fmt::Display for BalanceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for BalanceAction {
    fn from(value: &str) -> Self {
        BalanceAction::parse(value)
    }
}

impl From<String> for BalanceAction {
    fn from(value: String) -> Self {
        BalanceAction::parse(&value)
    }
}

impl From<BalanceAction> for String {
    fn from(action: BalanceAction) -> Self {
        match action {
            BalanceAction::Other(value) => value,
            known => known.as_str().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every value a peer of this version can publish.
    fn known() -> Vec<BalanceAction> {
        let mut all = vec![
            BalanceAction::Unknown,
            BalanceAction::Shedding,
            BalanceAction::TurningAway,
            BalanceAction::Balanced,
            BalanceAction::Off,
            BalanceAction::Draining,
        ];
        all.extend(Hold::ALL.map(BalanceAction::Held));
        all
    }

    #[test]
    fn the_gossiped_strings_stay_as_published() {
        // Older peers, `satmesh status` and the status page read these: changing one
        // needs a new key.
        let known = known();
        let strings: Vec<&str> = known.iter().map(BalanceAction::as_str).collect();
        assert_eq!(
            strings,
            [
                "",
                "shedding",
                "turning_away",
                "balanced",
                "off",
                "draining",
                "not in view",
                "not ready",
                "stale gossip",
                "only ready peer",
                "too few connections",
                "no peer well below the mean",
                "within tolerance",
            ]
        );
    }

    #[test]
    fn every_known_action_round_trips_through_its_string() {
        for action in known() {
            assert_eq!(BalanceAction::parse(action.as_str()), action, "{action:?}");
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("{:?}", action.as_str()));
            assert_eq!(
                serde_json::from_str::<BalanceAction>(&json).unwrap(),
                action
            );
        }
    }

    #[test]
    fn a_newer_peers_action_is_kept_as_it_came() {
        let action = BalanceAction::parse("resting");
        assert_eq!(action, BalanceAction::Other("resting".into()));
        assert_eq!(action.to_string(), "resting");
        assert_eq!(String::from(action), "resting");
    }

    proptest! {
        #[test]
        fn any_gossiped_string_reads_back_as_itself(value in ".{0,40}") {
            let action = BalanceAction::parse(&value);
            prop_assert_eq!(action.as_str(), value.as_str());
        }
    }
}
