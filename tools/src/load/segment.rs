//! Real-shaped trace segments, encoded with prost (`satmesh_proto::messages`: the
//! published field numbers of `language-agent/Tracing.proto` and `common/Common.proto`),
//! and the send time they carry.
//!
//! # Shape
//!
//! A segment is what a Java agent reports for one web request: exit spans (a database
//! query, a cache read, an HTTP call, a local span) finished before the entry span, which
//! comes last, as agents append spans as they finish. Spans are added while they fit in
//! the requested size (at most [`MAX_SPANS`]); the rest is padding in tags of the entry
//! span (`pad.N` keys, SQL-like text values), tuned so the encoded segment is the
//! requested size, give or take a byte or two at varint boundaries. A segment cannot be
//! smaller than its entry span and ids (about 180 bytes with short names).
//!
//! # Send time
//!
//! The traceId is `bench.<send time: Unix nanoseconds, 20 digits>.<sequence: 16 hex
//! digits>` (43 bytes) and the traceSegmentId is the traceId followed by `.0`. The
//! sink reads the send time back with [`sent_at`] from field 1 alone. A [`Template`] is
//! encoded once; each message is a copy with its ids written in place, so stamping a
//! message costs a copy, not an encoding.

use std::io::Write;

use bytes::Bytes;
use prost::Message;
pub use satmesh_proto::messages::{
    KeyStringValuePair, SegmentObject, SpanLayer, SpanObject, SpanType,
};

/// Spans in one segment at most; a larger segment is padded with tags.
pub const MAX_SPANS: usize = 16;
/// Length of a stamped traceId.
pub const TRACE_ID_LEN: usize = 43;
const SEGMENT_ID_LEN: usize = TRACE_ID_LEN + 2;
const TRACE_ID_PREFIX: &[u8] = b"bench.";
/// Largest value of one padding tag.
const PAD_CHUNK: usize = 256;
/// Room kept for the last padding tag, so it can always be tuned to the exact size.
const PAD_RESERVE: usize = 16;

fn tag(key: &str, value: &str) -> KeyStringValuePair {
    KeyStringValuePair {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// SQL-like text of exactly `n` bytes.
fn filler(n: usize) -> String {
    const TEXT: &str = "SELECT id, status, total, currency FROM orders WHERE customer_id = ? AND created_at > ? ORDER BY created_at DESC; ";
    TEXT.chars().cycle().take(n).collect()
}

/// The `i`-th child span (span id `i`, child of the entry span 0), cycling through the
/// exits a web service makes.
fn child(i: i32, started_ms: i64) -> SpanObject {
    let (op, peer, ty, layer, component, tags) = match i % 4 {
        1 => (
            "Jedis/get",
            "redis.cache:6379",
            SpanType::Exit,
            SpanLayer::Cache,
            30, // Jedis
            vec![tag("cache.type", "Redis"), tag("cache.cmd", "GET")],
        ),
        2 => (
            "Mysql/JDBC/PreparedStatement/executeQuery",
            "mysql.orders:3306",
            SpanType::Exit,
            SpanLayer::Database,
            33, // mysql-connector-java
            vec![
                tag("db.type", "Mysql"),
                tag("db.instance", "orders"),
                tag("db.statement", "SELECT * FROM orders WHERE id = ?"),
            ],
        ),
        3 => (
            "/api/inventory/{sku}",
            "inventory:8080",
            SpanType::Exit,
            SpanLayer::Http,
            12, // OKHttp
            vec![
                tag("http.method", "GET"),
                tag("url", "http://inventory:8080/api/inventory/4711"),
            ],
        ),
        _ => (
            "OrderService.price",
            "",
            SpanType::Local,
            SpanLayer::Unknown,
            0,
            vec![],
        ),
    };
    let start = started_ms + i64::from(i);
    SpanObject {
        span_id: i,
        parent_span_id: 0,
        start_time: start,
        end_time: start + 1,
        operation_name: op.to_owned(),
        peer: peer.to_owned(),
        span_type: ty as i32,
        span_layer: layer as i32,
        component_id: component,
        tags,
        ..SpanObject::default()
    }
}

/// The entry span (id 0, no parent), ending after `children` child spans.
fn entry(started_ms: i64, children: i32) -> SpanObject {
    SpanObject {
        span_id: 0,
        parent_span_id: -1,
        start_time: started_ms,
        end_time: started_ms + i64::from(children) + 2,
        operation_name: "GET:/api/orders/{id}".to_owned(),
        span_type: SpanType::Entry as i32,
        span_layer: SpanLayer::Http as i32,
        component_id: 14, // SpringMVC
        tags: vec![tag("http.method", "GET")],
        ..SpanObject::default()
    }
}

/// A segment of about `size` bytes (see the module doc), with placeholder ids of the
/// stamped length.
pub fn shaped(service: &str, instance: &str, size: usize, started_ms: i64) -> SegmentObject {
    let trace_id = "0".repeat(TRACE_ID_LEN);
    let mut seg = SegmentObject {
        trace_segment_id: format!("{trace_id}.0"),
        trace_id,
        spans: vec![entry(started_ms, 0)],
        service: service.to_owned(),
        service_instance: instance.to_owned(),
        is_size_limited: false,
    };
    // Each span costs its length plus a tag byte and a 1-2 byte length.
    for i in 1..MAX_SPANS as i32 {
        let span = child(i, started_ms);
        if seg.encoded_len() + span.encoded_len() + 3 + PAD_RESERVE > size {
            break;
        }
        let at = seg.spans.len() - 1;
        seg.spans.insert(at, span);
    }
    let children = seg.spans.len() as i32 - 1;
    let entry_span = seg.spans.last_mut().expect("the entry span");
    entry_span.end_time = started_ms + i64::from(children) + 2;
    pad(&mut seg, size);
    seg
}

/// Pads the entry span with tags until the segment is `size` bytes (or as close as
/// varint boundaries allow; never shrinks it below its spans).
fn pad(seg: &mut SegmentObject, size: usize) {
    fn tags(seg: &mut SegmentObject) -> &mut Vec<KeyStringValuePair> {
        &mut seg.spans.last_mut().expect("the entry span").tags
    }
    let mut n = 0;
    // Whole chunks while the rest stays above a chunk and the reserve.
    while seg.encoded_len() + 2 * PAD_CHUNK + PAD_RESERVE < size {
        tags(seg).push(tag(&format!("pad.{n}"), &filler(PAD_CHUNK)));
        n += 1;
    }
    if seg.encoded_len() >= size {
        return;
    }
    tags(seg).push(tag(&format!("pad.{n}"), ""));
    if seg.encoded_len() > size {
        // Not even an empty tag fits: a few bytes short is closer.
        tags(seg).pop();
        return;
    }
    // The last tag's value takes what is left; a length crossing a varint boundary can
    // move the total by one more byte, so a few rounds settle it.
    for _ in 0..4 {
        let len = seg.encoded_len();
        let last = tags(seg).last_mut().expect("a padding tag");
        let want = last.value.len() as i64 + size as i64 - len as i64;
        if len == size || want < 0 {
            return;
        }
        last.value = filler(want as usize);
    }
}

/// An encoded segment whose ids are written in place per message.
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
}

/// Where the traceId's bytes start: after field 1's key and one-byte length.
const TRACE_ID_AT: usize = 2;
/// Where the traceSegmentId's bytes start: after the traceId and field 2's key and length.
const SEGMENT_ID_AT: usize = TRACE_ID_AT + TRACE_ID_LEN + 2;

impl Template {
    pub fn new(service: &str, instance: &str, size: usize, started_ms: i64) -> Template {
        let bytes = shaped(service, instance, size, started_ms).encode_to_vec();
        // prost writes fields in tag order: traceId first, then traceSegmentId.
        assert_eq!(
            bytes[..TRACE_ID_AT],
            [0x0a, TRACE_ID_LEN as u8],
            "traceId leads the segment"
        );
        assert_eq!(
            bytes[SEGMENT_ID_AT - 2..SEGMENT_ID_AT],
            [0x12, SEGMENT_ID_LEN as u8],
            "traceSegmentId follows the traceId"
        );
        Template { bytes }
    }

    /// Encoded length of every message stamped from this template.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A copy carrying `sent_unix_nanos` and `seq` in its ids.
    pub fn stamp(&self, sent_unix_nanos: u64, seq: u64) -> Bytes {
        let mut bytes = self.bytes.clone();
        let (id, rest) = bytes[TRACE_ID_AT..].split_at_mut(TRACE_ID_LEN);
        // u64 fits 20 decimal and 16 hex digits: the id is always exactly its length.
        write!(&mut &mut id[..], "bench.{sent_unix_nanos:020}.{seq:016x}")
            .expect("a fixed-width id");
        let segment_id = &mut rest[2..2 + SEGMENT_ID_LEN];
        segment_id[..TRACE_ID_LEN].copy_from_slice(id);
        segment_id[TRACE_ID_LEN..].copy_from_slice(b".0");
        bytes.into()
    }
}

/// The send time a bench traceId carries (`bench.<20 digits>.…`), or None for any other id.
pub fn sent_unix_nanos(trace_id: &[u8]) -> Option<u64> {
    let rest = trace_id.strip_prefix(TRACE_ID_PREFIX)?;
    let digits = rest.get(..20)?;
    if rest.get(20) != Some(&b'.') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The send time of an encoded segment, read from its traceId (field 1) alone.
pub fn sent_at(segment: &[u8]) -> Option<u64> {
    let trace_id = satmesh_proto::repeated(segment, 1).next()?.ok()?;
    sent_unix_nanos(trace_id)
}

#[cfg(test)]
mod tests;
