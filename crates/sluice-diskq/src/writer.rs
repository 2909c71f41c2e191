//! The writer thread: group commit, checkpoints and segment deletion.
//!
//! One `std::thread` per queue owns every write to segment files. Each round it swaps the
//! pending batch out of the shared state, `write()`s it at the offsets appenders reserved,
//! publishes the *written* watermark (readers may now see the records), then — per the sync
//! policy — covers the whole batch with one `fdatasync` and publishes the *durable* watermark,
//! releasing every `wait_durable` caller the sync covers. Appends that arrive meanwhile form the
//! next batch, which is what makes one sync cover hundreds of records under load.
//!
//! Invariants:
//! - *durable* never passes *written*, and never passes data whose sync failed.
//! - The first write or sync error poisons the queue: the failure is published, pending data
//!   is discarded, and no later record is ever reported durable. Checkpoints continue (they
//!   only record acknowledgements).
//! - A segment file is synced before the writer moves on to the next one (whatever the policy),
//!   and the directory is synced after a segment is created (unless the policy is `Never`), so
//!   a rolled-over segment is as durable as its records and close() only syncs the active one.
//! - A segment is deleted only after a checkpoint at or above its last seq is durable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bufpool::BufPool;
use crate::direct::{self, DirectStage};
use crate::state::{Counters, Shared, TailChunk, WriterWait};
use crate::{SyncPolicy, WriteFailure, checkpoint, segment};

/// What a crashed writer leaves behind, for tests that simulate power loss.
#[derive(Debug, Clone, Default)]
// Only the crash tests read the fields; release builds just join the thread.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct ExitInfo {
    /// The segment file the writer was appending to.
    pub active: Option<PathBuf>,
    /// Bytes of it covered by the sync policy (the rest may vanish on power loss).
    pub durable_len: u64,
    /// Bytes of it written (its live end; a file made from a spare is longer).
    pub written_len: u64,
}

struct OpenSegment {
    first: u64,
    path: PathBuf,
    file: File,
    written_len: u64,
    synced_len: u64,
}

/// The writer thread's own state.
struct Writer<M> {
    shared: Arc<Shared<M>>,
    active: Option<OpenSegment>,
    written: u64,
    durable: u64,
    /// When the oldest entry written but not yet durable was appended.
    oldest_unsynced: Option<Instant>,
    /// The chunks written but not yet durable: when each was opened, and its entries.
    unsynced_chunks: Vec<(Instant, u64)>,
    last_sync: Instant,
    /// When the last `fdatasync` returned (`None`: none yet).
    last_sync_end: Option<Instant>,
    last_ckpt: Instant,
    /// Stages writes into aligned blocks when segments are written with `O_DIRECT`.
    direct: Option<DirectStage>,
}

/// Publishes a failure if the writer thread unwinds, so no waiter hangs forever.
struct PanicGuard<'a, M>(&'a Shared<M>);

impl<M> Drop for PanicGuard<'_, M> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let failure = Arc::new(WriteFailure {
                path: self.0.dir.clone(),
                op: "writer thread",
                offset: None,
                source: std::io::Error::other("the disk queue writer thread panicked"),
            });
            self.0.state.lock().failed = Some(failure.clone());
            self.0.progress.send_modify(|p| {
                p.failed = Some(failure.clone());
                p.closed = true;
            });
            self.0.fail_waiters(Some(failure));
            self.0.notify_readers();
        }
    }
}

/// How much the writer thread raises its priority over the process's, where it may (nice
/// values: lower runs first). Every durable ack waits for this thread, and it spends most of
/// its time asleep in I/O: on a machine whose CPUs the relay keeps busy, each wake-up then
/// waited for a CPU. Measured in S2 on 2 vCPUs, ten rounds each: 1,990 fsyncs/s against 1,200,
/// a p99 sync wait of 5–6 ms against 8–10 ms, and a median 4.5 % more events/s.
pub(crate) const WRITER_NICE_BOOST: i32 = 10;

/// Raises the calling (writer) thread's priority by [`WRITER_NICE_BOOST`], if the process may
/// (root, `CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows it); otherwise leaves it.
pub(crate) fn raise_priority() {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let result = getpriority_process(me)
            .and_then(|nice| setpriority_process(me, (nice - WRITER_NICE_BOOST).max(-20)));
        if let Err(e) = result {
            tracing::debug!(error = %e, "The disk queue writer runs at the process's priority (raising it is not permitted).");
        }
    }
}

/// Runs the writer until shutdown (or a simulated crash).
pub(crate) fn run<M>(shared: Arc<Shared<M>>, written: u64) -> ExitInfo {
    let _guard = PanicGuard(&shared);
    raise_priority();
    let mut w = Writer {
        shared: shared.clone(),
        active: None,
        written,
        durable: written,
        oldest_unsynced: None,
        unsynced_chunks: Vec::new(),
        last_sync: Instant::now(),
        last_sync_end: None,
        last_ckpt: Instant::now(),
        direct: None,
    };
    if shared.direct_io {
        w.direct = Some(DirectStage::new(shared.direct_align));
    }
    w.run()
}

impl<M> Writer<M> {
    fn sync_interval(&self) -> Option<Duration> {
        match self.shared.opts.sync {
            SyncPolicy::Every(d) => Some(d),
            _ => None,
        }
    }

    /// Until when the next write gathers appends (see [`crate::Options::sync_gather`]):
    /// `None` unless the queue syncs always and synced less than `sync_gather` ago.
    fn gather_until(&self) -> Option<Instant> {
        let gather = self.shared.opts.sync_gather;
        if self.shared.opts.sync != SyncPolicy::Always || gather.is_zero() {
            return None;
        }
        self.last_sync_end.map(|end| end + gather)
    }

    fn exit_info(&self) -> ExitInfo {
        match &self.active {
            Some(seg) => ExitInfo {
                active: Some(seg.path.clone()),
                durable_len: match self.shared.opts.sync {
                    SyncPolicy::Never => seg.written_len,
                    _ => seg.synced_len,
                },
                written_len: seg.written_len,
            },
            None => ExitInfo::default(),
        }
    }

    fn run(&mut self) -> ExitInfo {
        let interval = self.shared.opts.checkpoint_interval;
        loop {
            let gather_until = self.gather_until();
            let (batch, closing, shutdown) = {
                let mut st = self.shared.state.lock();
                loop {
                    if st.crash {
                        return self.exit_info();
                    }
                    let now = Instant::now();
                    let unsynced = self.written > self.durable;
                    let sync_at = self.sync_interval().map(|d| self.last_sync + d);
                    let sync_due = unsynced && sync_at.is_some_and(|t| now >= t);
                    let low_moved = st.acks.low_water() != st.ckpt_low;
                    let ckpt_due = st.ckpt_urgent || low_moved && now >= self.last_ckpt + interval;
                    // One round after close() flushes, syncs and checkpoints, then sets `closed`.
                    let closing = st.close_requested && !self.shared.progress.borrow().closed;
                    let gathering = gather_until
                        .filter(|&t| now < t && !st.pending.is_empty() && st.gathering_allowed());
                    let work = !st.pending.is_empty() && gathering.is_none();
                    if work || sync_due || ckpt_due || closing || st.shutdown {
                        break;
                    }
                    let mut deadline = now + interval;
                    if unsynced && let Some(t) = sync_at {
                        deadline = deadline.min(t);
                    }
                    st.writer_wait = match gathering {
                        Some(t) => {
                            deadline = deadline.min(t);
                            WriterWait::Gathering
                        }
                        None => WriterWait::Idle,
                    };
                    self.shared.wake.wait_until(&mut st, deadline);
                    st.writer_wait = WriterWait::Busy;
                }
                let batch = std::mem::take(&mut st.pending);
                let closing = st.close_requested && !self.shared.progress.borrow().closed;
                (batch, closing, st.shutdown)
            };

            self.write_batch(batch);
            if self.shared.state.lock().crash {
                // A simulated crash between write() and fdatasync().
                return self.exit_info();
            }
            let force = closing || shutdown;
            let sync_now = match self.shared.opts.sync {
                SyncPolicy::Always => true,
                SyncPolicy::Every(d) => force || self.last_sync.elapsed() >= d,
                SyncPolicy::Never => force,
            };
            if sync_now {
                // A no-op if nothing was written since the last sync.
                self.sync(force);
            } else if self.shared.opts.sync == SyncPolicy::Never {
                self.publish_durable(self.written);
            }
            self.maintain(force);
            if force {
                self.shared.progress.send_modify(|p| p.closed = true);
                // Whatever still waits was never appended (or failed): it never becomes durable.
                self.shared.fail_waiters(None);
                self.shared.notify_readers();
            }
            if shutdown {
                return self.exit_info();
            }
        }
    }

    fn fail(&mut self, op: &'static str, path: PathBuf, offset: Option<u64>, e: std::io::Error) {
        tracing::error!(path = %path.display(), op, error = %e, "Disk queue write failed; refusing further writes until reopened.");
        let failure = Arc::new(WriteFailure {
            path,
            op,
            offset,
            source: e,
        });
        let mut st = self.shared.state.lock();
        if st.failed.is_none() {
            st.failed = Some(failure.clone());
        }
        st.pending.clear();
        st.pending_bytes = 0;
        drop(st);
        // Never durable: no waits to measure.
        self.unsynced_chunks.clear();
        self.shared.progress.send_modify(|p| {
            if p.failed.is_none() {
                p.failed = Some(failure.clone());
            }
        });
        self.shared.fail_waiters(Some(failure));
        self.shared.bump_space();
        self.shared.notify_readers();
        self.active = None;
    }

    fn failed(&self) -> bool {
        self.shared.progress.borrow().failed.is_some()
    }

    /// Makes `first` the open segment, syncing and closing the previous one. `offset` is where
    /// its first write in this process goes: its live end (0 for a new segment, where recovery
    /// found the end for the active one), since a segment made from a spare is longer than
    /// what was written to it.
    fn switch_to(&mut self, first: u64, offset: u64) -> bool {
        if self.active.as_ref().is_some_and(|a| a.first == first) {
            return true;
        }
        // Even under `Never`: one sync per segment keeps close() able to sync everything by
        // syncing only the active file, and costs nothing next to a segment's worth of writes.
        if self.active.is_some() && !self.sync_file(true) {
            return false;
        }
        if let Some(stage) = self.direct.as_mut() {
            stage.reset();
        }
        let path = segment::segment_path(&self.shared.dir, first);
        let existed = path.exists();
        if !existed && self.shared.opts.preallocate {
            // Either way the directory is synced below, which makes the rename durable too.
            self.shared.spare.take(&self.shared.dir, &path);
        }
        let file = match direct::open_for_write(&path, self.direct.is_some()) {
            Ok(f) => f,
            Err(e) => {
                self.fail("create", path, None, e);
                return false;
            }
        };
        if !existed
            && self.shared.opts.sync != SyncPolicy::Never
            && let Err(e) = File::open(&self.shared.dir).and_then(|d| d.sync_all())
        {
            self.fail("fsync directory", self.shared.dir.clone(), None, e);
            return false;
        }
        self.active = Some(OpenSegment {
            first,
            path,
            file,
            written_len: offset,
            synced_len: offset,
        });
        true
    }

    fn write_batch(&mut self, batch: Vec<crate::state::Chunk<M>>) {
        if batch.is_empty() || self.failed() {
            return;
        }
        let mut tail = Vec::with_capacity(batch.len());
        let mut bytes_total = 0u64;
        for chunk in batch {
            if !self.switch_to(chunk.segment, chunk.offset) {
                return;
            }
            let Some(seg) = self.active.as_mut() else {
                return;
            };
            // Frozen first: the stage may keep a slice of it until its write.
            let (bytes, held) = BufPool::freeze(&self.shared.pool, chunk.buf, chunk.skip);
            let wrote = match (self.direct.as_mut(), chunk.direct_from) {
                (Some(stage), Some(k)) if k <= bytes.len() => stage
                    .write_at(&seg.file, &bytes[..k], chunk.offset)
                    .and_then(|()| {
                        stage.write_from(&seg.file, bytes.slice(k..), chunk.offset + k as u64)
                    }),
                (Some(stage), _) => stage.write_at(&seg.file, &bytes, chunk.offset),
                (None, _) => seg.file.write_all_at(&bytes, chunk.offset),
            };
            if let Err(e) = wrote {
                let path = seg.path.clone();
                self.fail("write", path, Some(chunk.offset), e);
                return;
            }
            let len = bytes.len() as u64;
            let before = seg.written_len;
            seg.written_len = seg.written_len.max(chunk.offset + len);
            if crate::prep::crossed_busy_mark(
                before,
                seg.written_len,
                self.shared.opts.segment_bytes,
            ) {
                self.shared.spare.nudge();
            }
            bytes_total += len;
            self.written = chunk.end_seq;
            self.oldest_unsynced.get_or_insert(chunk.opened);
            self.unsynced_chunks
                .push((chunk.opened, chunk.end_seq - chunk.first_seq));
            tail.push(Arc::new(TailChunk {
                segment: chunk.segment,
                offset: chunk.offset,
                first_seq: chunk.first_seq,
                end_seq: chunk.end_seq,
                bytes,
                held,
                memos: parking_lot::Mutex::new(chunk.memos),
            }));
        }
        if !self.flush_direct() {
            return;
        }
        Counters::add(&self.shared.counters.bytes_written, bytes_total);
        let limit = self.shared.opts.read_cache_bytes;
        let mut st = self.shared.state.lock();
        st.written = self.written;
        st.pending_bytes = st.pending_bytes.saturating_sub(bytes_total);
        for t in tail {
            st.tail_bytes += t.held;
            st.tail.push_back(t);
        }
        // Evicted chunks (and the memos nobody read) are freed after the lock is released; their
        // buffers go back to the pool if no reader still holds a slice of them.
        let mut evicted = Vec::new();
        while st.tail_bytes > limit {
            match st.tail.pop_front() {
                Some(old) => {
                    st.tail_bytes -= old.held;
                    evicted.push(old);
                }
                None => break,
            }
        }
        let space = std::mem::take(&mut st.space_wanted);
        drop(st);
        drop(evicted);
        let written = self.written;
        // Record the watermark without waking `wait_durable` callers: only readers care.
        self.shared.progress.send_if_modified(|p| {
            p.written = written;
            false
        });
        if self.shared.opts.read_before_durable {
            self.shared.notify_readers();
        }
        if space {
            self.shared.bump_space();
        }
    }

    /// Writes what the direct-I/O stage holds for the open segment. Returns false on failure.
    fn flush_direct(&mut self) -> bool {
        let (Some(stage), Some(seg)) = (self.direct.as_mut(), self.active.as_ref()) else {
            return true;
        };
        if let Err(e) = stage.flush(&seg.file) {
            let path = seg.path.clone();
            self.fail("write", path, None, e);
            return false;
        }
        true
    }

    /// `fdatasync`s the open segment. With `seal` (the writer leaves the segment: roll-over or
    /// close), it first trims direct I/O's zero padding, so a segment the writer is done with
    /// is exactly as long as its records (a spare's unused rest goes too). Returns false on
    /// failure.
    fn sync_file(&mut self, seal: bool) -> bool {
        if !self.flush_direct() {
            return false;
        }
        let direct = self.direct.is_some();
        let Some(seg) = self.active.as_ref() else {
            return true;
        };
        let mut changed = seg.synced_len != seg.written_len;
        if seal && direct {
            match trim_padding(seg) {
                Ok(trimmed) => changed |= trimmed,
                Err(e) => {
                    let (path, at) = (seg.path.clone(), seg.written_len);
                    self.fail("truncate padding", path, Some(at), e);
                    return false;
                }
            }
        }
        let Some(seg) = self.active.as_mut() else {
            return true;
        };
        if !changed {
            return true;
        }
        if let Err(e) = seg.file.sync_data() {
            let path = seg.path.clone();
            self.fail("fdatasync", path, None, e);
            return false;
        }
        seg.synced_len = seg.written_len;
        self.last_sync_end = Some(Instant::now());
        Counters::add(&self.shared.counters.fsyncs, 1);
        true
    }

    fn sync(&mut self, seal: bool) {
        self.last_sync = Instant::now();
        if self.sync_file(seal) {
            self.publish_durable(self.written);
        }
    }

    fn publish_durable(&mut self, upto: u64) {
        if upto <= self.durable || self.failed() {
            return;
        }
        Counters::add(&self.shared.counters.records_synced, upto - self.durable);
        self.durable = upto;
        // Recorded before the release, so a waiter that wakes sees its sync in the histograms.
        let now = Instant::now();
        if let Some(opened) = self.oldest_unsynced.take() {
            self.shared.counters.sync_latency.record(now - opened);
        }
        for (opened, entries) in self.unsynced_chunks.drain(..) {
            self.shared
                .counters
                .entry_wait
                .record_n(now - opened, entries);
        }
        self.shared.release_durable(upto);
        if !self.shared.opts.read_before_durable {
            self.shared.notify_readers();
        }
        // For stats and close(); waiters were released above, without waking anyone else.
        self.shared.progress.send_if_modified(|p| {
            p.durable = upto;
            false
        });
    }

    /// Writes the checkpoint if due (or `force`d) and deletes segments it made obsolete.
    fn maintain(&mut self, force: bool) {
        let (low, ckpt_low, urgent) = {
            let st = self.shared.state.lock();
            (st.acks.low_water(), st.ckpt_low, st.ckpt_urgent)
        };
        let due =
            force || urgent || self.last_ckpt.elapsed() >= self.shared.opts.checkpoint_interval;
        if low != ckpt_low && due {
            self.last_ckpt = Instant::now();
            match checkpoint::write(&self.shared.dir, low) {
                Ok(()) => {
                    Counters::add(&self.shared.counters.checkpoints, 1);
                    self.shared.state.lock().ckpt_low = low;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Writing the disk queue checkpoint failed; will retry.");
                    // Retry at the interval rather than in a tight loop.
                    self.shared.state.lock().ckpt_urgent = false;
                }
            }
        }
        // Delete what the durable checkpoint covers. This also runs when the checkpoint was
        // already up to date, e.g. when a fully acknowledged active segment was just rolled over.
        // Old records are told apart from new ones only past a block of zero padding, which
        // only direct writes leave (see `segment.rs`): only then is a segment recycled.
        let seg_bytes = self.shared.opts.segment_bytes;
        let mut recycle = self.direct.is_some() && self.shared.opts.preallocate;
        let mut doomed = Vec::new();
        let low = {
            let mut st = self.shared.state.lock();
            let covered = st.ckpt_low;
            while st.front_deletable(covered) {
                if let Some(old) = st.segments.pop_front() {
                    st.disk_bytes -= old.bytes;
                    doomed.push(old.first);
                }
            }
            // Still urgent only if acks since the checkpoint free another segment. (Clearing it
            // only once the checkpoint caught up with the low-water mark kept it set for as
            // long as acks flowed: a checkpoint, with its two fsyncs, every round.)
            if !st.front_deletable(st.acks.low_water()) {
                st.ckpt_urgent = false;
            }
            recycle &= !(st.close_requested || st.shutdown)
                && seg_bytes
                    .checked_mul(2)
                    .and_then(|two| two.checked_add(st.disk_bytes))
                    .is_some_and(|need| need <= self.shared.opts.max_bytes);
            covered
        };
        for first in &doomed {
            let path = segment::segment_path(&self.shared.dir, *first);
            // One acknowledged segment may become the next spare instead (see `prep.rs`): at
            // least half a segment of blocks that a new segment then overwrites, and no more
            // than a segment (one oversized record gets a segment of its own), so the spare
            // never takes more disk than `max_bytes` left room for.
            if recycle {
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                if (seg_bytes / 2..=seg_bytes).contains(&len)
                    && self.shared.spare.recycle(&self.shared.dir, &path, len)
                {
                    recycle = false;
                    continue;
                }
            }
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "Deleting an acknowledged segment failed.");
            }
        }
        if !doomed.is_empty() {
            tracing::debug!(
                segments = doomed.len(),
                low,
                "Deleted acknowledged segments."
            );
            self.shared.bump_space();
            self.shared.spare.nudge();
        }
    }
}

/// Cuts whatever lies past the segment's live end: the zeros direct I/O padded its last block
/// with (see `direct.rs`), and the unused rest of a spare it was made from (zeros, or a
/// recycled file's old records). Returns whether the file changed.
fn trim_padding(seg: &OpenSegment) -> std::io::Result<bool> {
    let len = seg.file.metadata()?.len();
    if len <= seg.written_len {
        return Ok(false);
    }
    seg.file.set_len(seg.written_len)?;
    Ok(true)
}
