//! Minimal read-only views of the SkyWalking messages satmesh peeks into.
//!
//! satmesh forwards every payload as the bytes the agent sent; it never decodes a whole
//! message and never re-encodes one. The only thing it reads is a routing key (service and
//! service instance) and, for the sink, the elements of a repeated field. The field numbers
//! below are the published ones of apache/skywalking-data-collect-protocol v10.3.0.
//!
//! The scanner walks the protobuf wire format with `prost`'s varint decoder and returns
//! slices of the input: no allocation, no copy, and unknown fields are skipped by length.
//!
//! # Layout
//!
//! - this file: the read-only views (`peek_key`, `repeated`) and where each key lives.
//! - [`paths`]: every gRPC path the OAP serves, its call shape and what its messages carry.
//! - `messages` (feature `messages`): whole messages with prost, for the code that builds
//!   them (self-report, tools, tests, benches).
//! - `codec` (feature `codec`): the pass-through tonic codec and gRPC's framing.

#[cfg(feature = "codec")]
pub mod codec;
#[cfg(feature = "messages")]
pub mod messages;
pub mod paths;

use bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};

/// Where the routing key of one message type lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyFields {
    /// Field number of the `service` string.
    pub service: u32,
    /// Field number of the `serviceInstance` string.
    pub instance: u32,
}

/// `SegmentObject`: traceId=1, traceSegmentId=2, spans=3, service=4, serviceInstance=5.
pub const SEGMENT_OBJECT: KeyFields = KeyFields {
    service: 4,
    instance: 5,
};
/// `MeterData`: singleValue=1 / histogram=2, service=3, serviceInstance=4, timestamp=5.
pub const METER_DATA: KeyFields = KeyFields {
    service: 3,
    instance: 4,
};
/// `LogData`: timestamp=1, service=2, serviceInstance=3, endpoint=4, body=5.
pub const LOG_DATA: KeyFields = KeyFields {
    service: 2,
    instance: 3,
};
/// `InstanceProperties`: service=1, serviceInstance=2, properties=3, layer=4.
pub const INSTANCE_PROPERTIES: KeyFields = KeyFields {
    service: 1,
    instance: 2,
};
/// `InstancePingPkg`: service=1, serviceInstance=2, layer=3.
pub const INSTANCE_PING: KeyFields = KeyFields {
    service: 1,
    instance: 2,
};
/// `JVMMetricCollection` and `CLRMetricCollection`: metrics=1, service=2, serviceInstance=3.
pub const METRIC_COLLECTION: KeyFields = KeyFields {
    service: 2,
    instance: 3,
};

/// `SegmentCollection.segments` and `MeterDataCollection.meterData` are field 1.
pub const COLLECTION_ITEMS: u32 = 1;

/// The message is not valid protobuf wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;

impl std::error::Error for Malformed {}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed protobuf message")
    }
}

/// The routing key of one message, borrowed from its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key<'a> {
    pub service: &'a str,
    pub instance: &'a str,
}

/// One field of a message: its number and, for length-delimited fields, its bytes.
struct Field<'a> {
    number: u32,
    bytes: Option<&'a [u8]>,
}

/// Iterates over the top-level fields of `msg`, skipping scalar values.
struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(msg: &'a [u8]) -> Self {
        Fields {
            rest: msg,
            failed: false,
        }
    }

    fn step(&mut self) -> Result<Option<Field<'a>>, Malformed> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let mut buf = self.rest;
        let (number, wire) = decode_key(&mut buf).map_err(|_| Malformed)?;
        let bytes = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|_| Malformed)?;
                None
            }
            WireType::SixtyFourBit => {
                skip(&mut buf, 8)?;
                None
            }
            WireType::ThirtyTwoBit => {
                skip(&mut buf, 4)?;
                None
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).map_err(|_| Malformed)?)
                    .map_err(|_| Malformed)?;
                let body = buf.get(..len).ok_or(Malformed)?;
                buf.advance(len);
                Some(body)
            }
            // Groups are not used by any SkyWalking message.
            WireType::StartGroup | WireType::EndGroup => return Err(Malformed),
        };
        self.rest = buf;
        Ok(Some(Field { number, bytes }))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let step = self.step().transpose();
        if matches!(step, Some(Err(_))) {
            self.failed = true;
        }
        step
    }
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), Malformed> {
    if buf.len() < n {
        return Err(Malformed);
    }
    buf.advance(n);
    Ok(())
}

/// Reads the service and service instance of one message. Absent fields read as "",
/// as proto3 defines; the last occurrence of a field wins, as protobuf parsers do.
pub fn peek_key(msg: &[u8], fields: KeyFields) -> Result<Key<'_>, Malformed> {
    let mut key = Key::default();
    for field in Fields::new(msg) {
        let field = field?;
        let Some(bytes) = field.bytes else { continue };
        if field.number == fields.service {
            key.service = std::str::from_utf8(bytes).map_err(|_| Malformed)?;
        } else if field.number == fields.instance {
            key.instance = std::str::from_utf8(bytes).map_err(|_| Malformed)?;
        }
    }
    Ok(key)
}

/// The elements of a repeated message field, in order, as byte slices.
pub fn repeated(msg: &[u8], number: u32) -> impl Iterator<Item = Result<&[u8], Malformed>> {
    Fields::new(msg).filter_map(move |field| match field {
        Ok(Field {
            number: n,
            bytes: Some(bytes),
        }) if n == number => Some(Ok(bytes)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// The key of the first element of a collection (`SegmentCollection`, `MeterDataCollection`):
/// satmesh routes a whole collection by its first element, as Satellite does.
pub fn peek_first_key(msg: &[u8], items: KeyFields) -> Result<Option<Key<'_>>, Malformed> {
    match repeated(msg, COLLECTION_ITEMS).next() {
        Some(item) => peek_key(item?, items).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A fuller SegmentObject than satmesh's view, to check unknown fields are skipped.
    #[derive(Clone, PartialEq, Message)]
    struct Segment {
        #[prost(string, tag = "1")]
        trace_id: String,
        #[prost(string, tag = "2")]
        segment_id: String,
        #[prost(bytes = "vec", repeated, tag = "3")]
        spans: Vec<Vec<u8>>,
        #[prost(string, tag = "4")]
        service: String,
        #[prost(string, tag = "5")]
        instance: String,
        #[prost(bool, tag = "6")]
        is_size_limited: bool,
        #[prost(fixed64, tag = "9")]
        extra_fixed: u64,
        #[prost(fixed32, tag = "10")]
        extra_fixed32: u32,
    }

    #[derive(Clone, PartialEq, Message)]
    struct Collection {
        #[prost(message, repeated, tag = "1")]
        items: Vec<Segment>,
    }

    fn segment(service: &str, instance: &str) -> Segment {
        Segment {
            trace_id: "t".into(),
            segment_id: "s".into(),
            spans: vec![vec![7; 4000], vec![1; 3000]],
            service: service.into(),
            instance: instance.into(),
            is_size_limited: true,
            extra_fixed: 42,
            extra_fixed32: 7,
        }
    }

    #[test]
    fn peeks_service_and_instance_past_unknown_fields() {
        let bytes = segment("checkout", "pod-1").encode_to_vec();
        let key = peek_key(&bytes, SEGMENT_OBJECT).unwrap();
        assert_eq!(
            key,
            Key {
                service: "checkout",
                instance: "pod-1"
            }
        );
    }

    #[test]
    fn absent_fields_read_as_empty() {
        let key = peek_key(&[], METER_DATA).unwrap();
        assert_eq!(key, Key::default());
    }

    #[test]
    fn iterates_collection_items() {
        let c = Collection {
            items: vec![segment("a", "1"), segment("b", "2")],
        };
        let bytes = c.encode_to_vec();
        let keys: Vec<_> = repeated(&bytes, COLLECTION_ITEMS)
            .map(|item| {
                peek_key(item.unwrap(), SEGMENT_OBJECT)
                    .unwrap()
                    .service
                    .to_owned()
            })
            .collect();
        assert_eq!(keys, ["a", "b"]);
        let first = peek_first_key(&bytes, SEGMENT_OBJECT).unwrap().unwrap();
        assert_eq!(first.instance, "1");
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = segment("checkout", "pod-1").encode_to_vec();
        for cut in 0..bytes.len() {
            // Every prefix either parses (it ends on a field boundary) or is reported.
            let _ = peek_key(&bytes[..cut], SEGMENT_OBJECT);
        }
        assert_eq!(
            peek_key(&[0x22, 0x05, b'a'], SEGMENT_OBJECT),
            Err(Malformed)
        );
        assert_eq!(peek_key(&[0x23], SEGMENT_OBJECT), Err(Malformed));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert_eq!(
            peek_key(&[0x22, 0x01, 0xff], SEGMENT_OBJECT),
            Err(Malformed)
        );
    }
}
