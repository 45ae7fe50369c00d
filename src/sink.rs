//! `satmesh sink`: satmesh's own fake OAP, for tests, demos and benchmarks.
//!
//! It accepts every path, reads every message, and answers an empty message (or echoes
//! the request with `echo`). It counts only what it acknowledged with OK: calls, messages
//! and bytes per method, messages per (service, instance) for segments, logs and meters,
//! meter elements per meter name, messages per `authentication` value, and an order-free
//! digest of the payloads so tests can check bytes arrived unchanged. Faults (slow, failing, refusing) can be set at start
//! and changed at run time through `POST /faults`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State as AxumState;
use axum::routing::get;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::codec::PassThrough;
use crate::protocol::{self, Payload, Shape};

/// Faults the sink plays.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct Faults {
    /// Sleep this long per message received.
    pub delay_per_message_ms: u64,
    /// Fail this fraction of calls (0.0..=1.0) with `fail_code`; they are not counted.
    pub fail_fraction: f64,
    /// gRPC status code number of failed calls (14 = UNAVAILABLE).
    pub fail_code: i32,
    /// Close new connections at once, before the HTTP/2 handshake.
    pub refuse: bool,
    /// Answer sync and relayed calls with the request's bytes instead of an empty message.
    pub echo: bool,
    /// Send a graceful GOAWAY on a connection once it has carried this many calls
    /// (0 = never), as an OAP being restarted or rebalanced does.
    pub goaway_after_calls: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay_per_message_ms: 0,
            fail_fraction: 0.0,
            fail_code: Code::Unavailable as i32,
            refuse: false,
            echo: false,
            goaway_after_calls: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MethodCount {
    pub calls: u64,
    pub messages: u64,
    pub bytes: u64,
    pub failed_calls: u64,
    /// Sum (mod 2^64) of FNV-1a hashes of every acknowledged message.
    pub digest: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct InstanceCount {
    pub service: String,
    pub instance: String,
    pub messages: u64,
}

#[derive(Default)]
struct Counts {
    methods: BTreeMap<String, MethodCount>,
    segments: HashMap<(String, String), u64>,
    logs: HashMap<(String, String), u64>,
    meters: HashMap<(String, String), u64>,
    meter_names: BTreeMap<String, u64>,
    authentication: BTreeMap<String, u64>,
    malformed: u64,
}

/// What `GET /counts` returns.
#[derive(Debug, Serialize)]
pub struct CountsView {
    pub methods: BTreeMap<String, MethodCount>,
    pub segments: Vec<InstanceCount>,
    pub logs: Vec<InstanceCount>,
    pub meters: Vec<InstanceCount>,
    /// MeterData elements per meter name (single value or histogram).
    pub meter_names: BTreeMap<String, u64>,
    pub authentication: BTreeMap<String, u64>,
    pub malformed: u64,
}

/// FNV-1a, 64 bit: a stable hash tests can compute on their side too.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Default)]
pub struct Sink {
    counts: Mutex<Counts>,
    faults: Mutex<Faults>,
}

fn instance_list(map: &HashMap<(String, String), u64>) -> Vec<InstanceCount> {
    let mut list: Vec<InstanceCount> = map
        .iter()
        .map(|((s, i), n)| InstanceCount {
            service: s.clone(),
            instance: i.clone(),
            messages: *n,
        })
        .collect();
    list.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    list
}

impl Sink {
    pub fn new(faults: Faults) -> Arc<Sink> {
        Arc::new(Sink {
            counts: Mutex::default(),
            faults: Mutex::new(faults),
        })
    }

    pub fn faults(&self) -> Faults {
        self.faults.lock().expect("sink lock").clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().expect("sink lock") = faults;
    }

    pub fn counts(&self) -> CountsView {
        let c = self.counts.lock().expect("sink lock");
        CountsView {
            methods: c.methods.clone(),
            segments: instance_list(&c.segments),
            logs: instance_list(&c.logs),
            meters: instance_list(&c.meters),
            meter_names: c.meter_names.clone(),
            authentication: c.authentication.clone(),
            malformed: c.malformed,
        }
    }

    fn fail(&self, path: &str, faults: &Faults) -> Option<Status> {
        if faults.fail_fraction > 0.0 && rand::rng().random_bool(faults.fail_fraction.min(1.0)) {
            let mut c = self.counts.lock().expect("sink lock");
            c.methods.entry(path.to_owned()).or_default().failed_calls += 1;
            return Some(Status::new(
                Code::from_i32(faults.fail_code),
                "sink: injected failure",
            ));
        }
        None
    }

    fn record(&self, path: &str, payload: Payload, auth: &str, messages: &[Bytes]) {
        let mut c = self.counts.lock().expect("sink lock");
        let entry = c.methods.entry(path.to_owned()).or_default();
        entry.calls += 1;
        for m in messages {
            entry.messages += 1;
            entry.bytes += m.len() as u64;
            entry.digest = entry.digest.wrapping_add(fnv1a(m));
        }
        *c.authentication.entry(auth.to_owned()).or_default() += messages.len() as u64;
        for m in messages {
            count_instances(&mut c, payload, m);
            count_meter_names(&mut c.meter_names, payload, m);
        }
    }
}

/// The name of one `MeterData`: field 1 (`name`) of its `singleValue` (1) or `histogram` (2).
fn meter_name(data: &[u8]) -> Option<&str> {
    use satmesh_proto::repeated;
    let value = repeated(data, 1).chain(repeated(data, 2)).next()?.ok()?;
    std::str::from_utf8(repeated(value, 1).next()?.ok()?).ok()
}

fn count_meter_names(names: &mut BTreeMap<String, u64>, payload: Payload, msg: &[u8]) {
    let mut bump = |data: &[u8]| {
        if let Some(name) = meter_name(data) {
            *names.entry(name.to_owned()).or_default() += 1;
        }
    };
    match payload {
        Payload::Meter => bump(msg),
        Payload::MeterCollection => satmesh_proto::repeated(msg, satmesh_proto::COLLECTION_ITEMS)
            .flatten()
            .for_each(bump),
        _ => {}
    }
}

fn count_instances(c: &mut Counts, payload: Payload, msg: &[u8]) {
    use satmesh_proto as p;
    let (fields, collection) = match payload.key_fields() {
        Some(kf) => kf,
        None => return,
    };
    let target = match payload {
        Payload::Segment | Payload::SegmentCollection => &mut c.segments,
        Payload::Log => &mut c.logs,
        Payload::Meter | Payload::MeterCollection => &mut c.meters,
        _ => return,
    };
    let mut bump = |item: &[u8]| match p::peek_key(item, fields) {
        Ok(k) => {
            *target
                .entry((k.service.to_owned(), k.instance.to_owned()))
                .or_default() += 1;
            true
        }
        Err(_) => false,
    };
    let ok = if collection {
        p::repeated(msg, p::COLLECTION_ITEMS).all(|item| item.is_ok_and(&mut bump))
    } else {
        bump(msg)
    };
    if !ok {
        c.malformed += 1;
    }
}

#[derive(Clone)]
struct SinkService {
    sink: Arc<Sink>,
    conn: Arc<crate::frontdoor::ConnInfo>,
    /// Calls started on this connection.
    calls: Arc<std::sync::atomic::AtomicU64>,
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl tower::Service<http::Request<Incoming>> for SinkService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        let sink = self.sink.clone();
        let goaway_after = sink.faults().goaway_after_calls;
        let calls = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if goaway_after > 0 && calls >= goaway_after {
            self.conn.drain.cancel();
        }
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let method = protocol::lookup(&path).map(protocol::method);
            let payload = method.map_or(Payload::Opaque, |m| m.payload);
            // Sync and relayed paths may echo; reports always get an empty answer.
            let echoes = method.is_some_and(|m| m.policy != protocol::Policy::Async);
            let mut grpc = tonic::server::Grpc::new(PassThrough)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let response = if method.is_some_and(|m| m.shape == Shape::Bidi) {
                let svc = tower::service_fn(move |r: Request<Streaming<Bytes>>| {
                    let sink = sink.clone();
                    let path = path.clone();
                    async move {
                        let faults = sink.faults();
                        let auth = auth_of(&r);
                        let answers = r.into_inner().map(move |m| {
                            let m = m?;
                            sink.record(&path, payload, &auth, std::slice::from_ref(&m));
                            Ok(if faults.echo { m } else { Bytes::new() })
                        });
                        Ok::<_, Status>(Response::new(Box::pin(answers) as AnswerStream))
                    }
                });
                grpc.streaming(svc, req).await
            } else {
                let svc = tower::service_fn(move |r: Request<Streaming<Bytes>>| {
                    let sink = sink.clone();
                    let path = path.clone();
                    async move {
                        let faults = sink.faults();
                        let auth = auth_of(&r);
                        let mut stream = r.into_inner();
                        let mut messages = Vec::new();
                        while let Some(m) = stream.message().await? {
                            if faults.delay_per_message_ms > 0 {
                                tokio::time::sleep(Duration::from_millis(
                                    faults.delay_per_message_ms,
                                ))
                                .await;
                            }
                            messages.push(m);
                        }
                        if let Some(status) = sink.fail(&path, &faults) {
                            return Err(status);
                        }
                        sink.record(&path, payload, &auth, &messages);
                        let answer = match messages.first() {
                            Some(first) if faults.echo && echoes => first.clone(),
                            _ => Bytes::new(),
                        };
                        Ok(Response::new(answer))
                    }
                });
                grpc.client_streaming(svc, req).await
            };
            Ok(response)
        })
    }
}

fn auth_of<T>(r: &Request<T>) -> String {
    r.metadata()
        .get("authentication")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Serves the sink's gRPC side until `stop`.
pub async fn serve_grpc(
    sink: Arc<Sink>,
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let connections = crate::frontdoor::Connections::default();
    let settings = crate::frontdoor::H2Settings {
        max_concurrent_streams: 1024,
        stream_window_bytes: 4 * 1024 * 1024,
        connection_window_bytes: 8 * 1024 * 1024,
    };
    let admit = {
        let sink = sink.clone();
        move |_: &crate::frontdoor::ConnInfo| !sink.faults().refuse
    };
    crate::frontdoor::accept::accept_loop(
        listener,
        settings,
        connections.clone(),
        stop,
        admit,
        move |conn| SinkService {
            sink: sink.clone(),
            conn,
            calls: Default::default(),
        },
        |_| {},
    )
    .await;
    connections.drain(Duration::from_secs(1)).await;
}

async fn get_counts(AxumState(sink): AxumState<Arc<Sink>>) -> Json<CountsView> {
    Json(sink.counts())
}

async fn get_faults(AxumState(sink): AxumState<Arc<Sink>>) -> Json<Faults> {
    Json(sink.faults())
}

async fn set_faults(AxumState(sink): AxumState<Arc<Sink>>, Json(f): Json<Faults>) -> Json<Faults> {
    sink.set_faults(f);
    Json(sink.faults())
}

/// The sink's admin side: `GET /counts`, `GET|POST /faults`.
pub fn router(sink: Arc<Sink>) -> Router {
    Router::new()
        .route("/counts", get(get_counts))
        .route("/faults", get(get_faults).post(set_faults))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sink)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    use crate::load::SegmentObject;

    /// `SegmentCollection`: segments=1.
    #[derive(Clone, PartialEq, Message)]
    struct SegmentCollection {
        #[prost(message, repeated, tag = "1")]
        segments: Vec<SegmentObject>,
    }

    /// `LogData`: timestamp=1, service=2, serviceInstance=3, endpoint=4, body=5.
    #[derive(Clone, PartialEq, Message)]
    struct LogData {
        #[prost(int64, tag = "1")]
        timestamp: i64,
        #[prost(string, tag = "2")]
        service: String,
        #[prost(string, tag = "3")]
        service_instance: String,
        #[prost(string, tag = "4")]
        endpoint: String,
        #[prost(bytes = "vec", tag = "5")]
        body: Vec<u8>,
    }

    /// `MeterSingleValue`: name=1, labels=2, value=3.
    #[derive(Clone, PartialEq, Message)]
    struct MeterSingleValue {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(double, tag = "3")]
        value: f64,
    }

    /// `MeterData`: singleValue=1, service=3, serviceInstance=4, timestamp=5.
    #[derive(Clone, PartialEq, Message)]
    struct MeterData {
        #[prost(message, optional, tag = "1")]
        single_value: Option<MeterSingleValue>,
        #[prost(string, tag = "3")]
        service: String,
        #[prost(string, tag = "4")]
        service_instance: String,
        #[prost(int64, tag = "5")]
        timestamp: i64,
    }

    /// `MeterDataCollection`: meterData=1.
    #[derive(Clone, PartialEq, Message)]
    struct MeterDataCollection {
        #[prost(message, repeated, tag = "1")]
        meter_data: Vec<MeterData>,
    }

    fn segment(service: &str, instance: &str) -> SegmentObject {
        SegmentObject {
            trace_id: "trace".into(),
            trace_segment_id: "segment".into(),
            spans: vec![vec![9; 300]],
            service: service.into(),
            service_instance: instance.into(),
        }
    }

    fn log(service: &str, instance: &str) -> LogData {
        LogData {
            timestamp: 1_700_000_000_000,
            service: service.into(),
            service_instance: instance.into(),
            endpoint: "/checkout".into(),
            body: b"hello".to_vec(),
        }
    }

    fn meter(service: &str, instance: &str) -> MeterData {
        MeterData {
            single_value: Some(MeterSingleValue {
                name: "cpu".into(),
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
        sink.record(PATH, Payload::Segment, "token", &messages);
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
        sink.record(PATH, Payload::SegmentCollection, "", &[bytes(&collection)]);
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
        sink.record(PATH, Payload::Log, "", &messages);
        let c = sink.counts();
        assert_eq!(list(&c.logs), [("api", "a-1", 1), ("web", "w-1", 1)]);
        assert!(c.segments.is_empty() && c.meters.is_empty());
    }

    #[test]
    fn counts_meters_and_each_meter_of_a_collection() {
        let sink = Sink::new(Faults::default());
        sink.record(PATH, Payload::Meter, "", &[bytes(&meter("m", "i-1"))]);
        let collection = MeterDataCollection {
            meter_data: vec![meter("m", "i-1"), meter("m", "i-2"), meter("n", "i-1")],
        };
        sink.record(PATH, Payload::MeterCollection, "", &[bytes(&collection)]);
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
        sink.record(PATH, Payload::Opaque, "secret", &[a.clone(), b.clone()]);
        sink.record(PATH, Payload::Opaque, "", &[]);
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
        );
        sink.record(
            PATH,
            Payload::MeterCollection,
            "",
            &[Bytes::from_static(&[0xff])],
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
}
