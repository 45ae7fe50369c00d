use super::*;

const STARTED_MS: i64 = 1_760_000_000_000;

fn decode(bytes: &[u8]) -> SegmentObject {
    SegmentObject::decode(bytes).expect("a valid SegmentObject")
}

#[test]
fn segments_are_the_requested_size_within_two_bytes() {
    for size in [300, 4096, 8192] {
        let t = Template::new("checkout", "checkout-pod-7", size, STARTED_MS);
        let len = t.len();
        assert!(len.abs_diff(size) <= 2, "size {size}: encoded {len}");
        assert_eq!(t.stamp(1, 2).len(), len, "stamping keeps the length");
        assert_eq!(decode(&t.stamp(1, 2)).encoded_len(), len);
    }
    // Every size from the smallest shape up, not just the round ones.
    for size in (300..9000).step_by(37) {
        let len = Template::new("s", "i", size, STARTED_MS).len();
        assert!(len.abs_diff(size) <= 2, "size {size}: encoded {len}");
    }
}

#[test]
fn a_segment_has_real_spans_with_the_entry_span_last() {
    let seg = decode(&Template::new("checkout", "pod-1", 300, STARTED_MS).stamp(5, 6));
    assert_eq!(seg.service, "checkout");
    assert_eq!(seg.service_instance, "pod-1");
    assert!(!seg.is_size_limited);
    assert!(seg.spans.len() >= 2, "{} spans", seg.spans.len());
    let entry = seg.spans.last().unwrap();
    assert_eq!((entry.span_id, entry.parent_span_id), (0, -1));
    assert_eq!(entry.span_type(), SpanType::Entry);
    assert_eq!(entry.span_layer(), SpanLayer::Http);
    assert_eq!(entry.operation_name, "GET:/api/orders/{id}");
    assert!(
        entry
            .tags
            .iter()
            .any(|t| t.key == "http.method" && t.value == "GET")
    );
    assert_eq!(entry.start_time, STARTED_MS);
    let cache = &seg.spans[0];
    assert_eq!((cache.span_id, cache.parent_span_id), (1, 0));
    assert_eq!(cache.span_type(), SpanType::Exit);
    assert_eq!(cache.span_layer(), SpanLayer::Cache);
    assert_eq!(
        (cache.peer.as_str(), cache.component_id),
        ("redis.cache:6379", 30)
    );
    assert!(cache.tags.iter().any(|t| t.key == "cache.cmd"));
    // The next child is a database query.
    let db = child(2, STARTED_MS);
    assert_eq!(db.span_layer(), SpanLayer::Database);
    assert!(db.tags.iter().any(|t| t.key == "db.statement"));
    for child in &seg.spans[..seg.spans.len() - 1] {
        assert!(child.start_time >= entry.start_time && child.end_time <= entry.end_time);
    }
}

#[test]
fn large_segments_have_many_spans_and_padding_tags() {
    let seg = decode(&Template::new("s", "i", 8192, STARTED_MS).stamp(1, 1));
    assert_eq!(seg.spans.len(), MAX_SPANS);
    let ids: Vec<i32> = seg.spans.iter().map(|s| s.span_id).collect();
    let mut want: Vec<i32> = (1..MAX_SPANS as i32).collect();
    want.push(0);
    assert_eq!(ids, want);
    let layers: std::collections::BTreeSet<i32> = seg.spans.iter().map(|s| s.span_layer).collect();
    assert!(
        layers.len() >= 4,
        "database, cache, http and local spans: {layers:?}"
    );
    let pads = seg
        .spans
        .last()
        .unwrap()
        .tags
        .iter()
        .filter(|t| t.key.starts_with("pad."));
    assert!(pads.clone().count() > 1);
    assert!(
        pads.clone()
            .all(|t| t.value.len() <= 2 * PAD_CHUNK + PAD_RESERVE)
    );
}

#[test]
fn a_size_below_the_smallest_shape_gives_the_smallest_shape() {
    let t = Template::new("s", "i", 10, STARTED_MS);
    let seg = decode(&t.stamp(1, 1));
    assert_eq!(seg.spans.len(), 1);
    assert!(seg.spans[0].tags.iter().all(|t| !t.key.starts_with("pad.")));
}

#[test]
fn stamping_writes_both_ids_and_nothing_else() {
    let t = Template::new("checkout", "pod-1", 600, STARTED_MS);
    let sent = 1_760_000_123_456_789_012;
    let stamped = t.stamp(sent, 0xabc);
    let seg = decode(&stamped);
    let trace_id = format!("bench.{sent:020}.{:016x}", 0xabc);
    assert_eq!(seg.trace_id, trace_id);
    assert_eq!(seg.trace_id.len(), TRACE_ID_LEN);
    assert_eq!(seg.trace_segment_id, format!("{trace_id}.0"));
    // Byte for byte what prost encodes for the same segment with those ids.
    let mut want = shaped("checkout", "pod-1", 600, STARTED_MS);
    want.trace_segment_id = format!("{trace_id}.0");
    want.trace_id = trace_id;
    assert_eq!(stamped.as_ref(), want.encode_to_vec().as_slice());
    // Extreme values keep the width.
    let seg = decode(&t.stamp(u64::MAX, u64::MAX));
    assert_eq!(seg.trace_id, format!("bench.{}.ffffffffffffffff", u64::MAX));
    assert_eq!(decode(&t.stamp(0, 0)).trace_id.len(), TRACE_ID_LEN);
}

#[test]
fn the_send_time_reads_back_from_field_one() {
    let t = Template::new("s", "i", 300, STARTED_MS);
    for sent in [0, 1, 1_760_000_123_456_789_012, u64::MAX] {
        assert_eq!(sent_at(&t.stamp(sent, 42)), Some(sent));
    }
}

#[test]
fn other_trace_ids_carry_no_send_time() {
    for id in [
        "",
        "a1b2c3d4e5f6.56.17600001234560001",    // Java agent
        "5f4a1c3e-9b0d-4c1e-8f2a-1b2c3d4e5f60", // Python and Rust agents
        "bench.",
        "bench.123.4",
        "bench.0000000000000000000x.0",
        "bench.00000000000000000001x0",
        "bench.99999999999999999999.0", // above u64::MAX
    ] {
        assert_eq!(sent_unix_nanos(id.as_bytes()), None, "{id:?}");
    }
    assert_eq!(
        sent_unix_nanos(b"bench.00000000000000000042.anything"),
        Some(42)
    );
    // A segment without a traceId, and bytes that are not a segment.
    let plain = SegmentObject {
        service: "s".into(),
        ..SegmentObject::default()
    };
    assert_eq!(sent_at(&plain.encode_to_vec()), None);
    assert_eq!(sent_at(&[0x0a, 0x05, b'b']), None);
}
