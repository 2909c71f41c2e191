//! Micro-benchmark of the disk queue.
//!
//! ```text
//! cargo run --release -p sluice-diskq --example diskq_bench                 # throughput table
//! cargo run --release -p sluice-diskq --example diskq_bench -- fill DIR 2   # write a 2 GiB backlog
//! cargo run --release -p sluice-diskq --example diskq_bench -- recover DIR  # reopen and drain it
//! cargo run --release -p sluice-diskq --example diskq_bench -- inspect DIR  # print `inspect`
//! ```
//!
//! The throughput table runs N concurrent writers, each looping `append` (256-byte records) +
//! `wait_durable`, under `SyncPolicy::Always` and `SyncPolicy::Never`, with one reader task
//! draining and acknowledging so the queue stays small (as in the relay). It prints records/s,
//! fsyncs/s, records per fsync and the p50/p99 latency from `append` to `wait_durable`.

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_diskq::{DiskQueue, Options, SyncPolicy};

const RECORD: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fill") => {
            let gib: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            fill(Path::new(&args[1]), gib);
        }
        Some("recover") => recover(Path::new(&args[1])),
        Some("inspect") => match sluice_diskq::inspect(&args[1]) {
            Ok(report) => println!("{report}"),
            Err(e) => eprintln!("{e}"),
        },
        _ => throughput(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn throughput() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    println!(
        "{:<7} {:>7} {:>12} {:>9} {:>11} {:>10} {:>10}",
        "sync", "writers", "records/s", "fsyncs/s", "rec/fsync", "p50 µs", "p99 µs"
    );
    for (name, sync) in [("always", SyncPolicy::Always), ("never", SyncPolicy::Never)] {
        for writers in [1usize, 4, 16, 64, 256] {
            run_one(name, sync, writers, Duration::from_secs_f64(secs));
        }
    }
}

fn run_one(name: &str, sync: SyncPolicy, writers: usize, dur: Duration) {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("temp dir");
    let opts = Options {
        sync,
        ..Options::default()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).expect("open");
    let rt = runtime();
    let payload = vec![b'x'; RECORD];
    let (lat, elapsed) = rt.block_on(async {
        let reader = {
            let q = q.clone();
            tokio::spawn(async move {
                loop {
                    let batch = q.read_batch(4096, 4 << 20).await.expect("read");
                    if batch.is_empty() {
                        break;
                    }
                    for (seq, _) in batch {
                        q.ack(seq);
                    }
                }
            })
        };
        let start = Instant::now();
        let deadline = start + dur;
        let mut tasks = Vec::new();
        for _ in 0..writers {
            let q = q.clone();
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let seq = q.append(&payload).expect("append");
                    q.wait_durable(seq).await.expect("durable");
                    lat.push(t.elapsed().as_micros() as u32);
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("writer"));
        }
        let elapsed = start.elapsed();
        q.close().await.expect("close");
        reader.await.expect("reader");
        (lat, elapsed)
    });
    let stats = q.stats();
    let mut lat = lat;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let secs = elapsed.as_secs_f64();
    let n = lat.len() as f64;
    println!(
        "{:<7} {:>7} {:>12.0} {:>9.0} {:>11.1} {:>10} {:>10}",
        name,
        writers,
        n / secs,
        stats.fsyncs as f64 / secs,
        // Under `Never` the only syncs are at segment roll-over and close.
        if sync == SyncPolicy::Always {
            n / stats.fsyncs.max(1) as f64
        } else {
            f64::NAN
        },
        pct(0.50),
        pct(0.99)
    );
}

fn fill(dir: &Path, gib: f64) {
    let opts = Options {
        sync: SyncPolicy::Never,
        max_bytes: u64::MAX / 2,
        ..Options::default()
    };
    let (q, _) = DiskQueue::<()>::open(dir, opts).expect("open");
    let payload = vec![b'y'; RECORD];
    let records = (gib * (1u64 << 30) as f64 / (RECORD + 16) as f64) as u64;
    let start = Instant::now();
    let rt = runtime();
    rt.block_on(async {
        for i in 0..records {
            loop {
                match q.append(&payload) {
                    Ok(_) => break,
                    Err(sluice_diskq::AppendError::Full { .. }) => q.wait_space().await,
                    Err(e) => panic!("append {i}: {e}"),
                }
            }
        }
        q.close().await.expect("close");
    });
    let s = q.stats();
    println!(
        "filled {} records, {} bytes in {} segments in {:?}",
        s.next_seq,
        s.bytes_on_disk,
        s.segments,
        start.elapsed()
    );
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn recover(dir: &Path) {
    let start = Instant::now();
    let (q, report) = DiskQueue::<()>::open(
        dir,
        Options {
            max_bytes: u64::MAX / 2,
            ..Options::default()
        },
    )
    .expect("open");
    let took = start.elapsed();
    println!("{report}");
    println!(
        "reopened in {took:?}; peak RSS {} MiB; {} unacked records",
        rss_kib("VmHWM:") / 1024,
        q.stats().unacked_records
    );
    // Drain the backlog from the segment files (the in-memory tail is empty after a restart).
    let start = Instant::now();
    let mut records = 0u64;
    let mut bytes = 0usize;
    runtime().block_on(async {
        q.close().await.expect("close");
        loop {
            let batch = q.read_batch(4096, 4 << 20).await.expect("read");
            if batch.is_empty() {
                break;
            }
            records += batch.len() as u64;
            for (seq, payload) in batch {
                bytes += payload.len();
                q.ack(seq);
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "drained {records} records ({:.0} MiB) from files in {secs:.2} s: {:.0} records/s; peak RSS {} MiB",
        bytes as f64 / (1 << 20) as f64,
        records as f64 / secs,
        rss_kib("VmHWM:") / 1024
    );
}
