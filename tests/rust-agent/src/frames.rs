//! HTTP/2 frames (RFC 9113 §4) read from one direction of a connection, fed in whatever
//! chunks the socket gave; header blocks (HEADERS or PUSH_PROMISE, then CONTINUATION until
//! END_HEADERS) are put back together and HPACK-decoded by this direction's own decoder,
//! so its dynamic table follows every block the peer encoded.
//!
//! Only what the watcher needs comes out as an [`Event`]: header blocks, DATA payloads
//! (padding removed) and RST_STREAM. Other frames (SETTINGS, PING, WINDOW_UPDATE, GOAWAY,
//! PRIORITY) are skipped.

use loona_hpack::Decoder;

/// The connection preface a client sends before its first frame (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What one direction carried that the watcher cares about.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete, decoded header block on `stream`; `end_stream` is its HEADERS frame's
    /// END_STREAM flag (a request without body, trailers, or a trailers-only response).
    Headers {
        stream: u32,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        end_stream: bool,
    },
    /// A DATA frame's payload without its padding.
    Data {
        stream: u32,
        payload: &'a [u8],
        end_stream: bool,
    },
    /// RST_STREAM: the stream ended abnormally.
    Reset { stream: u32 },
}

/// Bytes this direction carried that are not HTTP/2 as it should be: the watcher stops
/// trusting the connection (its HPACK state may be lost).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the connection does not start with the HTTP/2 client preface")]
    BadPreface,
    #[error("frame type {kind} on stream {stream}: padding or priority longer than the frame")]
    BadLength { kind: u8, stream: u32 },
    #[error("frame type {kind} on stream {stream} inside the header block of stream {open}")]
    InsideHeaderBlock { kind: u8, stream: u32, open: u32 },
    #[error("CONTINUATION on stream {stream} with no header block open")]
    StrayContinuation { stream: u32 },
    #[error("header block on stream {stream}: {reason}")]
    Hpack { stream: u32, reason: String },
}

/// A header block still waiting for its CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

/// One direction's frame reader: its unparsed bytes, its HPACK decoder, its open block.
pub struct FrameReader {
    /// Bytes of the client preface still to check (24 for the client's side, 0 for the
    /// server's).
    preface_left: usize,
    /// Received bytes not yet forming a whole frame.
    pending: Vec<u8>,
    decoder: Decoder<'static>,
    open: Option<OpenBlock>,
}

impl FrameReader {
    /// The reader of what a client sends (starts with the preface).
    pub fn client_side() -> Self {
        Self::new(PREFACE.len())
    }

    /// The reader of what a server sends.
    pub fn server_side() -> Self {
        Self::new(0)
    }

    fn new(preface_left: usize) -> Self {
        Self {
            preface_left,
            pending: Vec::new(),
            decoder: Decoder::new(),
            open: None,
        }
    }

    /// Takes the next chunk of this direction's bytes and reports every frame it completes.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), FrameError> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(bytes.len());
            let from = PREFACE.len() - self.preface_left;
            if bytes[..n] != PREFACE[from..from + n] {
                return Err(FrameError::BadPreface);
            }
            self.preface_left -= n;
            bytes = &bytes[n..];
        }
        self.pending.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            let rest = &self.pending[at..];
            if rest.len() < HEADER_LEN {
                break Ok(());
            }
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            if rest.len() < HEADER_LEN + len {
                break Ok(());
            }
            let header = Header {
                kind: rest[3],
                flags: rest[4],
                stream: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff,
            };
            let payload = &rest[HEADER_LEN..HEADER_LEN + len];
            at += HEADER_LEN + len;
            if let Err(e) = frame(&mut self.decoder, &mut self.open, header, payload, on) {
                break Err(e);
            }
        };
        self.pending.drain(..at);
        result
    }
}

#[derive(Clone, Copy)]
struct Header {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// One whole frame.
fn frame(
    decoder: &mut Decoder<'static>,
    open: &mut Option<OpenBlock>,
    h: Header,
    payload: &[u8],
    on: &mut dyn FnMut(Event<'_>),
) -> Result<(), FrameError> {
    if let Some(block) = open
        && (h.kind != CONTINUATION || h.stream != block.stream)
    {
        return Err(FrameError::InsideHeaderBlock {
            kind: h.kind,
            stream: h.stream,
            open: block.stream,
        });
    }
    match h.kind {
        DATA => {
            let payload = unpad(h, payload, 0)?;
            on(Event::Data {
                stream: h.stream,
                payload,
                end_stream: h.flags & END_STREAM != 0,
            });
        }
        HEADERS => {
            let skip = if h.flags & PRIORITY != 0 { 5 } else { 0 };
            let fragment = unpad(h, payload, skip)?;
            let block = OpenBlock {
                stream: h.stream,
                end_stream: h.flags & END_STREAM != 0,
                fragment: fragment.to_vec(),
            };
            header_block(decoder, open, block, h.flags, on)?;
        }
        PUSH_PROMISE => {
            // Decoded only to keep the HPACK state in step; a promised stream is not ours.
            let fragment = unpad(h, payload, 4)?;
            let block = OpenBlock {
                stream: h.stream,
                end_stream: false,
                fragment: fragment.to_vec(),
            };
            let mut skip = |_: Event<'_>| {};
            header_block(decoder, open, block, h.flags, &mut skip)?;
        }
        CONTINUATION => {
            let Some(mut block) = open.take() else {
                return Err(FrameError::StrayContinuation { stream: h.stream });
            };
            block.fragment.extend_from_slice(payload);
            header_block(decoder, open, block, h.flags, on)?;
        }
        RST_STREAM => on(Event::Reset { stream: h.stream }),
        _ => {}
    }
    Ok(())
}

/// Decode `block` if `flags` end it, else keep it open for CONTINUATION frames.
fn header_block(
    decoder: &mut Decoder<'static>,
    open: &mut Option<OpenBlock>,
    block: OpenBlock,
    flags: u8,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<(), FrameError> {
    if flags & END_HEADERS == 0 {
        *open = Some(block);
        return Ok(());
    }
    let fields = decoder
        .decode(&block.fragment)
        .map_err(|e| FrameError::Hpack {
            stream: block.stream,
            reason: e.to_string(),
        })?;
    on(Event::Headers {
        stream: block.stream,
        fields,
        end_stream: block.end_stream,
    });
    Ok(())
}

/// The payload without its pad-length octet and padding (if PADDED) and without `skip`
/// more leading octets (the priority fields of HEADERS, the promised id of PUSH_PROMISE).
fn unpad(h: Header, payload: &[u8], skip: usize) -> Result<&[u8], FrameError> {
    let bad = FrameError::BadLength {
        kind: h.kind,
        stream: h.stream,
    };
    let (start, pad) = if h.flags & PADDED != 0 {
        let pad = *payload.first().ok_or(bad.clone())? as usize;
        (1 + skip, pad)
    } else {
        (skip, 0)
    };
    let end = payload.len().checked_sub(pad).ok_or(bad.clone())?;
    if start > end {
        return Err(bad);
    }
    Ok(&payload[start..end])
}
