//! The routing-key peek, as `key_of` (src/pipeline/mod.rs) does it on every first message
//! of a call routed `fixed`. Issue 5 target: <= 2 us on an 8 KiB segment.
//!
//! The inputs are encoded with prost from the published field numbers of
//! skywalking-data-collect-protocol v10.3.0 (`satmesh_proto::messages`, not satmesh's
//! 2-field views): a SegmentObject whose service and instance (fields 4 and 5) come after about
//! 8 KiB of spans, so the peek has to skip every span; a MeterData; a MeterDataCollection
//! (`collectBatch`, routed by its first MeterData).
//!
//! `cargo bench -p satmesh-proto --bench peek` (about 10 s).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use satmesh_proto::messages::{
    KeyStringValuePair, Label, MeterData, MeterDataCollection, MeterSingleValue, SegmentObject,
    SegmentReference, SpanObject,
};
use satmesh_proto::{METER_DATA, SEGMENT_OBJECT, peek_first_key, peek_key};

const SERVICE: &str = "mall-order-service";
const INSTANCE: &str = "3f2a9c1e-4e1c-9b7a-0c5d2e8f1a6b@10.244.1.17";

/// One span of a web request as the Java agent reports it: an entry or exit with a few
/// tags, a reference on the entry span.
fn span(id: i32) -> SpanObject {
    let tag = |key: &str, value: String| KeyStringValuePair {
        key: key.into(),
        value,
    };
    SpanObject {
        span_id: id,
        parent_span_id: id - 1,
        start_time: 1_764_000_000_000 + i64::from(id),
        end_time: 1_764_000_000_020 + i64::from(id),
        refs: if id == 0 {
            vec![SegmentReference {
                ref_type: 0,
                trace_id: "a1b2c3d4e5f6.88.17640000000000001".into(),
                parent_trace_segment_id: "f6e5d4c3b2a1.91.17640000000000002".into(),
                parent_span_id: 3,
                parent_service: "mall-gateway".into(),
                parent_service_instance: "gw-0@10.244.0.5".into(),
                parent_endpoint: "GET:/api/orders".into(),
                network_address_used_at_peer: "order-svc:8080".into(),
            }]
        } else {
            Vec::new()
        },
        operation_name: format!("Mysql/JDBC/PreparedStatement/executeQuery#{id}"),
        peer: "mysql-primary.db.svc:3306".into(),
        span_type: 1,
        span_layer: 1,
        component_id: 33,
        is_error: false,
        tags: vec![
            tag("db.type", "Mysql".into()),
            tag("db.instance", "orders".into()),
            tag(
                "db.statement",
                format!("SELECT id, status, total FROM orders WHERE customer_id = ? LIMIT {id}"),
            ),
        ],
        logs: Vec::new(),
        skip_analysis: false,
    }
}

/// A SegmentObject of at least `size` bytes: spans until it is that big.
fn segment(size: usize) -> Vec<u8> {
    let mut segment = SegmentObject {
        trace_id: "a1b2c3d4e5f6.88.17640000000000001".into(),
        trace_segment_id: "0d1e2f3a4b5c.91.17640000000000003".into(),
        spans: Vec::new(),
        service: SERVICE.into(),
        service_instance: INSTANCE.into(),
        is_size_limited: false,
    };
    while segment.encoded_len() < size {
        segment.spans.push(span(segment.spans.len() as i32));
    }
    segment.encode_to_vec()
}

fn meter_data(i: usize, first: bool) -> MeterData {
    MeterData {
        single_value: Some(MeterSingleValue {
            name: format!("instance_jvm_thread_live_count_{i}"),
            labels: vec![Label {
                name: "pool".into(),
                value: "G1 Old Gen".into(),
            }],
            value: 42.0,
        }),
        // The meter protocol sets service and instance on the first MeterData only.
        service: if first { SERVICE.into() } else { String::new() },
        service_instance: if first {
            INSTANCE.into()
        } else {
            String::new()
        },
        timestamp: 1_764_000_000_000,
    }
}

fn peek(c: &mut Criterion) {
    let segment = segment(8 * 1024);
    assert!((8 * 1024..9 * 1024).contains(&segment.len()));
    let meter = meter_data(0, true).encode_to_vec();
    let batch = MeterDataCollection {
        meter_data: (0..20).map(|i| meter_data(i, i == 0)).collect(),
    }
    .encode_to_vec();
    // Every input peeks to the same key, so a broken peek fails here, not silently.
    let want = (SERVICE, INSTANCE);
    let got = peek_key(&segment, SEGMENT_OBJECT).unwrap();
    assert_eq!((got.service, got.instance), want);
    let got = peek_key(&meter, METER_DATA).unwrap();
    assert_eq!((got.service, got.instance), want);
    let got = peek_first_key(&batch, METER_DATA).unwrap().unwrap();
    assert_eq!((got.service, got.instance), want);

    let mut group = c.benchmark_group("peek");
    group
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .nresamples(10_000)
        .throughput(Throughput::Elements(1));
    group.bench_function(format!("segment_{}B", segment.len()), |b| {
        b.iter(|| peek_key(black_box(&segment), SEGMENT_OBJECT).map(|k| k.instance.len()))
    });
    group.bench_function(format!("meter_data_{}B", meter.len()), |b| {
        b.iter(|| peek_key(black_box(&meter), METER_DATA).map(|k| k.instance.len()))
    });
    group.bench_function(format!("meter_collection_{}B", batch.len()), |b| {
        b.iter(|| {
            peek_first_key(black_box(&batch), METER_DATA).map(|k| k.map(|k| k.instance.len()))
        })
    });
    group.finish();
}

criterion_group!(benches, peek);
criterion_main!(benches);
