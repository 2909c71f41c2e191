//! The segment [`Scanner`] on hand-made bytes: resynchronisation after damage, torn tails,
//! and zeros (unused preallocated space) told apart from torn writes.

use std::fs::File;
use std::io::Write;

use crate::Seq;
use crate::record::{self, Decoded, HEADER_LEN, MAX_SEQ, encode_into};
use crate::segment::{Item, Scanner};

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
fn an_all_zero_header_is_never_a_record() {
    // A zero header claims an empty unflagged payload, seq 0 and checksum 0; its checksum
    // is CRC-32C (init and xorout 0xFFFFFFFF) over the eight zero bytes of seq, not 0.
    assert_eq!(crc32c::crc32c(&[0u8; 8]), 0x8c28_b28a);
    assert_ne!(crc32c::crc32c(&[0u8; 8]), 0);
    assert!(!matches!(
        record::decode(&[0u8; HEADER_LEN]),
        Decoded::Record { .. }
    ));
}

/// A recycled segment file's old life: records with seqs `first..first + n` from offset 0,
/// cut at `len` bytes (mid-record, as a new life's live end usually lands).
fn old_life(first: Seq, n: u64, len: usize) -> Vec<u8> {
    let mut old = Vec::new();
    for seq in first..first + n {
        encode_into(&mut old, seq, &[0xab; 700]);
    }
    old.truncate(len);
    old
}

#[test]
fn old_records_past_the_zero_padded_live_end_are_unused_space() {
    // The new life: three records from seq 1000, zero padding to the block boundary (as every
    // direct write leaves it), then what the file held before, from that boundary on.
    let old = old_life(10, 100, 60_000);
    let mut buf = Vec::new();
    for seq in 1000..1003 {
        encode_into(&mut buf, seq, b"new");
    }
    let live_end = buf.len() as u64;
    buf.resize(4096, 0);
    buf.extend_from_slice(&old[4096..]);
    let items = scan_all(&buf, 1000);
    assert_eq!(seqs(&items), vec![1000, 1001, 1002]);
    assert_eq!(
        items.last(),
        Some(&Item::Unused {
            offset: live_end,
            bytes: buf.len() as u64 - live_end
        })
    );
    // A live end on a block boundary needs no padding; nothing written yet, neither.
    let mut aligned = Vec::new();
    encode_into(&mut aligned, 1000, &[1; 4096 - HEADER_LEN]);
    aligned.extend_from_slice(&old[4096..]);
    assert_eq!(seqs(&scan_all(&aligned, 1000)), vec![1000]);
    assert!(matches!(
        scan_all(&aligned, 1000).last(),
        Some(Item::Unused { offset: 4096, .. })
    ));
    assert!(matches!(
        scan_all(&old, 1000)[..],
        [Item::Unused { offset: 0, .. }]
    ));
}

#[test]
fn old_records_without_the_padding_or_after_a_new_record_are_not_unused() {
    let old = old_life(10, 100, 60_000);
    let mut buf = Vec::new();
    encode_into(&mut buf, 1000, b"new");
    // Stray bytes right after the live end (no zero padding): a torn write, not old data.
    let mut torn = buf.clone();
    torn.extend_from_slice(&old[100..]);
    assert!(
        matches!(scan_all(&torn, 1000).last(), Some(Item::Tail { .. })),
        "{:?}",
        scan_all(&torn, 1000)
    );
    // A valid new record after the padding means the gap is damage, even with old ones later.
    let mut gap = buf.clone();
    gap.resize(4096, 0);
    encode_into(&mut gap, 1001, b"after the gap");
    gap.extend_from_slice(&old[10_000..]);
    let items = scan_all(&gap, 1000);
    assert_eq!(seqs(&items), vec![1000, 1001]);
    assert!(matches!(items[1], Item::Corrupt { .. }), "{items:?}");
}

#[test]
fn zeros_after_the_last_record_are_unused_space() {
    let mut buf = Vec::new();
    for seq in 0..3 {
        encode_into(&mut buf, seq, b"abc");
    }
    let good = buf.len() as u64;
    buf.extend_from_slice(&[0u8; 200_000]);
    let items = scan_all(&buf, 0);
    assert_eq!(seqs(&items), vec![0, 1, 2]);
    assert_eq!(
        items.last(),
        Some(&Item::Unused {
            offset: good,
            bytes: 200_000
        })
    );
    // A file of nothing but zeros is all unused.
    assert_eq!(
        scan_all(&[0u8; 4096], 7),
        vec![Item::Unused {
            offset: 0,
            bytes: 4096
        }]
    );
}

#[test]
fn bytes_between_zeros_are_a_torn_tail_not_unused_space() {
    let mut buf = Vec::new();
    for seq in 0..3 {
        encode_into(&mut buf, seq, b"abc");
    }
    let good = buf.len() as u64;
    // A crash persisted a later page of a write but not the earlier one: zeros, then part
    // of a record, then the preallocated zeros.
    let mut later = Vec::new();
    encode_into(&mut later, 5, &[7u8; 300]);
    buf.extend_from_slice(&[0u8; 5000]);
    buf.extend_from_slice(&later[100..]);
    let data_end = buf.len() as u64;
    buf.extend_from_slice(&[0u8; 100_000]);
    let items = scan_all(&buf, 0);
    assert_eq!(seqs(&items), vec![0, 1, 2]);
    assert!(
        matches!(items.last(), Some(Item::Tail { offset, bytes, .. })
            if *offset == good && *bytes == data_end - good),
        "{items:?}"
    );

    // A partial record followed by zeros: the torn bytes are the partial record's.
    let mut torn = Vec::new();
    encode_into(&mut torn, 0, b"abc");
    let mut rec = Vec::new();
    encode_into(&mut rec, 1, b"abcdefgh");
    torn.extend_from_slice(&rec[..rec.len() - 3]);
    torn.extend_from_slice(&[0u8; 3000]);
    let items = scan_all(&torn, 0);
    assert_eq!(seqs(&items), vec![0]);
    assert!(
        matches!(items.last(), Some(Item::Tail { offset: 19, bytes, .. }) if *bytes == rec.len() as u64 - 3),
        "{items:?}"
    );
}

#[test]
fn a_valid_record_after_zeros_is_found_and_the_zeros_are_corrupt() {
    let mut buf = Vec::new();
    encode_into(&mut buf, 0, b"abc");
    let hole = buf.len() as u64;
    buf.extend_from_slice(&[0u8; 70_000]);
    encode_into(&mut buf, 3, b"def");
    let end = buf.len() as u64;
    buf.extend_from_slice(&[0u8; 1000]);
    let items = scan_all(&buf, 0);
    assert_eq!(seqs(&items), vec![0, 3]);
    assert!(matches!(items[1], Item::Corrupt { offset, bytes: 70_000, .. } if offset == hole));
    assert_eq!(
        items.last(),
        Some(&Item::Unused {
            offset: end,
            bytes: 1000
        })
    );
}

#[test]
fn a_partial_record_is_a_tail() {
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
    /// intact record nor invents one, whether records hold one entry or several, and whether
    /// padding records (which it steps over) stand in front of them or not.
    #[test]
    fn scanner_recovers_exactly_the_intact_records(
        sizes in proptest::collection::vec((0usize..120, 1u64..6, 0usize..600), 1..40),
        flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 0..6),
        cut in proptest::option::of(0.0f64..1.0),
    ) {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        let mut seq = 100;
        for (i, (size, count, pad)) in sizes.iter().enumerate() {
            if *pad >= 300 {
                let at = buf.len();
                buf.resize(at + (pad - 300).max(HEADER_LEN), 0);
                record::write_padding(&mut buf[at..], seq);
            }
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

/// One piece of a made-up segment file.
#[derive(Debug, Clone)]
enum Piece {
    /// A valid record with this seq and payload length.
    Record(Seq, usize),
    /// A padding record with this seq and total length (at least a header).
    Pad(Seq, usize),
    Zeros(usize),
    Garbage(Vec<u8>),
}

fn piece() -> impl proptest::strategy::Strategy<Value = Piece> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u64..3000, 0usize..900).prop_map(|(s, n)| Piece::Record(s, n)),
        1 => (0u64..3000, HEADER_LEN..700).prop_map(|(s, n)| Piece::Pad(s, n)),
        1 => (1usize..9000).prop_map(Piece::Zeros),
        1 => proptest::collection::vec(any::<u8>(), 1..300).prop_map(Piece::Garbage),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Whatever the bytes (records and padding with any seqs, runs of zeros, garbage), a scan ends without
    /// a panic, hands out records in increasing seq order at or above the expected one, and
    /// its items are in order within the file, none overlapping the next.
    #[test]
    fn any_file_scans_to_the_end_in_order(
        pieces in proptest::collection::vec(piece(), 0..40),
        expected in 0u64..2000,
    ) {
        let mut buf = Vec::new();
        for p in &pieces {
            match p {
                Piece::Record(seq, n) => encode_into(&mut buf, *seq, &vec![0x5a; *n]),
                Piece::Pad(seq, n) => {
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    record::write_padding(&mut buf[at..], *seq);
                }
                Piece::Zeros(n) => buf.resize(buf.len() + n, 0),
                Piece::Garbage(g) => buf.extend_from_slice(g),
            }
        }
        let items = scan_all(&buf, expected);
        let (mut pos, mut next_seq) = (0u64, expected);
        for item in &items {
            let (offset, len) = match item {
                Item::Record { seq, offset, len, entries } => {
                    proptest::prop_assert!(*seq >= next_seq, "{items:?}");
                    next_seq = seq + u64::from(*entries);
                    (*offset, *len)
                }
                Item::Corrupt { offset, bytes, .. }
                | Item::Tail { offset, bytes, .. }
                | Item::Unused { offset, bytes } => (*offset, *bytes),
                Item::End => unreachable!("scan_all stops at End"),
            };
            proptest::prop_assert!(offset >= pos && offset + len <= buf.len() as u64, "{items:?}");
            pos = offset + len;
        }
    }

    /// A recycled file after a crash: new records, the zero padding of their last block, and
    /// the previous life's records from that block boundary on. Exactly the new records come
    /// back, and the rest is unused space, never damage.
    #[test]
    fn a_recycled_files_old_life_is_never_damage(
        new in proptest::collection::vec(0usize..3000, 0..12),
        old_first in 0u64..99_000,
        old_size in 16usize..2000,
    ) {
        let first = 100_000;
        let mut buf = Vec::new();
        for (i, n) in new.iter().enumerate() {
            encode_into(&mut buf, first + i as u64, &vec![0x11; *n]);
        }
        let live_end = buf.len() as u64;
        let boundary = buf.len().next_multiple_of(4096);
        buf.resize(boundary, 0);
        // The old life's seqs are all below the new ones (seqs only grow): it starts at
        // `old_first` unless that would carry its last record up to `first`.
        let record = old_size + HEADER_LEN;
        let count = (boundary + 3 * record).div_ceil(record) as u64;
        let old_first = old_first.min(first - count);
        let mut old = Vec::new();
        while old.len() < boundary + 3 * record {
            let seq = old_first + (old.len() / record) as u64;
            encode_into(&mut old, seq, &vec![0x22; old_size]);
        }
        buf.extend_from_slice(&old[boundary..]);
        let items = scan_all(&buf, first);
        proptest::prop_assert_eq!(
            seqs(&items),
            (first..first + new.len() as u64).collect::<Vec<_>>()
        );
        proptest::prop_assert_eq!(
            items.last(),
            Some(&Item::Unused { offset: live_end, bytes: buf.len() as u64 - live_end })
        );
    }
}
