//! The admin listener, on its own port so probes never queue behind ingest:
//!
//! - `GET /metrics`: every counter in the Prometheus text format (`sluice_*`, labels
//!   `component`, `reason`, `outcome`).
//! - `GET /health`: 200 while the process runs.
//! - `GET /ready`: 200 once every listener is bound; 503 before that, during shutdown, and
//!   while a disk queue cannot write (it refuses events until the relay restarts), naming the
//!   sinks in `failing`.
//! - `GET /stats`: the ledger as JSON, per component, with `balanced` and `settled` flags.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http_server::{self, Handler, ServerOptions};
use crate::ledger::{Ledger, Stats};
use crate::queue::SinkQueue;

/// Whether the relay takes traffic: set once every listener is bound, cleared on shutdown; and
/// the queues whose disk failed, which make it unready whatever the flag says.
#[derive(Default)]
pub struct Readiness {
    started: AtomicBool,
    queues: OnceLock<Vec<(String, Arc<SinkQueue>)>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    /// The sinks' queues, watched for disk failures from now on.
    pub fn watch(&self, queues: Vec<(String, Arc<SinkQueue>)>) {
        let _ = self.queues.set(queues);
    }

    pub fn get(&self) -> bool {
        self.started.load(Ordering::SeqCst) && self.failing().is_empty()
    }

    /// Sinks whose disk queue cannot write.
    pub fn failing(&self) -> Vec<&str> {
        self.queues
            .get()
            .map(|queues| {
                queues
                    .iter()
                    .filter(|(_, queue)| queue.write_failed())
                    .map(|(name, _)| name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct Admin {
    node: String,
    ledger: Arc<Ledger>,
    ready: Arc<Readiness>,
}

#[derive(Serialize)]
struct StatsDocument {
    node: String,
    ready: bool,
    #[serde(flatten)]
    stats: Stats,
}

pub struct RunningAdmin {
    pub local_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

pub async fn start(
    listen: SocketAddr,
    node: String,
    ledger: Arc<Ledger>,
    ready: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningAdmin> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("admin.listen: cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let options = ServerOptions {
        max_connections: 256,
        header_read_timeout: Duration::from_secs(10),
        grace: Duration::from_secs(1),
    };
    let admin = Arc::new(Admin {
        node,
        ledger,
        ready,
    });
    let task = tokio::spawn(http_server::serve(listener, admin, options, shutdown));
    Ok(RunningAdmin { local_addr, task })
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

const INDEX: &str = "sluice admin\n\n/metrics  Prometheus metrics\n/health   liveness\n/ready    readiness\n/stats    the ledger as JSON\n";

impl Handler for Admin {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        _peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
        }
        match request.uri().path() {
            "/" => respond(StatusCode::OK, "text/plain", INDEX),
            "/metrics" => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.ledger.encode_metrics(),
            ),
            "/health" => respond(StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n"),
            "/ready" => {
                let failing = self.ready.failing();
                let ready = self.ready.get();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = if failing.is_empty() {
                    serde_json::json!({ "ready": ready })
                } else {
                    serde_json::json!({
                        "ready": false,
                        "failing": failing,
                        "reason": "a disk queue cannot write (see the log); its sink refuses events until the relay restarts",
                    })
                };
                respond(status, "application/json", format!("{body}\n"))
            }
            "/stats" => {
                let document = StatsDocument {
                    node: self.node.clone(),
                    ready: self.ready.get(),
                    stats: self.ledger.stats(),
                };
                match serde_json::to_vec_pretty(&document) {
                    Ok(body) => respond(StatusCode::OK, "application/json", body),
                    Err(_) => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "cannot encode stats\n",
                    ),
                }
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", INDEX),
        }
    }
}
