//! The HTTP source: every method and path is an event; the caller is answered as soon as the
//! event is accepted (asyncproxy's "answer at once, forward later").
//!
//! Per request: an optional bearer token (401 otherwise), a body limit (413, checked against
//! `Content-Length` first and enforced while reading), a body read timeout (408), then the event
//! goes to the sinks' queues. A full `block` queue holds the caller up to `accept_timeout`, then
//! it gets 503 with `Retry-After`. Accepted events are answered `response_status` with an
//! `X-Sluice-Event-Id` header. Below `passthrough_below_rate` requests per second the caller
//! instead waits (up to `passthrough_timeout`) for the destination's own answer.
//!
//! Every request is counted `received`, and ends `delivered` (accepted by every queue) or
//! `dropped{reason}`; a connection that sends bytes that are not HTTP counts as one received and
//! dropped `decode_error`, and one that stops halfway through a request head for longer than
//! `header_read_timeout` as one received and dropped `read_timeout` (an idle keep-alive
//! connection closed by that timeout counts nothing: see `http_server`).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::info;

use super::rate_meter::RateMeter;
use super::{AckPoint, Acked, Fanout, RunningSource, SourceContext};
use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};
use crate::event::{Attributes, Event, HttpRequest, IdGenerator};
use crate::http_server::{self, ConnectionFault, Handler, ServerOptions};
use crate::ledger::{ComponentLedger, DropReason};
use crate::sinks::http_forward::EVENT_ID_HEADER;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    pub listen: SocketAddr,
    /// What every caller gets once its request is accepted.
    #[serde(default = "defaults::response_status")]
    pub response_status: u16,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// When set, callers must send `Authorization: Bearer <token>`.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// How long a caller is held while the queue is full (`when_full = "block"`).
    #[serde(default = "defaults::accept_timeout")]
    pub accept_timeout: HumanDuration,
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    #[serde(default = "defaults::body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Below this many requests per second, wait for the destination's answer; 0 = never.
    #[serde(default)]
    pub passthrough_below_rate: u32,
    #[serde(default = "defaults::passthrough_timeout")]
    pub passthrough_timeout: HumanDuration,
    /// When the caller is answered: `received`, `durable` (the default when a sink's queue is
    /// on disk) or `delivered`.
    #[serde(default)]
    pub ack: Option<AckPoint>,
    /// With `ack = "delivered"`: how long to wait before answering 504 (the event stays queued).
    #[serde(default = "defaults::delivered_timeout")]
    pub delivered_timeout: HumanDuration,
}

mod defaults {
    use super::{ByteSize, HumanDuration};
    pub fn response_status() -> u16 {
        202
    }
    pub fn max_body_bytes() -> ByteSize {
        ByteSize::mib(1)
    }
    pub fn accept_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub fn header_read_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }
    pub fn body_read_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn delivered_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub fn passthrough_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
}

impl HttpSourceConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if !(200..=299).contains(&self.response_status) {
            errors.push(locator.error(
                &format!("{prefix}.response_status"),
                format!(
                    "expected a success status (200 to 299), found {}",
                    self.response_status
                ),
            ));
        }
        if self.max_body_bytes.0 == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_body_bytes"),
                "expected at least 1 byte, found 0",
            ));
        }
        if self
            .auth_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            errors.push(locator.error_with_hint(
                &format!("{prefix}.auth_token"),
                "expected a token, found an empty string",
                "remove the key to accept callers without a token",
            ));
        }
        if self.max_connections == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_connections"),
                "expected at least 1, found 0",
            ));
        }
        errors
    }
}

struct HttpSource {
    name: Arc<str>,
    config: HttpSourceConfig,
    status: StatusCode,
    /// `Bearer <token>`, compared in constant time.
    expected_authorization: Option<Vec<u8>>,
    fanout: Fanout,
    ledger: Arc<ComponentLedger>,
    ids: Arc<IdGenerator>,
    meter: RateMeter,
    ack: AckPoint,
}

pub async fn start(
    config: HttpSourceConfig,
    context: SourceContext,
) -> anyhow::Result<RunningSource> {
    let (listener, local_addr) = super::bind_tcp(&context.name, config.listen).await?;
    info!(source = %context.name, address = %local_addr, "HTTP source listening.");
    let options = ServerOptions {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout.0,
        grace: context.grace,
    };
    let ack = config.ack.unwrap_or(if context.fanout.any_durable() {
        AckPoint::Durable
    } else {
        AckPoint::Received
    });
    let source = Arc::new(HttpSource {
        name: context.name,
        status: StatusCode::from_u16(config.response_status).unwrap_or(StatusCode::ACCEPTED),
        expected_authorization: config
            .auth_token
            .as_ref()
            .map(|t| format!("Bearer {t}").into_bytes()),
        config,
        fanout: context.fanout,
        ledger: context.ledger,
        ids: context.ids,
        meter: RateMeter::default(),
        ack,
    });
    let task = tokio::spawn(http_server::serve(
        listener,
        source,
        options,
        context.shutdown,
    ));
    Ok(RunningSource {
        local_addr: Some(local_addr),
        task,
    })
}

fn respond(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// A copy of `headers` whose names and values own their bytes, less those `skip` names.
fn owned_headers(
    headers: &http::HeaderMap,
    skip: impl Fn(&http::HeaderName) -> bool,
) -> http::HeaderMap {
    let mut owned = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if skip(name) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        owned.append(name, value);
    }
    owned
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl HttpSource {
    /// Refuses a request before its body was read. Over HTTP/1.1 the answer also closes the
    /// connection: the unread rest of the body would otherwise be taken for the next request,
    /// and a client that pools the connection would see it fail under its next request.
    fn refuse(
        &self,
        http1: bool,
        reason: DropReason,
        status: StatusCode,
        body: &'static str,
    ) -> Response<Full<Bytes>> {
        self.ledger.dropped(reason, 1);
        let mut response = respond(status, body);
        if http1 {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(expected) = &self.expected_authorization else {
            return true;
        };
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .is_some_and(|given| constant_time_eq(given.as_bytes(), expected))
    }

    async fn accept(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let max_body = self.config.max_body_bytes.as_usize();
        let http1 = request.version() < http::Version::HTTP_2;
        if !self.authorized(&request) {
            let mut response = self.refuse(
                http1,
                DropReason::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token\n",
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return response;
        }
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body as u64) {
            return self.refuse(
                http1,
                DropReason::FrameTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "body over max_body_bytes\n",
            );
        }
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(
            self.config.body_read_timeout.0,
            Limited::new(body, max_body).collect(),
        )
        .await
        {
            Err(_) => {
                return self.refuse(
                    http1,
                    DropReason::ReadTimeout,
                    StatusCode::REQUEST_TIMEOUT,
                    "body not received in time\n",
                );
            }
            Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
                return self.refuse(
                    http1,
                    DropReason::FrameTooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body over max_body_bytes\n",
                );
            }
            Ok(Err(_)) => {
                return self.refuse(
                    http1,
                    DropReason::DecodeError,
                    StatusCode::BAD_REQUEST,
                    "cannot read the body\n",
                );
            }
            // A copy: hyper's body slices share the connection's read buffer, and a queued event
            // holding one would keep the whole buffer alive (kilobytes per queued event).
            Ok(Ok(collected)) => Bytes::copy_from_slice(&collected.to_bytes()),
        };

        // Owned copies, for the same reason as the body; the token, if the relay checked one,
        // was for the relay and travels no further.
        let consumed_auth = self.expected_authorization.is_some();
        let headers = owned_headers(&parts.headers, |name| {
            consumed_auth && name == http::header::AUTHORIZATION
        });
        let uri = parts
            .uri
            .path_and_query()
            .and_then(|pq| Uri::try_from(pq.as_str()).ok())
            .unwrap_or_else(|| Uri::from_static("/"));
        let attributes = Attributes::Http(Box::new(HttpRequest {
            method: parts.method,
            uri,
            headers,
            peer: Some(peer),
        }));
        let event = Event::new(self.ids.next(), self.name.clone(), body, attributes);
        let id = event.id;
        let passthrough = self.config.passthrough_below_rate > 0
            && self.meter.rate() < f64::from(self.config.passthrough_below_rate);
        self.meter.tick();
        let reply = passthrough.then(|| event.want_reply());

        self.ledger.in_flight.inc();
        let deadline = Instant::now() + self.config.accept_timeout.0;
        let pushed = self
            .fanout
            .push_acked(
                Arc::new(event),
                deadline,
                self.ack,
                self.config.delivered_timeout.0,
            )
            .await;
        match pushed {
            Ok(_) => {
                self.ledger.delivered.inc();
            }
            Err(reason) => self.ledger.dropped(reason, 1),
        }
        self.ledger.in_flight.dec();
        let refusal = match pushed {
            Ok(Acked::Yes) => None,
            Ok(Acked::TimedOut) => Some(respond(
                StatusCode::GATEWAY_TIMEOUT,
                "not delivered in time; still queued\n",
            )),
            Ok(Acked::Undeliverable) => Some(respond(
                StatusCode::BAD_GATEWAY,
                "a destination refused it or is out of retries\n",
            )),
            Err(DropReason::QueueFull) => {
                let mut response = respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue full, try again later\n",
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                Some(response)
            }
            Err(DropReason::FrameTooLarge) => Some(respond(
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger than the queue takes\n",
            )),
            Err(DropReason::IoError) => Some(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store the event; not accepted\n",
            )),
            Err(_) => Some(respond(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")),
        };
        if let Some(mut response) = refusal {
            if let Ok(value) = HeaderValue::try_from(id.to_string()) {
                response.headers_mut().insert(EVENT_ID_HEADER, value);
            }
            return response;
        }

        let mut response = match reply {
            Some(reply) => {
                match tokio::time::timeout(self.config.passthrough_timeout.0, reply).await {
                    Ok(Ok(reply)) => {
                        let mut response = Response::new(Full::new(reply.body));
                        *response.status_mut() = reply.status;
                        *response.headers_mut() = reply.headers;
                        response
                    }
                    // No answer in time, or no sink will answer: the event is queued all the same.
                    _ => respond(self.status, ""),
                }
            }
            None => respond(self.status, ""),
        };
        if let Ok(value) = HeaderValue::try_from(id.to_string()) {
            response.headers_mut().insert(EVENT_ID_HEADER, value);
        }
        response
    }
}

impl Handler for HttpSource {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        self.ledger.received.inc();
        self.accept(request, peer).await
    }

    fn connection_rejected(&self) {
        self.ledger.connections_rejected.inc();
    }

    fn connection_fault(&self, fault: ConnectionFault) {
        // Bytes that are not HTTP, or half a request, were still something a producer sent.
        let reason = match fault {
            ConnectionFault::Malformed => DropReason::DecodeError,
            ConnectionFault::HeaderTimeout => DropReason::ReadTimeout,
        };
        self.ledger.received.inc();
        self.ledger.dropped(reason, 1);
    }
}
