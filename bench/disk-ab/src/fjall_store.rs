//! The queue on fjall 3 (an LSM tree with a journal).
//!
//! Each commit is one `WriteBatch` followed by `Database::persist(SyncData)` (fjall 3
//! has no sync timer: a batch reaches the OS buffers, `persist` makes it durable).
//!
//! Two layouts:
//! - [`Layout::Segments`] (the idiomatic fast way for a FIFO, and what the notes advise):
//!   records go to one keyspace per `per_segment` records, the acknowledged mark is one
//!   key in a `meta` keyspace written in the same batch, and a keyspace whose records
//!   are all acknowledged is dropped whole (`delete_keyspace`): no tombstones at all.
//!   A keyspace's memtable may hold twice a segment, so a segment read and acknowledged
//!   in time is dropped from memory, never flushed to a table (with fjall's default
//!   64 MiB memtable and 64 MiB segments every segment was written twice: 2.0 device
//!   bytes per payload byte at 4 KiB instead of 1.1).
//! - [`Layout::Keys`]: one keyspace, and each acknowledged record is removed (a
//!   tombstone per record, compacted away later); the reader keeps its cursor, so it
//!   never walks the tombstones from the front.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::embedded::{Opened, Reads, Writes};

#[derive(Clone, Copy, Debug)]
pub enum Layout {
    Segments {
        per_segment: u64,
        memtable_bytes: u64,
    },
    Keys,
}

type Segments = Arc<Mutex<BTreeMap<u64, Keyspace>>>;

pub struct FjallWrites {
    db: Database,
    layout: Layout,
    segments: Segments,
    meta: Keyspace,
    /// Every record up to here is acknowledged.
    acked_upto: u64,
    /// Acknowledged above a gap.
    acked_above: BTreeSet<u64>,
}

pub struct FjallReads {
    layout: Layout,
    segments: Segments,
}

fn options(layout: Layout) -> KeyspaceCreateOptions {
    match layout {
        Layout::Segments { memtable_bytes, .. } => {
            KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes)
        }
        Layout::Keys => KeyspaceCreateOptions::default(),
    }
}

fn name(segment: u64) -> String {
    format!("q{segment:012}")
}

fn segment_of(layout: Layout, seq: u64) -> u64 {
    match layout {
        Layout::Segments { per_segment, .. } => (seq - 1) / per_segment,
        Layout::Keys => 0,
    }
}

pub fn open(dir: &Path, layout: Layout) -> anyhow::Result<Opened<FjallWrites, FjallReads>> {
    let db = Database::builder(dir).open().context("open fjall")?;
    let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
    let acked_upto = match meta.get("acked")? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().context("acked mark")?),
        None => 0,
    };
    let mut segments = BTreeMap::new();
    for name in db.list_keyspace_names() {
        if let Some(n) = name.strip_prefix('q').and_then(|n| n.parse::<u64>().ok()) {
            segments.insert(n, db.keyspace(&name, || options(layout))?);
        }
    }
    let mut first_unacked = acked_upto + 1;
    let mut next_seq = first_unacked;
    if let Some(last) = segments.values().next_back()
        && let Some(kv) = last.last_key_value()
    {
        let key = kv.key()?;
        next_seq = next_seq.max(u64::from_be_bytes(key.as_ref().try_into()?) + 1);
    }
    if let Layout::Keys = layout
        && let Some(first) = segments.values().next()
        && let Some(kv) = first.first_key_value()
    {
        first_unacked = u64::from_be_bytes(kv.key()?.as_ref().try_into()?);
    }
    let segments = Arc::new(Mutex::new(segments));
    let mut writes = FjallWrites {
        db,
        layout,
        segments: segments.clone(),
        meta,
        acked_upto,
        acked_above: BTreeSet::new(),
    };
    writes.drop_acknowledged()?;
    Ok(Opened {
        writes,
        reads: FjallReads { layout, segments },
        next_seq,
        first_unacked,
    })
}

impl FjallWrites {
    fn keyspace(&self, segment: u64) -> anyhow::Result<Keyspace> {
        let mut segments = self.segments.lock().unwrap();
        if let Some(ks) = segments.get(&segment) {
            return Ok(ks.clone());
        }
        let layout = self.layout;
        let ks = self.db.keyspace(&name(segment), || options(layout))?;
        segments.insert(segment, ks.clone());
        Ok(ks)
    }

    /// Drops every keyspace whose records are all acknowledged.
    fn drop_acknowledged(&mut self) -> anyhow::Result<()> {
        let Layout::Segments { per_segment, .. } = self.layout else {
            return Ok(());
        };
        let done: Vec<Keyspace> = {
            let mut segments = self.segments.lock().unwrap();
            let keep = segments.split_off(&(self.acked_upto / per_segment));
            std::mem::replace(&mut *segments, keep)
                .into_values()
                .collect()
        };
        for ks in done {
            self.db.delete_keyspace(ks)?;
        }
        Ok(())
    }
}

impl Writes for FjallWrites {
    fn commit(&mut self, records: &[(u64, Bytes)], acked: &[u64]) -> anyhow::Result<()> {
        let mut batch = self.db.batch();
        let mut current: Option<(u64, Keyspace)> = None;
        for (seq, payload) in records {
            let segment = segment_of(self.layout, *seq);
            let ks = match &current {
                Some((s, ks)) if *s == segment => ks.clone(),
                _ => {
                    let ks = self.keyspace(segment)?;
                    current = Some((segment, ks.clone()));
                    ks
                }
            };
            batch.insert(&ks, seq.to_be_bytes(), payload.as_ref());
        }
        match self.layout {
            Layout::Keys => {
                let ks = self.keyspace(0)?;
                for seq in acked {
                    batch.remove(&ks, seq.to_be_bytes());
                }
            }
            Layout::Segments { .. } => {
                let before = self.acked_upto;
                self.acked_above.extend(acked);
                while self.acked_above.remove(&(self.acked_upto + 1)) {
                    self.acked_upto += 1;
                }
                if self.acked_upto != before {
                    batch.insert(&self.meta, "acked", self.acked_upto.to_be_bytes());
                }
            }
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncData)?;
        self.drop_acknowledged()
    }
}

impl Reads for FjallReads {
    fn read(
        &self,
        from: u64,
        upto: u64,
        max: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> anyhow::Result<()> {
        let segment = segment_of(self.layout, from);
        let upto = match self.layout {
            Layout::Segments { per_segment, .. } => upto.min((segment + 1) * per_segment),
            Layout::Keys => upto,
        };
        let Some(ks) = self.segments.lock().unwrap().get(&segment).cloned() else {
            anyhow::bail!("no keyspace for record {from}");
        };
        for kv in ks.range(from.to_be_bytes()..=upto.to_be_bytes()).take(max) {
            let (k, v) = kv.into_inner()?;
            out.push((
                u64::from_be_bytes(k.as_ref().try_into()?),
                Bytes::copy_from_slice(&v),
            ));
        }
        Ok(())
    }
}
