//! The tier: gossip (`cluster`) and cluster-aware shedding (`balance`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{self, HostPort};
use super::{ConfigError, invalid};

/// The tier: peers gossip their facts and agree on one ring (see the `satmesh-cluster`
/// crate for the failure-detector settings and their figures).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// This peer's name in the tier, stable across restarts (a restart gets a new
    /// generation). Default: the host name (the pod name on Kubernetes).
    pub node_id: Option<String>,
    /// UDP address gossip is received on.
    #[serde(deserialize_with = "values::socket_addr")]
    pub gossip_listen: SocketAddr,
    /// Address other peers gossip to; default derived from `gossip_listen` (or, when that
    /// is 0.0.0.0, the local address of the route to the first seed).
    #[serde(deserialize_with = "values::opt_socket_addr")]
    pub advertise: Option<SocketAddr>,
    /// Peers to join through, as `host:port`; a DNS name (a Kubernetes headless Service)
    /// counts for every address and is re-resolved. Empty: the peer runs alone, with a
    /// ring of its own and no gossip socket.
    #[serde(deserialize_with = "values::list")]
    pub seeds: Vec<HostPort>,
    /// Peers gossip only with peers of the same id (not a secret: gossip has no auth).
    pub cluster_id: String,
    /// Time between gossip rounds.
    pub gossip_interval_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            node_id: None,
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: None,
            seeds: Vec::new(),
            cluster_id: "satmesh".into(),
            gossip_interval_ms: 500,
        }
    }
}

impl Cluster {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.gossip_interval_ms == 0 {
            return Err(invalid("cluster.gossip_interval_ms", "must be at least 1"));
        }
        if self.cluster_id.is_empty() {
            return Err(invalid("cluster.cluster_id", "must not be empty"));
        }
        if self.node_id.as_ref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid("cluster.node_id", "must not be empty"));
        }
        Ok(())
    }
}

/// Cluster-aware shedding: a ready peer above the tier's mean by more than `tolerance`,
/// while another ready peer is below the mean by `below`, drains part of its excess each
/// interval (graceful GOAWAY) and turns new connections away until back within tolerance.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Balance {
    /// Shed at all (a peer still publishes its counts when off).
    pub enabled: bool,
    /// Time between two shedding decisions (jittered +-20 %).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Allowed excess over the tier's mean, as a fraction.
    pub tolerance: f64,
    /// How far below the mean another ready peer must be for shedding to make sense.
    pub below: f64,
    /// Fraction of the excess shed per interval.
    pub step: f64,
    /// At most this many connections shed per interval.
    pub max_per_interval: usize,
    /// No shedding while any peer's gossip is older than this.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// Connections one pod should hold, for `satmesh_tier_desired_replicas`
    /// (ceil(tier connections not draining / this)).
    pub target_connections_per_pod: u64,
    /// Close the listener (turn new connections away) while above the share, so clients
    /// dialling several addresses go to the next. Right for a DNS name with several
    /// records; wrong behind a virtual IP (a Kubernetes ClusterIP), where a refused
    /// connection fails the agent's calls: shedding alone spreads clients there.
    pub turn_away: bool,
    /// A shed agent that reconnects to the same peer within this long came back:
    /// counted, and with `turn_away` (it could not go elsewhere) never shed again.
    #[serde(with = "humantime_serde")]
    pub return_window: Duration,
}

/// The decision's own defaults (`satmesh_cluster::balance::BalanceSettings`; a test in
/// `shed` keeps the two equal).
impl Default for Balance {
    fn default() -> Self {
        Balance {
            enabled: true,
            interval: Duration::from_secs(1),
            tolerance: 0.10,
            below: 0.10,
            step: 0.25,
            max_per_interval: 50,
            max_staleness: Duration::from_secs(3),
            target_connections_per_pod: 3000,
            turn_away: true,
            return_window: Duration::from_secs(120),
        }
    }
}

impl Balance {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("balance.tolerance", self.tolerance),
            ("balance.below", self.below),
            ("balance.step", self.step),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                return Err(invalid(key, "must be a fraction in (0, 1]"));
            }
        }
        if self.interval.is_zero() {
            return Err(invalid("balance.interval", "must be more than 0"));
        }
        if self.max_per_interval == 0 {
            return Err(invalid("balance.max_per_interval", "must be at least 1"));
        }
        if self.target_connections_per_pod == 0 {
            return Err(invalid(
                "balance.target_connections_per_pod",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
