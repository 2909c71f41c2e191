//! The real `sluice` binary as a child process, for tests that need what only a process has: a
//! data directory that outlives it, signals, and SIGKILL.
//!
//! [`Sluice::start`] writes a config (free loopback ports filled in), starts `sluice run` with
//! JSON logs, collects stderr line by line on a thread, and returns once `/ready` answers 200.
//! Every wait is bounded. A [`Sluice`] dropped while its process still runs SIGKILLs and reaps
//! it, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use parking_lot::Mutex;
use serde_json::Value;

use super::{PATIENCE, client};

/// A relay config: the HTTP source `api` (plus `source` lines) feeding the `http_forward` sink
/// `upstream` at `upstream_url` (plus `sink` lines), retrying every 10–50 ms while the upstream
/// is away. `{data_dir}`, `{admin}` and `{api}` are filled in by [`Sluice::start`].
pub fn http_relay_config(upstream_url: &str, source: &str, sink: &str) -> String {
    format!(
        r#"
data_dir = "{{data_dir}}"
shutdown_timeout = "500ms"
[admin]
listen = "{{admin}}"
[sources.api]
type = "http"
listen = "{{api}}"
{source}
[sinks.upstream]
type = "http_forward"
inputs = ["api"]
url = "{upstream_url}"
concurrency = 4
request_timeout = "5s"
retry = {{ initial_backoff = "10ms", max_backoff = "50ms" }}
{sink}
"#
    )
}

/// A loopback address with a port nothing listens on right now.
pub fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    format!("127.0.0.1:{port}")
}

/// A running `sluice run`.
pub struct Sluice {
    child: Child,
    /// `http://` base URL of the admin listener.
    pub admin: String,
    /// `http://` base URL of the `api` source.
    pub api: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How a start attempt failed.
enum StartError {
    /// A port we picked was taken before the relay bound it: worth another try.
    PortTaken(String),
    Other(String),
}

impl Sluice {
    /// Starts the binary with `config` written to `dir/sluice.toml`; `{data_dir}` becomes
    /// `dir/data` (so a restart in the same `dir` finds the same queues), `{admin}` and `{api}`
    /// free loopback addresses. Fails the test if it is not ready within [`PATIENCE`].
    pub async fn start(dir: &Path, config: &str) -> Sluice {
        Self::start_with_data(dir, &dir.join("data"), config).await
    }

    /// Like [`Sluice::start`], with the data directory somewhere else.
    pub async fn start_with_data(dir: &Path, data_dir: &Path, config: &str) -> Sluice {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(dir, data_dir, config).await {
                Ok(sluice) => return sluice,
                Err(StartError::PortTaken(log)) => last = log,
                Err(StartError::Other(why)) => panic!("sluice did not start: {why}"),
            }
        }
        panic!("sluice did not start: its ports were taken three times; last log:\n{last}");
    }

    async fn try_start(dir: &Path, data_dir: &Path, config: &str) -> Result<Sluice, StartError> {
        let (admin, api) = (free_addr(), free_addr());
        let text = config
            .replace("{data_dir}", &data_dir.display().to_string())
            .replace("{admin}", &admin)
            .replace("{api}", &api);
        let path = dir.join("sluice.toml");
        std::fs::write(&path, text).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["run", "-c"])
            .arg(&path)
            .env("SLUICE_LOG", "info")
            .env("SLUICE_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().push(line);
                }
            })
        };
        let mut sluice = Sluice {
            child,
            admin: format!("http://{admin}"),
            api: format!("http://{api}"),
            lines,
            reader: Some(reader),
        };
        let http = client();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = sluice.child.try_wait() {
                sluice.join_reader();
                let log = sluice.log_text();
                return Err(if log.contains("Address already in use") {
                    StartError::PortTaken(log)
                } else {
                    StartError::Other(format!("exited with {status} before ready; log:\n{log}"))
                });
            }
            if let Ok(response) = http.get(format!("{}/ready", sluice.admin)).send().await
                && response.status() == StatusCode::OK
            {
                return Ok(sluice);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StartError::Other(format!(
                    "not ready within {PATIENCE:?}; log:\n{}",
                    sluice.log_text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in pid_t")
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        send_signal(self.pid(), signal);
    }

    /// Waits (bounded) for the process to exit, e.g. after [`Sluice::signal`], and for its log
    /// to be complete.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_reader();
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                panic!(
                    "sluice did not exit within {PATIENCE:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code (`None` if killed by a signal).
    pub async fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_exit().await.code()
    }

    /// SIGKILL, then waits for the exit.
    pub async fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let status = self.wait_exit().await;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed by SIGKILL");
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            // The pipe closes with the process, so this ends; a panic here would only mean a
            // lost log line, which the assertions on the log would then report.
            let _ = reader.join();
        }
    }

    /// Every log line so far, as text.
    pub fn log_text(&self) -> String {
        self.lines.lock().join("\n")
    }

    /// Every JSON log line so far (lines that are not JSON, such as a panic message, become
    /// JSON strings).
    pub fn log(&self) -> Vec<Value> {
        self.lines
            .lock()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| Value::from(line.as_str())))
            .collect()
    }

    /// The fields (`message` included) of the log lines whose message contains `text`.
    pub fn log_fields(&self, text: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter_map(|line| {
                let fields = line.get("fields")?;
                let message = fields.get("message")?.as_str()?;
                message.contains(text).then(|| fields.clone())
            })
            .collect()
    }

    /// [`Sluice::log_fields`] once a line contains `text`: the log arrives through a pipe, a
    /// moment after what it reports may already be visible to the test.
    pub async fn wait_for_log(&self, text: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + super::PATIENCE;
        loop {
            let fields = self.log_fields(text);
            if !fields.is_empty() {
                return fields;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no log line with {text:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The fields of the last log line.
    pub fn last_log_fields(&self) -> Value {
        self.log()
            .last()
            .and_then(|line| line.get("fields").cloned())
            .unwrap_or(Value::Null)
    }

    pub async fn stats(&self) -> Value {
        client()
            .get(format!("{}/stats", self.admin))
            .send()
            .await
            .expect("GET /stats")
            .json()
            .await
            .expect("/stats is JSON")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("GET /metrics");
        response.text().await.expect("/metrics body")
    }

    /// Waits until `check` holds for `/stats`, or fails the test with the last stats.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; stats: {stats:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nothing is queued or in flight anywhere and the snapshot is settled, then
    /// asserts the ledger balances; returns those stats.
    pub async fn wait_idle_and_balanced(&self) -> Value {
        let stats = self
            .wait_for("an idle relay", |s| {
                s["settled"] == true
                    && s["components"].as_array().is_some_and(|cs| {
                        cs.iter().all(|c| c["queued"] == 0 && c["in_flight"] == 0)
                    })
            })
            .await;
        assert_eq!(stats["balanced"], true, "the ledger balances: {stats:#}");
        stats
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn send_signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on the pid of our own child, not yet reaped (so not reused); it has no
    // memory effects in this process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// The entry of component `name` in a `/stats` snapshot.
pub fn component<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no component {name} in {stats:#}"))
}

/// A counter of a `/stats` component (`received`, `delivered`, …) as a number; 0 if absent.
pub fn count(component: &Value, key: &str) -> u64 {
    component[key].as_u64().unwrap_or(0)
}

/// `dropped.<reason>` of a `/stats` component; 0 if absent.
pub fn dropped(component: &Value, reason: &str) -> u64 {
    component["dropped"][reason].as_u64().unwrap_or(0)
}

/// The segment files of a sink's disk queue, oldest first.
pub fn segments(data_dir: &Path, sink: &str) -> Vec<PathBuf> {
    let dir = data_dir.join("queues").join(sink);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}
