//! The spare segment: a file of blocks already written, kept ahead, so that new segments
//! overwrite blocks that already exist instead of growing a file.
//!
//! Why: an `fdatasync` after writing at the end of a file also writes the inode's new size
//! and allocates blocks (on ext4, a journal commit), which costs about twice the wall time and
//! the CPU of one that overwrites blocks already written (`dd` here, 384 KiB `O_DIRECT` writes
//! each followed by a sync: 0.37 ms and 132 µs of CPU a round growing the file, 0.19 ms and
//! 63 µs over existing blocks). So when [`crate::Options::preallocate`] is on, the queue keeps
//! at most one spare, [`SPARE_FILE`], made in one of two ways:
//!
//! - **Recycled:** under direct I/O, the writer renames a fully acknowledged segment of at
//!   least half a segment to the spare instead of deleting it (PostgreSQL recycles its WAL
//!   segments the same way). It costs nothing: no byte is written. Its old records stay in it;
//!   recovery tells them from new ones by their sequence numbers (see `segment.rs`).
//! - **Zero-filled:** one background thread per queue ("sluice-diskq-prep") writes exactly
//!   `segment_bytes` zeros, in 1 MiB pieces, and syncs them, when no segment can be recycled
//!   (a young queue) and syncs are small (see below).
//!
//! When the writer needs a new segment file it renames the spare to the segment's name (then
//! syncs the directory, as for any new segment) and writes from offset 0.
//!
//! Invariants:
//! - A segment made from a spare holds its records, then zeros or a recycled file's old
//!   records, whose sequence numbers are all below its own (sequence numbers only grow).
//!   A segment the writer leaves is cut to its records (see `writer.rs`), so only the active
//!   segment of a crashed queue can hold old records past its live end.
//! - `ready` is only set after the whole spare is written and synced, or recycled; the writer
//!   renames it only while `ready`, under the same lock, and the preparer only touches the
//!   file while it is `preparing` (set under the lock, only while not `ready`), and the writer
//!   recycles a segment only while neither, so no two of them ever work on the file at once.
//! - Space: a spare is prepared only while `disk_bytes + 2 * segment_bytes <= max_bytes`, so a
//!   queue smaller than two segments never prepares one; and only once the active segment is a
//!   quarter full, so a mostly idle queue never takes two whole segments of disk for a few
//!   events, and the segment left at a roll-over has that long to be acknowledged and
//!   recycled before zeros are written instead.
//! - Only for small syncs: since the last look, the writer's syncs averaged less than
//!   [`SMALL_SYNC_BYTES`]. A spare saves a fixed amount per sync (the inode update and block
//!   allocation of a growing file: on ext4 without a journal, a second synchronous write per
//!   sync) and costs a segment's worth of writes. With many small syncs (one HTTP request per
//!   durable ack) that halves the ack's wait; with few large ones (TCP reads of 64 KiB, group
//!   commits of hundreds of KiB) the zeros cost more than they save. Through the page cache
//!   they cost CPU (S2 ran 18 % faster without them, at 15 % less CPU per event); with direct
//!   I/O (see `direct.rs`, which the zeros then use too, synced once at the end) next to no
//!   CPU, but the disk's bandwidth and a context switch per 1 MiB written: S2 still ran 6–12 %
//!   faster without them in alternating pairs. No syncs at all (`SyncPolicy::Never`, or an
//!   idle queue) means no spare either.
//! - Errors (a full disk, an I/O error) delete the spare, are logged once per streak, and back
//!   off for 10 s. They never poison the queue or affect appends: the writer then just creates
//!   its segments by growing them.
//! - The thread stops when the queue closes, is dropped or (in tests) crashes; an orderly stop
//!   deletes the spare, and `open` deletes one left over by a crash.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::direct::{self, AlignedBuf};
use crate::state::{Counters, Shared};

/// File name of the spare segment.
pub(crate) const SPARE_FILE: &str = "spare.seg.tmp";

/// Bytes written per `write` call while preparing a spare.
const WRITE_PIECE: usize = 1024 * 1024;

/// Bytes written between two syncs, so that writeback comes in moderate bursts.
const SYNC_EVERY: u64 = 1024 * 1024;

/// How long to wait after a failure before trying again.
const BACKOFF: Duration = Duration::from_secs(10);

/// How often the preparer looks again whether there is room for a spare.
const RECHECK: Duration = Duration::from_secs(1);

/// A spare is prepared only while syncs average fewer bytes than this (see the module doc).
/// Break-even measured here: zero-filling 64 MiB costs about 16 ms of CPU, a sync of a growing
/// file about 50 µs more than one that overwrites, so about 200 KiB per sync.
pub(crate) const SMALL_SYNC_BYTES: u64 = 128 * 1024;

/// The writer's counters at the preparer's last look.
#[derive(Debug, Default, Clone, Copy)]
struct LastLook {
    bytes_written: u64,
    fsyncs: u64,
}

/// Whether the syncs since `last` averaged fewer than [`SMALL_SYNC_BYTES`]; moves `last` on.
fn syncs_are_small<M>(shared: &Shared<M>, last: &mut LastLook) -> bool {
    let now = LastLook {
        bytes_written: Counters::get(&shared.counters.bytes_written),
        fsyncs: Counters::get(&shared.counters.fsyncs),
    };
    let bytes = now.bytes_written.saturating_sub(last.bytes_written);
    let syncs = now.fsyncs.saturating_sub(last.fsyncs);
    *last = now;
    syncs > 0 && bytes / syncs < SMALL_SYNC_BYTES
}

/// The spare's state, shared by the writer thread and the preparer.
#[derive(Debug, Default)]
pub(crate) struct Spare {
    /// Whether a complete, synced spare is waiting to be used.
    ready: Mutex<bool>,
    /// Whether the preparer is writing a spare (set and cleared under `ready`'s lock).
    preparing: AtomicBool,
    wake: Condvar,
    /// Set to stop the preparer; `crash` leaves the spare behind.
    stop: AtomicBool,
    crash: AtomicBool,
    /// Bytes of the spare file on disk (ready, or being prepared).
    pub bytes: AtomicU64,
    /// Spares the writer turned into segments.
    pub used: AtomicU64,
    /// Acknowledged segments the writer renamed to the spare instead of deleting them.
    pub recycled: AtomicU64,
    /// Tests set it to have only recycled spares: with small syncs, a zero-filled spare is
    /// nearly always ready first, and recycling would rarely be exercised.
    #[cfg(test)]
    pub no_zero_fill: AtomicBool,
}

impl Spare {
    /// Renames a ready spare to `path` (a segment that does not exist yet). Returns whether it
    /// did; if not, the caller creates the segment as an empty file.
    pub fn take(&self, dir: &Path, path: &Path) -> bool {
        let mut ready = self.ready.lock();
        if !*ready {
            return false;
        }
        *ready = false;
        self.bytes.store(0, Ordering::Relaxed);
        let spare = dir.join(SPARE_FILE);
        let taken = match std::fs::rename(&spare, path) {
            Ok(()) => {
                self.used.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::warn!(path = %spare.display(), error = %e, "Using the spare disk queue segment failed; creating the segment instead.");
                let _ = std::fs::remove_file(&spare);
                false
            }
        };
        drop(ready);
        self.wake.notify_one();
        taken
    }

    /// Renames `path`, an acknowledged segment of `len` bytes that the checkpoint no longer
    /// needs, to the spare, if there is none and none is being prepared. Returns whether it
    /// did; if not, the caller deletes the segment.
    pub fn recycle(&self, dir: &Path, path: &Path, len: u64) -> bool {
        let mut ready = self.ready.lock();
        if *ready || self.preparing.load(Ordering::Relaxed) {
            return false;
        }
        let spare = dir.join(SPARE_FILE);
        if let Err(e) = std::fs::rename(path, &spare) {
            tracing::debug!(path = %path.display(), error = %e, "Recycling an acknowledged disk queue segment failed; deleting it.");
            return false;
        }
        *ready = true;
        self.bytes.store(len, Ordering::Relaxed);
        self.recycled.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Tells the preparer to look again (a spare was used, or space was freed).
    pub fn nudge(&self) {
        let _ready = self.ready.lock();
        self.wake.notify_one();
    }

    /// Stops the preparer; with `crash`, whatever it was writing stays on disk.
    pub fn stop(&self, crash: bool) {
        self.crash.store(crash, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        self.nudge();
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn may_zero_fill(&self) -> bool {
        #[cfg(test)]
        if self.no_zero_fill.load(Ordering::Relaxed) {
            return false;
        }
        true
    }
}

/// Whether the queue is busy enough to want a spare, has room for one, and may still use one.
fn room<M>(shared: &Shared<M>) -> bool {
    let st = shared.state.lock();
    let seg = shared.opts.segment_bytes;
    let open = !(st.close_requested || st.shutdown || st.crash || st.failed.is_some());
    open && busy(&st.segments, seg)
        && seg
            .checked_mul(2)
            .and_then(|two| two.checked_add(st.disk_bytes))
            .is_some_and(|need| need <= shared.opts.max_bytes)
}

/// A queue wants a spare once its active segment is a quarter full: a mostly idle queue never
/// costs two whole segments of disk for a few events, and right after a roll-over the segment
/// left behind has a quarter of a segment's time to be acknowledged and recycled before zeros
/// are written instead (with more than one segment counting as busy, the preparer began at
/// once and was nearly always first).
fn busy(segments: &std::collections::VecDeque<crate::state::SegMeta>, segment_bytes: u64) -> bool {
    segments
        .back()
        .is_some_and(|s| s.bytes >= segment_bytes / 4)
}

/// Whether `before` → `after` bytes of the active segment just crossed the mark where a spare
/// becomes wanted (the writer then nudges the preparer instead of leaving it to its recheck).
pub(crate) fn crossed_busy_mark(before: u64, after: u64, segment_bytes: u64) -> bool {
    before < segment_bytes / 4 && after >= segment_bytes / 4
}

/// Runs the preparer until the queue stops.
pub(crate) fn run<M>(shared: Arc<Shared<M>>) {
    let spare = &shared.spare;
    let path = shared.dir.join(SPARE_FILE);
    let mut zeros = None;
    let mut retry_at: Option<Instant> = None;
    let mut warned = false;
    let mut last_look = LastLook::default();
    loop {
        {
            let mut ready = spare.ready.lock();
            loop {
                if spare.stopping() {
                    drop(ready);
                    if !spare.crash.load(Ordering::Relaxed) {
                        let _ = std::fs::remove_file(&path);
                        spare.bytes.store(0, Ordering::Relaxed);
                    }
                    return;
                }
                let now = Instant::now();
                let waiting = retry_at.is_some_and(|t| now < t);
                let worth_it = syncs_are_small(&shared, &mut last_look) && spare.may_zero_fill();
                if !*ready && !waiting && room(&shared) && worth_it {
                    spare.preparing.store(true, Ordering::Relaxed);
                    break;
                }
                let until = retry_at.filter(|t| *t > now).unwrap_or(now + RECHECK);
                spare.wake.wait_until(&mut ready, until);
            }
        }
        let zeros = zeros.get_or_insert_with(|| AlignedBuf::new(WRITE_PIECE));
        let direct = shared.direct_io;
        let prepared = prepare(
            spare,
            &path,
            shared.opts.segment_bytes,
            zeros.as_slice(),
            direct,
        );
        // Still `preparing` until the outcome is settled, so the writer cannot recycle a
        // segment onto the spare's name in between.
        let mut ready = spare.ready.lock();
        match prepared {
            Ok(true) => {
                *ready = true;
                warned = false;
                retry_at = None;
            }
            // Stopped halfway: the loop above sees it.
            Ok(false) => {}
            Err((op, e)) => {
                let _ = std::fs::remove_file(&path);
                spare.bytes.store(0, Ordering::Relaxed);
                retry_at = Some(Instant::now() + BACKOFF);
                if warned {
                    tracing::debug!(path = %path.display(), op, error = %e, "Preparing a spare disk queue segment failed again.");
                } else {
                    warned = true;
                    tracing::warn!(path = %path.display(), op, error = %e, retry_in = ?BACKOFF,
                        "Preparing a spare disk queue segment failed; new segments grow instead until it works again.");
                }
            }
        }
        spare.preparing.store(false, Ordering::Relaxed);
    }
}

/// Writes `len` zero bytes to a fresh spare at `path` and syncs it (with `direct`, through
/// `O_DIRECT`, from the block-aligned `zeros`). Returns false if told to stop halfway.
fn prepare(
    spare: &Spare,
    path: &Path,
    len: u64,
    zeros: &[u8],
    direct: bool,
) -> Result<bool, (&'static str, std::io::Error)> {
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(true).write(true);
    if direct {
        direct::set_direct(&mut opts);
    }
    let file = opts.open(path).map_err(|e| ("create", e))?;
    let mut at = 0u64;
    let mut unsynced = 0u64;
    while at < len {
        if spare.stopping() {
            return Ok(false);
        }
        let n = (len - at).min(zeros.len() as u64);
        let piece = zeros.get(..n as usize).unwrap_or_default();
        file.write_all_at(piece, at).map_err(|e| ("write", e))?;
        at += n;
        spare.bytes.store(at, Ordering::Relaxed);
        unsynced += n;
        // Direct writes are on the device when they return: one sync at the end flushes its
        // cache. Through the page cache, writeback comes in bursts of `SYNC_EVERY`.
        if (unsynced >= SYNC_EVERY && !direct) || at == len {
            file.sync_data().map_err(|e| ("fdatasync", e))?;
            unsynced = 0;
        }
    }
    Ok(true)
}
