//! Kubernetes discovery: the OAP pods behind a label selector, read from the
//! EndpointSlices (discovery.k8s.io/v1) of one namespace and followed with a watch.
//!
//! The ready addresses go out on a `watch` channel; `discovery` joins them with the static
//! and DNS nodes. A failed list or watch keeps the last good set and retries with a
//! backoff, so a blip of the API server does not empty the pool.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{KubernetesPort, KubernetesUpstream};

/// Where a pod finds the namespace of its own service account.
const OWN_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// First wait after a failed list or watch; doubles on each further failure, with jitter.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither in-cluster credentials nor a kubeconfig: not worth retrying.
    #[error(
        "upstream.kubernetes: no Kubernetes credentials (in-cluster service account or kubeconfig)"
    )]
    Client(#[source] kube::Error),
}

/// What to watch: `upstream.kubernetes` with the namespace decided.
#[derive(Clone, Debug)]
pub struct KubernetesSource {
    pub namespace: String,
    pub label_selector: String,
    pub port: KubernetesPort,
}

impl KubernetesSource {
    /// `config`, in `default_namespace` when it names none.
    pub fn new(config: &KubernetesUpstream, default_namespace: &str) -> KubernetesSource {
        KubernetesSource {
            namespace: config
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned()),
            label_selector: config.label_selector.clone(),
            port: config.port.clone(),
        }
    }
}

/// Connects with in-cluster credentials or the kubeconfig and spawns `run` on `tasks`;
/// the receiver holds the ready OAP addresses (empty until the first list completes).
pub async fn spawn(
    config: &KubernetesUpstream,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<watch::Receiver<BTreeSet<SocketAddr>>, Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    // The pod's own namespace first: a kubeconfig mounted in a pod may name another.
    let own = std::fs::read_to_string(OWN_NAMESPACE_FILE)
        .ok()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty());
    let namespace = own.as_deref().unwrap_or(client.default_namespace());
    let source = KubernetesSource::new(config, namespace);
    info!(namespace = %source.namespace, selector = %source.label_selector, "watching kubernetes endpointslices for oap nodes");
    let (tx, rx) = watch::channel(BTreeSet::new());
    tasks.spawn(run(client, source, tx, stop));
    Ok(rx)
}

/// Lists and watches the EndpointSlices of `source` and sends the ready addresses on
/// `tx` whenever they change, until `stop`. Errors are logged and retried after a
/// backoff; `tx` keeps the last good set meanwhile.
pub async fn run(
    client: Client,
    source: KubernetesSource,
    tx: watch::Sender<BTreeSet<SocketAddr>>,
    stop: CancellationToken,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &source.namespace);
    let config = watcher::Config::default().labels(&source.label_selector);
    let mut events = std::pin::pin!(watcher::watcher(api, config));
    let mut slices = Slices::default();
    // Failed attempts since the last event that moved things forward.
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(event)) => {
                if !slices.apply(event) {
                    continue;
                }
                failures = 0;
                let addresses = addresses_from_slices(slices.current.values(), &source.port);
                tx.send_if_modified(|last| {
                    let changed = *last != addresses;
                    if changed {
                        info!(namespace = %source.namespace, nodes = addresses.len(), "kubernetes oap endpoints changed");
                        *last = addresses;
                    }
                    changed
                });
            }
            Some(Err(e)) => {
                failures += 1;
                let wait = super::backoff(failures, RETRY_MIN, RETRY_MAX);
                warn!(namespace = %source.namespace, error = %e, retry_in = ?wait, "kubernetes endpointslice watch failed, keeping the last oap nodes");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            // The watcher retries for ever; it does not end.
            None => return,
        }
    }
}

/// The slices the watcher has told of, by name.
#[derive(Default)]
struct Slices {
    /// The last complete list, with the watch events since.
    current: BTreeMap<String, EndpointSlice>,
    /// A list in progress; it replaces `current` once complete, so a list that fails
    /// half-way changes nothing.
    listing: BTreeMap<String, EndpointSlice>,
}

impl Slices {
    /// Takes one watcher event; true when `current` changed.
    fn apply(&mut self, event: Event<EndpointSlice>) -> bool {
        match event {
            Event::Init => {
                self.listing.clear();
                false
            }
            Event::InitApply(slice) => {
                self.listing.insert(slice.name_any(), slice);
                false
            }
            Event::InitDone => {
                self.current = std::mem::take(&mut self.listing);
                true
            }
            Event::Apply(slice) => {
                self.current.insert(slice.name_any(), slice);
                true
            }
            Event::Delete(slice) => {
                self.current.remove(&slice.name_any());
                true
            }
        }
    }
}

/// The ready endpoint addresses of `slices` with the OAP port: an endpoint counts unless
/// its `conditions.ready` is false (unset means ready, as Kubernetes documents). A slice
/// without the named port gives nothing; FQDN addresses are skipped.
pub fn addresses_from_slices<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: &KubernetesPort,
) -> BTreeSet<SocketAddr> {
    let mut addresses = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice_port(slice, port) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready);
            if ready == Some(false) {
                continue;
            }
            let ips = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok());
            addresses.extend(ips.map(|ip| SocketAddr::new(ip, port)));
        }
    }
    addresses
}

/// The port `spec` means in `slice`: the number itself, or the port of that name.
fn slice_port(slice: &EndpointSlice, spec: &KubernetesPort) -> Option<u16> {
    match spec {
        KubernetesPort::Number(number) => Some(*number),
        KubernetesPort::Name(name) => slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok()),
    }
}

/// Adds the Kubernetes addresses to the static/DNS members: an address those already
/// gave keeps its weight; the others weigh what `upstream.weights` lists for their
/// `ip:port`, else 1.
pub fn join(
    members: &mut BTreeMap<SocketAddr, u32>,
    addresses: &BTreeSet<SocketAddr>,
    weights: &BTreeMap<String, u32>,
) {
    for addr in addresses {
        members
            .entry(*addr)
            .or_insert_with(|| weights.get(&addr.to_string()).copied().unwrap_or(1));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectList;

    use super::*;

    fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// The recorded list: a dual-stack Service `oap` with an IPv4 slice (two ready pods,
    /// one failing its readiness probe, one terminating), an IPv6 slice (one ready pod,
    /// one with no readiness reported) and an empty placeholder slice.
    fn recorded() -> Vec<EndpointSlice> {
        let text = include_str!("../../tests/fixtures/kubernetes/endpointslices-list.json");
        let list: ObjectList<EndpointSlice> = serde_json::from_str(text).unwrap();
        list.items
    }

    fn slice(
        name: &str,
        ports: Option<Vec<(&str, i32)>>,
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        let mut slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(address, ready)| Endpoint {
                    addresses: vec![(*address).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some(name.to_owned()),
                        port: Some(port),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
        slice.metadata.name = Some(name.to_owned());
        slice
    }

    #[test]
    fn the_recorded_list_gives_its_ready_addresses_by_port_name() {
        let got = addresses_from_slices(&recorded(), &KubernetesPort::Name("grpc".into()));
        assert_eq!(
            got,
            addrs(&[
                "10.244.1.17:11800",
                "10.244.2.31:11800",
                "[fd00:10:244:1::11]:11800",
                "[fd00:10:244:2::1f]:11800",
            ])
        );
    }

    #[test]
    fn a_port_number_applies_to_every_slice_and_another_name_picks_its_port() {
        let by_number = addresses_from_slices(&recorded(), &KubernetesPort::Number(11900));
        assert_eq!(by_number.len(), 4);
        assert!(by_number.iter().all(|a| a.port() == 11900));
        let rest = addresses_from_slices(&recorded(), &KubernetesPort::Name("rest".into()));
        assert!(rest.contains(&"10.244.1.17:12800".parse().unwrap()));
        assert!(rest.iter().all(|a| a.port() == 12800));
    }

    #[test]
    fn a_slice_without_the_named_port_gives_nothing() {
        let slices = [
            slice("a", Some(vec![("http", 8080)]), &[("10.0.0.1", Some(true))]),
            slice("b", None, &[("10.0.0.2", Some(true))]),
            slice(
                "c",
                Some(vec![("grpc", 11800)]),
                &[("10.0.0.3", Some(true))],
            ),
        ];
        let got = addresses_from_slices(&slices, &KubernetesPort::Name("grpc".into()));
        assert_eq!(got, addrs(&["10.0.0.3:11800"]));
        let missing = addresses_from_slices(&slices, &KubernetesPort::Name("nope".into()));
        assert!(missing.is_empty());
    }

    #[test]
    fn only_ready_false_excludes_an_endpoint() {
        let mut slices = vec![slice(
            "a",
            None,
            &[
                ("10.0.0.1", Some(true)),
                ("10.0.0.2", Some(false)),
                ("10.0.0.3", None),
            ],
        )];
        // No conditions at all counts as ready too.
        slices[0].endpoints.push(Endpoint {
            addresses: vec!["10.0.0.4".into()],
            ..Default::default()
        });
        let got = addresses_from_slices(&slices, &KubernetesPort::Number(1));
        assert_eq!(got, addrs(&["10.0.0.1:1", "10.0.0.3:1", "10.0.0.4:1"]));
    }

    #[test]
    fn fqdn_and_garbage_addresses_are_skipped() {
        let mut fqdn = slice("a", None, &[("oap-0.oap.skywalking.svc", Some(true))]);
        fqdn.address_type = "FQDN".into();
        let odd = slice(
            "b",
            None,
            &[("not an ip", Some(true)), ("fd00::7", Some(true))],
        );
        let got = addresses_from_slices([&fqdn, &odd], &KubernetesPort::Number(11800));
        assert_eq!(got, addrs(&["[fd00::7]:11800"]));
    }

    #[test]
    fn a_named_port_out_of_range_gives_nothing() {
        let slices = [slice(
            "a",
            Some(vec![("grpc", 70000)]),
            &[("10.0.0.1", Some(true))],
        )];
        assert!(addresses_from_slices(&slices, &KubernetesPort::Name("grpc".into())).is_empty());
    }

    #[test]
    fn a_list_replaces_the_slices_only_once_complete() {
        let mut slices = Slices::default();
        assert!(!slices.apply(Event::Init));
        assert!(!slices.apply(Event::InitApply(slice("a", None, &[]))));
        assert!(
            slices.current.is_empty(),
            "nothing before the list completes"
        );
        assert!(slices.apply(Event::InitDone));
        assert_eq!(slices.current.keys().collect::<Vec<_>>(), ["a"]);

        // A re-list that fails half-way (Init again before InitDone) leaves `current`.
        assert!(!slices.apply(Event::Init));
        assert!(!slices.apply(Event::InitApply(slice("b", None, &[]))));
        assert!(!slices.apply(Event::Init));
        assert_eq!(slices.current.keys().collect::<Vec<_>>(), ["a"]);
        assert!(!slices.apply(Event::InitApply(slice("c", None, &[]))));
        assert!(slices.apply(Event::InitDone));
        assert_eq!(slices.current.keys().collect::<Vec<_>>(), ["c"]);

        assert!(slices.apply(Event::Apply(slice("d", None, &[]))));
        assert!(slices.apply(Event::Delete(slice("c", None, &[]))));
        assert_eq!(slices.current.keys().collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn join_keeps_static_weights_and_weighs_pods_by_address() {
        let mut members = BTreeMap::from([("10.0.0.1:11800".parse().unwrap(), 5)]);
        let weights = BTreeMap::from([
            ("10.0.0.2:11800".to_owned(), 3),
            ("[fd00::1]:11800".to_owned(), 7),
        ]);
        let pods = addrs(&[
            "10.0.0.1:11800",
            "10.0.0.2:11800",
            "10.0.0.3:11800",
            "[fd00::1]:11800",
        ]);
        join(&mut members, &pods, &weights);
        let expected: BTreeMap<SocketAddr, u32> = [
            ("10.0.0.1:11800", 5),
            ("10.0.0.2:11800", 3),
            ("10.0.0.3:11800", 1),
            ("[fd00::1]:11800", 7),
        ]
        .into_iter()
        .map(|(a, w)| (a.parse().unwrap(), w))
        .collect();
        assert_eq!(members, expected);
    }

    #[test]
    fn source_takes_the_default_namespace_only_when_none_is_set() {
        let mut config = KubernetesUpstream {
            namespace: None,
            label_selector: "app=oap".into(),
            port: KubernetesPort::default(),
        };
        assert_eq!(
            KubernetesSource::new(&config, "skywalking").namespace,
            "skywalking"
        );
        config.namespace = Some("oap".into());
        assert_eq!(
            KubernetesSource::new(&config, "skywalking").namespace,
            "oap"
        );
    }
}
