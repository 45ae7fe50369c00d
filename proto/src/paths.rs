//! Every gRPC path the OAP serves, as plain data: its call shape, what its messages carry
//! and what its answer is. These are facts of the protocol (apache/skywalking-data-collect-
//! protocol v10.3.0, plus the Envoy and Satellite paths the OAP also accepts); how satmesh
//! carries each path (sync, async, relayed) is its own policy, built on this table in
//! satmesh's `protocol` module. The sink of `satmesh-tools` serves the same table.

use crate::KeyFields;

/// How the agent and the OAP talk on one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Unary,
    ClientStream,
    Bidi,
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
        use crate as p;
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

/// What the OAP's answer to a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An acknowledgement of a report (an empty `Commands`, or an empty downstream
    /// message): the agent only learns that its data was taken.
    Ack,
    /// What the agent asked for and reads: commands of a query, the process ids of
    /// `reportProcesses`, the messages of a live two-way stream.
    Reply,
}

/// One gRPC path.
#[derive(Debug)]
pub struct Path {
    /// The full path, `/package.Service/method`.
    pub path: &'static str,
    /// A short name of the protocol the path belongs to (`trace`, `meter`, ...).
    pub protocol: &'static str,
    pub shape: Shape,
    pub payload: Payload,
    pub answer: Answer,
}

macro_rules! p {
    ($path:literal, $protocol:literal, $shape:ident, $payload:ident, $answer:ident) => {
        Path {
            path: $path,
            protocol: $protocol,
            shape: Shape::$shape,
            payload: Payload::$payload,
            answer: Answer::$answer,
        }
    };
}

/// Every method of the SkyWalking data-collect protocol v10.3.0 (45 paths, with the
/// package-less Compat twins), then the Envoy and Satellite paths the OAP also accepts.
#[rustfmt::skip]
pub static PATHS: &[Path] = &[
    p!("/skywalking.v3.TraceSegmentReportService/collect", "trace", ClientStream, Segment, Ack),
    p!("/TraceSegmentReportService/collect", "trace", ClientStream, Segment, Ack),
    p!("/skywalking.v3.TraceSegmentReportService/collectInSync", "trace", Unary, SegmentCollection, Ack),
    p!("/TraceSegmentReportService/collectInSync", "trace", Unary, SegmentCollection, Ack),
    p!("/skywalking.v3.SpanAttachedEventReportService/collect", "span_event", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.LogReportService/collect", "log", ClientStream, Log, Ack),
    p!("/skywalking.v3.MeterReportService/collect", "meter", ClientStream, Meter, Ack),
    p!("/MeterReportService/collect", "meter", ClientStream, Meter, Ack),
    p!("/skywalking.v3.MeterReportService/collectBatch", "meter", ClientStream, MeterCollection, Ack),
    p!("/skywalking.v3.JVMMetricReportService/collect", "jvm", Unary, MetricCollection, Ack),
    p!("/JVMMetricReportService/collect", "jvm", Unary, MetricCollection, Ack),
    p!("/skywalking.v3.CLRMetricReportService/collect", "clr", Unary, MetricCollection, Ack),
    p!("/CLRMetricReportService/collect", "clr", Unary, MetricCollection, Ack),
    p!("/skywalking.v3.ManagementService/reportInstanceProperties", "management", Unary, InstanceProperties, Ack),
    p!("/ManagementService/reportInstanceProperties", "management", Unary, InstanceProperties, Ack),
    p!("/skywalking.v3.ManagementService/keepAlive", "management", Unary, Ping, Ack),
    p!("/ManagementService/keepAlive", "management", Unary, Ping, Ack),
    p!("/skywalking.v3.EventService/collect", "event", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.BrowserPerfService/collectPerfData", "browser", Unary, Opaque, Ack),
    p!("/skywalking.v3.BrowserPerfService/collectWebVitalsPerfData", "browser", Unary, Opaque, Ack),
    p!("/skywalking.v3.BrowserPerfService/collectResourcePerfData", "browser", Unary, Opaque, Ack),
    p!("/skywalking.v3.BrowserPerfService/collectWebInteractionsPerfData", "browser", Unary, Opaque, Ack),
    p!("/BrowserPerfService/collectPerfData", "browser", Unary, Opaque, Ack),
    p!("/skywalking.v3.BrowserPerfService/collectErrorLogs", "browser", ClientStream, Opaque, Ack),
    p!("/BrowserPerfService/collectErrorLogs", "browser", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.ProfileTask/collectSnapshot", "profile", ClientStream, Opaque, Ack),
    p!("/ProfileTask/collectSnapshot", "profile", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.ProfileTask/goProfileReport", "profile", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.ProfileTask/reportTaskFinish", "profile", Unary, Opaque, Ack),
    p!("/ProfileTask/reportTaskFinish", "profile", Unary, Opaque, Ack),
    p!("/skywalking.v3.ProfileTask/getProfileTaskCommands", "profile", Unary, Opaque, Reply),
    p!("/ProfileTask/getProfileTaskCommands", "profile", Unary, Opaque, Reply),
    p!("/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations", "cds", Unary, Opaque, Reply),
    p!("/skywalking.v10.AsyncProfilerTask/getAsyncProfilerTaskCommands", "async_profiler", Unary, Opaque, Reply),
    p!("/skywalking.v10.AsyncProfilerTask/collect", "async_profiler", Bidi, Opaque, Reply),
    p!("/skywalking.v10.PprofTask/getPprofTaskCommands", "pprof", Unary, Opaque, Reply),
    p!("/skywalking.v10.PprofTask/collect", "pprof", Bidi, Opaque, Reply),
    p!("/skywalking.v3.EBPFProcessService/reportProcesses", "ebpf", Unary, Opaque, Reply),
    p!("/skywalking.v3.EBPFProcessService/keepAlive", "ebpf", Unary, Opaque, Ack),
    p!("/skywalking.v3.EBPFProfilingService/queryTasks", "ebpf", Unary, Opaque, Reply),
    p!("/skywalking.v3.EBPFProfilingService/collectProfilingData", "ebpf", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.ContinuousProfilingService/queryPolicies", "ebpf", Unary, Opaque, Reply),
    p!("/skywalking.v3.ContinuousProfilingService/reportProfilingTask", "ebpf", Unary, Opaque, Reply),
    p!("/skywalking.v3.EBPFAccessLogService/collect", "ebpf_access_log", ClientStream, Opaque, Ack),
    p!("/skywalking.v3.ServiceMeshMetricService/collect", "service_mesh", ClientStream, Opaque, Ack),
    p!("/envoy.service.accesslog.v2.AccessLogService/StreamAccessLogs", "envoy_access_log", ClientStream, Opaque, Ack),
    p!("/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs", "envoy_access_log", ClientStream, Opaque, Ack),
    p!("/envoy.service.metrics.v2.MetricsService/StreamMetrics", "envoy_metrics", ClientStream, Opaque, Ack),
    p!("/envoy.service.metrics.v3.MetricsService/StreamMetrics", "envoy_metrics", ClientStream, Opaque, Ack),
    p!("/satellite.envoy.accesslog.v3.SatelliteAccessLogService/StreamAccessLogs", "envoy_access_log", ClientStream, Opaque, Ack),
];

/// Number of SkyWalking data-collect protocol paths at the head of [`PATHS`].
pub const SKYWALKING_PATHS: usize = 45;

/// The index of a path in [`PATHS`].
pub fn find(path: &str) -> Option<usize> {
    use std::collections::HashMap;
    use std::sync::LazyLock;
    static INDEX: LazyLock<HashMap<&'static str, usize>> =
        LazyLock::new(|| PATHS.iter().enumerate().map(|(i, p)| (p.path, i)).collect());
    INDEX.get(path).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_unique_and_found() {
        for (i, p) in PATHS.iter().enumerate() {
            assert_eq!(find(p.path), Some(i), "{}", p.path);
        }
        assert_eq!(find("/skywalking.v3.Nope/collect"), None);
    }

    #[test]
    fn every_skywalking_path_then_envoy_and_satellite() {
        assert_eq!(PATHS.len(), SKYWALKING_PATHS + 5);
        assert!(
            PATHS[..SKYWALKING_PATHS]
                .iter()
                .all(|p| !p.path.starts_with("/envoy") && !p.path.starts_with("/satellite"))
        );
        assert!(
            PATHS[SKYWALKING_PATHS..]
                .iter()
                .all(|p| p.answer == Answer::Ack)
        );
    }

    #[test]
    fn reports_are_never_two_way_and_keyed_payloads_are_reports() {
        for p in PATHS {
            if p.answer == Answer::Ack {
                assert_ne!(p.shape, Shape::Bidi, "{}", p.path);
            }
            if p.payload != Payload::Opaque {
                assert_eq!(p.answer, Answer::Ack, "{}", p.path);
            }
        }
    }
}
