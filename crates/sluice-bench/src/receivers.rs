//! The destinations a relay delivers to: a TCP line server and an HTTP server.
//!
//! Both feed a [`SharedTracker`]. The TCP receiver splits its byte stream at newlines and keeps a
//! partial line across reads (a line over 1 MiB without a newline is garbage and is discarded).
//! The HTTP receiver accepts any method and path on HTTP/1.1 keep-alive connections, decodes the
//! body with [`crate::body`] and answers 200 (400 for a body it cannot decode).
//!
//! For the outage and overload scenarios the HTTP receiver can be steered while it runs
//! ([`HttpControl`]): answer 503 to everything, go down (stop listening and drop every open
//! connection, then bind the same port again when brought back up), or take at most a given
//! number of events per second (each request is held until the token bucket has room for it).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::payload;
use crate::tracker::SharedTracker;

const READ_BUF: usize = 256 * 1024;
const MAX_LINE: usize = 1024 * 1024;

/// A TCP server reading newline-delimited events; stops when dropped.
#[derive(Debug)]
pub struct TcpReceiver {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpReceiver {
    /// Binds a free loopback port and starts accepting.
    pub async fn start(tracker: Arc<SharedTracker>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            // Accept errors (EMFILE…) are transient for a benchmark: back off and go on.
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        conns.spawn(read_lines(s, tracker.clone()));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        Ok(TcpReceiver { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpReceiver {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn read_lines(mut s: TcpStream, tracker: Arc<SharedTracker>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            buf.reserve(READ_BUF);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let now = payload::now_ns();
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(end) => {
                tracker.with(|t| t.record_lines(&buf[..end], now));
                buf.drain(..=end);
            }
            None if buf.len() > MAX_LINE => {
                tracker.with(|t| t.add_garbage(1));
                buf.clear();
            }
            None => {}
        }
    }
    if !buf.iter().all(|b| b.is_ascii_whitespace()) {
        let now = payload::now_ns();
        tracker.with(|t| t.record_raw(&buf, now));
    }
}

/// How the HTTP receiver currently answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Answer 503 to every request (the body is read and discarded, events not counted).
    Unavailable,
    /// Not listening; existing connections are dropped.
    Down,
}

/// Steers a running [`HttpReceiver`].
#[derive(Debug)]
pub struct HttpControl {
    mode: watch::Sender<Mode>,
    unavailable: AtomicBool,
    /// Events per second the receiver takes at most; `None` = unlimited.
    throttle: Option<Mutex<Throttle>>,
}

#[derive(Debug)]
struct Throttle {
    per_sec: f64,
    next_free: Instant,
}

impl HttpControl {
    pub fn set_mode(&self, mode: Mode) {
        self.unavailable
            .store(mode == Mode::Unavailable, Ordering::Relaxed);
        self.mode.send_replace(mode);
    }

    /// When a request carrying `n` events may be answered.
    fn reserve(&self, n: u64) -> Option<Instant> {
        let mut t = self
            .throttle
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let start = t.next_free.max(Instant::now());
        t.next_free = start + Duration::from_secs_f64(n as f64 / t.per_sec);
        Some(t.next_free)
    }
}

/// An HTTP server taking batches of events; stops when dropped.
#[derive(Debug)]
pub struct HttpReceiver {
    addr: SocketAddr,
    control: Arc<HttpControl>,
    task: JoinHandle<()>,
}

impl HttpReceiver {
    /// Binds a free loopback port; `max_events_per_sec` throttles intake (S5's slow sink).
    pub async fn start(
        tracker: Arc<SharedTracker>,
        max_events_per_sec: Option<u64>,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(HttpControl {
            mode: watch::channel(Mode::Up).0,
            unavailable: AtomicBool::new(false),
            throttle: max_events_per_sec.filter(|&r| r > 0).map(|r| {
                Mutex::new(Throttle {
                    per_sec: r as f64,
                    next_free: Instant::now(),
                })
            }),
        });
        let task = tokio::spawn(serve(listener, addr, control.clone(), tracker));
        Ok(HttpReceiver {
            addr,
            control,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn control(&self) -> Arc<HttpControl> {
        self.control.clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    control: Arc<HttpControl>,
    tracker: Arc<SharedTracker>,
) {
    let mut mode = control.mode.subscribe();
    let mut listener = Some(listener);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        if *mode.borrow_and_update() == Mode::Down {
            listener = None;
            conns.abort_all();
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = l.accept() => match accepted {
                Ok((s, _)) => {
                    conns.spawn(serve_conn(s, control.clone(), tracker.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            changed = mode.changed() => if changed.is_err() { return },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(s: TcpStream, control: Arc<HttpControl>, tracker: Arc<SharedTracker>) {
    // Nagle would add ~40 ms to responses on keep-alive connections.
    let _ = s.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| {
        let (control, tracker) = (control.clone(), tracker.clone());
        async move { Ok::<_, Infallible>(handle(req, &control, &tracker).await) }
    });
    // A client that goes away mid-request is its own business; nothing to report.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(s), svc)
        .await;
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    control: &HttpControl,
    tracker: &SharedTracker,
) -> Response<Full<Bytes>> {
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            tracker.with(|t| t.add_bad_body());
            return respond(StatusCode::BAD_REQUEST, "body read failed\n");
        }
    };
    if control.unavailable.load(Ordering::Relaxed) {
        return respond(StatusCode::SERVICE_UNAVAILABLE, "outage\n");
    }
    let now = payload::now_ns();
    let mut events = 0;
    let result = tracker.with(|t| {
        let before = t.unique();
        let r = crate::body::record_body(t, &body, gzip, now);
        events = t.unique() - before;
        r
    });
    if let Some(until) = control.reserve(events) {
        tokio::time::sleep_until(until).await;
    }
    match result {
        Ok(()) => respond(StatusCode::OK, ""),
        Err(e) => respond(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Picks a free loopback port (bound and released: another process could take it in between,
/// which on a benchmark machine is rare enough to retry by hand).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}
