//! `inspect`: a read-only look at a queue directory, for `sluice queue inspect <dir>`.
//!
//! It counts both records (the units on disk) and the entries they hold (what was appended,
//! one sequence number each); the two differ once batches were appended as multi-entry records.
//!
//! It takes no lock and writes nothing, so it works while another process has the queue open.
//! On a live queue the last segment may end in a record being written; that shows up as a torn
//! tail, which the owning process will not truncate (it is still writing it). Zeros after the
//! last record are preallocated space (`unused_bytes`), not damage.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, CheckpointStatus};
use crate::segment::{self, Item, Scanner};
use crate::{Error, Seq};

/// One segment file, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// The first seq its name claims.
    pub named_first: Seq,
    /// File size.
    pub bytes: u64,
    /// Valid records in it.
    pub records: u64,
    /// Entries (sequence numbers) in its valid records: more than `records` when some records
    /// hold several entries.
    pub entries: u64,
    /// Seq of the first entry of the first valid record.
    pub first_seq: Option<Seq>,
    /// Seq of the last entry of the last valid record.
    pub last_seq: Option<Seq>,
    /// Sequence numbers missing between valid records (lost to corruption).
    pub corrupt_records: u64,
    /// Bytes holding no valid record, before the last valid one.
    pub corrupt_bytes: u64,
    /// Bytes after the last valid record that hold no valid record (a torn tail).
    pub tail_bytes: u64,
    /// Zero bytes at the end, after the last valid record: preallocated space not used yet.
    pub unused_bytes: u64,
}

/// What [`inspect`] found in a queue directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// The directory.
    pub dir: PathBuf,
    /// The checkpoint file.
    pub checkpoint: CheckpointStatus,
    /// Segments, oldest first.
    pub segments: Vec<SegmentReport>,
}

impl InspectReport {
    /// Seq of the first valid entry on disk.
    pub fn first_seq(&self) -> Option<Seq> {
        self.segments.iter().find_map(|s| s.first_seq)
    }

    /// Seq of the last valid entry on disk.
    pub fn last_seq(&self) -> Option<Seq> {
        self.segments.iter().rev().find_map(|s| s.last_seq)
    }

    /// Total bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Valid records on disk (acknowledged or not).
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// Entries in the valid records on disk (acknowledged or not).
    pub fn entries(&self) -> u64 {
        self.segments.iter().map(|s| s.entries).sum()
    }

    /// Sequence numbers lost to corruption.
    pub fn corrupt_records(&self) -> u64 {
        self.segments.iter().map(|s| s.corrupt_records).sum()
    }

    /// Bytes holding no valid record (corrupt regions and torn tails).
    pub fn corrupt_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.corrupt_bytes + s.tail_bytes)
            .sum()
    }

    /// Valid entries (sequence numbers) at or above the checkpointed low-water mark.
    pub fn unacked_records(&self) -> u64 {
        let low = self.checkpoint.low_water().unwrap_or(0);
        match (self.first_seq(), self.last_seq()) {
            (Some(first), Some(last)) if last >= low => {
                let span = last - first.max(low) + 1;
                span.saturating_sub(if first >= low {
                    self.corrupt_records()
                } else {
                    0
                })
            }
            _ => 0,
        }
    }
}

fn opt(v: Option<Seq>) -> String {
    v.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "queue      {}", self.dir.display())?;
        writeln!(f, "checkpoint {}", self.checkpoint)?;
        writeln!(
            f,
            "records    {} on disk holding {} entries, seq {}..={}, about {} unacknowledged",
            self.records(),
            self.entries(),
            opt(self.first_seq()),
            opt(self.last_seq()),
            self.unacked_records()
        )?;
        writeln!(
            f,
            "corrupt    {} records, {} bytes",
            self.corrupt_records(),
            self.corrupt_bytes()
        )?;
        writeln!(
            f,
            "\n{:<28} {:>12} {:>10} {:>10} {:>20} {:>20} {:>8} {:>10} {:>10} {:>10}",
            "segment",
            "bytes",
            "records",
            "entries",
            "first seq",
            "last seq",
            "corrupt",
            "bad bytes",
            "tail",
            "unused"
        )?;
        for s in &self.segments {
            let name = s
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            writeln!(
                f,
                "{:<28} {:>12} {:>10} {:>10} {:>20} {:>20} {:>8} {:>10} {:>10} {:>10}",
                name,
                s.bytes,
                s.records,
                s.entries,
                opt(s.first_seq),
                opt(s.last_seq),
                s.corrupt_records,
                s.corrupt_bytes,
                s.tail_bytes,
                s.unused_bytes
            )?;
        }
        write!(
            f,
            "{:<28} {:>12} {:>10} {:>10}",
            format!("total ({} segments)", self.segments.len()),
            self.bytes(),
            self.records(),
            self.entries()
        )
    }
}

/// Read-only look at a queue directory (works while another process holds it): segments,
/// bytes, first/last/acknowledged sequence numbers, corrupt records. Reads every segment
/// through a bounded window; fails only if the directory or a file cannot be read.
pub fn inspect(dir: impl AsRef<Path>) -> Result<InspectReport, Error> {
    let dir = dir.as_ref();
    let checkpoint = checkpoint::read(dir)?;
    let mut segments = Vec::new();
    let low = checkpoint.low_water().unwrap_or(0);
    let mut expected = None;
    for (named_first, path) in segment::list_segments(dir)? {
        let file = match File::open(&path) {
            Ok(f) => f,
            // Deleted by the owning process between listing and opening: it was acknowledged.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("open", &path, None, e)),
        };
        let bytes = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, None, e))?
            .len();
        // Later segments continue from where the previous one ended (see recovery).
        let start = expected.unwrap_or(named_first);
        let mut rep = SegmentReport {
            path: path.clone(),
            named_first,
            bytes,
            records: 0,
            entries: 0,
            first_seq: None,
            last_seq: None,
            corrupt_records: 0,
            corrupt_bytes: 0,
            tail_bytes: 0,
            unused_bytes: 0,
        };
        let mut sc = Scanner::new(&file, &path, bytes, 0, start);
        let mut next = start;
        loop {
            match sc.next_item()? {
                Item::Record { seq, entries, .. } => {
                    // Gaps below the low-water mark were acknowledged, not lost.
                    rep.corrupt_records += seq - next.max(low).min(seq);
                    next = seq + u64::from(entries);
                    rep.records += 1;
                    rep.entries += u64::from(entries);
                    rep.first_seq.get_or_insert(seq);
                    rep.last_seq = Some(next - 1);
                }
                Item::Corrupt { bytes, .. } => rep.corrupt_bytes += bytes,
                Item::Tail { bytes, .. } => rep.tail_bytes += bytes,
                Item::Unused { bytes, .. } => rep.unused_bytes += bytes,
                Item::End => break,
            }
        }
        expected = Some(next);
        segments.push(rep);
    }
    Ok(InspectReport {
        dir: dir.to_path_buf(),
        checkpoint,
        segments,
    })
}
