//! What a run costs the machine, read from the kernel: bytes written to the block layer
//! and CPU time, for the whole process (every thread, the stores' own included).

use std::path::Path;

/// `/proc/self/io`: `write_bytes` is counted when a page is dirtied (4 KiB at a time, so
/// rewriting the tail page of a file after each sync counts the page again, as the
/// device writes it again); `cancelled_write_bytes` is dirty data truncated or deleted
/// before it was written back. Their difference is what reached the device from this
/// process (the file system's own journal, written by the kernel, is not in it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    pub write_bytes: u64,
    pub cancelled: u64,
}

impl Io {
    pub fn now() -> Io {
        let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(": ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        Io {
            write_bytes: field("write_bytes"),
            cancelled: field("cancelled_write_bytes"),
        }
    }

    /// Bytes that reached the device since `before`.
    pub fn net_since(&self, before: &Io) -> u64 {
        (self.write_bytes - before.write_bytes).saturating_sub(self.cancelled - before.cancelled)
    }
}

/// User plus system CPU seconds of this process (`/proc/self/stat`, 100 ticks a second
/// as Linux reports them to user space).
pub fn cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15: 12th and 13th after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The process's peak resident memory (`VmHWM`), KiB.
pub fn peak_rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Writes back and drops the page cache of every file under `dir`, so a reopen reads
/// from the device as after a host restart (only these files: the machine is shared).
pub fn evict(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            evict(&entry.path())?;
            continue;
        }
        let file = std::fs::File::open(entry.path())?;
        file.sync_all()?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    }
    Ok(())
}

/// Random bytes (xorshift): incompressible, so no store gains from compressing them.
pub fn payloads(size: usize, count: usize) -> Vec<bytes::Bytes> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..count)
        .map(|_| {
            let mut v = Vec::with_capacity(size + 8);
            while v.len() < size {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                v.extend_from_slice(&state.to_le_bytes());
            }
            v.truncate(size);
            bytes::Bytes::from(v)
        })
        .collect()
}
