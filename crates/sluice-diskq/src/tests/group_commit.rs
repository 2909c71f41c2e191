//! Group commit and failing disks: one `fdatasync` releases many waiters, a failed write is
//! never reported durable, and the writer thread runs ahead of the process where permitted.

use std::sync::Arc;
use std::time::Duration;

use super::small_opts;
use crate::{AppendError, DiskQueue, Error, Options, SyncPolicy};

#[test]
fn concurrent_appenders_share_fsyncs_and_every_waiter_is_released() {
    const WRITERS: u64 = 32;
    const EACH: u64 = 50;
    let rt = super::two_worker_runtime();
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let seq = q.append(format!("{w}:{i}").as_bytes()).unwrap();
                    q.wait_durable(seq).await.unwrap();
                }
            }));
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap()
                .unwrap();
        }
    });
    let stats = q.stats();
    let records = WRITERS * EACH;
    assert_eq!(stats.durable_seq, records);
    assert_eq!(stats.records_synced, records);
    assert!(stats.fsyncs >= 1);
    assert!(
        stats.fsyncs < records,
        "{} fsyncs for {records} records: syncs were not shared",
        stats.fsyncs
    );
    // One latency sample per sync that released waiters, each at least as long as nothing.
    let latency = q.sync_latency();
    assert_eq!(latency.count(), stats.fsyncs);
    let (p50, max) = (
        latency.quantile(0.5).unwrap(),
        latency.quantile(1.0).unwrap(),
    );
    assert!(p50 <= max && max <= Duration::from_secs(30));
    eprintln!(
        "group commit: {records} records, {} fsyncs, {:.1} records per fsync, wait p50 {p50:?} max {max:?}",
        stats.fsyncs,
        records as f64 / stats.fsyncs as f64
    );
}

#[tokio::test]
async fn a_failed_write_is_never_reported_durable_and_poisons_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    // Every write to /dev/full fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", crate::segment::segment_path(dir.path(), 0)).unwrap();
    // The first append always succeeds; later ones may already see the failure.
    let mut waiters = Vec::new();
    for i in 0..5 {
        match q.append(format!("doomed {i}").as_bytes()) {
            Ok(seq) => {
                let q = q.clone();
                waiters.push(tokio::spawn(async move { q.wait_durable(seq).await }));
            }
            Err(AppendError::Io(_)) => assert!(i > 0),
            Err(e) => panic!("append {i}: {e}"),
        }
    }
    for w in waiters {
        let err = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::WriteFailed(_)), "{err}");
        assert!(
            err.to_string().contains("00000000000000000000.seg"),
            "{err}"
        );
    }
    let err = q.append(b"later").unwrap_err();
    assert!(matches!(err, AppendError::Io(_)), "{err}");
    let stats = q.stats();
    assert!(stats.write_failed);
    assert_eq!(stats.durable_seq, 0);
    assert!(
        q.try_read_batch(10, 1 << 20).unwrap().is_none(),
        "unwritten records are not handed out"
    );
    assert!(matches!(q.close().await, Err(Error::WriteFailed(_))));
}

#[tokio::test]
async fn never_policy_resolves_after_write_without_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync: SyncPolicy::Never,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    let q = Arc::new(q);
    let mut last = 0;
    for i in 0..100 {
        last = q.append(format!("{i}").as_bytes()).unwrap();
    }
    q.wait_durable(last).await.unwrap();
    assert_eq!(q.stats().fsyncs, 0);
}

#[cfg(target_os = "linux")]
#[test]
fn the_writer_thread_raises_its_priority_where_permitted() {
    use rustix::process::{getpriority_process, setpriority_process};
    // On a thread of its own: nice values are per thread on Linux.
    std::thread::spawn(|| {
        let me = Some(rustix::thread::gettid());
        let before = getpriority_process(me).unwrap();
        crate::writer::raise_priority();
        let after = getpriority_process(me).unwrap();
        // Permitted if this thread may lower its nice value at all.
        let permitted = after < before || setpriority_process(me, before - 1).is_ok();
        if permitted {
            let boost = crate::writer::WRITER_NICE_BOOST;
            assert_eq!(after, (before - boost).max(-20));
        } else {
            assert_eq!(
                after, before,
                "the priority changed although it may not be raised"
            );
        }
    })
    .join()
    .unwrap();
}
