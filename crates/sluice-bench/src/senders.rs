//! The load generator: N connections, each its own stream, writing benchmark events.
//!
//! Transports: TCP lines, Unix-socket lines, UDP datagrams (one event each) and HTTP (one POST
//! per event over a keep-alive HTTP/1.1 connection; the response time of every request goes
//! into a histogram). Stream `i` is connection `i`; its events are numbered 0, 1, 2, ….
//!
//! Pacing: with `rate = 0` each connection sends as fast as the peer takes it; otherwise the
//! total rate is split over the connections and each one sends whatever is due, then sleeps
//! until the next event is due (timer granularity ~1 ms, so events leave in small bursts, but
//! the sender never busy-spins). Line transports batch up to 64 KiB per write and stamp one send
//! time per batch.
//!
//! A run ends when every connection has sent its share or the duration has passed. A connection
//! that cannot reach its peer for [`GIVE_UP_AFTER`] gives up, so a dead relay never hangs a run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket, UnixStream};
use tokio::time::Instant;

use crate::payload::{self, Event};
use crate::tracker::latency_histogram;

/// How long a connection keeps retrying without a single success before it gives up.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// Largest write a line sender issues at once.
const WRITE_CHUNK: usize = 64 * 1024;

/// Where and how events are sent.
#[derive(Debug, Clone)]
pub enum Transport {
    Tcp(SocketAddr),
    Unix(PathBuf),
    Udp(SocketAddr),
    Http { addr: SocketAddr, path: String },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub transport: Transport,
    pub connections: u32,
    /// Events per connection; `u64::MAX` when only the duration bounds the run.
    pub events_per_conn: u64,
    pub duration: Option<Duration>,
    /// Event size in bytes, newline included.
    pub size: usize,
    /// Total events per second over all connections; 0 = as fast as possible.
    pub rate: u64,
    /// While set, HTTP response times are also recorded into [`SendReport::window_latency`]
    /// (the S4 outage window).
    pub window: Option<Arc<AtomicBool>>,
}

/// What the senders did.
#[derive(Debug, Clone)]
pub struct SendReport {
    /// Sequence numbers used per stream (events sent, whether or not accepted).
    pub sent_per_stream: Vec<u64>,
    /// HTTP requests answered with a non-2xx status.
    pub rejected: u64,
    /// Connection or I/O errors (each one loses at most the events being written).
    pub errors: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Longest single write or request, in nanoseconds: how long the producer was held.
    pub max_stall_ns: u64,
    /// HTTP response times in nanoseconds.
    pub latency: Option<Histogram<u64>>,
    pub window_latency: Option<Histogram<u64>>,
}

impl SendReport {
    pub fn sent(&self) -> u64 {
        self.sent_per_stream.iter().sum()
    }
}

#[derive(Debug, Default)]
struct ConnReport {
    sent: u64,
    rejected: u64,
    errors: u64,
    bytes: u64,
    max_stall_ns: u64,
    latency: Option<Histogram<u64>>,
    window_latency: Option<Histogram<u64>>,
}

/// Decides how many events a connection may send now, sleeping (not spinning) when none are due.
#[derive(Debug)]
struct Pacer {
    start: Instant,
    per_sec: f64,
    deadline: Option<Instant>,
}

impl Pacer {
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// How many events may go out now given `sent` so far (at least 1 unless expired).
    async fn allowance(&self, sent: u64) -> u64 {
        if self.per_sec <= 0.0 {
            return u64::MAX;
        }
        loop {
            // Time past the deadline does not earn events: a late wake-up must not overshoot.
            let now = self
                .deadline
                .map_or(Instant::now(), |d| d.min(Instant::now()));
            let due = ((now - self.start).as_secs_f64() * self.per_sec) as u64 + 1;
            if due > sent {
                return due - sent;
            }
            let next = self.start + Duration::from_secs_f64(sent as f64 / self.per_sec);
            match self.deadline {
                Some(d) if next >= d => {
                    tokio::time::sleep_until(d).await;
                    return 0;
                }
                _ => tokio::time::sleep_until(next).await,
            }
        }
    }
}

/// Runs the plan to completion.
pub async fn run(plan: &LoadPlan) -> Result<SendReport> {
    if plan.connections == 0 {
        return Err(anyhow!("--connections must be at least 1"));
    }
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let mut tasks = Vec::new();
    for stream in 0..plan.connections {
        let per_conn = plan.rate / u64::from(plan.connections)
            + u64::from(u64::from(stream) < plan.rate % u64::from(plan.connections));
        let pacer = Pacer {
            start,
            per_sec: if plan.rate == 0 {
                0.0
            } else {
                per_conn.max(1) as f64
            },
            deadline,
        };
        let plan = plan.clone();
        tasks.push(tokio::spawn(
            async move { run_conn(&plan, stream, pacer).await },
        ));
    }
    let mut report = SendReport {
        sent_per_stream: Vec::new(),
        rejected: 0,
        errors: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        max_stall_ns: 0,
        latency: None,
        window_latency: None,
    };
    for t in tasks {
        let c = t.await.context("sender task panicked")??;
        report.sent_per_stream.push(c.sent);
        report.rejected += c.rejected;
        report.errors += c.errors;
        report.bytes += c.bytes;
        report.max_stall_ns = report.max_stall_ns.max(c.max_stall_ns);
        merge(&mut report.latency, c.latency);
        merge(&mut report.window_latency, c.window_latency);
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

fn merge(into: &mut Option<Histogram<u64>>, from: Option<Histogram<u64>>) {
    match (into.as_mut(), from) {
        (Some(a), Some(b)) => {
            // Same bounds on both sides, so adding cannot fail; ignore it if it ever did.
            let _ = a.add(&b);
        }
        (None, Some(b)) => *into = Some(b),
        _ => {}
    }
}

async fn run_conn(plan: &LoadPlan, stream: u32, pacer: Pacer) -> Result<ConnReport> {
    match &plan.transport {
        Transport::Tcp(addr) => {
            let s = connect_retrying(|| TcpStream::connect(*addr)).await?;
            s.set_nodelay(true)?;
            send_lines(s, plan, stream, pacer).await
        }
        Transport::Unix(path) => {
            let s = connect_retrying(|| UnixStream::connect(path)).await?;
            send_lines(s, plan, stream, pacer).await
        }
        Transport::Udp(addr) => send_datagrams(*addr, plan, stream, pacer).await,
        Transport::Http { addr, path } => send_http(*addr, path, plan, stream, pacer).await,
    }
}

async fn connect_retrying<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(s) => return Ok(s),
            Err(e) if start.elapsed() >= GIVE_UP_AFTER => {
                return Err(e).context("sender could not connect");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn send_lines<W: AsyncWrite + Unpin>(
    mut w: W,
    plan: &LoadPlan,
    stream: u32,
    pacer: Pacer,
) -> Result<ConnReport> {
    let per_write = (WRITE_CHUNK / plan.size.max(1)).max(1) as u64;
    let mut buf = Vec::with_capacity(WRITE_CHUNK + plan.size);
    let mut rep = ConnReport::default();
    while rep.sent < plan.events_per_conn && !pacer.expired() {
        let n = pacer
            .allowance(rep.sent)
            .await
            .min(per_write)
            .min(plan.events_per_conn - rep.sent);
        if n == 0 {
            break;
        }
        buf.clear();
        let ts_ns = payload::now_ns();
        for seq in rep.sent..rep.sent + n {
            payload::encode(&mut buf, Event { stream, seq, ts_ns }, plan.size, true);
        }
        let t = Instant::now();
        w.write_all(&buf)
            .await
            .with_context(|| format!("stream {stream}: write failed after {} events", rep.sent))?;
        rep.max_stall_ns = rep.max_stall_ns.max(t.elapsed().as_nanos() as u64);
        rep.sent += n;
        rep.bytes += buf.len() as u64;
    }
    w.flush().await?;
    w.shutdown().await?;
    Ok(rep)
}

async fn send_datagrams(
    addr: SocketAddr,
    plan: &LoadPlan,
    stream: u32,
    pacer: Pacer,
) -> Result<ConnReport> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(addr).await?;
    let mut buf = Vec::with_capacity(plan.size);
    let mut rep = ConnReport::default();
    while rep.sent < plan.events_per_conn && !pacer.expired() {
        let n = pacer
            .allowance(rep.sent)
            .await
            .min(plan.events_per_conn - rep.sent)
            .min(1024);
        for _ in 0..n {
            buf.clear();
            let ev = Event {
                stream,
                seq: rep.sent,
                ts_ns: payload::now_ns(),
            };
            payload::encode(&mut buf, ev, plan.size, false);
            rep.sent += 1;
            match sock.send(&buf).await {
                Ok(_) => rep.bytes += buf.len() as u64,
                // ECONNREFUSED from an earlier datagram: nobody listening yet; count and go on.
                Err(_) => rep.errors += 1,
            }
        }
    }
    Ok(rep)
}

type Client = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(addr: SocketAddr) -> Result<Client> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        // The connection ends with an error when the peer goes away; the request side sees it.
        let _ = conn.await;
    });
    Ok(client)
}

async fn send_http(
    addr: SocketAddr,
    path: &str,
    plan: &LoadPlan,
    stream: u32,
    pacer: Pacer,
) -> Result<ConnReport> {
    let mut rep = ConnReport {
        latency: Some(latency_histogram()),
        window_latency: plan.window.as_ref().map(|_| latency_histogram()),
        ..ConnReport::default()
    };
    let host = addr.to_string();
    let mut client: Option<Client> = None;
    let mut last_ok = Instant::now();
    let mut buf = Vec::with_capacity(plan.size);
    while rep.sent < plan.events_per_conn && !pacer.expired() {
        if pacer.allowance(rep.sent).await == 0 {
            break;
        }
        let c = match &mut client {
            Some(c) if !c.is_closed() => c,
            _ => match http_connect(addr).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    if last_ok.elapsed() >= GIVE_UP_AFTER {
                        return Err(e.context(format!("HTTP sender could not reach {addr}")));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        buf.clear();
        let ts_ns = payload::now_ns();
        let ev = Event {
            stream,
            seq: rep.sent,
            ts_ns,
        };
        payload::encode(&mut buf, ev, plan.size, false);
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, &host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::copy_from_slice(&buf)))?;
        let in_window = plan
            .window
            .as_ref()
            .is_some_and(|w| w.load(Ordering::Relaxed));
        let t = Instant::now();
        rep.sent += 1;
        let outcome = async {
            c.ready().await?;
            let resp = c.send_request(req).await?;
            let status = resp.status();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let ns = (t.elapsed().as_nanos() as u64).max(1);
        rep.max_stall_ns = rep.max_stall_ns.max(ns);
        match outcome {
            Ok(status) => {
                last_ok = Instant::now();
                rep.bytes += buf.len() as u64;
                if let Some(h) = rep.latency.as_mut() {
                    h.saturating_record(ns);
                }
                if in_window {
                    if let Some(h) = rep.window_latency.as_mut() {
                        h.saturating_record(ns);
                    }
                }
                if !status.is_success() {
                    rep.rejected += 1;
                }
            }
            Err(_) => {
                rep.errors += 1;
                client = None;
                if last_ok.elapsed() >= GIVE_UP_AFTER {
                    return Err(anyhow!(
                        "HTTP sender got no answer from {addr} for {GIVE_UP_AFTER:?}"
                    ));
                }
            }
        }
    }
    Ok(rep)
}
