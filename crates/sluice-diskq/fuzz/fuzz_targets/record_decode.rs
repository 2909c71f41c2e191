//! Fuzzes the record decoder: arbitrary bytes must never panic, never claim a record longer
//! than the input, every record accepted must hold exactly the entries it claims, and must
//! re-encode (as a plain record, or as a `RecordBatch` when flagged) to exactly the same bytes.
//!
//! A padding record must lie within the input and, when its payload is zeros, re-encode to the
//! same bytes.
//!
//! Each input is decoded twice: as it is, and with its checksum fixed up to match whatever its
//! length field claims, so that the fuzzer reaches the multi-entry parser without having to
//! guess CRCs.
//!
//! Run with `cargo +nightly fuzz run record_decode` from `crates/sluice-diskq/fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_diskq::RecordBatch;
use sluice_diskq::record::{
    Decoded, Entries, FORMAT_MAX_PAYLOAD, HEADER_LEN, decode, encode_into, read_header,
    write_padding,
};

fn check(data: &[u8]) {
    match decode(data) {
        Decoded::Record {
            seq,
            payload,
            len,
            entries,
        } => {
            assert!(len <= data.len());
            assert_eq!(payload.start, HEADER_LEN);
            assert_eq!(payload.end, len);
            assert!(payload.len() <= FORMAT_MAX_PAYLOAD as usize);
            assert!(entries >= 1);
            let body = &data[payload];
            let multi = entries > 1;
            let parts: Vec<&[u8]> = Entries::new(body, multi).map(|r| &body[r]).collect();
            assert_eq!(parts.len(), entries as usize);
            let mut again = Vec::new();
            if multi {
                let mut batch = RecordBatch::new();
                for part in &parts {
                    batch.push(part);
                }
                assert_eq!(batch.payload_bytes(), body.len());
                batch.prepare().unwrap().encode_into(&mut again, seq);
            } else {
                encode_into(&mut again, seq, body);
            }
            assert_eq!(&again[..], &data[..len]);
        }
        Decoded::Padding { seq, len } => {
            assert!((HEADER_LEN..=data.len()).contains(&len));
            // A pad's payload is meant to be zeros; one that is re-encodes to the same bytes.
            if data[HEADER_LEN..len].iter().all(|b| *b == 0) {
                let mut again = vec![1u8; len];
                write_padding(&mut again, seq);
                assert_eq!(&again[..], &data[..len]);
            }
        }
        Decoded::Incomplete { need } => assert!(need > data.len()),
        Decoded::Invalid(_) => {}
    }
    // Walking any bytes as entries stops without panicking, inside the slice.
    for r in Entries::new(data, true) {
        assert!(r.end <= data.len());
    }
}

/// `data` with the checksum its length field and flag call for, if it holds that many bytes.
fn with_fixed_crc(data: &[u8]) -> Option<Vec<u8>> {
    let h = read_header(data)?;
    let end = HEADER_LEN.checked_add(h.len as usize)?;
    let body = data.get(8..end)?;
    let mut crc = crc32c::crc32c(body);
    if h.multi || h.pad {
        crc = crc32c::crc32c_append(crc, &h.field().to_le_bytes());
    }
    let mut fixed = data.to_vec();
    fixed[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = with_fixed_crc(data) {
        check(&fixed);
    }
});
