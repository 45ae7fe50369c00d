//! The protocol table: every gRPC path satmesh carries, its shape, and how it is carried.
//!
//! This is the one place that says which path is synchronous, which is batched, and where
//! its routing key lives. Everything else looks a path up here once per call. The paths,
//! their shapes and payloads are protocol facts from `satmesh_proto::paths`; the policy of
//! each path is satmesh's, decided here by [`policy_of`].

use satmesh_proto::paths::{Answer, PATHS, Path};
pub use satmesh_proto::paths::{Payload, SKYWALKING_PATHS, Shape};

use crate::config::{ConfigError, Route, Routing};

/// How satmesh carries one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Answer the agent once its messages are queued; deliver in batches.
    Async,
    /// Forward now and relay the OAP's answer.
    Sync,
    /// Like `Sync`, but when no OAP answers in time the agent gets an empty `Commands`
    /// ("nothing new") instead of an error that would mark its channel broken.
    Query,
    /// A two-way stream relayed live between the agent and one OAP.
    Relay,
}

/// One gRPC method.
#[derive(Debug)]
pub struct Method {
    /// The full path, `/package.Service/method`.
    pub path: &'static str,
    /// A short protocol name: the metrics label and the key of per-protocol config.
    pub protocol: &'static str,
    pub shape: Shape,
    pub policy: Policy,
    pub payload: Payload,
}

/// Index of a method in [`METHODS`]; cheap to copy and to use as an array index.
pub type MethodId = u16;

/// Reports the agent expects an answer to: forwarded now, and never answered with an
/// empty fallback (the answer of `reportProcesses` carries process ids; a profiling task
/// reported by `reportProfilingTask` must reach an OAP or fail visibly).
const SYNC_REPORTS: [&str; 2] = [
    "/skywalking.v3.EBPFProcessService/reportProcesses",
    "/skywalking.v3.ContinuousProfilingService/reportProfilingTask",
];

/// satmesh's policy for a path: a report (its answer only acknowledges) is queued and
/// batched; a two-way stream is relayed; the other calls whose answer the agent reads are
/// queries, except [`SYNC_REPORTS`].
pub fn policy_of(path: &Path) -> Policy {
    match (path.answer, path.shape) {
        (Answer::Ack, _) => Policy::Async,
        (Answer::Reply, Shape::Bidi) => Policy::Relay,
        (Answer::Reply, _) if SYNC_REPORTS.contains(&path.path) => Policy::Sync,
        (Answer::Reply, _) => Policy::Query,
    }
}

/// Every path of `satmesh_proto::paths::PATHS`, in its order, with satmesh's policy.
pub static METHODS: std::sync::LazyLock<Vec<Method>> = std::sync::LazyLock::new(|| {
    PATHS
        .iter()
        .map(|p| Method {
            path: p.path,
            protocol: p.protocol,
            shape: p.shape,
            policy: policy_of(p),
            payload: p.payload,
        })
        .collect()
});

/// Finds a path in the table.
pub fn lookup(path: &str) -> Option<MethodId> {
    satmesh_proto::paths::find(path).map(|i| i as MethodId)
}

/// The method behind an id from [`lookup`].
pub fn method(id: MethodId) -> &'static Method {
    &METHODS[usize::from(id)]
}

/// The distinct protocol names, in table order.
pub fn protocols() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for m in METHODS.iter() {
        if !names.contains(&m.protocol) {
            names.push(m.protocol);
        }
    }
    names
}

/// How an upstream node is chosen for one method's calls (`routing` in config says why
/// each exists).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoutePolicy {
    /// Every node in turn.
    #[default]
    RoundRobin,
    /// Every node in turn, in proportion to its weight.
    Weighted,
    /// By the service instance of the call's first message, on the tier's shared ring.
    Fixed,
}

impl From<Route> for RoutePolicy {
    fn from(route: Route) -> RoutePolicy {
        match route {
            Route::RoundRobin => RoutePolicy::RoundRobin,
            Route::Weighted => RoutePolicy::Weighted,
            Route::Fixed => RoutePolicy::Fixed,
        }
    }
}

/// The policy of `protocol`: its `routing.protocols` entry, else `fixed` for `meter`
/// (the OAP keeps per-instance state of meter data: rates, increases), else
/// `routing.default`.
pub fn route_policy(routing: &Routing, protocol: &str) -> RoutePolicy {
    match routing.protocols.get(protocol) {
        Some(route) => (*route).into(),
        None if protocol == "meter" => RoutePolicy::Fixed,
        None => routing.default.into(),
    }
}

/// Each method's policy, indexed by [`MethodId`]. Refuses, naming
/// `routing.protocols.NAME`, a protocol the table does not know and `fixed` for a
/// protocol whose messages carry no service and instance.
pub fn route_policies(routing: &Routing) -> Result<Vec<RoutePolicy>, ConfigError> {
    let known = protocols();
    for (protocol, route) in &routing.protocols {
        let key = format!("routing.protocols.{protocol}");
        if !known.contains(&protocol.as_str()) {
            return Err(ConfigError::invalid(
                &key,
                format!("unknown protocol; known: {}", known.join(", ")),
            ));
        }
        let keyed = METHODS
            .iter()
            .filter(|m| m.protocol == protocol)
            .all(|m| m.payload.key_fields().is_some());
        if *route == Route::Fixed && !keyed {
            return Err(ConfigError::invalid(
                &key,
                "fixed needs a service and instance in every message; this protocol's messages carry none",
            ));
        }
    }
    Ok(METHODS
        .iter()
        .map(|m| route_policy(routing, m.protocol))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_found_at_its_index() {
        for (i, m) in METHODS.iter().enumerate() {
            assert_eq!(lookup(m.path), Some(i as MethodId), "{}", m.path);
        }
        assert_eq!(lookup("/skywalking.v3.Nope/collect"), None);
    }

    #[test]
    fn policy_counts_are_the_documented_ones() {
        let count = |p: Policy| METHODS.iter().filter(|m| m.policy == p).count();
        // README, "Policies: which paths are synchronous".
        assert_eq!(count(Policy::Async), 39);
        assert_eq!(count(Policy::Query), 7);
        assert_eq!(count(Policy::Sync), 2);
        assert_eq!(count(Policy::Relay), 2);
        for path in SYNC_REPORTS {
            assert!(lookup(path).is_some(), "{path} is in the table");
        }
    }

    #[test]
    fn shapes_fit_policies() {
        for m in METHODS.iter() {
            match m.policy {
                Policy::Relay => assert_eq!(m.shape, Shape::Bidi, "{}", m.path),
                Policy::Query | Policy::Sync => assert_eq!(m.shape, Shape::Unary, "{}", m.path),
                Policy::Async => assert_ne!(m.shape, Shape::Bidi, "{}", m.path),
            }
        }
    }

    fn routing(protocols: &[(&str, Route)]) -> Routing {
        Routing {
            default: Route::RoundRobin,
            protocols: protocols
                .iter()
                .map(|(name, route)| (name.to_string(), *route))
                .collect(),
        }
    }

    fn policy_at(policies: &[RoutePolicy], path: &str) -> RoutePolicy {
        policies[usize::from(lookup(path).unwrap())]
    }

    #[test]
    fn each_method_gets_its_protocols_policy_and_meter_is_fixed_unless_listed() {
        let segments = "/skywalking.v3.TraceSegmentReportService/collect";
        let meter = "/skywalking.v3.MeterReportService/collect";
        let policies = route_policies(&routing(&[("trace", Route::Weighted)])).unwrap();
        assert_eq!(policies.len(), METHODS.len());
        assert_eq!(policy_at(&policies, segments), RoutePolicy::Weighted);
        assert_eq!(policy_at(&policies, meter), RoutePolicy::Fixed);
        let policies = route_policies(&routing(&[("meter", Route::RoundRobin)])).unwrap();
        assert_eq!(policy_at(&policies, segments), RoutePolicy::RoundRobin);
        assert_eq!(policy_at(&policies, meter), RoutePolicy::RoundRobin);
    }

    #[test]
    fn unknown_protocols_and_impossible_fixed_are_refused_naming_the_key() {
        let e = route_policies(&routing(&[("traces", Route::Weighted)])).unwrap_err();
        assert!(e.to_string().contains("routing.protocols.traces"), "{e}");
        assert!(e.to_string().contains("known: trace"), "{e}");
        let e = route_policies(&routing(&[("event", Route::Fixed)])).unwrap_err();
        assert!(e.to_string().contains("routing.protocols.event"), "{e}");
        assert!(route_policies(&routing(&[("log", Route::Fixed)])).is_ok());
    }
}
