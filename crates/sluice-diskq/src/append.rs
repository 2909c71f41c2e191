//! Appending: how entries get into the pending write of the active segment.
//!
//! Every append — one entry, one entry with a memo, or a whole [`RecordBatch`] — becomes one
//! record. Its payload checksum is computed before the queue's lock is taken; under the lock
//! the append only reserves sequence numbers and bytes (rolling the active segment over if the
//! record would not fit), combines the checksum with the seq, and copies the record into the
//! pending chunk with one `memcpy` — or, for a large batch handed over
//! ([`DiskQueue::append_batch_taking`]), writes its header into the room the batch kept for it
//! and queues the batch's buffer as a chunk of its own: nothing is copied, and the lock is held
//! for a fixed time whatever the batch's size. With direct I/O such a record is placed at the
//! next block boundary of the segment, the gap filled with a padding record written into the
//! room the batch kept in front of it, so the writer sends it to the device from that buffer
//! (see `direct.rs`). Invariants:
//!
//! - An append is all or nothing: the record is either buffered whole, with every entry
//!   numbered contiguously, or refused with nothing buffered.
//! - Bytes on disk never pass `max_bytes`, and pending bytes never pass the pending limit
//!   (beyond the first record), so a refused append costs no memory.
//! - Memos are attached to their entries in the pending chunk and travel with it to the tail.
//! - A new pending chunk starts from a recycled, generously sized buffer (see `bufpool.rs`), so
//!   copying records in rarely allocates.

use std::ops::Range;
use std::time::Instant;

use parking_lot::MutexGuard;

use crate::batch::FRONT;
use crate::record::{HEADER_LEN, Prepared, encoded_len};
use crate::state::{Chunk, Memos, PENDING_LIMIT, SegMeta, Shared, State};
use crate::{AppendError, DiskQueue, RecordBatch, Seq};

/// A batch whose payload is at least this large is taken as its own chunk by
/// [`DiskQueue::append_batch_taking`]; a smaller one is cheaper to copy into the shared chunk
/// than to give a buffer of its own (which the tail would then copy out of: see `bufpool.rs`).
#[cfg(not(test))]
const TAKE_AT_LEAST: usize = 8 * 1024;
/// Tests' records are small: they take most batches, so the model test covers both paths.
#[cfg(test)]
const TAKE_AT_LEAST: usize = 64;

/// Where a record was placed: its segment, its offset there (that of the padding in front of
/// it, if any), the padding's length, and its entries' seqs.
struct Placed {
    segment: Seq,
    offset: u64,
    pad: u64,
    seqs: Range<Seq>,
}

impl<M: Clone + Send + Sync + 'static> DiskQueue<M> {
    /// Appends one entry without waiting for durability, returning its sequence number.
    ///
    /// Errors: [`AppendError::Full`] (max_bytes reached: the caller applies its policy),
    /// [`AppendError::TooLarge`], [`AppendError::Io`] (a previous write or sync failed: the
    /// queue is poisoned for writes until reopened), [`AppendError::Closed`].
    pub fn append(&self, record: &[u8]) -> Result<Seq, AppendError> {
        self.append_prepared(Prepared::single(record), std::iter::empty(), &[])
            .map(|seqs| seqs.start)
    }

    /// Like [`DiskQueue::append`], attaching `memo` to the entry (see [`DiskQueue::append_batch`]).
    pub fn append_with_memo(&self, record: &[u8], memo: M) -> Result<Seq, AppendError> {
        self.append_prepared(Prepared::single(record), std::iter::once(memo), &[])
            .map(|seqs| seqs.start)
    }

    /// Appends every entry of `batch` as one record, under one lock and with one checksum,
    /// returning their sequence numbers (contiguous, in batch order). A batch of one entry is
    /// written as a plain record; an empty batch appends nothing and returns an empty range.
    ///
    /// `memos` is empty (no memos) or holds one memo per entry, in order (any other length is
    /// a bug in the caller and is treated as empty). A memo is kept in memory with its entry
    /// and handed back (moved, not cloned) by [`DiskQueue::read_entries`] if the entry is read
    /// from the in-memory tail; it is never written, and if not read first it is dropped when
    /// its data leaves the tail (`read_cache_bytes`) or the queue is reopened.
    ///
    /// Errors are those of [`DiskQueue::append`], for the batch as a whole: `TooLarge` compares
    /// [`RecordBatch::payload_bytes`] with `max_record_bytes`, and on `Full` nothing is
    /// appended.
    pub fn append_batch(
        &self,
        batch: &RecordBatch,
        memos: Vec<M>,
    ) -> Result<Range<Seq>, AppendError> {
        let Some(record) = batch.prepare() else {
            let next = self.shared().state.lock().next_seq;
            return Ok(next..next);
        };
        let memos = checked_memos(batch, memos);
        let lens = if memos.is_empty() {
            &[][..]
        } else {
            batch.lens()
        };
        self.append_prepared(record, memos.into_iter(), lens)
    }

    /// Like [`DiskQueue::append_batch`], but a batch of 8 KiB of payload or more is not
    /// copied: its buffer becomes the record (the batch gets a recycled buffer in exchange).
    /// On success the batch is left empty, ready for reuse; on error it is left as it was.
    pub fn append_batch_taking(
        &self,
        batch: &mut RecordBatch,
        memos: Vec<M>,
    ) -> Result<Range<Seq>, AppendError> {
        let sealed = match batch.seal() {
            Some(sealed) if sealed.payload_len >= TAKE_AT_LEAST => sealed,
            _ => {
                let seqs = self.append_batch(batch, memos)?;
                batch.clear();
                return Ok(seqs);
            }
        };
        let sh = self.shared();
        check_size(sh, sealed.payload_len)?;
        // With direct I/O the record is placed at an aligned offset, to be written from its
        // own buffer: that needs it at an aligned address too.
        let align = sh.direct_io.then_some(sh.direct_align as u64);
        if align.is_some() {
            batch.realign();
        }
        // Memos are kept by their index in the chunk, which starts with this record.
        let memos = checked_memos(batch, memos);
        let mut chunk_memos = Memos::new();
        if !memos.is_empty() {
            chunk_memos.attach(0, 0, memos.into_iter(), batch.lens());
        }
        let replacement = sh.pool.take(batch.capacity().max(FRONT));
        let rec_len = encoded_len(sealed.payload_len) as u64;
        let mut st = sh.state.lock();
        let placed = match reserve(sh, &mut st, rec_len, u64::from(sealed.entries), align) {
            Ok(placed) => placed,
            Err(e) => {
                drop(st);
                sh.pool.put(replacement);
                return Err(e);
            }
        };
        // A pad is at most PAD_ROOM bytes (see `reserve`).
        let pad = placed.pad as usize;
        let (buf, skip) = batch.take_record(&sealed, placed.seqs.start, pad, replacement);
        st.pending.push(Chunk {
            segment: placed.segment,
            offset: placed.offset,
            first_seq: placed.seqs.start,
            end_seq: placed.seqs.end,
            buf,
            skip,
            direct_from: align.map(|_| pad),
            memos: chunk_memos,
            opened: Instant::now(),
        });
        sh.wake_writer(&mut st);
        Ok(placed.seqs)
    }

    /// Reserves seqs and bytes for `record` and copies it into the pending chunk. `lens` are
    /// the entries' lengths, kept with their memos (empty: none kept).
    fn append_prepared(
        &self,
        record: Prepared<'_>,
        memos: impl ExactSizeIterator<Item = M>,
        lens: &[u32],
    ) -> Result<Range<Seq>, AppendError> {
        let sh = self.shared();
        let payload_len = record.payload_len();
        check_size(sh, payload_len)?;
        let rec_len = encoded_len(payload_len) as u64;
        let mut st = sh.state.lock();
        let Placed {
            segment,
            offset,
            seqs,
            ..
        } = reserve(sh, &mut st, rec_len, u64::from(record.entries()), None)?;
        match st.pending.last_mut() {
            Some(c) if c.segment == segment => {
                record.encode_into(&mut c.buf, seqs.start);
                c.memos.attach(c.first_seq, seqs.start, memos, lens);
                c.end_seq = seqs.end;
            }
            _ => {
                // Chunks are far smaller than the address space: the length fits.
                let mut buf = sh.pool.take(rec_len as usize);
                record.encode_into(&mut buf, seqs.start);
                let mut chunk_memos = Memos::new();
                chunk_memos.attach(seqs.start, seqs.start, memos, lens);
                st.pending.push(Chunk {
                    segment,
                    offset,
                    first_seq: seqs.start,
                    end_seq: seqs.end,
                    buf,
                    skip: 0,
                    direct_from: None,
                    memos: chunk_memos,
                    opened: Instant::now(),
                });
            }
        }
        sh.wake_writer(&mut st);
        Ok(seqs)
    }
}

/// `memos` if it holds one memo per entry of `batch`, else none (any other length than 0 is a
/// bug in the caller).
fn checked_memos<M>(batch: &RecordBatch, mut memos: Vec<M>) -> Vec<M> {
    if !memos.is_empty() && memos.len() != batch.len() {
        debug_assert!(
            false,
            "append_batch: expected 0 or {} memos, found {}",
            batch.len(),
            memos.len()
        );
        memos.clear();
    }
    memos
}

/// `TooLarge` if a payload of `payload_len` bytes exceeds `max_record_bytes`.
fn check_size<M>(sh: &Shared<M>, payload_len: usize) -> Result<(), AppendError> {
    let max = sh.opts.max_record_bytes;
    if payload_len > max as usize {
        return Err(AppendError::TooLarge {
            len: payload_len,
            max,
        });
    }
    Ok(())
}

/// Under the queue's lock: reserves `entries` seqs and `rec_len` bytes of the active segment
/// for one record (rolling the segment over if it would not fit), or says why not. With
/// `align`, the record is to start at a multiple of it, behind a padding record (at least a
/// header long, so at most `align + HEADER_LEN - 1` bytes) whose bytes are reserved with it.
fn reserve<M>(
    sh: &Shared<M>,
    st: &mut MutexGuard<'_, State<M>>,
    rec_len: u64,
    entries: u64,
    align: Option<u64>,
) -> Result<Placed, AppendError> {
    if st.close_requested || st.shutdown {
        return Err(AppendError::Closed);
    }
    if let Some(f) = &st.failed {
        return Err(AppendError::Io(f.clone()));
    }
    let pad_at = |offset: u64| match align {
        Some(a) if !offset.is_multiple_of(a) => {
            let gap = a - offset % a;
            if gap < HEADER_LEN as u64 {
                gap + a
            } else {
                gap
            }
        }
        _ => 0,
    };
    let max_bytes = sh.opts.max_bytes;
    let next_seq = st.next_seq;
    let all_acked = st.acks.low_water() >= next_seq;
    let active = st.segments.back().copied().unwrap_or(SegMeta {
        first: next_seq,
        bytes: 0,
    });
    let need = pad_at(active.bytes) + rec_len;
    let over = st.disk_bytes + need > max_bytes;
    if st.segments.is_empty()
        || active.bytes > 0 && (active.bytes + need > sh.opts.segment_bytes || all_acked && over)
    {
        // Roll over. When everything is acknowledged this also lets the old active segment
        // be deleted, which is the only way to free space in a queue of one segment.
        st.segments.push_back(SegMeta {
            first: next_seq,
            bytes: 0,
        });
        if all_acked && over {
            st.ckpt_urgent = true;
            sh.wake_writer(st);
        }
    }
    let Some(seg) = st.segments.back() else {
        unreachable!("segments is never empty: a segment was pushed above if it was");
    };
    let (segment, offset) = (seg.first, seg.bytes);
    let pad = pad_at(offset);
    let total = pad + rec_len;
    let over = st.disk_bytes + total > max_bytes;
    let backlog = st.pending_bytes > 0 && st.pending_bytes + total > PENDING_LIMIT;
    if over || backlog {
        st.space_wanted |= backlog;
        st.full_epoch = Some(*sh.space.borrow());
        return Err(AppendError::Full {
            bytes: st.disk_bytes,
            record_bytes: total,
            max_bytes,
        });
    }
    let end_seq = next_seq + entries;
    st.next_seq = end_seq;
    st.disk_bytes += total;
    st.pending_bytes += total;
    if let Some(seg) = st.segments.back_mut() {
        seg.bytes += total;
    }
    Ok(Placed {
        segment,
        offset,
        pad,
        seqs: next_seq..end_seq,
    })
}
