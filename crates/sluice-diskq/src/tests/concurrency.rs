//! Many writers, a reader and out-of-order acks at once, with a queue small enough to fill.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::small_opts;
use crate::{AppendError, DiskQueue, Options};

#[test]
fn disk_queue_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<DiskQueue>();
}

#[test]
fn concurrent_writers_readers_and_acks_lose_nothing_across_a_restart() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 150;
    const TOTAL: u64 = WRITERS * EACH;
    const LEFT_UNACKED: u64 = 10;
    let rt = super::two_worker_runtime();
    let dir = tempfile::tempdir().unwrap();
    // Four 4 KiB segments: writers hit Full and must wait for acks to free space.
    let opts = Options {
        max_bytes: 16 * 1024,
        max_record_bytes: 1024,
        checkpoint_interval: Duration::from_millis(5),
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts.clone()).unwrap();
    let (appended, read) = rt.block_on(async {
        let filled = Arc::new(AtomicBool::new(false));
        let reader = {
            let q = q.clone();
            let filled = filled.clone();
            tokio::spawn(async move {
                // Start only once a writer has seen the queue full.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while !filled.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let mut read = BTreeMap::new();
                while (read.len() as u64) < TOTAL {
                    let batch = q.read_batch(64, 64 * 1024).await.unwrap();
                    // Acknowledge each batch backwards, to exercise out-of-order acks.
                    for (seq, bytes) in batch.into_iter().rev() {
                        if seq < TOTAL - LEFT_UNACKED {
                            q.ack(seq);
                        }
                        assert!(
                            read.insert(seq, bytes.to_vec()).is_none(),
                            "seq {seq} handed out twice"
                        );
                    }
                }
                read
            })
        };
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let q = q.clone();
            let filled = filled.clone();
            writers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut fulls = 0u32;
                for i in 0..EACH {
                    let payload = format!("{w}:{i}").into_bytes();
                    let seq = loop {
                        match q.append(&payload) {
                            Ok(seq) => break seq,
                            Err(AppendError::Full { .. }) => {
                                fulls += 1;
                                filled.store(true, Ordering::SeqCst);
                                q.wait_space().await;
                            }
                            Err(e) => panic!("append: {e}"),
                        }
                    };
                    q.wait_durable(seq).await.unwrap();
                    mine.push((seq, payload));
                }
                (mine, fulls)
            }));
        }
        let mut appended = BTreeMap::new();
        let mut fulls = 0;
        for w in writers {
            let (mine, f) = tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .unwrap()
                .unwrap();
            appended.extend(mine);
            fulls += f;
        }
        assert!(fulls > 0, "the test is meant to fill the queue");
        let read = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap()
            .unwrap();
        q.close().await.unwrap();
        (appended, read)
    });
    assert_eq!(appended.len() as u64, TOTAL);
    assert_eq!(
        appended.keys().copied().collect::<Vec<_>>(),
        (0..TOTAL).collect::<Vec<_>>()
    );
    assert_eq!(read, appended, "every record read once, with its payload");
    let stats = q.stats();
    assert_eq!(stats.acked_low_water, TOTAL - LEFT_UNACKED);
    assert!(stats.bytes_on_disk <= opts.max_bytes);
    drop(q);

    let (q, report) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    assert_eq!(report.replayed_records, LEFT_UNACKED);
    let again = super::drain(&q);
    assert_eq!(
        again.iter().map(|r| r.0).collect::<Vec<_>>(),
        (TOTAL - LEFT_UNACKED..TOTAL).collect::<Vec<_>>()
    );
    for (seq, bytes) in again {
        assert_eq!(Some(&bytes), appended.get(&seq));
    }
}

/// Acks that keep arriving while the writer checkpoints must not make every round write a
/// checkpoint (two fsyncs each): one per freed segment, plus the interval's, is enough.
#[test]
fn a_steady_stream_of_acks_checkpoints_per_freed_segment_not_per_round() {
    let rt = super::two_worker_runtime();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 64 * 1024,
        max_bytes: 64 << 20,
        checkpoint_interval: Duration::from_secs(60),
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    const TOTAL: u64 = 20_000;
    rt.block_on(async {
        let reader = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut acked = 0;
                while acked < TOTAL {
                    let batch = q.read_batch(16, 1 << 20).await.unwrap();
                    for (seq, _) in &batch {
                        q.ack(*seq);
                    }
                    acked += batch.len() as u64;
                }
            })
        };
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..TOTAL / 4 {
                    let seq = q.append(&super::payload(w * TOTAL + i)).unwrap();
                    if i % 8 == 0 {
                        q.wait_durable(seq).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        reader.await.unwrap();
    });
    let s = q.stats();
    // About 1.3 MB of records: some 20 segments of 64 KiB, each freed once read and acked.
    let segments = s.bytes_written / (64 * 1024) + 1;
    assert!(
        s.checkpoints <= segments + 5,
        "{} checkpoints for {segments} segments over {} syncs",
        s.checkpoints,
        s.fsyncs
    );
}
