//! Micro-benchmark of the disk queue.
//!
//! ```text
//! cargo run --release -p sluice-diskq --example diskq_bench                 # throughput table
//! cargo run --release -p sluice-diskq --example diskq_bench -- fill DIR 2   # write a 2 GiB backlog
//! cargo run --release -p sluice-diskq --example diskq_bench -- recover DIR  # reopen and drain it
//! cargo run --release -p sluice-diskq --example diskq_bench -- inspect DIR  # print `inspect`
//! cargo run --release -p sluice-diskq --example diskq_bench -- batch        # one by one vs batched
//! cargo run --release -p sluice-diskq --example diskq_bench -- batch append # only one mode
//! ```
//!
//! The throughput table runs N concurrent writers, each looping `append` (256-byte records) +
//! `wait_durable`, under `SyncPolicy::Always` and `SyncPolicy::Never`, with one reader task
//! draining and acknowledging so the queue stays small (as in the relay). It prints records/s,
//! fsyncs/s, records per fsync and the p50/p99 latency from `append` to `wait_durable`.
//!
//! `batch` compares the two ways of putting a socket read's worth of events (256 entries of
//! 256 bytes) on disk with `SyncPolicy::Always`, from 4 writer threads, as the relay's durable
//! path does: `append` per entry then `wait_durable` on the last, with a reader using
//! `read_batch` and `ack` per entry; versus one `append_batch` (one lock, one record, one
//! checksum), with a reader using `read_entries` and `ack_many`; and the same with a memo (an
//! `Arc`, freshly allocated, as the relay attaches its events) per entry. It prints entries/s, the process CPU
//! time per entry (user + system, from `/proc/self/stat`) and the p50/p99 latency from the
//! first append of a batch to `wait_durable` of its last entry. `BENCH_SYNC=never` runs it without
//! syncs, to see the queue's own CPU cost without the disk's; `BENCH_PREALLOC=off` creates
//! segments by growing them instead of from zero-filled spares.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_diskq::{DiskQueue, Options, RecordBatch, SyncPolicy};

const RECORD: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fill") => {
            let gib: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            fill(Path::new(&args[1]), gib);
        }
        Some("recover") => recover(Path::new(&args[1])),
        Some("batch") => batch_compare(args.get(1).map(String::as_str)),
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

/// Whether new segments come from zero-filled spares: `BENCH_PREALLOC=off` turns it off.
fn preallocate() -> bool {
    !std::env::var("BENCH_PREALLOC").is_ok_and(|s| s == "off")
}

/// How long each run lasts: `BENCH_SECS`, or `default` seconds.
fn bench_secs(default: f64) -> Duration {
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs_f64(secs)
}

fn throughput() {
    let dur = bench_secs(2.0);
    println!(
        "{:<7} {:>7} {:>12} {:>9} {:>11} {:>10} {:>10}",
        "sync", "writers", "records/s", "fsyncs/s", "rec/fsync", "p50 µs", "p99 µs"
    );
    for (name, sync) in [("always", SyncPolicy::Always), ("never", SyncPolicy::Never)] {
        for writers in [1usize, 4, 16, 64, 256] {
            run_one(name, sync, writers, dur);
        }
    }
}

fn run_one(name: &str, sync: SyncPolicy, writers: usize, dur: Duration) {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("temp dir");
    let opts = Options {
        sync,
        preallocate: preallocate(),
        ..Options::default()
    };
    let (q, _) = DiskQueue::<Arc<Vec<u8>>>::open(dir.path(), opts).expect("open");
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
    let pct = |p: f64| percentile(&lat, p);
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

/// Process CPU time (user, system; all threads) in seconds; Linux only, 100 ticks per second.
fn cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state field.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

const ENTRIES_PER_READ: usize = 256;
const WRITER_THREADS: usize = 4;

/// Runs every mode, or only the one named (`append`, `append_batch`, `memos`).
fn batch_compare(only: Option<&str>) {
    let dur = bench_secs(3.0);
    println!(
        "{:<12} {:>12} {:>14} {:>13} {:>9} {:>13} {:>8} {:>8}",
        "mode",
        "entries/s",
        "CPU µs/entry",
        "of it system",
        "fsyncs/s",
        "entries/fsync",
        "p50 µs",
        "p99 µs"
    );
    for (name, mode) in [
        ("append", Mode::Append),
        ("append_batch", Mode::Batch),
        ("memos", Mode::BatchMemos),
    ] {
        if only.is_none_or(|o| o == name) {
            batch_run(mode, dur);
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Append,
    Batch,
    BatchMemos,
}

fn batch_run(mode: Mode, dur: Duration) {
    let batched = mode != Mode::Append;
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .expect("temp dir");
    // `BENCH_SYNC=never` takes the disk out of the figures, leaving the queue's own CPU.
    let never = std::env::var("BENCH_SYNC").is_ok_and(|s| s == "never");
    let opts = Options {
        sync: if never {
            SyncPolicy::Never
        } else {
            SyncPolicy::Always
        },
        preallocate: preallocate(),
        ..Options::default()
    };
    let (q, _) = DiskQueue::<Arc<Vec<u8>>>::open(dir.path(), opts).expect("open");
    let reader = {
        let q = q.clone();
        std::thread::spawn(move || {
            runtime().block_on(async {
                let mut acks = Vec::new();
                loop {
                    if batched {
                        let entries = q.read_entries(4096, 4 << 20).await.expect("read");
                        if entries.is_empty() {
                            break;
                        }
                        acks.clear();
                        // What the relay does: use the memo when there is one.
                        let memos = entries.iter().filter(|e| e.memo.is_some()).count();
                        std::hint::black_box(memos);
                        acks.extend(entries.iter().map(|e| e.seq));
                        q.ack_many(&acks);
                    } else {
                        let records = q.read_batch(4096, 4 << 20).await.expect("read");
                        if records.is_empty() {
                            break;
                        }
                        for (seq, _) in records {
                            q.ack(seq);
                        }
                    }
                }
            })
        })
    };
    let cpu_before = cpu_secs();
    let start = Instant::now();
    let deadline = start + dur;
    let writers: Vec<_> = (0..WRITER_THREADS)
        .map(|w| {
            let q = q.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let payload = vec![b'a' + w as u8; RECORD];
                let mut batch = RecordBatch::new();
                let mut appended = 0u64;
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let last = if batched {
                        batch.clear();
                        for _ in 0..ENTRIES_PER_READ {
                            batch.push_with(|buf| buf.extend_from_slice(&payload));
                        }
                        let memos = if mode == Mode::BatchMemos {
                            // Stand-ins for the relay's events: a fresh `Arc` per entry,
                            // allocated here and freed wherever the queue lets go of it.
                            (0..ENTRIES_PER_READ)
                                .map(|_| Arc::new(payload.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        let seqs = q.append_batch(&batch, memos).expect("append_batch");
                        seqs.end - 1
                    } else {
                        let mut last = 0;
                        for _ in 0..ENTRIES_PER_READ {
                            last = q.append(&payload).expect("append");
                        }
                        last
                    };
                    rt.block_on(q.wait_durable(last)).expect("durable");
                    lat.push(t.elapsed().as_micros() as u32);
                    appended += ENTRIES_PER_READ as u64;
                }
                (appended, lat)
            })
        })
        .collect();
    let mut entries = 0u64;
    let mut lat = Vec::new();
    for w in writers {
        let (n, l) = w.join().expect("writer");
        entries += n;
        lat.extend(l);
    }
    lat.sort_unstable();
    let elapsed = start.elapsed().as_secs_f64();
    runtime().block_on(q.close()).expect("close");
    reader.join().expect("reader");
    let cpu_after = cpu_secs();
    let (user, sys) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let stats = q.stats();
    println!(
        "{:<12} {:>12.0} {:>14.3} {:>13.3} {:>9.0} {:>13.0} {:>8} {:>8}",
        match mode {
            Mode::Append => "append",
            Mode::Batch => "append_batch",
            Mode::BatchMemos => "+ memos",
        },
        entries as f64 / elapsed,
        (user + sys) * 1e6 / entries as f64,
        sys * 1e6 / entries as f64,
        stats.fsyncs as f64 / elapsed,
        entries as f64 / stats.fsyncs.max(1) as f64,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
    );
}

/// The `p` quantile of sorted latencies (0 if there are none).
fn percentile(sorted: &[u32], p: f64) -> u32 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0)
}
