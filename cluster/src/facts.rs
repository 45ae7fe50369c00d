//! The facts a peer publishes about itself, and their encoding as gossip key-values.
//!
//! One key per fact, each value a short string, so a change re-sends one small value and
//! a whole peer fits far below a UDP datagram. Keys are never deleted (chitchat does not
//! notify deletions and its tombstones need their own garbage collection): a leaving
//! peer publishes `state = draining`, and the per-OAP health view is one value, so an OAP
//! node that disappears is simply absent from the next value.
//!
//! | key                       | value                                                      |
//! |---------------------------|------------------------------------------------------------|
//! | `grpc_addr`               | advertised agent-facing address                            |
//! | `admin_addr`              | advertised admin (HTTP) address                            |
//! | `state`                   | `ready` or `draining`                                      |
//! | `connections`             | open agent connections, draining ones included, decimal    |
//! | `draining`                | of those, connections draining (GOAWAY sent), decimal      |
//! | `connection_limit`        | connections this peer accepts, decimal                     |
//! | `events_per_sec`          | events received per second, one decimal                    |
//! | `oap_health`              | JSON object `{"ip:port": true/false, ...}`                 |
//! | `ring_digest`             | digest of the ring this peer routes with, hex              |
//! | `connections_shed`        | connections drained by shedding since start, decimal       |
//! | `connections_turned_away` | connections turned away since start (any reason), decimal  |
//! | `balance_action`          | what the shedder did last (see below)                      |
//! | `fair_share`              | the tier mean it acted on, one decimal; empty when unknown |
//!
//! `balance_action` is a [`BalanceAction`] (typed in `facts/action.rs`): `shedding`,
//! `turning_away`, `balanced`, `off` (balancing disabled), `draining`, the [`Hold`] reason
//! the shedder did nothing for (such as `stale gossip` or `only ready peer`), or empty
//! before the shedder's first decision. A value from a newer peer is kept as it came.
//!
//! Decoding ignores unknown keys, so a newer peer may add facts; changing the meaning of
//! a value needs a new key.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod action;

pub use action::{BalanceAction, Hold};

/// A peer incarnation: `node_id` survives restarts, `generation` (start time in ns)
/// grows on every start, so a restarted peer is told apart from its former self.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId {
    pub node_id: String,
    pub generation: u64,
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node_id, self.generation)
    }
}

/// Whether a peer takes new work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Accepts agents and votes on the ring's membership.
    #[default]
    Ready,
    /// Shutting down: sends its agents away and flushes; no longer votes.
    Draining,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Ready => "ready",
            PeerState::Draining => "draining",
        }
    }

    fn parse(value: &str) -> Option<PeerState> {
        match value {
            "ready" => Some(PeerState::Ready),
            "draining" => Some(PeerState::Draining),
            _ => None,
        }
    }
}

/// What one peer publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerFacts {
    /// Address agents use to reach this peer (`host:port`).
    pub grpc_addr: String,
    /// Address of this peer's admin HTTP server (`host:port`).
    pub admin_addr: String,
    pub state: PeerState,
    /// Open agent connections, draining ones included.
    pub connections: u64,
    /// Of `connections`, those draining: sent their GOAWAY, streams finishing. Their
    /// agents have already reconnected (most likely to another peer), so they count for
    /// no peer's share of the tier ([`PeerFacts::serving`]). A Rust agent's stream keeps
    /// its draining connection open for up to ~30 s.
    pub draining: u64,
    /// Connections this peer accepts before it sheds.
    pub connection_limit: u64,
    /// Events received from agents per second.
    pub events_per_sec: f64,
    /// OAP node (`ip:port`) -> healthy, in this peer's damped view (see
    /// [`HealthDamper`](crate::ring_members::HealthDamper)).
    pub oap_health: BTreeMap<String, bool>,
    /// [`Ring::digest`](crate::ring::Ring::digest) of the ring this peer routes with.
    pub ring_digest: u64,
    /// Connections this peer drained by shedding since it started.
    pub connections_shed: u64,
    /// Connections this peer turned away since it started, for any reason.
    pub connections_turned_away: u64,
    /// What this peer's shedder did last.
    pub balance_action: BalanceAction,
    /// The tier's mean connections (the fair share) its last decision acted on.
    pub fair_share: Option<f64>,
}

pub(crate) const GRPC_ADDR: &str = "grpc_addr";
pub(crate) const ADMIN_ADDR: &str = "admin_addr";
pub(crate) const STATE: &str = "state";
pub(crate) const CONNECTIONS: &str = "connections";
pub(crate) const DRAINING: &str = "draining";
pub(crate) const CONNECTION_LIMIT: &str = "connection_limit";
pub(crate) const EVENTS_PER_SEC: &str = "events_per_sec";
pub(crate) const OAP_HEALTH: &str = "oap_health";
pub(crate) const RING_DIGEST: &str = "ring_digest";
pub(crate) const CONNECTIONS_SHED: &str = "connections_shed";
pub(crate) const CONNECTIONS_TURNED_AWAY: &str = "connections_turned_away";
pub(crate) const BALANCE_ACTION: &str = "balance_action";
pub(crate) const FAIR_SHARE: &str = "fair_share";

/// Why a peer's key-values do not form facts (yet): the peer is left out of views.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("fact `{0}` missing")]
    Missing(&'static str),
    #[error("fact `{key}` has an invalid value {value:?}")]
    Invalid { key: &'static str, value: String },
}

impl PeerFacts {
    /// Connections this peer keeps serving: open ones not draining. What a peer's share
    /// of the tier is measured in (a peer from before `draining` was published counts
    /// every open connection).
    pub fn serving(&self) -> u64 {
        self.connections.saturating_sub(self.draining)
    }

    /// The key-values to gossip.
    pub(crate) fn encode(&self) -> Vec<(String, String)> {
        let events = if self.events_per_sec.is_finite() {
            self.events_per_sec.max(0.0)
        } else {
            0.0
        };
        // A BTreeMap<String, bool> always serializes.
        let health = serde_json::to_string(&self.oap_health).unwrap_or_else(|_| "{}".into());
        let fair_share = match self.fair_share {
            Some(mean) if mean.is_finite() && mean >= 0.0 => format!("{mean:.1}"),
            _ => String::new(),
        };
        [
            (GRPC_ADDR, self.grpc_addr.clone()),
            (ADMIN_ADDR, self.admin_addr.clone()),
            (STATE, self.state.as_str().to_owned()),
            (CONNECTIONS, self.connections.to_string()),
            (DRAINING, self.draining.to_string()),
            (CONNECTION_LIMIT, self.connection_limit.to_string()),
            (EVENTS_PER_SEC, format!("{events:.1}")),
            (OAP_HEALTH, health),
            (RING_DIGEST, format!("{:016x}", self.ring_digest)),
            (CONNECTIONS_SHED, self.connections_shed.to_string()),
            (
                CONNECTIONS_TURNED_AWAY,
                self.connections_turned_away.to_string(),
            ),
            (BALANCE_ACTION, self.balance_action.as_str().to_owned()),
            (FAIR_SHARE, fair_share),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Facts from a peer's key-values. `grpc_addr` and `state` are required; other
    /// missing facts take their zero value. Unknown keys are ignored.
    pub(crate) fn decode<'a>(
        key_values: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<PeerFacts, FactsError> {
        let kv: BTreeMap<&str, &str> = key_values.into_iter().collect();
        let get = |key| kv.get(key).copied();
        let invalid = |key: &'static str, value: &str| FactsError::Invalid {
            key,
            value: value.chars().take(64).collect(),
        };
        let grpc_addr = get(GRPC_ADDR).ok_or(FactsError::Missing(GRPC_ADDR))?;
        let state = get(STATE).ok_or(FactsError::Missing(STATE))?;
        let state = PeerState::parse(state).ok_or_else(|| invalid(STATE, state))?;
        let count = |key: &'static str| match get(key) {
            None => Ok(0),
            Some(v) => v.parse::<u64>().map_err(|_| invalid(key, v)),
        };
        let events_per_sec = match get(EVENTS_PER_SEC) {
            None => 0.0,
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => x,
                _ => return Err(invalid(EVENTS_PER_SEC, v)),
            },
        };
        let oap_health = match get(OAP_HEALTH) {
            None => BTreeMap::new(),
            Some(v) => serde_json::from_str(v).map_err(|_| invalid(OAP_HEALTH, v))?,
        };
        let ring_digest = match get(RING_DIGEST) {
            None => 0,
            Some(v) => u64::from_str_radix(v, 16).map_err(|_| invalid(RING_DIGEST, v))?,
        };
        let fair_share = match get(FAIR_SHARE) {
            None | Some("") => None,
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
                _ => return Err(invalid(FAIR_SHARE, v)),
            },
        };
        Ok(PeerFacts {
            grpc_addr: grpc_addr.to_owned(),
            admin_addr: get(ADMIN_ADDR).unwrap_or_default().to_owned(),
            state,
            connections: count(CONNECTIONS)?,
            draining: count(DRAINING)?,
            connection_limit: count(CONNECTION_LIMIT)?,
            events_per_sec,
            oap_health,
            ring_digest,
            connections_shed: count(CONNECTIONS_SHED)?,
            connections_turned_away: count(CONNECTIONS_TURNED_AWAY)?,
            balance_action: BalanceAction::parse(get(BALANCE_ACTION).unwrap_or_default()),
            fair_share,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PeerFacts {
        PeerFacts {
            grpc_addr: "10.1.0.5:11800".into(),
            admin_addr: "10.1.0.5:1234".into(),
            state: PeerState::Draining,
            connections: 812,
            draining: 12,
            connection_limit: 4000,
            events_per_sec: 1520.25,
            oap_health: [
                ("10.2.0.1:11800".into(), true),
                ("10.2.0.2:11800".into(), false),
            ]
            .into(),
            ring_digest: 0xdead_beef_0123_4567,
            connections_shed: 42,
            connections_turned_away: 1_234_567,
            balance_action: BalanceAction::Shedding,
            fair_share: Some(270.66),
        }
    }

    fn decode(kv: &[(String, String)]) -> Result<PeerFacts, FactsError> {
        PeerFacts::decode(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    #[test]
    fn round_trip_keeps_every_fact() {
        let mut facts = sample();
        let decoded = decode(&facts.encode()).unwrap();
        facts.events_per_sec = 1520.2; // one decimal on the wire
        facts.fair_share = Some(270.7);
        assert_eq!(decoded, facts);
    }

    #[test]
    fn a_hold_reason_and_a_newer_peers_action_round_trip() {
        for action in [
            BalanceAction::Held(Hold::StaleGossip),
            BalanceAction::Other("from the future".into()),
        ] {
            let facts = PeerFacts {
                events_per_sec: 1520.2,
                fair_share: Some(270.7),
                balance_action: action,
                ..sample()
            };
            assert_eq!(decode(&facts.encode()).unwrap(), facts);
        }
    }

    #[test]
    fn an_unknown_fair_share_and_action_round_trip_as_empty() {
        let facts = PeerFacts {
            events_per_sec: 1520.2,
            fair_share: None,
            balance_action: BalanceAction::Unknown,
            ..sample()
        };
        let kv = facts.encode();
        let value = |key| kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(value(FAIR_SHARE), Some(""));
        assert_eq!(value(BALANCE_ACTION), Some(""));
        assert_eq!(decode(&kv).unwrap(), facts);
        let nan = PeerFacts {
            fair_share: Some(f64::NAN),
            ..facts.clone()
        };
        assert_eq!(decode(&nan.encode()).unwrap().fair_share, None);
    }

    #[test]
    fn a_peer_without_the_draining_key_serves_every_open_connection() {
        let mut kv = sample().encode();
        assert_eq!(decode(&kv).unwrap().serving(), 800);
        kv.retain(|(k, _)| k != DRAINING);
        let decoded = decode(&kv).unwrap();
        assert_eq!((decoded.draining, decoded.serving()), (0, 812));
        // A torn pair (draining read before connections fell) never underflows.
        let torn = PeerFacts {
            connections: 3,
            draining: 5,
            ..sample()
        };
        assert_eq!(torn.serving(), 0);
    }

    #[test]
    fn facts_of_a_peer_without_the_shedding_keys_decode_with_zero_values() {
        // A peer of an older version publishes none of them.
        let newer = [
            CONNECTIONS_SHED,
            CONNECTIONS_TURNED_AWAY,
            BALANCE_ACTION,
            FAIR_SHARE,
        ];
        let mut kv = sample().encode();
        kv.retain(|(k, _)| !newer.contains(&k.as_str()));
        let decoded = decode(&kv).unwrap();
        assert_eq!(
            (decoded.connections_shed, decoded.connections_turned_away),
            (0, 0)
        );
        assert_eq!(
            (decoded.balance_action, decoded.fair_share),
            (BalanceAction::Unknown, None)
        );
    }

    #[test]
    fn values_are_small() {
        let encoded = sample().encode();
        assert!(encoded.iter().all(|(_, v)| v.len() < 100), "{encoded:?}");
    }

    #[test]
    fn missing_state_or_address_is_not_facts_and_unknown_keys_are_ignored() {
        let mut kv = sample().encode();
        kv.push(("from_the_future".into(), "x".into()));
        assert!(decode(&kv).is_ok());
        kv.retain(|(k, _)| k != STATE);
        assert_eq!(decode(&kv), Err(FactsError::Missing(STATE)));
    }

    #[test]
    fn invalid_values_are_rejected_not_guessed() {
        for (key, bad) in [
            (CONNECTIONS, "-3"),
            (CONNECTIONS_SHED, "1.5"),
            (CONNECTIONS_TURNED_AWAY, "many"),
            (FAIR_SHARE, "-1.0"),
            (FAIR_SHARE, "NaN"),
        ] {
            let mut kv = sample().encode();
            for (k, v) in &mut kv {
                if k == key {
                    *v = bad.into();
                }
            }
            assert!(
                matches!(decode(&kv), Err(FactsError::Invalid { key: k, .. }) if k == key),
                "{key} = {bad}"
            );
        }
    }
}
