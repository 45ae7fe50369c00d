//! Segment files: a header, then records (see `record`) appended until the file reaches
//! its size, then the next one. A segment is named by the `seq` of its first record, so
//! the files sort in queue order and a name says where its numbers start.
//!
//! ```text
//! <dir>/00000000000000000001.seg   header | record | record | ...
//! <dir>/00000000000000000001.ack   seq u64 LE of each acknowledged record, appended
//! <dir>/lock                       flock'd by the owner; holds its pid
//! ```
//!
//! Header: `SATMESHQ` | version u32 | first_seq u64 | table_len u32 | crc u32 | table, where
//! the table is the path of each method id, one per line, as the writing version numbered
//! them (a record stores the id), and `crc` is the CRC-32C of everything before it plus
//! the table.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::record::{self, Read as Rec};

const MAGIC: &[u8; 8] = b"SATMESHQ";
const VERSION: u32 = 1;
const FIXED: usize = 8 + 4 + 8 + 4 + 4;
/// A path table longer than this is damage.
const MAX_TABLE: usize = 1024 * 1024;

/// What a segment's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub first_seq: u64,
    /// Method id -> path, as the writer numbered them.
    pub paths: Vec<String>,
    /// Bytes the header takes: records start here.
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("reading the header: {0}")]
    Io(#[from] io::Error),
    #[error("not a satmesh queue segment (bad magic)")]
    Magic,
    #[error("segment format version {0}, this satmesh reads {VERSION}")]
    Version(u32),
    #[error("damaged header (checksum or length)")]
    Damaged,
}

pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

pub fn ack_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.ack"))
}

/// The first seq a segment or ack file name stands for, and whether it is a segment.
pub fn parse_name(name: &str) -> Option<(u64, bool)> {
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq = stem.parse().ok()?;
    match ext {
        "seg" => Some((seq, true)),
        "ack" => Some((seq, false)),
        _ => None,
    }
}

/// The header bytes of a segment starting at `first_seq` with `paths` as its table.
pub fn header(first_seq: u64, paths: &[&str]) -> Vec<u8> {
    let table = paths.join("\n");
    let mut out = Vec::with_capacity(FIXED + table.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), table.as_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(table.as_bytes());
    out
}

/// Reads the header at the start of `file`.
pub fn read_header(file: &mut File) -> Result<Header, HeaderError> {
    let mut fixed = [0u8; FIXED];
    file.read_exact(&mut fixed).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HeaderError::Damaged,
        _ => HeaderError::Io(e),
    })?;
    if &fixed[..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let u32_at = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().unwrap_or_default());
    let version = u32_at(8);
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    let first_seq = u64::from_le_bytes(fixed[12..20].try_into().unwrap_or_default());
    let table_len = u32_at(20) as usize;
    if table_len > MAX_TABLE {
        return Err(HeaderError::Damaged);
    }
    let mut table = vec![0u8; table_len];
    file.read_exact(&mut table)
        .map_err(|_| HeaderError::Damaged)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&fixed[..24]), &table);
    if crc != u32_at(24) {
        return Err(HeaderError::Damaged);
    }
    let table = String::from_utf8(table).map_err(|_| HeaderError::Damaged)?;
    let paths = if table.is_empty() {
        Vec::new()
    } else {
        table.split('\n').map(str::to_owned).collect()
    };
    Ok(Header {
        first_seq,
        paths,
        len: (FIXED + table_len) as u64,
    })
}

/// What a scan of a segment's records found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Offset (from the first record) just past the last whole record: a torn tail
    /// starts here.
    pub valid_end: usize,
    /// Records read whole.
    pub records: u64,
    /// The seq of the last whole record, if any.
    pub last_seq: Option<u64>,
    /// Offsets (from the first record) of damaged stretches stepped over.
    pub damaged: Vec<usize>,
}

/// Records a segment's numbers can skip at most where damage is stepped over: a segment
/// of 64 MiB holds fewer records than this (every record takes at least 27 bytes).
pub const MAX_GAP: u64 = 4 * 1024 * 1024;

/// Scans `records` (a segment's bytes after its header), whose first record is
/// `first_seq`: steps over damage in the middle, stops at a torn tail.
pub fn scan(records: &[u8], first_seq: u64) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0;
    while at < records.len() {
        match record::parse(&records[at..]) {
            Rec::Record(r) => {
                scan.records += 1;
                scan.last_seq = Some(r.seq);
                at += r.size;
                scan.valid_end = at;
            }
            Rec::Incomplete => break,
            Rec::Corrupt => {
                let after = scan.last_seq.unwrap_or(first_seq.saturating_sub(1));
                match record::resync(&records[at..], after, MAX_GAP) {
                    Some(skip) => {
                        scan.damaged.push(at);
                        at += skip;
                    }
                    // Nothing whole follows: a torn tail (or damage reaching the end).
                    None => break,
                }
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::disk::record::{Record, encode};

    fn records(seqs: std::ops::Range<u64>) -> Vec<u8> {
        let mut buf = Vec::new();
        for seq in seqs {
            let payload = vec![seq as u8; 50];
            encode(
                &Record {
                    seq,
                    at_ms: 0,
                    method: 0,
                    auth: None,
                    key: None,
                    payload: &payload,
                },
                &mut buf,
            );
        }
        buf
    }

    #[test]
    fn names_sort_in_queue_order_and_parse_back() {
        let dir = Path::new("/q");
        let a = segment_path(dir, 9);
        let b = segment_path(dir, 10);
        assert!(a < b);
        let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(parse_name(&name(&b)), Some((10, true)));
        assert_eq!(parse_name(&name(&ack_path(dir, 10))), Some((10, false)));
        assert_eq!(parse_name("lock"), None);
        assert_eq!(parse_name("0000000000000000001x.seg"), None);
    }

    #[test]
    fn a_header_reads_back_and_damage_to_it_is_reported() {
        let bytes = header(42, &["/a", "/b/c"]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        std::fs::write(&path, &bytes).unwrap();
        let h = read_header(&mut File::open(&path).unwrap()).unwrap();
        assert_eq!(h.first_seq, 42);
        assert_eq!(h.paths, ["/a", "/b/c"]);
        assert_eq!(h.len, bytes.len() as u64);
        for at in [0, 9, 13, 21, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            std::fs::write(&path, &damaged).unwrap();
            assert!(
                read_header(&mut File::open(&path).unwrap()).is_err(),
                "byte {at}"
            );
        }
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(
            read_header(&mut File::open(&path).unwrap()),
            Err(HeaderError::Damaged)
        ));
    }

    #[test]
    fn a_scan_stops_at_a_torn_tail_and_steps_over_damage_in_the_middle() {
        let whole = records(5..10);
        let size = whole.len() / 5;
        let s = scan(&whole, 5);
        assert_eq!(
            (s.records, s.last_seq, s.valid_end),
            (5, Some(9), whole.len())
        );

        let torn = &whole[..whole.len() - 3];
        let s = scan(torn, 5);
        assert_eq!((s.records, s.last_seq, s.valid_end), (4, Some(8), 4 * size));
        assert!(s.damaged.is_empty());

        let mut damaged = whole.clone();
        damaged[2 * size + 30] ^= 1; // seq 7
        let s = scan(&damaged, 5);
        assert_eq!((s.records, s.last_seq), (4, Some(9)));
        assert_eq!(s.damaged, [2 * size]);
        assert_eq!(s.valid_end, whole.len());
    }
}
