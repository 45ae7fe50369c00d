//! Addresses: the gossip port, the advertised address, and DNS seeds resolved again.
//!
//! Chitchat takes seed strings and resolves DNS names itself, at start and then every 60 s.
//! A Kubernetes headless Service resolves to nothing (or to a few pods) while the first
//! pods start, so peers that started apart could stay apart for a minute; this module
//! re-resolves DNS seeds every `seed_refresh` and asks chitchat to gossip with each
//! address that is not a live peer yet.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use chitchat::ChitchatHandle;
use chitchat::transport::Transport;
use tokio::net::lookup_host;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use super::ClusterError;
use crate::settings::{ClusterSettings, hostname};

/// The listen address, with a free port picked when it is 0 (the probe socket is closed
/// again before chitchat opens the real one).
pub(super) async fn pick_port(
    listen: SocketAddr,
    transport: &dyn Transport,
) -> Result<SocketAddr, ClusterError> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let error = |error: anyhow::Error| ClusterError::Listen {
        addr: listen,
        reason: format!("{error:#}"),
    };
    let probe = transport.open(listen).await.map_err(error)?;
    let picked = probe.local_addr().map_err(error)?;
    drop(probe);
    Ok(picked)
}

/// The address peers should gossip to when none is configured: see
/// [`ClusterSettings::advertise`].
pub(super) async fn derive_advertise(listen: SocketAddr, seeds: &[String]) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    for seed in seeds {
        let Ok(addrs) = lookup_host(seed.as_str()).await else {
            continue;
        };
        // Same family as the socket: an IPv4 socket cannot be reached at an IPv6 address.
        for seed_addr in addrs.filter(|a| a.is_ipv4() == listen.is_ipv4()) {
            if let Some(ip) = route_source(seed_addr) {
                return SocketAddr::new(ip, listen.port());
            }
        }
    }
    if let Ok(mut addrs) = lookup_host((hostname(), listen.port())).await
        && let Some(addr) = addrs.find(|a| !a.ip().is_loopback() && a.is_ipv4() == listen.is_ipv4())
    {
        return addr;
    }
    if !seeds.is_empty() {
        warn!(listen = %listen, "no address to advertise for gossip; using 127.0.0.1, \
            set cluster.advertise");
    }
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
}

/// The local IP the OS would send from to reach `to` (a UDP connect sends nothing).
fn route_source(to: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(to).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Starts re-resolving the DNS seeds, if any seed is a name.
pub(super) fn spawn_refresh(
    settings: &ClusterSettings,
    advertise: SocketAddr,
    chitchat: Arc<ChitchatHandle>,
) -> Option<JoinHandle<()>> {
    let names: Vec<String> = settings
        .seeds
        .iter()
        .filter(|seed| seed.parse::<SocketAddr>().is_err())
        .cloned()
        .collect();
    if names.is_empty() {
        return None;
    }
    let every = settings.seed_refresh;
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await; // chitchat resolved them at start
        loop {
            tick.tick().await;
            let mut resolved = HashSet::new();
            for name in &names {
                match lookup_host(name.as_str()).await {
                    Ok(addrs) => resolved.extend(addrs),
                    Err(error) => debug!(seed = %name, %error, "seed did not resolve"),
                }
            }
            let live: HashSet<SocketAddr> = {
                let chitchat = chitchat.chitchat();
                let chitchat = chitchat.lock().await;
                chitchat
                    .live_nodes()
                    .map(|id| id.gossip_advertise_addr)
                    .collect()
            };
            for addr in resolved {
                if addr != advertise && !live.contains(&addr) {
                    debug!(seed_addr = %addr, "gossiping with a newly resolved seed");
                    let _ = chitchat.gossip(addr);
                }
            }
        }
    }))
}
