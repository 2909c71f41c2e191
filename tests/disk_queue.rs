//! The disk queue seen from outside, with the real binary: damaged segment files after a stop
//! (the process starts, says what it skipped, counts it, and delivers the rest), a full queue
//! (`block` holds producers up to `accept_timeout`, `drop_newest` refuses at once), a disk that
//! runs out of space (503, `io_error`, nothing acknowledged that is not stored), and the ack
//! points of the HTTP source (`received`, `durable`, `delivered`), and what the syncs behind
//! durable acks show on `/metrics` and `/stats`.
//!
//! Every test checks what the producer was told, what the upstream got, and the ledger.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{Sluice, component, count, dropped, http_relay_config, segments};
use common::{Behaviour, Upstream, client, for_each_concurrent, wait_until};
use http::StatusCode;
use parking_lot::Mutex;

/// `n` distinct bodies of `len` bytes, each starting with `tag` and its number.
fn bodies(tag: &str, n: usize, len: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut body = format!("{tag} {i:05} ");
            assert!(body.len() <= len, "bodies of {len} bytes hold their name");
            body.extend(std::iter::repeat_n('x', len - body.len()));
            body
        })
        .collect()
}

/// Posts every body (8 at a time) and asserts each is accepted.
async fn send_all(relay: &Sluice, bodies: &[String]) {
    let (http, api) = (client(), relay.api.clone());
    let items: Vec<(usize, String)> = bodies.iter().cloned().enumerate().collect();
    for_each_concurrent(items, 8, move |(i, body)| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let response = http
                .post(format!("{api}/events/{i}"))
                .body(body)
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::ACCEPTED, "event {i}");
        }
    })
    .await;
}

/// The bodies the upstream received, in arrival order.
fn arrived(upstream: &Upstream) -> Vec<String> {
    upstream.bodies()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Damaged segments
// ---------------------------------------------------------------------------------------------

/// One record of a segment file, as laid out by `sluice-diskq` (`u32 length | u32 crc32c |
/// u64 seq | payload`), with the HTTP body it carries (the last bytes of the payload).
#[derive(Debug, Clone)]
struct Record {
    offset: u64,
    /// Header included.
    len: u64,
    seq: u64,
    body: String,
}

const RECORD_HEADER: usize = 16;

fn records(path: &Path, body_len: usize) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = Vec::new();
    let mut at = 0;
    // Zeros after the last record are a preallocated segment's unused space.
    while at + RECORD_HEADER <= bytes.len() && bytes[at..at + RECORD_HEADER] != [0; RECORD_HEADER] {
        let field = |from: usize, n: usize| &bytes[at + from..at + from + n];
        let payload_len = u32::from_le_bytes(field(0, 4).try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(field(8, 8).try_into().expect("8 bytes"));
        let end = at + RECORD_HEADER + payload_len;
        assert!(end <= bytes.len(), "an intact segment before the damage");
        let body = String::from_utf8_lossy(&bytes[end - body_len..end]).into_owned();
        out.push(Record {
            offset: at as u64,
            len: (end - at) as u64,
            seq,
            body,
        });
        at = end;
    }
    out
}

/// What a damage should cost, as recovery reports it.
struct Damage {
    /// The bodies in damaged records: never delivered.
    lost: Vec<String>,
    corrupt_records: u64,
    corrupt_bytes: u64,
    truncated_bytes: u64,
    /// The first damaged region: the file, and the offset where recovery sees bad bytes.
    region: (PathBuf, u64),
}

/// Writes `events` bodies of `body_len` bytes through a relay whose upstream is down, stops it
/// with SIGTERM (the backlog stays on disk), applies `damage` to the segment files, restarts it
/// with the upstream up, and checks that it reports and counts the damage and delivers the rest.
async fn damaged_queue_starts_counts_and_delivers_the_rest(
    tag: &str,
    queue: &str,
    events: usize,
    body_len: usize,
    damage: impl FnOnce(&[PathBuf]) -> Damage,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    let config = http_relay_config(&format!("http://{address}"), "", queue);
    let mut relay = Sluice::start(dir.path(), &config).await;
    let sent = bodies(tag, events, body_len);
    send_all(&relay, &sent).await;
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    assert_eq!(
        relay.last_log_fields()["kept_on_disk"],
        events,
        "{}",
        relay.log_text()
    );

    let files = segments(&dir.path().join("data"), "upstream");
    let damage = damage(&files);
    let lost: HashSet<&String> = damage.lost.iter().collect();
    assert_eq!(lost.len(), damage.lost.len());

    // `sluice queue inspect` sees the damage before the relay does.
    let queue_dir = dir.path().join("data").join("queues").join("upstream");
    let inspected = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["queue", "inspect"])
        .arg(&queue_dir)
        .output()
        .expect("run sluice queue inspect");
    assert!(inspected.status.success(), "{inspected:?}");
    let inspected = String::from_utf8_lossy(&inspected.stdout);
    println!("{tag}: sluice queue inspect says\n{inspected}");
    let intact = events - lost.len();
    assert!(
        inspected.contains(&format!("records    {intact} on disk")),
        "inspect counts the intact records"
    );
    assert!(
        inspected.contains(&format!(
            "corrupt    {} records, {} bytes",
            damage.corrupt_records,
            damage.corrupt_bytes + damage.truncated_bytes
        )),
        "inspect counts the damage as recovery will"
    );
    let as_json = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["queue", "inspect", "--json"])
        .arg(&queue_dir)
        .output()
        .expect("run sluice queue inspect --json");
    assert!(as_json.status.success(), "{as_json:?}");
    let as_json: serde_json::Value =
        serde_json::from_slice(&as_json.stdout).expect("inspect --json prints JSON");
    assert_eq!(as_json["entries"], intact, "{as_json:#}");
    assert_eq!(as_json["unacknowledged"], intact, "{as_json:#}");
    assert_eq!(
        as_json["corrupt_records"], damage.corrupt_records,
        "{as_json:#}"
    );
    assert_eq!(
        as_json["corrupt_bytes"],
        damage.corrupt_bytes + damage.truncated_bytes,
        "{as_json:#}"
    );
    assert_eq!(as_json["checkpoint"]["status"], "missing", "{as_json:#}");

    let upstream = Upstream::start_on(address).await;
    let mut relay = Sluice::start(dir.path(), &config).await;
    let expected = intact;
    upstream.wait_for(expected).await;
    let stats = relay.wait_idle_and_balanced().await;
    let got = arrived(&upstream);
    let log = relay.log_text();
    assert_eq!(got.len(), expected, "nothing delivered twice");
    let got: HashSet<&String> = got.iter().collect();
    for body in &sent {
        let short = &body[..body.len().min(24)];
        if lost.contains(body) {
            assert!(!got.contains(body), "{short}… was damaged, yet delivered");
        } else {
            assert!(got.contains(body), "{short}… was intact, yet not delivered");
        }
    }

    let recovered = relay.log_fields("Disk queue recovered with damage");
    assert_eq!(
        recovered.len(),
        1,
        "one warning says what was skipped:\n{log}"
    );
    let report = &recovered[0];
    println!("{tag}: recovery said {report}");
    assert_eq!(report["sink"], "upstream");
    assert_eq!(report["corrupt_records"], damage.corrupt_records, "{log}");
    assert_eq!(report["corrupt_bytes"], damage.corrupt_bytes, "{log}");
    assert_eq!(report["truncated_bytes"], damage.truncated_bytes, "{log}");
    assert_eq!(report["replayed"], expected, "{log}");
    let regions = relay.log_fields("Skipping corrupt bytes");
    let (path, offset) = &damage.region;
    assert!(
        regions
            .iter()
            .any(|r| r["path"] == path.display().to_string() && r["offset"] == *offset),
        "a warning names the damaged file and offset {}:{offset}:\n{log}",
        path.display()
    );

    let sink = component(&stats, "upstream");
    assert_eq!(
        dropped(sink, "decode_error"),
        damage.corrupt_records,
        "records lost to corruption are counted as dropped decode_error: {stats:#}"
    );
    assert_eq!(
        count(sink, "received"),
        expected as u64 + damage.corrupt_records,
        "{stats:#}"
    );
    assert_eq!(count(sink, "delivered"), expected as u64, "{stats:#}");
    // The replayed events' bytes were counted at start-up, so delivering them leaves none.
    let metrics = relay.metrics().await;
    assert_eq!(
        metric(&metrics, "sluice_queue_bytes"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

/// 1 MiB segments (`max_bytes / 8`, at least 1 MiB), so 300 bodies of 8 KiB fill three.
const SMALL_SEGMENTS: &str =
    r#"queue = { type = "disk", max_bytes = "8MiB", max_event_bytes = "64KiB" }"#;
const DEFAULT_DISK: &str = r#"queue = { type = "disk" }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flips_in_the_middle_skip_one_record_count_it_and_the_rest_is_delivered() {
    damaged_queue_starts_counts_and_delivers_the_rest("flip", SMALL_SEGMENTS, 300, 8192, |files| {
        assert!(files.len() >= 3, "several segments: {files:?}");
        let path = &files[files.len() / 2];
        let all = records(path, 8192);
        let victim = all[all.len() / 2].clone();
        let mut bytes = std::fs::read(path).expect("read segment");
        let middle = (victim.offset + victim.len / 2) as usize;
        for byte in &mut bytes[middle..middle + 3] {
            *byte ^= 0b0101_1010;
        }
        std::fs::write(path, bytes).expect("write segment");
        Damage {
            lost: vec![victim.body],
            corrupt_records: 1,
            corrupt_bytes: victim.len,
            truncated_bytes: 0,
            region: (path.clone(), victim.offset),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_tail_is_cut_off_and_reported_and_the_rest_is_delivered() {
    damaged_queue_starts_counts_and_delivers_the_rest("cut", DEFAULT_DISK, 100, 1024, |files| {
        let path = files.last().expect("a segment");
        let last = records(path, 1024).pop().expect("a record");
        let keep = last.offset + last.len / 2;
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(keep))
            .expect("truncate segment");
        // The half record left is a torn write: cut off and reported in bytes. It cannot be
        // told apart from a write the crash interrupted (never acknowledged), so it is not
        // counted as a dropped event.
        Damage {
            lost: vec![last.body],
            corrupt_records: 0,
            corrupt_bytes: 0,
            truncated_bytes: last.len / 2,
            region: (path.clone(), last.offset),
        }
    })
    .await;
}

/// Zeros from a record boundary to the end of a segment are unused (preallocated) space, not
/// damage; zeros from the middle of a record on cut that record off, and only its surviving
/// bytes are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_zeroed_from_the_middle_of_a_record_cuts_off_the_rest_and_reports_that_record() {
    damaged_queue_starts_counts_and_delivers_the_rest("zero", DEFAULT_DISK, 100, 1024, |files| {
        let path = files.last().expect("a segment");
        let all = records(path, 1024);
        // From the middle of the third-last record to the end of the file.
        let first_bad = all[all.len() - 3].clone();
        let mut bytes = std::fs::read(path).expect("read segment");
        let from = (first_bad.offset + first_bad.len / 2) as usize;
        bytes[from..].fill(0);
        std::fs::write(path, &bytes).expect("write segment");
        Damage {
            lost: all[all.len() - 3..]
                .iter()
                .map(|r| r.body.clone())
                .collect(),
            corrupt_records: 0,
            corrupt_bytes: 0,
            truncated_bytes: from as u64 - first_bad.offset,
            region: (path.clone(), first_bad.offset),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_end_of_an_earlier_segment_counts_the_lost_record_and_the_rest_is_delivered() {
    damaged_queue_starts_counts_and_delivers_the_rest(
        "early",
        SMALL_SEGMENTS,
        300,
        8192,
        |files| {
            assert!(files.len() >= 2, "several segments: {files:?}");
            let path = &files[0];
            let last = records(path, 8192).pop().expect("a record");
            let keep = last.offset + last.len / 2;
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(keep))
                .expect("truncate segment");
            // Unlike the active segment's tail, the next segment starts at a higher seq: the gap
            // is a known number of lost records.
            let next_first = records(&files[1], 8192)[0].seq;
            assert_eq!(next_first, last.seq + 1);
            Damage {
                lost: vec![last.body],
                corrupt_records: 1,
                corrupt_bytes: last.len / 2,
                truncated_bytes: 0,
                region: (path.clone(), last.offset),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_replays_everything_on_disk_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = Upstream::start().await;
    let config = http_relay_config(&first.url(), "", DEFAULT_DISK);
    let mut relay = Sluice::start(dir.path(), &config).await;
    let delivered = bodies("delivered", 100, 1024);
    send_all(&relay, &delivered).await;
    first.wait_for(delivered.len()).await;
    relay.wait_idle_and_balanced().await;
    // The upstream now refuses (503: retried), so the next events stay queued.
    first.set(Behaviour {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..Behaviour::default()
    });
    let queued = bodies("queued", 50, 1024);
    send_all(&relay, &queued).await;
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    assert_eq!(relay.last_log_fields()["kept_on_disk"], queued.len());

    let queue_dir = dir.path().join("data").join("queues").join("upstream");
    let checkpoint = queue_dir.join("checkpoint");
    let mut bytes = std::fs::read(&checkpoint).expect("a checkpoint after acknowledgements");
    bytes[10] ^= 0xff;
    std::fs::write(&checkpoint, bytes).expect("write checkpoint");

    // A new upstream, so that only the replay is seen.
    let second = Upstream::start().await;
    let config = http_relay_config(&second.url(), "", DEFAULT_DISK);
    let mut relay = Sluice::start(dir.path(), &config).await;
    let all = delivered.len() + queued.len();
    second.wait_for(all).await;
    let stats = relay.wait_idle_and_balanced().await;
    let log = relay.log_text();
    assert_eq!(
        relay.log_fields("Ignoring damaged checkpoint").len(),
        1,
        "the damaged checkpoint is reported:\n{log}"
    );
    let got: HashSet<String> = arrived(&second).into_iter().collect();
    assert!(
        queued.iter().all(|b| got.contains(b)),
        "nothing unacknowledged is lost"
    );
    assert_eq!(
        got.len(),
        all,
        "what was delivered before comes again (at-least-once), once"
    );
    assert_eq!(second.count(), all);
    let sink = component(&stats, "upstream");
    assert_eq!(count(sink, "received"), all as u64, "{stats:#}");
    assert_eq!(count(sink, "delivered"), all as u64, "{stats:#}");
    assert_eq!(relay.terminate().await, Some(0), "{log}");
}

// ---------------------------------------------------------------------------------------------
// A full queue
// ---------------------------------------------------------------------------------------------

/// The smallest disk queue (1 MiB, one segment), 16 KiB events.
fn full_queue_config(upstream: &str, when_full: &str, accept_timeout: &str) -> String {
    http_relay_config(
        upstream,
        &format!(r#"accept_timeout = "{accept_timeout}""#),
        &format!(
            r#"queue = {{ type = "disk", max_bytes = "1MiB", max_event_bytes = "64KiB", when_full = "{when_full}" }}"#
        ),
    )
}

/// Sends bodies one at a time until the first refusal; returns the accepted ones, and the
/// refusal with how long it took.
async fn fill(relay: &Sluice, tag: &str) -> (Vec<String>, reqwest::Response, Duration) {
    let http = client();
    let mut accepted = Vec::new();
    for body in bodies(tag, 200, 16 * 1024) {
        let started = Instant::now();
        let response = http
            .post(format!("{}/fill", relay.api))
            .body(body.clone())
            .send()
            .await
            .expect("request");
        if response.status() != StatusCode::ACCEPTED {
            return (accepted, response, started.elapsed());
        }
        accepted.push(body);
    }
    panic!("200 events of 16 KiB fit in a 1 MiB queue");
}

/// Checks a refusal for a full queue.
fn assert_queue_full(response: &reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        header(response, "retry-after").as_deref(),
        Some("1"),
        "a full queue tells the producer when to come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_that_blocks_holds_producers_until_accept_timeout_then_answers_503() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    let config = full_queue_config(&format!("http://{address}"), "block", "1s");
    let mut relay = Sluice::start(dir.path(), &config).await;
    let (accepted, refusal, waited) = fill(&relay, "block").await;
    assert_queue_full(&refusal);
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(5),
        "held for accept_timeout (1s) before the refusal, was {waited:?}"
    );
    println!(
        "block: {} events of 16 KiB accepted, then refused after {waited:?}",
        accepted.len()
    );
    let stats = relay
        .wait_for("a settled snapshot", |s| s["settled"] == true)
        .await;
    assert_eq!(stats["balanced"], true, "{stats:#}");
    let (source, sink) = (component(&stats, "api"), component(&stats, "upstream"));
    assert_eq!(dropped(source, "queue_full"), 1, "{stats:#}");
    assert_eq!(dropped(sink, "queue_full"), 1, "{stats:#}");
    assert_eq!(
        count(sink, "queued") + count(sink, "in_flight"),
        accepted.len() as u64,
        "everything acknowledged is held: {stats:#}"
    );

    // A producer waiting for room is let in when the upstream returns and drains the queue.
    let http = client();
    let api = relay.api.clone();
    let late = bodies("late", 1, 16 * 1024).remove(0);
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let response = http
            .post(format!("{api}/fill"))
            .body(late)
            .send()
            .await
            .expect("request");
        (response.status(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let upstream = Upstream::start_on(address).await;
    let (status, waited) = waiting.await.expect("task");
    println!("block: a producer waiting for room got {status} after {waited:?}");
    assert!(
        waited >= Duration::from_millis(100),
        "it waited for the upstream to come back: {waited:?}"
    );
    let mut expected = accepted.clone();
    if status == StatusCode::ACCEPTED {
        expected.extend(bodies("late", 1, 16 * 1024));
    }
    upstream.wait_for(expected.len()).await;
    let stats = relay.wait_idle_and_balanced().await;
    let got: HashSet<String> = arrived(&upstream).into_iter().collect();
    assert!(
        expected.iter().all(|b| got.contains(b)),
        "everything acknowledged is delivered"
    );
    let sink = component(&stats, "upstream");
    assert_eq!(count(sink, "delivered"), expected.len() as u64, "{stats:#}");
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a producer held by a full queue is let in once the queue drained, within its \
         accept_timeout (it waited {waited:?}); stats: {stats:#}"
    );

    // And the drained queue takes events again.
    let response = client()
        .post(format!("{}/after", relay.api))
        .body("after the drain")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    upstream.wait_for(expected.len() + 1).await;
    relay.wait_idle_and_balanced().await;
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_that_drops_newest_refuses_at_once_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    let config = full_queue_config(&format!("http://{address}"), "drop_newest", "10s");
    let mut relay = Sluice::start(dir.path(), &config).await;
    let (accepted, refusal, waited) = fill(&relay, "drop").await;
    assert_queue_full(&refusal);
    assert!(
        waited < Duration::from_secs(1),
        "refused at once, not after accept_timeout (10s): {waited:?}"
    );
    let http = client();
    for (i, body) in bodies("refused", 4, 16 * 1024).into_iter().enumerate() {
        let started = Instant::now();
        let response = http
            .post(format!("{}/more/{i}", relay.api))
            .body(body)
            .send()
            .await
            .expect("request");
        assert_queue_full(&response);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    println!(
        "drop_newest: {} events of 16 KiB accepted, then refused in {waited:?}",
        accepted.len()
    );
    let stats = relay
        .wait_for("a settled snapshot", |s| s["settled"] == true)
        .await;
    assert_eq!(stats["balanced"], true, "{stats:#}");
    assert_eq!(dropped(component(&stats, "api"), "queue_full"), 5);
    assert_eq!(dropped(component(&stats, "upstream"), "queue_full"), 5);

    let upstream = Upstream::start_on(address).await;
    upstream.wait_for(accepted.len()).await;
    let stats = relay.wait_idle_and_balanced().await;
    let got: HashSet<String> = arrived(&upstream).into_iter().collect();
    assert!(accepted.iter().all(|b| got.contains(b)));
    assert!(!got.iter().any(|b| b.starts_with("refused")));
    assert_eq!(
        count(component(&stats, "upstream"), "delivered"),
        accepted.len() as u64
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_disk_queue_that_passes_validate_also_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The smallest disk queue the config allows, with the default largest event.
    let config = http_relay_config(
        "http://127.0.0.1:9",
        "",
        r#"queue = { type = "disk", max_bytes = "1MiB" }"#,
    );
    let path = dir.path().join("validate.toml");
    let text = config
        .replace("{data_dir}", &dir.path().join("data").display().to_string())
        .replace("{admin}", "127.0.0.1:0")
        .replace("{api}", "127.0.0.1:0");
    std::fs::write(&path, text).expect("write config");
    let validated = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .expect("run sluice validate");
    if validated.status.success() {
        // Panics with the log if it does not start.
        let mut relay = Sluice::start(dir.path(), &config).await;
        assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    } else {
        let errors = String::from_utf8_lossy(&validated.stderr);
        assert!(
            errors.contains("max_event_bytes"),
            "validate names the setting to change: {errors}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A failing disk
// ---------------------------------------------------------------------------------------------

/// A tmpfs of a given size mounted on a temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a test failed with a process inside): detach it instead.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// A relay whose data directory is on a 1 MiB tmpfs, sent 32 KiB events one at a time until
/// its disk queue cannot write and five requests were refused; the upstream is down.
struct FullDisk {
    relay: Sluice,
    config: String,
    address: std::net::SocketAddr,
    acked: Vec<String>,
    refused: Vec<String>,
    data: PathBuf,
    dir: tempfile::TempDir,
    /// Last: unmounted once the relay is gone.
    disk: Tmpfs,
}

/// `None` (and says why) where a tmpfs cannot be mounted.
async fn fill_a_small_disk() -> Option<FullDisk> {
    let disk = match Tmpfs::mount("1m") {
        Ok(disk) => disk,
        Err(why) => {
            println!("skipped: cannot mount a 1 MiB tmpfs here ({why})");
            return None;
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let data = disk.path().join("data");
    let address = Upstream::start().await.stop();
    let config = http_relay_config(
        &format!("http://{address}"),
        r#"ack = "durable""#,
        r#"queue = { type = "disk", sync = "always" }"#,
    );
    let relay = Sluice::start_with_data(dir.path(), &data, &config).await;
    let http = client();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for body in bodies("disk", 100, 32 * 1024) {
        let response = http
            .post(format!("{}/disk", relay.api))
            .body(body.clone())
            .send()
            .await
            .expect("request");
        match response.status() {
            StatusCode::ACCEPTED => {
                assert!(
                    refused.is_empty(),
                    "no acknowledgement after a failed write"
                );
                acked.push(body);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    response.text().await.expect("body"),
                    "cannot store the event; not accepted\n"
                );
                refused.push(body);
                if refused.len() == 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    println!(
        "failing disk: {} events of 32 KiB acknowledged, then {} refused",
        acked.len(),
        refused.len()
    );
    assert!(
        !acked.is_empty() && refused.len() == 5,
        "the disk filled up"
    );
    Some(FullDisk {
        relay,
        config,
        address,
        acked,
        refused,
        data,
        dir,
        disk,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_runs_out_of_space_refuses_with_503_and_never_acknowledges_what_it_could_not_store()
 {
    let Some(mut full) = fill_a_small_disk().await else {
        return;
    };
    let relay = &mut full.relay;
    relay.wait_for_log("Disk queue write failed").await;
    let ready = client()
        .get(format!("{}/ready", relay.admin))
        .send()
        .await
        .expect("GET /ready");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(
        ready["failing"],
        serde_json::json!(["upstream"]),
        "/ready names the sink whose disk failed: {ready}"
    );
    let stats = relay
        .wait_for("a settled snapshot", |s| s["settled"] == true)
        .await;
    assert_eq!(stats["balanced"], true, "{stats:#}");
    let source = component(&stats, "api");
    assert_eq!(dropped(source, "io_error"), 5, "{stats:#}");
    assert_eq!(
        count(source, "delivered"),
        full.acked.len() as u64,
        "only stored events count as handed on: {stats:#}"
    );
    relay.kill().await;

    // With room again, a restart delivers every acknowledged event: each was on disk.
    full.disk.resize("64m");
    let upstream = Upstream::start_on(full.address).await;
    let mut relay = Sluice::start_with_data(full.dir.path(), &full.data, &full.config).await;
    upstream.wait_for(full.acked.len()).await;
    let stats = relay.wait_idle_and_balanced().await;
    let got: HashSet<String> = arrived(&upstream).into_iter().collect();
    assert!(
        full.acked.iter().all(|b| got.contains(b)),
        "every acknowledged event was on disk"
    );
    let refused_but_stored = full.refused.iter().filter(|b| got.contains(*b)).count();
    println!(
        "failing disk: after the restart {} delivered ({refused_but_stored} of them refused \
         at the time); recovery: {:?}",
        got.len(),
        relay.log_fields("Disk queue recovered")
    );
    assert_eq!(
        count(component(&stats, "upstream"), "delivered"),
        got.len() as u64
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_disk_could_not_store_is_counted_io_error_by_the_sink_not_left_queued() {
    let Some(mut full) = fill_a_small_disk().await else {
        return;
    };
    let relay = &mut full.relay;
    let stats = relay
        .wait_for("a settled snapshot", |s| s["settled"] == true)
        .await;
    let sink = component(&stats, "upstream");
    assert_eq!(
        dropped(sink, "io_error"),
        5,
        "the sink counts every event its queue could not store as dropped io_error: {stats:#}"
    );
    assert_eq!(
        count(sink, "queued") + count(sink, "in_flight"),
        full.acked.len() as u64,
        "the sink holds exactly what was acknowledged: {stats:#}"
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    assert_eq!(
        relay.last_log_fields()["kept_on_disk"],
        full.acked.len(),
        "the shutdown reports what is on disk: {}",
        relay.log_text()
    );
}

// ---------------------------------------------------------------------------------------------
// Ack points
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_delivered_answers_only_after_the_upstream_has_the_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        delay: Duration::from_millis(150),
        ..Behaviour::default()
    });
    let config = http_relay_config(&upstream.url(), r#"ack = "delivered""#, DEFAULT_DISK);
    let mut relay = Sluice::start(dir.path(), &config).await;
    let http = client();
    for i in 0..5 {
        let body = format!("delivered {i}");
        let started = Instant::now();
        let response = http
            .post(format!("{}/ack/{i}", relay.api))
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert!(
            arrived(&upstream).contains(&body),
            "the upstream had {body:?} before its producer was answered"
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
    let stats = relay.wait_idle_and_balanced().await;
    assert_eq!(count(component(&stats, "upstream"), "delivered"), 5);
    assert_eq!(count(component(&stats, "api"), "delivered"), 5);
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_delivered_answers_504_after_delivered_timeout_and_delivers_when_the_upstream_returns()
{
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    let config = http_relay_config(
        &format!("http://{address}"),
        "ack = \"delivered\"\ndelivered_timeout = \"300ms\"",
        DEFAULT_DISK,
    );
    let mut relay = Sluice::start(dir.path(), &config).await;
    let http = client();
    let ids: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for i in 0..3 {
        let body = format!("late {i}");
        let started = Instant::now();
        let response = http
            .post(format!("{}/late/{i}", relay.api))
            .body(body.clone())
            .send()
            .await
            .expect("request");
        let waited = started.elapsed();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "answered after delivered_timeout (300ms): {waited:?}"
        );
        let id = header(&response, "x-sluice-event-id").expect("the 504 names the event");
        assert_eq!(
            response.text().await.expect("body"),
            "not delivered in time; still queued\n"
        );
        ids.lock().push((body, id));
    }
    let stats = relay
        .wait_for("a settled snapshot", |s| s["settled"] == true)
        .await;
    assert_eq!(stats["balanced"], true, "{stats:#}");
    let sink = component(&stats, "upstream");
    assert_eq!(count(sink, "queued") + count(sink, "in_flight"), 3);

    let upstream = Upstream::start_on(address).await;
    upstream.wait_for(3).await;
    let stats = relay.wait_idle_and_balanced().await;
    let seen: HashSet<(String, String)> = upstream.bodies_with_ids().into_iter().collect();
    let told: HashSet<(String, String)> = ids.lock().iter().cloned().collect();
    assert_eq!(
        seen, told,
        "each timed-out event is delivered later, under the id its 504 gave"
    );
    assert_eq!(count(component(&stats, "upstream"), "delivered"), 3);
    assert_eq!(count(component(&stats, "api"), "delivered"), 3);
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_delivered_answers_502_when_the_upstream_rejects_the_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        status: StatusCode::BAD_REQUEST,
        ..Behaviour::default()
    });
    let config = http_relay_config(&upstream.url(), r#"ack = "delivered""#, DEFAULT_DISK);
    let mut relay = Sluice::start(dir.path(), &config).await;
    let response = client()
        .post(format!("{}/bad", relay.api))
        .body("refused upstream")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(upstream.count(), 1);
    let stats = relay.wait_idle_and_balanced().await;
    assert_eq!(dropped(component(&stats, "upstream"), "rejected"), 1);
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_received_with_a_disk_queue_answers_without_waiting_for_the_sync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = Upstream::start().await;
    // Synced every 2 s: twenty requests in a row answered at the sync would take ~40 s.
    let config = http_relay_config(
        &upstream.url(),
        r#"ack = "received""#,
        r#"queue = { type = "disk", sync = { every = "2s" } }"#,
    );
    let mut relay = Sluice::start(dir.path(), &config).await;
    let http = client();
    let started = Instant::now();
    for i in 0..20 {
        let response = http
            .post(format!("{}/quick/{i}", relay.api))
            .body(format!("quick {i}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let answered = started.elapsed();
    println!("ack received: 20 requests answered in {answered:?}");
    assert!(
        answered < Duration::from_millis(1500),
        "answered before the sync: {answered:?}"
    );
    upstream.wait_for(20).await;
    let stats = relay.wait_idle_and_balanced().await;
    assert_eq!(count(component(&stats, "upstream"), "delivered"), 20);
    wait_until("no more deliveries", || upstream.count() == 20).await;
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

/// The value of the sample `name{component="upstream"}` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{component=\"upstream\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acks_share_syncs_and_the_syncs_show_on_metrics_and_stats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = Upstream::start().await;
    let config = http_relay_config(
        &upstream.url(),
        "",
        r#"queue = { type = "disk", sync = "always" }"#,
    );
    let mut relay = Sluice::start(dir.path(), &config).await;
    let events = 64;
    // Eight producers at a time, each answered only after the sync that covered its event.
    send_all(&relay, &bodies("synced", events, 100)).await;
    upstream.wait_for(events).await;
    relay.wait_idle_and_balanced().await;

    let text = relay.metrics().await;
    let fsyncs = metric(&text, "sluice_queue_fsyncs_total").expect("fsyncs on /metrics");
    let synced = metric(&text, "sluice_queue_events_synced_total").expect("events synced");
    let waits = metric(&text, "sluice_queue_sync_seconds_count").expect("sync latency");
    assert_eq!(synced, events as f64, "{text}");
    assert!((1.0..=events as f64).contains(&fsyncs), "{text}");
    assert_eq!(
        waits, fsyncs,
        "one latency sample per sync that released waiters"
    );
    let everything = text.lines().any(|line| {
        line.starts_with("sluice_queue_sync_seconds_bucket{")
            && line.contains(r#"le="+Inf""#)
            && line.contains(r#"component="upstream""#)
            && line.ends_with(&format!(" {waits}"))
    });
    assert!(everything, "the +Inf bucket holds every sample: {text}");
    let acks = metric(&text, "sluice_queue_ack_wait_seconds_count").expect("ack wait");
    assert_eq!(acks, events as f64, "one ack wait sample per event: {text}");
    assert!(metric(&text, "sluice_queue_disk_bytes").is_some(), "{text}");

    let stats = relay.stats().await;
    let queue = &component(&stats, "upstream")["queue"];
    assert_eq!(queue["fsyncs"].as_f64(), Some(fsyncs));
    for wait in ["sync_wait_ms", "ack_wait_ms"] {
        let (p50, p99) = (&queue[wait]["p50"], &queue[wait]["p99"]);
        assert!(
            p50.as_f64().is_some_and(|p50| p50 > 0.0) && p99.as_f64() >= p50.as_f64(),
            "{wait}: {queue}"
        );
    }
    // No event waited longer than the oldest event of its sync.
    let max = |wait: &str| queue[wait]["max"].as_f64().unwrap_or(f64::NAN);
    assert!(max("ack_wait_ms") <= max("sync_wait_ms"), "{queue}");
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_left_by_a_renamed_or_memory_only_sink_is_reported_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    let config = http_relay_config(&format!("http://{address}"), "", "");
    let mut relay = Sluice::start(dir.path(), &config).await;
    send_all(&relay, &bodies("stranded", 5, 100)).await;
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    assert_eq!(relay.last_log_fields()["kept_on_disk"], 5);

    let stranded_warning = "A disk queue holds events that no sink reads";
    let queue_dir = dir.path().join("data").join("queues").join("upstream");
    for (what, changed) in [
        (
            "renamed",
            config.replace("[sinks.upstream]", "[sinks.renamed]"),
        ),
        (
            "switched to memory",
            http_relay_config(
                &format!("http://{address}"),
                "",
                r#"queue = { type = "memory" }"#,
            ),
        ),
    ] {
        let mut relay = Sluice::start(dir.path(), &changed).await;
        let warned = relay.wait_for_log(stranded_warning).await;
        assert_eq!(warned.len(), 1, "{what}: {}", relay.log_text());
        assert_eq!(warned[0]["events"], 5, "{what}: {}", relay.log_text());
        assert_eq!(
            warned[0]["dir"],
            queue_dir.display().to_string(),
            "{what}: {}",
            relay.log_text()
        );
        let stats = relay.stats().await;
        assert_eq!(
            stats["stranded_queues"],
            serde_json::json!([{
                "dir": queue_dir.display().to_string(),
                "events": 5,
                "bytes": warned[0]["bytes"],
            }]),
            "{what}: {stats:#}"
        );
        let metrics = relay.metrics().await;
        assert!(
            metrics.lines().any(|l| l == "sluice_stranded_queues 1"),
            "{what}: {metrics}"
        );
        assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    }

    // Back under its name, the sink delivers the backlog, and nothing is reported.
    let upstream = Upstream::start_on(address).await;
    let mut relay = Sluice::start(dir.path(), &config).await;
    upstream.wait_for(5).await;
    relay.wait_idle_and_balanced().await;
    assert!(
        relay.log_fields(stranded_warning).is_empty(),
        "{}",
        relay.log_text()
    );
    let stats = relay.stats().await;
    assert!(stats.get("stranded_queues").is_none(), "{stats:#}");
    assert!(
        relay
            .metrics()
            .await
            .lines()
            .any(|l| l == "sluice_stranded_queues 0")
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}
