//! What the HTTP sinks share: one client setup and one reading of an HTTP answer.
//!
//! Classification: 2xx is delivered; 408, 429 and 5xx are retried (honouring `Retry-After`, in
//! seconds or as an HTTP date); any other status is a permanent refusal. Timeouts and connection
//! errors are retried. Redirects are not followed: a 3xx is the destination's final answer and
//! counts as a refusal, visible in the ledger, rather than a silent hop to another host.

use std::sync::Once;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use super::Attempt;
use crate::ledger::AttemptOutcome;

/// reqwest is built without a default TLS crypto provider (no aws-lc, no OpenSSL); this installs
/// ring's once per process.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for one sink: `concurrency` keep-alive connections, no redirects, no proxies from
/// the environment.
pub fn client(
    request_timeout: Duration,
    concurrency: usize,
) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .build()
}

/// The outcome an HTTP status means.
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Attempt::Retry {
            outcome: AttemptOutcome::RetryableStatus,
            after: retry_after(headers),
            detail: format!("HTTP {status}"),
        }
    } else {
        Attempt::Rejected {
            detail: format!("HTTP {status}"),
        }
    }
}

/// The outcome a failed request means.
pub fn classify_error(error: &reqwest::Error) -> Attempt {
    let outcome = if error.is_timeout() {
        AttemptOutcome::Timeout
    } else {
        AttemptOutcome::ConnectionError
    };
    if error.is_builder() {
        return Attempt::Rejected {
            detail: format!("cannot build the request: {error}"),
        };
    }
    Attempt::Retry {
        outcome,
        after: None,
        detail: error_chain(error),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Headers that describe one connection, not the message, and must not be forwarded
/// (RFC 9110 section 7.6.1), plus those the client sets itself.
pub fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    use http::header::*;
    [
        CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        HOST,
        CONTENT_LENGTH,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let none = HeaderMap::new();
        assert!(matches!(
            classify_status(StatusCode::NO_CONTENT, &none),
            Attempt::Delivered
        ));
        assert!(matches!(
            classify_status(StatusCode::BAD_REQUEST, &none),
            Attempt::Rejected { .. }
        ));
        assert!(matches!(
            classify_status(StatusCode::MOVED_PERMANENTLY, &none),
            Attempt::Rejected { .. }
        ));
        for retryable in [408, 429, 500, 503] {
            let status = StatusCode::from_u16(retryable).expect("valid status");
            assert!(
                matches!(classify_status(status, &none), Attempt::Retry { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("7"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_str(&later).expect("ascii"),
        );
        let wait = retry_after(&headers).expect("a date parses");
        assert!(
            wait > Duration::from_secs(95) && wait <= Duration::from_secs(100),
            "{wait:?}"
        );
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
