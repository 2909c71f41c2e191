//! Socket helpers for the socket and file tests: a plain TCP receiver that hands every line it
//! reads to a callback (or keeps them), line senders, a UDP receiver, and ledger lookups.
//!
//! Everything binds 127.0.0.1 (or a temp-dir socket path) and is torn down by the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::{PATIENCE, wait_until};

/// What a receiver does with each line (without its LF); called from the connection's task,
/// with the connection's number (in accept order).
pub type OnLine = Arc<dyn Fn(usize, Bytes) + Send + Sync>;

/// A plain TCP server on loopback that splits what it reads into lines.
pub struct LineReceiver {
    pub addr: SocketAddr,
    pub lines: Arc<AtomicU64>,
    task: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl LineReceiver {
    /// Starts on a free port; `on_line` sees every line.
    pub async fn start(on_line: OnLine) -> LineReceiver {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), on_line).await
    }

    /// Starts on a given address (to come back where an earlier receiver was).
    pub async fn start_on(addr: SocketAddr, on_line: OnLine) -> LineReceiver {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("bind {addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let addr = listener.local_addr().expect("local addr");
        let lines = Arc::new(AtomicU64::new(0));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let task = {
            let (lines, connections) = (lines.clone(), connections.clone());
            tokio::spawn(async move {
                let mut number = 0;
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (lines, on_line) = (lines.clone(), on_line.clone());
                    let connection = number;
                    number += 1;
                    connections.lock().push(tokio::spawn(async move {
                        let mut buf = BytesMut::with_capacity(64 * 1024);
                        loop {
                            buf.reserve(64 * 1024);
                            match stream.read_buf(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                                let line = buf.split_to(end + 1).freeze().slice(..end);
                                on_line(connection, line);
                                lines.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
            })
        };
        LineReceiver {
            addr,
            lines,
            task,
            connections,
        }
    }

    /// A receiver that keeps every line, in arrival order.
    pub async fn collecting() -> (LineReceiver, Arc<Mutex<Vec<Bytes>>>) {
        let kept: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let sink = kept.clone();
        let receiver = Self::start(Arc::new(move |_, line| sink.lock().push(line))).await;
        (receiver, kept)
    }

    pub fn count(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    pub async fn wait_for(&self, n: u64) {
        wait_until(&format!("{n} lines at the receiver"), || self.count() >= n).await;
    }

    /// Stops listening and closes every connection; returns the address to come back on.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        for connection in self.connections.lock().drain(..) {
            connection.abort();
        }
        self.addr
    }
}

/// Connects to `addr` and writes `bytes`, then closes the connection.
pub async fn send_tcp(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream.shutdown().await.expect("shutdown");
}

/// A UDP socket on loopback that keeps every datagram it gets.
pub struct DatagramReceiver {
    pub addr: SocketAddr,
    pub datagrams: Arc<Mutex<Vec<Bytes>>>,
    task: JoinHandle<()>,
}

impl DatagramReceiver {
    pub async fn start() -> DatagramReceiver {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("local addr");
        let datagrams: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let kept = datagrams.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 70_000];
            while let Ok(n) = socket.recv(&mut buf).await {
                kept.lock().push(Bytes::copy_from_slice(&buf[..n]));
            }
        });
        DatagramReceiver {
            addr,
            datagrams,
            task,
        }
    }

    pub async fn wait_for(&self, n: usize) {
        wait_until(&format!("{n} datagrams"), || {
            self.datagrams.lock().len() >= n
        })
        .await;
    }
}

impl Drop for DatagramReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `dropped.<reason>` of a component's `/stats` entry, 0 when absent.
pub fn dropped(component: &Value, reason: &str) -> u64 {
    component["dropped"][reason].as_u64().unwrap_or(0)
}

/// A component's `/stats` entry out of a whole stats document.
pub fn component<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["components"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no component {name} in {stats:#}"))
}

/// The Vault audit corpus, one entry per line.
pub fn vault_corpus() -> Vec<String> {
    let text = include_str!("../data/vault-audit.ndjson");
    text.lines().map(str::to_owned).collect()
}

/// A relay config with `source` (a TOML body for `[sources.in]`) feeding `sinks` (whole
/// `[sinks.*]` tables, which take `inputs = ["in"]`).
pub fn relay_config(source: &str, sinks: &str) -> String {
    format!(
        r#"
data_dir = "{{data_dir}}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[sources.in]
{source}
{sinks}
"#
    )
}

/// A `[sources.in]` body for a TCP source on a free port, plus `extra` keys.
pub fn tcp_source(extra: &str) -> String {
    format!("type = \"tcp\"\nlisten = \"127.0.0.1:0\"\n{extra}")
}

/// A `[sinks.out]` TCP sink to `addr` with fast retries.
pub fn tcp_sink(addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[sinks.out]
type = "tcp"
inputs = ["in"]
address = "{addr}"
retry = {{ initial_backoff = "10ms", max_backoff = "200ms" }}
{extra}
"#
    )
}
