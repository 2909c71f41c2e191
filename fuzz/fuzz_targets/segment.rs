//! Fuzzes the disk queue's segment scanner through `sluice_diskq::inspect`, which reads a queue
//! directory as `sluice queue inspect` does: any bytes in a segment file (records, zeros, a
//! recycled file's old records, garbage) are reported as records, corruption, a torn tail or
//! unused space — never a panic, never an allocation sized by an unchecked length field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    // The segment is named after seq 1000, so records with lower seqs read as old ones.
    let path = dir.path().join("00000000000000001000.seg");
    if std::fs::write(&path, data).is_ok() {
        let _ = sluice_diskq::inspect(dir.path());
    }
});
