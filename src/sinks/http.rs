//! `http`: many events in one POST — newline-delimited JSON or a JSON array, optionally gzipped.
//!
//! `ndjson` writes each payload followed by a newline (one is not doubled). `json_array` writes
//! payloads that are JSON as they are, and wraps any other payload as a JSON string, so the body
//! is always valid JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use http::{HeaderMap, HeaderValue};
use reqwest::Url;
use serde::Deserialize;

use super::http_client::{self, classify_error, classify_status};
use super::http_forward::{header_map, validate_headers};
use super::{Attempt, Sink};
use crate::config::HumanDuration;
use crate::config::error::{ConfigError, Locator};
use crate::event::Event;
use crate::queue::{BatchConfig, BatchLimits};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Ndjson,
    JsonArray,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    #[serde(default)]
    pub encoding: Encoding,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl HttpConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        match Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
            _ => errors.push(locator.error(
                &format!("{prefix}.url"),
                format!("expected an http(s) URL, found {:?}", self.url),
            )),
        }
        errors.extend(validate_headers(&self.headers, prefix, locator));
        errors.extend(self.batch.validate(&format!("{prefix}.batch"), locator));
        errors
    }
}

pub struct HttpBatch {
    client: reqwest::Client,
    url: Url,
    headers: HeaderMap,
    encoding: Encoding,
    compression: Compression,
    batch: BatchLimits,
}

impl HttpBatch {
    pub fn new(config: &HttpConfig, concurrency: usize) -> anyhow::Result<Self> {
        let url = Url::parse(&config.url)?;
        let client = http_client::client(config.request_timeout.0, concurrency)?;
        let mut headers = HeaderMap::new();
        let content_type = match config.encoding {
            Encoding::Ndjson => "application/x-ndjson",
            Encoding::JsonArray => "application/json",
        };
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        if config.compression == Compression::Gzip {
            headers.insert(
                http::header::CONTENT_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        }
        headers.extend(header_map(&config.headers));
        Ok(Self {
            client,
            url,
            headers,
            encoding: config.encoding,
            compression: config.compression,
            batch: config.batch.limits(),
        })
    }
}

/// The body of one batch in `encoding`.
pub fn encode_body(encoding: Encoding, events: &[Arc<Event>]) -> Bytes {
    let size: usize = events.iter().map(|e| e.payload.len() + 1).sum();
    let mut body = BytesMut::with_capacity(size + 2);
    match encoding {
        Encoding::Ndjson => {
            for event in events {
                body.put_slice(&event.payload);
                if event.payload.last() != Some(&b'\n') {
                    body.put_u8(b'\n');
                }
            }
        }
        Encoding::JsonArray => {
            body.put_u8(b'[');
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    body.put_u8(b',');
                }
                let payload = event.payload.trim_ascii();
                if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok() {
                    body.put_slice(payload);
                } else {
                    let text = String::from_utf8_lossy(payload);
                    // Serializing a string into memory cannot fail.
                    let _ = serde_json::to_writer((&mut body).writer(), &text);
                }
            }
            body.put_u8(b']');
        }
    }
    body.freeze()
}

fn gzip(body: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), GzLevel::fast());
    encoder.write_all(body)?;
    Ok(Bytes::from(encoder.finish()?))
}

impl Sink for HttpBatch {
    type Request = Bytes;

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, events: &[Arc<Event>]) -> Bytes {
        let body = encode_body(self.encoding, events);
        match self.compression {
            Compression::None => body,
            // Compressing into memory only fails when memory does; send it plain then.
            Compression::Gzip => gzip(&body).unwrap_or(body),
        }
    }

    async fn send(&self, body: &Bytes, _events: &[Arc<Event>]) -> Attempt {
        let mut headers = self.headers.clone();
        if self.compression == Compression::Gzip && body.get(..2) != Some(&[0x1f, 0x8b]) {
            headers.remove(http::header::CONTENT_ENCODING);
        }
        match self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body.clone())
            .send()
            .await
        {
            Ok(mut response) => {
                let status = response.status();
                let headers = std::mem::take(response.headers_mut());
                while let Ok(Some(_)) = response.chunk().await {}
                classify_status(status, &headers)
            }
            Err(error) => classify_error(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Attributes, EventId};

    fn events(payloads: &[&str]) -> Vec<Arc<Event>> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Arc::new(Event::new(
                    EventId {
                        node: 0,
                        seq: i as u64,
                    },
                    Arc::from("t"),
                    Bytes::copy_from_slice(p.as_bytes()),
                    Attributes::None,
                ))
            })
            .collect()
    }

    #[test]
    fn ndjson_ends_every_event_with_one_newline() {
        let body = encode_body(Encoding::Ndjson, &events(&["{\"a\":1}", "{\"b\":2}\n"]));
        assert_eq!(&body[..], b"{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn json_array_keeps_json_and_wraps_anything_else_as_a_string() {
        let body = encode_body(
            Encoding::JsonArray,
            &events(&["{\"a\":1}\n", "not json \"quoted\"", "\u{fffd}"]),
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("always valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!([{"a": 1}, "not json \"quoted\"", "\u{fffd}"])
        );
    }
}
