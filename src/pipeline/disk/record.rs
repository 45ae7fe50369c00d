//! The on-disk record: one agent message with everything needed to send and route it
//! again exactly as it would have been, framed so that a torn or damaged record is
//! detected and stepped over. Pure functions over byte slices; no IO.
//!
//! ```text
//! len u32 LE | crc u32 LE | body (len bytes)
//! body: seq u64 | at_ms u64 | method u16 | flags u8
//!       | [auth_len u16 | auth]   flags bit 0
//!       | [key_len u16 | key]     flags bit 1
//!       | payload (the rest: the message exactly as the agent sent it)
//! ```
//!
//! `crc` is CRC-32C (Castagnoli, as Kafka and ext4 use) of `len` and the body, so a
//! flipped length is caught as surely as a flipped payload byte. `seq` numbers records
//! without gaps across the whole queue; `method` indexes the path table in the segment's
//! header (a record never names a path twice); `at_ms` is when it was queued (ms since the
//! Unix epoch), for the delivery-latency histogram after a restart. 27 bytes of framing
//! per record without a token or a routing key: 9 % of a 300-byte message.

use std::ops::Range;

/// `len` and `crc`.
pub const FRAME: usize = 8;
/// seq, at_ms, method, flags.
const FIXED_BODY: usize = 8 + 8 + 2 + 1;
/// No record body is larger (a gRPC message satmesh accepts is far smaller): a length
/// above it is damage, not a record.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

const HAS_AUTH: u8 = 1;
const HAS_KEY: u8 = 2;

/// A record to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: u64,
    pub at_ms: u64,
    pub method: u16,
    pub auth: Option<&'a [u8]>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// A record read back: its fields as ranges of the buffer it was parsed from, so the
/// reader hands out slices of one chunk without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub seq: u64,
    pub at_ms: u64,
    pub method: u16,
    pub auth: Option<Range<usize>>,
    pub key: Option<Range<usize>>,
    pub payload: Range<usize>,
    /// Bytes the record takes, framing included.
    pub size: usize,
}

/// What the bytes at the start of a buffer hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    Record(Parsed),
    /// A record may start here, but the buffer ends before it does (at the end of a file:
    /// a torn write).
    Incomplete,
    /// Not a record: a length out of bounds, a checksum that does not match, or a body
    /// whose fields do not fit it.
    Corrupt,
}

/// Bytes `record` takes on disk.
pub fn encoded_len(record: &Record) -> usize {
    FRAME
        + FIXED_BODY
        + record.auth.map_or(0, |a| 2 + a.len())
        + record.key.map_or(0, |k| 2 + k.len())
        + record.payload.len()
}

/// Appends `record` to `out`. Tokens and keys longer than 65,535 bytes are cut (neither
/// comes near it: gRPC metadata and a service/instance pair).
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.at_ms.to_le_bytes());
    out.extend_from_slice(&record.method.to_le_bytes());
    let flags = record.auth.map_or(0, |_| HAS_AUTH) | record.key.map_or(0, |_| HAS_KEY);
    out.push(flags);
    for field in [record.auth, record.key].into_iter().flatten() {
        let field = &field[..field.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(field.len() as u16).to_le_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(record.payload);
    let len = (out.len() - start - FRAME) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&out[start..start + 4], &out[start + FRAME..]);
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), body)
}

/// Reads the record at the start of `buf`.
pub fn parse(buf: &[u8]) -> Read {
    if buf.len() < FRAME {
        return Read::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(FIXED_BODY..=MAX_BODY).contains(&len) {
        return Read::Corrupt;
    }
    if buf.len() < FRAME + len {
        return Read::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[FRAME..FRAME + len];
    if checksum(&buf[..4], body) != crc {
        return Read::Corrupt;
    }
    match fields(body) {
        Some(mut parsed) => {
            parsed.shift(FRAME);
            parsed.size = FRAME + len;
            Read::Record(parsed)
        }
        None => Read::Corrupt,
    }
}

/// The body's fields; None when they do not fit it (a body with a valid checksum that
/// this version cannot read).
fn fields(body: &[u8]) -> Option<Parsed> {
    let u64_at = |at: usize| Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?));
    let u16_at = |at: usize| Some(u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?));
    let seq = u64_at(0)?;
    let at_ms = u64_at(8)?;
    let method = u16_at(16)?;
    let flags = *body.get(18)?;
    if flags & !(HAS_AUTH | HAS_KEY) != 0 {
        return None;
    }
    let mut at = FIXED_BODY;
    let mut field = |present: bool| -> Option<Option<Range<usize>>> {
        if !present {
            return Some(None);
        }
        let len = usize::from(u16_at(at)?);
        let range = at + 2..at + 2 + len;
        if range.end > body.len() {
            return None;
        }
        at = range.end;
        Some(Some(range))
    };
    let auth = field(flags & HAS_AUTH != 0)?;
    let key = field(flags & HAS_KEY != 0)?;
    Some(Parsed {
        seq,
        at_ms,
        method,
        auth,
        key,
        payload: at..body.len(),
        size: 0,
    })
}

impl Parsed {
    fn shift(&mut self, by: usize) {
        let shift = |r: &mut Range<usize>| *r = r.start + by..r.end + by;
        for r in [&mut self.auth, &mut self.key].into_iter().flatten() {
            shift(r);
        }
        shift(&mut self.payload);
    }
}

/// After damage at the start of `buf`: the offset of the next whole record whose `seq`
/// follows `after` (by at most `max_gap`), or None when `buf` holds none. Checking the
/// sequence first keeps the search cheap: a checksum is computed only where a plausible
/// number sits.
pub fn resync(buf: &[u8], after: u64, max_gap: u64) -> Option<usize> {
    (1..buf.len().saturating_sub(FRAME + FIXED_BODY - 1)).find(|&at| {
        let seq_at = at + FRAME;
        let Some(seq) = buf
            .get(seq_at..seq_at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        else {
            return false;
        };
        seq > after
            && seq - after <= max_gap
            && matches!(parse(&buf[at..]), Read::Record(ref r) if r.seq == seq)
    })
}

#[cfg(test)]
mod tests;
