//! Messages: agent payloads with the published field numbers, and their digest as the
//! sink computes it.

use bytes::Bytes;
use prost::Message;

/// A SegmentObject with the published field numbers and `spans` bytes of padding.
#[derive(Clone, PartialEq, Message)]
pub struct Segment {
    #[prost(string, tag = "1")]
    pub trace_id: String,
    #[prost(string, tag = "2")]
    pub segment_id: String,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub spans: Vec<Vec<u8>>,
    #[prost(string, tag = "4")]
    pub service: String,
    #[prost(string, tag = "5")]
    pub instance: String,
    /// A field the protocol does not define: it must reach the OAP untouched.
    #[prost(string, tag = "99")]
    pub unknown: String,
}

pub fn segment(service: &str, instance: &str, n: usize, pad: usize) -> Bytes {
    Segment {
        trace_id: format!("trace-{n}"),
        segment_id: format!("seg-{n}"),
        spans: vec![vec![(n % 251) as u8; pad]],
        service: service.into(),
        instance: instance.into(),
        unknown: format!("future-field-{n}"),
    }
    .encode_to_vec()
    .into()
}

/// MeterData: service=3, serviceInstance=4, timestamp=5.
#[derive(Clone, PartialEq, Message)]
pub struct Meter {
    #[prost(string, tag = "3")]
    pub service: String,
    #[prost(string, tag = "4")]
    pub instance: String,
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
}

pub fn meter(service: &str, instance: &str, n: usize) -> Bytes {
    Meter {
        service: service.into(),
        instance: instance.into(),
        timestamp: n as i64,
    }
    .encode_to_vec()
    .into()
}

/// LogData: timestamp=1, service=2, serviceInstance=3.
#[derive(Clone, PartialEq, Message)]
pub struct Log {
    #[prost(int64, tag = "1")]
    pub timestamp: i64,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(string, tag = "3")]
    pub instance: String,
}

pub fn log(service: &str, instance: &str, n: usize) -> Bytes {
    Log {
        timestamp: n as i64,
        service: service.into(),
        instance: instance.into(),
    }
    .encode_to_vec()
    .into()
}

pub fn digest(payloads: &[Bytes]) -> u64 {
    payloads
        .iter()
        .fold(0u64, |acc, p| acc.wrapping_add(satmesh::sink::fnv1a(p)))
}
