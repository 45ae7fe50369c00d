//! Hand-built HTTP/2 bytes for the watcher's tests: frames, gRPC messages, and each side's
//! header blocks from a real HPACK encoder (its dynamic table carried across blocks as a
//! peer's is).

use loona_hpack::Encoder;

pub const TRACE: &str = "/skywalking.v3.TraceSegmentReportService/collect";
pub const LOG: &str = "/skywalking.v3.LogReportService/collect";
pub const METER: &str = "/skywalking.v3.MeterReportService/collect";
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// `n` gRPC messages of `size` bytes each, back to back.
pub fn messages(n: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(0);
        out.extend((size as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(i as u8, size));
    }
    out
}

/// One side of a connection, encoding header blocks with its own HPACK state.
pub struct Side {
    pub encoder: Encoder<'static>,
    pub bytes: Vec<u8>,
}

impl Side {
    pub fn client() -> Self {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])); // SETTINGS
        Self {
            encoder: Encoder::new(),
            bytes,
        }
    }

    pub fn server() -> Self {
        Self {
            encoder: Encoder::new(),
            bytes: frame(0x4, 0, 0, &[]),
        }
    }

    pub fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.encoder
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    pub fn request(&mut self, stream: u32, path: &str) {
        let block = self.block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1:11800"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]);
        self.bytes.extend(frame(0x1, END_HEADERS, stream, &block));
    }

    pub fn data(&mut self, stream: u32, flags: u8, payload: &[u8]) {
        self.bytes.extend(frame(0x0, flags, stream, payload));
    }

    pub fn response(&mut self, stream: u32) {
        let block = self.block(&[(":status", "200"), ("content-type", "application/grpc")]);
        self.bytes.extend(frame(0x1, END_HEADERS, stream, &block));
    }

    pub fn trailers(&mut self, stream: u32, status: &str) {
        let block = self.block(&[("grpc-status", status), ("grpc-message", "")]);
        self.bytes
            .extend(frame(0x1, END_HEADERS | END_STREAM, stream, &block));
    }
}
