//! The record format on its own (`record.rs`): plain and flagged records round-trip, and
//! damage (bit flips, impossible lengths, zeros, short input, malformed entries, unknown flag
//! bits) decodes as what it is, never as a record. Padding records have `padding.rs`.

use crate::Seq;
use crate::record::*;

#[test]
fn round_trip_preserves_seq_and_payload() {
    let mut buf = Vec::new();
    encode_into(&mut buf, 42, b"hello");
    encode_into(&mut buf, 43, b"");
    match decode(&buf) {
        Decoded::Record {
            seq,
            payload,
            len,
            entries,
        } => {
            assert_eq!((seq, entries), (42, 1));
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

/// A flagged record over an arbitrary payload, with a checksum that matches it.
fn flagged(seq: Seq, payload: &[u8]) -> Vec<u8> {
    let field = payload.len() as u32 | ENTRIES_FLAG;
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    crc = crc32c::crc32c_append(crc, &field.to_le_bytes());
    let mut buf = Vec::new();
    buf.extend_from_slice(&field.to_le_bytes());
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

fn entries_payload(count: u32, entries: &[&[u8]]) -> Vec<u8> {
    let mut p = count.to_le_bytes().to_vec();
    for e in entries {
        p.extend_from_slice(&(e.len() as u32).to_le_bytes());
        p.extend_from_slice(e);
    }
    p
}

#[test]
fn a_well_formed_flagged_record_decodes_to_its_entries() {
    let payload = entries_payload(3, &[b"a", b"", b"ccc"]);
    let buf = flagged(9, &payload);
    let Decoded::Record {
        seq,
        payload: range,
        len,
        entries,
    } = decode(&buf)
    else {
        panic!("expected a record, found {:?}", decode(&buf));
    };
    assert_eq!((seq, len, entries), (9, buf.len(), 3));
    let body = &buf[range];
    let got: Vec<&[u8]> = Entries::new(body, true).map(|r| &body[r]).collect();
    assert_eq!(got, vec![&b"a"[..], b"", b"ccc"]);
}

#[test]
fn malformed_entries_are_invalid_even_with_a_matching_checksum() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("count 0", entries_payload(0, &[])),
        ("count 1", entries_payload(1, &[b"solo"])),
        ("no count", vec![2, 0]),
        ("empty payload", Vec::new()),
        ("entry past the end", entries_payload(3, &[b"a", b"b"])),
        ("huge count", entries_payload(u32::MAX, &[b"a", b"b"])),
        ("leftover bytes", {
            let mut p = entries_payload(2, &[b"a", b"b"]);
            p.push(0);
            p
        }),
        ("entry length past the end", {
            let mut p = entries_payload(2, &[b"a", b"b"]);
            let n = p.len();
            p[n - 5..n - 1].copy_from_slice(&1000u32.to_le_bytes());
            p
        }),
    ];
    for (name, payload) in cases {
        let buf = flagged(1, &payload);
        assert!(
            matches!(decode(&buf), Decoded::Invalid(Invalid::Entries { .. })),
            "{name}: {:?}",
            decode(&buf)
        );
        // Walking a malformed payload stops without panicking.
        let _ = Entries::new(&payload, true).count();
    }
}

#[test]
fn unknown_bits_in_the_length_field_are_invalid() {
    for bit in 28..30 {
        let mut buf = Vec::new();
        encode_into(&mut buf, 1, b"abc");
        let field = 3u32 | 1 << bit;
        buf[..4].copy_from_slice(&field.to_le_bytes());
        assert_eq!(
            decode(&buf),
            Decoded::Invalid(Invalid::LengthTooLarge { found: field })
        );
    }
}

#[test]
fn every_single_bit_flip_of_a_flagged_record_is_detected() {
    let buf = flagged(7, &entries_payload(2, &[b"first", b"second"]));
    assert!(matches!(decode(&buf), Decoded::Record { entries: 2, .. }));
    for bit in 0..buf.len() * 8 {
        let mut bad = buf.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !matches!(decode(&bad), Decoded::Record { .. }),
            "bit {bit} flip went unnoticed"
        );
    }
}

#[test]
fn setting_the_flag_on_a_plain_record_whose_payload_parses_is_detected() {
    // A plain record whose payload happens to look like entries.
    let payload = entries_payload(2, &[b"x", b"y"]);
    let mut buf = Vec::new();
    encode_into(&mut buf, 3, &payload);
    buf[3] ^= 0x80;
    assert!(matches!(
        decode(&buf),
        Decoded::Invalid(Invalid::Checksum { .. })
    ));
}
