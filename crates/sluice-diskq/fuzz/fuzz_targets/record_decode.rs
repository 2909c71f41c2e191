//! Fuzzes the record decoder: arbitrary bytes must never panic, never claim a record longer
//! than the input, and every record accepted must re-encode to exactly the same bytes.
//!
//! Run with `cargo +nightly fuzz run record_decode` from `crates/sluice-diskq/fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_diskq::record::{Decoded, FORMAT_MAX_PAYLOAD, HEADER_LEN, decode, encode_into};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Decoded::Record { seq, payload, len } => {
            assert!(len <= data.len());
            assert_eq!(payload.start, HEADER_LEN);
            assert_eq!(payload.end, len);
            assert!(payload.len() <= FORMAT_MAX_PAYLOAD as usize);
            let mut again = Vec::new();
            encode_into(&mut again, seq, &data[payload]);
            assert_eq!(&again[..], &data[..len]);
        }
        Decoded::Incomplete { need } => assert!(need > data.len()),
        Decoded::Invalid(_) => {}
    }
});
