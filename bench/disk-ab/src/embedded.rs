//! A queue on an embedded store, built the way satmesh's segment log is: one writer
//! thread owns every write and commits everything that arrived while the last commit
//! ran (group commit), acknowledgements go to the same thread and ride in the next
//! commit, and one reader hands records out in order, only once they are durable.
//!
//! The store is behind two small traits ([`Writes`], [`Reads`]), so fjall and redb get
//! exactly the same queue around them and only their storage differs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use satmesh::pipeline::Event;
use satmesh::pipeline::queue::{BoxFuture, Depth, EventQueue, QueueClosed};
use tokio::sync::{Semaphore, watch};

/// The writer's side of a store: one durable commit of new records and of records
/// acknowledged since the last commit.
pub trait Writes: Send + 'static {
    /// Returns once everything given is on the device.
    fn commit(&mut self, records: &[(u64, Bytes)], acked: &[u64]) -> anyhow::Result<()>;
}

/// The reader's side: records `from..=upto` (all durable), at most `max`, in order.
pub trait Reads: Send + Sync + 'static {
    fn read(
        &self,
        from: u64,
        upto: u64,
        max: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> anyhow::Result<()>;
}

/// Where a store left off when it was opened.
pub struct Opened<W, R> {
    pub writes: W,
    pub reads: R,
    /// The number the next record gets.
    pub next_seq: u64,
    /// The first record not acknowledged (what the reader starts at).
    pub first_unacked: u64,
}

/// As in satmesh's writer: bytes of records handed over and not committed yet, at most.
const INTAKE_BYTES: usize = 16 * 1024 * 1024;
/// Records in one commit, at most (satmesh: 4 MiB batches, 65,536 records a turn).
const BATCH_BYTES: usize = 4 * 1024 * 1024;
const MAX_PENDING: usize = 65_536;
/// Acknowledgements with no record to ride along are committed after this (satmesh
/// syncs its `.ack` files every 100 ms).
const ACK_EVERY: Duration = Duration::from_millis(100);

enum Msg {
    Record(u64, Bytes),
    Acked(Vec<u64>),
    Stop,
}

pub struct Log {
    intake: Mutex<Intake>,
    control: Sender<Msg>,
    intake_room: Arc<Semaphore>,
    /// The highest record number that is durable.
    durable: watch::Receiver<u64>,
    reads: Arc<dyn Reads>,
    /// The next record number the reader hands out.
    cursor: tokio::sync::Mutex<u64>,
    pub commits: Arc<AtomicU64>,
    /// Records pushed and not released.
    held: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Intake {
    next_seq: u64,
    tx: Option<Sender<Msg>>,
}

impl Log {
    pub fn start<W: Writes, R: Reads>(opened: Opened<W, R>) -> Log {
        let (tx, rx) = std::sync::mpsc::channel();
        let intake_room = Arc::new(Semaphore::new(INTAKE_BYTES));
        let (durable_tx, durable) = watch::channel(opened.next_seq - 1);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            writes: opened.writes,
            rx,
            durable: durable_tx,
            intake_room: intake_room.clone(),
            commits: commits.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("ab-writer".into())
            .spawn(move || writer.run())
            .expect("spawn the writer thread");
        Log {
            intake: Mutex::new(Intake {
                next_seq: opened.next_seq,
                tx: Some(tx.clone()),
            }),
            control: tx,
            intake_room,
            durable,
            reads: Arc::new(opened.reads),
            cursor: tokio::sync::Mutex::new(opened.first_unacked),
            commits,
            held: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        }
    }

    fn cost(event: &Event) -> u32 {
        event.payload.len().clamp(1, INTAKE_BYTES) as u32
    }

    // Gives the event back when closed, as `EventQueue::try_push` does.
    #[allow(clippy::result_large_err)]
    fn send(&self, event: Event) -> Result<u64, Event> {
        let mut intake = self.intake.lock().unwrap();
        let seq = intake.next_seq;
        let Some(tx) = intake.tx.as_ref() else {
            return Err(event);
        };
        match tx.send(Msg::Record(seq, event.payload.clone())) {
            Ok(()) => {
                intake.next_seq += 1;
                self.held.fetch_add(1, Ordering::Relaxed);
                Ok(seq)
            }
            Err(_) => Err(event),
        }
    }
}

impl Log {
    /// Reads durable records from the cursor up to `upto` into `out`, moving the cursor
    /// past them. False when there were none.
    fn read(
        &self,
        cursor: &mut u64,
        upto: u64,
        max: usize,
        out: &mut Vec<Event>,
    ) -> anyhow::Result<bool> {
        if upto < *cursor {
            return Ok(false);
        }
        let mut records = Vec::new();
        self.reads.read(*cursor, upto, max, &mut records)?;
        let Some(&(last, _)) = records.last() else {
            anyhow::bail!("records {}..={upto} are durable but not found", *cursor);
        };
        *cursor = last + 1;
        let now = Instant::now();
        out.extend(records.into_iter().map(|(seq, payload)| Event {
            method: 0,
            auth: None,
            payload,
            enqueued: now,
            key: None,
            seq,
        }));
        Ok(true)
    }
}

impl EventQueue for Log {
    fn push(&self, event: Event) -> BoxFuture<'_, Result<u64, QueueClosed>> {
        Box::pin(async move {
            let room = self
                .intake_room
                .acquire_many(Self::cost(&event))
                .await
                .map_err(|_| QueueClosed)?;
            room.forget();
            self.send(event).map_err(|_| QueueClosed)
        })
    }

    fn try_push(&self, event: Event) -> Result<u64, Event> {
        let Ok(room) = self.intake_room.try_acquire_many(Self::cost(&event)) else {
            return Err(event);
        };
        room.forget();
        self.send(event)
    }

    fn settle(&self, upto: u64) -> Option<BoxFuture<'_, Result<(), QueueClosed>>> {
        if *self.durable.borrow() >= upto {
            return None;
        }
        let mut durable = self.durable.clone();
        Some(Box::pin(async move {
            durable
                .wait_for(|d| *d >= upto)
                .await
                .map(|_| ())
                .map_err(|_| QueueClosed)
        }))
    }

    fn pop<'a>(&'a self, max: usize, out: &'a mut Vec<Event>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut cursor = self.cursor.lock().await;
            let mut durable = self.durable.clone();
            loop {
                let upto = *durable.borrow_and_update();
                match self.read(&mut cursor, upto, max, out) {
                    Ok(true) => return true,
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("read failed: {e:#}");
                        return false;
                    }
                }
                if durable.changed().await.is_err() {
                    return false;
                }
            }
        })
    }

    fn try_pop(&self, max: usize, out: &mut Vec<Event>) {
        if let Ok(mut cursor) = self.cursor.try_lock() {
            let upto = *self.durable.borrow();
            if let Err(e) = self.read(&mut cursor, upto, max, out) {
                eprintln!("read failed: {e:#}");
            }
        }
    }

    fn release(&self, events: &[Event]) {
        if !events.is_empty() {
            self.held.fetch_sub(events.len() as u64, Ordering::Relaxed);
            let _ = self
                .control
                .send(Msg::Acked(events.iter().map(|e| e.seq).collect()));
        }
    }

    fn close(&self) {
        self.intake.lock().unwrap().tx = None;
    }

    fn finish(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.control.send(Msg::Stop);
            let writer = self.writer.lock().unwrap().take();
            if let Some(writer) = writer {
                let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            }
        })
    }

    /// Events only: the bench reads no other figure.
    fn depth(&self) -> Depth {
        Depth {
            events: self.held.load(Ordering::Relaxed) as usize,
            ..Depth::default()
        }
    }
}

struct Writer<W> {
    writes: W,
    rx: Receiver<Msg>,
    durable: watch::Sender<u64>,
    intake_room: Arc<Semaphore>,
    commits: Arc<AtomicU64>,
}

impl<W: Writes> Writer<W> {
    fn run(mut self) {
        let mut records: Vec<(u64, Bytes)> = Vec::new();
        let mut bytes = 0;
        let mut acked: Vec<u64> = Vec::new();
        // When the oldest acknowledgement not committed yet arrived.
        let mut acked_since: Option<Instant> = None;
        let mut stopping = false;
        loop {
            let first = match acked_since {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(since) => self
                    .rx
                    .recv_timeout((since + ACK_EVERY).saturating_duration_since(Instant::now())),
            };
            let mut next = match first {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    stopping = true;
                    None
                }
            };
            // Everything else that arrived meanwhile joins this commit.
            while let Some(msg) = next {
                match msg {
                    Msg::Record(seq, payload) => {
                        bytes += payload.len();
                        records.push((seq, payload));
                    }
                    Msg::Acked(seqs) => {
                        acked_since.get_or_insert_with(Instant::now);
                        acked.extend(seqs);
                    }
                    Msg::Stop => stopping = true,
                }
                next = if records.len() < MAX_PENDING && bytes < BATCH_BYTES {
                    self.rx.try_recv().ok()
                } else {
                    None
                };
            }
            let acks_due = acked_since.is_some_and(|s| stopping || s.elapsed() >= ACK_EVERY);
            if !records.is_empty() || acks_due {
                if let Err(e) = self.writes.commit(&records, &acked) {
                    eprintln!("commit failed: {e:#}");
                    return;
                }
                self.commits.fetch_add(1, Ordering::Relaxed);
                if let Some(&(last, _)) = records.last() {
                    self.durable.send_replace(last);
                }
                let room: usize = records
                    .iter()
                    .map(|(_, p)| p.len().clamp(1, INTAKE_BYTES))
                    .sum();
                self.intake_room.add_permits(room);
                records.clear();
                bytes = 0;
                acked.clear();
                acked_since = None;
            }
            if stopping {
                return;
            }
        }
    }
}
