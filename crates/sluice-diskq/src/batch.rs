//! [`RecordBatch`]: many entries gathered by the appender, written as one record.
//!
//! The batch owns a buffer laid out exactly as the body of a flagged record's payload —
//! `u32 LE len | bytes` per entry, back to back — so that `DiskQueue::append_batch` copies it
//! into the pending write with one `memcpy`, putting only the 16-byte header and the 4-byte
//! entry count in front (see [`crate::record`]). A batch of one entry is written as a plain,
//! unflagged record: its length prefix is skipped.
//!
//! Invariant: `buf` holds exactly `count` well-formed length-prefixed entries. The batch is
//! meant to be reused: `clear()` keeps the allocation.

use crate::record::{ENTRY_PREFIX_LEN, Prepared};

/// A reusable builder of a multi-entry record. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct RecordBatch {
    buf: Vec<u8>,
    count: u32,
    /// Each entry's length, in order: kept with the entries' memos so that a reader taking
    /// them from memory finds each entry without reading its length prefix (see `reader.rs`).
    lens: Vec<u32>,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes every entry, keeping the buffer's allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.lens.clear();
    }

    /// Adds one entry.
    pub fn push(&mut self, entry: &[u8]) {
        self.push_with(|buf| buf.extend_from_slice(entry));
    }

    /// Adds one entry that `f` encodes by appending to the buffer it is given (which holds the
    /// earlier entries: `f` must only append). Saves encoding into a buffer of one's own and
    /// copying it.
    ///
    /// # Panics
    ///
    /// If `f` shortens the buffer (a bug in the caller, not a data error).
    pub fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; ENTRY_PREFIX_LEN]);
        f(&mut self.buf);
        let start = at + ENTRY_PREFIX_LEN;
        assert!(
            self.buf.len() >= start,
            "RecordBatch::push_with: the closure must only append to the buffer"
        );
        // An entry over 4 GiB is refused by `append_batch` as TooLarge (the format caps a
        // record at 256 MiB), so a saturated prefix is never written.
        let len = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.buf[at..start].copy_from_slice(&len.to_le_bytes());
        self.count = self.count.saturating_add(1);
        self.lens.push(len);
    }

    /// Each entry's length, in order.
    pub(crate) fn lens(&self) -> &[u32] {
        &self.lens
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The payload of the record this batch is written as: what `Options::max_record_bytes`
    /// limits. 0 when empty; the entry's length for one entry; otherwise 4 bytes of count plus
    /// 4 bytes of length prefix and the bytes of every entry.
    pub fn payload_bytes(&self) -> usize {
        match self.count {
            0 => 0,
            1 => self.buf.len() - ENTRY_PREFIX_LEN,
            _ => ENTRY_PREFIX_LEN + self.buf.len(),
        }
    }

    /// The record this batch is written as, with its payload checksummed; `None` when empty.
    /// (`append_batch` uses it; public for encoding records outside a queue, e.g. in tests.)
    pub fn prepare(&self) -> Option<Prepared<'_>> {
        match self.count {
            0 => None,
            1 => Some(Prepared::single(
                self.buf.get(ENTRY_PREFIX_LEN..).unwrap_or_default(),
            )),
            n => Some(Prepared::multi(n, &self.buf)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Decoded, Entries, HEADER_LEN, decode, encode_into};

    fn encode(batch: &RecordBatch, seq: u64) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Some(p) = batch.prepare() {
            p.encode_into(&mut buf, seq);
        }
        buf
    }

    fn decode_entries(buf: &[u8]) -> (u64, Vec<Vec<u8>>) {
        let Decoded::Record {
            seq,
            payload,
            entries,
            len,
        } = decode(buf)
        else {
            panic!("expected a record, found {:?}", decode(buf));
        };
        assert_eq!(len, buf.len());
        let body = &buf[payload];
        let got: Vec<Vec<u8>> = Entries::new(body, entries > 1)
            .map(|r| body[r].to_vec())
            .collect();
        assert_eq!(got.len(), entries as usize);
        (seq, got)
    }

    #[test]
    fn a_batch_round_trips_through_one_flagged_record() {
        let mut batch = RecordBatch::new();
        batch.push(b"alpha");
        batch.push(b"");
        batch.push_with(|buf| buf.extend_from_slice(b"encoded in place"));
        assert_eq!((batch.len(), batch.is_empty()), (3, false));
        let buf = encode(&batch, 1000);
        assert_eq!(buf.len(), HEADER_LEN + batch.payload_bytes());
        assert_eq!(batch.payload_bytes(), 4 + 3 * 4 + 5 + 16);
        let (seq, entries) = decode_entries(&buf);
        assert_eq!(seq, 1000);
        assert_eq!(
            entries,
            vec![b"alpha".to_vec(), Vec::new(), b"encoded in place".to_vec()]
        );
    }

    #[test]
    fn a_batch_of_one_is_a_plain_record() {
        let mut batch = RecordBatch::new();
        batch.push_with(|buf| buf.extend_from_slice(b"only"));
        assert_eq!(batch.payload_bytes(), 4);
        let mut plain = Vec::new();
        encode_into(&mut plain, 5, b"only");
        assert_eq!(encode(&batch, 5), plain);
    }

    #[test]
    fn large_records_checksummed_before_their_seq_is_known_decode() {
        // Above 2 KiB the payload's checksum is computed first and shifted past by the seq's.
        for (n, size) in [(1, 5000), (2, 1500), (300, 20), (3, 2040)] {
            let mut batch = RecordBatch::new();
            for i in 0..n {
                batch.push(&vec![i as u8; size]);
            }
            let (seq, entries) = decode_entries(&encode(&batch, 77 + n as u64));
            assert_eq!((seq, entries.len()), (77 + n as u64, n));
            assert!(
                entries
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e == &vec![i as u8; size])
            );
        }
    }

    #[test]
    fn clear_empties_the_batch_for_reuse() {
        let mut batch = RecordBatch::new();
        batch.push(b"one");
        batch.push(b"two");
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.payload_bytes(), 0);
        assert!(batch.prepare().is_none());
        batch.push(b"three");
        batch.push(b"four");
        assert_eq!(
            decode_entries(&encode(&batch, 0)).1,
            vec![b"three".to_vec(), b"four".to_vec()]
        );
    }
}
