//! Segment files: their names, and a forward scanner that reads records out of one.
//!
//! A segment is named after the sequence number its first record was given
//! (`00000000000000000042.seg`). The [`Scanner`] walks a segment from a known offset through a
//! bounded window (64 KiB, or one record if larger), verifies every checksum, and turns what it
//! finds into [`Item`]s. Invariants it keeps:
//!
//! - It never reads past the file length it was given, and never allocates more than the bytes
//!   actually present in the file, whatever a length field claims.
//! - Sequence numbers handed out are strictly increasing: a record covers the seqs of its
//!   entries (`seq .. seq + entries`), the next record must start at or after the end of the
//!   previous one, and a record with a valid checksum but a first seq below the expected one is
//!   stale data and treated as corrupt.
//! - After a bad record it **resynchronises**: it scans forward byte by byte for the next
//!   offset holding a plausible header (length within the format limit and within the file,
//!   sequence number at least the expected one and at most one more per 4 skipped bytes,
//!   since each lost entry occupied at least a 4-byte length prefix, and each lost record at
//!   least a 16-byte header) whose checksum matches and whose entries are well-formed. Only then does
//!   it report the skipped bytes as [`Item::Corrupt`]. If nothing valid follows, the rest of
//!   the file is an [`Item::Tail`] (a torn write in the last segment, corruption otherwise).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::record::{self, Decoded, ENTRY_PREFIX_LEN, FORMAT_MAX_PAYLOAD, HEADER_LEN, MAX_SEQ};
use crate::{Error, Seq};

/// File extension of segment files.
pub const SEGMENT_EXT: &str = "seg";

/// Read granularity of the scanner.
const CHUNK: usize = 64 * 1024;

/// The path of the segment whose first sequence number is `first`.
pub fn segment_path(dir: &Path, first: Seq) -> PathBuf {
    dir.join(format!("{first:020}.{SEGMENT_EXT}"))
}

/// Lists the segment files of `dir`, oldest first. Files with other names are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, Error> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, None, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, None, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(&format!(".{SEGMENT_EXT}")) else {
            continue;
        };
        if stem.len() == 20
            && let Ok(first) = stem.parse::<Seq>()
        {
            out.push((first, entry.path()));
        }
    }
    out.sort_by_key(|(first, _)| *first);
    Ok(out)
}

/// One step of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A valid record; its payload is available from [`Scanner::payload`] until the next call.
    Record {
        /// The seq of its first entry (≥ the expected one; a gap means entries were lost).
        seq: Seq,
        /// Its offset in the file.
        offset: u64,
        /// Its total length (header + payload).
        len: u64,
        /// How many entries it holds: it covers `seq .. seq + entries`.
        entries: u32,
    },
    /// Bytes that hold no valid record, followed by a valid one (returned by the next call).
    Corrupt {
        /// Where the bad bytes start.
        offset: u64,
        /// How many bytes were skipped.
        bytes: u64,
        /// What was wrong with the first bad record.
        reason: String,
    },
    /// Bytes up to the end of the file that hold no valid record.
    Tail {
        /// Where the bad bytes start.
        offset: u64,
        /// How many bytes remain to the end of the file.
        bytes: u64,
        /// What was wrong with the first bad record.
        reason: String,
    },
    /// The end of the file was reached cleanly.
    End,
}

/// Reads records forward from one segment file through a bounded window.
pub struct Scanner<'a> {
    file: &'a File,
    path: &'a Path,
    file_len: u64,
    buf: Vec<u8>,
    buf_start: u64,
    pos: u64,
    expected: Seq,
    last_payload: std::ops::Range<usize>,
}

impl<'a> Scanner<'a> {
    /// Scans `file` (of length `file_len`) from `offset`, expecting the next record to carry
    /// sequence number `expected` or a later one.
    pub fn new(file: &'a File, path: &'a Path, file_len: u64, offset: u64, expected: Seq) -> Self {
        Scanner {
            file,
            path,
            file_len,
            buf: Vec::new(),
            buf_start: offset,
            pos: offset,
            expected,
            last_payload: 0..0,
        }
    }

    /// The payload of the record returned by the last [`Item::Record`].
    pub fn payload(&self) -> &[u8] {
        self.buf.get(self.last_payload.clone()).unwrap_or_default()
    }

    /// Makes the window cover `[at, at + n)`; returns false if the file is shorter.
    fn ensure(&mut self, at: u64, n: usize) -> Result<bool, Error> {
        let Some(end) = at.checked_add(n as u64) else {
            return Ok(false);
        };
        if end > self.file_len {
            return Ok(false);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if at >= self.buf_start && end <= buf_end {
            return Ok(true);
        }
        // Refill from `at`: at least the requested bytes, at most what the file holds.
        let want = (n.max(CHUNK) as u64).min(self.file_len - at) as usize;
        self.buf.clear();
        self.buf.resize(want, 0);
        self.file
            .read_exact_at(&mut self.buf, at)
            .map_err(|e| Error::io("read", self.path, Some(at), e))?;
        self.buf_start = at;
        Ok(true)
    }

    fn rel(&self, at: u64) -> usize {
        (at - self.buf_start) as usize
    }

    /// Tries to read a record at `at` whose seq is at least `min_seq`.
    /// Returns `Ok(Ok((seq, len, entries)))` or `Ok(Err(reason))`.
    fn record_at(
        &mut self,
        at: u64,
        min_seq: Seq,
    ) -> Result<Result<(Seq, u64, u32), String>, Error> {
        if !self.ensure(at, HEADER_LEN)? {
            return Ok(Err(format!(
                "partial header: {} bytes before end of file",
                self.file_len - at
            )));
        }
        let Some(h) = record::read_header(&self.buf[self.rel(at)..]) else {
            return Ok(Err("unreadable header".into()));
        };
        if h.len > FORMAT_MAX_PAYLOAD {
            return Ok(Err(format!(
                "length field {} exceeds the format limit {FORMAT_MAX_PAYLOAD}",
                h.len
            )));
        }
        let total = HEADER_LEN + h.len as usize;
        if !self.ensure(at, total)? {
            return Ok(Err(format!(
                "record claims {total} bytes, only {} remain in the file",
                self.file_len - at
            )));
        }
        let rel = self.rel(at);
        match record::decode(&self.buf[rel..]) {
            Decoded::Record {
                seq,
                payload,
                len,
                entries,
            } => {
                // `entries` is below 2^26 (each takes 4 bytes of at most 256 MiB): no overflow.
                if seq > MAX_SEQ || seq + u64::from(entries) - 1 > MAX_SEQ {
                    return Ok(Err(format!(
                        "sequence numbers {seq}+{entries} exceed the format limit {MAX_SEQ}"
                    )));
                }
                if seq < min_seq {
                    return Ok(Err(format!(
                        "sequence number {seq} is below the expected {min_seq}"
                    )));
                }
                self.last_payload = rel + payload.start..rel + payload.end;
                Ok(Ok((seq, len as u64, entries)))
            }
            Decoded::Invalid(why) => Ok(Err(why.to_string())),
            Decoded::Incomplete { need } => Ok(Err(format!("incomplete record of {need} bytes"))),
        }
    }

    /// Whether the header at `q` could start a real record after corruption began at `from`.
    fn plausible(&mut self, q: u64, from: u64) -> Result<bool, Error> {
        if !self.ensure(q, HEADER_LEN)? {
            return Ok(false);
        }
        let Some(h) = record::read_header(&self.buf[self.rel(q)..]) else {
            return Ok(false);
        };
        let lost_max = (q - from) / ENTRY_PREFIX_LEN as u64;
        Ok(h.len <= FORMAT_MAX_PAYLOAD
            && q + (HEADER_LEN as u64) + u64::from(h.len) <= self.file_len
            && h.seq <= MAX_SEQ
            && h.seq >= self.expected
            && h.seq - self.expected <= lost_max)
    }

    /// Finds the next offset after `from` holding a valid record, if any.
    fn resync(&mut self, from: u64) -> Result<Option<u64>, Error> {
        let mut q = from + 1;
        while q + HEADER_LEN as u64 <= self.file_len {
            if self.plausible(q, from)? && self.record_at(q, self.expected)?.is_ok() {
                return Ok(Some(q));
            }
            q += 1;
        }
        Ok(None)
    }

    /// Reads the next item.
    pub fn next_item(&mut self) -> Result<Item, Error> {
        if self.pos >= self.file_len {
            return Ok(Item::End);
        }
        let at = self.pos;
        match self.record_at(at, self.expected)? {
            Ok((seq, len, entries)) => {
                self.pos = at + len;
                self.expected = seq + u64::from(entries);
                Ok(Item::Record {
                    seq,
                    offset: at,
                    len,
                    entries,
                })
            }
            Err(reason) => match self.resync(at)? {
                Some(q) => {
                    self.pos = q;
                    Ok(Item::Corrupt {
                        offset: at,
                        bytes: q - at,
                        reason,
                    })
                }
                None => {
                    self.pos = self.file_len;
                    Ok(Item::Tail {
                        offset: at,
                        bytes: self.file_len - at,
                        reason,
                    })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_into;
    use std::io::Write;

    fn scan_all(bytes: &[u8], expected: Seq) -> Vec<Item> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.seg");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        let mut s = Scanner::new(&file, &path, bytes.len() as u64, 0, expected);
        let mut items = Vec::new();
        loop {
            let item = s.next_item().unwrap();
            if item == Item::End {
                return items;
            }
            items.push(item);
        }
    }

    fn seqs(items: &[Item]) -> Vec<Seq> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Record { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resyncs_after_a_flipped_byte() {
        let mut buf = Vec::new();
        for seq in 10..20 {
            encode_into(&mut buf, seq, &[seq as u8; 40]);
        }
        buf[56 * 3 + 20] ^= 0x40; // payload of seq 13
        let items = scan_all(&buf, 10);
        assert_eq!(seqs(&items), vec![10, 11, 12, 14, 15, 16, 17, 18, 19]);
        assert!(
            items.contains(&Item::Corrupt {
                offset: 56 * 3,
                bytes: 56,
                reason: items
                    .iter()
                    .find_map(|i| match i {
                        Item::Corrupt { reason, .. } => Some(reason.clone()),
                        _ => None,
                    })
                    .unwrap()
            })
        );
    }

    #[test]
    fn garbage_length_is_skipped_not_trusted() {
        let mut buf = Vec::new();
        for seq in 0..5 {
            encode_into(&mut buf, seq, b"0123456789");
        }
        buf[26..30].copy_from_slice(&u32::MAX.to_le_bytes()); // length of seq 1
        let items = scan_all(&buf, 0);
        assert_eq!(seqs(&items), vec![0, 2, 3, 4]);
    }

    #[test]
    fn zero_tail_and_partial_record_are_a_tail() {
        let mut buf = Vec::new();
        for seq in 0..3 {
            encode_into(&mut buf, seq, b"abc");
        }
        let good = buf.len() as u64;
        buf.extend_from_slice(&[0u8; 4096]);
        let items = scan_all(&buf, 0);
        assert_eq!(seqs(&items), vec![0, 1, 2]);
        assert!(
            matches!(items.last(), Some(Item::Tail { offset, bytes: 4096, .. }) if *offset == good)
        );

        let mut torn = Vec::new();
        encode_into(&mut torn, 0, b"abc");
        encode_into(&mut torn, 1, b"abcdefgh");
        torn.truncate(torn.len() - 3);
        let items = scan_all(&torn, 0);
        assert_eq!(seqs(&items), vec![0]);
        assert!(matches!(items.last(), Some(Item::Tail { offset: 19, .. })));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever bytes are damaged, the scanner returns exactly the records whose own bytes
        /// are intact, in order, with their entry counts: resynchronisation neither skips an
        /// intact record nor invents one, whether records hold one entry or several.
        #[test]
        fn scanner_recovers_exactly_the_intact_records(
            sizes in proptest::collection::vec((0usize..120, 1u64..6), 1..40),
            flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 0..6),
            cut in proptest::option::of(0.0f64..1.0),
        ) {
            let mut buf = Vec::new();
            let mut ranges = Vec::new();
            let mut seq = 100;
            for (i, (size, count)) in sizes.iter().enumerate() {
                let start = buf.len();
                let mut batch = crate::RecordBatch::new();
                for e in 0..*count {
                    let bytes: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8 ^ e as u8).collect();
                    batch.push(&bytes);
                }
                if let Some(record) = batch.prepare() {
                    record.encode_into(&mut buf, seq);
                }
                ranges.push((start, buf.len(), seq, *count));
                seq += count;
            }
            let mut damaged = vec![false; buf.len()];
            for (at, xor) in &flips {
                let i = ((*at * buf.len() as f64) as usize).min(buf.len() - 1);
                buf[i] ^= xor;
                damaged[i] = true;
            }
            let end = cut.map_or(buf.len(), |c| (c * buf.len() as f64) as usize);
            buf.truncate(end);
            let expected: Vec<(Seq, u64)> = ranges
                .iter()
                .filter(|(s, e, ..)| *e <= end && !damaged[*s..*e].iter().any(|d| *d))
                .map(|(_, _, seq, count)| (*seq, *count))
                .collect();
            let found: Vec<(Seq, u64)> = scan_all(&buf, 100)
                .iter()
                .filter_map(|i| match i {
                    Item::Record { seq, entries, .. } => Some((*seq, u64::from(*entries))),
                    _ => None,
                })
                .collect();
            proptest::prop_assert_eq!(found, expected);
        }
    }

    #[test]
    fn a_multi_entry_record_running_past_the_largest_seq_is_corrupt() {
        let mut batch = crate::RecordBatch::new();
        batch.push(b"a");
        batch.push(b"b");
        let mut buf = Vec::new();
        encode_into(&mut buf, MAX_SEQ - 3, b"x");
        batch.prepare().unwrap().encode_into(&mut buf, MAX_SEQ - 1);
        batch.prepare().unwrap().encode_into(&mut buf, MAX_SEQ);
        let items = scan_all(&buf, MAX_SEQ - 3);
        assert_eq!(seqs(&items), vec![MAX_SEQ - 3, MAX_SEQ - 1]);
        assert!(matches!(items.last(), Some(Item::Tail { .. })));
    }

    #[test]
    fn absurd_sequence_numbers_are_corrupt_not_an_overflow() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 1, b"a");
        encode_into(&mut buf, u64::MAX, b"b");
        encode_into(&mut buf, 2, b"c");
        assert_eq!(seqs(&scan_all(&buf, 1)), vec![1, 2]);
    }

    #[test]
    fn stale_sequence_numbers_are_rejected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 5, b"a");
        encode_into(&mut buf, 3, b"b");
        encode_into(&mut buf, 6, b"c");
        assert_eq!(seqs(&scan_all(&buf, 5)), vec![5, 6]);
    }
}
