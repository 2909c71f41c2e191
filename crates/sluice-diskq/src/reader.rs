//! Handing entries out in order: from the in-memory tail when the reader keeps up, from the
//! segment files otherwise.
//!
//! The [`ReadCursor`] (behind its own mutex, so concurrent readers get disjoint batches) holds
//! the next seq and the exact file position of the record holding it. Invariants:
//!
//! - Only visible entries are handed out, each once: durable ones (below the *durable*
//!   watermark), or with `Options::read_before_durable` written ones (below *written*).
//! - A read may stop inside a multi-entry record: the cursor then stays on that record
//!   (`offset`, `record_seq`) with `seq` on the next entry, and the next read skips the entries
//!   before it.
//! - The tail path is zero-copy (entries are slices of the written batch) and hands back the
//!   memos attached at append, moving them out of the chunk; the file path reads through the
//!   scanner's window and copies each record's payload once, slicing its entries from the copy
//!   (no memos), so memory is bounded by the batch asked for (plus one record).
//! - A tail chunk the reader has read wholly leaves the tail at its next read: the cursor never
//!   goes back, so the tail holds only what is still to be read.
//! - Entries lost to corruption found while reading are skipped, treated as acknowledged, and
//!   counted unless recovery already counted them (i.e. already acknowledged them).
//!
//! File reads are synchronous `pread`s of bounded size made while holding the cursor, short
//! enough not to stall an async runtime thread noticeably.

use std::fs::File;
use std::ops::Range;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::record::{ENTRY_PREFIX_LEN, Entries, HEADER_LEN, read_header};
use crate::segment::{self, Item, Scanner};
use crate::state::{Counters, ReadCursor, Shared, TailChunk};
use crate::{Error, Seq};

/// Bytes read from a segment file at a time. Records are often a whole socket read (64 KiB),
/// so a window of that size held one at most and read most twice (its header, then all of it).
const READ_WINDOW: usize = 256 * 1024;

/// One entry handed out by [`crate::DiskQueue::read_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<M> {
    /// Its sequence number, to acknowledge it with.
    pub seq: Seq,
    /// Its bytes, as appended.
    pub bytes: Bytes,
    /// The memo attached at append, if the entry was served from the in-memory tail (never
    /// after a reopen, nor once its data left the tail).
    pub memo: Option<M>,
}

/// One entry handed out by [`crate::DiskQueue::read_memos`]: its memo if it has one, else
/// its bytes. An entry with a memo is not sliced out of the written data at all: a reader
/// that only wants the memo saves the reference count's two atomic operations per entry (2 %
/// of the relay's CPU in S2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoOr<M> {
    /// Served from the in-memory tail, with the memo attached at append.
    Memo {
        seq: Seq,
        /// The entry's length in bytes.
        len: usize,
        memo: M,
    },
    /// Without a memo (read from a file, or appended without one): the entry's bytes.
    Bytes { seq: Seq, bytes: Bytes },
}

impl<M> MemoOr<M> {
    /// The entry's sequence number, to acknowledge it with.
    pub fn seq(&self) -> Seq {
        match self {
            MemoOr::Memo { seq, .. } | MemoOr::Bytes { seq, .. } => *seq,
        }
    }

    /// The entry's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            MemoOr::Memo { len, .. } => *len,
            MemoOr::Bytes { bytes, .. } => bytes.len(),
        }
    }

    /// Whether the entry is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a read hands out per entry: an [`Entry`] with its memo, a [`MemoOr`], or a bare
/// `(seq, bytes)` pair (for `read_batch`, which so never looks a memo up). The entry's bytes
/// are sliced only when asked for.
pub(crate) trait Handout<M> {
    fn make(
        seq: Seq,
        len: usize,
        bytes: impl FnOnce() -> Bytes,
        memo: impl FnOnce() -> Option<M>,
    ) -> Self;
}

impl<M> Handout<M> for Entry<M> {
    fn make(
        seq: Seq,
        _len: usize,
        bytes: impl FnOnce() -> Bytes,
        memo: impl FnOnce() -> Option<M>,
    ) -> Self {
        Entry {
            seq,
            bytes: bytes(),
            memo: memo(),
        }
    }
}

impl<M> Handout<M> for MemoOr<M> {
    fn make(
        seq: Seq,
        len: usize,
        bytes: impl FnOnce() -> Bytes,
        memo: impl FnOnce() -> Option<M>,
    ) -> Self {
        match memo() {
            Some(memo) => MemoOr::Memo { seq, len, memo },
            None => MemoOr::Bytes {
                seq,
                bytes: bytes(),
            },
        }
    }
}

impl<M> Handout<M> for (Seq, Bytes) {
    fn make(
        seq: Seq,
        _len: usize,
        bytes: impl FnOnce() -> Bytes,
        _memo: impl FnOnce() -> Option<M>,
    ) -> Self {
        (seq, bytes())
    }
}

/// The entries gathered by one read, and its limits.
struct Batch<T> {
    out: Vec<T>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<T> Batch<T> {
    fn full(&self) -> bool {
        self.out.len() >= self.max_entries || (self.bytes >= self.max_bytes && !self.out.is_empty())
    }

    fn push<M>(
        &mut self,
        seq: Seq,
        len: usize,
        bytes: impl FnOnce() -> Bytes,
        memo: impl FnOnce() -> Option<M>,
    ) where
        T: Handout<M>,
    {
        self.bytes += len;
        self.out.push(T::make(seq, len, bytes, memo));
    }
}

/// Returns `Some(entries)` (empty only when closed and drained) or `None` if nothing is
/// available yet.
pub(crate) fn try_read<M, T: Handout<M>>(
    sh: &Shared<M>,
    max_entries: usize,
    max_bytes: usize,
) -> Result<Option<Vec<T>>, Error> {
    let mut cur = sh.reader.lock();
    let mut batch = Batch {
        out: Vec::new(),
        bytes: 0,
        max_entries,
        max_bytes,
    };
    // Appenders pacing to the reader wait for it to reach `pace_until`: wake them then.
    let moved = |seq: Seq| {
        if seq >= sh.pace_until.load(Ordering::SeqCst) {
            sh.pace_until.store(u64::MAX, Ordering::SeqCst);
            sh.reader_moved.notify_waiters();
        }
    };
    // Tail chunks this read finished with, dropped at the end, outside the queue's lock.
    let mut read_out = Vec::new();
    loop {
        sh.counters.read_seq.store(cur.seq, Ordering::SeqCst);
        if batch.full() {
            moved(cur.seq);
            return Ok(Some(batch.out));
        }
        let (visible, chunk) = {
            let mut st = sh.state.lock();
            // Chunks wholly read are of no use any more (the cursor never goes back). Freed
            // now rather than when newer writes push them out, so the tail holds only what
            // the reader has yet to take, and memory falls back once it has caught up.
            while let Some(front) = st.tail.front()
                && front.end_seq <= cur.seq
                && let Some(done) = st.tail.pop_front()
            {
                st.tail_bytes -= done.held;
                read_out.push(done);
            }
            let visible = if sh.opts.read_before_durable {
                st.written
            } else {
                st.durable.min(st.written)
            };
            if cur.seq >= visible {
                moved(cur.seq);
                let closed = sh.progress.borrow().closed;
                return Ok(if !batch.out.is_empty() || closed {
                    Some(batch.out)
                } else {
                    None
                });
            }
            let i = st.tail.partition_point(|c| c.end_seq <= cur.seq);
            let chunk = st.tail.get(i).filter(|c| c.first_seq <= cur.seq).cloned();
            (visible, chunk)
        };
        let before = cur.seq;
        if let Some(chunk) = chunk {
            take_from_chunk(&mut cur, &chunk, &mut batch, visible);
        }
        if cur.seq == before {
            let had = batch.out.len();
            read_from_file(sh, &mut cur, &mut batch, visible)?;
            Counters::add(
                &sh.counters.file_read_entries,
                (batch.out.len() - had) as u64,
            );
        }
    }
}

/// A record's payload within a buffer, and what its header says.
struct RecordView<'a> {
    bytes: &'a Bytes,
    payload: Range<usize>,
    /// Whether it is flagged (a count and length-prefixed entries).
    multi: bool,
    /// The seq of its first entry.
    first: Seq,
    /// Its entries' lengths, when kept in memory with their memos (flagged records only).
    lens: Option<&'a [u32]>,
}

/// The entries of a record payload as ranges into it: walked through their length prefixes,
/// or laid out from lengths known in advance, which reads nothing from the payload.
enum EntryRanges<'a> {
    Walk(Entries<'a>),
    Known {
        lens: std::slice::Iter<'a, u32>,
        pos: usize,
        payload_len: usize,
    },
}

impl<'a> EntryRanges<'a> {
    fn new(payload: &'a [u8], multi: bool, lens: Option<&'a [u32]>) -> Self {
        match lens {
            Some(lens) if multi => EntryRanges::Known {
                lens: lens.iter(),
                // After the entry count.
                pos: ENTRY_PREFIX_LEN,
                payload_len: payload.len(),
            },
            _ => EntryRanges::Walk(Entries::new(payload, multi)),
        }
    }
}

impl Iterator for EntryRanges<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        match self {
            EntryRanges::Walk(entries) => entries.next(),
            EntryRanges::Known {
                lens,
                pos,
                payload_len,
            } => {
                let start = *pos + ENTRY_PREFIX_LEN;
                let end = start.checked_add(*lens.next()? as usize)?;
                // Lengths kept at append describe the bytes written; this never stops early.
                (end <= *payload_len).then(|| {
                    *pos = end;
                    start..end
                })
            }
        }
    }
}

/// Hands out the entries of one record from `next` (the cursor's seq, advanced past each entry
/// taken) on, while the batch has room and they are visible. Returns whether it got past the
/// record's last entry; the caller moves the cursor's position accordingly.
fn take_entries<M, T: Handout<M>>(
    next: &mut Seq,
    rec: RecordView<'_>,
    batch: &mut Batch<T>,
    visible: Seq,
    mut memo: impl FnMut(Seq) -> Option<M>,
) -> bool {
    let base = rec.payload.start;
    let payload = rec.bytes.get(rec.payload).unwrap_or_default();
    for (i, range) in EntryRanges::new(payload, rec.multi, rec.lens).enumerate() {
        let seq = rec.first + i as u64;
        if seq < *next {
            continue;
        }
        if batch.full() || seq >= visible {
            return false;
        }
        let len = range.len();
        let bytes = || rec.bytes.slice(base + range.start..base + range.end);
        batch.push(seq, len, bytes, || memo(seq));
        *next = seq + 1;
    }
    true
}

/// Hands out entries from a written batch kept in memory. Makes no progress if the cursor's
/// position does not line up with the chunk (the file path then takes over).
fn take_from_chunk<M, T: Handout<M>>(
    cur: &mut ReadCursor,
    chunk: &TailChunk<M>,
    batch: &mut Batch<T>,
    visible: Seq,
) {
    let rel = if chunk.segment == cur.segment && cur.offset >= chunk.offset {
        cur.offset - chunk.offset
    } else if cur.seq == chunk.first_seq {
        0
    } else {
        return;
    };
    let mut pos = rel as usize;
    // Entries are handed out once: their memos are moved out, not cloned.
    let mut memos = chunk.memos.lock();
    while !batch.full() && cur.seq < visible {
        let Some(h) = chunk.bytes.get(pos..).and_then(read_header) else {
            return;
        };
        let end = pos + HEADER_LEN + h.len as usize;
        if end > chunk.bytes.len() {
            return;
        }
        if h.pad {
            // Padding in front of an aligned record (see `record.rs`): nothing to hand out.
            pos = end;
            continue;
        }
        let payload = pos + HEADER_LEN..end;
        let body = chunk.bytes.get(payload.clone()).unwrap_or_default();
        let count = u64::from(Entries::new(body, h.multi).remaining());
        // The record must hold the cursor's seq.
        if h.seq > cur.seq || h.seq + count <= cur.seq {
            return;
        }
        cur.segment = chunk.segment;
        cur.offset = chunk.offset + pos as u64;
        cur.record_seq = h.seq;
        let (lens, memo) = memos.lens_and_memos(chunk.first_seq, h.seq, count as usize);
        let rec = RecordView {
            bytes: &chunk.bytes,
            payload,
            multi: h.multi,
            first: h.seq,
            lens: lens.filter(|_| h.multi),
        };
        if !take_entries(&mut cur.seq, rec, batch, visible, memo) {
            return;
        }
        cur.offset = chunk.offset + end as u64;
        cur.record_seq = cur.seq;
        pos = end;
    }
}

/// Marks `[from, to)` as lost to corruption found while reading.
fn lose<M>(sh: &Shared<M>, from: Seq, to: Seq, bytes: u64) {
    let newly = sh.state.lock().acks.insert_range(from, to);
    if newly > 0 {
        tracing::warn!(
            from,
            to,
            bytes,
            "Skipping records lost to corruption in the disk queue."
        );
        Counters::add(&sh.counters.corrupt_records, newly);
        Counters::add(&sh.counters.corrupt_bytes, bytes);
    }
}

/// The segment to read after `current`, if any.
fn next_segment<M>(sh: &Shared<M>, current: Seq) -> Option<Seq> {
    let st = sh.state.lock();
    st.segments
        .iter()
        .map(|s| s.first)
        .find(|&first| first > current)
}

/// Moves the cursor to the start of segment `first`.
fn enter_segment(cur: &mut ReadCursor, first: Seq) {
    cur.segment = first;
    cur.offset = 0;
    cur.record_seq = cur.seq;
    cur.file = None;
}

/// Reads entries at the cursor from its segment file, moving on to later segments as needed.
/// Returns after making progress (or determining that the rest of the data is lost).
fn read_from_file<M, T: Handout<M>>(
    sh: &Shared<M>,
    cur: &mut ReadCursor,
    batch: &mut Batch<T>,
    written: Seq,
) -> Result<(), Error> {
    // The cursor's segment may have been deleted (everything in it acknowledged).
    let known = sh
        .state
        .lock()
        .segments
        .iter()
        .any(|s| s.first == cur.segment);
    if !known {
        match next_segment(sh, cur.segment) {
            Some(next) => enter_segment(cur, next),
            None => {
                lose(sh, cur.seq, written, 0);
                cur.seq = written;
                cur.record_seq = written;
                return Ok(());
            }
        }
    }
    let path = segment::segment_path(&sh.dir, cur.segment);
    if cur.file.as_ref().is_none_or(|(s, _)| *s != cur.segment) {
        cur.file = match File::open(&path) {
            Ok(f) => Some((cur.segment, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("open", &path, None, e)),
        };
    }
    let mut carry = 0u64;
    if let Some((_, file)) = cur.file.as_ref() {
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, None, e))?
            .len();
        let (read_from, window) = std::mem::take(&mut cur.window);
        let window = if read_from == cur.segment {
            window
        } else {
            window.forget()
        };
        let (offset, record_seq) = (cur.offset, cur.record_seq);
        let mut sc = Scanner::resume(
            file,
            &path,
            file_len,
            offset,
            record_seq,
            window,
            READ_WINDOW,
        );
        // Whether the segment holds nothing more below `written`.
        let exhausted = loop {
            // Stop before anything not yet fully written: the writer may be mid-write past it.
            if batch.full() || cur.seq >= written {
                break false;
            }
            match sc.next_item()? {
                Item::Record {
                    seq,
                    offset,
                    len,
                    entries,
                } => {
                    if seq >= written {
                        break false;
                    }
                    if seq > cur.seq {
                        lose(sh, cur.seq, seq, carry);
                        cur.seq = seq;
                    }
                    carry = 0;
                    cur.offset = offset;
                    cur.record_seq = seq;
                    let end_seq = seq + u64::from(entries);
                    if end_seq > cur.seq {
                        let payload = Bytes::copy_from_slice(sc.payload());
                        let rec = RecordView {
                            bytes: &payload,
                            payload: 0..payload.len(),
                            multi: entries > 1,
                            first: seq,
                            lens: None,
                        };
                        if !take_entries(&mut cur.seq, rec, batch, written, |_| None) {
                            break false;
                        }
                    }
                    cur.seq = cur.seq.max(end_seq);
                    cur.offset = offset + len;
                    cur.record_seq = end_seq;
                }
                Item::Corrupt { bytes, .. } => carry += bytes,
                Item::Tail { bytes, .. } => {
                    carry += bytes;
                    break true;
                }
                // The segment's live end: the zeros after it are preallocated space.
                Item::Unused { .. } | Item::End => break true,
            }
        };
        cur.window = (cur.segment, sc.into_window());
        if !exhausted {
            return Ok(());
        }
    }
    // This segment is exhausted below `written`: the rest lies in later segments. Lost seqs
    // (and their count) show up as a gap before the next segment's first record.
    match next_segment(sh, cur.segment) {
        Some(next) => enter_segment(cur, next),
        None => {
            lose(sh, cur.seq, written, carry);
            cur.seq = written;
            cur.record_seq = written;
        }
    }
    Ok(())
}
