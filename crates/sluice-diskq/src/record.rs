//! The record: the unit written to a segment file, and its pure encoder and decoder.
//!
//! This module owns the byte layout of one record and nothing else: no files, no sequence
//! bookkeeping. [`decode`] looks at a byte slice and says whether it starts with a complete,
//! checksummed record; it never panics, never allocates, and never trusts the length field
//! further than the slice it was given (so a length of 4 GiB read from disk costs nothing).
//!
//! ```text
//! offset  size  field
//! 0       4     length   u32 LE: payload length in bytes (not counting this 16-byte header)
//! 4       4     crc32c   u32 LE: CRC-32C (Castagnoli) over bytes 8 .. 16 + length (seq + payload)
//! 8       8     seq      u64 LE: the record's sequence number
//! 16      len   payload  opaque bytes
//! ```
//!
//! The length is not covered by the checksum; a corrupt length is caught either because the
//! checksum over the wrongly-sized payload fails or because it exceeds [`FORMAT_MAX_PAYLOAD`].

use crate::Seq;

/// Size of the fixed record header: length, checksum and sequence number.
pub const HEADER_LEN: usize = 16;

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
    /// A complete record whose checksum matches.
    Record {
        /// The record's sequence number.
        seq: Seq,
        /// Where the payload lies in the input slice.
        payload: std::ops::Range<usize>,
        /// Total bytes the record occupies (header + payload).
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
    /// The length field exceeds [`FORMAT_MAX_PAYLOAD`].
    LengthTooLarge {
        /// The length field as found.
        found: u32,
    },
    /// The stored checksum does not match the one computed over seq + payload.
    Checksum {
        /// The checksum computed from the bytes.
        expected: u32,
        /// The checksum stored in the header.
        found: u32,
    },
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::LengthTooLarge { found } => write!(
                f,
                "length field {found} exceeds the format limit of {FORMAT_MAX_PAYLOAD} bytes"
            ),
            Invalid::Checksum { expected, found } => write!(
                f,
                "checksum mismatch: computed {expected:#010x}, stored {found:#010x}"
            ),
        }
    }
}

/// Total on-disk size of a record carrying `payload_len` bytes.
pub fn encoded_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

/// Appends the encoding of one record to `buf`.
///
/// The caller guarantees `payload.len() <= FORMAT_MAX_PAYLOAD` (the queue checks
/// `max_record_bytes`, which is capped at that, before calling).
pub fn encode_into(buf: &mut Vec<u8>, seq: Seq, payload: &[u8]) {
    debug_assert!(payload.len() <= FORMAT_MAX_PAYLOAD as usize);
    let seq_bytes = seq.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq_bytes), payload);
    buf.reserve(HEADER_LEN + payload.len());
    // Truncation is impossible: the length is bounded by FORMAT_MAX_PAYLOAD above.
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq_bytes);
    buf.extend_from_slice(payload);
}

/// The three header fields, read without any validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length as stored.
    pub len: u32,
    /// Checksum as stored.
    pub crc: u32,
    /// Sequence number as stored.
    pub seq: Seq,
}

/// Reads the header at the start of `buf`, or `None` if fewer than [`HEADER_LEN`] bytes.
pub fn read_header(buf: &[u8]) -> Option<Header> {
    let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
    ] = *h;
    Some(Header {
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        crc: u32::from_le_bytes([c0, c1, c2, c3]),
        seq: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    })
}

/// Decodes the record at the start of `buf`.
///
/// Never panics and never allocates, whatever the input.
pub fn decode(buf: &[u8]) -> Decoded {
    let Some(h) = read_header(buf) else {
        return Decoded::Incomplete { need: HEADER_LEN };
    };
    if h.len > FORMAT_MAX_PAYLOAD {
        return Decoded::Invalid(Invalid::LengthTooLarge { found: h.len });
    }
    let len = HEADER_LEN + h.len as usize;
    let Some(body) = buf.get(8..len) else {
        return Decoded::Incomplete { need: len };
    };
    let computed = crc32c::crc32c(body);
    if computed != h.crc {
        return Decoded::Invalid(Invalid::Checksum {
            expected: computed,
            found: h.crc,
        });
    }
    Decoded::Record {
        seq: h.seq,
        payload: HEADER_LEN..len,
        len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_preserves_seq_and_payload() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 42, b"hello");
        encode_into(&mut buf, 43, b"");
        match decode(&buf) {
            Decoded::Record { seq, payload, len } => {
                assert_eq!(seq, 42);
                assert_eq!(&buf[payload], b"hello");
                assert_eq!(len, HEADER_LEN + 5);
                assert!(matches!(
                    decode(&buf[len..]),
                    Decoded::Record {
                        seq: 43,
                        len: HEADER_LEN,
                        ..
                    }
                ));
            }
            other => panic!("expected a record, found {other:?}"),
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 7, b"some payload bytes");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode(&bad), Decoded::Record { seq: 7, .. }),
                "bit {bit} flip went unnoticed"
            );
        }
    }

    #[test]
    fn huge_length_is_rejected_without_allocating() {
        let mut buf = vec![0xff, 0xff, 0xff, 0xff];
        buf.extend_from_slice(&[0; 12]);
        assert_eq!(
            decode(&buf),
            Decoded::Invalid(Invalid::LengthTooLarge { found: u32::MAX })
        );
    }

    #[test]
    fn zero_filled_bytes_are_not_a_record() {
        assert!(matches!(
            decode(&[0u8; 64]),
            Decoded::Invalid(Invalid::Checksum { .. })
        ));
    }

    #[test]
    fn short_input_is_incomplete() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 1, b"abcdef");
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Decoded::Incomplete { .. }));
        }
    }
}
