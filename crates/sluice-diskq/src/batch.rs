//! [`RecordBatch`]: many entries gathered by the appender, written as one record.
//!
//! The batch owns a buffer laid out so that it can become the record itself: room for a
//! padding record (see `record.rs`), then, at a [`BLOCK`]-aligned address, [`FRONT`] bytes kept
//! free for the 16-byte header and the 4-byte entry count, then the body of its payload —
//! `u32 LE len | bytes` per entry, back to back (see [`crate::record`]). So
//! `DiskQueue::append_batch` copies the body into the pending write with one `memcpy`, and
//! `DiskQueue::append_batch_taking` fills the front (and, for direct I/O, a pad before it) in
//! and takes the whole buffer as the record, copying nothing: the writer sends the record's
//! whole blocks to the device straight from this buffer (see `direct.rs`). A batch of one
//! entry is written as a plain, unflagged record: its length prefix is skipped.
//!
//! Invariant: `buf` is empty or holds `start` bytes of room, the front, then exactly `count`
//! well-formed length-prefixed entries; `start` is at least [`PAD_ROOM`]. The record's first
//! byte is at a `BLOCK`-aligned address unless the buffer grew (moved) while entries were
//! added: [`RecordBatch::realign`] restores that before the buffer is taken. The batch is meant
//! to be reused: `clear()` keeps the allocation.

use crate::crc;
use crate::direct::BLOCK;
use crate::record::{self, ENTRIES_FLAG, ENTRY_PREFIX_LEN, HEADER_LEN, Prepared};

/// Bytes kept free at the front of a batch's record: the record header and the entry count.
pub(crate) const FRONT: usize = HEADER_LEN + ENTRY_PREFIX_LEN;

/// Room kept in front of the record for the padding that aligns it in the file: a pad fills
/// the gap to the next direct-I/O boundary, plus one boundary's worth when the gap is too short
/// for a header, so it is at most `BLOCK + HEADER_LEN - 1` bytes.
pub(crate) const PAD_ROOM: usize = BLOCK + HEADER_LEN;

/// A reusable builder of a multi-entry record. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct RecordBatch {
    buf: Vec<u8>,
    /// Where the record starts in `buf` (see the module documentation).
    start: usize,
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
        self.buf.truncate(self.start + FRONT);
        self.count = 0;
        self.lens.clear();
    }

    /// Lays out the room and the front in an empty buffer, the record starting at an aligned
    /// address.
    fn lay_out_front(&mut self) {
        loop {
            let start = aligned_start(&self.buf);
            if self.buf.capacity() >= start + FRONT {
                self.buf.clear();
                self.buf.resize(start + FRONT, 0);
                self.start = start;
                return;
            }
            // May move the buffer: the start is worked out again.
            self.buf.reserve(start + FRONT + BLOCK);
        }
    }

    /// Whether the record starts at a [`BLOCK`]-aligned address.
    pub(crate) fn is_aligned(&self) -> bool {
        (self.buf.as_ptr() as usize + self.start).is_multiple_of(BLOCK)
    }

    /// Moves the record to an aligned address if the buffer moved when it grew (which costs a
    /// copy of the record: a warm buffer is large enough not to grow).
    pub(crate) fn realign(&mut self) {
        if self.buf.is_empty() || self.is_aligned() {
            return;
        }
        let len = self.buf.len() - self.start;
        // The new start is at most PAD_ROOM + BLOCK - 1 ≤ old start + BLOCK - 1.
        self.buf.reserve(BLOCK);
        let start = aligned_start(&self.buf);
        if start + len > self.buf.len() {
            self.buf.resize(start + len, 0);
        }
        self.buf.copy_within(self.start..self.start + len, start);
        self.buf.truncate(start + len);
        self.start = start;
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
        if self.buf.len() < self.start + FRONT {
            self.lay_out_front();
        }
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
            1 => self.body().len() - ENTRY_PREFIX_LEN,
            _ => ENTRY_PREFIX_LEN + self.body().len(),
        }
    }

    /// The entries, each with its length prefix.
    fn body(&self) -> &[u8] {
        self.buf.get(self.start + FRONT..).unwrap_or_default()
    }

    /// The record this batch is written as, with its payload checksummed; `None` when empty.
    /// (`append_batch` uses it; public for encoding records outside a queue, e.g. in tests.)
    pub fn prepare(&self) -> Option<Prepared<'_>> {
        match self.count {
            0 => None,
            1 => Some(Prepared::single(
                self.body().get(ENTRY_PREFIX_LEN..).unwrap_or_default(),
            )),
            n => Some(Prepared::multi(n, self.body())),
        }
    }

    /// For a batch of two entries or more: what its record's header needs besides the seq,
    /// with the payload checksummed (so that, under the queue's lock, only the seq's checksum
    /// is combined with it).
    pub(crate) fn seal(&self) -> Option<Sealed> {
        if self.count < 2 {
            return None;
        }
        let payload_len = self.payload_bytes();
        let count = self.count.to_le_bytes();
        Some(Sealed {
            // A payload over 4 GiB is refused as TooLarge before the field is written.
            field: u32::try_from(payload_len).unwrap_or(u32::MAX) | ENTRIES_FLAG,
            count,
            payload_len,
            entries: self.count,
            payload_crc: crc32c::crc32c_append(crc32c::crc32c(&count), self.body()),
            shift: crc::shift_op(payload_len),
        })
    }

    /// Fills the front in with `header` and the entry count, and `pad` bytes in front of it
    /// with a padding record (none if 0; at most [`PAD_ROOM`]), and hands the buffer over,
    /// leaving the batch empty with `replacement` as its buffer. Returns the buffer and where
    /// in it the bytes to write start (the pad, or the record).
    pub(crate) fn take_record(
        &mut self,
        sealed: &Sealed,
        seq: u64,
        pad: usize,
        replacement: Vec<u8>,
    ) -> (Vec<u8>, usize) {
        let start = self.start;
        let mut buf = std::mem::replace(&mut self.buf, replacement);
        buf[start..start + HEADER_LEN].copy_from_slice(&sealed.header(seq));
        buf[start + HEADER_LEN..start + FRONT].copy_from_slice(&sealed.count);
        let from = start - pad.min(PAD_ROOM);
        if from < start {
            record::write_padding(&mut buf[from..start], seq);
        }
        self.clear();
        (buf, from)
    }

    /// Memory the buffer holds.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Where, in `buf`'s allocation, a record starting at a [`BLOCK`]-aligned address after at least
/// [`PAD_ROOM`] bytes would start.
fn aligned_start(buf: &[u8]) -> usize {
    let room_end = buf.as_ptr() as usize + PAD_ROOM;
    PAD_ROOM + (room_end.wrapping_neg() & (BLOCK - 1))
}

/// A multi-entry record's header fields, all but the seq (see [`RecordBatch::seal`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sealed {
    field: u32,
    count: [u8; ENTRY_PREFIX_LEN],
    pub payload_len: usize,
    pub entries: u32,
    payload_crc: u32,
    shift: u32,
}

impl Sealed {
    /// The record's header when its first entry is numbered `seq`: the same bytes
    /// [`Prepared::encode_into`] writes.
    pub(crate) fn header(&self, seq: u64) -> [u8; HEADER_LEN] {
        let crc = crc::combine(
            crc32c::crc32c(&seq.to_le_bytes()),
            self.payload_crc,
            self.shift,
        );
        // A flagged record's checksum also covers its length field (see `record.rs`).
        let crc = crc32c::crc32c_append(crc, &self.field.to_le_bytes());
        record::header(self.field, crc, seq)
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
    fn a_batch_taken_as_its_record_holds_the_same_bytes_as_one_encoded() {
        for (n, size) in [(2, 0), (2, 5000), (300, 20), (3, 2040), (1000, 250)] {
            let mut batch = RecordBatch::new();
            for i in 0..n {
                batch.push(&vec![i as u8; size]);
            }
            let seq = 1 << 40 | n as u64;
            let encoded = encode(&batch, seq);
            let sealed = batch.seal().unwrap();
            assert_eq!(sealed.payload_len, batch.payload_bytes());
            batch.realign();
            assert!(batch.is_aligned());
            let (taken, from) = batch.take_record(&sealed, seq, 0, Vec::new());
            assert_eq!(&taken[from..], &encoded[..], "{n} entries of {size} bytes");
            assert_eq!(taken[from..].as_ptr() as usize % BLOCK, 0);
            assert!(batch.is_empty() && batch.prepare().is_none());
            // The emptied batch builds the next record as before.
            batch.push(b"next");
            batch.push(b"one");
            assert_eq!(decode_entries(&encode(&batch, 9)).1.len(), 2);
        }
        let mut one = RecordBatch::new();
        one.push(b"single");
        assert!(one.seal().is_none(), "a batch of one is a plain record");
    }

    #[test]
    fn a_batch_that_grew_is_realigned_and_taken_behind_its_padding() {
        let mut batch = RecordBatch::new();
        for i in 0..2000u32 {
            batch.push(&i.to_le_bytes().repeat(20));
        }
        // Move the buffer as growing it may (and may not) do.
        for extra in 1.. {
            if !batch.is_aligned() {
                break;
            }
            assert!(extra < 100, "every copy of the buffer landed aligned");
            let mut moved = Vec::with_capacity(batch.buf.len() + 16 * extra);
            moved.extend_from_slice(&batch.buf);
            batch.buf = moved;
        }
        let encoded = encode(&batch, 500);
        batch.realign();
        assert!(batch.is_aligned());
        assert_eq!(encode(&batch, 500), encoded, "realigning keeps the record");
        let sealed = batch.seal().unwrap();
        for pad in [HEADER_LEN, 100, PAD_ROOM - 1] {
            let mut again = RecordBatch::new();
            for i in 0..2000u32 {
                again.push(&i.to_le_bytes().repeat(20));
            }
            again.realign();
            let (taken, from) = again.take_record(&sealed, 500, pad, Vec::new());
            let bytes = &taken[from..];
            assert_eq!(
                decode(bytes),
                crate::record::Decoded::Padding { seq: 500, len: pad }
            );
            assert_eq!(&bytes[pad..], &encoded[..]);
            assert_eq!(bytes[pad..].as_ptr() as usize % BLOCK, 0);
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
