//! Messages: agent payloads with the published field numbers, and their digest as the
//! sink computes it.

use bytes::Bytes;
use prost::Message;
use satmesh_proto::messages::{LogData, MeterData, SegmentObject, SpanObject};

/// A SegmentObject (`satmesh_proto::messages`) with one span whose operation name is
/// `pad` bytes of padding, followed by field 99: a field the protocol does not define,
/// which must reach the OAP untouched.
pub fn segment(service: &str, instance: &str, n: usize, pad: usize) -> Bytes {
    let fill = char::from(b'a' + (n % 26) as u8);
    let mut bytes = SegmentObject {
        trace_id: format!("trace-{n}"),
        trace_segment_id: format!("seg-{n}"),
        spans: vec![SpanObject {
            operation_name: std::iter::repeat_n(fill, pad).collect(),
            ..SpanObject::default()
        }],
        service: service.into(),
        service_instance: instance.into(),
        is_size_limited: false,
    }
    .encode_to_vec();
    prost::encoding::string::encode(99, &format!("future-field-{n}"), &mut bytes);
    bytes.into()
}

pub fn meter(service: &str, instance: &str, n: usize) -> Bytes {
    MeterData {
        service: service.into(),
        service_instance: instance.into(),
        timestamp: n as i64,
        ..MeterData::default()
    }
    .encode_to_vec()
    .into()
}

pub fn log(service: &str, instance: &str, n: usize) -> Bytes {
    LogData {
        timestamp: n as i64,
        service: service.into(),
        service_instance: instance.into(),
        ..LogData::default()
    }
    .encode_to_vec()
    .into()
}

pub fn digest(payloads: &[Bytes]) -> u64 {
    payloads.iter().fold(0u64, |acc, p| {
        acc.wrapping_add(satmesh_tools::sink::fnv1a(p))
    })
}
