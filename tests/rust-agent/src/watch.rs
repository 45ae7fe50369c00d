//! What the server told the agent OK about, read off one HTTP/2 connection's bytes.
//!
//! The client's side gives each stream's `:path` (its request headers) and its gRPC
//! messages (DATA payloads cut into 5-byte-prefixed messages, a message may span DATA
//! frames). The server's side gives each stream's end: trailers (or a trailers-only
//! response) with END_STREAM carry `grpc-status`, and `0` means the server took every
//! message the stream carried. A stream that ends any other way (another status, RST_STREAM
//! from either side, DATA ending the response without trailers, the connection cut) was
//! not told OK, and its messages count as such.
//!
//! Counts go to a [`Tally`] shared by every connection of the agent's channel.

use crate::frames::{Event, FrameError, FrameReader};
use std::{
    collections::HashMap,
    sync::Arc,
    sync::atomic::{AtomicU64, Ordering},
};

/// The signals whose client-streams the watcher counts, by their method path. The crate
/// sends one `MeterData` per message on `MeterReportService/collect` and never uses
/// `collectBatch` (whose messages are collections, not values).
const SIGNALS: [(&str, Signal); 3] = [
    (
        "/skywalking.v3.TraceSegmentReportService/collect",
        Signal::Segments,
    ),
    ("/skywalking.v3.LogReportService/collect", Signal::Logs),
    ("/skywalking.v3.MeterReportService/collect", Signal::Meters),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Segments,
    Logs,
    Meters,
}

/// Messages per signal.
#[derive(Default, Debug)]
pub struct PerSignal {
    pub segments: AtomicU64,
    pub logs: AtomicU64,
    pub meters: AtomicU64,
}

impl PerSignal {
    fn add(&self, signal: Signal, n: u64) {
        let c = match signal {
            Signal::Segments => &self.segments,
            Signal::Logs => &self.logs,
            Signal::Meters => &self.meters,
        };
        c.fetch_add(n, Ordering::SeqCst);
    }

    pub fn get(&self) -> (u64, u64, u64) {
        (
            self.segments.load(Ordering::SeqCst),
            self.logs.load(Ordering::SeqCst),
            self.meters.load(Ordering::SeqCst),
        )
    }
}

/// What every connection of the agent saw end.
#[derive(Default, Debug)]
pub struct Tally {
    /// Messages on streams told OK.
    pub told_ok: PerSignal,
    /// Messages on streams that ended without OK (error status, reset, connection cut).
    pub not_ok: PerSignal,
    /// Connections whose bytes could not be followed (nothing after the error counted).
    pub watch_errors: AtomicU64,
}

/// One watched stream of a counted signal.
#[derive(Debug)]
struct Stream {
    signal: Signal,
    messages: Messages,
}

/// gRPC length-prefixed messages (1 byte compressed flag, 4 bytes length, the message)
/// counted as their bytes go by.
#[derive(Debug, Default)]
struct Messages {
    complete: u64,
    /// Prefix bytes seen of the message under way (0 while inside a message body).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Body bytes still to come of the message under way.
    body_left: u64,
}

impl Messages {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len() as u64);
                self.body_left -= n;
                data = &data[n as usize..];
                if self.body_left == 0 {
                    self.complete += 1;
                }
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let p = self.prefix;
                self.body_left = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                if self.body_left == 0 {
                    self.complete += 1;
                }
            }
        }
    }
}

/// One connection: both directions' frame readers and its open streams.
pub struct ConnWatch {
    sent: FrameReader,
    received: FrameReader,
    streams: HashMap<u32, Stream>,
    tally: Arc<Tally>,
    /// Set once the connection is cut or its bytes could not be followed: no more counting.
    done: bool,
}

impl ConnWatch {
    pub fn new(tally: Arc<Tally>) -> Self {
        Self {
            sent: FrameReader::client_side(),
            received: FrameReader::server_side(),
            streams: HashMap::new(),
            tally,
            done: false,
        }
    }

    /// Bytes the agent wrote to the server.
    pub fn on_sent(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let streams = &mut self.streams;
        let tally = &self.tally;
        let result = self.sent.feed(bytes, &mut |event| match event {
            Event::Headers { stream, fields, .. } => {
                let signal = field(&fields, b":path").and_then(|path| {
                    SIGNALS
                        .iter()
                        .find(|(p, _)| p.as_bytes() == path)
                        .map(|(_, s)| *s)
                });
                if let Some(signal) = signal {
                    streams.entry(stream).or_insert(Stream {
                        signal,
                        messages: Messages::default(),
                    });
                }
            }
            Event::Data {
                stream, payload, ..
            } => {
                if let Some(s) = streams.get_mut(&stream) {
                    s.messages.feed(payload);
                }
            }
            Event::Reset { stream } => end(streams, tally, stream, false),
        });
        self.check(result);
    }

    /// Bytes the server wrote to the agent.
    pub fn on_received(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let streams = &mut self.streams;
        let tally = &self.tally;
        let result = self.received.feed(bytes, &mut |event| match event {
            // Response headers without END_STREAM say nothing yet.
            Event::Headers {
                stream,
                fields,
                end_stream: true,
            } => {
                let ok = field(&fields, b"grpc-status") == Some(b"0");
                end(streams, tally, stream, ok);
            }
            Event::Headers { .. } => {}
            Event::Data {
                stream,
                end_stream: true,
                ..
            }
            | Event::Reset { stream } => end(streams, tally, stream, false),
            Event::Data { .. } => {}
        });
        self.check(result);
    }

    /// The connection ended (EOF, reset, an IO error): its open streams were not told OK.
    pub fn on_cut(&mut self) {
        self.done = true;
        for (_, s) in self.streams.drain() {
            self.tally.not_ok.add(s.signal, s.messages.complete);
        }
    }

    /// Streams of counted signals still waiting for their end.
    #[cfg(test)]
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn check(&mut self, result: Result<(), FrameError>) {
        if let Err(e) = result {
            eprintln!("sw-rust-agent: stopped watching a connection: {e}");
            self.tally.watch_errors.fetch_add(1, Ordering::SeqCst);
            self.on_cut();
        }
    }
}

/// The stream ended, told OK or not: its messages so far go to the matching count.
fn end(streams: &mut HashMap<u32, Stream>, tally: &Tally, stream: u32, ok: bool) {
    if let Some(s) = streams.remove(&stream) {
        let to = if ok { &tally.told_ok } else { &tally.not_ok };
        to.add(s.signal, s.messages.complete);
    }
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

#[cfg(test)]
mod tests;
