//! The record: the unit written to a segment file, and its pure encoder and decoder.
//!
//! This module owns the byte layout of one record and nothing else: no files, no sequence
//! bookkeeping. [`decode`] looks at a byte slice and says whether it starts with a complete,
//! checksummed, well-formed record; it never panics, never allocates, and never trusts a length
//! field further than the slice it was given (so a length of 4 GiB read from disk costs nothing).
//!
//! ```text
//! offset  size  field
//! 0       4     length   u32 LE: bits 0..30 payload length in bytes (not counting this 16-byte
//!                        header, at most FORMAT_MAX_PAYLOAD); bit 31 the ENTRIES flag,
//!                        bit 30 the PAD flag
//! 4       4     crc32c   u32 LE: CRC-32C (Castagnoli) over bytes 8 .. 16 + length (seq + payload),
//!                        followed, for a flagged or padding record only, by bytes 0 .. 4 (the
//!                        length field)
//! 8       8     seq      u64 LE: the sequence number of the record's first entry
//! 16      len   payload  an unflagged record: one entry, the payload itself
//!                        a flagged record: u32 LE count (≥ 2), then count × (u32 LE len | bytes)
//! ```
//!
//! A length field with bit 30 set (the PAD flag) makes a **padding record**: no entries, a
//! payload of zeros to skip, and a checksum covering the length field as for a flagged record.
//! Its seq is that of the record after it. The writer puts one in front of a large record so
//! that the record starts at a direct-I/O block boundary and is written from its own buffer,
//! copying nothing (see `direct.rs`); the scanner and the readers step over it. A pad is at
//! least a header long. PAD and ENTRIES together are invalid.
//!
//! A record holds one or more *entries* (what `append` takes); entry `i` of a record has
//! sequence number `seq + i`. A record with one entry is always written unflagged, exactly as
//! before multi-entry records existed, so older queues stay readable.
//!
//! The length field of an unflagged record is not covered by the checksum; a corrupt length is
//! caught either because the checksum over the wrongly-sized payload fails or because it exceeds
//! [`FORMAT_MAX_PAYLOAD`] (any other bit above the limit makes the record invalid too). A
//! flagged record's checksum also covers the length field, so that a flipped flag bit can never
//! turn one entry into several or the reverse. A flagged record whose entries do not tile its
//! payload exactly (a count below 2, an entry running past the payload, bytes left over) is
//! [`Invalid`] even if its checksum matches.

use std::ops::Range;

use crate::{Seq, crc};

/// Size of the fixed record header: length, checksum and sequence number.
pub const HEADER_LEN: usize = 16;

/// Bit 31 of the length field: the payload is a count followed by length-prefixed entries.
pub const ENTRIES_FLAG: u32 = 1 << 31;

/// Bit 30 of the length field: a padding record, whose payload is skipped (see the module doc).
pub const PAD_FLAG: u32 = 1 << 30;

/// Size of the entry count, and of each entry's length prefix, in a flagged record.
pub const ENTRY_PREFIX_LEN: usize = 4;

/// The largest payload the on-disk format accepts (256 MiB). A length field above this is
/// corrupt by definition, whatever `Options::max_record_bytes` says today, so that lowering the
/// option never turns old, valid records into "corrupt" ones.
pub const FORMAT_MAX_PAYLOAD: u32 = 256 * 1024 * 1024;

/// The largest sequence number a valid record may carry (2^63 - 1). Anything above is treated
/// as corrupt, so that no arithmetic on sequence numbers read from disk can overflow.
pub const MAX_SEQ: Seq = u64::MAX >> 1;

/// What [`decode`] found at the start of a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, well-formed record whose checksum matches.
    Record {
        /// The sequence number of its first entry.
        seq: Seq,
        /// Where the payload lies in the input slice.
        payload: Range<usize>,
        /// Total bytes the record occupies (header + payload).
        len: usize,
        /// How many entries it holds (1 for an unflagged record, at least 2 otherwise); walk
        /// them with [`Entries`].
        entries: u32,
    },
    /// A valid padding record: no entries, `len` bytes (header included) to step over.
    Padding {
        /// The seq of the record that follows it.
        seq: Seq,
        /// Total bytes it occupies (header + payload).
        len: usize,
    },
    /// The slice ends before the record does; `need` is the total length the record claims
    /// (header included). Only meaningful if the header itself was readable and sane.
    Incomplete {
        /// Bytes needed from the start of the slice to hold the whole record.
        need: usize,
    },
    /// The bytes cannot be a record.
    Invalid(Invalid),
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The length (flag masked out) exceeds [`FORMAT_MAX_PAYLOAD`].
    LengthTooLarge {
        /// The length field as found, flag included.
        found: u32,
    },
    /// The stored checksum does not match the one computed over seq + payload.
    Checksum {
        /// The checksum computed from the bytes.
        expected: u32,
        /// The checksum stored in the header.
        found: u32,
    },
    /// A flagged record whose checksum matches but whose entries do not tile its payload.
    Entries {
        /// The entry count as stored (0 if the payload is too short to hold one).
        count: u32,
        /// What is wrong with them.
        reason: &'static str,
    },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::LengthTooLarge { found } => write!(
                f,
                "length field {found:#010x} exceeds the format limit of {FORMAT_MAX_PAYLOAD} bytes \
                 (or has an unknown flag bit)"
            ),
            Invalid::Checksum { expected, found } => write!(
                f,
                "checksum mismatch: computed {expected:#010x}, stored {found:#010x}"
            ),
            Invalid::Entries { count, reason } => write!(
                f,
                "malformed multi-entry record (count {count}): expected entries tiling the \
                 payload exactly, found {reason}"
            ),
        }
    }
}

/// Total on-disk size of a record carrying `payload_len` bytes.
pub fn encoded_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Payloads up to this size are checksummed whole when encoded: that costs less than shifting a
/// checksum past them (about 100 ns, see `crc.rs`).
const PRECOMPUTE_CRC_ABOVE: usize = 2048;

/// A record's payload, prepared before its sequence number is known. A large payload is
/// checksummed here, outside the queue's lock, so that encoding it under the lock only
/// combines that checksum with the seq's (a fixed cost whatever the payload size: see
/// `crc.rs`); a small one is cheaper to checksum whole when encoded.
#[derive(Debug, Clone)]
pub struct Prepared<'a> {
    /// The entry count, in front of `body`, for a flagged record.
    count: Option<[u8; ENTRY_PREFIX_LEN]>,
    body: &'a [u8],
    entries: u32,
    /// For a large payload: its checksum, and the operator moving the seq's checksum past it.
    payload_crc: Option<(u32, u32)>,
}

impl<'a> Prepared<'a> {
    fn new(count: Option<[u8; ENTRY_PREFIX_LEN]>, body: &'a [u8], entries: u32) -> Self {
        let mut p = Prepared {
            count,
            body,
            entries,
            payload_crc: None,
        };
        let len = p.payload_len();
        if len > PRECOMPUTE_CRC_ABOVE {
            let crc = crc32c::crc32c_append(crc32c::crc32c(p.head()), body);
            p.payload_crc = Some((crc, crc::shift_op(len)));
        }
        p
    }

    /// The payload bytes in front of `body`: the entry count of a flagged record.
    fn head(&self) -> &[u8] {
        self.count.as_ref().map_or(&[], |c| c.as_slice())
    }

    /// An unflagged record holding `entry`.
    pub fn single(entry: &'a [u8]) -> Self {
        Self::new(None, entry, 1)
    }

    /// A flagged record of `entries` entries, `body` holding them as `u32 len | bytes` each.
    /// The caller guarantees the body is well-formed ([`crate::RecordBatch`] builds it).
    pub(crate) fn multi(entries: u32, body: &'a [u8]) -> Self {
        Self::new(Some(entries.to_le_bytes()), body, entries)
    }

    /// CRC-32C over `seq` and the payload.
    fn crc(&self, seq_bytes: &[u8; 8]) -> u32 {
        let seq_crc = crc32c::crc32c(seq_bytes);
        match self.payload_crc {
            Some((payload_crc, shift)) => crc::combine(seq_crc, payload_crc, shift),
            None => crc32c::crc32c_append(crc32c::crc32c_append(seq_crc, self.head()), self.body),
        }
    }

    /// Payload bytes (what `max_record_bytes` limits).
    pub fn payload_len(&self) -> usize {
        self.head().len() + self.body.len()
    }

    /// How many entries (and so sequence numbers) the record holds.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Appends the record, numbered `seq`, to `buf`: 16 header bytes, then the payload.
    ///
    /// The caller guarantees `payload_len() <= FORMAT_MAX_PAYLOAD` (the queue checks
    /// `max_record_bytes`, which is capped at that, before calling).
    pub fn encode_into(&self, buf: &mut Vec<u8>, seq: Seq) {
        let payload_len = self.payload_len();
        debug_assert!(payload_len <= FORMAT_MAX_PAYLOAD as usize);
        // Truncation is impossible: the length is bounded by FORMAT_MAX_PAYLOAD above.
        let mut field = payload_len as u32;
        if self.count.is_some() {
            field |= ENTRIES_FLAG;
        }
        let seq_bytes = seq.to_le_bytes();
        let mut crc = self.crc(&seq_bytes);
        if self.count.is_some() {
            crc = crc32c::crc32c_append(crc, &field.to_le_bytes());
        }
        buf.reserve(HEADER_LEN + payload_len);
        buf.extend_from_slice(&header(field, crc, seq));
        buf.extend_from_slice(self.head());
        buf.extend_from_slice(self.body);
    }
}

/// The 16 header bytes of a record: its length field (flag included), checksum and seq.
pub(crate) fn header(field: u32, crc: u32, seq: Seq) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..4].copy_from_slice(&field.to_le_bytes());
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header[8..].copy_from_slice(&seq.to_le_bytes());
    header
}

/// Appends the encoding of an unflagged record holding one entry to `buf`.
///
/// The caller guarantees `payload.len() <= FORMAT_MAX_PAYLOAD`.
pub fn encode_into(buf: &mut Vec<u8>, seq: Seq, payload: &[u8]) {
    Prepared::single(payload).encode_into(buf, seq);
}

/// Fills `out` (at least [`HEADER_LEN`] bytes, at most a header plus [`FORMAT_MAX_PAYLOAD`])
/// with one padding record whose seq is `seq`, the seq of the record that follows it.
pub fn write_padding(out: &mut [u8], seq: Seq) {
    debug_assert!(out.len() >= HEADER_LEN);
    let Some((head, payload)) = out.split_at_mut_checked(HEADER_LEN) else {
        return;
    };
    payload.fill(0);
    // The caller's bound keeps the length within the field.
    let field = payload.len() as u32 | PAD_FLAG;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload);
    let crc = crc32c::crc32c_append(crc, &field.to_le_bytes());
    head.copy_from_slice(&header(field, crc, seq));
}

/// The header fields, read without any validation beyond splitting the flags off the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length as stored, with [`ENTRIES_FLAG`] and [`PAD_FLAG`] masked out.
    pub len: u32,
    /// Whether [`ENTRIES_FLAG`] is set (the payload holds a count and length-prefixed entries).
    pub multi: bool,
    /// Whether [`PAD_FLAG`] is set (a padding record).
    pub pad: bool,
    /// Checksum as stored.
    pub crc: u32,
    /// Sequence number (of the first entry) as stored.
    pub seq: Seq,
}

impl Header {
    /// The length field exactly as stored, flags included.
    pub fn field(&self) -> u32 {
        let mut field = self.len;
        if self.multi {
            field |= ENTRIES_FLAG;
        }
        if self.pad {
            field |= PAD_FLAG;
        }
        field
    }
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Reads the header at the start of `buf`, or `None` if fewer than [`HEADER_LEN`] bytes.
pub fn read_header(buf: &[u8]) -> Option<Header> {
    let field = u32_at(buf, 0)?;
    let crc = u32_at(buf, 4)?;
    let seq: [u8; 8] = buf.get(8..HEADER_LEN)?.try_into().ok()?;
    Some(Header {
        len: field & !(ENTRIES_FLAG | PAD_FLAG),
        multi: field & ENTRIES_FLAG != 0,
        pad: field & PAD_FLAG != 0,
        crc,
        seq: u64::from_le_bytes(seq),
    })
}

/// The entries of a record payload, as ranges into that payload, in order.
///
/// Stops early (without panicking) if the payload is malformed; [`decode`] has rejected such
/// records already, so a payload it accepted yields exactly its `entries` ranges.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    payload: &'a [u8],
    multi: bool,
    pos: usize,
    left: u32,
}

impl<'a> Entries<'a> {
    /// Walks `payload`, the payload of a record whose header says `multi` (flagged) or not.
    pub fn new(payload: &'a [u8], multi: bool) -> Self {
        let (pos, left) = if multi {
            match u32_at(payload, 0) {
                Some(count) => (ENTRY_PREFIX_LEN, count),
                None => (0, 0),
            }
        } else {
            (0, 1)
        };
        Entries {
            payload,
            multi,
            pos,
            left,
        }
    }
}

impl Entries<'_> {
    /// How many entries are left, as the payload claims (not checked against its length).
    pub fn remaining(&self) -> u32 {
        self.left
    }
}

impl Iterator for Entries<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if !self.multi {
            self.pos = self.payload.len();
            return Some(0..self.pos);
        }
        let entry = u32_at(self.payload, self.pos).and_then(|len| {
            let start = self.pos + ENTRY_PREFIX_LEN;
            let end = start.checked_add(len as usize)?;
            (end <= self.payload.len()).then_some(start..end)
        });
        match entry {
            Some(r) => {
                self.pos = r.end;
                Some(r)
            }
            None => {
                self.left = 0;
                None
            }
        }
    }
}

/// Checks that a flagged record's payload is a count of at least 2 followed by exactly that
/// many entries filling it; returns the count.
fn check_entries(payload: &[u8]) -> Result<u32, Invalid> {
    let Some(count) = u32_at(payload, 0) else {
        return Err(Invalid::Entries {
            count: 0,
            reason: "a payload too short for the entry count",
        });
    };
    if count < 2 {
        return Err(Invalid::Entries {
            count,
            reason: "fewer than 2 entries",
        });
    }
    let mut walk = Entries::new(payload, true);
    // At most payload.len() / 4 steps, whatever the count claims.
    let found = walk.by_ref().take(count as usize).count();
    if found != count as usize {
        return Err(Invalid::Entries {
            count,
            reason: "an entry running past the end of the payload",
        });
    }
    if walk.pos != payload.len() {
        return Err(Invalid::Entries {
            count,
            reason: "bytes left after the last entry",
        });
    }
    Ok(count)
}

/// Decodes the record at the start of `buf`.
///
/// Never panics and never allocates, whatever the input.
pub fn decode(buf: &[u8]) -> Decoded {
    let Some(h) = read_header(buf) else {
        return Decoded::Incomplete { need: HEADER_LEN };
    };
    if h.len > FORMAT_MAX_PAYLOAD || h.multi && h.pad {
        return Decoded::Invalid(Invalid::LengthTooLarge { found: h.field() });
    }
    let len = HEADER_LEN + h.len as usize;
    let Some(body) = buf.get(8..len) else {
        return Decoded::Incomplete { need: len };
    };
    let mut computed = crc32c::crc32c(body);
    if h.multi || h.pad {
        computed = crc32c::crc32c_append(computed, &h.field().to_le_bytes());
    }
    if computed != h.crc {
        return Decoded::Invalid(Invalid::Checksum {
            expected: computed,
            found: h.crc,
        });
    }
    if h.pad {
        return Decoded::Padding { seq: h.seq, len };
    }
    let payload = HEADER_LEN..len;
    let entries = if h.multi {
        match check_entries(body.get(HEADER_LEN - 8..).unwrap_or_default()) {
            Ok(n) => n,
            Err(why) => return Decoded::Invalid(why),
        }
    } else {
        1
    };
    Decoded::Record {
        seq: h.seq,
        payload,
        len,
        entries,
    }
}
