//! Discovery: turns `upstream.static` and `upstream.dns` into the pool's member set, and
//! keeps doing so every `upstream.dns_refresh`. A failed lookup keeps the addresses it
//! last gave, so a DNS blip does not empty the pool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Pool;

/// One name to resolve and the weight of every address it gives.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub weight: u32,
}

/// Sources from config: each static entry and the DNS name; `weights` keyed by `host:port`.
pub fn sources(
    static_nodes: &[String],
    dns: Option<&str>,
    weights: &BTreeMap<String, u32>,
) -> Vec<Source> {
    static_nodes
        .iter()
        .map(String::as_str)
        .chain(dns)
        .map(|name| Source {
            name: name.to_owned(),
            weight: weights.get(name).copied().unwrap_or(1),
        })
        .collect()
}

/// Resolves every source once. `last` holds each source's previous answer.
async fn resolve(
    sources: &[Source],
    weights: &BTreeMap<String, u32>,
    last: &mut BTreeMap<String, Vec<SocketAddr>>,
) -> BTreeMap<SocketAddr, u32> {
    let mut members = BTreeMap::new();
    for source in sources {
        match tokio::net::lookup_host(&source.name).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                last.insert(source.name.clone(), addrs);
            }
            Err(e) => {
                warn!(name = %source.name, error = %e, "upstream lookup failed, keeping the last answer");
            }
        }
        for addr in last.get(&source.name).into_iter().flatten() {
            // An address listed by itself in `upstream.weights` overrides its name's weight.
            let weight = weights
                .get(&addr.to_string())
                .copied()
                .unwrap_or(source.weight);
            members.insert(*addr, weight);
        }
    }
    members
}

/// Resolves now, sets the pool's members, and keeps refreshing until `stop`.
pub async fn run(
    pool: Arc<Pool>,
    sources: Vec<Source>,
    weights: BTreeMap<String, u32>,
    refresh: Duration,
    stop: CancellationToken,
) {
    let mut last = BTreeMap::new();
    loop {
        let members = resolve(&sources, &weights, &mut last).await;
        pool.set_members(&members);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
        }
    }
}
