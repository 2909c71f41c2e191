//! Behavioural tests of the whole queue: each file covers one promise.

mod basic;
mod concurrency;
mod corruption;
mod entries;
mod group_commit;
mod kill;
mod model;
mod pacing;
mod padding;
mod prealloc;
mod record_format;
mod scanner;

use std::time::Duration;

use crate::{DiskQueue, Options, Seq, SyncPolicy};

/// Small segments so that tests roll over and delete segments quickly.
pub(crate) fn small_opts() -> Options {
    Options {
        max_bytes: 1 << 20,
        segment_bytes: 4096,
        max_record_bytes: 1 << 16,
        sync: SyncPolicy::Always,
        sync_gather: Options::default().sync_gather,
        checkpoint_interval: Duration::from_millis(20),
        read_cache_bytes: 16 * 1024,
        read_before_durable: false,
        preallocate: true,
        direct_io: true,
    }
}

/// A multi-threaded runtime with two workers, as on the machines Sluice is measured on.
pub(crate) fn two_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The payload test records carry: recognisable and of varying length.
pub(crate) fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

/// Reads everything currently available without waiting.
pub(crate) fn drain(q: &DiskQueue) -> Vec<(Seq, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(batch) = q.try_read_batch(100, 1 << 20).unwrap() {
        if batch.is_empty() {
            break;
        }
        out.extend(batch.into_iter().map(|(s, b)| (s, b.to_vec())));
    }
    out
}

/// Appends `n` records with payloads `payload(from..from+n)` and waits until all are durable.
pub(crate) async fn fill(q: &DiskQueue, from: u64, n: u64) -> Vec<Seq> {
    let mut seqs = Vec::new();
    for i in from..from + n {
        seqs.push(q.append(&payload(i)).unwrap());
    }
    if let Some(&last) = seqs.last() {
        q.wait_durable(last).await.unwrap();
    }
    seqs
}
