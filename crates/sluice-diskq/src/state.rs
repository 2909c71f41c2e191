//! The state shared by appenders, readers, ackers and the writer thread.
//!
//! One `parking_lot` mutex guards [`State`]; it is held only for bookkeeping and memcpy, never
//! across file I/O. The writer thread waits on [`Shared::wake`] with that mutex. Watermarks
//! that async callers wait for are published on `tokio::sync::watch` channels
//! ([`Shared::progress`], [`Shared::readable`], [`Shared::space`]), so waiters never miss a wake-up.
//!
//! Invariants:
//! - `segments` is never empty; its last entry is the active segment, which appends go to.
//! - `disk_bytes` is the sum of `segments[..].bytes`, which count pending bytes too.
//! - `pending` chunks are contiguous in seq and in file offset, in order; `written` is the
//!   first seq not yet handed to the OS, so `pending` starts at `written`.
//! - `tail` holds written chunks in seq order, ending at `written`, from the first one the
//!   reader has not finished (the reader drops chunks it read wholly; the writer drops the
//!   oldest while `tail_bytes` is over `read_cache_bytes`). Readers clone the `Arc` of a chunk
//!   under the lock and read it after releasing it. Chunks leaving the tail are dropped after
//!   the lock is released.
//! - Memos (in-memory values appenders attach to entries) live only in `pending` and `tail`
//!   chunks, indexed by seq, and are never written. A reader *takes* a memo when it hands its
//!   entry out (each entry is handed out once), so the tail never keeps a value alive after
//!   the reader got it; memos never read are dropped with their chunk.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, watch};

use crate::acks::AckSet;
use crate::bufpool::BufPool;
use crate::latency::SyncLatency;
use crate::prep::Spare;
use crate::{Options, Seq, WriteFailure};

/// Bytes that may wait for the writer before `append` reports `Full`.
pub(crate) const PENDING_LIMIT: u64 = 64 * 1024 * 1024;

/// One segment's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegMeta {
    /// Seq of its first record (its file name).
    pub first: Seq,
    /// Bytes in it, including bytes not yet written.
    pub bytes: u64,
}

/// The memos of a chunk's entries, by seq: entry `first_seq + i` has memo `slots[i]`, and,
/// for entries of multi-entry records, length `lens[i]` (0 where unknown). Appends without
/// memos add no slots (a missing slot reads as no memo), so a queue that never uses memos never
/// allocates for them.
///
/// Why lengths: a reader handing memos out would otherwise walk each entry's length prefix in
/// the chunk's buffer, one cache miss per entry on data written by another core; the lengths
/// here are 4 bytes each, sixteen to a cache line.
#[derive(Debug)]
pub(crate) struct Memos<M> {
    slots: Vec<Option<M>>,
    lens: Vec<u32>,
}

impl<M> Memos<M> {
    pub fn new() -> Self {
        Memos {
            slots: Vec::new(),
            lens: Vec::new(),
        }
    }

    /// Attaches `memos` to the entries from `first` on, in a chunk starting at `base`, with
    /// their lengths `lens` (one per memo, or empty).
    pub fn attach(
        &mut self,
        base: Seq,
        first: Seq,
        memos: impl ExactSizeIterator<Item = M>,
        lens: &[u32],
    ) {
        let n = memos.len();
        if n == 0 {
            return;
        }
        // Chunks are far smaller than the address space: the index fits.
        let at = (first - base) as usize;
        self.slots.resize_with(at, || None);
        self.slots.extend(memos.map(Some));
        if lens.len() == n {
            self.lens.resize(at, 0);
            self.lens.extend_from_slice(lens);
        }
    }

    /// The lengths of the `count` entries from `first` on (in a chunk starting at `base`), if
    /// all were kept (an unknown length reads 0, so a record with an empty entry is walked
    /// instead: slower, never wrong), and a way to take their memos meanwhile.
    pub fn lens_and_memos(
        &mut self,
        base: Seq,
        first: Seq,
        count: usize,
    ) -> (Option<&[u32]>, impl FnMut(Seq) -> Option<M> + '_) {
        let lens = usize::try_from(first.saturating_sub(base))
            .ok()
            .and_then(|at| self.lens.get(at..at.checked_add(count)?))
            .filter(|lens| first >= base && !lens.contains(&0));
        let slots = &mut self.slots;
        let take = move |seq: Seq| {
            let i = usize::try_from(seq.checked_sub(base)?).ok()?;
            slots.get_mut(i)?.take()
        };
        (lens, take)
    }
}

/// Encoded records for one segment, waiting to be written.
#[derive(Debug)]
pub(crate) struct Chunk<M> {
    pub segment: Seq,
    pub offset: u64,
    pub first_seq: Seq,
    pub end_seq: Seq,
    /// Its bytes are `buf[skip..]` (a taken batch's buffer has room in front, see `batch.rs`).
    pub buf: Vec<u8>,
    pub skip: usize,
    /// Where in its bytes a record starts that is aligned for direct I/O in the file and in
    /// memory, to be written from `buf` itself (see `direct.rs`).
    pub direct_from: Option<usize>,
    pub memos: Memos<M>,
    /// When its first record was appended: where its entries' wait for durability starts.
    pub opened: Instant,
}

/// A written chunk kept in memory for readers.
#[derive(Debug)]
pub(crate) struct TailChunk<M> {
    pub segment: Seq,
    pub offset: u64,
    pub first_seq: Seq,
    pub end_seq: Seq,
    pub bytes: Bytes,
    /// Memory `bytes` hold (their buffer's capacity), counted against `read_cache_bytes`.
    pub held: usize,
    /// Taken by the reader (under the read cursor's lock, so uncontended) as it hands entries
    /// out.
    pub memos: Mutex<Memos<M>>,
}

/// What async waiters watch.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Every seq below is handed to the OS.
    pub written: Seq,
    /// Every seq below is durable.
    pub durable: Seq,
    /// Set once, when a write or sync fails.
    pub failed: Option<Arc<WriteFailure>>,
    /// Set once `close()`'s final flush is done (or the writer has stopped).
    pub closed: bool,
}

/// What a `wait_durable` caller is told; a dropped sender means the queue closed first.
pub(crate) type DurableOutcome = Result<(), Arc<WriteFailure>>;

/// The mutable state behind [`Shared::state`].
#[derive(Debug)]
pub(crate) struct State<M> {
    pub next_seq: Seq,
    pub written: Seq,
    /// Every seq below is durable (mirrors `Progress::durable`, but read under this lock so
    /// that registering a waiter cannot race with its release).
    pub durable: Seq,
    /// `wait_durable` callers by seq, released exactly when a sync covers them: a sync wakes
    /// only the waiters it covers, not every waiter.
    pub waiters: BTreeMap<Seq, Vec<oneshot::Sender<DurableOutcome>>>,
    pub pending: Vec<Chunk<M>>,
    pub pending_bytes: u64,
    pub segments: VecDeque<SegMeta>,
    pub disk_bytes: u64,
    pub acks: AckSet,
    pub ckpt_low: Seq,
    /// A segment became deletable: checkpoint now rather than at the interval.
    pub ckpt_urgent: bool,
    /// `append` refused a record because too many bytes wait for the writer: bump the space
    /// epoch when they drain.
    pub space_wanted: bool,
    /// The space epoch when `append` last reported `Full` (`None`: never, or space was freed).
    pub full_epoch: Option<u64>,
    pub close_requested: bool,
    pub shutdown: bool,
    pub crash: bool,
    pub failed: Option<Arc<WriteFailure>>,
    pub tail: VecDeque<Arc<TailChunk<M>>>,
    /// Memory held by `tail` (the sum of its chunks' `held`).
    pub tail_bytes: usize,
    /// What wakes the writer thread, if it is waiting on the condvar.
    pub writer_wait: WriterWait,
    /// Readers waiting for entries to become readable (they have read everything durable).
    pub readers_waiting: usize,
}

/// A reader counted in [`State::readers_waiting`] (see [`Shared::reader_waits`]).
pub(crate) struct ReaderWaiting<'a, M>(&'a Shared<M>);

impl<M> Drop for ReaderWaiting<'_, M> {
    fn drop(&mut self) {
        self.0.state.lock().readers_waiting -= 1;
    }
}

/// What the writer thread waits for on the condvar, as far as appends are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterWait {
    /// It is not waiting (it is writing or syncing) and looks at `pending` before it waits.
    Busy,
    /// It waits for work: any append wakes it.
    Idle,
    /// It gathers appends for the next group commit (see [`Options::sync_gather`]): only what
    /// ends the gathering ([`State::gathering_allowed`]) wakes it before its deadline.
    Gathering,
}

/// Pending bytes that end a group commit's gathering early: a write this large already
/// spreads the cost of its sync thinly, and waiting longer would only add latency.
pub(crate) const GATHER_ENOUGH_BYTES: u64 = 1024 * 1024;

impl<M> State<M> {
    /// Whether the writer may keep gathering pending appends rather than write them now: nobody
    /// waits for them (no `wait_durable` caller, no reader that has read everything durable)
    /// and less than [`GATHER_ENOUGH_BYTES`] of them wait. Gathering trades their wait for
    /// fewer syncs, which is only worth it while nobody is kept waiting by it.
    pub fn gathering_allowed(&self) -> bool {
        self.pending_bytes < GATHER_ENOUGH_BYTES
            && self.waiters.is_empty()
            && self.readers_waiting == 0
    }

    /// Whether the oldest segment holds only acknowledged records and can be deleted once the
    /// checkpoint covers it.
    pub fn front_deletable(&self, low: Seq) -> bool {
        self.segments.get(1).is_some_and(|next| next.first <= low)
    }

    /// Records handed in (or recovered) and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.next_seq
            .saturating_sub(self.acks.low_water())
            .saturating_sub(self.acks.acked_above())
    }
}

/// Where the next read starts: entry `seq`, in the record at `offset` of `segment`, whose first
/// entry is `record_seq` (below `seq` when the last read stopped inside a multi-entry record,
/// equal to it at a record boundary).
#[derive(Debug)]
pub(crate) struct ReadCursor {
    pub seq: Seq,
    pub record_seq: Seq,
    pub segment: Seq,
    pub offset: u64,
    /// The open segment file last read from.
    pub file: Option<(Seq, File)>,
    /// What the last file read left in its window, and the segment it was read from: for the
    /// next read of that segment only (the tail path moves the cursor between segments too).
    pub window: (Seq, crate::segment::Window),
}

/// Counters only ever incremented.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub records_synced: AtomicU64,
    pub bytes_written: AtomicU64,
    pub checkpoints: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub corrupt_bytes: AtomicU64,
    /// Entries handed to readers from segment files, not from the in-memory tail.
    pub file_read_entries: AtomicU64,
    /// The read cursor's seq after the last read (readable without the cursor's lock).
    pub read_seq: AtomicU64,
    /// How long entries waited to become durable, one sample per sync.
    pub sync_latency: SyncLatency,
    /// The same, one sample per entry (see `latency.rs`).
    pub entry_wait: SyncLatency,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Everything the queue handle, readers and writer thread share.
#[derive(Debug)]
pub(crate) struct Shared<M> {
    pub dir: PathBuf,
    pub opts: Options,
    pub state: Mutex<State<M>>,
    pub wake: Condvar,
    pub progress: watch::Sender<Progress>,
    /// Notified when records become readable, and when the queue closes or fails. Kept apart
    /// from `progress` so that a write does not wake every `wait_durable` caller, and a sync
    /// does not wake readers.
    pub readable: watch::Sender<()>,
    /// Epoch bumped whenever space may have been freed.
    pub space: watch::Sender<u64>,
    /// Notified when the read cursor reaches `pace_until` (see `DiskQueue::pace_to_reader`).
    pub reader_moved: tokio::sync::Notify,
    /// The lowest seq an appender pacing to the reader waits for it to reach (`u64::MAX`: none
    /// waits). The reader wakes them then, not at every read: most reads leave it short, and
    /// thousands of connections may be waiting.
    pub pace_until: AtomicU64,
    /// The read cursor's seq when a `pace_to_reader` caller last gave up waiting for it to
    /// move (`u64::MAX`: never): while it stays there the reader is stalled, and nobody waits.
    pub reader_stalled_at: AtomicU64,
    pub reader: Mutex<ReadCursor>,
    /// Chunk buffers recycled from the tail to appenders.
    pub pool: Arc<BufPool>,
    /// The zero-filled spare segment and its preparer's controls.
    pub spare: Spare,
    pub counters: Counters,
    /// Whether segment files are written with `O_DIRECT` (see `direct.rs`): asked for, under
    /// `SyncPolicy::Always`, and the filesystem takes it. Decided once at open.
    pub direct_io: bool,
    /// The device's direct-I/O alignment (512 or 4096) when `direct_io`: large records taken
    /// from their batches start at a multiple of it in the file.
    pub direct_align: usize,
    /// Held for the queue's lifetime: dropping it releases the directory lock.
    pub _lock: File,
}

impl<M> Shared<M> {
    /// Wakes the writer thread if it waits for what an append brings (see [`WriterWait`]).
    pub fn wake_writer(&self, st: &mut State<M>) {
        let wake = match st.writer_wait {
            WriterWait::Busy => false,
            WriterWait::Idle => true,
            WriterWait::Gathering => !st.gathering_allowed(),
        };
        if wake {
            st.writer_wait = WriterWait::Busy;
            self.wake.notify_one();
        }
    }

    /// Releases every `wait_durable` caller with a seq below `durable`.
    pub fn release_durable(&self, durable: Seq) {
        let ready = {
            let mut st = self.state.lock();
            st.durable = st.durable.max(durable);
            let later = st.waiters.split_off(&durable);
            std::mem::replace(&mut st.waiters, later)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(Ok(()));
        }
    }

    /// Fails every waiting `wait_durable` caller (`None`: the queue closed; they get `Closed`).
    pub fn fail_waiters(&self, failure: Option<Arc<WriteFailure>>) {
        let all = std::mem::take(&mut self.state.lock().waiters);
        if let Some(f) = failure {
            for tx in all.into_values().flatten() {
                let _ = tx.send(Err(f.clone()));
            }
        }
    }

    /// Wakes readers waiting in `read_batch`.
    pub fn notify_readers(&self) {
        self.readable.send_modify(|_| {});
    }

    /// Counts a reader as waiting for readable entries until the guard drops, and wakes a
    /// gathering writer: what it gathers is what the reader waits for.
    pub fn reader_waits(&self) -> ReaderWaiting<'_, M> {
        let mut st = self.state.lock();
        st.readers_waiting += 1;
        if st.writer_wait == WriterWait::Gathering {
            self.wake_writer(&mut st);
        }
        ReaderWaiting(self)
    }

    /// Tells `wait_space` callers that space may have been freed.
    pub fn bump_space(&self) {
        self.space.send_modify(|e| *e = e.wrapping_add(1));
    }
}
