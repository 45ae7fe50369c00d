//! Opening the queue's directory: the lock, then what the last run left.
//!
//! Start-up reads each segment's header and `.ack` file, and scans only the last segment
//! (the one a crash can have cut): a torn tail is truncated there and logged. Damage in
//! the middle of any segment is stepped over later, by the reader, which logs and counts
//! each record it skips. A segment whose header cannot be read is moved aside as
//! `<name>.damaged` (logged, its records counted as unknown) rather than stopping the
//! start; a half-created last segment (a crash while rolling), or one without a whole
//! record, is deleted: the next segment takes its name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::segment::{self, HeaderError};
use super::{Bitset, DiskSettings, DiskStats, ReadFrom, Seg};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("pipeline.disk.path {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "pipeline.disk.path {path} is in use by another satmesh (pid {pid}); each peer needs a directory of its own"
    )]
    Locked { path: PathBuf, pid: String },
}

/// What the last run left, ready to be written after and read back.
pub(super) struct Recovered {
    pub segments: Vec<Seg>,
    /// The number the next pushed record gets.
    pub next_seq: u64,
    /// The directory's lock, held for the life of the writer.
    pub lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Takes the directory's lock: a second satmesh on it gets [`OpenError::Locked`] naming
/// the holder's pid (written into the lock file by the holder).
fn lock(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(OpenError::Locked {
                path: dir.to_owned(),
                pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    file.set_len(0).map_err(io_err(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
    Ok(file)
}

pub(super) fn recover(
    settings: &DiskSettings,
    stats: &Arc<DiskStats>,
) -> Result<Recovered, OpenError> {
    let dir = &settings.dir;
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock = lock(dir)?;

    let mut segs = Vec::new();
    let mut acks = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        match name.to_str().and_then(segment::parse_name) {
            Some((seq, true)) => segs.push(seq),
            Some((seq, false)) => acks.push(seq),
            None => {}
        }
    }
    segs.sort_unstable();
    // An acknowledgement file whose segment is gone was being deleted.
    for seq in acks.iter().filter(|a| segs.binary_search(a).is_err()) {
        let _ = fs::remove_file(segment::ack_path(dir, *seq));
    }

    let mut segments: Vec<Seg> = Vec::new();
    let mut next_seq = 1;
    let count = segs.len();
    for (i, first_seq) in segs.into_iter().enumerate() {
        let last = i + 1 == count;
        let path = segment::segment_path(dir, first_seq);
        let mut file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let size = file.metadata().map_err(io_err(&path))?.len();
        let header = match segment::read_header(&mut file) {
            Ok(h) if h.first_seq == first_seq => h,
            Ok(_) | Err(HeaderError::Damaged | HeaderError::Magic | HeaderError::Version(_))
                if last && size < 64 * 1024 =>
            {
                // Created, then cut before its first record was whole.
                warn!(file = %path.display(), bytes = size, "half-created queue segment deleted");
                drop(file);
                next_seq = next_seq.max(discard(dir, first_seq));
                continue;
            }
            Ok(_) => {
                set_aside(
                    dir,
                    first_seq,
                    stats,
                    "its header names another first record",
                );
                // Its numbers are never given out again (every record takes > 1 byte).
                next_seq = next_seq.max(first_seq + size);
                continue;
            }
            Err(HeaderError::Io(e)) => return Err(io_err(&path)(e)),
            Err(e) => {
                set_aside(dir, first_seq, stats, &e.to_string());
                next_seq = next_seq.max(first_seq + size);
                continue;
            }
        };
        let mut written = size;
        if last {
            let scan = scan_tail(&mut file, header.len, first_seq).map_err(io_err(&path))?;
            if scan.records == 0 {
                // Started, then cut before a record was whole in it: it holds nothing, and
                // its name is the number the next record gets, so the next segment would
                // take its name (kept, the two would be one file under two entries, and
                // deleting the empty one would delete the live one).
                warn!(file = %path.display(), bytes = size, "queue segment without a whole record deleted");
                drop(file);
                next_seq = next_seq.max(discard(dir, first_seq));
                continue;
            }
            let end = header.len + scan.valid_end as u64;
            if end < size {
                warn!(file = %path.display(), offset = end, bytes = size - end, "torn write at the end of the queue truncated");
                file.set_len(end).map_err(io_err(&path))?;
                file.sync_data().map_err(io_err(&path))?;
                written = end;
            }
            next_seq = scan.last_seq.map_or(first_seq, |s| s + 1);
        }
        // Numbers never go back, even past a segment set aside or emptied.
        next_seq = next_seq.max(first_seq);
        let acked_before = read_acks(dir, first_seq);
        let ack_bytes = fs::metadata(segment::ack_path(dir, first_seq)).map_or(0, |m| m.len());
        stats
            .used_bytes
            .fetch_add(written + ack_bytes, Ordering::Relaxed);
        let methods = header
            .paths
            .iter()
            .map(|p| crate::protocol::lookup(p))
            .collect();
        segments.push(Seg {
            first_seq,
            header_len: header.len,
            written,
            read_from: ReadFrom::start(first_seq, header.len),
            sealed: true,
            methods: Arc::new(methods),
            acked_before: Arc::new(acked_before),
            emitted: 0,
            released: 0,
            read_done: false,
        });
    }
    if let Some(last) = segments.last() {
        next_seq = next_seq.max(last.first_seq);
        let bytes: u64 = segments.iter().map(|s| s.written - s.header_len).sum();
        info!(dir = %dir.display(), segments = segments.len(), bytes, "disk queue found records of the last run, sending them again");
    }
    Ok(Recovered {
        segments,
        next_seq: next_seq.max(1),
        lock,
    })
}

/// Deletes a last segment that holds no record, and its acknowledgements. Returns the
/// number the next record gets: the one its first record would have had (its name).
fn discard(dir: &Path, first_seq: u64) -> u64 {
    let _ = fs::remove_file(segment::segment_path(dir, first_seq));
    let _ = fs::remove_file(segment::ack_path(dir, first_seq));
    first_seq
}

/// Moves a segment that cannot be read out of the way, keeping it for a person to look at.
fn set_aside(dir: &Path, first_seq: u64, stats: &DiskStats, why: &str) {
    let path = &segment::segment_path(dir, first_seq);
    let _ = fs::remove_file(segment::ack_path(dir, first_seq));
    let aside = path.with_extension("seg.damaged");
    warn!(file = %path.display(), moved_to = %aside.display(), why, "unreadable queue segment set aside; its records are lost");
    stats.corrupt.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = fs::rename(path, &aside) {
        warn!(file = %path.display(), error = %e, "could not set the segment aside");
    }
}

/// Scans the records of the last segment for its whole end.
fn scan_tail(file: &mut File, header_len: u64, first_seq: u64) -> io::Result<segment::Scan> {
    file.seek(SeekFrom::Start(header_len))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(segment::scan(&bytes, first_seq))
}

/// The records of the segment starting at `first_seq` acknowledged before (a torn last
/// entry is ignored).
fn read_acks(dir: &Path, first_seq: u64) -> Bitset {
    let mut set = Bitset::default();
    let Ok(bytes) = fs::read(segment::ack_path(dir, first_seq)) else {
        return set;
    };
    for entry in bytes.chunks_exact(8) {
        let seq = u64::from_le_bytes(entry.try_into().unwrap_or_default());
        if let Some(n) = seq.checked_sub(first_seq)
            && n < segment::MAX_GAP * 16
        {
            set.insert(n);
        }
    }
    set
}
