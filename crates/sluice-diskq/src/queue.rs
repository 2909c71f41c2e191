//! [`DiskQueue`]: the public handle, tying recovery, the writer thread and readers together.
//! (Appending lives in `append.rs`.)
//!
//! The handle is a cheap clone of an `Arc`, generic over the memo type `M` that appenders may
//! attach to entries (see [`DiskQueue::append_batch`]); `M = ()` when memos are not used. When
//! the last clone is dropped without `close()`, the writer thread is asked to flush, sync and
//! checkpoint, and is joined, so an orderly drop loses nothing; only a real crash (or the
//! test-only `crash`) skips that.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use crate::reader::{Entry, Handout, MemoOr};
use crate::state::{Counters, Progress, ReadCursor, Shared, State, WriterWait};
use crate::writer::{self, ExitInfo};
use crate::{Error, LatencyHistogram, Options, RecoveryReport, Seq, Stats, SyncPolicy, recovery};

/// File name of the directory lock.
pub const LOCK_FILE: &str = "lock";

/// How long `open` keeps trying to lock a directory before reporting it locked. A lock can be
/// held for a moment by something other than a live owner: `flock` locks belong to the open
/// file, which a concurrently forked child shares until it calls `exec`, and a previous owner
/// may still be exiting.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

fn lock_exclusive(lock: &std::fs::File, dir: &Path, lock_path: &Path) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match fs4::fs_std::FileExt::try_lock_exclusive(lock) {
            Ok(true) => return Ok(()),
            Ok(false) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(false) => {
                return Err(Error::Locked {
                    dir: dir.to_path_buf(),
                    lock: lock_path.to_path_buf(),
                });
            }
            Err(e) => return Err(Error::io("lock", lock_path, None, e)),
        }
    }
}

/// A durable FIFO queue of byte entries stored in a directory. Cheap to clone; `Send + Sync`.
///
/// `M` is the type of the *memos* appenders may attach to entries: in-memory values (never
/// written) handed back with the entry when a reader is served from the in-memory tail, so it
/// need not decode the bytes. `M = ()` when memos are not used.
pub struct DiskQueue<M = ()> {
    pub(crate) inner: Arc<Inner<M>>,
}

impl<M> Clone for DiskQueue<M> {
    fn clone(&self) -> Self {
        DiskQueue {
            inner: self.inner.clone(),
        }
    }
}

impl<M> std::fmt::Debug for DiskQueue<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskQueue")
            .field("dir", &self.inner.shared.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<M> {
    pub(crate) shared: Arc<Shared<M>>,
    writer: Mutex<Option<JoinHandle<ExitInfo>>>,
    /// The spare segment's preparer, if `preallocate` is on.
    prep: Mutex<Option<JoinHandle<()>>>,
}

impl<M> Inner<M> {
    fn stop_writer(&self, crash: bool) -> ExitInfo {
        {
            let mut st = self.shared.state.lock();
            if crash {
                st.crash = true;
            } else {
                st.shutdown = true;
            }
            st.writer_wait = WriterWait::Busy;
            self.shared.wake.notify_one();
        }
        let handle = self.writer.lock().take();
        let info = match handle.map(JoinHandle::join) {
            Some(Ok(info)) => info,
            _ => ExitInfo::default(),
        };
        // After the writer: it no longer takes the spare, so the preparer may delete it.
        self.shared.spare.stop(crash);
        if let Some(prep) = self.prep.lock().take() {
            let _ = prep.join();
        }
        self.shared.progress.send_modify(|p| p.closed = true);
        self.shared.fail_waiters(None);
        self.shared.notify_readers();
        info
    }
}

impl<M> Drop for Inner<M> {
    fn drop(&mut self) {
        self.stop_writer(false);
    }
}

impl<M: Clone + Send + Sync + 'static> DiskQueue<M> {
    /// Opens (creating if needed) the queue directory, takes an exclusive lock (fs4) so two
    /// processes can't share it, and recovers: see the crate documentation for what recovery
    /// does with damaged data. Fails only if the options are invalid, the directory cannot be
    /// created or read, or it is locked by another live process.
    ///
    /// The memo type is inferred from how the queue is used; without memos, name the type
    /// where nothing else does: `let (q, _): (DiskQueue, _) = DiskQueue::open(dir, opts)?`.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: Options,
    ) -> Result<(DiskQueue<M>, RecoveryReport), Error> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, None, e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, None, e))?;
        lock_exclusive(&lock, &dir, &lock_path)?;

        let rec = recovery::recover(&dir)?;
        tracing::info!(dir = %dir.display(), report = %rec.report, "Opened disk queue.");
        let disk_bytes = rec.segments.iter().map(|s| s.bytes).sum();
        let state = State {
            next_seq: rec.next_seq,
            written: rec.next_seq,
            durable: rec.next_seq,
            waiters: std::collections::BTreeMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            segments: rec.segments,
            disk_bytes,
            acks: rec.acks,
            ckpt_low: rec.ckpt_low,
            ckpt_urgent: false,
            space_wanted: false,
            full_epoch: None,
            close_requested: false,
            shutdown: false,
            crash: false,
            failed: None,
            tail: VecDeque::new(),
            tail_bytes: 0,
            writer_wait: WriterWait::Busy,
            readers_waiting: 0,
        };
        let counters = Counters::default();
        Counters::add(&counters.corrupt_records, rec.report.corrupt_records);
        Counters::add(&counters.corrupt_bytes, rec.report.corrupt_bytes);
        let (progress, _) = watch::channel(Progress {
            written: rec.next_seq,
            durable: rec.next_seq,
            failed: None,
            closed: false,
        });
        let (space, _) = watch::channel(0u64);
        let (readable, _) = watch::channel(());
        let direct_align = (opts.direct_io && opts.sync == SyncPolicy::Always)
            .then(|| crate::direct::alignment(&dir))
            .flatten();
        let shared = Arc::new(Shared {
            direct_io: direct_align.is_some(),
            direct_align: direct_align.unwrap_or(crate::direct::BLOCK),
            dir,
            opts,
            state: Mutex::new(state),
            wake: Condvar::new(),
            progress,
            readable,
            reader_moved: tokio::sync::Notify::new(),
            pace_until: std::sync::atomic::AtomicU64::new(u64::MAX),
            reader_stalled_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            space,
            reader: Mutex::new(ReadCursor {
                seq: rec.start.seq,
                record_seq: rec.start.record_seq,
                segment: rec.start.segment,
                offset: rec.start.offset,
                file: None,
                window: Default::default(),
            }),
            pool: Default::default(),
            spare: Default::default(),
            counters,
            _lock: lock,
        });
        let thread_shared = shared.clone();
        let next = rec.next_seq;
        let handle = std::thread::Builder::new()
            .name("sluice-diskq-writer".into())
            .spawn(move || writer::run(thread_shared, next))
            .map_err(|e| Error::io("spawn writer thread", &shared.dir, None, e))?;
        let queue = DiskQueue {
            inner: Arc::new(Inner {
                shared: shared.clone(),
                writer: Mutex::new(Some(handle)),
                prep: Mutex::new(None),
            }),
        };
        if shared.opts.preallocate {
            let prep_shared = shared.clone();
            let prep = std::thread::Builder::new()
                .name("sluice-diskq-prep".into())
                .spawn(move || crate::prep::run(prep_shared))
                .map_err(|e| Error::io("spawn preparer thread", &shared.dir, None, e))?;
            *queue.inner.prep.lock() = Some(prep);
        }
        Ok((queue, rec.report))
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    pub(crate) fn shared(&self) -> &Shared<M> {
        &self.inner.shared
    }

    /// Resolves once `seq` is durable per the sync policy: `Always` → covered by an
    /// `fdatasync`; `Every(d)` → covered by the next periodic sync; `Never` → handed to the OS.
    /// Returns [`Error::WriteFailed`] if the write or sync failed (that record is never
    /// reported durable), or [`Error::Closed`] if the queue closed without `seq` being appended.
    pub async fn wait_durable(&self, seq: Seq) -> Result<(), Error> {
        let sh = self.shared();
        let rx = {
            let mut st = sh.state.lock();
            if seq < st.durable {
                return Ok(());
            }
            if let Some(f) = &st.failed {
                return Err(Error::WriteFailed(f.clone()));
            }
            if sh.progress.borrow().closed {
                return Err(Error::Closed);
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.entry(seq).or_default().push(tx);
            // Someone waits: a gathering writer writes now (an idle one has nothing to write,
            // or waits for a periodic sync, which a waiter does not hasten).
            if st.writer_wait == WriterWait::Gathering {
                sh.wake_writer(&mut st);
            }
            rx
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(Error::WriteFailed(f)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Resolves when space may have been freed (segments deleted after acks, or the writer
    /// caught up) since `append` last reported [`crate::AppendError::Full`], so a writer
    /// blocked on `Full` can retry. Resolves at once if space was freed in between (no lost wake-up), if
    /// `append` never reported `Full`, or if the queue is closed or failed.
    pub async fn wait_space(&self) {
        let sh = self.shared();
        let mut rx = sh.space.subscribe();
        {
            let st = sh.state.lock();
            let seen = *rx.borrow_and_update();
            let freed_since_full = st.full_epoch.is_none_or(|e| e != seen);
            if freed_since_full || st.close_requested || st.failed.is_some() {
                return;
            }
        }
        // An error means the sender is gone, i.e. the queue is being torn down: also "resolve".
        let _ = rx.changed().await;
    }

    /// Returns the next entries in order: at least one, up to `max_entries` and about
    /// `max_bytes` of entry bytes (a single larger entry is still returned), waiting until one
    /// is available. Returns an empty vec only after `close()`, once everything was handed out.
    /// Each entry is handed out once per process lifetime; after a restart every
    /// unacknowledged entry is handed out again. A read may stop inside a multi-entry record;
    /// the next one continues with its next entry.
    ///
    /// Entries served from the in-memory tail are zero-copy slices of the written data and
    /// carry their memo; entries read from a segment file (the reader fell behind by more than
    /// `read_cache_bytes`, or the queue was reopened) carry none.
    pub async fn read_entries(
        &self,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry<M>>, Error> {
        self.read_waiting(max_entries, max_bytes).await
    }

    /// Like [`DiskQueue::read_entries`] but never waits: `Ok(None)` when nothing is available
    /// yet.
    pub fn try_read_entries(
        &self,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Entry<M>>>, Error> {
        crate::reader::try_read(self.shared(), max_entries.max(1), max_bytes)
    }

    /// [`DiskQueue::read_entries`] for a reader that wants an entry's memo or its bytes, not
    /// both: an entry served with its memo is not sliced out of the written data (see
    /// [`MemoOr`]).
    pub async fn read_memos(
        &self,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<MemoOr<M>>, Error> {
        self.read_waiting(max_entries, max_bytes).await
    }

    /// [`DiskQueue::read_entries`] without the memos: `(seq, bytes)` pairs.
    pub async fn read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, Error> {
        self.read_waiting(max_records, max_bytes).await
    }

    /// [`DiskQueue::try_read_entries`] without the memos: `(seq, bytes)` pairs.
    pub fn try_read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(Seq, Bytes)>>, Error> {
        crate::reader::try_read(self.shared(), max_records.max(1), max_bytes)
    }

    /// Reads, waiting until something is available (or the queue is closed and drained).
    async fn read_waiting<T: Handout<M>>(
        &self,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<T>, Error> {
        let mut rx = self.shared().readable.subscribe();
        loop {
            rx.borrow_and_update();
            let read = crate::reader::try_read(self.shared(), max_entries.max(1), max_bytes)?;
            if let Some(batch) = read {
                return Ok(batch);
            }
            // Counted while it waits (also if this future is dropped meanwhile).
            let _waiting = self.shared().reader_waits();
            if rx.changed().await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Acknowledges one entry; acks may arrive out of order and repeat. The contiguous
    /// low-water mark advances and is checkpointed within `checkpoint_interval` (sooner when it
    /// makes a segment deletable); a segment file is deleted once every entry in it is
    /// acknowledged and checkpointed. Acks of seqs never appended are ignored.
    pub fn ack(&self, seq: Seq) {
        self.ack_many(std::slice::from_ref(&seq));
    }

    /// Acknowledges many entries under one lock, as [`DiskQueue::ack`] does each of them.
    /// Runs of consecutive seqs (in ascending order) are recorded as one range.
    pub fn ack_many(&self, seqs: &[Seq]) {
        let sh = self.shared();
        let mut st = sh.state.lock();
        let next_seq = st.next_seq;
        let before = st.acks.low_water();
        let mut seqs = seqs.iter().copied().peekable();
        while let Some(start) = seqs.next() {
            let mut end = start.saturating_add(1);
            while seqs.next_if_eq(&end).is_some() {
                end = end.saturating_add(1);
            }
            if end > next_seq {
                tracing::debug!(
                    seq = end - 1,
                    next_seq,
                    "Ignoring ack of a seq never appended."
                );
            }
            st.acks.insert_range(start, end.min(next_seq));
        }
        let low = st.acks.low_water();
        if low != before && !st.ckpt_urgent && st.front_deletable(low) {
            st.ckpt_urgent = true;
            sh.wake_writer(&mut st);
        }
    }

    /// Whether the reader is falling behind the in-memory tail of recent writes: what it has
    /// yet to read there fills more than half of the tail's budget (`read_cache_bytes`), so if
    /// it falls much further it reads back from the files; or it has just fallen out of the
    /// tail, by at most a budget's worth of bytes, and reads back from the files until it is
    /// in again. False with no tail, and once the reader is further behind than that.
    ///
    /// Why a reader just out of the tail counts: an entry read back from a file is read,
    /// copied and decoded, which an entry in the tail is not, so a reader that fell out while
    /// short of CPU falls further behind, not back in. Measured in S2 before this (24 M events):
    /// after a slow moment the sink read 90 % of the events back from the files, the relay
    /// spent 1.0 µs of CPU per event instead of 0.6, and events waited 3 s in the queue.
    pub fn reader_falling_behind(&self) -> bool {
        self.caught_up_at().is_some()
    }

    /// While the reader is [falling behind](Self::reader_falling_behind): the seq it must
    /// reach to stop being so. The tail holds only chunks the reader has not finished (see
    /// `reader.rs`), so that is where the newest half of the budget starts, estimated from the
    /// tail's average bytes per entry (or the tail's first seq, if it holds less than half).
    fn caught_up_at(&self) -> Option<Seq> {
        let sh = self.shared();
        let budget = sh.opts.read_cache_bytes as u128;
        let read = sh.counters.read_seq.load(Ordering::SeqCst);
        let st = sh.state.lock();
        let (front, back) = (st.tail.front()?, st.tail.back()?);
        let (first, end) = (front.first_seq, back.end_seq);
        let span = u128::from(end - first).max(1);
        let tail_bytes = st.tail_bytes as u128;
        drop(st);
        let mark = if tail_bytes > budget / 2 {
            // `newest` < `span` since half the budget < `tail_bytes`: the cast cannot truncate.
            let newest = span * (budget / 2) / tail_bytes;
            end - newest as u64
        } else {
            first
        };
        let behind = u128::from(first.saturating_sub(read)) * tail_bytes / span;
        (read < mark && behind <= budget).then_some(mark)
    }

    /// Waits, at most `max`, while the reader is [falling behind](Self::reader_falling_behind)
    /// the in-memory tail, so that an appender that outruns an active reader lets it catch up
    /// instead of pushing it out to the files (where every entry is read and decoded again).
    ///
    /// Never waits on a stalled reader: once a caller waited `max` and the reader did not move,
    /// nobody waits again until it does. So a reader whose destination is down costs appenders
    /// one wait of `max`, and one whose destination is merely slow at most a wait per append
    /// until it is a budget's worth of bytes behind the tail; the files then take the
    /// difference.
    pub async fn pace_to_reader(&self, max: std::time::Duration) {
        let sh = self.shared();
        let stalled =
            || Counters::get(&sh.reader_stalled_at) == Counters::get(&sh.counters.read_seq);
        if stalled() {
            return;
        }
        let deadline = tokio::time::Instant::now() + max;
        let started_at = Counters::get(&sh.counters.read_seq);
        loop {
            // Registered, and the mark published, before the reader's position is checked
            // again: either the reader then sees the mark and wakes us, or we see it past it.
            let moved = sh.reader_moved.notified();
            let mut moved = std::pin::pin!(moved);
            moved.as_mut().enable();
            let Some(mid) = self.caught_up_at() else {
                return;
            };
            sh.pace_until.fetch_min(mid, Ordering::SeqCst);
            if self.caught_up_at().is_none() {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                // Stalled only if it did not move at all (it may have moved, short of the mark).
                let at = Counters::get(&sh.counters.read_seq);
                if at == started_at {
                    sh.reader_stalled_at.store(at, Ordering::Relaxed);
                }
                return;
            }
        }
    }

    /// The seq the next append will get (cheaper than [`DiskQueue::stats`]).
    pub fn next_seq(&self) -> Seq {
        self.shared().state.lock().next_seq
    }

    /// How long entries waited to become durable: one sample per sync, from the append of the
    /// oldest entry it covered to the release of its waiters. Since the queue was opened.
    pub fn sync_latency(&self) -> LatencyHistogram {
        self.shared().counters.sync_latency.snapshot()
    }

    /// How long entries waited to become durable: one sample per entry, from its append (or
    /// an earlier one sharing its group-commit chunk) to the release of its waiters. Since the
    /// queue was opened.
    pub fn entry_wait(&self) -> LatencyHistogram {
        self.shared().counters.entry_wait.snapshot()
    }

    /// A snapshot of counters and watermarks.
    pub fn stats(&self) -> Stats {
        let sh = self.shared();
        let read_seq = sh.reader.lock().seq;
        let p = sh.progress.borrow().clone();
        let st = sh.state.lock();
        let c = &sh.counters;
        Stats {
            next_seq: st.next_seq,
            acked_low_water: st.acks.low_water(),
            checkpointed_low_water: st.ckpt_low,
            unacked_records: st.unacked(),
            read_seq,
            written_seq: st.written,
            durable_seq: st.durable,
            bytes_on_disk: st.disk_bytes,
            pending_bytes: st.pending_bytes,
            segments: st.segments.iter().filter(|s| s.bytes > 0).count(),
            fsyncs: Counters::get(&c.fsyncs),
            records_synced: Counters::get(&c.records_synced),
            bytes_written: Counters::get(&c.bytes_written),
            checkpoints: Counters::get(&c.checkpoints),
            corrupt_records: Counters::get(&c.corrupt_records),
            corrupt_bytes: Counters::get(&c.corrupt_bytes),
            file_read_entries: Counters::get(&c.file_read_entries),
            write_failed: p.failed.is_some(),
            tail_bytes: st.tail_bytes as u64,
            preallocated_segments: Counters::get(&sh.spare.used),
            recycled_segments: Counters::get(&sh.spare.recycled),
            spare_bytes: Counters::get(&sh.spare.bytes),
        }
    }

    /// Stops accepting appends, writes and syncs what is buffered (whatever the sync policy),
    /// and writes the checkpoint. Readers then drain and get an empty batch. Acks that arrive
    /// later are still checkpointed (at the interval, and when the queue is dropped).
    pub async fn close(&self) -> Result<(), Error> {
        let sh = self.shared();
        let mut rx = sh.progress.subscribe();
        {
            let mut st = sh.state.lock();
            st.close_requested = true;
            st.ckpt_urgent = true;
            st.writer_wait = WriterWait::Busy;
            sh.wake.notify_one();
        }
        sh.bump_space();
        let p = rx
            .wait_for(|p| p.closed)
            .await
            .map_err(|_| Error::Closed)?
            .clone();
        match p.failed {
            Some(f) => Err(Error::WriteFailed(f)),
            None => Ok(()),
        }
    }

    /// Test-only: spares are only ever recycled segments from now on (see `prep.rs`).
    #[cfg(test)]
    pub(crate) fn only_recycled_spares(&self) {
        let spare = &self.shared().spare;
        spare
            .no_zero_fill
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Test-only: stops the writer as a crash would — buffered appends are never written, a
    /// write may not be followed by its sync, no checkpoint is written — then releases the
    /// directory. Returns the active segment and how much of it the sync policy covered.
    #[cfg(test)]
    pub(crate) fn crash(self) -> ExitInfo {
        let info = self.inner.stop_writer(true);
        drop(self);
        info
    }
}
