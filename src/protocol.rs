//! The protocol table: every gRPC path satmesh carries, its shape, and how it is carried.
//!
//! This is the one place that says which path is synchronous, which is batched, and where
//! its routing key lives. Everything else looks a path up here once per call.

use satmesh_proto::KeyFields;

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
}
