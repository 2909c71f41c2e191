//! `http_forward`: replays each received HTTP request to another server — asyncproxy's job.
//!
//! The request goes to `url` + the original path and query, with the original method, headers
//! and body. Hop-by-hop headers are removed, `Host` is the destination's, and
//! `X-Sluice-Event-Id` lets the receiver deduplicate (delivery is at-least-once);
//! `X-Forwarded-For` gains the producer's address. An event that did not come from HTTP is
//! POSTed to `url` as it is. When the producer waits for the answer (`passthrough_below_rate`),
//! the destination's status, headers and body go back to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use reqwest::Url;
use serde::Deserialize;

use super::http_client::{self, classify_error, classify_status, is_hop_by_hop};
use super::{Attempt, Sink};
use crate::config::HumanDuration;
use crate::config::error::{ConfigError, Locator};
use crate::event::{Event, Reply};
use crate::queue::BatchLimits;

/// The header that carries the event id to the destination.
pub const EVENT_ID_HEADER: &str = "x-sluice-event-id";
/// The most of a destination's answer body passed back to a waiting producer.
const MAX_REPLY_BODY: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpForwardConfig {
    /// Base URL; the original path and query are appended.
    pub url: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Added to every forwarded request, replacing a header of the same name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl HttpForwardConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(message) = parse_base_url(&self.url) {
            errors.push(locator.error(&format!("{prefix}.url"), message));
        }
        errors.extend(validate_headers(&self.headers, prefix, locator));
        errors
    }
}

/// An `http(s)://host[:port][/prefix]` URL without query or fragment.
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let url =
        Url::parse(text).map_err(|e| format!("expected an http(s) URL, found {text:?} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "expected an http(s) URL with a host, found {text:?}"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "expected a base URL without query or fragment, found {text:?}"
        ));
    }
    Ok(url)
}

pub fn validate_headers(
    headers: &BTreeMap<String, String>,
    prefix: &str,
    locator: &Locator,
) -> Vec<ConfigError> {
    headers
        .iter()
        .filter(|(name, value)| {
            HeaderName::try_from(name.as_str()).is_err()
                || HeaderValue::try_from(value.as_str()).is_err()
        })
        .map(|(name, _)| {
            locator.error(
                &format!("{prefix}.headers.{name}"),
                "expected a valid HTTP header name and value",
            )
        })
        .collect()
}

pub fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::try_from(name.as_str()).ok()?,
                HeaderValue::try_from(value.as_str()).ok()?,
            ))
        })
        .collect()
}

pub struct HttpForward {
    client: reqwest::Client,
    base: Url,
    extra_headers: HeaderMap,
}

impl HttpForward {
    pub fn new(config: &HttpForwardConfig, concurrency: usize) -> anyhow::Result<Self> {
        let base = parse_base_url(&config.url).map_err(anyhow::Error::msg)?;
        let client = http_client::client(config.request_timeout.0, concurrency)?;
        Ok(Self {
            client,
            base,
            extra_headers: header_map(&config.headers),
        })
    }

    fn target(&self, event: &Event) -> Url {
        let mut url = self.base.clone();
        if let Some(request) = event.http() {
            let path = format!(
                "{}{}",
                self.base.path().trim_end_matches('/'),
                request.uri.path()
            );
            url.set_path(&path);
            url.set_query(request.uri.query());
        }
        url
    }

    fn headers(&self, event: &Event) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(request) = event.http() {
            let listed_in_connection: Vec<String> = request
                .headers
                .get_all(http::header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
                .collect();
            for (name, value) in &request.headers {
                if !is_hop_by_hop(name) && !listed_in_connection.iter().any(|n| n == name.as_str())
                {
                    headers.append(name.clone(), value.clone());
                }
            }
            if let Some(peer) = request.peer {
                let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                    Some(earlier) => format!("{earlier}, {}", peer.ip()),
                    None => peer.ip().to_string(),
                };
                if let Ok(value) = HeaderValue::try_from(forwarded) {
                    headers.insert("x-forwarded-for", value);
                }
            }
        }
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Ok(id) = HeaderValue::try_from(event.id.to_string()) {
            headers.insert(EVENT_ID_HEADER, id);
        }
        headers
    }
}

/// One request ready to send (and to resend).
pub struct ForwardRequest {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Bytes,
}

impl Sink for HttpForward {
    type Request = Vec<ForwardRequest>;

    fn batch_limits(&self) -> BatchLimits {
        BatchLimits::SINGLE
    }

    fn encode(&self, events: &[Arc<Event>]) -> Self::Request {
        events
            .iter()
            .map(|event| ForwardRequest {
                method: event.http().map_or(Method::POST, |r| r.method.clone()),
                url: self.target(event),
                headers: self.headers(event),
                body: event.payload.clone(),
            })
            .collect()
    }

    async fn send(&self, requests: &Self::Request, events: &[Arc<Event>]) -> Attempt {
        for (request, event) in requests.iter().zip(events) {
            let response = self
                .client
                .request(request.method.clone(), request.url.clone())
                .headers(request.headers.clone())
                .body(request.body.clone())
                .send()
                .await;
            let mut response = match response {
                Ok(response) => response,
                Err(error) => return classify_error(&error),
            };
            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            // Read the body so the connection can be reused; keep it only for a waiting caller.
            let wants_reply = event.wants_reply();
            let mut body = BytesMut::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                if body.len() + chunk.len() > MAX_REPLY_BODY {
                    break;
                }
                if wants_reply {
                    body.extend_from_slice(&chunk);
                }
            }
            let attempt = classify_status(status, &headers);
            if wants_reply && !matches!(attempt, Attempt::Retry { .. }) {
                let headers = headers
                    .into_iter()
                    .filter_map(|(k, v)| Some((k?, v)))
                    .filter(|(k, _)| !is_hop_by_hop(k))
                    .collect();
                event.send_reply(Reply {
                    status,
                    headers,
                    body: body.freeze(),
                });
            }
            if !matches!(attempt, Attempt::Delivered) {
                return attempt;
            }
        }
        Attempt::Delivered
    }
}
