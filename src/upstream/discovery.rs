//! Discovery: turns `upstream.static` and `upstream.dns` into the pool's member set, and
//! keeps doing so every `upstream.dns_refresh`. A failed lookup keeps the addresses it
//! last gave, so a DNS blip does not empty the pool. The pods `kubernetes` finds join
//! that set whenever they change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Pool, kubernetes};

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
    resolve_with(sources, weights, last, |name| {
        let name = name.to_owned();
        async move { tokio::net::lookup_host(name).await.map(Iterator::collect) }
    })
    .await
}

/// `resolve` with the lookup passed in, so tests can script answers and failures.
async fn resolve_with<F, Fut>(
    sources: &[Source],
    weights: &BTreeMap<String, u32>,
    last: &mut BTreeMap<String, Vec<SocketAddr>>,
    mut lookup: F,
) -> BTreeMap<SocketAddr, u32>
where
    F: FnMut(&str) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let mut members = BTreeMap::new();
    for source in sources {
        match lookup(&source.name).await {
            Ok(addrs) => {
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

/// Resolves now, sets the pool's members (the sources' addresses and the Kubernetes
/// `pods`), and does so again every `refresh` and whenever `pods` changes, until `stop`.
pub async fn run(
    pool: Arc<Pool>,
    sources: Vec<Source>,
    weights: BTreeMap<String, u32>,
    refresh: Duration,
    mut pods: Option<watch::Receiver<BTreeSet<SocketAddr>>>,
    stop: CancellationToken,
) {
    let mut last = BTreeMap::new();
    let mut resolved = resolve(&sources, &weights, &mut last).await;
    let mut next_refresh = tokio::time::Instant::now() + refresh;
    loop {
        let mut members = resolved.clone();
        if let Some(pods) = &mut pods {
            let addresses = pods.borrow_and_update().clone();
            kubernetes::join(&mut members, &addresses, &weights);
        }
        pool.set_members(&members);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_refresh) => {
                resolved = resolve(&sources, &weights, &mut last).await;
                next_refresh = tokio::time::Instant::now() + refresh;
            }
            _ = pods_changed(&mut pods) => {}
        }
    }
}

/// Resolves when the Kubernetes set changes; never when there is none, or its watch is over.
async fn pods_changed(pods: &mut Option<watch::Receiver<BTreeSet<SocketAddr>>>) {
    if let Some(pods) = pods
        && pods.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::io;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn weights(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
        entries.iter().map(|(k, w)| ((*k).to_owned(), *w)).collect()
    }

    fn source(name: &str, weight: u32) -> Source {
        Source {
            name: name.to_owned(),
            weight,
        }
    }

    /// A lookup that gives each name its scripted answers in turn; a name with no
    /// answer left fails, as an unreachable resolver would.
    fn scripted(
        answers: Vec<(&str, Vec<io::Result<Vec<SocketAddr>>>)>,
    ) -> impl FnMut(&str) -> std::future::Ready<io::Result<Vec<SocketAddr>>> + use<> {
        let mut answers: HashMap<String, VecDeque<io::Result<Vec<SocketAddr>>>> = answers
            .into_iter()
            .map(|(name, list)| (name.to_owned(), list.into()))
            .collect();
        move |name| {
            let answer = answers
                .get_mut(name)
                .and_then(VecDeque::pop_front)
                .unwrap_or_else(|| Err(io::Error::other("no scripted answer")));
            std::future::ready(answer)
        }
    }

    fn dns_blip() -> io::Result<Vec<SocketAddr>> {
        Err(io::Error::other("temporary failure in name resolution"))
    }

    #[test]
    fn sources_apply_weights_by_name() {
        let w = weights(&[("b:2", 5), ("oap.svc:11800", 3), ("10.0.0.1:1", 9)]);
        let list = sources(
            &["a:1".to_owned(), "b:2".to_owned()],
            Some("oap.svc:11800"),
            &w,
        );
        let got: Vec<(&str, u32)> = list.iter().map(|s| (s.name.as_str(), s.weight)).collect();
        // Static entries first, then the DNS name; unlisted names weigh 1.
        assert_eq!(got, [("a:1", 1), ("b:2", 5), ("oap.svc:11800", 3)]);
    }

    #[test]
    fn sources_without_dns_are_the_static_list() {
        let list = sources(&["a:1".to_owned()], None, &BTreeMap::new());
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].name.as_str(), list[0].weight), ("a:1", 1));
        assert!(sources(&[], None, &BTreeMap::new()).is_empty());
    }

    #[tokio::test]
    async fn resolves_an_ip_literal_with_the_real_resolver() {
        let mut last = BTreeMap::new();
        let members = resolve(&[source("127.0.0.1:4317", 2)], &BTreeMap::new(), &mut last).await;
        assert_eq!(members, BTreeMap::from([(addr("127.0.0.1:4317"), 2)]));
    }

    #[tokio::test]
    async fn resolves_every_address_of_localhost() {
        let expected: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs("localhost:4318")
            .unwrap()
            .collect();
        let mut last = BTreeMap::new();
        let members = resolve(&[source("localhost:4318", 4)], &BTreeMap::new(), &mut last).await;
        assert!(!members.is_empty());
        for a in &expected {
            assert_eq!(members.get(a), Some(&4), "{a} missing from {members:?}");
        }
        assert!(
            members
                .keys()
                .all(|a| a.ip().is_loopback() && a.port() == 4318)
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_adds_nothing() {
        // No port: fails before any DNS query, so the test needs no network.
        let mut last = BTreeMap::new();
        let members = resolve(
            &[source("no-port-here", 1), source("127.0.0.1:4319", 1)],
            &BTreeMap::new(),
            &mut last,
        )
        .await;
        assert_eq!(members, BTreeMap::from([(addr("127.0.0.1:4319"), 1)]));
        assert!(!last.contains_key("no-port-here"));
    }

    #[tokio::test]
    async fn every_address_of_a_name_gets_its_weight() {
        let a = addr("10.0.0.1:11800");
        let b = addr("10.0.0.2:11800");
        let lookup = scripted(vec![("oap:11800", vec![Ok(vec![a, b])])]);
        let mut last = BTreeMap::new();
        let members = resolve_with(
            &[source("oap:11800", 3)],
            &BTreeMap::new(),
            &mut last,
            lookup,
        )
        .await;
        assert_eq!(members, BTreeMap::from([(a, 3), (b, 3)]));
    }

    #[tokio::test]
    async fn an_address_weight_overrides_its_names_weight() {
        let a = addr("10.0.0.1:11800");
        let b = addr("10.0.0.2:11800");
        let v6 = addr("[fd00::1]:11800");
        let lookup = scripted(vec![("oap:11800", vec![Ok(vec![a, b, v6])])]);
        let w = weights(&[("10.0.0.2:11800", 7), ("[fd00::1]:11800", 9)]);
        let mut last = BTreeMap::new();
        let members = resolve_with(&[source("oap:11800", 2)], &w, &mut last, lookup).await;
        assert_eq!(members, BTreeMap::from([(a, 2), (b, 7), (v6, 9)]));
    }

    #[tokio::test]
    async fn the_real_resolver_applies_an_address_weight() {
        let w = weights(&[("127.0.0.1:4320", 6)]);
        let mut last = BTreeMap::new();
        let members = resolve(&[source("127.0.0.1:4320", 1)], &w, &mut last).await;
        assert_eq!(members, BTreeMap::from([(addr("127.0.0.1:4320"), 6)]));
    }

    #[tokio::test]
    async fn a_failed_lookup_keeps_the_last_good_answer() {
        let a = addr("10.0.0.1:11800");
        let b = addr("10.0.0.2:11800");
        let c = addr("10.0.0.3:11800");
        let mut lookup = scripted(vec![(
            "oap:11800",
            vec![Ok(vec![a, b]), dns_blip(), Ok(vec![c])],
        )]);
        let sources = [source("oap:11800", 2)];
        let w = BTreeMap::new();
        let mut last = BTreeMap::new();

        let first = resolve_with(&sources, &w, &mut last, &mut lookup).await;
        assert_eq!(first, BTreeMap::from([(a, 2), (b, 2)]));

        let during_blip = resolve_with(&sources, &w, &mut last, &mut lookup).await;
        assert_eq!(during_blip, first, "a DNS blip must not empty the pool");

        // The kept answer is not sticky: the next good answer replaces it.
        let after = resolve_with(&sources, &w, &mut last, &mut lookup).await;
        assert_eq!(after, BTreeMap::from([(c, 2)]));
    }

    #[tokio::test]
    async fn one_failing_source_does_not_affect_the_others() {
        let a = addr("10.0.0.1:11800");
        let s = addr("10.0.1.1:11800");
        let mut lookup = scripted(vec![
            ("oap:11800", vec![Ok(vec![a]), dns_blip()]),
            ("static:11800", vec![Ok(vec![s]), Ok(vec![s])]),
            ("never:11800", vec![dns_blip(), dns_blip()]),
        ]);
        let sources = [
            source("static:11800", 1),
            source("never:11800", 1),
            source("oap:11800", 4),
        ];
        let w = BTreeMap::new();
        let mut last = BTreeMap::new();
        let expected = BTreeMap::from([(s, 1), (a, 4)]);
        assert_eq!(
            resolve_with(&sources, &w, &mut last, &mut lookup).await,
            expected
        );
        assert_eq!(
            resolve_with(&sources, &w, &mut last, &mut lookup).await,
            expected
        );
    }
}
