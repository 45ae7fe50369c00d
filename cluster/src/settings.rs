//! Cluster settings, documented field by field: these docs are the user reference for the
//! `cluster.*` configuration keys.
//!
//! The defaults are tuned for tiers of 3 to 10 peers. Measured (`tests/convergence.rs`,
//! and the same over UDP on loopback): a change published by one peer is visible on every
//! peer within 1.0 s (3 peers) / 1.5 s (10 peers), plus up to one publish interval for a
//! small load change; a killed peer is declared dead everywhere after 3-3.5 s / 4-5 s.
//! Chitchat's own defaults (1 s gossip, 5 s prior, 24 h dead grace) took 17-23 s to
//! declare a peer dead.

use std::net::SocketAddr;
use std::time::Duration;

use crate::publish::PublishLimits;

/// How this peer joins and gossips with the rest of the tier.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// `cluster.node_id`: this peer's name, unique in the tier and stable across restarts
    /// (a restart is told apart by its generation, the start time). Default: the host
    /// name (the pod name on Kubernetes).
    pub node_id: String,
    /// `cluster.gossip_listen`: UDP address gossip is received on. Default `0.0.0.0:7946`.
    /// Port 0 picks a free port (tests).
    pub gossip_listen: SocketAddr,
    /// `cluster.advertise`: the address other peers send gossip to. Default (None): the
    /// listen address when its IP is specific; otherwise the local IP of the route to the
    /// first seed that resolves; otherwise 127.0.0.1 (a peer without seeds is alone).
    pub advertise: Option<SocketAddr>,
    /// `cluster.seeds`: peers to join through, as `host:port`. A DNS name (a Kubernetes
    /// headless Service) counts for every address it resolves to and is re-resolved every
    /// `seed_refresh`; listing this peer itself is harmless. Empty: the peer runs alone.
    pub seeds: Vec<String>,
    /// How often DNS seeds are resolved again, so peers that start apart find each other.
    /// Chitchat re-resolves on its own only every 60 s. Default 10 s.
    pub seed_refresh: Duration,
    /// `cluster.cluster_id`: peers gossip only with peers of the same id. It separates
    /// tiers sharing a network; it is not a secret (gossip is neither authenticated nor
    /// encrypted). Default `satmesh`.
    pub cluster_id: String,
    /// `cluster.gossip_interval_ms`: time between gossip rounds; each round this peer
    /// exchanges state with up to 3 live peers (and, now and then, a dead one or a seed).
    /// Default 500 ms.
    pub gossip_interval: Duration,
    /// Failure detector (phi accrual): a peer is dead once the time since its last
    /// heartbeat exceeds `phi_threshold` times the mean interval between its heartbeats
    /// (which arrive a little more often than once per gossip round, relayed by other
    /// peers). With 500 ms rounds, 10 declared a killed peer dead everywhere after 3.5-5 s
    /// (8: 3-4.5 s); higher tolerates longer stalls (CPU throttling, packet loss) before a
    /// live peer is wrongly dropped from the ring vote. Default 10.
    pub phi_threshold: f64,
    /// Heartbeat interval assumed for a peer before enough heartbeats were seen (weighted
    /// as 5 samples). Default (None): the gossip interval.
    pub initial_interval: Option<Duration>,
    /// Heartbeat gaps longer than this are left out of the mean (a peer back from a long
    /// partition must not look slow forever). Default 10 s.
    pub max_interval: Duration,
    /// How long a dead peer stays in views (marked dead) before it is forgotten; a peer
    /// coming back later rejoins like a new one. Chitchat's default is 24 h. Default 5 min.
    pub dead_node_grace_period: Duration,
    /// How long deleted keys are kept as tombstones. satmesh never deletes keys (it
    /// publishes a state value instead), so this only bounds chitchat's bookkeeping.
    /// Default 1 h.
    pub marked_for_deletion_grace_period: Duration,
    /// Least time between two publications of small load changes (connections,
    /// events/s); see [`crate::publish`]. Default (None): the gossip interval.
    pub publish_interval: Option<Duration>,
    /// A relative change of a load counter above this is published at once. Default 0.10.
    pub large_change: f64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: hostname(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: None,
            seeds: Vec::new(),
            seed_refresh: Duration::from_secs(10),
            cluster_id: "satmesh".into(),
            gossip_interval: Duration::from_millis(500),
            phi_threshold: 10.0,
            initial_interval: None,
            max_interval: Duration::from_secs(10),
            dead_node_grace_period: Duration::from_secs(5 * 60),
            marked_for_deletion_grace_period: Duration::from_secs(60 * 60),
            publish_interval: None,
            large_change: 0.10,
        }
    }
}

impl ClusterSettings {
    /// The effective heartbeat prior.
    pub fn initial_interval(&self) -> Duration {
        self.initial_interval.unwrap_or(self.gossip_interval)
    }

    /// The effective publication limits.
    pub fn publish_limits(&self) -> PublishLimits {
        PublishLimits {
            interval: self.publish_interval.unwrap_or(self.gossip_interval),
            large_change: self.large_change,
        }
    }

    /// Rejects settings chitchat would misbehave with, naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id.trim().is_empty() {
            return Err("node_id: must not be empty".into());
        }
        if self.cluster_id.is_empty() {
            return Err("cluster_id: must not be empty".into());
        }
        if self.gossip_interval.is_zero() {
            return Err("gossip_interval: must be above zero".into());
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err("phi_threshold: must be a positive number".into());
        }
        if self.initial_interval().is_zero() {
            return Err("initial_interval: must be above zero".into());
        }
        if !(self.large_change.is_finite() && self.large_change >= 0.0) {
            return Err("large_change: must be zero or positive".into());
        }
        for seed in &self.seeds {
            let host_port = seed
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !host_port {
                return Err(format!("seeds: `{seed}` is not host:port"));
            }
        }
        if self.seed_refresh.is_zero() {
            return Err("seed_refresh: must be above zero".into());
        }
        Ok(())
    }
}

/// This host's name, the default node id: the kernel's, else `$HOSTNAME`, else `satmesh`.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .chain(std::env::var("HOSTNAME").ok())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "satmesh".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let s = ClusterSettings::default();
        assert_eq!(s.gossip_listen, "0.0.0.0:7946".parse().unwrap());
        assert_eq!(s.gossip_interval, Duration::from_millis(500));
        assert_eq!(s.initial_interval(), s.gossip_interval);
        assert_eq!(s.publish_limits().interval, s.gossip_interval);
        assert!(!s.node_id.is_empty());
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let s = ClusterSettings {
            gossip_interval: Duration::ZERO,
            ..ClusterSettings::default()
        };
        assert!(s.validate().unwrap_err().starts_with("gossip_interval"));
    }
}
