use bytes::Bytes;
use prost::Message;
use satmesh_proto::messages::{
    LogData, LogDataBody, MeterData, MeterDataCollection, MeterSingleValue, SegmentCollection,
    SegmentObject, TextLog,
};

use super::*;

fn segment(service: &str, instance: &str) -> SegmentObject {
    crate::load::segment::shaped(service, instance, 300, 1_760_000_000_000)
}

fn log(service: &str, instance: &str) -> LogData {
    LogData {
        timestamp: 1_700_000_000_000,
        service: service.into(),
        service_instance: instance.into(),
        endpoint: "/checkout".into(),
        body: Some(LogDataBody {
            r#type: "text".into(),
            text: Some(TextLog {
                text: "hello".into(),
            }),
        }),
        layer: String::new(),
    }
}

fn meter(service: &str, instance: &str) -> MeterData {
    MeterData {
        single_value: Some(MeterSingleValue {
            name: "cpu".into(),
            labels: vec![],
            value: 0.5,
        }),
        service: service.into(),
        service_instance: instance.into(),
        timestamp: 1_700_000_000_000,
    }
}

fn bytes(m: &impl Message) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// (service, instance, messages), sorted as `counts()` sorts them.
fn list(l: &[InstanceCount]) -> Vec<(&str, &str, u64)> {
    l.iter()
        .map(|c| (c.service.as_str(), c.instance.as_str(), c.messages))
        .collect()
}

const PATH: &str = "/skywalking.v3.Test/collect";

#[test]
fn fnv1a_matches_published_vectors() {
    // From the FNV reference test suite (64-bit FNV-1a).
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"b"), 0xaf63_df4c_8601_f1a5);
    assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn counts_segments_per_service_and_instance() {
    let sink = Sink::new(Faults::default());
    let messages = [
        bytes(&segment("checkout", "pod-1")),
        bytes(&segment("checkout", "pod-2")),
        bytes(&segment("checkout", "pod-1")),
    ];
    sink.record(PATH, Payload::Segment, "token", &messages, &[]);
    let c = sink.counts();
    assert_eq!(
        list(&c.segments),
        [("checkout", "pod-1", 2), ("checkout", "pod-2", 1)]
    );
    assert!(c.logs.is_empty() && c.meters.is_empty());
    assert_eq!(c.malformed, 0);
}

#[test]
fn counts_each_segment_of_a_collection() {
    let sink = Sink::new(Faults::default());
    let collection = SegmentCollection {
        segments: vec![
            segment("a", "1"),
            segment("b", "1"),
            segment("a", "1"),
            segment("a", "2"),
        ],
    };
    sink.record(
        PATH,
        Payload::SegmentCollection,
        "",
        &[bytes(&collection)],
        &[],
    );
    let c = sink.counts();
    assert_eq!(
        list(&c.segments),
        [("a", "1", 2), ("a", "2", 1), ("b", "1", 1)]
    );
    // The method counts the collection as one message.
    assert_eq!(c.methods[PATH].messages, 1);
}

#[test]
fn counts_logs_by_their_own_field_numbers() {
    let sink = Sink::new(Faults::default());
    let messages = [bytes(&log("web", "w-1")), bytes(&log("api", "a-1"))];
    sink.record(PATH, Payload::Log, "", &messages, &[]);
    let c = sink.counts();
    assert_eq!(list(&c.logs), [("api", "a-1", 1), ("web", "w-1", 1)]);
    assert!(c.segments.is_empty() && c.meters.is_empty());
}

#[test]
fn counts_meters_and_each_meter_of_a_collection() {
    let sink = Sink::new(Faults::default());
    sink.record(PATH, Payload::Meter, "", &[bytes(&meter("m", "i-1"))], &[]);
    let collection = MeterDataCollection {
        meter_data: vec![meter("m", "i-1"), meter("m", "i-2"), meter("n", "i-1")],
    };
    sink.record(
        PATH,
        Payload::MeterCollection,
        "",
        &[bytes(&collection)],
        &[],
    );
    let c = sink.counts();
    assert_eq!(
        list(&c.meters),
        [("m", "i-1", 2), ("m", "i-2", 1), ("n", "i-1", 1)]
    );
    assert_eq!(c.meter_names, BTreeMap::from([("cpu".to_owned(), 4)]));
    assert!(c.segments.is_empty() && c.logs.is_empty());
    assert_eq!(c.malformed, 0);
}

#[test]
fn record_counts_calls_messages_bytes_digest_and_authentication() {
    let sink = Sink::new(Faults::default());
    let a = bytes(&segment("s", "i"));
    let b = Bytes::from_static(b"opaque bytes");
    sink.record(
        PATH,
        Payload::Opaque,
        "secret",
        &[a.clone(), b.clone()],
        &[],
    );
    sink.record(PATH, Payload::Opaque, "", &[], &[]);
    let c = sink.counts();
    let m = &c.methods[PATH];
    assert_eq!((m.calls, m.messages), (2, 2));
    assert_eq!(m.bytes, (a.len() + b.len()) as u64);
    assert_eq!(m.digest, fnv1a(&a).wrapping_add(fnv1a(&b)));
    assert_eq!(m.failed_calls, 0);
    assert_eq!(c.authentication.get("secret"), Some(&2));
    assert_eq!(c.authentication.get(""), Some(&0));
    // Opaque payloads are never looked into.
    assert!(c.segments.is_empty());
    assert_eq!(c.malformed, 0);
}

#[test]
fn malformed_messages_are_counted_not_fatal() {
    let sink = Sink::new(Faults::default());
    let truncated = Bytes::from_static(&[0x22, 0x05, b'a']); // service: 5 bytes, 1 given
    let group = Bytes::from_static(&[0x23]); // start-group wire type
    // Invalid UTF-8 in each payload's own service field (4, 2 and 3).
    for (payload, service_tag) in [
        (Payload::Segment, 0x22),
        (Payload::Log, 0x12),
        (Payload::Meter, 0x1a),
    ] {
        let bad_utf8 = Bytes::from(vec![service_tag, 0x01, 0xff]);
        sink.record(
            PATH,
            payload,
            "",
            &[truncated.clone(), bad_utf8, group.clone()],
            &[],
        );
    }
    let c = sink.counts();
    assert_eq!(c.malformed, 9);
    assert!(c.segments.is_empty() && c.logs.is_empty() && c.meters.is_empty());
    // Malformed messages were still acknowledged, so the method counts them.
    assert_eq!(c.methods[PATH].messages, 9);
}

#[test]
fn a_malformed_collection_is_counted_once() {
    let sink = Sink::new(Faults::default());
    // A collection whose element is not a valid segment.
    let bad_item = Bytes::from_static(&[0x0a, 0x03, 0x22, 0x05, b'a']);
    // A collection cut in the middle of its element.
    let mut cut = bytes(&SegmentCollection {
        segments: vec![segment("a", "1")],
    })
    .to_vec();
    cut.truncate(cut.len() - 1);
    sink.record(
        PATH,
        Payload::SegmentCollection,
        "",
        &[bad_item, Bytes::from(cut)],
        &[],
    );
    sink.record(
        PATH,
        Payload::MeterCollection,
        "",
        &[Bytes::from_static(&[0xff])],
        &[],
    );
    let c = sink.counts();
    assert_eq!(c.malformed, 3);
    assert!(c.segments.is_empty() && c.meters.is_empty());
}

#[test]
fn fail_always_fails_at_fraction_one() {
    let sink = Sink::new(Faults::default());
    let faults = Faults {
        fail_fraction: 1.0,
        fail_code: 14,
        ..Faults::default()
    };
    for _ in 0..200 {
        let status = sink.fail(PATH, &faults).expect("fraction 1.0 always fails");
        assert_eq!(status.code(), Code::Unavailable);
    }
    let c = sink.counts();
    assert_eq!(c.methods[PATH].failed_calls, 200);
    // Failed calls are not acknowledged, so nothing else is counted.
    assert_eq!((c.methods[PATH].calls, c.methods[PATH].messages), (0, 0));
}

#[test]
fn fail_uses_the_configured_code_and_caps_the_fraction() {
    let sink = Sink::new(Faults::default());
    let faults = Faults {
        fail_fraction: 7.0,
        fail_code: 3,
        ..Faults::default()
    };
    let status = sink
        .fail(PATH, &faults)
        .expect("a fraction above 1 always fails");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[test]
fn fail_never_fails_at_fraction_zero() {
    let sink = Sink::new(Faults::default());
    for fraction in [0.0, -1.0, f64::NAN] {
        let faults = Faults {
            fail_fraction: fraction,
            fail_code: 14,
            ..Faults::default()
        };
        for _ in 0..200 {
            assert!(sink.fail(PATH, &faults).is_none(), "fraction {fraction}");
        }
    }
    assert!(!sink.counts().methods.contains_key(PATH));
}

#[test]
fn faults_can_be_changed_at_run_time() {
    let sink = Sink::new(Faults {
        echo: true,
        ..Faults::default()
    });
    assert!(sink.faults().echo);
    sink.set_faults(Faults {
        refuse: true,
        ..Faults::default()
    });
    let f = sink.faults();
    assert!(f.refuse && !f.echo);
}

const SENT: u64 = 1_760_000_000_000_000_000;

fn stamped(seq: u64) -> Bytes {
    crate::load::segment::Template::new("s", "i", 300, 1_760_000_000_000).stamp(SENT, seq)
}

#[test]
fn records_the_delivery_latency_of_stamped_segments() {
    let sink = Sink::new(Faults::default());
    let ms = 1_000_000;
    // Two stamped segments, and one a real agent sent (no send time in its traceId).
    let messages = [stamped(1), stamped(2), bytes(&segment("s", "i"))];
    sink.record(
        PATH,
        Payload::Segment,
        "",
        &messages,
        &[SENT + 2 * ms, SENT + 4 * ms, SENT + 9 * ms],
    );
    let l = sink.latency();
    assert_eq!(l.count, 2);
    assert!(l.percentiles.p50_us.abs_diff(2_000) <= 2, "{l:?}");
    assert!(l.percentiles.max_us.abs_diff(4_000) <= 4, "{l:?}");
    // The segments are counted whatever their traceId.
    assert_eq!(list(&sink.counts().segments), [("s", "i", 3)]);
}

#[test]
fn records_each_segment_of_a_collection_and_clamps_skew_to_zero() {
    let sink = Sink::new(Faults::default());
    let collection = [stamped(1), stamped(2), stamped(3)]
        .iter()
        .fold(Vec::new(), |mut out, s| {
            out.push(0x0a); // segments = 1, length-delimited
            prost::encoding::encode_varint(s.len() as u64, &mut out);
            out.extend_from_slice(s);
            out
        });
    // Arrived before it was sent: the clocks disagree, counted as 0.
    sink.record(
        PATH,
        Payload::SegmentCollection,
        "",
        &[Bytes::from(collection)],
        &[SENT - 5],
    );
    let l = sink.latency();
    assert_eq!((l.count, l.percentiles.max_us), (3, 0));
}

#[test]
fn only_segments_with_arrival_times_are_measured_and_reset_clears() {
    let sink = Sink::new(Faults::default());
    sink.record(PATH, Payload::Segment, "", &[stamped(1)], &[]);
    sink.record(PATH, Payload::Opaque, "", &[stamped(2)], &[SENT + 1]);
    sink.record(PATH, Payload::Log, "", &[stamped(3)], &[SENT + 1]);
    assert_eq!(sink.latency().count, 0);
    sink.record(PATH, Payload::Segment, "", &[stamped(4)], &[SENT + 1_000]);
    assert_eq!(sink.latency().count, 1);
    sink.reset_latency();
    assert_eq!(sink.latency(), LatencySummary::default());
    assert!(measures_delivery(Payload::Segment) && measures_delivery(Payload::SegmentCollection));
    assert!(!measures_delivery(Payload::Meter) && !measures_delivery(Payload::Opaque));
}
