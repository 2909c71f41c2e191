//! Pacing appenders to the reader: a reader about to fall out of the in-memory tail, or just
//! fallen out of it, is waited for while it reads on, and never when it has stalled or is far
//! behind; and the tail holds only what the reader has yet to take.

use std::time::{Duration, Instant};

use super::{fill, small_opts};
use crate::{DiskQueue, Options};

/// A queue in `dir` with room for many segments and an in-memory tail of `read_cache_bytes`.
fn open_with_tail(dir: &std::path::Path, read_cache_bytes: usize) -> DiskQueue {
    let opts = Options {
        max_bytes: 16 << 20,
        segment_bytes: 1 << 20,
        read_cache_bytes,
        ..small_opts()
    };
    DiskQueue::open(dir, opts).unwrap().0
}

/// Paces an appender while a reader reads on, ten entries every 5 ms, until it no longer falls
/// behind: the wait ends then, not at its bound.
async fn pace_while_reading_on(q: &DiskQueue) {
    let reader = {
        let q = q.clone();
        tokio::spawn(async move {
            while q.reader_falling_behind() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                q.try_read_batch(10, 1 << 20).unwrap();
            }
        })
    };
    let t = Instant::now();
    q.pace_to_reader(Duration::from_secs(30)).await;
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(!q.reader_falling_behind(), "{:?}", q.stats());
    reader.await.unwrap();
}

#[tokio::test]
async fn appenders_wait_for_a_reader_falling_behind_but_never_twice_for_a_stalled_one() {
    let dir = tempfile::tempdir().unwrap();
    // Ten rounds of twenty small records fit in the tail, and are more than half of it.
    let q = open_with_tail(dir.path(), 16 << 10);
    let soon = Duration::from_secs(2);

    // Nothing to read: nobody waits.
    let t = Instant::now();
    q.pace_to_reader(Duration::from_secs(30)).await;
    assert!(t.elapsed() < soon);

    // Ten rounds of writes, all in the tail; the reader takes the first round only, so what it
    // has yet to read fills more than half of the tail.
    for round in 0..10 {
        fill(&q, round * 20, 20).await;
    }
    assert_eq!(q.try_read_batch(20, 1 << 20).unwrap().unwrap().len(), 20);
    assert!(q.reader_falling_behind(), "{:?}", q.stats());

    // The reader does not move: one wait of the whole bound, and then no more.
    let t = Instant::now();
    q.pace_to_reader(Duration::from_millis(200)).await;
    assert!(t.elapsed() >= Duration::from_millis(200));
    let t = Instant::now();
    q.pace_to_reader(Duration::from_secs(30)).await;
    assert!(t.elapsed() < soon, "waited again for a stalled reader");

    // It reads on: appenders wait again, and only until what it has yet to read is back under
    // half of the tail.
    assert_eq!(q.try_read_batch(10, 1 << 20).unwrap().unwrap().len(), 10);
    pace_while_reading_on(&q).await;
}

#[tokio::test]
async fn a_reader_far_behind_the_tail_is_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    // Ten rounds of 20 KiB through a 16 KiB tail: the unread first rounds are only in the
    // files, more than a tail's worth of them, so nobody waits for the reader.
    let (q, _) = DiskQueue::<()>::open(dir.path(), small_opts()).unwrap();
    for _ in 0..10 {
        let mut last = 0;
        for _ in 0..20 {
            last = q.append(&[9u8; 1024]).unwrap();
        }
        q.wait_durable(last).await.unwrap();
    }
    assert!(q.stats().read_seq == 0 && !q.reader_falling_behind());
    let t = Instant::now();
    q.pace_to_reader(Duration::from_secs(30)).await;
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_reader_just_out_of_the_tail_is_waited_for_until_it_is_back_in() {
    let dir = tempfile::tempdir().unwrap();
    // Rounds of about 1 KiB through an 8 KiB tail: after 12 rounds the unread first ones are
    // only in the files, but by less than the tail's budget.
    let q = open_with_tail(dir.path(), 8 << 10);
    for round in 0..12 {
        fill(&q, round * 20, 20).await;
    }
    let stats = q.stats();
    assert!(
        stats.read_seq == 0 && stats.tail_bytes <= 8 << 10,
        "{stats:?}"
    );
    assert!(q.reader_falling_behind(), "{stats:?}");

    // The reader reads on, from the files and then from the tail: appenders wait until it is
    // back in the newer half of the tail.
    pace_while_reading_on(&q).await;
    assert!(q.stats().file_read_entries > 0, "{:?}", q.stats());

    // Far behind (more than the budget): the files take the difference, nobody waits.
    for round in 12..100 {
        fill(&q, round * 20, 20).await;
    }
    assert!(!q.reader_falling_behind(), "{:?}", q.stats());
}

#[tokio::test]
async fn the_tail_holds_only_what_the_reader_has_yet_to_take() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_with_tail(dir.path(), 1 << 20);
    for round in 0..10 {
        fill(&q, round * 20, 20).await;
    }
    let full = q.stats().tail_bytes;
    assert!(full > 0, "{:?}", q.stats());

    // Half read: the chunks wholly read are gone, the one it is inside of stays.
    let mut got = q.try_read_batch(100, 1 << 20).unwrap().unwrap().len();
    let half = q.stats().tail_bytes;
    assert!(half > 0 && half < full, "{half} of {full}");

    // All read: nothing left, and every entry came from memory.
    while got < 200 {
        got += q.try_read_batch(100, 1 << 20).unwrap().unwrap().len();
    }
    // The next read (finding nothing new) finishes with the last chunk.
    assert!(q.try_read_batch(100, 1 << 20).unwrap().is_none());
    let stats = q.stats();
    assert_eq!(
        (stats.tail_bytes, stats.file_read_entries),
        (0, 0),
        "{stats:?}"
    );
    assert!(!q.reader_falling_behind());
}
