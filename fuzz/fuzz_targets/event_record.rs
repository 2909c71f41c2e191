//! Fuzzes the disk queue's event record decoder (`sluice::queue::codec`): any bytes either fail
//! with an error or decode to an event whose encoding is stable (decoding it again and
//! encoding gives the same bytes; the first decode may normalise, e.g. header-name case) —
//! never a panic, never an allocation sized by an unchecked length.
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::queue::codec::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let name = |bytes: &[u8]| -> Arc<str> { Arc::from(String::from_utf8_lossy(bytes).as_ref()) };
    if let Ok(event) = decode(Bytes::copy_from_slice(data), &name) {
        let once = encode(&event).freeze();
        let again = decode(once.clone(), &name).expect("an encoded event decodes");
        assert_eq!(encode(&again).freeze(), once, "encoding is stable");
    }
});
