//! The reader task: reads the segments back in order, up to what the writer has written,
//! and hands each record to the senders as an [`Event`] whose payload is a slice of the
//! chunk it was read in (no copy per record). Each event takes room in the memory window
//! first, so a slow OAP stops the reader, not memory.
//!
//! Once it has read everything written it *follows* the writer ([`Index::following`]):
//! it sleeps while the writer hands what it writes straight to the senders, and is woken
//! to read on from the segment's `read_from` when the memory window is too full for that.
//!
//! Records acknowledged before a restart are skipped. A damaged stretch is stepped over
//! to the next whole record, logged with its file and offset and counted
//! (`satmesh_disk_records_corrupt_total`, one per record number skipped); so is a record
//! naming a path this version does not know. Nothing here panics or loops on bad bytes:
//! each step either consumes bytes or waits for the writer.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[cfg(doc)]
use super::Index;
use super::record::{self, Read};
use super::segment;
use super::{Bitset, Outlet, Shared, ToWriter};
use crate::pipeline::Event;
use crate::protocol::MethodId;

/// Bytes read at once.
const CHUNK: u64 = 1024 * 1024;

pub(super) struct Reader {
    pub shared: Arc<Shared>,
    pub outlet: Outlet,
    /// Tells the writer a segment was read whole.
    pub done: std::sync::mpsc::Sender<ToWriter>,
    /// Records below this number were left by the last run.
    pub replay_below: u64,
    pub stop: CancellationToken,
}

/// The segment being read.
struct Cursor {
    first_seq: u64,
    file: Arc<File>,
    /// Offset of the next byte to read.
    pos: u64,
    /// Read, not yet parsed (a record cut by the chunk's end).
    carry: BytesMut,
    /// Where `carry` starts in the file, for logs.
    carry_at: u64,
    methods: Arc<Vec<Option<MethodId>>>,
    acked_before: Arc<Bitset>,
    last_seq: u64,
    unknown_path_logged: bool,
}

/// What to do next.
enum Step {
    /// Read `pos..to` of the current segment (at most a chunk).
    Read { to: u64 },
    /// The current segment is sealed and read whole.
    Finished,
    /// Nothing to read until the writer writes more.
    Wait,
    /// The queue is closed and everything written was read.
    End,
}

pub(super) async fn run(r: Reader) {
    let mut cursor: Option<Cursor> = None;
    loop {
        let shared = r.shared.clone();
        let notified = shared.written.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match r.step(&mut cursor) {
            Step::Read { to } => {
                let Some(c) = cursor.as_mut() else { continue };
                if !r.read_chunk(c, to).await {
                    return;
                }
            }
            Step::Finished => {
                if let Some(c) = cursor.take() {
                    r.finish(c);
                }
            }
            Step::Wait => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = r.stop.cancelled() => return,
                }
            }
            Step::End => {
                r.outlet.out.close();
                return;
            }
        }
    }
}

impl Reader {
    /// Looks at the first segment not read whole and decides the next step, opening it
    /// when the cursor is elsewhere.
    fn step(&self, cursor: &mut Option<Cursor>) -> Step {
        let mut index = self.shared.index();
        let drained = self.shared.drained.load(Ordering::Relaxed);
        if index.following {
            // The writer hands out what it writes; it wakes the reader when it stops.
            return if drained { Step::End } else { Step::Wait };
        }
        let Some(seg) = index.segments.iter().find(|s| !s.read_done) else {
            if drained {
                return Step::End;
            }
            // Everything written was read: the writer hands out from the next segment.
            index.following = true;
            return Step::Wait;
        };
        if cursor.as_ref().is_none_or(|c| c.first_seq != seg.first_seq) {
            let path = segment::segment_path(&self.shared.settings.dir, seg.first_seq);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) => {
                    // Gone or unreadable: nothing of it can be sent; go on with the next.
                    warn!(file = %path.display(), error = %e, "queue segment cannot be read, skipped");
                    self.shared.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    let first_seq = seg.first_seq;
                    drop(index);
                    self.mark_done(first_seq);
                    return Step::Wait;
                }
            };
            *cursor = Some(Cursor {
                first_seq: seg.first_seq,
                file: Arc::new(file),
                pos: seg.read_from.offset,
                carry: BytesMut::new(),
                carry_at: seg.read_from.offset,
                methods: seg.methods.clone(),
                acked_before: seg.acked_before.clone(),
                last_seq: seg.read_from.last_seq,
                unknown_path_logged: false,
            });
        }
        let c = cursor.as_mut().expect("opened above");
        if seg.read_from.offset > c.pos {
            // The writer handed out what follows the cursor while the reader waited (the
            // carry was empty then: the reader follows only at a record boundary).
            (c.pos, c.carry_at) = (seg.read_from.offset, seg.read_from.offset);
            c.last_seq = seg.read_from.last_seq;
        }
        if c.pos < seg.written {
            Step::Read {
                to: seg.written.min(c.pos + CHUNK),
            }
        } else if seg.sealed {
            Step::Finished
        } else if drained && c.carry.is_empty() {
            Step::End
        } else if c.carry.is_empty() {
            // Caught up with the writer at a record boundary: it hands out from here.
            index.following = true;
            Step::Wait
        } else {
            Step::Wait
        }
    }

    /// Reads `c.pos..to`, parses what is whole, hands the events out. False when stopped.
    async fn read_chunk(&self, c: &mut Cursor, to: u64) -> bool {
        let (file, pos, mut carry) = (c.file.clone(), c.pos, std::mem::take(&mut c.carry));
        let read = tokio::task::spawn_blocking(move || {
            let start = carry.len();
            carry.resize(start + (to - pos) as usize, 0);
            file.read_exact_at(&mut carry[start..], pos).map(|()| carry)
        })
        .await;
        c.carry = match read {
            Ok(Ok(carry)) => carry,
            Ok(Err(e)) => {
                warn!(segment = c.first_seq, offset = pos, error = %e, "queue segment read failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => return true,
                    _ = self.stop.cancelled() => return false,
                }
            }
            Err(_) => return false,
        };
        c.pos = to;
        let events = self.parse(c);
        self.hand_out(c.first_seq, events).await
    }

    /// The whole records at the start of the cursor's carry, as events.
    fn parse(&self, c: &mut Cursor) -> Vec<Event> {
        let now = Instant::now();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut events = Vec::new();
        loop {
            match record::parse(&c.carry) {
                Read::Record(p) => {
                    let size = p.size;
                    let bytes = c.carry.split_to(size).freeze();
                    c.carry_at += size as u64;
                    let skipped = p.seq.saturating_sub(c.last_seq + 1);
                    if skipped > 0 && p.seq > c.last_seq {
                        // Numbers missing between whole records: damage stepped over.
                        self.damaged(skipped);
                    }
                    c.last_seq = c.last_seq.max(p.seq);
                    if let Some(event) = self.event(c, &bytes, p, now, now_ms) {
                        events.push(event);
                    }
                }
                Read::Incomplete => break,
                Read::Corrupt => match record::resync(&c.carry, c.last_seq, segment::MAX_GAP) {
                    Some(skip) => {
                        warn!(file = %self.path(c).display(), offset = c.carry_at, bytes = skip, "damaged queue records skipped");
                        c.carry.advance(skip);
                        c.carry_at += skip as u64;
                    }
                    // The rest may be in the next chunk; at the end of a sealed segment
                    // `finish` counts what is left.
                    None => break,
                },
            }
        }
        events
    }

    fn path(&self, c: &Cursor) -> std::path::PathBuf {
        segment::segment_path(&self.shared.settings.dir, c.first_seq)
    }

    fn damaged(&self, records: u64) {
        self.shared
            .stats
            .corrupt
            .fetch_add(records, Ordering::Relaxed);
    }

    /// The event of a parsed record, or None when it is not to be sent (acknowledged
    /// before the restart, or naming a path this version does not know).
    fn event(
        &self,
        c: &mut Cursor,
        bytes: &Bytes,
        p: record::Parsed,
        now: Instant,
        now_ms: u64,
    ) -> Option<Event> {
        if c.acked_before.contains(p.seq.checked_sub(c.first_seq)?) {
            return None;
        }
        let Some(method) = c.methods.get(usize::from(p.method)).copied().flatten() else {
            if !c.unknown_path_logged {
                c.unknown_path_logged = true;
                warn!(file = %self.path(c).display(), method = p.method, "queued records for a path this satmesh does not know are skipped");
            }
            self.shared.stats.corrupt.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let waited = Duration::from_millis(now_ms.saturating_sub(p.at_ms));
        Some(Event {
            method,
            auth: p.auth.map(|r| bytes.slice(r)),
            key: p.key.map(|r| bytes.slice(r)),
            payload: bytes.slice(p.payload),
            enqueued: now.checked_sub(waited).unwrap_or(now),
            seq: p.seq,
        })
    }

    /// Counts the events as emitted by their segment, then hands each out once it has
    /// room in the memory window. False when stopped.
    async fn hand_out(&self, first_seq: u64, events: Vec<Event>) -> bool {
        if events.is_empty() {
            return true;
        }
        let replayed = events.iter().filter(|e| e.seq < self.replay_below).count() as u64;
        if let Some(seg) = self.shared.index().segment_mut(first_seq) {
            seg.emitted += events.len() as u64;
        }
        let stats = &self.shared.stats;
        stats.replayed.fetch_add(replayed, Ordering::Relaxed);
        stats
            .read_back
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        self.shared.queued.fetch_add(replayed, Ordering::Relaxed);
        for event in events {
            let cost = self.shared.window_cost(&event);
            let room = async {
                let events = self.outlet.window_events.acquire().await.ok()?;
                let bytes = self.outlet.window_bytes.acquire_many(cost).await.ok()?;
                events.forget();
                bytes.forget();
                Some(())
            };
            tokio::select! {
                room = room => if room.is_none() { return false },
                _ = self.stop.cancelled() => return false,
            }
            if self.outlet.out.send(event).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The segment is read whole: what is left unparsed is damage; tell the writer.
    fn finish(&self, c: Cursor) {
        if !c.carry.is_empty() {
            warn!(file = %self.path(&c).display(), offset = c.carry_at, bytes = c.carry.len(), "damaged end of a queue segment skipped");
            self.damaged(1);
        }
        self.mark_done(c.first_seq);
    }

    fn mark_done(&self, first_seq: u64) {
        if let Some(seg) = self.shared.index().segment_mut(first_seq) {
            seg.read_done = true;
        }
        let _ = self.done.send(ToWriter::ReadDone);
    }
}
