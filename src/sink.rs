//! `satmesh sink`: satmesh's own fake OAP, for tests, demos and benchmarks.
//!
//! It accepts every path, reads every message, and answers an empty message (or echoes
//! the request with `echo`). It counts only what it acknowledged with OK: calls, messages
//! and bytes per method, messages per (service, instance) for segments, logs and meters,
//! meter elements per meter name, messages per `authentication` value, and an order-free
//! digest of the payloads so tests can check bytes arrived unchanged. Faults (slow, failing, refusing) can be set at start
//! and changed at run time through `POST /faults`.
//!
//! It also measures delivery: a segment sent by `satmesh bench` carries its send time in
//! its traceId (see [`crate::load::segment`]). The sink reads field 1 alone, no further
//! decoding, and records arrival minus send time in an HdrHistogram, read with
//! `GET /latency` and cleared with `POST /latency/reset`. Arrival is when the sink read
//! the message off its stream; only acknowledged segments are recorded, as for counts.

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
use hdrhistogram::Histogram;
use hyper::body::Incoming;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::codec::PassThrough;
use crate::load::latency::{self, LatencySummary};
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

struct Counts {
    methods: BTreeMap<String, MethodCount>,
    segments: HashMap<(String, String), u64>,
    logs: HashMap<(String, String), u64>,
    meters: HashMap<(String, String), u64>,
    meter_names: BTreeMap<String, u64>,
    authentication: BTreeMap<String, u64>,
    malformed: u64,
    /// Arrival minus send time of every acknowledged segment that carries a send time.
    latency: Histogram<u64>,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            methods: BTreeMap::new(),
            segments: HashMap::new(),
            logs: HashMap::new(),
            meters: HashMap::new(),
            meter_names: BTreeMap::new(),
            authentication: BTreeMap::new(),
            malformed: 0,
            latency: latency::histogram(),
        }
    }
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

    /// Delivery latency of the segments received since start or the last reset.
    pub fn latency(&self) -> LatencySummary {
        LatencySummary::of(&self.counts.lock().expect("sink lock").latency)
    }

    /// Forgets the delivery latencies recorded so far.
    pub fn reset_latency(&self) {
        self.counts.lock().expect("sink lock").latency.reset();
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

    /// Counts an acknowledged call. `arrived` holds each message's arrival time (Unix
    /// nanoseconds) for payloads whose delivery latency is measured, and is empty otherwise.
    fn record(
        &self,
        path: &str,
        payload: Payload,
        auth: &str,
        messages: &[Bytes],
        arrived: &[u64],
    ) {
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
        for (m, at) in messages.iter().zip(arrived) {
            record_delivery(&mut c.latency, payload, m, *at);
        }
    }
}

/// Whether the sink stamps arrivals of this payload: segments, alone or in collections.
fn measures_delivery(payload: Payload) -> bool {
    matches!(payload, Payload::Segment | Payload::SegmentCollection)
}

/// Records arrival minus send time of each segment in `msg` that carries a send time. A
/// send time after the arrival (clocks apart) counts as 0.
fn record_delivery(h: &mut Histogram<u64>, payload: Payload, msg: &[u8], arrived: u64) {
    let mut one = |segment: &[u8]| {
        if let Some(sent) = crate::load::segment::sent_at(segment) {
            latency::record(h, Duration::from_nanos(arrived.saturating_sub(sent)));
        }
    };
    match payload {
        Payload::Segment => one(msg),
        Payload::SegmentCollection => satmesh_proto::repeated(msg, satmesh_proto::COLLECTION_ITEMS)
            .flatten()
            .for_each(one),
        _ => {}
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
                            sink.record(&path, payload, &auth, std::slice::from_ref(&m), &[]);
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
                        let mut arrived = Vec::new();
                        let stamps = measures_delivery(payload);
                        while let Some(m) = stream.message().await? {
                            if stamps {
                                arrived.push(latency::unix_nanos());
                            }
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
                        sink.record(&path, payload, &auth, &messages, &arrived);
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

async fn get_latency(AxumState(sink): AxumState<Arc<Sink>>) -> Json<LatencySummary> {
    Json(sink.latency())
}

async fn reset_latency(AxumState(sink): AxumState<Arc<Sink>>) -> Json<LatencySummary> {
    sink.reset_latency();
    Json(sink.latency())
}

/// The sink's admin side: `GET /counts`, `GET|POST /faults`, `GET /latency`,
/// `POST /latency/reset`.
pub fn router(sink: Arc<Sink>) -> Router {
    Router::new()
        .route("/counts", get(get_counts))
        .route("/faults", get(get_faults).post(set_faults))
        .route("/latency", get(get_latency))
        .route("/latency/reset", axum::routing::post(reset_latency))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sink)
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
