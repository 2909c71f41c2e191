//! The relay under test as an external process: its generated config, its lifecycle, its ledger.
//!
//! The harness never links the relay; it writes a TOML config into a private temp directory,
//! starts `sluice run -c FILE` (stdout and stderr go to `relay.log` beside it), waits until the
//! admin `/ready` answers 200 (or the process exits — a config the relay rejects is reported with
//! the tail of its log — or [`READY_TIMEOUT`] passes), reads `/stats` at the end, and stops it
//! with SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]. The child is also killed if the harness
//! drops it early, so no run leaves a relay behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// What the relay reads from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Tcp,
    Http,
}

/// What the relay writes to.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Tcp,
    Http,
}

/// The sink's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueSpec {
    Memory {
        max_events: u64,
        when_full: &'static str,
    },
    Disk {
        sync: &'static str,
    },
}

/// Everything the generated config depends on.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    pub admin: SocketAddr,
    pub source: SourceKind,
    pub source_addr: SocketAddr,
    /// `received` | `durable` | `delivered`; omitted from the config when `None`.
    pub ack: Option<String>,
    pub sink: SinkKind,
    pub sink_addr: SocketAddr,
    pub encoding: &'static str,
    /// `gzip` adds `compression = "gzip"` to the HTTP sink.
    pub gzip: bool,
    pub batch_max_events: u64,
    pub concurrency: u32,
    pub queue: QueueSpec,
}

/// A TOML basic string (JSON string escapes are a subset TOML accepts).
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

impl RelaySpec {
    /// The relay config, using only keys the relay implements.
    pub fn to_toml(&self, data_dir: &Path) -> String {
        let mut c = format!(
            "data_dir = {}\n\n[admin]\nlisten = \"{}\"\n\n[sources.in]\n",
            toml_str(&data_dir.to_string_lossy()),
            self.admin
        );
        match self.source {
            SourceKind::Http => c.push_str(&format!(
                "type = \"http\"\nlisten = \"{}\"\nresponse_status = 202\n",
                self.source_addr
            )),
            SourceKind::Tcp => c.push_str(&format!(
                "type = \"tcp\"\nlisten = \"{}\"\n",
                self.source_addr
            )),
        }
        if let Some(ack) = &self.ack {
            c.push_str(&format!("ack = {}\n", toml_str(ack)));
        }
        c.push_str("\n[sinks.out]\n");
        match self.sink {
            SinkKind::Http => c.push_str(&format!(
                "type = \"http\"\ninputs = [\"in\"]\nurl = \"http://{}/ingest\"\n\
                 encoding = \"{}\"\n\
                 batch = {{ max_events = {}, max_bytes = \"1MiB\", timeout = \"10ms\" }}\n\
                 concurrency = {}\n",
                self.sink_addr, self.encoding, self.batch_max_events, self.concurrency
            )),
            SinkKind::Tcp => c.push_str(&format!(
                "type = \"tcp\"\ninputs = [\"in\"]\naddress = \"{}\"\n",
                self.sink_addr
            )),
        }
        if self.gzip && self.sink == SinkKind::Http {
            c.push_str("compression = \"gzip\"\n");
        }
        match &self.queue {
            QueueSpec::Memory {
                max_events,
                when_full,
            } => c.push_str(&format!(
                "queue = {{ type = \"memory\", max_events = {max_events}, when_full = \"{when_full}\" }}\n"
            )),
            QueueSpec::Disk { sync } => {
                c.push_str(&format!("queue = {{ type = \"disk\", sync = \"{sync}\" }}\n"))
            }
        }
        c.push_str(
            "retry = { max_attempts = 0, initial_backoff = \"50ms\", max_backoff = \"1s\" }\n",
        );
        c
    }
}

/// A child process whose output goes to a log file, killed if dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, exe: &Path, args: &[&str], log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log).with_context(|| format!("creating {log:?}"))?;
        let err = out.try_clone()?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}: {exe:?}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited before it could be observed"))?;
        Ok(Proc {
            name,
            child,
            pid,
            log,
        })
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns how it exited and how long it took.
    pub async fn stop(mut self) -> Result<(ExitStatus, Duration)> {
        let start = Instant::now();
        if self.child.try_wait()?.is_none() {
            let pid = libc::pid_t::try_from(self.pid)?;
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let status = match timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?
            }
        };
        Ok((status, start.elapsed()))
    }
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

impl Relay {
    /// Writes the config into `dir`, starts the relay and waits for `/ready`.
    pub async fn start(exe: &Path, spec: &RelaySpec, dir: &Path) -> Result<Relay> {
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let config_path = dir.join("sluice.toml");
        std::fs::write(&config_path, spec.to_toml(&data_dir))?;
        let cfg = config_path.to_string_lossy().into_owned();
        let mut proc = Proc::spawn("sluice", exe, &["run", "-c", &cfg], dir.join("relay.log"))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proc.exited()? {
                bail!(
                    "the relay exited ({status}) before becoming ready with config {cfg}:\n{}",
                    proc.log_tail()
                );
            }
            if let Ok((200, _)) = http_get(spec.admin, "/ready").await {
                break;
            }
            if Instant::now() >= deadline {
                let tail = proc.log_tail();
                let _ = proc.stop().await;
                bail!(
                    "the relay did not answer 200 on http://{}/ready within {READY_TIMEOUT:?} \
                     (config {cfg}):\n{tail}",
                    spec.admin
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Relay {
            proc,
            admin: spec.admin,
            config_path,
        })
    }

    /// The `/stats` ledger, parsed leniently.
    pub async fn stats(&self) -> Result<Ledger> {
        let (status, body) = http_get(self.admin, "/stats").await?;
        if status != 200 {
            bail!("GET /stats answered {status}");
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).context("GET /stats: expected JSON")?;
        Ok(Ledger::from_stats(&v))
    }
}

/// The parts of the relay's `/stats` a result row shows (sums over components of each kind).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Ledger {
    pub source_received: u64,
    pub sink_received: u64,
    pub sink_delivered: u64,
    pub sink_dropped: u64,
    pub sink_queued: u64,
    pub sink_in_flight: u64,
    pub balanced: Option<bool>,
    /// `fdatasync`s of the sinks' disk queues, and the events they made durable.
    pub fsyncs: u64,
    pub events_synced: u64,
    /// Events the sinks read back from their disk queues' files, not from memory.
    pub file_read_events: u64,
    /// The slowest disk queue's p99 wait for a sync (per sync, its oldest event), if any.
    pub sync_wait_p99_ms: Option<f64>,
    /// The slowest disk queue's p99 wait of an event to become durable (per event), if any.
    pub ack_wait_p99_ms: Option<f64>,
    /// Seconds the sources' connections waited before reading on, for a disk queue's sync and
    /// for its sink (summed over connections).
    pub source_waited_sync_s: f64,
    pub source_waited_sink_s: f64,
    /// The whole `/stats` document, for `--json`.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub raw: serde_json::Value,
}

fn num(v: Option<&serde_json::Value>) -> u64 {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::Object(o)) => o.values().map(|v| num(Some(v))).sum(),
        _ => 0,
    }
}

impl Ledger {
    pub fn from_stats(v: &serde_json::Value) -> Ledger {
        let mut l = Ledger {
            balanced: v.get("balanced").and_then(|b| b.as_bool()),
            raw: v.clone(),
            ..Ledger::default()
        };
        let comps = v.get("components").and_then(|c| c.as_array());
        for c in comps.into_iter().flatten() {
            match c.get("kind").and_then(|k| k.as_str()) {
                Some("source") => {
                    l.source_received += num(c.get("received"));
                    let waited = |why: &str| {
                        c.pointer(&format!("/waited_seconds/{why}"))
                            .and_then(|s| s.as_f64())
                            .unwrap_or(0.0)
                    };
                    l.source_waited_sync_s += waited("sync");
                    l.source_waited_sink_s += waited("sink");
                }
                Some("sink") => {
                    l.sink_received += num(c.get("received"));
                    l.sink_delivered += num(c.get("delivered"));
                    l.sink_dropped += num(c.get("dropped"));
                    l.sink_queued += num(c.get("queued"));
                    l.sink_in_flight += num(c.get("in_flight"));
                    if let Some(q) = c.get("queue") {
                        l.fsyncs += num(q.get("fsyncs"));
                        l.events_synced += num(q.get("records_synced"));
                        l.file_read_events += num(q.get("file_read_records"));
                        let slowest = |known: Option<f64>, path: &str| {
                            let p99 = q.pointer(path).and_then(|p| p.as_f64());
                            match (known, p99) {
                                (Some(a), Some(b)) => Some(a.max(b)),
                                (a, b) => a.or(b),
                            }
                        };
                        l.sync_wait_p99_ms = slowest(l.sync_wait_p99_ms, "/sync_wait_ms/p99");
                        l.ack_wait_p99_ms = slowest(l.ack_wait_p99_ms, "/ack_wait_ms/p99");
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A one-shot `GET` on a fresh connection: `(status, body)`. Bounded to a few seconds.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes)> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            // Ends when the response is read and the client side is dropped.
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = tx.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    };
    timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_is_read_leniently() {
        let v = serde_json::json!({
            "components": [
                {"name": "in", "kind": "source", "type": "tcp", "received": 10,
                 "waited_seconds": {"sync": 1.5, "sink": 0.25}},
                {"name": "out", "kind": "sink", "received": 10, "delivered": 7,
                 "dropped": {"queue_full": 2, "rejected": 1}, "queued": 0,
                 "queue": {"type": "disk", "fsyncs": 4, "records_synced": 10,
                           "file_read_records": 3,
                           "sync_wait_ms": {"p50": 0.3, "p99": 1.5, "max": 2.0},
                           "ack_wait_ms": {"p50": 0.2, "p99": 1.25, "max": 2.0}}},
                {"name": "mem", "kind": "sink", "received": 0, "queue": {"type": "memory"}},
                {"name": "odd", "kind": "sink", "received": "ten"}
            ],
            "balanced": true
        });
        let mut l = Ledger::from_stats(&v);
        assert_eq!(l.raw, v);
        l.raw = serde_json::Value::Null;
        assert_eq!(
            l,
            Ledger {
                source_received: 10,
                sink_received: 10,
                sink_delivered: 7,
                sink_dropped: 3,
                sink_queued: 0,
                sink_in_flight: 0,
                balanced: Some(true),
                fsyncs: 4,
                events_synced: 10,
                file_read_events: 3,
                sync_wait_p99_ms: Some(1.5),
                ack_wait_p99_ms: Some(1.25),
                source_waited_sync_s: 1.5,
                source_waited_sink_s: 0.25,
                raw: serde_json::Value::Null,
            }
        );
        let odd = Ledger::from_stats(&serde_json::json!([1, 2]));
        assert_eq!((odd.sink_received, odd.balanced), (0, None));
    }

    #[test]
    fn generated_config_uses_the_documented_keys() {
        let spec = RelaySpec {
            admin: "127.0.0.1:1".parse().expect("addr"),
            source: SourceKind::Http,
            source_addr: "127.0.0.1:2".parse().expect("addr"),
            ack: Some("durable".into()),
            sink: SinkKind::Http,
            sink_addr: "127.0.0.1:3".parse().expect("addr"),
            encoding: "ndjson",
            gzip: true,
            batch_max_events: 1000,
            concurrency: 4,
            queue: QueueSpec::Disk { sync: "always" },
        };
        let toml = spec.to_toml(Path::new("/tmp/x \"y\"/data"));
        assert!(
            toml.starts_with("data_dir = \"/tmp/x \\\"y\\\"/data\"\n"),
            "{toml}"
        );
        for needle in [
            "[admin]\nlisten = \"127.0.0.1:1\"",
            "type = \"http\"\nlisten = \"127.0.0.1:2\"\nresponse_status = 202\nack = \"durable\"",
            "url = \"http://127.0.0.1:3/ingest\"",
            "compression = \"gzip\"\n",
            "queue = { type = \"disk\", sync = \"always\" }",
        ] {
            assert!(toml.contains(needle), "missing {needle:?} in\n{toml}");
        }
    }
}
