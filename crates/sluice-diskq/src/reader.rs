//! Handing records out in order: from the in-memory tail when the reader keeps up, from the
//! segment files otherwise.
//!
//! The [`ReadCursor`] (behind its own mutex, so concurrent readers get disjoint batches) holds
//! the next seq and its exact file position. Invariants:
//!
//! - Only visible records are handed out, each once: durable ones (below the *durable*
//!   watermark), or with `Options::read_before_durable` written ones (below *written*).
//! - The tail path is zero-copy (payloads are slices of the written batch); the file path reads
//!   through the scanner's 64 KiB window, so memory is bounded by the batch asked for.
//! - Records lost to corruption found while reading are skipped, treated as acknowledged, and
//!   counted unless recovery already counted them (i.e. already acknowledged them).
//!
//! File reads are synchronous `pread`s of bounded size made while holding the cursor, short
//! enough not to stall an async runtime thread noticeably.

use std::fs::File;

use bytes::Bytes;

use crate::record::{HEADER_LEN, read_header};
use crate::segment::{self, Item, Scanner};
use crate::state::{Counters, ReadCursor, Shared, TailChunk};
use crate::{Error, Seq};

struct Limits {
    max_records: usize,
    max_bytes: usize,
}

struct Batch {
    out: Vec<(Seq, Bytes)>,
    bytes: usize,
}

impl Batch {
    fn full(&self, l: &Limits) -> bool {
        self.out.len() >= l.max_records || (self.bytes >= l.max_bytes && !self.out.is_empty())
    }

    fn push(&mut self, seq: Seq, payload: Bytes) {
        self.bytes += payload.len();
        self.out.push((seq, payload));
    }
}

/// Returns `Some(records)` (empty only when closed and drained) or `None` if nothing is
/// available yet.
pub(crate) fn try_read(
    sh: &Shared,
    max_records: usize,
    max_bytes: usize,
) -> Result<Option<Vec<(Seq, Bytes)>>, Error> {
    let limits = Limits {
        max_records,
        max_bytes,
    };
    let mut cur = sh.reader.lock();
    let mut batch = Batch {
        out: Vec::new(),
        bytes: 0,
    };
    loop {
        if batch.full(&limits) {
            return Ok(Some(batch.out));
        }
        let (visible, chunk) = {
            let st = sh.state.lock();
            let visible = if sh.opts.read_before_durable {
                st.written
            } else {
                st.durable.min(st.written)
            };
            if cur.seq >= visible {
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
            take_from_chunk(&mut cur, &chunk, &mut batch, &limits, visible);
        }
        if cur.seq == before {
            read_from_file(sh, &mut cur, &mut batch, &limits, visible)?;
        }
    }
}

/// Hands out records from a written batch kept in memory. Makes no progress if the cursor's
/// position does not line up with the chunk (the file path then takes over).
fn take_from_chunk(
    cur: &mut ReadCursor,
    chunk: &TailChunk,
    batch: &mut Batch,
    limits: &Limits,
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
    while !batch.full(limits) && cur.seq < visible {
        let Some(h) = chunk.bytes.get(pos..).and_then(read_header) else {
            return;
        };
        let end = pos + HEADER_LEN + h.len as usize;
        if end > chunk.bytes.len() || h.seq != cur.seq {
            return;
        }
        batch.push(h.seq, chunk.bytes.slice(pos + HEADER_LEN..end));
        cur.seq = h.seq + 1;
        cur.segment = chunk.segment;
        cur.offset = chunk.offset + end as u64;
        pos = end;
    }
}

/// Marks `[from, to)` as lost to corruption found while reading.
fn lose(sh: &Shared, from: Seq, to: Seq, bytes: u64) {
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
fn next_segment(sh: &Shared, current: Seq) -> Option<Seq> {
    let st = sh.state.lock();
    st.segments
        .iter()
        .map(|s| s.first)
        .find(|&first| first > current)
}

/// Reads records at the cursor from its segment file, moving on to later segments as needed.
/// Returns after making progress (or determining that the rest of the data is lost).
fn read_from_file(
    sh: &Shared,
    cur: &mut ReadCursor,
    batch: &mut Batch,
    limits: &Limits,
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
            Some(next) => {
                cur.segment = next;
                cur.offset = 0;
                cur.file = None;
            }
            None => {
                lose(sh, cur.seq, written, 0);
                cur.seq = written;
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
        let mut sc = Scanner::new(file, &path, file_len, cur.offset, cur.seq);
        loop {
            // Stop before anything not yet fully written: the writer may be mid-write past it.
            if batch.full(limits) || cur.seq >= written {
                return Ok(());
            }
            match sc.next_item()? {
                Item::Record { seq, offset, len } => {
                    if seq >= written {
                        return Ok(());
                    }
                    if seq > cur.seq {
                        lose(sh, cur.seq, seq, carry);
                    }
                    carry = 0;
                    batch.push(seq, Bytes::copy_from_slice(sc.payload()));
                    cur.seq = seq + 1;
                    cur.offset = offset + len;
                }
                Item::Corrupt { bytes, .. } => carry += bytes,
                Item::Tail { bytes, .. } => {
                    carry += bytes;
                    break;
                }
                Item::End => break,
            }
        }
    }
    // This segment is exhausted below `written`: the rest lies in later segments. Lost seqs
    // (and their count) show up as a gap before the next segment's first record.
    match next_segment(sh, cur.segment) {
        Some(next) => {
            cur.segment = next;
            cur.offset = 0;
            cur.file = None;
        }
        None => {
            lose(sh, cur.seq, written, carry);
            cur.seq = written;
        }
    }
    Ok(())
}
