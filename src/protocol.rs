//! The protocol table: every gRPC path satmesh carries, its shape, and how it is carried.
//!
//! This is the one place that says which path is synchronous, which is batched, and where
//! its routing key lives. Everything else looks a path up here once per call. It also
//! turns the user's `routing` choices into each method's [`RoutePolicy`], refusing a
//! choice the table cannot honour.

use satmesh_proto::KeyFields;

use crate::config::{ConfigError, Route, Routing};

/// How the agent and the OAP talk on one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Unary,
    ClientStream,
    Bidi,
}

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

/// What a message on a path carries, for routing keys and the sink's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    Segment,
    SegmentCollection,
    Meter,
    MeterCollection,
    Log,
    InstanceProperties,
    Ping,
    MetricCollection,
    /// satmesh never looks inside.
    Opaque,
}

impl Payload {
    /// Where the routing key of a message lives, and whether the message is a collection
    /// whose first element carries it.
    pub fn key_fields(self) -> Option<(KeyFields, bool)> {
        use satmesh_proto as p;
        Some(match self {
            Payload::Segment => (p::SEGMENT_OBJECT, false),
            Payload::SegmentCollection => (p::SEGMENT_OBJECT, true),
            Payload::Meter => (p::METER_DATA, false),
            Payload::MeterCollection => (p::METER_DATA, true),
            Payload::Log => (p::LOG_DATA, false),
            Payload::InstanceProperties => (p::INSTANCE_PROPERTIES, false),
            Payload::Ping => (p::INSTANCE_PING, false),
            Payload::MetricCollection => (p::METRIC_COLLECTION, false),
            Payload::Opaque => return None,
        })
    }
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

macro_rules! m {
    ($path:literal, $protocol:literal, $shape:ident, $policy:ident, $payload:ident) => {
        Method {
            path: $path,
            protocol: $protocol,
            shape: Shape::$shape,
            policy: Policy::$policy,
            payload: Payload::$payload,
        }
    };
}

/// Every method of the SkyWalking data-collect protocol v10.3.0 (45 paths, with the
/// package-less Compat twins), then the Envoy and Satellite paths the OAP also accepts.
pub static METHODS: &[Method] = &[
    m!(
        "/skywalking.v3.TraceSegmentReportService/collect",
        "trace",
        ClientStream,
        Async,
        Segment
    ),
    m!(
        "/TraceSegmentReportService/collect",
        "trace",
        ClientStream,
        Async,
        Segment
    ),
    m!(
        "/skywalking.v3.TraceSegmentReportService/collectInSync",
        "trace",
        Unary,
        Async,
        SegmentCollection
    ),
    m!(
        "/TraceSegmentReportService/collectInSync",
        "trace",
        Unary,
        Async,
        SegmentCollection
    ),
    m!(
        "/skywalking.v3.SpanAttachedEventReportService/collect",
        "span_event",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.LogReportService/collect",
        "log",
        ClientStream,
        Async,
        Log
    ),
    m!(
        "/skywalking.v3.MeterReportService/collect",
        "meter",
        ClientStream,
        Async,
        Meter
    ),
    m!(
        "/MeterReportService/collect",
        "meter",
        ClientStream,
        Async,
        Meter
    ),
    m!(
        "/skywalking.v3.MeterReportService/collectBatch",
        "meter",
        ClientStream,
        Async,
        MeterCollection
    ),
    m!(
        "/skywalking.v3.JVMMetricReportService/collect",
        "jvm",
        Unary,
        Async,
        MetricCollection
    ),
    m!(
        "/JVMMetricReportService/collect",
        "jvm",
        Unary,
        Async,
        MetricCollection
    ),
    m!(
        "/skywalking.v3.CLRMetricReportService/collect",
        "clr",
        Unary,
        Async,
        MetricCollection
    ),
    m!(
        "/CLRMetricReportService/collect",
        "clr",
        Unary,
        Async,
        MetricCollection
    ),
    m!(
        "/skywalking.v3.ManagementService/reportInstanceProperties",
        "management",
        Unary,
        Async,
        InstanceProperties
    ),
    m!(
        "/ManagementService/reportInstanceProperties",
        "management",
        Unary,
        Async,
        InstanceProperties
    ),
    m!(
        "/skywalking.v3.ManagementService/keepAlive",
        "management",
        Unary,
        Async,
        Ping
    ),
    m!(
        "/ManagementService/keepAlive",
        "management",
        Unary,
        Async,
        Ping
    ),
    m!(
        "/skywalking.v3.EventService/collect",
        "event",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.BrowserPerfService/collectPerfData",
        "browser",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.BrowserPerfService/collectWebVitalsPerfData",
        "browser",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.BrowserPerfService/collectResourcePerfData",
        "browser",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.BrowserPerfService/collectWebInteractionsPerfData",
        "browser",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/BrowserPerfService/collectPerfData",
        "browser",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.BrowserPerfService/collectErrorLogs",
        "browser",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/BrowserPerfService/collectErrorLogs",
        "browser",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.ProfileTask/collectSnapshot",
        "profile",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/ProfileTask/collectSnapshot",
        "profile",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.ProfileTask/goProfileReport",
        "profile",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.ProfileTask/reportTaskFinish",
        "profile",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/ProfileTask/reportTaskFinish",
        "profile",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.ProfileTask/getProfileTaskCommands",
        "profile",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/ProfileTask/getProfileTaskCommands",
        "profile",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations",
        "cds",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/skywalking.v10.AsyncProfilerTask/getAsyncProfilerTaskCommands",
        "async_profiler",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/skywalking.v10.AsyncProfilerTask/collect",
        "async_profiler",
        Bidi,
        Relay,
        Opaque
    ),
    m!(
        "/skywalking.v10.PprofTask/getPprofTaskCommands",
        "pprof",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/skywalking.v10.PprofTask/collect",
        "pprof",
        Bidi,
        Relay,
        Opaque
    ),
    m!(
        "/skywalking.v3.EBPFProcessService/reportProcesses",
        "ebpf",
        Unary,
        Sync,
        Opaque
    ),
    m!(
        "/skywalking.v3.EBPFProcessService/keepAlive",
        "ebpf",
        Unary,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.EBPFProfilingService/queryTasks",
        "ebpf",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/skywalking.v3.EBPFProfilingService/collectProfilingData",
        "ebpf",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.ContinuousProfilingService/queryPolicies",
        "ebpf",
        Unary,
        Query,
        Opaque
    ),
    m!(
        "/skywalking.v3.ContinuousProfilingService/reportProfilingTask",
        "ebpf",
        Unary,
        Sync,
        Opaque
    ),
    m!(
        "/skywalking.v3.EBPFAccessLogService/collect",
        "ebpf_access_log",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/skywalking.v3.ServiceMeshMetricService/collect",
        "service_mesh",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/envoy.service.accesslog.v2.AccessLogService/StreamAccessLogs",
        "envoy_access_log",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs",
        "envoy_access_log",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/envoy.service.metrics.v2.MetricsService/StreamMetrics",
        "envoy_metrics",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/envoy.service.metrics.v3.MetricsService/StreamMetrics",
        "envoy_metrics",
        ClientStream,
        Async,
        Opaque
    ),
    m!(
        "/satellite.envoy.accesslog.v3.SatelliteAccessLogService/StreamAccessLogs",
        "envoy_access_log",
        ClientStream,
        Async,
        Opaque
    ),
];

/// Number of SkyWalking data-collect protocol paths at the head of [`METHODS`].
pub const SKYWALKING_PATHS: usize = 45;

/// Finds a path in the table.
pub fn lookup(path: &str) -> Option<MethodId> {
    use std::collections::HashMap;
    use std::sync::LazyLock;
    static INDEX: LazyLock<HashMap<&'static str, MethodId>> = LazyLock::new(|| {
        METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| (m.path, i as MethodId))
            .collect()
    });
    INDEX.get(path).copied()
}

/// The method behind an id from [`lookup`].
pub fn method(id: MethodId) -> &'static Method {
    &METHODS[usize::from(id)]
}

/// The distinct protocol names, in table order.
pub fn protocols() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for m in METHODS {
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
    fn paths_are_unique_and_found() {
        for (i, m) in METHODS.iter().enumerate() {
            assert_eq!(lookup(m.path), Some(i as MethodId), "{}", m.path);
        }
        assert_eq!(lookup("/skywalking.v3.Nope/collect"), None);
    }

    #[test]
    fn table_has_every_skywalking_path_then_envoy() {
        assert_eq!(METHODS.len(), SKYWALKING_PATHS + 5);
        assert!(
            METHODS[..SKYWALKING_PATHS]
                .iter()
                .all(|m| !m.path.starts_with("/envoy") && !m.path.starts_with("/satellite"))
        );
        assert!(
            METHODS[SKYWALKING_PATHS..]
                .iter()
                .all(|m| m.policy == Policy::Async)
        );
    }

    #[test]
    fn shapes_fit_policies() {
        for m in METHODS {
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

    fn policy_of(policies: &[RoutePolicy], path: &str) -> RoutePolicy {
        policies[usize::from(lookup(path).unwrap())]
    }

    #[test]
    fn each_method_gets_its_protocols_policy_and_meter_is_fixed_unless_listed() {
        let segments = "/skywalking.v3.TraceSegmentReportService/collect";
        let meter = "/skywalking.v3.MeterReportService/collect";
        let policies = route_policies(&routing(&[("trace", Route::Weighted)])).unwrap();
        assert_eq!(policies.len(), METHODS.len());
        assert_eq!(policy_of(&policies, segments), RoutePolicy::Weighted);
        assert_eq!(policy_of(&policies, meter), RoutePolicy::Fixed);
        let policies = route_policies(&routing(&[("meter", Route::RoundRobin)])).unwrap();
        assert_eq!(policy_of(&policies, segments), RoutePolicy::RoundRobin);
        assert_eq!(policy_of(&policies, meter), RoutePolicy::RoundRobin);
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
