//! Spare segments: zero-filled in the background only when there is room and syncs are
//! small, or recycled from an acknowledged segment; turned into the next segment at rollover,
//! replaced, and cleaned up on open and on close.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{drain, fill, small_opts};
use crate::prep::SPARE_FILE;
use crate::{DiskQueue, Options, segment};

fn spare_len(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join(SPARE_FILE))
        .ok()
        .map(|m| m.len())
}

/// Whether `dir` takes direct I/O, which recycling needs; if not, says the test is skipped.
fn recycling_possible(dir: &Path) -> bool {
    let direct = crate::direct::supported(dir);
    if !direct {
        eprintln!("skipped: recycling needs direct I/O, which this filesystem refuses");
    }
    direct
}

/// Waits (up to 10 s) until the queue reports a complete spare.
async fn spare_ready(q: &DiskQueue, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.stats().spare_bytes != bytes {
        assert!(Instant::now() < deadline, "no spare: {:?}", q.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_idle_queue_prepares_no_spare_until_a_quarter_of_a_segment_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 64 * 1024;
    let opts = Options {
        segment_bytes: seg,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    // About 300 bytes: far below a quarter of the segment.
    fill(&q, 0, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(spare_len(dir.path()), None, "{:?}", q.stats());
    let segs = segment::list_segments(dir.path()).unwrap();
    let len = std::fs::metadata(&segs[0].1).unwrap().len();
    assert!(
        len <= 4096,
        "the first segment grows from empty (to a whole block, written directly): {len} bytes"
    );
    // A quarter of the segment written: the writer wakes the preparer.
    fill(&q, 5, 400).await;
    spare_ready(&q, seg).await;
}

#[tokio::test]
async fn a_queue_smaller_than_two_segments_never_prepares_a_spare() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_bytes: 2 * 4096 - 1,
        max_record_bytes: 1024,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    for round in 0..5 {
        let seqs = fill(&q, round * 40, 40).await;
        assert_eq!(drain(&q).len(), 40);
        q.ack_many(&seqs);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let stats = q.stats();
    assert_eq!((stats.preallocated_segments, stats.spare_bytes), (0, 0));
    assert_eq!(spare_len(dir.path()), None);
    // Every segment file is exactly as long as what was written to it: the active one up to a
    // whole block (direct I/O pads its last block with zeros until the writer leaves it).
    for (first, path) in segment::list_segments(dir.path()).unwrap() {
        let len = std::fs::metadata(&path).unwrap().len();
        let live = q
            .inner
            .shared
            .state
            .lock()
            .segments
            .iter()
            .find(|s| s.first == first)
            .map(|s| s.bytes);
        let live = live.unwrap_or_default();
        assert!(
            len == live || len == live.next_multiple_of(4096),
            "{}: {len} bytes on disk, {live} live",
            path.display()
        );
    }
}

#[tokio::test]
async fn the_spare_becomes_the_next_segment_and_another_is_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 64 * 1024;
    let opts = Options {
        segment_bytes: seg,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts.clone()).unwrap();
    // A quarter of the first segment (about 50 bytes a record) makes the queue busy.
    fill(&q, 0, 400).await;
    spare_ready(&q, seg).await;
    // 1600 more fill the first segment and start the second, which is made from the spare.
    fill(&q, 400, 1600).await;
    let segs = segment::list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 2, "{segs:?}");
    let stats = q.stats();
    assert!(stats.preallocated_segments >= 1, "{stats:?}");
    let made_from_spare = std::fs::metadata(&segs[1].1).unwrap().len();
    assert_eq!(made_from_spare, seg, "the second segment was the spare");
    assert!(
        stats.bytes_on_disk < 2 * seg,
        "live bytes, not file lengths: {stats:?}"
    );
    spare_ready(&q, seg).await;
    assert_eq!(spare_len(dir.path()), Some(seg));

    q.close().await.unwrap();
    drop(q);
    assert_eq!(
        spare_len(dir.path()),
        None,
        "an orderly stop deletes the spare"
    );
    let (q, report) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!((report.truncated_bytes, report.corrupt_bytes), (0, 0));
    assert_eq!(report.replayed_records, 2000);
    let got = drain(&q);
    assert_eq!(got.len(), 2000);
    assert!(got.iter().all(|(s, b)| *b == super::payload(*s)));
}

#[tokio::test]
async fn a_leftover_spare_is_deleted_on_open_and_a_fresh_one_prepared() {
    let dir = tempfile::tempdir().unwrap();
    // A crash while preparing left a half-written spare (and garbage, for good measure).
    std::fs::write(dir.path().join(SPARE_FILE), vec![0xee; 3000]).unwrap();
    let opts = Options {
        preallocate: false,
        ..small_opts()
    };
    let (q, report) = DiskQueue::<()>::open(dir.path(), opts.clone()).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!(spare_len(dir.path()), None);
    drop(q);

    std::fs::write(dir.path().join(SPARE_FILE), vec![0xee; 3000]).unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(spare_len(dir.path()), None, "the leftover is gone");
    // A quarter of the first segment makes the queue busy enough for a fresh spare.
    fill(&q, 0, 30).await;
    spare_ready(&q, 4096).await;
    let bytes = std::fs::read(dir.path().join(SPARE_FILE)).unwrap();
    assert_eq!(bytes.len(), 4096);
    assert!(bytes.iter().all(|b| *b == 0));
}

#[tokio::test]
async fn a_crash_stops_the_preparer_and_reopening_reads_prefilled_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    let mut n = 0;
    for _ in 0..20 {
        // A spare is prepared once the active segment is a quarter full: append until it is.
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.stats().spare_bytes != 4096 {
            assert!(Instant::now() < deadline, "no spare: {:?}", q.stats());
            fill(&q, n, 5).await;
            n += 5;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fill(&q, n, 30).await;
        n += 30;
    }
    assert!(q.stats().preallocated_segments >= 5, "{:?}", q.stats());
    let info = q.crash();
    let active = info.active.expect("an active segment");
    assert!(std::fs::metadata(&active).unwrap().len() >= info.written_len);
    let (q, report) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!(report.replayed_records, n);
    let got = drain(&q);
    assert_eq!(got.len() as u64, n);
    // Appends continue at the live end of the prefilled active segment.
    fill(&q, n, 10).await;
    q.close().await.unwrap();
    drop(q);
    let (q, report) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!(drain(&q).len() as u64, n + 10);
}

/// Writes three group commits of 200 KiB each, past a quarter of a 1 MiB segment (busy).
async fn large_syncs(dir: &Path, direct_io: bool) -> DiskQueue<()> {
    let opts = Options {
        max_bytes: 16 << 20,
        segment_bytes: 1 << 20,
        max_record_bytes: 1 << 20,
        direct_io,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir, opts).unwrap();
    let mut batch = crate::RecordBatch::new();
    for _ in 0..200 {
        batch.push(&[7u8; 1024]);
    }
    for _ in 0..3 {
        let seqs = q.append_batch(&batch, Vec::new()).unwrap();
        q.wait_durable(seqs.end - 1).await.unwrap();
    }
    q
}

#[tokio::test]
async fn large_syncs_prepare_no_spare_and_small_ones_do() {
    for direct_io in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let seg = 1 << 20;
        // The zeros would cost more than the large syncs they speed up.
        let q = large_syncs(dir.path(), direct_io).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(spare_len(dir.path()), None, "{:?}", q.stats());
        assert_eq!(q.stats().spare_bytes, 0);
        // Small syncs from then on: the preparer's next look (within a second) prepares one.
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0.. {
            let seq = q.append(&super::payload(i)).unwrap();
            q.wait_durable(seq).await.unwrap();
            if q.stats().spare_bytes == seg {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no spare (direct I/O: {direct_io}): {:?}",
                q.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Appends `batches` records of 200 entries of 1 KiB (about 200 KiB each: syncs this large
/// never make the preparer zero-fill a spare), waiting for each to be durable.
async fn append_large(q: &DiskQueue<()>, batches: usize) -> Vec<u64> {
    let mut batch = crate::RecordBatch::new();
    let mut seqs = Vec::new();
    for b in 0..batches {
        batch.clear();
        for i in 0..200 {
            batch.push(&[(b * 7 + i) as u8; 1024]);
        }
        let range = q.append_batch(&batch, Vec::new()).unwrap();
        q.wait_durable(range.end - 1).await.unwrap();
        seqs.extend(range);
    }
    seqs
}

#[tokio::test]
async fn an_acknowledged_segment_is_recycled_and_its_old_records_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    if !recycling_possible(dir.path()) {
        return;
    }
    let seg = 1 << 20;
    let opts = Options {
        max_bytes: 16 << 20,
        segment_bytes: seg,
        max_record_bytes: 1 << 20,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts.clone()).unwrap();
    // Three segments' worth, read and acknowledged: the checkpoint frees the first two.
    let old = append_large(&q, 15).await;
    let read = q.try_read_batch(100_000, 64 << 20).unwrap().unwrap();
    assert_eq!(read.len(), old.len());
    q.ack_many(&old);
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.stats().recycled_segments == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing recycled: {:?}",
            q.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recycled = spare_len(dir.path()).expect("the recycled segment is the spare");
    assert!(recycled >= seg / 2, "{recycled} bytes");
    assert_eq!(q.stats().spare_bytes, recycled);

    // New records roll over into a segment made from it, and stop halfway through it.
    let before = q.stats().preallocated_segments;
    let mut new = Vec::new();
    while q.stats().preallocated_segments == before {
        new.extend(append_large(&q, 1).await);
        assert!(
            new.len() < 20 * 200,
            "no segment made from the spare: {:?}",
            q.stats()
        );
    }
    new.extend(append_large(&q, 2).await);
    let segs = segment::list_segments(dir.path()).unwrap();
    let (active_first, active) = segs.last().unwrap();
    assert_eq!(
        std::fs::metadata(active).unwrap().len(),
        recycled,
        "the active segment is the recycled file, old records past its live end"
    );
    while q.stats().checkpointed_low_water < q.stats().acked_low_water {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked = q.stats().checkpointed_low_water;

    // A crash leaves the old records there; recovery reads them as unused space, reports no
    // damage, and hands out exactly the records not acknowledged, in order.
    let info = q.crash();
    assert_eq!(info.active.as_deref(), Some(active.as_path()));
    let (q, report) = DiskQueue::<()>::open(dir.path(), opts.clone()).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    assert_eq!(
        (report.truncated_bytes, report.corrupt_bytes),
        (0, 0),
        "{report}"
    );
    let got = q.try_read_batch(100_000, 64 << 20).unwrap().unwrap();
    let want: Vec<u64> = old
        .iter()
        .chain(&new)
        .copied()
        .filter(|s| *s >= acked)
        .collect();
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|(s, _)| *s >= *active_first || *s >= acked));

    // Appends go on at the live end, over the old records; a clean stop cuts the segment to
    // its records, and the next open finds nothing it did not write.
    let more = append_large(&q, 1).await;
    q.close().await.unwrap();
    drop(q);
    assert!(std::fs::metadata(active).unwrap().len() < recycled);
    let (q, report) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    assert!(report.skipped.is_empty(), "{report}");
    let got = q.try_read_batch(100_000, 64 << 20).unwrap().unwrap();
    assert_eq!(got.len(), want.len() + more.len());
    assert_eq!(got.last().map(|(s, _)| *s), more.last().copied());
}

#[tokio::test]
async fn with_small_syncs_and_a_reader_keeping_up_segments_are_recycled_not_zero_filled() {
    let dir = tempfile::tempdir().unwrap();
    if !recycling_possible(dir.path()) {
        return;
    }
    let seg = 64 * 1024;
    let opts = Options {
        max_bytes: 16 << 20,
        segment_bytes: seg,
        checkpoint_interval: Duration::from_millis(5),
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    // Small syncs (one small record each, as with one HTTP request per durable ack), every
    // record read and acknowledged at once: a sink that keeps up.
    let mut next = 0;
    while q.stats().preallocated_segments < 20 {
        let seqs = fill(&q, next, 20).await;
        next += 20;
        assert_eq!(drain(&q).len(), 20);
        q.ack_many(&seqs);
        assert!(next < 200_000, "{:?}", q.stats());
    }
    // The first spare is zeros (nothing to recycle yet); after that the segment just left is
    // acknowledged before the new one is a quarter full, and becomes the next spare.
    let stats = q.stats();
    assert!(
        stats.recycled_segments * 4 >= stats.preallocated_segments * 3,
        "mostly zero-filled: {stats:?}"
    );
}
