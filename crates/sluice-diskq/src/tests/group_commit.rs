//! Group commit and failing disks: one `fdatasync` releases many waiters, right after a sync
//! the writer gathers appends nobody waits on yet for the next one (but never delays a waiter,
//! a reader that has read everything, a first sync, a large batch or a close), a failed write is never reported durable, and the
//! writer thread runs ahead of the process where permitted.

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
    // And one per entry, none longer than the longest sync's oldest.
    let per_entry = q.entry_wait();
    assert_eq!(per_entry.count(), records);
    assert!(per_entry.quantile(1.0) <= latency.quantile(1.0));
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

/// A gathering long enough that no test machine, however loaded, takes as long between two
/// appends; the tests below never wait for it to run out (it would take this long).
const LONG_GATHER: Duration = Duration::from_secs(600);
/// How long the tests below give what must not wait for the gathering.
const PROMPTLY: Duration = Duration::from_secs(20);

fn gathering_opts() -> Options {
    Options {
        sync_gather: LONG_GATHER,
        // Nor does the writer wake up for a checkpoint meanwhile.
        checkpoint_interval: LONG_GATHER,
        max_bytes: 64 << 20,
        segment_bytes: 16 << 20,
        max_record_bytes: 4 << 20,
        ..small_opts()
    }
}

/// A queue with a long gathering that has just synced its first entry (returned): the next
/// append is gathered, until something ends the gathering.
async fn just_synced() -> (tempfile::TempDir, DiskQueue<()>, crate::Seq) {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), gathering_opts()).unwrap();
    let first = q.append(b"first").unwrap();
    q.wait_durable(first).await.unwrap();
    assert_eq!(q.stats().fsyncs, 1);
    (dir, q, first)
}

/// Appends `payload` to a queue that has just synced, with nobody waiting, and checks that it
/// is gathered (given a moment to be): not durable yet.
async fn gathered(q: &DiskQueue<()>, payload: &[u8]) -> crate::Seq {
    let seq = q.append(payload).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(q.stats().durable_seq, seq, "nobody waited: it was gathered");
    seq
}

#[tokio::test]
async fn appends_right_after_a_sync_are_gathered_into_the_next_one() {
    let (_dir, q, first) = just_synced().await;
    // Appended within the gathering that follows that sync, which the wait below ends: one
    // sync covers all of them.
    let mut last = first;
    for i in 0..20 {
        last = q.append(format!("then {i}").as_bytes()).unwrap();
    }
    tokio::time::timeout(PROMPTLY, q.wait_durable(last))
        .await
        .expect("a waiter ends the gathering")
        .unwrap();
    assert_eq!(q.stats().fsyncs, 2, "the 20 appends were synced together");
    assert_eq!(q.stats().records_synced, 21);
}

#[tokio::test]
async fn a_waiter_ends_the_gathering() {
    let (_dir, q, _) = just_synced().await;
    let second = gathered(&q, b"second").await;
    // Now someone waits for it.
    tokio::time::timeout(PROMPTLY, q.wait_durable(second))
        .await
        .expect("a producer waiting for its ack ends the gathering")
        .unwrap();
    assert_eq!(q.stats().fsyncs, 2);
}

#[tokio::test]
async fn a_reader_that_has_read_everything_ends_the_gathering() {
    let (_dir, q, _) = just_synced().await;
    assert_eq!(q.read_batch(10, 1 << 20).await.unwrap().len(), 1);
    // Gathered while nobody waits; a reader that comes to wait for it ends the gathering.
    let second = gathered(&q, b"second").await;
    let got = tokio::time::timeout(PROMPTLY, q.read_batch(10, 1 << 20))
        .await
        .expect("a waiting reader ends the gathering")
        .unwrap();
    assert_eq!(got[0].0, second);
    // A reader already waiting when the append comes: not gathered at all.
    let reader = {
        let q = q.clone();
        tokio::spawn(async move { q.read_batch(10, 1 << 20).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = q.append(b"third").unwrap();
    let got = tokio::time::timeout(PROMPTLY, reader)
        .await
        .expect("a reader waiting for appends is not kept waiting by the gathering")
        .unwrap()
        .unwrap();
    assert_eq!(got[0].0, third);
    assert_eq!(q.stats().fsyncs, 3);
}

#[tokio::test]
async fn a_first_sync_a_large_batch_and_a_close_do_not_wait_for_the_gathering() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<()>::open(dir.path(), gathering_opts()).unwrap();
    // Nothing synced yet: no gathering.
    let first = q.append(b"first").unwrap();
    tokio::time::timeout(PROMPTLY, q.wait_durable(first))
        .await
        .expect("a queue that has not synced lately syncs at once")
        .unwrap();
    // A small append starts a gathering (given a moment to); enough bytes end it.
    let gathered = q.append(b"gathered").unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let big = vec![7u8; crate::state::GATHER_ENOUGH_BYTES as usize];
    let large = q.append(&big).unwrap();
    assert!(gathered < large);
    tokio::time::timeout(PROMPTLY, q.wait_durable(large))
        .await
        .expect("a megabyte waiting to be written ends the gathering")
        .unwrap();
    // Gathering again; a close writes and syncs what waits at once.
    let small = q.append(b"small").unwrap();
    tokio::time::timeout(PROMPTLY, q.close())
        .await
        .expect("close does not wait for the gathering")
        .unwrap();
    tokio::time::timeout(PROMPTLY, q.wait_durable(small))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.stats().durable_seq, small + 1);
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
