//! The HTTP server loop shared by the HTTP source and the admin listener: HTTP/1.1 with
//! keep-alive and h2c (HTTP/2 with prior knowledge) on one port, a connection limit, a header
//! read timeout for clients that never finish their request head, and graceful shutdown.
//!
//! hyper raises the same header timeout for a client that stopped halfway through a request
//! head and for a keep-alive connection that merely sat idle. They are told apart by whether
//! the client sent bytes after the server's last write (`Watched`): only the first is a
//! fault ([`ConnectionFault::HeaderTimeout`]). A head that arrived in the same read as the end
//! of the previous request is missed, and its timeout taken for an idle one.
//!
//! Over the connection limit, a connection is accepted and closed at once (and counted), so a
//! flood of connections costs the relay nothing but the accept. On shutdown the listener closes
//! first; open connections finish the request they are serving, then close, within `grace`.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::log_throttle::Throttle;

/// How a connection ended badly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionFault {
    /// The bytes were not HTTP (a malformed request line or header).
    Malformed,
    /// The client began a request head and did not finish it within the header read timeout.
    /// (An idle keep-alive connection closed by the same timeout is not a fault.)
    HeaderTimeout,
}

/// What serves requests on a [`serve`] loop.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;

    /// A connection was closed because the server was at its connection limit.
    fn connection_rejected(&self) {}

    /// A connection ended with a protocol fault.
    fn connection_fault(&self, _fault: ConnectionFault) {}
}

#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long open connections get to finish after shutdown begins.
    pub grace: Duration,
}

/// Serves `listener` until `shutdown` is cancelled, then drains open connections.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let accept_errors = Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    if let Some(suppressed) = accept_errors.check() {
                        warn!(%error, suppressed, "Cannot accept a connection.");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            handler.connection_rejected();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service_handler = handler.clone();
            let service = service_fn(move |request| {
                let handler = service_handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(request, peer).await) }
            });
            let stream = Watched::new(stream);
            let sent_since_reply = stream.sent_since_reply.clone();
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection).await {
                match classify(&*error) {
                    Some(ConnectionFault::HeaderTimeout)
                        if !sent_since_reply.load(Ordering::Relaxed) =>
                    {
                        debug!(%peer, "Closed an idle connection (header read timeout).");
                    }
                    Some(fault) => handler.connection_fault(fault),
                    None => debug!(%peer, %error, "Connection ended with an error."),
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("Connections still open after the shutdown grace period; closing them.");
    }
}

/// A connection's socket, noting whether the client sent bytes since the server last wrote.
struct Watched {
    inner: TcpStream,
    /// Set by a read that returned bytes, cleared by a write: true while a request (or part of
    /// one) has arrived that has not been answered.
    sent_since_reply: Arc<AtomicBool>,
}

impl Watched {
    fn new(inner: TcpStream) -> Self {
        Watched {
            inner,
            sent_since_reply: Arc::new(AtomicBool::new(false)),
        }
    }

    fn wrote(&self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.sent_since_reply.store(false, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.sent_since_reply.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ConnectionFault> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
            if hyper_error.is_parse() || hyper_error.is_parse_status() {
                return Some(ConnectionFault::Malformed);
            }
            if hyper_error.is_timeout() {
                return Some(ConnectionFault::HeaderTimeout);
            }
        }
        current = e.source();
    }
    None
}
