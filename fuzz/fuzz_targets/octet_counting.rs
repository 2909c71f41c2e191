//! Fuzzes the `octet_counting` framing decoder; see `check.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("check.rs");

fuzz_target!(|data: &[u8]| check(Framing::OctetCounting, data));
