//! Appending, reading, acknowledging, closing, reopening, limits and the directory lock.

use std::time::Duration;

use super::{drain, fill, payload, small_opts};
use crate::{AppendError, DiskQueue, Error, Options, SyncPolicy};

#[tokio::test]
async fn appended_records_are_read_back_in_order_with_contiguous_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (q, report) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(report.replayed_records, 0);
    assert_eq!(fill(&q, 0, 200).await, (0..200).collect::<Vec<_>>());
    let got = drain(&q);
    assert_eq!(got.len(), 200);
    for (i, (seq, bytes)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(bytes, &payload(i as u64));
    }
    let stats = q.stats();
    assert_eq!(
        (stats.next_seq, stats.read_seq, stats.unacked_records),
        (200, 200, 200)
    );
    assert!(
        stats.segments > 1,
        "4 KiB segments must have rolled over: {stats:?}"
    );
}

#[tokio::test]
async fn read_batch_waits_for_an_append_and_respects_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    let reader = {
        let q = q.clone();
        tokio::spawn(async move { q.read_batch(3, 1 << 20).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..5 {
        q.append(&payload(i)).unwrap();
    }
    let first = reader.await.unwrap();
    assert!(!first.is_empty() && first.len() <= 3);
    assert_eq!(first[0].0, 0);
    // A byte limit smaller than one record still returns one record.
    let one = q.read_batch(100, 1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, first.len() as u64);
}

#[tokio::test]
async fn close_flushes_and_readers_then_get_an_empty_batch() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync: SyncPolicy::Never,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    for i in 0..10 {
        q.append(&payload(i)).unwrap();
    }
    q.close().await.unwrap();
    assert!(matches!(q.append(b"late"), Err(AppendError::Closed)));
    q.wait_durable(9).await.unwrap();
    assert!(matches!(q.wait_durable(10).await, Err(Error::Closed)));
    let mut n = 0;
    loop {
        let batch = q.read_batch(4, 1 << 20).await.unwrap();
        if batch.is_empty() {
            break;
        }
        n += batch.len();
    }
    assert_eq!(n, 10);
    assert!(
        q.stats().fsyncs >= 1,
        "close syncs even with SyncPolicy::Never"
    );
}

#[tokio::test]
async fn checkpoint_survives_restart_and_only_unacked_records_come_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
        fill(&q, 0, 100).await;
        assert_eq!(drain(&q).len(), 100);
        // Out of order: 0..40 and 50..60 acknowledged; the low-water mark stops at 40.
        for s in (50..60).chain((0..40).rev()) {
            q.ack(s);
        }
        assert_eq!(q.stats().acked_low_water, 40);
        assert_eq!(q.stats().unacked_records, 50);
        q.close().await.unwrap();
        assert_eq!(q.stats().checkpointed_low_water, 40);
    }
    let (q, report) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(report.acked_low_water, 40);
    // Acks above the low-water mark are not persisted: 50..60 come back (at-least-once).
    assert_eq!(report.replayed_records, 60);
    assert_eq!(report.next_seq, 100);
    let got = drain(&q);
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        (40..100).collect::<Vec<_>>()
    );
    assert_eq!(got[0].1, payload(40));
    // Numbering continues after a restart.
    assert_eq!(q.append(b"next").unwrap(), 100);
}

#[tokio::test]
async fn segments_are_deleted_once_every_record_in_them_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    fill(&q, 0, 300).await;
    let before = q.stats();
    assert!(before.segments >= 4, "{before:?}");
    let seg_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    assert_eq!(seg_files(), before.segments);
    for (seq, _) in drain(&q) {
        if seq < 150 {
            q.ack(seq);
        }
    }
    // Checkpoint and deletion happen on the writer thread shortly after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while q.stats().checkpointed_low_water < 150 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = q.stats();
    assert_eq!(after.checkpointed_low_water, 150);
    assert!(after.segments < before.segments, "{after:?}");
    assert!(after.bytes_on_disk < before.bytes_on_disk);
    assert_eq!(seg_files(), after.segments);
    drop(q);
    let (_q, report) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(report.acked_low_water, 150);
    assert_eq!(report.replayed_records, 150);
}

#[tokio::test]
async fn full_queue_refuses_appends_until_acks_free_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_bytes: 16 * 1024,
        max_record_bytes: 1024,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    let mut appended = 0u64;
    let full = loop {
        match q.append(&[7u8; 200]) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            full,
            AppendError::Full {
                max_bytes: 16384,
                ..
            }
        ),
        "{full}"
    );
    assert!(q.stats().bytes_on_disk <= 16 * 1024);
    q.wait_durable(appended - 1).await.unwrap();
    // Nothing freed yet: wait_space does not resolve (so a retry loop cannot spin).
    let early = tokio::time::timeout(Duration::from_millis(50), q.wait_space()).await;
    assert!(early.is_err(), "wait_space resolved while still full");
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.wait_space().await })
    };
    for (seq, _) in drain(&q) {
        q.ack(seq);
    }
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    // Everything was acknowledged, so space comes back (possibly after one more roll-over).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match q.append(&[8u8; 200]) {
            Ok(_) => break,
            Err(AppendError::Full { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::timeout(Duration::from_secs(1), q.wait_space())
                    .await
                    .ok();
            }
            Err(e) => panic!("append after acks: {e}"),
        }
    }
}

#[tokio::test]
async fn oversized_records_are_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    let err = q.append(&vec![0u8; (1 << 16) + 1]).unwrap_err();
    assert!(
        matches!(
            err,
            AppendError::TooLarge {
                len: 65537,
                max: 65536
            }
        ),
        "{err}"
    );
    assert_eq!(q.stats().next_seq, 0);
    // A record larger than a segment gets a segment of its own.
    let seq = q.append(&vec![1u8; 10_000]).unwrap();
    q.wait_durable(seq).await.unwrap();
    assert_eq!(drain(&q)[0].1.len(), 10_000);
}

#[tokio::test]
async fn a_locked_directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    let err = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }));
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
    drop(q);
    DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
}

#[test]
fn inconsistent_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_bytes: 100,
        ..small_opts()
    };
    let err = DiskQueue::<()>::open(dir.path(), opts).unwrap_err();
    assert!(
        err.to_string().contains("max_bytes: expected at least"),
        "{err}"
    );
}

#[tokio::test]
async fn readers_see_records_only_once_durable_unless_asked_otherwise() {
    for early in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            sync: SyncPolicy::Every(Duration::from_millis(300)),
            read_before_durable: early,
            ..small_opts()
        };
        let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
        let seq = q.append(b"one").unwrap();
        let started = std::time::Instant::now();
        let got = q.read_batch(10, 1 << 20).await.unwrap();
        assert_eq!(got[0].0, seq);
        let waited = started.elapsed();
        if early {
            assert!(waited < Duration::from_millis(250), "{waited:?}");
            assert_eq!(
                q.stats().durable_seq,
                0,
                "handed out before the periodic sync"
            );
        } else {
            assert_eq!(q.stats().durable_seq, 1, "handed out only after the sync");
        }
    }
}

#[tokio::test]
async fn every_policy_makes_records_durable_after_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync: SyncPolicy::Every(Duration::from_millis(30)),
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    let started = std::time::Instant::now();
    let mut last = 0;
    for i in 0..50 {
        last = q.append(&payload(i)).unwrap();
    }
    q.wait_durable(last).await.unwrap();
    let stats = q.stats();
    assert!(
        stats.fsyncs <= 2,
        "one periodic sync covers the burst: {stats:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Readers do not wait for the sync: written records are readable.
    assert_eq!(drain(&q).len(), 50);
}

#[tokio::test]
async fn records_acknowledged_before_being_read_may_be_skipped_but_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        read_cache_bytes: 0,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    fill(&q, 0, 300).await;
    for seq in 0..150 {
        q.ack(seq);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while q.stats().checkpointed_low_water < 150 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The reader's segment is gone: it moves on without error or "corruption".
    let got: Vec<u64> = drain(&q).into_iter().map(|r| r.0).collect();
    assert!(got.first().is_some_and(|&s| s <= 150), "{:?}", got.first());
    assert!(got.ends_with(&(150..300).collect::<Vec<_>>()));
    assert_eq!(q.stats().corrupt_records, 0);
}

#[tokio::test]
async fn a_queue_whose_every_record_is_acknowledged_and_checkpointed_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_bytes: 4096,
        segment_bytes: 4096,
        max_record_bytes: 1024,
        checkpoint_interval: Duration::from_millis(2),
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    // A reader that keeps up: every record is acknowledged and checkpointed before the next
    // append, so when the segment fills there is nothing left to acknowledge.
    let mut fulls = 0;
    for i in 0..100u64 {
        let seq = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match q.append(&[i as u8; 100]) {
                    Ok(seq) => break seq,
                    Err(AppendError::Full { .. }) => {
                        fulls += 1;
                        q.wait_space().await;
                    }
                    Err(e) => panic!("append {i}: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("append {i}: space was never freed"));
        q.wait_durable(seq).await.unwrap();
        let got = q.read_batch(10, 1 << 20).await.unwrap();
        assert_eq!(got.len(), 1);
        q.ack(got[0].0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while q.stats().checkpointed_low_water <= seq {
            assert!(
                tokio::time::Instant::now() < deadline,
                "checkpoint never written"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(fulls > 0, "the test is meant to fill the queue");
}
