//! [`DiskQueue`]: the public handle, tying recovery, the writer thread and readers together.
//!
//! The handle is a cheap clone of an `Arc`. When the last clone is dropped without `close()`,
//! the writer thread is asked to flush, sync and checkpoint, and is joined, so an orderly drop
//! loses nothing; only a real crash (or the test-only `crash`) skips that.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use crate::record::{encode_into, encoded_len};
use crate::state::{Chunk, Counters, PENDING_LIMIT, Progress, ReadCursor, SegMeta, Shared, State};
use crate::writer::{self, ExitInfo};
use crate::{AppendError, Error, Options, RecoveryReport, Seq, Stats, recovery};

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

/// A durable FIFO queue of byte records stored in a directory. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct DiskQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<ExitInfo>>>,
}

impl Inner {
    fn stop_writer(&self, crash: bool) -> ExitInfo {
        {
            let mut st = self.shared.state.lock();
            if crash {
                st.crash = true;
            } else {
                st.shutdown = true;
            }
            st.writer_idle = false;
            self.shared.wake.notify_one();
        }
        let handle = self.writer.lock().take();
        let info = match handle.map(JoinHandle::join) {
            Some(Ok(info)) => info,
            _ => ExitInfo::default(),
        };
        self.shared.progress.send_modify(|p| p.closed = true);
        self.shared.fail_waiters(None);
        self.shared.notify_readers();
        info
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_writer(false);
    }
}

impl DiskQueue {
    /// Opens (creating if needed) the queue directory, takes an exclusive lock (fs4) so two
    /// processes can't share it, and recovers: see the crate documentation for what recovery
    /// does with damaged data. Fails only if the options are invalid, the directory cannot be
    /// created or read, or it is locked by another live process.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: Options,
    ) -> Result<(DiskQueue, RecoveryReport), Error> {
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
            writer_idle: false,
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
        let shared = Arc::new(Shared {
            dir,
            opts,
            state: Mutex::new(state),
            wake: Condvar::new(),
            progress,
            readable,
            space,
            reader: Mutex::new(ReadCursor {
                seq: rec.start.seq,
                segment: rec.start.segment,
                offset: rec.start.offset,
                file: None,
            }),
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
                shared,
                writer: Mutex::new(Some(handle)),
            }),
        };
        Ok((queue, rec.report))
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Appends one record without waiting for durability, returning its sequence number.
    ///
    /// Errors: [`AppendError::Full`] (max_bytes reached: the caller applies its policy),
    /// [`AppendError::TooLarge`], [`AppendError::Io`] (a previous write or sync failed: the
    /// queue is poisoned for writes until reopened), [`AppendError::Closed`].
    pub fn append(&self, record: &[u8]) -> Result<Seq, AppendError> {
        let sh = self.shared();
        let max = sh.opts.max_record_bytes;
        if record.len() > max as usize {
            return Err(AppendError::TooLarge {
                len: record.len(),
                max,
            });
        }
        let rec_len = encoded_len(record.len()) as u64;
        let mut st = sh.state.lock();
        if st.close_requested || st.shutdown {
            return Err(AppendError::Closed);
        }
        if let Some(f) = &st.failed {
            return Err(AppendError::Io(f.clone()));
        }
        let max_bytes = sh.opts.max_bytes;
        let next_seq = st.next_seq;
        let all_acked = st.acks.low_water() >= next_seq;
        let over = st.disk_bytes + rec_len > max_bytes;
        let active = st.segments.back().copied().unwrap_or(SegMeta {
            first: next_seq,
            bytes: 0,
        });
        if st.segments.is_empty()
            || active.bytes > 0
                && (active.bytes + rec_len > sh.opts.segment_bytes || all_acked && over)
        {
            // Roll over. When everything is acknowledged this also lets the old active segment
            // be deleted, which is the only way to free space in a queue of one segment.
            st.segments.push_back(SegMeta {
                first: next_seq,
                bytes: 0,
            });
            if all_acked && over {
                st.ckpt_urgent = true;
                sh.wake_writer(&mut st);
            }
        }
        let backlog = st.pending_bytes > 0 && st.pending_bytes + rec_len > PENDING_LIMIT;
        if over || backlog {
            st.space_wanted |= backlog;
            st.full_epoch = Some(*sh.space.borrow());
            return Err(AppendError::Full {
                bytes: st.disk_bytes,
                record_bytes: rec_len,
                max_bytes,
            });
        }
        st.next_seq = next_seq + 1;
        st.disk_bytes += rec_len;
        st.pending_bytes += rec_len;
        let Some(seg) = st.segments.back_mut() else {
            unreachable!("segments is never empty: a segment was pushed above if it was");
        };
        let (segment, offset) = (seg.first, seg.bytes);
        seg.bytes += rec_len;
        match st.pending.last_mut() {
            Some(c) if c.segment == segment => {
                encode_into(&mut c.buf, next_seq, record);
                c.end_seq = next_seq + 1;
            }
            _ => {
                let mut buf = Vec::with_capacity((rec_len as usize).max(4096));
                encode_into(&mut buf, next_seq, record);
                st.pending.push(Chunk {
                    segment,
                    offset,
                    first_seq: next_seq,
                    end_seq: next_seq + 1,
                    buf,
                });
            }
        }
        sh.wake_writer(&mut st);
        Ok(next_seq)
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
            rx
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(Error::WriteFailed(f)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Resolves when space may have been freed (segments deleted after acks, or the writer
    /// caught up) since `append` last reported [`AppendError::Full`], so a writer blocked on
    /// `Full` can retry. Resolves at once if space was freed in between (no lost wake-up), if
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

    /// Returns the next records in order: at least one, up to `max_records` and about
    /// `max_bytes` (a single larger record is still returned), waiting until one is available.
    /// Returns an empty vec only after `close()`, once everything was handed out. Each record is
    /// handed out once per process lifetime; after a restart every unacknowledged record is
    /// handed out again.
    pub async fn read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, Error> {
        let mut rx = self.shared().readable.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(batch) = self.try_read_batch(max_records, max_bytes)? {
                return Ok(batch);
            }
            if rx.changed().await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    /// Like [`DiskQueue::read_batch`] but never waits: `Ok(None)` when nothing is available yet.
    pub fn try_read_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<(Seq, Bytes)>>, Error> {
        crate::reader::try_read(self.shared(), max_records.max(1), max_bytes)
    }

    /// Acknowledges one record; acks may arrive out of order and repeat. The contiguous
    /// low-water mark advances and is checkpointed within `checkpoint_interval` (sooner when it
    /// makes a segment deletable); a segment file is deleted once every record in it is
    /// acknowledged and checkpointed. Acks of seqs never appended are ignored.
    pub fn ack(&self, seq: Seq) {
        let sh = self.shared();
        let mut st = sh.state.lock();
        if seq >= st.next_seq {
            tracing::debug!(
                seq,
                next_seq = st.next_seq,
                "Ignoring ack of a seq never appended."
            );
            return;
        }
        let before = st.acks.low_water();
        st.acks.insert(seq);
        let low = st.acks.low_water();
        if low != before && !st.ckpt_urgent && st.front_deletable(low) {
            st.ckpt_urgent = true;
            sh.wake_writer(&mut st);
        }
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
            write_failed: p.failed.is_some(),
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
            st.writer_idle = false;
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
