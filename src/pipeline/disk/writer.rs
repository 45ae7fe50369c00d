//! The writer thread: the only code that writes the queue's files.
//!
//! A thread of its own, not a task: `write` and `fdatasync` block, and a sync can take
//! milliseconds. Each turn takes everything that arrived (records, acknowledgements),
//! appends the records in one write (and with `fsync: always` one `fdatasync`, the group
//! commit: every agent whose records arrived while the last sync ran shares the next),
//! then tells the waiting calls they may be answered. While the reader follows, the
//! events just written go from here straight to the senders (nothing is read back). At `max_bytes`, or when the file
//! system refuses a write (ENOSPC, EIO), the records stay pending, nothing is dropped, the
//! episode is logged once and exposed (`satmesh_disk_full`), and the write is tried again
//! every 100 ms to 1 s until space comes back (acknowledged segments are deleted).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

use super::record::{self, Record};
use super::segment;
use super::{
    Bitset, DEFAULT_SYNC_EVERY, DiskQueue, Fsync, Outlet, ReadFrom, Seg, Shared, ToWriter,
};
use crate::pipeline::Event;

/// Bytes of records written at once, at most.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Records taken into one turn, at most (the intake room bounds them anyway).
const MAX_PENDING: usize = 65_536;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The segment being appended to.
struct Active {
    first_seq: u64,
    file: File,
    len: u64,
}

/// A stretch of time the writer could not write.
struct Stopped {
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<ToWriter>,
    /// Held, not used: the directory's lock lives as long as the writer.
    _lock: File,
    intake_room: Arc<Semaphore>,
    settled: watch::Sender<u64>,
    /// Where written events go straight to the senders while the reader follows.
    outlet: Outlet,
    pending: VecDeque<(u64, Event)>,
    /// Numbers acknowledged this turn, appended together.
    acked: Vec<u64>,
    active: Option<Active>,
    /// Open acknowledgement files by segment, and whether any was written since the last
    /// sync.
    acks: HashMap<u64, (File, u64)>,
    acks_dirty: bool,
    /// Records written since the last sync (`fsync: interval`).
    data_dirty: bool,
    last_sync: Instant,
    stopped: Option<Stopped>,
    closed: bool,
    stopping: bool,
    buf: Vec<u8>,
    /// The segment header's path table and its identity mapping.
    paths: Vec<&'static str>,
    /// Deletes finished segments off this thread (None: the thread could not start, so
    /// the writer deletes them itself).
    reaper: Option<std::sync::mpsc::Sender<u64>>,
    reaper_thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        rx: Receiver<ToWriter>,
        lock: File,
        intake_room: Arc<Semaphore>,
        settled: watch::Sender<u64>,
        outlet: Outlet,
    ) -> Writer {
        let reaped = reaper(shared.clone());
        Writer {
            shared,
            rx,
            _lock: lock,
            intake_room,
            settled,
            outlet,
            pending: VecDeque::new(),
            acked: Vec::new(),
            active: None,
            acks: HashMap::new(),
            acks_dirty: false,
            data_dirty: false,
            last_sync: Instant::now(),
            stopped: None,
            closed: false,
            stopping: false,
            buf: Vec::with_capacity(BATCH_BYTES),
            paths: crate::protocol::METHODS.iter().map(|m| m.path).collect(),
            reaper: reaped.as_ref().map(|(tx, _)| tx.clone()),
            reaper_thread: reaped.map(|(_, handle)| handle),
        }
    }

    fn sync_every(&self) -> Duration {
        match self.shared.settings.fsync {
            Fsync::Always => DEFAULT_SYNC_EVERY,
            Fsync::Interval(every) => every,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let wait = self
                .next_wake()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let first = match wait {
                Some(wait) => self.rx.recv_timeout(wait),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
                Ok(message) => self.take(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
            // Everything else that arrived meanwhile joins this turn (group commit).
            while let Ok(message) = self.rx.try_recv() {
                self.take(message);
            }
            // One append per `.ack` file for all the turn's acknowledgements.
            let acked = std::mem::take(&mut self.acked);
            self.acknowledge(&acked);
            self.acked = acked;
            self.acked.clear();
            if self.pending.len() < MAX_PENDING {
                let records = std::mem::take(&mut self.shared.inbox().records);
                self.pending.extend(records);
            }
            self.write_pending();
            self.sync_if_due(false);
            self.collect_garbage();
            if self.closed
                && self.pending.is_empty()
                && !self.shared.drained.load(Ordering::Relaxed)
            {
                self.shared.drained.store(true, Ordering::Relaxed);
                self.shared.written.notify_one();
            }
            if self.stopping {
                return self.stop();
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let sync = (self.data_dirty || self.acks_dirty).then(|| self.last_sync + self.sync_every());
        let retry = self
            .stopped
            .as_ref()
            .filter(|_| !self.pending.is_empty())
            .map(|s| s.retry_at);
        [sync, retry].into_iter().flatten().min()
    }

    fn take(&mut self, message: ToWriter) {
        match message {
            ToWriter::Wake => {}
            ToWriter::Acked(seqs) => self.acked.extend(seqs),
            ToWriter::ReadDone => {}
            ToWriter::Closed => self.closed = true,
            ToWriter::Stop => self.stopping = true,
        }
    }

    /// Appends as many pending records as fit, a batch (one write) at a time.
    fn write_pending(&mut self) {
        if self
            .stopped
            .as_ref()
            .is_some_and(|s| Instant::now() < s.retry_at)
        {
            return;
        }
        while !self.pending.is_empty() {
            let shared = self.shared.clone();
            let settings = &shared.settings;
            if self
                .active
                .as_ref()
                .is_none_or(|a| a.len >= settings.segment_bytes)
                && let Err(e) = self.roll()
            {
                return self.refused(&e.to_string());
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let used = self.shared.stats.used_bytes.load(Ordering::Relaxed);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let now = Instant::now();
            self.buf.clear();
            let (mut n, mut room, mut last_seq) = (0usize, 0usize, 0u64);
            for (seq, event) in &self.pending {
                let record = Record {
                    seq: *seq,
                    at_ms: now_ms.saturating_sub(
                        now.saturating_duration_since(event.enqueued).as_millis() as u64,
                    ),
                    method: event.method,
                    auth: event.auth.as_deref(),
                    key: event.key.as_deref(),
                    payload: &event.payload,
                };
                let len = record::encoded_len(&record);
                let grown = self.buf.len() + len;
                if n > 0
                    && (active.len + grown as u64 > settings.segment_bytes || grown > BATCH_BYTES)
                {
                    break;
                }
                if used + grown as u64 > settings.max_bytes {
                    break;
                }
                record::encode(&record, &mut self.buf);
                n += 1;
                room += DiskQueue::intake_cost(event) as usize;
                last_seq = *seq;
            }
            if n == 0 {
                return self.refused("pipeline.disk.max_bytes reached");
            }
            let sync = settings.fsync == Fsync::Always;
            if let Err(e) = write_at(&active.file, &self.buf, active.len, sync) {
                // Whatever part of the batch landed is cut off again: the records stay
                // pending and are written whole later.
                let _ = active.file.set_len(active.len);
                return self.refused(&e.to_string());
            }
            active.len += self.buf.len() as u64;
            let stats = &self.shared.stats;
            stats.wrote(self.buf.len());
            if sync {
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            } else {
                self.data_dirty = true;
            }
            let (first_seq, len) = (active.first_seq, active.len);
            let written: Vec<Event> = self
                .pending
                .drain(..n)
                .map(|(seq, mut event)| {
                    event.seq = seq;
                    event
                })
                .collect();
            self.intake_room.add_permits(room);
            self.settled.send_replace(last_seq);
            self.publish(first_seq, len, last_seq, written);
            if let Some(stopped) = self.stopped.take() {
                info!(after = ?stopped.since.elapsed(), "disk queue writing again");
                stats.full.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Makes a write of segment `first_seq` (now `len` bytes, its last record `last_seq`)
    /// visible: while the reader follows, its events go straight to the senders if the
    /// memory window has room for them all; otherwise the reader is woken to read them.
    fn publish(&self, first_seq: u64, len: u64, last_seq: u64, events: Vec<Event>) {
        let mut index = self.shared.index();
        let following = index.following;
        let Some(seg) = index.segment_mut(first_seq) else {
            // Never: a segment leaves the index only once read whole and acknowledged.
            error!(
                segment = first_seq,
                "disk queue wrote to a segment it no longer tracks"
            );
            return;
        };
        seg.written = len;
        if following {
            let n = events.len() as u64;
            if self.outlet.try_send_all(&self.shared, events) {
                seg.emitted += n;
                seg.read_from = ReadFrom {
                    offset: len,
                    last_seq,
                };
                return;
            }
            index.following = false;
        }
        drop(index);
        self.shared.written.notify_one();
    }

    /// Starts a new segment for the first pending record, sealing the current one.
    fn roll(&mut self) -> io::Result<()> {
        let Some(&(first_seq, _)) = self.pending.front() else {
            return Ok(());
        };
        let dir = self.shared.settings.dir.clone();
        if let Some(old) = &self.active
            && self.data_dirty
        {
            old.file.sync_data()?;
            self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            self.data_dirty = false;
        }
        let header = segment::header(first_seq, &self.paths);
        let path = segment::segment_path(&dir, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        if let Err(e) = write_at(&file, &header, 0, true) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // The new name itself must survive a crash.
        File::open(&dir)?.sync_all()?;
        let _ = std::fs::remove_file(segment::ack_path(&dir, first_seq));
        let stats = &self.shared.stats;
        stats.fsyncs.fetch_add(2, Ordering::Relaxed);
        stats.wrote(header.len());
        {
            let mut index = self.shared.index();
            let following = index.following;
            if let Some(old) = &self.active
                && let Some(seg) = index.segment_mut(old.first_seq)
            {
                seg.sealed = true;
                // The reader had read all of it, and the writer handed out the rest.
                seg.read_done |= following;
            }
            index.segments.push(Seg {
                first_seq,
                header_len: header.len() as u64,
                written: header.len() as u64,
                read_from: ReadFrom::start(first_seq, header.len() as u64),
                sealed: false,
                methods: Arc::new((0..self.paths.len() as u16).map(Some).collect()),
                acked_before: Arc::new(Bitset::default()),
                emitted: 0,
                released: 0,
                read_done: false,
            });
        }
        self.active = Some(Active {
            first_seq,
            file,
            len: header.len() as u64,
        });
        self.shared.written.notify_one();
        Ok(())
    }

    /// The records stay pending: log the episode once, expose it, try again later.
    fn refused(&mut self, why: &str) {
        let now = Instant::now();
        match &mut self.stopped {
            Some(stopped) => {
                stopped.backoff = (stopped.backoff * 2).min(RETRY_MAX);
                stopped.retry_at = now + stopped.backoff;
            }
            None => {
                warn!(
                    why,
                    pending = self.pending.len(),
                    "disk queue cannot write: agents are slowed until it can"
                );
                self.shared.stats.full.store(true, Ordering::Relaxed);
                self.stopped = Some(Stopped {
                    since: now,
                    retry_at: now + RETRY_MIN,
                    backoff: RETRY_MIN,
                });
            }
        }
    }

    /// Appends acknowledged numbers to their segments' `.ack` files.
    fn acknowledge(&mut self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let mut by_segment: HashMap<u64, Vec<u8>> = HashMap::new();
        {
            let mut index = self.shared.index();
            for &seq in seqs {
                if let Some(seg) = index.find_mut(seq) {
                    seg.released += 1;
                    by_segment
                        .entry(seg.first_seq)
                        .or_default()
                        .extend_from_slice(&seq.to_le_bytes());
                }
            }
        }
        let dir = &self.shared.settings.dir;
        for (first_seq, bytes) in by_segment {
            let (file, len) = match self.acks.entry(first_seq) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match open_acks(&segment::ack_path(dir, first_seq)) {
                        Ok(opened) => e.insert(opened),
                        Err(err) => {
                            // Only a replay after a crash would send these again.
                            warn!(error = %err, "could not record acknowledgements");
                            continue;
                        }
                    }
                }
            };
            match file.write_all_at(&bytes, *len) {
                Ok(()) => {
                    *len += bytes.len() as u64;
                    let stats = &self.shared.stats;
                    stats.wrote(bytes.len());
                    self.acks_dirty = true;
                }
                Err(err) => {
                    // A part written would shift every later entry: cut it off again.
                    let _ = file.set_len(*len);
                    warn!(error = %err, "could not record acknowledgements");
                }
            }
        }
    }

    fn sync_if_due(&mut self, now_anyway: bool) {
        if !now_anyway && Instant::now() < self.last_sync + self.sync_every() {
            return;
        }
        let stats = self.shared.stats.clone();
        if self.data_dirty
            && let Some(active) = &self.active
        {
            match active.file.sync_data() {
                Ok(()) => {
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    self.data_dirty = false;
                }
                Err(e) => error!(error = %e, "disk queue sync failed"),
            }
        }
        if self.acks_dirty {
            for (file, _) in self.acks.values() {
                let _ = file.sync_data();
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            self.acks_dirty = false;
        }
        self.last_sync = Instant::now();
    }

    /// Deletes every segment that was read whole and is acknowledged whole.
    fn collect_garbage(&mut self) {
        let dir = self.shared.settings.dir.clone();
        let done: Vec<u64> = {
            let mut index = self.shared.index();
            let done: Vec<u64> = index
                .segments
                .iter()
                .filter(|s| s.sealed && s.read_done && s.released >= s.emitted)
                .map(|s| s.first_seq)
                .collect();
            index.segments.retain(|s| !done.contains(&s.first_seq));
            done
        };
        for first_seq in done {
            self.acks.remove(&first_seq);
            // Unlinking a 64 MiB file takes tens of ms: the reaper does it, so the writer
            // never holds records back for it (a stall of 33-55 ms at a roll before).
            if let Some(reaper) = &self.reaper
                && reaper.send(first_seq).is_ok()
            {
                continue;
            }
            delete_segment(&self.shared, &dir, first_seq);
        }
    }

    /// Writes what it can of what is pending, syncs everything, and ends.
    fn stop(mut self) {
        self.stopped = None;
        self.write_pending();
        if !self.pending.is_empty() {
            // Never answered OK: their agents send them again.
            warn!(
                records = self.pending.len(),
                "disk queue stopped with records it could not write"
            );
        }
        self.sync_if_due(true);
        // The reaper finishes what it was given, then ends.
        self.reaper = None;
        if let Some(reaper) = self.reaper_thread.take() {
            let _ = reaper.join();
        }
        // Records of the last run not read back yet are not counted anywhere: say what
        // is left in segments and bytes, which covers them.
        let (segments, left) = {
            let index = self.shared.index();
            let left = index
                .segments
                .iter()
                .any(|s| s.emitted > s.released || (s.sealed && !s.read_done));
            (index.segments.len(), left)
        };
        let bytes = self.shared.stats.used_bytes.load(Ordering::Relaxed);
        if left {
            info!(segments, bytes, dir = %self.shared.settings.dir.display(), "records not yet acknowledged stay on disk and are sent again at the next start");
        }
    }
}

/// Opens a segment's acknowledgement file for appending whole entries: a torn last
/// entry (a crash mid-write) is cut off first, so later entries stay aligned.
fn open_acks(path: &std::path::Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let whole = len - len % 8;
    if whole != len {
        file.set_len(whole)?;
    }
    Ok((file, whole))
}

/// Deletes a segment and its acknowledgements, giving their bytes back to the bound.
fn delete_segment(shared: &Shared, dir: &std::path::Path, first_seq: u64) {
    let mut freed = 0;
    for path in [
        segment::segment_path(dir, first_seq),
        segment::ack_path(dir, first_seq),
    ] {
        freed += std::fs::metadata(&path).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(&path);
    }
    let _ = shared
        .stats
        .used_bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
            Some(u.saturating_sub(freed))
        });
}

/// The thread that deletes finished segments for the writer; ends when `segments` closes.
fn reaper(
    shared: Arc<Shared>,
) -> Option<(std::sync::mpsc::Sender<u64>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let dir = shared.settings.dir.clone();
    let handle = std::thread::Builder::new()
        .name("satmesh-disk-reaper".into())
        .spawn(move || {
            for first_seq in rx {
                delete_segment(&shared, &dir, first_seq);
            }
        })
        .ok()?;
    Some((tx, handle))
}

/// Writes `bytes` at `offset` of `file` (positioned: a write cut off and truncated
/// leaves no hole), then syncs its data when asked.
fn write_at(file: &File, bytes: &[u8], offset: u64, sync: bool) -> io::Result<()> {
    file.write_all_at(bytes, offset)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}
