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
//! - **Padding records are stepped over** (see `record.rs`): they hold no entries, and their
//!   seq (that of the record after them) obeys the same rules as a record's.
//! - **Zeros are unused space.** Segments may be created from a zero-filled spare (see
//!   `prep.rs`), and direct I/O pads a segment's last block with zeros (see `direct.rs`), so from a record boundary, bytes that are all zero up to the end of the file
//!   are [`Item::Unused`]: the segment's live data ends there, cleanly. An all-zero header is
//!   never a valid record (its checksum field, 0, never matches: CRC-32C of eight zero bytes
//!   is not 0), so this cannot hide a record. Runs of zeros are compared a window at a time,
//!   not byte by byte, both here and while resynchronising, so a mostly empty 64 MiB segment
//!   scans quickly.
//! - **A recycled file's old records are unused space too.** A segment may be made from an
//!   older, fully acknowledged segment file renamed instead of deleted (see `prep.rs`), so
//!   past its live end lie the records of the file's previous life. They are recognised as
//!   such when the bytes from the live end to the next [`BLOCK`] boundary are zeros (the padding
//!   of every direct write, see `direct.rs`; recycling is only done with direct I/O) and the
//!   first valid record after that boundary (looked for within [`STALE_SEARCH`]) carries a
//!   seq below the expected one: sequence numbers only grow, so it can only be old. Then the
//!   rest of the file is [`Item::Unused`].
//! - Anything else that is not a record — including zeros followed by stray record bytes, the
//!   shape a crash leaves when a later page of a write reached the disk and an earlier one did
//!   not — is corrupt or a torn tail, never unused space.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::direct::BLOCK;
use crate::record::{self, Decoded, ENTRY_PREFIX_LEN, FORMAT_MAX_PAYLOAD, HEADER_LEN, MAX_SEQ};
use crate::{Error, Seq};

/// File extension of segment files.
pub const SEGMENT_EXT: &str = "seg";

/// Read granularity of the scanner.
const CHUNK: usize = 64 * 1024;

/// How far past a segment's live end (and its padding) the scanner looks for an old record of
/// a recycled file. Records are usually one socket read (64 KiB) or one HTTP request, so an old
/// one starts well within this; a larger one leaves the bytes a torn tail (a false alarm).
pub(crate) const STALE_SEARCH: u64 = 4 << 20;

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
    /// Bytes up to the end of the file that hold no valid record (and are not all zero).
    Tail {
        /// Where the bad bytes start.
        offset: u64,
        /// How many bytes hold no valid record, up to the end of the file or, if the file
        /// ends in a run of zeros (unused preallocated space), up to where that run starts.
        bytes: u64,
        /// What was wrong with the first bad record.
        reason: String,
    },
    /// Zero bytes from a record boundary to the end of the file, or a recycled file's old
    /// records after the zero padding of the live end's block: space preallocated for records
    /// and not used yet. The segment's live data ends at `offset`; the next call returns
    /// [`Item::End`].
    Unused {
        /// Where the zeros start (the live end of the segment).
        offset: u64,
        /// How many zero bytes follow, to the end of the file.
        bytes: u64,
    },
    /// The end of the file was reached cleanly.
    End,
}

/// Bytes a reader's window holds that a later scan may reuse: only bytes of records it read
/// whole and found valid, since what followed them (zeros, or a record still being written)
/// may since have been written over.
#[derive(Debug, Default)]
pub(crate) struct Window {
    start: u64,
    buf: Vec<u8>,
}

impl Window {
    /// Drops the bytes (another file is read next), keeping the allocation.
    pub(crate) fn forget(mut self) -> Self {
        self.buf.clear();
        self
    }
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
    /// Bytes read per refill at least.
    refill: usize,
    /// The end of the last valid record returned.
    verified_end: u64,
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
            refill: CHUNK,
            verified_end: offset,
        }
    }

    /// Like [`Scanner::new`], reading `refill` bytes at a time and starting from what an
    /// earlier scan of the same file left in `window` (see [`Scanner::into_window`]).
    pub(crate) fn resume(
        file: &'a File,
        path: &'a Path,
        file_len: u64,
        offset: u64,
        expected: Seq,
        window: Window,
        refill: usize,
    ) -> Self {
        let mut sc = Scanner::new(file, path, file_len, offset, expected);
        sc.refill = refill.max(CHUNK);
        let covers = window.start <= offset && offset < window.start + window.buf.len() as u64;
        sc.buf = window.buf;
        if covers {
            sc.buf_start = window.start;
        } else {
            sc.buf.clear();
        }
        sc
    }

    /// The window's bytes that a later scan may reuse (keeping its allocation either way).
    pub(crate) fn into_window(mut self) -> Window {
        let valid = self.verified_end.saturating_sub(self.buf_start);
        self.buf.truncate(usize::try_from(valid).unwrap_or(0));
        Window {
            start: self.buf_start,
            buf: self.buf,
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
        let want = (n.max(self.refill) as u64).min(self.file_len - at) as usize;
        self.buf.clear();
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut self.buf[got..], at + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", self.path, Some(at), e)),
            }
        }
        self.buf.truncate(got);
        self.buf_start = at;
        if got < want {
            // The file shrank since it was measured: the writer trims direct I/O's zero padding
            // and a spare's unused rest off a segment it leaves (see `writer.rs`). Only bytes
            // past the live end go.
            self.file_len = at + got as u64;
        }
        Ok(got >= n)
    }

    fn rel(&self, at: u64) -> usize {
        (at - self.buf_start) as usize
    }

    /// Tries to read a record at `at` whose seq is at least `min_seq`.
    /// Returns `Ok(Ok((seq, len, entries)))` (`entries` 0 for a padding record) or
    /// `Ok(Err(reason))`.
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
            // A pad: no entries, so it moves nothing forward but the offset.
            Decoded::Padding { seq, len } => {
                if seq > MAX_SEQ {
                    return Ok(Err(format!(
                        "padding's sequence number {seq} exceeds the format limit {MAX_SEQ}"
                    )));
                }
                if seq < min_seq {
                    return Ok(Err(format!(
                        "padding's sequence number {seq} is below the expected {min_seq}"
                    )));
                }
                self.last_payload = 0..0;
                Ok(Ok((seq, len as u64, 0)))
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

    /// The first offset at or after `at` holding a non-zero byte, or the file length.
    fn zeros_end(&mut self, at: u64) -> Result<u64, Error> {
        let mut pos = at;
        while pos < self.file_len {
            let n = (self.file_len - pos).min(CHUNK as u64) as usize;
            if !self.ensure(pos, n)? {
                return Ok(pos);
            }
            let rel = self.rel(pos);
            let window = self.buf.get(rel..rel + n).unwrap_or_default();
            match first_non_zero(window) {
                Some(i) => return Ok(pos + i as u64),
                None => pos += n as u64,
            }
        }
        Ok(self.file_len)
    }

    /// Whether the 16 bytes at `q` (which must exist) are all zero.
    fn zero_header(&mut self, q: u64) -> Result<bool, Error> {
        if !self.ensure(q, HEADER_LEN)? {
            return Ok(false);
        }
        let rel = self.rel(q);
        Ok(self
            .buf
            .get(rel..rel + HEADER_LEN)
            .is_some_and(|h| h.iter().all(|b| *b == 0)))
    }

    /// Whether what lies past the live end `at` is a recycled file's old contents (see the
    /// module documentation): zeros up to the next block boundary, and after it, as the first
    /// valid record within [`STALE_SEARCH`], one whose seq is below the expected one.
    fn stale_after(&mut self, at: u64) -> Result<bool, Error> {
        let boundary = at.next_multiple_of(BLOCK as u64);
        if boundary >= self.file_len || self.zeros_end(at)? < boundary {
            return Ok(false);
        }
        let limit = boundary.saturating_add(STALE_SEARCH).min(self.file_len);
        let mut q = boundary;
        while q + HEADER_LEN as u64 <= limit {
            if self.zero_header(q)? {
                let end = self.zeros_end(q)?;
                q = (end + 1).saturating_sub(HEADER_LEN as u64).max(q + 1);
                continue;
            }
            if !self.ensure(q, HEADER_LEN)? {
                break;
            }
            // Only a header whose record ends within the search is worth a checksum: that
            // bounds what a garbage length can make the scanner read.
            let header = self.buf.get(self.rel(q)..).and_then(record::read_header);
            let fits = header.is_some_and(|h| {
                h.len <= FORMAT_MAX_PAYLOAD
                    && h.seq <= MAX_SEQ
                    && q + HEADER_LEN as u64 + u64::from(h.len) <= limit
            });
            if fits && let Ok((seq, _, _)) = self.record_at(q, 0)? {
                return Ok(seq < self.expected);
            }
            q += 1;
        }
        Ok(false)
    }

    /// Finds the next offset after `from` holding a valid record (`Ok(q)`), or, if there is
    /// none, where the bad bytes end (`Err(end)`): the start of a run of zeros reaching the
    /// end of the file, or the file length.
    fn resync(&mut self, from: u64) -> Result<Result<u64, u64>, Error> {
        let mut q = from + 1;
        while q + HEADER_LEN as u64 <= self.file_len {
            // No record starts with an all-zero header: skip a run of zeros in one go, to the
            // last offset whose header still reaches the byte that ends it.
            if self.zero_header(q)? {
                let end = self.zeros_end(q)?;
                if end >= self.file_len {
                    return Ok(Err(q));
                }
                q = end + 1 - HEADER_LEN as u64;
                continue;
            }
            if self.plausible(q, from)? && self.record_at(q, self.expected)?.is_ok() {
                return Ok(Ok(q));
            }
            q += 1;
        }
        Ok(Err(self.file_len))
    }

    /// Reads the next item. Padding records are stepped over, never returned.
    pub fn next_item(&mut self) -> Result<Item, Error> {
        loop {
            if self.pos >= self.file_len {
                return Ok(Item::End);
            }
            match self.record_at(self.pos, self.expected)? {
                Ok((seq, len, 0)) => {
                    self.pos += len;
                    self.verified_end = self.pos;
                    self.expected = seq;
                }
                found => return self.item_at(found),
            }
        }
    }

    /// The item for what [`Scanner::record_at`] found at `self.pos`.
    fn item_at(&mut self, found: Result<(Seq, u64, u32), String>) -> Result<Item, Error> {
        let at = self.pos;
        match found {
            Ok((seq, len, entries)) => {
                self.pos = at + len;
                self.verified_end = self.pos;
                self.expected = seq + u64::from(entries);
                Ok(Item::Record {
                    seq,
                    offset: at,
                    len,
                    entries,
                })
            }
            Err(reason) => {
                if self.zeros_end(at)? >= self.file_len || self.stale_after(at)? {
                    self.pos = self.file_len;
                    return Ok(Item::Unused {
                        offset: at,
                        bytes: self.file_len - at,
                    });
                }
                match self.resync(at)? {
                    Ok(q) => {
                        self.pos = q;
                        Ok(Item::Corrupt {
                            offset: at,
                            bytes: q - at,
                            reason,
                        })
                    }
                    Err(end) => {
                        self.pos = self.file_len;
                        Ok(Item::Tail {
                            offset: at,
                            bytes: end - at,
                            reason,
                        })
                    }
                }
            }
        }
    }
}

/// The index of the first non-zero byte of `bytes`, if any. Compares 64-byte blocks at a
/// time (which the compiler vectorises), then finds the byte within the block.
fn first_non_zero(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    for block in bytes.chunks(64) {
        if block.iter().fold(0u8, |acc, b| acc | b) != 0 {
            return block.iter().position(|b| *b != 0).map(|i| at + i);
        }
        at += block.len();
    }
    None
}
