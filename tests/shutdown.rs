//! The real `sluice` binary under signals: SIGTERM stops accepting and delivers what is queued;
//! a second signal exits at once and says how many events it leaves behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Behaviour, PATIENCE, Upstream, client};
use http::StatusCode;

struct Process {
    child: Child,
    admin: String,
    api: String,
    /// The data directory when the process owns it (dropped with the process).
    _dir: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

const MEMORY: &str = "queue = { type = \"memory\" }";
const DISK: &str = "queue = { type = \"disk\" }";

async fn start_binary(upstream: &str, shutdown_timeout: &str, queue: &str) -> Process {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut process = start_binary_in(dir.path(), upstream, shutdown_timeout, queue).await;
    process._dir = Some(dir);
    process
}

/// Starts the binary with its config and data under `dir`, which outlives the process.
async fn start_binary_in(
    dir: &std::path::Path,
    upstream: &str,
    shutdown_timeout: &str,
    queue: &str,
) -> Process {
    let (admin, api) = (free_port(), free_port());
    let config = format!(
        r#"
data_dir = "{data}"
shutdown_timeout = "{shutdown_timeout}"
[admin]
listen = "127.0.0.1:{admin}"
[sources.api]
type = "http"
listen = "127.0.0.1:{api}"
[sinks.upstream]
type = "http_forward"
inputs = ["api"]
url = "{upstream}"
concurrency = 4
retry = {{ initial_backoff = "10ms", max_backoff = "50ms" }}
{queue}
"#,
        data = dir.join("data").display()
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, config).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "-c"])
        .arg(&path)
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let process = Process {
        child,
        admin: format!("http://127.0.0.1:{admin}"),
        api: format!("http://127.0.0.1:{api}"),
        _dir: None,
    };
    let http = client();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = http.get(format!("{}/ready", process.admin)).send().await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sluice did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill");
}

/// Waits for the process to exit and returns its exit code and its log.
fn wait_exit(mut process: Process) -> (Option<i32>, String) {
    let stderr = process.child.stderr.take().expect("stderr");
    let log: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = process.child.wait().expect("wait");
    (status.code(), log.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_delivers_everything_queued() {
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    });
    let process = start_binary(&upstream.url(), "20s", MEMORY).await;
    let http = client();
    const N: usize = 200;
    for i in 0..N {
        let response = http
            .post(format!("{}/e/{i}", process.api))
            .body(i.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    // 4 in flight at 20 ms each: most of the 200 are still queued now.
    assert!(upstream.count() < N);
    signal(&process.child, libc::SIGTERM);
    let api = process.api.clone();
    let (code, log) = tokio::task::spawn_blocking(move || wait_exit(process))
        .await
        .expect("task");
    assert_eq!(code, Some(0), "a drained shutdown exits 0; log:\n{log}");
    assert_eq!(
        upstream.count(),
        N,
        "everything accepted was delivered before exiting"
    );
    assert!(
        log.lines()
            .last()
            .is_some_and(|l| l.contains("undelivered=0")),
        "{log}"
    );
    assert!(
        client()
            .post(format!("{api}/late"))
            .body("x")
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_reports_what_is_left() {
    let upstream = Upstream::start().await;
    let address = upstream.stop();
    let process = start_binary(&format!("http://{address}"), "60s", MEMORY).await;
    let http = client();
    for i in 0..10 {
        http.post(format!("{}/e/{i}", process.api))
            .body("x")
            .send()
            .await
            .expect("request");
    }
    signal(&process.child, libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    signal(&process.child, libc::SIGINT);
    let (code, log) = tokio::task::spawn_blocking(move || wait_exit(process))
        .await
        .expect("task");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited at once, not after the 60 s timeout"
    );
    assert_eq!(code, Some(130), "{log}");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("undelivered=10") && last.contains("Second signal"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_timeout_bounds_the_drain_and_the_loss_is_reported() {
    let upstream = Upstream::start().await;
    let address = upstream.stop();
    let process = start_binary(&format!("http://{address}"), "500ms", MEMORY).await;
    let http = client();
    for i in 0..7 {
        http.post(format!("{}/e/{i}", process.api))
            .body("x")
            .send()
            .await
            .expect("request");
    }
    let stats: serde_json::Value = http
        .get(format!("{}/stats", process.admin))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["components"][0]["received"], 7, "{stats:#}");
    signal(&process.child, libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || wait_exit(process))
        .await
        .expect("task");
    assert_eq!(
        code,
        Some(3),
        "exit code 3: stopped with events undelivered; log:\n{log}"
    );
    assert!(
        log.lines()
            .last()
            .is_some_and(|l| l.contains("undelivered=7")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_disk_queue_sigterm_keeps_the_backlog_and_a_restart_delivers_it() {
    let upstream = Upstream::start().await;
    let address = upstream.stop();
    let dir = tempfile::tempdir().expect("temp dir");
    let process = start_binary_in(dir.path(), &format!("http://{address}"), "500ms", DISK).await;
    let http = client();
    for i in 0..25 {
        let response = http
            .post(format!("{}/e/{i}", process.api))
            .body(i.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "acknowledged once synced to disk"
        );
    }
    signal(&process.child, libc::SIGTERM);
    let (code, log) = tokio::task::spawn_blocking(move || wait_exit(process))
        .await
        .expect("task");
    assert_eq!(
        code,
        Some(0),
        "nothing lost: the backlog is on disk; log:\n{log}"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("undelivered=0") && last.contains("kept_on_disk=25"),
        "{log}"
    );

    let upstream = Upstream::start_on(address).await;
    let process = start_binary_in(dir.path(), &upstream.url(), "5s", DISK).await;
    upstream.wait_for(25).await;
    let mut bodies: Vec<u32> = upstream
        .received
        .lock()
        .iter()
        .map(|r| {
            std::str::from_utf8(&r.body)
                .expect("utf8")
                .parse()
                .expect("n")
        })
        .collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(
        bodies,
        (0..25).collect::<Vec<_>>(),
        "every acknowledged event arrives after the restart"
    );
    let replayed = upstream.received.lock()[0].path_and_query.clone();
    assert!(
        replayed.starts_with("/e/"),
        "the original request is replayed: {replayed}"
    );
    signal(&process.child, libc::SIGTERM);
    let (code, _) = tokio::task::spawn_blocking(move || wait_exit(process))
        .await
        .expect("task");
    assert_eq!(code, Some(0));
}
