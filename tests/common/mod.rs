//! What the integration tests share: a relay started in-process from TOML text, a real HTTP
//! upstream on loopback that records what it receives, and ledger checks.
//!
//! Everything binds 127.0.0.1 on port 0 and is torn down by the test; waits are bounded.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::Value;
use sluice::config::Config;
use sluice::relay::{Relay, ShutdownReport};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Upper bound for any wait in a test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A relay running in this process.
pub struct TestRelay {
    pub relay: Relay,
    pub dir: TempDir,
}

impl TestRelay {
    /// Starts a relay from `toml`; `{data_dir}` in the text is replaced by a fresh temp dir.
    /// Use `127.0.0.1:0` for listeners: the bound addresses are in [`TestRelay::addr`].
    pub async fn start(toml: &str) -> TestRelay {
        Self::start_in(tempfile::tempdir().expect("temp dir"), toml).await
    }

    /// [`TestRelay::start`] in a directory a stopped relay left (see [`TestRelay::stop`]): a
    /// restart.
    pub async fn start_in(dir: TempDir, toml: &str) -> TestRelay {
        let text = toml.replace("{data_dir}", &dir.path().join("data").display().to_string());
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, &text).expect("write config");
        let config = Config::parse(&path, &text, std::iter::empty(), &|_| None)
            .unwrap_or_else(|e| panic!("config: {e}"));
        let relay = Relay::start(&config).await.expect("relay starts");
        TestRelay { relay, dir }
    }

    /// The bound address of `admin` or of a source by name.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.relay.addresses[name]
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    pub async fn stats(&self) -> Value {
        client()
            .get(self.url("admin", "/stats"))
            .send()
            .await
            .expect("GET /stats")
            .json()
            .await
            .expect("stats are JSON")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = client()
            .get(self.url("admin", "/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        response.text().await.expect("/metrics body")
    }

    /// The `/stats` entry of one component.
    pub async fn component(&self, name: &str) -> Value {
        let stats = self.stats().await;
        stats["components"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no component {name} in {stats:#}"))
    }

    /// Waits until `check` holds for the stats, or fails the test with the last stats.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return stats;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; stats: {stats:#}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until nothing is queued or in flight anywhere, then asserts the ledger balances.
    pub async fn assert_settled_and_balanced(&self) -> Value {
        let stats = self
            .wait_for("an idle relay", |s| {
                s["settled"] == true
                    && s["components"].as_array().is_some_and(|cs| {
                        cs.iter().all(|c| c["queued"] == 0 && c["in_flight"] == 0)
                    })
            })
            .await;
        assert_eq!(
            stats["balanced"], true,
            "the ledger must balance: {stats:#}"
        );
        stats
    }

    pub async fn shutdown(self) -> ShutdownReport {
        self.relay.shutdown().await
    }

    /// Shuts the relay down, keeping its directory for [`TestRelay::start_in`].
    pub async fn stop(self) -> (ShutdownReport, TempDir) {
        (self.relay.shutdown().await, self.dir)
    }
}

/// A plain HTTP client for tests: keep-alive, no proxy, generous timeout.
/// A loopback address where nothing listens, and where nothing else can listen while the
/// returned socket lives: it holds the port, bound but not listening, so connections to it are
/// refused. (A listener dropped to free an address lets a test running alongside take its
/// port, and then a sink meant to fail delivers.) Drop the socket before listening there.
pub fn refusing_addr() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

pub fn client() -> reqwest::Client {
    sluice::sinks::http_client::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the upstream answers.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub status: StatusCode,
    pub body: &'static str,
    pub delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            status: StatusCode::OK,
            body: "ok",
            delay: Duration::ZERO,
        }
    }
}

/// A real HTTP/1.1 server on loopback that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Recorded>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on a given address (to come back on the port an earlier upstream had).
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().expect("local addr");
        let received: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> = Arc::default();
        let task = {
            let (received, behaviour) = (received.clone(), behaviour.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (received, behaviour) = (received.clone(), behaviour.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let (received, behaviour) = (received.clone(), behaviour.clone());
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                let behaviour = behaviour.lock().clone();
                                if !behaviour.delay.is_zero() {
                                    tokio::time::sleep(behaviour.delay).await;
                                }
                                received.lock().push(Recorded {
                                    method: parts.method,
                                    path_and_query: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body,
                                });
                                let mut response = Response::new(Full::new(Bytes::from_static(
                                    behaviour.body.as_bytes(),
                                )));
                                *response.status_mut() = behaviour.status;
                                response
                                    .headers_mut()
                                    .insert("x-upstream", http::HeaderValue::from_static("yes"));
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Upstream {
            addr,
            received,
            behaviour,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.received.lock().len()
    }

    /// The bodies received, in arrival order.
    pub fn bodies(&self) -> Vec<String> {
        self.received
            .lock()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    }

    /// Every request received, as (body, `X-Sluice-Event-Id`), in arrival order.
    pub fn bodies_with_ids(&self) -> Vec<(String, String)> {
        self.received
            .lock()
            .iter()
            .map(|r| {
                let id = r
                    .headers
                    .get("x-sluice-event-id")
                    .and_then(|v| v.to_str().ok())
                    .expect("forwarded with an event id");
                (
                    String::from_utf8_lossy(&r.body).into_owned(),
                    id.to_string(),
                )
            })
            .collect()
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock() = behaviour;
    }

    /// Stops listening and drops every open connection.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) {
        wait_until(&format!("{n} requests upstream"), || self.count() >= n).await;
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("cannot bind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Polls `done` until it holds, or fails the test after [`PATIENCE`].
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f` over `items` with at most `concurrency` at once.
pub async fn for_each_concurrent<T, F, Fut>(items: Vec<T>, concurrency: usize, f: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let queue = Arc::new(Mutex::new(items.into_iter()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (queue, f) = (queue.clone(), f.clone());
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().next();
                    match next {
                        Some(item) => f(item).await,
                        None => return,
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
}
pub mod process;
pub mod sockets;
