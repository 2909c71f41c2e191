//! The HTTP source and the `http_forward` sink against a real upstream on loopback: replay
//! fidelity, outages, refusals, passthrough, bad input, and the ledger after each.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Behaviour, TestRelay, Upstream, client, for_each_concurrent};
use http::StatusCode;

fn forward_config(upstream: &str, source_extra: &str, sink_extra: &str) -> String {
    format!(
        r#"
data_dir = "{{data_dir}}"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[sources.api]
type = "http"
listen = "127.0.0.1:0"
{source_extra}
[sinks.upstream]
type = "http_forward"
inputs = ["api"]
url = "{upstream}"
request_timeout = "5s"
retry = {{ initial_backoff = "10ms", max_backoff = "200ms" }}
{sink_extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_arrive_upstream_with_method_path_query_headers_and_body() {
    let upstream = Upstream::start().await;
    let relay =
        TestRelay::start(&forward_config(&format!("{}/base", upstream.url()), "", "")).await;
    let base = relay.url("api", "");
    let http = client();
    const N: usize = 10_000;
    let methods = ["POST", "PUT", "PATCH", "DELETE", "GET"];
    let items: Vec<usize> = (0..N).collect();
    let (base2, http2) = (base.clone(), http.clone());
    for_each_concurrent(items, 32, move |i| {
        let (base, http) = (base2.clone(), http2.clone());
        async move {
            let method =
                http::Method::from_bytes(methods[i % methods.len()].as_bytes()).expect("method");
            let response = http
                .request(method, format!("{base}/items/{i}?n={i}&tag=a%20b"))
                .header("x-request-number", i.to_string())
                .header("content-type", "application/json")
                .body(format!("{{\"n\":{i}}}"))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            assert!(response.headers().contains_key("x-sluice-event-id"));
        }
    })
    .await;
    upstream.wait_for(N).await;

    let received = upstream.received.lock().clone();
    assert_eq!(received.len(), N, "exactly once each");
    let mut seen = vec![false; N];
    let mut ids = std::collections::HashSet::new();
    for request in &received {
        let i: usize = request.headers["x-request-number"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert!(!seen[i], "request {i} arrived twice");
        seen[i] = true;
        assert_eq!(request.method.as_str(), methods[i % methods.len()]);
        assert_eq!(
            request.path_and_query,
            format!("/base/items/{i}?n={i}&tag=a%20b")
        );
        assert_eq!(request.body, format!("{{\"n\":{i}}}"));
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(
            request.headers["host"],
            upstream.addr.to_string(),
            "Host is the destination's"
        );
        assert_eq!(request.headers["x-forwarded-for"], "127.0.0.1");
        assert!(
            ids.insert(request.headers["x-sluice-event-id"].clone()),
            "event ids are unique"
        );
    }
    let stats = relay.assert_settled_and_balanced().await;
    let sink = relay.component("upstream").await;
    assert_eq!(
        (sink["received"].as_u64(), sink["delivered"].as_u64()),
        (Some(N as u64), Some(N as u64)),
        "{stats:#}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_down_is_retried_until_it_comes_back() {
    let upstream = Upstream::start().await;
    let address = upstream.stop();
    let relay = TestRelay::start(&forward_config(&format!("http://{address}"), "", "")).await;
    let http = client();
    const N: usize = 200;
    for i in 0..N {
        let response = http
            .post(relay.url("api", &format!("/e/{i}")))
            .body(i.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "accepted while the upstream is down"
        );
    }
    relay
        .wait_for("failed attempts", |s| {
            s["components"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["name"] == "upstream" && c["in_flight"].as_u64() > Some(0))
            })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains(
            "sluice_delivery_attempts_total{component=\"upstream\",outcome=\"connection_error\"}"
        ),
        "{metrics}"
    );

    let upstream = Upstream::start_on(address).await;
    upstream.wait_for(N).await;
    relay.assert_settled_and_balanced().await;
    let mut bodies: Vec<usize> = upstream
        .received
        .lock()
        .iter()
        .map(|r| {
            std::str::from_utf8(&r.body)
                .expect("utf8")
                .parse()
                .expect("n")
        })
        .collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), N, "nothing lost");
    let sink = relay.component("upstream").await;
    assert_eq!(sink["delivered"].as_u64(), Some(N as u64));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_400_is_counted_rejected_and_not_retried() {
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        status: StatusCode::BAD_REQUEST,
        ..Behaviour::default()
    });
    let relay = TestRelay::start(&forward_config(&upstream.url(), "", "")).await;
    for _ in 0..5 {
        let response = client()
            .post(relay.url("api", "/x"))
            .body("bad")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let stats = relay.assert_settled_and_balanced().await;
    let sink = relay.component("upstream").await;
    assert_eq!(sink["dropped"]["rejected"].as_u64(), Some(5), "{stats:#}");
    assert_eq!(upstream.count(), 5, "a refusal is final: no retries");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts_and_are_counted() {
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..Behaviour::default()
    });
    let config = forward_config(&upstream.url(), "", "").replace(
        "retry = { initial_backoff = \"10ms\", max_backoff = \"200ms\" }",
        "retry = { max_attempts = 3, initial_backoff = \"10ms\", max_backoff = \"20ms\" }",
    );
    let relay = TestRelay::start(&config).await;
    client()
        .post(relay.url("api", "/x"))
        .body("x")
        .send()
        .await
        .expect("request");
    relay.assert_settled_and_balanced().await;
    let sink = relay.component("upstream").await;
    assert_eq!(sink["dropped"]["retries_exhausted"].as_u64(), Some(1));
    assert_eq!(upstream.count(), 3, "three attempts in all");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_below_rate_returns_the_upstreams_own_answer() {
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        status: StatusCode::CREATED,
        body: "made it",
        ..Behaviour::default()
    });
    let relay = TestRelay::start(&forward_config(
        &upstream.url(),
        "passthrough_below_rate = 1000",
        "",
    ))
    .await;
    let response = client()
        .post(relay.url("api", "/sync"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the upstream's status, not 202"
    );
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(response.text().await.expect("body"), "made it");

    upstream.set(Behaviour {
        status: StatusCode::NOT_FOUND,
        body: "no such thing",
        ..Behaviour::default()
    });
    let response = client()
        .post(relay.url("api", "/missing"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a refusal comes back as it is"
    );
    assert_eq!(response.text().await.expect("body"), "no such thing");
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_passthrough_rate_callers_are_answered_at_once() {
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        status: StatusCode::CREATED,
        delay: Duration::from_millis(50),
        ..Behaviour::default()
    });
    let relay = TestRelay::start(&forward_config(
        &upstream.url(),
        "passthrough_below_rate = 1",
        "",
    ))
    .await;
    let http = client();
    let first = http
        .post(relay.url("api", "/a"))
        .body("1")
        .send()
        .await
        .expect("request");
    assert_eq!(
        first.status(),
        StatusCode::CREATED,
        "the first request of the second is below the rate"
    );
    let second = http
        .post(relay.url("api", "/b"))
        .body("2")
        .send()
        .await
        .expect("request");
    assert_eq!(
        second.status(),
        StatusCode::ACCEPTED,
        "at the rate, queued and answered at once"
    );
    upstream.wait_for(2).await;
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_and_is_counted_frame_too_large() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&forward_config(
        &upstream.url(),
        "max_body_bytes = \"1KiB\"",
        "",
    ))
    .await;
    let http = client();
    let declared = http
        .post(relay.url("api", "/big"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .expect("request");
    assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        declared.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the unread body must not be taken for a next request on this connection"
    );
    // A chunked body declares no length: the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'y'; 600])).collect();
    let streamed = http
        .post(relay.url("api", "/chunked"))
        .body(reqwest::Body::wrap_stream(futures_lite_stream(chunks)))
        .send()
        .await
        .expect("request");
    assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        streamed.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let ok = http
        .post(relay.url("api", "/small"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(
        ok.status(),
        StatusCode::ACCEPTED,
        "exactly the limit is fine"
    );
    upstream.wait_for(1).await;
    relay.assert_settled_and_balanced().await;
    let source = relay.component("api").await;
    assert_eq!(source["dropped"]["frame_too_large"].as_u64(), Some(2));
    assert_eq!(source["delivered"].as_u64(), Some(1));
    relay.shutdown().await;
}

fn futures_lite_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct Iter(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_line_gets_400_is_counted_and_the_source_keeps_serving() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&forward_config(&upstream.url(), "", "")).await;
    let addr = relay.addr("api");
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(b"THIS IS NOT HTTP\x00\xff\r\n\r\n")
            .expect("write");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("task");
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "hyper answers 400: {answer:?}"
    );
    let ok = client()
        .post(relay.url("api", "/after"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), StatusCode::ACCEPTED);
    upstream.wait_for(1).await;
    relay
        .wait_for("the decode error", |s| {
            s.to_string().contains("decode_error")
        })
        .await;
    relay.assert_settled_and_balanced().await;
    let source = relay.component("api").await;
    assert_eq!(source["dropped"]["decode_error"].as_u64(), Some(1));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_counted_and_others_are_served() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&forward_config(
        &upstream.url(),
        "header_read_timeout = \"300ms\"",
        "",
    ))
    .await;
    let addr = relay.addr("api");
    let slow = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nX-Half: ")
            .expect("write");
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        started.elapsed()
    });
    // Meanwhile, everybody else is served.
    for i in 0..20 {
        let ok = client()
            .post(relay.url("api", &format!("/fast/{i}")))
            .body("x")
            .send()
            .await
            .expect("request");
        assert_eq!(ok.status(), StatusCode::ACCEPTED);
    }
    let cut_after = slow.await.expect("task");
    assert!(
        cut_after < Duration::from_secs(5),
        "the stalled connection is closed by the header timeout ({cut_after:?})"
    );
    upstream.wait_for(20).await;
    // The same timeout also closes connections that merely sat idle: one that never sent a
    // byte, and one that sent a whole request, got its answer and kept the connection open
    // (as do the client's pooled connections above). Those are not drops.
    let idle = tokio::task::spawn_blocking(move || {
        let silent = TcpStream::connect(addr).expect("connect");
        let mut kept = TcpStream::connect(addr).expect("connect");
        for stream in [&silent, &kept] {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
        }
        kept.write_all(b"POST /kept HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
            .expect("write");
        let mut answers = Vec::new();
        for mut stream in [silent, kept] {
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            answers.push(String::from_utf8_lossy(&answer).into_owned());
        }
        answers
    });
    let answers = idle.await.expect("task");
    assert_eq!(
        answers[0], "",
        "the silent connection is closed without a word"
    );
    assert!(
        answers[1].starts_with("HTTP/1.1 202"),
        "the kept connection got its answer, then was closed: {answers:?}"
    );
    upstream.wait_for(21).await;
    relay.assert_settled_and_balanced().await;
    let source = relay.component("api").await;
    assert_eq!(
        source["dropped"]["read_timeout"].as_u64(),
        Some(1),
        "only the half-sent head is a drop: {source:#}"
    );
    assert_eq!(source["received"].as_u64(), Some(22), "{source:#}");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_bearer_token_gets_401_and_the_token_is_not_forwarded() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&forward_config(
        &upstream.url(),
        "auth_token = \"s3cret\"",
        "",
    ))
    .await;
    let http = client();
    let none = http
        .post(relay.url("api", "/x"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong = http
        .post(relay.url("api", "/x"))
        .bearer_auth("guess")
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = http
        .post(relay.url("api", "/x"))
        .bearer_auth("s3cret")
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(right.status(), StatusCode::ACCEPTED);
    upstream.wait_for(1).await;
    assert!(
        !upstream.received.lock()[0]
            .headers
            .contains_key("authorization"),
        "the relay's token stays with the relay"
    );
    relay.assert_settled_and_balanced().await;
    assert_eq!(
        relay.component("api").await["dropped"]["unauthorized"].as_u64(),
        Some(2)
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_blocking_queue_holds_callers_then_answers_503_and_counts_queue_full() {
    let upstream = Upstream::start().await;
    let address = upstream.stop();
    let relay = TestRelay::start(&forward_config(
        &format!("http://{address}"),
        "accept_timeout = \"200ms\"",
        "concurrency = 1\nqueue = { type = \"memory\", max_events = 2, when_full = \"block\" }",
    ))
    .await;
    let http = client();
    // One in flight (retrying), two queued; the fourth waits, then is refused.
    for i in 0..3 {
        let response = http
            .post(relay.url("api", &format!("/{i}")))
            .body("x")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "request {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = std::time::Instant::now();
    let refused = http
        .post(relay.url("api", "/3"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "held for accept_timeout first"
    );
    let source = relay.component("api").await;
    assert_eq!(source["dropped"]["queue_full"].as_u64(), Some(1));

    let upstream = Upstream::start_on(address).await;
    upstream.wait_for(3).await;
    relay.assert_settled_and_balanced().await;
    assert_eq!(
        relay.component("upstream").await["dropped"]["queue_full"].as_u64(),
        Some(1)
    );
    relay.shutdown().await;
}
