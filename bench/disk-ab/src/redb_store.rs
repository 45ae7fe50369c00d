//! The queue on redb 5 (a copy-on-write B-tree in one file).
//!
//! Each commit is one write transaction with `Durability::Immediate` (redb's default:
//! the commit returns once it is fsynced) holding the new records and the removal of the
//! acknowledged ones, as contiguous ranges (`retain_in(range, |_, _| false)`). Removed
//! keys are the acknowledgement record: after a restart the first key is the first
//! record not acknowledged.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use crate::embedded::{Opened, Reads, Writes};

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");

pub struct RedbWrites {
    db: Arc<Database>,
    quick_repair: bool,
}

pub struct RedbReads {
    db: Arc<Database>,
}

/// `quick_repair`: redb saves its allocator state at each commit (and commits in two
/// phases), so a reopen after a crash does not walk the whole file.
pub fn open(dir: &Path, quick_repair: bool) -> anyhow::Result<Opened<RedbWrites, RedbReads>> {
    std::fs::create_dir_all(dir)?;
    let db = Arc::new(Database::create(dir.join("queue.redb")).context("open redb")?);
    let (mut next_seq, mut first_unacked) = (1, 1);
    let txn = db.begin_read()?;
    match txn.open_table(QUEUE) {
        Ok(table) => {
            if let Some((k, _)) = table.last()? {
                next_seq = k.value() + 1;
            }
            if let Some((k, _)) = table.first()? {
                first_unacked = k.value();
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    drop(txn);
    Ok(Opened {
        writes: RedbWrites {
            db: db.clone(),
            quick_repair,
        },
        reads: RedbReads { db },
        next_seq,
        first_unacked: first_unacked.max(1),
    })
}

impl Writes for RedbWrites {
    fn commit(&mut self, records: &[(u64, Bytes)], acked: &[u64]) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(self.quick_repair);
        {
            let mut table = txn.open_table(QUEUE)?;
            for (seq, payload) in records {
                table.insert(*seq, payload.as_ref())?;
            }
            let mut acked = acked.to_vec();
            acked.sort_unstable();
            let mut i = 0;
            while i < acked.len() {
                let lo = acked[i];
                let mut hi = lo;
                while i + 1 < acked.len() && acked[i + 1] == hi + 1 {
                    i += 1;
                    hi += 1;
                }
                table.retain_in(lo..=hi, |_, _| false)?;
                i += 1;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl Reads for RedbReads {
    fn read(
        &self,
        from: u64,
        upto: u64,
        max: usize,
        out: &mut Vec<(u64, Bytes)>,
    ) -> anyhow::Result<()> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUEUE)?;
        for kv in table.range(from..=upto)?.take(max) {
            let (k, v) = kv?;
            out.push((k.value(), Bytes::copy_from_slice(v.value())));
        }
        Ok(())
    }
}
