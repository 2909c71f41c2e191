//! Recovery: turning a queue directory into the in-memory state of an open queue.
//!
//! Runs once, under the directory lock, before the writer thread starts. It streams through
//! every segment with the [`Scanner`] (memory bounded by the scan window, whatever the backlog),
//! and guarantees on return:
//!
//! - every entry of a valid record at or above the low-water mark will be handed out again, in
//!   order (a record may straddle the low-water mark: reading then starts inside it);
//! - sequence numbers lost to corruption are counted and pre-acknowledged, so the low-water
//!   mark can move past them;
//! - a torn tail of the last segment is truncated (and the truncation synced), so new records
//!   follow the last valid one (a torn multi-entry record loses all its entries: none of them
//!   was reported durable, since they became durable together);
//! - zeros from a record boundary to the end of a segment are unused preallocated space (or
//!   data never synced, hence never reported durable): the segment's live end is where they
//!   start, the file keeps its length, nothing is reported, and appends overwrite them;
//! - a leftover spare segment (`spare.seg.tmp`) is deleted;
//! - segments whose every record is acknowledged are deleted;
//! - `next_seq` is above every seq on disk and at least the low-water mark. If it had to jump
//!   (the checkpoint is ahead of the data), appends start a fresh segment, so that sequence
//!   numbers stay contiguous within every segment.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::acks::AckSet;
use crate::checkpoint::{self, CheckpointStatus};
use crate::record::{ENTRY_PREFIX_LEN, Entries};
use crate::segment::{self, Item, Scanner};
use crate::state::SegMeta;
use crate::{Error, Seq};

/// Regions listed individually in a [`RecoveryReport`]; beyond this they are only counted.
const MAX_LISTED_REGIONS: usize = 32;

/// A stretch of bytes recovery skipped or truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRegion {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first bad byte.
    pub offset: u64,
    /// Number of bytes.
    pub bytes: u64,
    /// What was wrong with the first bad record.
    pub reason: String,
    /// Whether the region was a torn tail that was cut off (rather than skipped).
    pub truncated: bool,
}

/// What recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Unacknowledged entries (sequence numbers) that will be handed out again.
    pub replayed_records: u64,
    /// Their bytes: the sum of the lengths of the entries that will be handed out again.
    pub replayed_bytes: u64,
    /// Sequence numbers lost to corruption.
    pub corrupt_records: u64,
    /// Bytes skipped because they held no valid record.
    pub corrupt_bytes: u64,
    /// Bytes cut off the end of the last segment (a torn write).
    pub truncated_bytes: u64,
    /// Segment files kept.
    pub segments: usize,
    /// Fully acknowledged segment files deleted.
    pub deleted_segments: usize,
    /// What the checkpoint file held.
    pub checkpoint: CheckpointStatus,
    /// Every seq below this is acknowledged.
    pub acked_low_water: Seq,
    /// The seq the next append gets.
    pub next_seq: Seq,
    /// The first bad regions, for the operator (at most 32).
    pub skipped: Vec<SkippedRegion>,
    /// Time recovery took.
    pub duration: Duration,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} records (seq {}..{}) from {} segments in {:?}; checkpoint {}; \
             {} corrupt records / {} corrupt bytes skipped, {} bytes truncated, {} segments deleted",
            self.replayed_records,
            self.acked_low_water,
            self.next_seq,
            self.segments,
            self.duration,
            self.checkpoint,
            self.corrupt_records,
            self.corrupt_bytes,
            self.truncated_bytes,
            self.deleted_segments
        )?;
        for r in &self.skipped {
            write!(
                f,
                "\n  {} {} bytes at {}:{}: {}",
                if r.truncated { "truncated" } else { "skipped" },
                r.bytes,
                r.path.display(),
                r.offset,
                r.reason
            )?;
        }
        Ok(())
    }
}

/// Where reading starts after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StartPos {
    pub seq: Seq,
    /// The first seq of the record at `offset` (below `seq` if reading starts inside it).
    pub record_seq: Seq,
    pub segment: Seq,
    pub offset: u64,
}

/// The recovered state.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segments: VecDeque<SegMeta>,
    pub next_seq: Seq,
    pub acks: AckSet,
    pub ckpt_low: Seq,
    pub start: StartPos,
    pub report: RecoveryReport,
}

fn remove_segment(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("delete", path, None, e)),
    }
}

/// The bytes of a valid record's entries after its first `skip` (which are acknowledged).
fn entry_bytes(payload: &[u8], entries: u32, skip: u64) -> u64 {
    let payload_len = payload.len() as u64;
    match (entries, skip) {
        (1, 0) => payload_len,
        // A count, then a length before each entry.
        (_, 0) => payload_len.saturating_sub(ENTRY_PREFIX_LEN as u64 * (1 + u64::from(entries))),
        _ => Entries::new(payload, entries > 1)
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .map(|r| r.len() as u64)
            .sum(),
    }
}

/// Recovers the queue in `dir` (which the caller has locked).
pub(crate) fn recover(dir: &Path) -> Result<Recovered, Error> {
    let started = Instant::now();
    remove_segment(&dir.join(checkpoint::CHECKPOINT_TMP))?;
    // A spare may be half written (a crash while preparing it): the preparer makes a new one.
    remove_segment(&dir.join(crate::prep::SPARE_FILE))?;
    let ckpt = checkpoint::read(dir)?;
    if let CheckpointStatus::Corrupt(why) = &ckpt {
        tracing::warn!(dir = %dir.display(), reason = %why, "Ignoring damaged checkpoint; replaying everything on disk.");
    }
    let files = segment::list_segments(dir)?;
    let first_on_disk = files.first().map(|(first, _)| *first).unwrap_or(0);
    let ckpt_low = ckpt.low_water().unwrap_or(0);
    // Segments below the first one on disk were deleted because they were acknowledged.
    let low = ckpt_low.max(first_on_disk);

    let mut report = RecoveryReport {
        replayed_records: 0,
        replayed_bytes: 0,
        corrupt_records: 0,
        corrupt_bytes: 0,
        truncated_bytes: 0,
        segments: 0,
        deleted_segments: 0,
        checkpoint: ckpt.clone(),
        acked_low_water: low,
        next_seq: low,
        skipped: Vec::new(),
        duration: Duration::ZERO,
    };
    let mut acks = AckSet::new(low);
    let mut segments: VecDeque<SegMeta> = VecDeque::new();
    let mut start: Option<StartPos> = None;
    let mut expected = first_on_disk;
    let mut last_file_kept = false;
    let mut scanned_any = false;
    let note = |report: &mut RecoveryReport, region: SkippedRegion| {
        tracing::warn!(path = %region.path.display(), offset = region.offset, bytes = region.bytes,
            reason = %region.reason, truncated = region.truncated, "Skipping corrupt bytes in disk queue segment.");
        if report.skipped.len() < MAX_LISTED_REGIONS {
            report.skipped.push(region);
        }
    };

    for (i, (first, path)) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        if files.get(i + 1).is_some_and(|(next, _)| *next <= low) {
            remove_segment(path)?;
            report.deleted_segments += 1;
            expected = expected.max(files[i + 1].0);
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(path)
            .map_err(|e| Error::io("open", path, None, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, None, e))?
            .len();
        if !scanned_any {
            // Later segments continue from where the previous one ended, so that a damaged
            // segment end shows up as a gap before the next segment's first record.
            expected = expected.max(*first);
            scanned_any = true;
        }
        let mut scanner = Scanner::new(&file, path, file_len, 0, expected);
        // Where appends continue, and where the file is cut (a torn tail only).
        let mut live_end = file_len;
        let mut cut = None;
        loop {
            match scanner.next_item()? {
                Item::Record {
                    seq,
                    offset,
                    entries,
                    ..
                } => {
                    if seq > expected {
                        let lost = acks.insert_range(expected, seq);
                        report.corrupt_records += lost;
                    }
                    expected = seq + u64::from(entries);
                    if expected > low {
                        report.replayed_records += expected - seq.max(low);
                        let acked = low.saturating_sub(seq);
                        report.replayed_bytes += entry_bytes(scanner.payload(), entries, acked);
                        start.get_or_insert(StartPos {
                            seq: seq.max(low),
                            record_seq: seq,
                            segment: *first,
                            offset,
                        });
                    }
                }
                Item::Corrupt {
                    offset,
                    bytes,
                    reason,
                } => {
                    report.corrupt_bytes += bytes;
                    let region = SkippedRegion {
                        path: path.clone(),
                        offset,
                        bytes,
                        reason,
                        truncated: false,
                    };
                    note(&mut report, region);
                }
                Item::Tail {
                    offset,
                    bytes,
                    reason,
                } => {
                    if is_last {
                        report.truncated_bytes += bytes;
                        live_end = offset;
                        cut = Some(offset);
                    } else {
                        report.corrupt_bytes += bytes;
                    }
                    let region = SkippedRegion {
                        path: path.clone(),
                        offset,
                        bytes,
                        reason,
                        truncated: is_last,
                    };
                    note(&mut report, region);
                }
                Item::Unused { offset, .. } => live_end = offset,
                Item::End => break,
            }
        }
        if let Some(cut) = cut {
            file.set_len(cut)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("truncate", path, Some(cut), e))?;
        }
        if is_last && live_end == 0 {
            // Nothing valid in the active segment: start it afresh at `next_seq` below.
            remove_segment(path)?;
            continue;
        }
        segments.push_back(SegMeta {
            first: *first,
            bytes: live_end,
        });
        last_file_kept = is_last;
    }

    let next_seq = expected.max(low);
    // The active segment must end exactly at `next_seq` so seqs stay contiguous within it.
    if !(last_file_kept && expected == next_seq) {
        segments.push_back(SegMeta {
            first: next_seq,
            bytes: 0,
        });
    }
    // Drop segments made deletable by gap acknowledgements or the jump above.
    let low = acks.low_water();
    while segments.get(1).is_some_and(|next| next.first <= low) {
        if let Some(old) = segments.pop_front() {
            remove_segment(&segment::segment_path(dir, old.first))?;
            report.deleted_segments += 1;
        }
    }
    let start = match start {
        Some(s) if s.seq >= low => s,
        _ => {
            let active = segments.back().copied().unwrap_or(SegMeta {
                first: next_seq,
                bytes: 0,
            });
            StartPos {
                seq: next_seq,
                record_seq: next_seq,
                segment: active.first,
                offset: active.bytes,
            }
        }
    };
    if report.deleted_segments > 0 || report.truncated_bytes > 0 {
        checkpoint::sync_dir(dir)?;
    }
    report.segments = segments.iter().filter(|s| s.bytes > 0).count();
    report.acked_low_water = low;
    report.next_seq = next_seq;
    report.duration = started.elapsed();
    Ok(Recovered {
        segments,
        next_seq,
        acks,
        ckpt_low,
        start,
        report,
    })
}
