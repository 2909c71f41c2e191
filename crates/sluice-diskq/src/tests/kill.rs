//! SIGKILL: a child process appends (16 writers, `SyncPolicy::Always`) and acknowledges what
//! it reads, printing every seq it was told is durable and every seq it acknowledges; the
//! parent kills it with SIGKILL at a random-ish moment, reopens the queue, and checks that every
//! durable record not covered by the checkpoint comes back with its payload, and that the
//! checkpoint never covers a record the child did not acknowledge.
//!
//! The child is this same test binary, re-executed to run the ignored `kill_child` test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{DiskQueue, Options, SyncPolicy};

const DIR_ENV: &str = "SLUICE_DISKQ_KILL_DIR";

fn opts() -> Options {
    Options {
        segment_bytes: 64 * 1024,
        checkpoint_interval: Duration::from_millis(10),
        sync: SyncPolicy::Always,
        ..Options::default()
    }
}

#[test]
#[ignore = "run by sigkill_loses_no_durable_record as a child process"]
fn kill_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let rt = super::two_worker_runtime();
    let (q, _) = DiskQueue::<()>::open(&dir, opts()).unwrap();
    // Spares are recycled segments, so a kill can leave old records past the live end.
    q.only_recycled_spares();
    rt.block_on(async {
        let stop = Instant::now() + Duration::from_secs(20);
        let reader = {
            let q = q.clone();
            tokio::spawn(async move {
                while Instant::now() < stop {
                    for (seq, _) in q.read_batch(64, 1 << 20).await.unwrap() {
                        // Printed before acknowledging: the checkpoint never covers an
                        // unprinted ack.
                        println!("ack {seq}");
                        q.ack(seq);
                    }
                }
            })
        };
        let mut writers = Vec::new();
        for w in 0..16 {
            let q = q.clone();
            writers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < stop {
                    let payload = format!("{w}:{i}:{}", "p".repeat((i % 200) as usize));
                    let seq = q.append(payload.as_bytes()).unwrap();
                    q.wait_durable(seq).await.unwrap();
                    println!("durable {seq} {payload}");
                    i += 1;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        reader.await.unwrap();
    });
}

#[test]
fn sigkill_loses_no_durable_record() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cumulative over rounds: each child continues the queue the previous one left.
    let mut durable = BTreeMap::new();
    let mut acked = BTreeSet::new();
    // Five rounds, the later ones long enough for acknowledged segments to be recycled (the
    // child uses only recycled spares), so kills also land in recycled active segments.
    for round in 0..5u64 {
        let mut child = Command::new(&exe)
            .args([
                "tests::kill::kill_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let lines = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut started = Some(started_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("durable")
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(());
                }
                if line.starts_with("durable") || line.starts_with("ack") {
                    lines.push(line);
                }
            }
            lines
        });
        // Kill at a different moment of each round, counted from the first durable record.
        if started_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("round {round}: the child never made a record durable");
        }
        std::thread::sleep(Duration::from_millis(50 + 250 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = lines.join().unwrap();

        let before = durable.len();
        for line in &lines {
            let mut parts = line.splitn(3, ' ');
            match (
                parts.next(),
                parts.next().and_then(|s| s.parse::<u64>().ok()),
            ) {
                (Some("durable"), Some(seq)) => {
                    durable.insert(seq, parts.next().unwrap_or_default().to_string());
                }
                (Some("ack"), Some(seq)) => {
                    acked.insert(seq);
                }
                _ => {}
            }
        }
        assert!(
            durable.len() > before,
            "round {round}: the child made nothing durable"
        );

        let (q, report) = DiskQueue::<()>::open(dir.path(), opts()).unwrap();
        assert_eq!(report.corrupt_records, 0, "round {round}: {report}");
        let low = report.acked_low_water;
        // Everything below the checkpoint was acknowledged by the child.
        let first_unacked = (0..).find(|s| !acked.contains(s)).unwrap();
        assert!(
            low <= first_unacked,
            "round {round}: checkpoint {low} covers unacknowledged seq {first_unacked}"
        );
        let replayed: BTreeMap<u64, Vec<u8>> = super::drain(&q).into_iter().collect();
        for (seq, payload) in durable.range(low..) {
            assert_eq!(
                replayed
                    .get(seq)
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                Some(payload.clone()),
                "round {round}: durable seq {seq} lost (low {low}, next {})",
                report.next_seq
            );
        }
        eprintln!(
            "round {round}: {} durable, {} acked so far; reopened with low {low}, next {}, {} replayed",
            durable.len(),
            acked.len(),
            report.next_seq,
            replayed.len()
        );
        // Leave the queue as the next child will find it: nothing acknowledged in between.
        drop(q);
    }
}
