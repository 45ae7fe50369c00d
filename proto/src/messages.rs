//! Whole SkyWalking messages, for the code that builds them: the self-report's meters,
//! `satmesh-tools` (the load generator's segments, meters and pings), tests and benches.
//! Behind the `messages` feature; satmesh's routing never decodes a whole message (it
//! uses the read-only views of the crate root).
//!
//! Declared with prost from the published field numbers of
//! apache/skywalking-data-collect-protocol v10.3.0 (`common/Common.proto`,
//! `language-agent/Tracing.proto`, `language-agent/Meter.proto`, `logging/Logging.proto`,
//! `management/Management.proto`). Only the fields something here sets are declared; a
//! field left out is a number nobody writes, and prost skips it when decoding. Each
//! message's doc lists the fields it leaves out.

use prost::Message;

/// `KeyStringValuePair` (Common.proto): key=1, value=2.
#[derive(Clone, PartialEq, Message)]
pub struct KeyStringValuePair {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `SpanType`: the role of a span in the RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum SpanType {
    Entry = 0,
    Exit = 1,
    Local = 2,
}

/// `SpanLayer`: the tech stack of a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum SpanLayer {
    Unknown = 0,
    Database = 1,
    RpcFramework = 2,
    Http = 3,
    Mq = 4,
    Cache = 5,
    Faas = 6,
}

/// `RefType`: how a segment continues its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum RefType {
    CrossProcess = 0,
    CrossThread = 1,
}

/// `SegmentReference`: refType=1, traceId=2, parentTraceSegmentId=3, parentSpanId=4,
/// parentService=5, parentServiceInstance=6, parentEndpoint=7,
/// networkAddressUsedAtPeer=8.
#[derive(Clone, PartialEq, Message)]
pub struct SegmentReference {
    #[prost(enumeration = "RefType", tag = "1")]
    pub ref_type: i32,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub parent_trace_segment_id: String,
    #[prost(int32, tag = "4")]
    pub parent_span_id: i32,
    #[prost(string, tag = "5")]
    pub parent_service: String,
    #[prost(string, tag = "6")]
    pub parent_service_instance: String,
    #[prost(string, tag = "7")]
    pub parent_endpoint: String,
    #[prost(string, tag = "8")]
    pub network_address_used_at_peer: String,
}

/// `Log` of a span: time=1 (Unix milliseconds), data=2.
#[derive(Clone, PartialEq, Message)]
pub struct Log {
    #[prost(int64, tag = "1")]
    pub time: i64,
    #[prost(message, repeated, tag = "2")]
    pub data: Vec<KeyStringValuePair>,
}

/// `SpanObject`: spanId=1, parentSpanId=2, startTime=3, endTime=4, refs=5,
/// operationName=6, peer=7, spanType=8, spanLayer=9, componentId=10, isError=11,
/// tags=12, logs=13, skipAnalysis=14. Times are Unix milliseconds. Left out:
/// attachedEvents=15.
#[derive(Clone, PartialEq, Message)]
pub struct SpanObject {
    #[prost(int32, tag = "1")]
    pub span_id: i32,
    #[prost(int32, tag = "2")]
    pub parent_span_id: i32,
    #[prost(int64, tag = "3")]
    pub start_time: i64,
    #[prost(int64, tag = "4")]
    pub end_time: i64,
    #[prost(message, repeated, tag = "5")]
    pub refs: Vec<SegmentReference>,
    #[prost(string, tag = "6")]
    pub operation_name: String,
    #[prost(string, tag = "7")]
    pub peer: String,
    #[prost(enumeration = "SpanType", tag = "8")]
    pub span_type: i32,
    #[prost(enumeration = "SpanLayer", tag = "9")]
    pub span_layer: i32,
    #[prost(int32, tag = "10")]
    pub component_id: i32,
    #[prost(bool, tag = "11")]
    pub is_error: bool,
    #[prost(message, repeated, tag = "12")]
    pub tags: Vec<KeyStringValuePair>,
    #[prost(message, repeated, tag = "13")]
    pub logs: Vec<Log>,
    #[prost(bool, tag = "14")]
    pub skip_analysis: bool,
}

/// `SegmentObject`: traceId=1, traceSegmentId=2, spans=3, service=4, serviceInstance=5,
/// isSizeLimited=6.
#[derive(Clone, PartialEq, Message)]
pub struct SegmentObject {
    #[prost(string, tag = "1")]
    pub trace_id: String,
    #[prost(string, tag = "2")]
    pub trace_segment_id: String,
    #[prost(message, repeated, tag = "3")]
    pub spans: Vec<SpanObject>,
    #[prost(string, tag = "4")]
    pub service: String,
    #[prost(string, tag = "5")]
    pub service_instance: String,
    #[prost(bool, tag = "6")]
    pub is_size_limited: bool,
}

/// `SegmentCollection` (`collectInSync`): segments=1.
#[derive(Clone, PartialEq, Message)]
pub struct SegmentCollection {
    #[prost(message, repeated, tag = "1")]
    pub segments: Vec<SegmentObject>,
}

/// `Label` of Meter.proto: name=1, value=2.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `MeterSingleValue`: name=1, labels=2, value=3.
#[derive(Clone, PartialEq, Message)]
pub struct MeterSingleValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "3")]
    pub value: f64,
}

/// `MeterData`: singleValue=1 / histogram=2 (a oneof), service=3, serviceInstance=4,
/// timestamp=5 (milliseconds). Left out: histogram (nothing here sends one; a oneof
/// member is encoded like an optional field, so `single_value` is one).
#[derive(Clone, PartialEq, Message)]
pub struct MeterData {
    #[prost(message, optional, tag = "1")]
    pub single_value: Option<MeterSingleValue>,
    #[prost(string, tag = "3")]
    pub service: String,
    #[prost(string, tag = "4")]
    pub service_instance: String,
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
}

/// `MeterDataCollection` (`collectBatch`): meterData=1.
#[derive(Clone, PartialEq, Message)]
pub struct MeterDataCollection {
    #[prost(message, repeated, tag = "1")]
    pub meter_data: Vec<MeterData>,
}

/// `TextLog`: text=1.
#[derive(Clone, PartialEq, Message)]
pub struct TextLog {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// `LogDataBody`: type=1, then one of text=2, json=3, yaml=4. Left out: json and yaml.
#[derive(Clone, PartialEq, Message)]
pub struct LogDataBody {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(message, optional, tag = "2")]
    pub text: Option<TextLog>,
}

/// `LogData`: timestamp=1 (milliseconds), service=2, serviceInstance=3, endpoint=4,
/// body=5, layer=8. Left out: traceContext=6, tags=7.
#[derive(Clone, PartialEq, Message)]
pub struct LogData {
    #[prost(int64, tag = "1")]
    pub timestamp: i64,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(string, tag = "3")]
    pub service_instance: String,
    #[prost(string, tag = "4")]
    pub endpoint: String,
    #[prost(message, optional, tag = "5")]
    pub body: Option<LogDataBody>,
    #[prost(string, tag = "8")]
    pub layer: String,
}

/// `InstancePingPkg` (`keepAlive`): service=1, serviceInstance=2, layer=3.
#[derive(Clone, PartialEq, Message)]
pub struct InstancePingPkg {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub service_instance: String,
    /// Empty: the OAP reads it as `GENERAL`, as it does for agents that do not set it.
    #[prost(string, tag = "3")]
    pub layer: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        INSTANCE_PING, KeyFields, LOG_DATA, METER_DATA, SEGMENT_OBJECT, peek_first_key, peek_key,
    };

    fn key(bytes: &[u8], fields: KeyFields) -> (String, String) {
        let k = peek_key(bytes, fields).unwrap();
        (k.service.to_owned(), k.instance.to_owned())
    }

    /// The views of the crate root and these declarations agree on where the keys are.
    #[test]
    fn the_views_read_the_keys_these_messages_write() {
        let segment = SegmentObject {
            trace_id: "t".into(),
            spans: vec![SpanObject {
                operation_name: "GET:/".into(),
                ..SpanObject::default()
            }],
            service: "svc".into(),
            service_instance: "inst".into(),
            ..SegmentObject::default()
        };
        assert_eq!(
            key(&segment.encode_to_vec(), SEGMENT_OBJECT),
            ("svc".into(), "inst".into())
        );
        let collection = SegmentCollection {
            segments: vec![segment],
        };
        let bytes = collection.encode_to_vec();
        let first = peek_first_key(&bytes, SEGMENT_OBJECT).unwrap();
        assert_eq!(first.map(|k| k.instance), Some("inst"));

        let meter = MeterData {
            service: "svc".into(),
            service_instance: "inst".into(),
            ..MeterData::default()
        };
        assert_eq!(
            key(&meter.encode_to_vec(), METER_DATA),
            ("svc".into(), "inst".into())
        );

        let log = LogData {
            service: "svc".into(),
            service_instance: "inst".into(),
            body: Some(LogDataBody {
                r#type: "text".into(),
                text: Some(TextLog { text: "hi".into() }),
            }),
            ..LogData::default()
        };
        assert_eq!(
            key(&log.encode_to_vec(), LOG_DATA),
            ("svc".into(), "inst".into())
        );

        let ping = InstancePingPkg {
            service: "svc".into(),
            service_instance: "inst".into(),
            layer: String::new(),
        };
        assert_eq!(
            key(&ping.encode_to_vec(), INSTANCE_PING),
            ("svc".into(), "inst".into())
        );
    }
}
