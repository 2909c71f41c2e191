//! Damaged files: the queue opens anyway, reports what it skipped, and hands out the rest.
//!
//! Records here carry a 48-byte payload, so each takes 64 bytes and a 4 KiB segment holds
//! exactly 64 of them: record `seq` lives in segment `seq / 64` at offset `(seq % 64) * 64`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::small_opts;
use crate::{DiskQueue, Seq, inspect, segment};

const REC: u64 = 64;

fn rec_payload(seq: Seq) -> Vec<u8> {
    let mut p = format!("{seq:>48}").into_bytes();
    p.truncate(48);
    p
}

/// Writes `n` records, closes the queue, and returns the segment paths.
async fn write_closed(dir: &Path, n: u64) -> Vec<PathBuf> {
    let (q, _) = DiskQueue::<()>::open(dir, small_opts()).unwrap();
    for s in 0..n {
        assert_eq!(q.append(&rec_payload(s)).unwrap(), s);
    }
    q.close().await.unwrap();
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn flip(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], offset).unwrap();
}

/// Reopens and reads everything, returning the report and the seqs handed out.
async fn reopen_and_read(dir: &Path) -> (crate::RecoveryReport, Vec<Seq>, DiskQueue) {
    let (q, report) = DiskQueue::<()>::open(dir, small_opts()).unwrap();
    let got = super::drain(&q);
    for (seq, bytes) in &got {
        assert_eq!(bytes, &rec_payload(*seq), "payload of seq {seq}");
    }
    (report, got.into_iter().map(|r| r.0).collect(), q)
}

fn all_but(n: u64, missing: &[Seq]) -> Vec<Seq> {
    (0..n).filter(|s| !missing.contains(s)).collect()
}

#[tokio::test]
async fn bit_flips_in_the_middle_skip_only_the_damaged_records() {
    let dir = tempfile::tempdir().unwrap();
    let segs = write_closed(dir.path(), 200).await;
    assert_eq!(segs.len(), 4);
    flip(&segs[0], 10 * REC + 30); // payload of seq 10
    flip(&segs[1], 5 * REC + 9); // seq field of seq 69
    flip(&segs[1], 6 * REC + 2); // length field of seq 70
    let (report, seqs, q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, all_but(200, &[10, 69, 70]));
    assert_eq!(report.corrupt_records, 3);
    assert_eq!(report.corrupt_bytes, 3 * REC);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(report.skipped.len(), 2);
    assert!(report.skipped[0].reason.contains("checksum"), "{report}");
    let stats = q.stats();
    assert_eq!((stats.corrupt_records, stats.corrupt_bytes), (3, 3 * REC));
    // The skipped seqs count as acknowledged, so acking the rest frees every segment.
    for s in seqs {
        q.ack(s);
    }
    assert_eq!(q.stats().acked_low_water, 200);
}

#[tokio::test]
async fn a_garbage_length_field_is_skipped_without_allocating_it() {
    let dir = tempfile::tempdir().unwrap();
    let segs = write_closed(dir.path(), 64).await;
    patch(&segs[0], 20 * REC, &u32::MAX.to_le_bytes());
    patch(&segs[0], 30 * REC, &(60 * REC as u32).to_le_bytes()); // sane but wrong
    let (report, seqs, _q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, all_but(64, &[20, 30]));
    assert_eq!(report.corrupt_records, 2);
}

#[tokio::test]
async fn a_torn_tail_is_truncated_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let segs = write_closed(dir.path(), 100).await;
    let last = segs.last().unwrap();
    // The live end of the last segment (seqs 64..100), whether or not it was preallocated.
    let len = 36 * REC;
    OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    let (report, seqs, q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, (0..99).collect::<Vec<_>>());
    assert_eq!(report.truncated_bytes, REC - 20);
    assert_eq!(report.corrupt_records, 0);
    assert!(report.skipped[0].truncated);
    assert_eq!(std::fs::metadata(last).unwrap().len(), len - REC);
    assert_eq!(q.append(&rec_payload(99)).unwrap(), 99);
    q.close().await.unwrap();
    drop(q);
    let (report, seqs, _q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    assert_eq!((report.truncated_bytes, report.corrupt_bytes), (0, 0));
}

/// Zeros after the last record are preallocated space (or a write that never reached the
/// disk, so was never reported durable): not damage, not cut off, and overwritten by appends.
#[tokio::test]
async fn a_zero_filled_tail_is_unused_space_and_appends_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let segs = write_closed(dir.path(), 70).await;
    let last = segs.last().unwrap();
    let live = 6 * REC; // seqs 64..70
    let len = std::fs::metadata(last).unwrap().len().max(live + 3000);
    patch(last, live, &vec![0u8; (len - live) as usize]);
    let (report, seqs, q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, (0..70).collect::<Vec<_>>());
    assert_eq!(
        (
            report.truncated_bytes,
            report.corrupt_bytes,
            report.corrupt_records
        ),
        (0, 0, 0)
    );
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!(std::fs::metadata(last).unwrap().len(), len, "not truncated");
    assert_eq!(
        q.stats().bytes_on_disk,
        64 * REC + live,
        "counted to the live end"
    );
    let seq = q.append(&rec_payload(70)).unwrap();
    assert_eq!(seq, 70);
    q.close().await.unwrap();
    drop(q);
    let (report, seqs, _q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, (0..71).collect::<Vec<_>>());
    assert!(report.skipped.is_empty(), "{report}");
}

#[tokio::test]
async fn a_damaged_end_of_an_older_segment_loses_only_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let segs = write_closed(dir.path(), 150).await;
    patch(&segs[0], 60 * REC, &[0xab; 4 * REC as usize]); // seqs 60..64, end of segment 0
    let (report, seqs, q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, all_but(150, &[60, 61, 62, 63]));
    assert_eq!(report.corrupt_records, 4);
    assert_eq!(report.corrupt_bytes, 4 * REC);
    assert_eq!(
        report.truncated_bytes, 0,
        "only the last segment's tail is truncated"
    );
    q.close().await.unwrap();
    drop(q);

    // Zeroed instead, the bytes read as unused space; the lost seqs still show as a gap.
    let dir = tempfile::tempdir().unwrap();
    let segs = write_closed(dir.path(), 150).await;
    patch(&segs[0], 60 * REC, &[0u8; 4 * REC as usize]);
    let (report, seqs, _q) = reopen_and_read(dir.path()).await;
    assert_eq!(seqs, all_but(150, &[60, 61, 62, 63]));
    assert_eq!((report.corrupt_records, report.corrupt_bytes), (4, 0));
    assert_eq!(report.truncated_bytes, 0);
}

#[tokio::test]
async fn a_damaged_checkpoint_replays_everything_instead_of_refusing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
        for s in 0..10 {
            q.append(&rec_payload(s)).unwrap();
            q.ack(s);
        }
        q.append(&rec_payload(10)).unwrap();
        q.close().await.unwrap();
    }
    std::fs::write(dir.path().join("checkpoint"), b"garbage").unwrap();
    let (report, seqs, _q) = reopen_and_read(dir.path()).await;
    assert!(
        matches!(report.checkpoint, crate::CheckpointStatus::Corrupt(_)),
        "{report}"
    );
    assert_eq!(seqs, (0..11).collect::<Vec<_>>());
}

#[tokio::test]
async fn corruption_found_while_reading_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    for s in 0..300 {
        q.append(&rec_payload(s)).unwrap();
    }
    q.wait_durable(299).await.unwrap();
    // The 16 KiB read cache no longer holds segment 0: the reader must go to the file.
    let first = segment::segment_path(dir.path(), 0);
    flip(&first, 3 * REC + 40);
    let got = super::drain(&q);
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        all_but(300, &[3])
    );
    let stats = q.stats();
    assert_eq!((stats.corrupt_records, stats.corrupt_bytes), (1, REC));
}

#[tokio::test]
async fn inspect_reports_a_live_and_a_corrupt_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    for s in 0..100 {
        q.append(&rec_payload(s)).unwrap();
    }
    q.wait_durable(99).await.unwrap();
    for s in 0..70 {
        q.ack(s);
    }
    q.close().await.unwrap();
    // Live: the queue is still open (and locked) while we look.
    let live = inspect(dir.path()).unwrap();
    assert_eq!(live.checkpoint, crate::CheckpointStatus::Loaded(70));
    assert_eq!(live.segments.len(), 1, "segment 0 was deleted: {live}");
    assert_eq!((live.first_seq(), live.last_seq()), (Some(64), Some(99)));
    assert_eq!(live.records(), 36);
    assert_eq!(live.unacked_records(), 30);
    assert_eq!(live.corrupt_records(), 0);
    let table = live.to_string();
    assert!(table.contains("00000000000000000064.seg"), "{table}");
    assert!(table.contains("acked below 70"), "{table}");
    drop(q);

    let segs = segment::list_segments(dir.path()).unwrap();
    flip(&segs[0].1, 10 * REC + 20); // seq 74
    let len = std::fs::metadata(&segs[0].1).unwrap().len();
    assert_eq!(live.segments[0].unused_bytes, len - 36 * REC);
    // A torn record at the live end, followed by zeros if the segment was preallocated.
    patch(&segs[0].1, 36 * REC, &[0xab; 100]);
    let len = len.max(36 * REC + 100);
    let bad = inspect(dir.path()).unwrap();
    assert_eq!(bad.corrupt_records(), 1);
    assert_eq!(bad.segments[0].corrupt_bytes, REC);
    assert_eq!(bad.segments[0].tail_bytes, 100);
    assert!(
        bad.to_string().contains("corrupt    1 records, 164 bytes"),
        "{bad}"
    );
    // Inspecting wrote nothing: the tail is still there for recovery to truncate.
    assert_eq!(std::fs::metadata(&segs[0].1).unwrap().len(), len);
}
