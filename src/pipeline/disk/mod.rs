//! The disk queue (`pipeline.queue: disk`): what an agent was told OK about survives a
//! `kill -9`, an OOM-kill or a container restart, and is sent again at the next start.
//!
//! # Layout
//! - [`record`]: the record format (length, CRC-32C, the fields a replay needs). Pure.
//! - [`segment`]: segment files, their header and a scan that steps over damage.
//! - [`open`](DiskQueue::open) (`recover.rs`): the lock, and the files found at start.
//! - `writer.rs`: one thread owns every write: it appends pushed records in batches
//!   (group commit: one `fdatasync` for everything that arrived while the last one ran),
//!   appends acknowledgements, rolls and deletes segments.
//! - `reader.rs`: one task reads the segments back in order and hands events to the
//!   senders, within a memory window (`pipeline.queue_events`/`queue_bytes`). Once it
//!   has caught up with the writer, the writer hands what it writes straight to the
//!   senders instead (`Index::following`): when the OAPs keep up, nothing is read back.
//!
//! # What an OK means
//! `push` hands the record to the writer; the front door answers the agent once
//! [`settle`](EventQueue::settle) says every record of the call is written
//! (`fsync: interval`: in the page cache, which a killed process cannot lose) or synced
//! (`fsync: always`: on the device). An OAP's acknowledgement appends the record's number
//! to its segment's `.ack` file; a segment whose records were all read and acknowledged is
//! deleted. After a restart every record not in an `.ack` file is sent again: duplicates
//! come only from acknowledgements written in the last `fsync_interval` before a host
//! crash (a killed process loses none), at-least-once.
//!
//! # Backpressure
//! Three bounds, each stopping the stage before it: the memory window stops the reader,
//! `max_bytes` (or ENOSPC/EIO) stops the writer, and the writer's intake room (16 MiB)
//! stops `push`, so the front door stops reading agents' streams and HTTP/2 flow control
//! slows the agents, exactly as a full memory queue does.

mod reader;
pub mod record;
mod recover;
pub mod segment;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::Event;
use super::queue::{BoxFuture, Depth, EventQueue, QueueClosed, pop_channel, try_pop_channel};
use crate::protocol::MethodId;

pub use recover::OpenError;

/// How the disk queue is set up (`pipeline.disk.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct DiskSettings {
    /// The queue's directory, created if missing; one satmesh owns it at a time.
    pub dir: PathBuf,
    /// The bound on the segment and acknowledgement files together.
    pub max_bytes: u64,
    /// A segment is closed and the next one started at this size (at most a quarter of
    /// `max_bytes`, so space frees a segment at a time well before the bound).
    pub segment_bytes: u64,
    pub fsync: Fsync,
    /// Events read back and not yet acknowledged, at most (`pipeline.queue_events`).
    pub window_events: usize,
    /// ...and their payload bytes (`pipeline.queue_bytes`).
    pub window_bytes: usize,
}

/// When written records are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before the agent is told OK (group commit).
    Always,
    /// Every so often; the agent is told OK once the write is in the page cache.
    Interval(Duration),
}

/// Bytes of records handed to the writer and not written yet, at most.
const INTAKE_BYTES: usize = 16 * 1024 * 1024;
/// How often acknowledgements (and, with `fsync: interval`, records) are synced.
const DEFAULT_SYNC_EVERY: Duration = Duration::from_millis(100);

/// What the queue did, for `/metrics` (read at scrape time).
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Bytes of segment and acknowledgement files.
    pub used_bytes: AtomicU64,
    pub limit_bytes: AtomicU64,
    /// The writer is stopped: at `max_bytes`, or the file system refused a write.
    pub full: AtomicBool,
    /// Records skipped because they were damaged or unreadable.
    pub corrupt: AtomicU64,
    pub fsyncs: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Records found at start (in segments left by the last run) and sent again.
    pub replayed: AtomicU64,
    /// Records read back from the files to be sent; the others went from the writer
    /// straight to the senders (the reader was following).
    pub read_back: AtomicU64,
}

impl DiskStats {
    /// `bytes` more were written to the queue's files (and occupy them).
    fn wrote(&self, bytes: usize) {
        self.used_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// One segment as the writer and the reader share it.
#[derive(Debug)]
struct Seg {
    first_seq: u64,
    header_len: u64,
    /// Bytes of the file (header included) that hold whole records: the reader reads up
    /// to here.
    written: u64,
    /// Where the reader starts: the records before it were handed to the senders by the
    /// writer itself (see [`Index::following`]).
    read_from: ReadFrom,
    /// No more records are appended.
    sealed: bool,
    /// Method id in this file -> this version's id (None: a path it does not know).
    methods: Arc<Vec<Option<MethodId>>>,
    /// Records acknowledged before this start (from the `.ack` file), relative to
    /// `first_seq`; the reader skips them.
    acked_before: Arc<Bitset>,
    /// Records the reader handed out, and those of them released since.
    emitted: u64,
    released: u64,
    /// The reader has read the whole (sealed) segment.
    read_done: bool,
}

/// A place in a segment's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReadFrom {
    /// Offset in the file, at a record boundary.
    offset: u64,
    /// The number of the record before it (`first_seq - 1` at the first).
    last_seq: u64,
}

impl ReadFrom {
    /// The start of a segment's records.
    fn start(first_seq: u64, header_len: u64) -> ReadFrom {
        ReadFrom {
            offset: header_len,
            last_seq: first_seq.saturating_sub(1),
        }
    }
}

/// The segments in queue order.
#[derive(Debug, Default)]
struct Index {
    segments: Vec<Seg>,
    /// The reader has read everything written and waits: the writer hands what it writes
    /// next straight to the senders (the events it holds, not bytes read back), as long
    /// as the memory window has room for them. When it has not, the writer clears this
    /// and wakes the reader, which reads on from the segment's `read_from`.
    following: bool,
}

impl Index {
    /// The segment holding `seq`.
    fn find_mut(&mut self, seq: u64) -> Option<&mut Seg> {
        let i = self.segments.partition_point(|s| s.first_seq <= seq);
        self.segments.get_mut(i.checked_sub(1)?)
    }

    /// The segment that starts at `first_seq`, if it is still there.
    fn segment_mut(&mut self, first_seq: u64) -> Option<&mut Seg> {
        let i = self
            .segments
            .binary_search_by_key(&first_seq, |s| s.first_seq)
            .ok()?;
        self.segments.get_mut(i)
    }
}

/// A set of small numbers (record numbers relative to a segment's first).
#[derive(Debug, Default)]
pub(crate) struct Bitset(Vec<u64>);

impl Bitset {
    fn insert(&mut self, n: u64) {
        let (word, bit) = ((n / 64) as usize, n % 64);
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << bit;
    }

    fn contains(&self, n: u64) -> bool {
        let (word, bit) = ((n / 64) as usize, n % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }
}

/// What the writer thread, the reader task and the queue's callers share.
struct Shared {
    index: Mutex<Index>,
    stats: Arc<DiskStats>,
    /// The writer wrote more (the reader may read on), or has written everything it
    /// will (closed).
    written: Notify,
    /// Closed, and the writer has written all it was given.
    drained: AtomicBool,
    inbox: Mutex<Inbox>,
    /// Events pushed, or read back from the last run's segments, and not released.
    queued: AtomicU64,
    settings: DiskSettings,
}

impl Shared {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of the memory window an event takes: the reader takes them, `release` and
    /// `abandon` give the same back.
    fn window_cost(&self, event: &Event) -> u32 {
        event
            .payload
            .len()
            .min(self.settings.window_bytes)
            .min(u32::MAX as usize) as u32
    }
}

/// Where events leave for the senders: the channel, once they have room in the memory
/// window. The reader waits for room; the writer only takes room that is free.
#[derive(Clone)]
struct Outlet {
    out: async_channel::Sender<Event>,
    window_events: Arc<Semaphore>,
    window_bytes: Arc<Semaphore>,
}

impl Outlet {
    /// Sends `events` if the window has room for all of them now. False when it has not
    /// (or the senders are gone): they are dropped here, and stay on disk to be read back.
    fn try_send_all(&self, shared: &Shared, events: Vec<Event>) -> bool {
        let bytes: u64 = events
            .iter()
            .map(|e| u64::from(shared.window_cost(e)))
            .sum();
        let (Ok(n), Ok(bytes)) = (u32::try_from(events.len()), u32::try_from(bytes)) else {
            return false;
        };
        let Ok(room_events) = self.window_events.try_acquire_many(n) else {
            return false;
        };
        let Ok(room_bytes) = self.window_bytes.try_acquire_many(bytes) else {
            return false;
        };
        if self.out.is_closed() {
            return false;
        }
        // `release` and `abandon` give the room back.
        room_events.forget();
        room_bytes.forget();
        for event in events {
            // Unbounded, and open as checked above. Closed since (`finish`), the event
            // stays on disk unacknowledged and is sent at the next start.
            let _ = self.out.try_send(event);
        }
        true
    }
}

/// Messages to the writer thread. Records do not come this way (see [`Inbox`]).
enum ToWriter {
    /// The inbox got its first record since the writer last emptied it.
    Wake,
    /// Records acknowledged by an OAP (or given up on as rejected).
    Acked(Vec<u64>),
    /// The reader finished a segment: it may be deletable now.
    ReadDone,
    /// No more records will come (sent after the intake closed).
    Closed,
    /// Write what is pending, sync everything, and end.
    Stop,
}

/// Records pushed and not yet taken by the writer. Numbers are given out under its lock,
/// so records are written in number order. A push wakes the writer only when the inbox
/// was empty (the writer empties it each turn): at a high rate the writer takes hundreds
/// of records per wake-up instead of being woken for each.
struct Inbox {
    next_seq: u64,
    records: Vec<(u64, Event)>,
    /// False once the queue is closed: pushes fail.
    open: bool,
}

pub struct DiskQueue {
    shared: Arc<Shared>,
    /// Acknowledgements and control messages (never closed before `finish`).
    control: std::sync::mpsc::Sender<ToWriter>,
    /// Bytes handed to the writer, not written yet.
    intake_room: Arc<Semaphore>,
    /// The highest number an agent may be told OK about (written or synced, by mode).
    settled: watch::Receiver<u64>,
    /// Events the reader read back, for the senders.
    out: async_channel::Receiver<Event>,
    /// The memory window: taken by the reader per event, given back on release.
    window_events: Arc<Semaphore>,
    window_bytes: Arc<Semaphore>,
    stop: CancellationToken,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl DiskQueue {
    /// Opens (or creates) the queue in `settings.dir`: takes its lock, recovers what the
    /// last run left (see `recover`), and starts the writer thread and the reader task
    /// (on the current runtime).
    pub fn open(settings: DiskSettings) -> Result<DiskQueue, OpenError> {
        let stats = Arc::new(DiskStats::default());
        stats
            .limit_bytes
            .store(settings.max_bytes, Ordering::Relaxed);
        let recovered = recover::recover(&settings, &stats)?;
        let shared = Arc::new(Shared {
            index: Mutex::new(Index {
                segments: recovered.segments,
                following: false,
            }),
            stats,
            written: Notify::new(),
            drained: AtomicBool::new(false),
            inbox: Mutex::new(Inbox {
                next_seq: recovered.next_seq,
                records: Vec::new(),
                open: true,
            }),
            queued: AtomicU64::new(0),
            settings,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let intake_room = Arc::new(Semaphore::new(INTAKE_BYTES));
        let (settled_tx, settled) = watch::channel(recovered.next_seq - 1);
        let (out_tx, out) = async_channel::unbounded();
        let outlet = Outlet {
            out: out_tx,
            window_events: Arc::new(Semaphore::new(shared.settings.window_events)),
            window_bytes: Arc::new(Semaphore::new(shared.settings.window_bytes)),
        };
        let writer = writer::Writer::new(
            shared.clone(),
            rx,
            recovered.lock,
            intake_room.clone(),
            settled_tx,
            outlet.clone(),
        );
        let writer = std::thread::Builder::new()
            .name("satmesh-disk-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| OpenError::Io {
                path: shared.settings.dir.clone(),
                source,
            })?;
        let (window_events, window_bytes) =
            (outlet.window_events.clone(), outlet.window_bytes.clone());
        let stop = CancellationToken::new();
        let reader = tokio::spawn(reader::run(reader::Reader {
            shared: shared.clone(),
            outlet,
            done: tx.clone(),
            replay_below: recovered.next_seq,
            stop: stop.clone(),
        }));
        Ok(DiskQueue {
            shared,
            control: tx,
            intake_room,
            settled,
            out,
            window_events,
            window_bytes,
            stop,
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(Some(reader)),
        })
    }

    pub fn stats(&self) -> Arc<DiskStats> {
        self.shared.stats.clone()
    }

    /// Room an event takes in the writer's intake.
    fn intake_cost(event: &Event) -> u32 {
        event.payload.len().clamp(1, INTAKE_BYTES) as u32
    }

    /// Numbers the event and puts it in the writer's inbox (its intake room already
    /// taken); gives it back once the queue is closed.
    #[allow(clippy::result_large_err)] // as `try_push`: the event goes back whole
    fn send(&self, event: Event) -> Result<u64, Event> {
        let mut inbox = self.shared.inbox();
        if !inbox.open {
            return Err(event);
        }
        let seq = inbox.next_seq;
        inbox.next_seq += 1;
        inbox.records.push((seq, event));
        let wake = inbox.records.len() == 1;
        drop(inbox);
        if wake {
            let _ = self.control.send(ToWriter::Wake);
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }
}

impl EventQueue for DiskQueue {
    fn push(&self, event: Event) -> BoxFuture<'_, Result<u64, QueueClosed>> {
        Box::pin(async move {
            let room = self
                .intake_room
                .acquire_many(Self::intake_cost(&event))
                .await
                .map_err(|_| QueueClosed)?;
            // The writer gives the room back once the record is written.
            room.forget();
            self.send(event).map_err(|_| QueueClosed)
        })
    }

    fn try_push(&self, event: Event) -> Result<u64, Event> {
        let Ok(room) = self.intake_room.try_acquire_many(Self::intake_cost(&event)) else {
            return Err(event);
        };
        room.forget();
        // Closed: the caller's `push` reports it.
        self.send(event)
    }

    fn settle(&self, upto: u64) -> Option<BoxFuture<'_, Result<(), QueueClosed>>> {
        if *self.settled.borrow() >= upto {
            return None;
        }
        let mut settled = self.settled.clone();
        Some(Box::pin(async move {
            settled
                .wait_for(|s| *s >= upto)
                .await
                .map(|_| ())
                .map_err(|_| QueueClosed)
        }))
    }

    fn pop<'a>(&'a self, max: usize, out: &'a mut Vec<Event>) -> BoxFuture<'a, bool> {
        Box::pin(pop_channel(&self.out, max, out))
    }

    fn try_pop(&self, max: usize, out: &mut Vec<Event>) {
        try_pop_channel(&self.out, max, out);
    }

    fn release(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        self.give_back(events);
        let _ = self
            .control
            .send(ToWriter::Acked(events.iter().map(|e| e.seq).collect()));
    }

    fn abandon(&self, events: &[Event]) -> bool {
        // Not acknowledged: they stay on disk and are sent again at the next start.
        self.give_back(events);
        true
    }

    fn close(&self) {
        // Pushes fail from now on; the writer writes what it was given, then the reader
        // ends the senders' stream once it has read everything.
        let mut inbox = self.shared.inbox();
        let was_open = std::mem::replace(&mut inbox.open, false);
        drop(inbox);
        if was_open {
            let _ = self.control.send(ToWriter::Closed);
        }
        self.intake_room.close();
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.close();
            self.stop.cancel();
            self.out.close();
            let _ = self.control.send(ToWriter::Stop);
            let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(reader) = reader {
                let _ = reader.await;
            }
            let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(writer) = writer {
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            }
        })
    }

    fn depth(&self) -> Depth {
        Depth {
            events: self.shared.queued.load(Ordering::Relaxed) as usize,
            bytes: self.shared.stats.used_bytes.load(Ordering::Relaxed) as usize,
            capacity_events: self.shared.settings.window_events,
            capacity_bytes: self.shared.settings.max_bytes as usize,
        }
    }

    fn disk(&self) -> Option<Arc<DiskStats>> {
        Some(self.stats())
    }
}

impl DiskQueue {
    /// Gives the memory window back for events leaving it.
    fn give_back(&self, events: &[Event]) {
        let bytes: usize = events
            .iter()
            .map(|e| self.shared.window_cost(e) as usize)
            .sum();
        self.window_events.add_permits(events.len());
        self.window_bytes.add_permits(bytes);
        let _ = self
            .shared
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(events.len() as u64))
            });
    }
}

#[cfg(test)]
mod tests;
