//! The `file` sink: the Vault corpus end to end, rotation by size and age, gzip, pruning, and
//! reopening on SIGHUP — with the ledger checked after each.

mod common;

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestRelay;
use common::sockets::{LineReceiver, component, relay_config, send_tcp, tcp_sink, vault_corpus};
use flate2::read::GzDecoder;
use sluice::sinks::file::backups;

const TCP_SOURCE: &str = "type = \"tcp\"\nlisten = \"127.0.0.1:0\"";

fn file_sink(name: &str, path: &Path, extra: &str) -> String {
    format!(
        r#"
[sinks.{name}]
type = "file"
inputs = ["in"]
path = "{}"
retry = {{ initial_backoff = "10ms", max_backoff = "200ms" }}
{extra}
"#,
        path.display()
    )
}

/// The records of a file, gzipped or not.
fn records(path: &Path) -> Vec<String> {
    let mut text = String::new();
    let file = std::fs::File::open(path).expect("open");
    if path.extension().is_some_and(|e| e == "gz") {
        GzDecoder::new(file)
            .read_to_string(&mut text)
            .expect("gunzip");
    } else {
        std::io::BufReader::new(file)
            .read_to_string(&mut text)
            .expect("read");
    }
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "records end in LF: {path:?}"
    );
    text.lines().map(str::to_owned).collect()
}

/// Sends `lines` one TCP connection at a time in groups of `group`, waiting for each group to
/// be written so that batches (and rotations) happen between groups.
async fn send_in_groups(relay: &TestRelay, sink: &str, lines: &[String], group: usize) {
    let mut sent = component(&relay.stats().await, sink)["delivered"]
        .as_u64()
        .unwrap_or(0);
    for chunk in lines.chunks(group) {
        let mut bytes = Vec::new();
        for line in chunk {
            writeln!(bytes, "{line}").expect("format");
        }
        send_tcp(relay.addr("in"), &bytes).await;
        sent += chunk.len() as u64;
        relay
            .wait_for("the group to be written", |s| {
                component(s, sink)["delivered"] == sent
            })
            .await;
    }
}

fn numbered(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(80)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_corpus_reaches_a_file_and_a_tcp_forward_intact() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (forward, forwarded) = LineReceiver::collecting().await;
    let sinks = format!(
        "{}{}",
        file_sink(
            "audit_log",
            &dir.path().join("audit/{sink}.log"),
            "compression = \"gzip\""
        ),
        tcp_sink(forward.addr, "")
    );
    let relay = TestRelay::start(&relay_config(
        &format!("{TCP_SOURCE}\nstrip_prefix = \"vault-audit: \""),
        &sinks,
    ))
    .await;
    let corpus = vault_corpus();
    let mut bytes = Vec::new();
    for entry in &corpus {
        // Vault's socket device writes `prefix` before each entry.
        writeln!(bytes, "vault-audit: {entry}").expect("format");
    }
    send_tcp(relay.addr("in"), &bytes).await;
    forward.wait_for(corpus.len() as u64).await;
    let stats = relay
        .wait_for("the file to be written", |s| {
            component(s, "audit_log")["delivered"] == corpus.len() as u64
        })
        .await;
    assert_eq!(component(&stats, "in")["received"], corpus.len() as u64);
    let written = records(&dir.path().join("audit/audit_log.log"));
    assert_eq!(written, corpus, "the file holds every entry, in order");
    let forwarded: Vec<String> = forwarded
        .lock()
        .iter()
        .map(|l| String::from_utf8(l.to_vec()).expect("utf-8"))
        .collect();
    assert_eq!(forwarded, corpus, "the forward got every entry, in order");
    let errors = written
        .iter()
        .filter(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).expect("JSON");
            assert!(
                entry["auth"]["client_token"]
                    .as_str()
                    .is_none_or(|t| t.starts_with("hmac-sha256:")),
                "tokens stay HMAC'd"
            );
            entry.get("error").is_some()
        })
        .count();
    assert!(errors >= 2, "the corpus holds error entries");
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
    forward.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rotation_gzips_backups_and_keeps_every_record_once_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("out.log");
    let relay = TestRelay::start(&relay_config(
        TCP_SOURCE,
        &file_sink(
            "out",
            &path,
            "max_size = \"4KiB\"\nmax_backups = 0\ncompression = \"gzip\"\nbatch = { max_events = 10 }",
        ),
    ))
    .await;
    let lines = numbered(300);
    send_in_groups(&relay, "out", &lines, 10).await;
    let rotated = backups(&path).expect("list backups");
    assert!(rotated.len() >= 5, "{rotated:?}");
    assert!(
        rotated
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "gz")),
        "{rotated:?}"
    );
    let mut all = Vec::new();
    for backup in &rotated {
        let records = records(backup);
        let size: usize = records.iter().map(|r| r.len() + 1).sum();
        assert!(size <= 4096, "{backup:?} holds {size} bytes");
        all.extend(records);
    }
    all.extend(records(&path));
    assert_eq!(all, lines);
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_backups_prunes_the_oldest_rotated_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("{sink}.log");
    let relay = TestRelay::start(&relay_config(
        TCP_SOURCE,
        &file_sink(
            "pruned",
            &path,
            "max_size = \"1KiB\"\nmax_backups = 2\nbatch = { max_events = 5 }",
        ),
    ))
    .await;
    let lines = numbered(100);
    send_in_groups(&relay, "pruned", &lines, 5).await;
    let path = dir.path().join("pruned.log");
    let rotated = backups(&path).expect("list backups");
    assert_eq!(rotated.len(), 2, "{rotated:?}");
    // What is left is the newest records, contiguous and in order.
    let mut kept: Vec<String> = rotated.iter().flat_map(|p| records(p)).collect();
    kept.extend(records(&path));
    assert_eq!(kept, lines[lines.len() - kept.len()..]);
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_rotates_a_file_that_has_been_open_long_enough() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("aged.log");
    let relay = TestRelay::start(&relay_config(
        TCP_SOURCE,
        &file_sink("out", &path, "max_age = \"300ms\""),
    ))
    .await;
    let lines = numbered(2);
    send_in_groups(&relay, "out", &lines[..1], 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_tcp(relay.addr("in"), format!("{}\n", lines[1]).as_bytes()).await;
    relay
        .wait_for("the second record", |s| {
            component(s, "out")["delivered"] == 2
        })
        .await;
    let rotated = backups(&path).expect("list backups");
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(records(&rotated[0]), lines[..1]);
    assert_eq!(records(&path), lines[1..]);
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_file_after_logrotate_moved_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hup.log");
    let moved: PathBuf = dir.path().join("hup.log.1");
    let relay = TestRelay::start(&relay_config(TCP_SOURCE, &file_sink("out", &path, ""))).await;
    let lines = numbered(200);
    send_in_groups(&relay, "out", &lines[..50], 50).await;
    // What logrotate does: move the file away, then signal.
    std::fs::rename(&path, &moved).expect("rename");
    // SAFETY: kill(2) with our own pid and a signal the file sink handles.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
    // The signal arrives asynchronously: send one record at a time until the new file appears.
    let mut sent = 50;
    while !path.exists() {
        assert!(sent < lines.len(), "the file was never reopened");
        send_in_groups(&relay, "out", &lines[sent..sent + 1], 1).await;
        sent += 1;
        if !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    send_in_groups(&relay, "out", &lines[sent..], 25).await;
    let mut all = records(&moved);
    let reopened = records(&path);
    assert!(!reopened.is_empty());
    all.extend(reopened);
    assert_eq!(all, lines, "every record once, none lost to the moved file");
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}
