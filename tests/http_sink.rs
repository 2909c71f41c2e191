//! The batching `http` sink and the small sinks, against a real upstream: every event arrives
//! once, in the configured encoding, and the ledger balances.

mod common;

use std::io::Read;

use common::{TestRelay, Upstream, client, for_each_concurrent};
use http::StatusCode;

fn batch_config(upstream: &str, sink_extra: &str) -> String {
    format!(
        r#"
data_dir = "{{data_dir}}"
[admin]
listen = "127.0.0.1:0"
[sources.api]
type = "http"
listen = "127.0.0.1:0"
[sinks.batched]
type = "http"
inputs = ["api"]
url = "{upstream}/ingest"
batch = {{ max_events = 50, max_bytes = "64KiB", timeout = "20ms" }}
headers = {{ "x-tenant" = "blue" }}
{sink_extra}
"#
    )
}

async fn send_numbered(relay: &TestRelay, n: usize) {
    let base = relay.url("api", "/");
    let http = client();
    for_each_concurrent((0..n).collect(), 16, move |i| {
        let (base, http) = (base.clone(), http.clone());
        async move {
            let response = http
                .post(&base)
                .body(format!("{{\"n\":{i}}}"))
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        }
    })
    .await;
}

fn numbers(values: impl Iterator<Item = serde_json::Value>) -> Vec<u64> {
    let mut numbers: Vec<u64> = values.map(|v| v["n"].as_u64().expect("n")).collect();
    numbers.sort_unstable();
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_batches_carry_every_event_once() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&batch_config(&upstream.url(), "")).await;
    send_numbered(&relay, 1000).await;
    relay.assert_settled_and_balanced().await;
    let requests = upstream.received.lock().clone();
    assert!(
        requests.len() < 1000,
        "events were batched ({} requests)",
        requests.len()
    );
    for request in &requests {
        assert_eq!(request.path_and_query, "/ingest");
        assert_eq!(request.headers["content-type"], "application/x-ndjson");
        assert_eq!(request.headers["x-tenant"], "blue");
        assert!(
            request.body.iter().filter(|b| **b == b'\n').count() <= 50,
            "max_events holds"
        );
    }
    let lines = requests.iter().flat_map(|r| {
        std::str::from_utf8(&r.body)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect::<Vec<_>>()
    });
    assert_eq!(numbers(lines), (0..1000).collect::<Vec<_>>());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzipped_json_array_batches_decode_to_every_event() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&batch_config(
        &upstream.url(),
        "encoding = \"json_array\"\ncompression = \"gzip\"",
    ))
    .await;
    send_numbered(&relay, 500).await;
    // One payload that is not JSON: it arrives as a JSON string.
    client()
        .post(relay.url("api", "/"))
        .body("plain text")
        .send()
        .await
        .expect("request");
    relay.assert_settled_and_balanced().await;
    let mut values = Vec::new();
    for request in upstream.received.lock().iter() {
        assert_eq!(request.headers["content-encoding"], "gzip");
        assert_eq!(request.headers["content-type"], "application/json");
        let mut text = String::new();
        flate2::read::GzDecoder::new(&request.body[..])
            .read_to_string(&mut text)
            .expect("gzip");
        let array: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a JSON array");
        values.extend(array);
    }
    assert!(values.contains(&serde_json::Value::String("plain text".into())));
    values.retain(|v| v.is_object());
    assert_eq!(numbers(values.into_iter()), (0..500).collect::<Vec<_>>());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_shares_each_event_with_every_sink() {
    let upstream = Upstream::start().await;
    let config = batch_config(&upstream.url(), "")
        + "\n[sinks.void]\ntype = \"blackhole\"\ninputs = [\"api\"]\n";
    let relay = TestRelay::start(&config).await;
    send_numbered(&relay, 300).await;
    let stats = relay.assert_settled_and_balanced().await;
    assert_eq!(
        relay.component("void").await["delivered"].as_u64(),
        Some(300),
        "{stats:#}"
    );
    assert_eq!(
        relay.component("batched").await["delivered"].as_u64(),
        Some(300),
        "{stats:#}"
    );
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_health_and_metrics_answer_on_the_admin_listener() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&batch_config(&upstream.url(), "")).await;
    let http = client();
    for path in ["/ready", "/health", "/metrics", "/stats", "/"] {
        let response = http
            .get(relay.url("admin", path))
            .send()
            .await
            .expect("admin");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let metrics = relay.metrics().await;
    for name in [
        "sluice_events_received_total",
        "sluice_events_delivered_total",
        "sluice_queue_events",
        "sluice_queue_bytes",
        "sluice_delivery_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let not_get = http
        .post(relay.url("admin", "/ready"))
        .send()
        .await
        .expect("admin");
    assert_eq!(not_get.status(), StatusCode::METHOD_NOT_ALLOWED);
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_source_speaks_h2c_on_the_same_port() {
    let upstream = Upstream::start().await;
    let relay = TestRelay::start(&batch_config(&upstream.url(), "")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .expect("client");
    for i in 0..10 {
        let response = h2
            .post(relay.url("api", "/"))
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .expect("h2c request");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    relay.assert_settled_and_balanced().await;
    assert_eq!(
        relay.component("batched").await["delivered"].as_u64(),
        Some(10)
    );
    relay.shutdown().await;
}
