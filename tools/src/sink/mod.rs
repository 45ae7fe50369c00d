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
//!
//! # Layout
//!
//! - this file: the faults, the counts and what `GET /counts` shows.
//! - `service`: one connection's gRPC service: reads every call, plays the faults.
//! - [`server`]: the gRPC accept loop (its own, on hyper) and the admin HTTP server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::RngExt;
use satmesh_proto::paths::Payload;
use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

use crate::load::latency::{self, LatencySummary};

mod linger;
pub mod server;
mod service;

pub use server::{router, serve_admin, serve_grpc};

/// Faults the sink plays: set by `satmesh sink`'s flags, read and changed at run time
/// through `GET|POST /faults`.
#[derive(Clone, Debug, Deserialize, Serialize, clap::Args)]
#[serde(default)]
pub struct Faults {
    /// Sleep this many milliseconds per message received.
    #[arg(long, default_value_t = 0)]
    pub delay_per_message_ms: u64,
    /// Fail this fraction of calls (0.0..=1.0) with `fail_code`; they are not counted.
    #[arg(long, default_value_t = 0.0)]
    pub fail_fraction: f64,
    /// gRPC status code number of failed calls (14 = UNAVAILABLE).
    #[arg(long, default_value_t = Code::Unavailable as i32)]
    pub fail_code: i32,
    /// Close every new connection at once, before the HTTP/2 handshake.
    #[arg(long)]
    pub refuse: bool,
    /// Answer calls whose answer the agent reads (queries, sync reports, relayed
    /// streams) with the request's bytes instead of an empty message.
    #[arg(long)]
    pub echo: bool,
    /// Send a graceful GOAWAY on a connection once it has carried this many calls
    /// (0 = never), as an OAP being restarted or rebalanced does.
    #[arg(long, default_value_t = 0)]
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

    pub(crate) fn fail(&self, path: &str, faults: &Faults) -> Option<Status> {
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
    pub(crate) fn record(
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
pub(crate) fn measures_delivery(payload: Payload) -> bool {
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

#[cfg(test)]
mod tests;
