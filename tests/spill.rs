//! A memory queue that overflows to disk (`overflow = "disk"`): nothing refused while the disk
//! tier has room, order kept across the spill, and the ledger balances.

mod common;

use common::{TestRelay, Upstream, client};
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_queue_spills_to_disk_and_order_survives() {
    let upstream = Upstream::start().await;
    let address = upstream.stop();
    let relay = TestRelay::start(&format!(
        r#"
data_dir = "{{data_dir}}"
[admin]
listen = "127.0.0.1:0"
[sources.api]
type = "http"
listen = "127.0.0.1:0"
[sinks.upstream]
type = "http_forward"
inputs = ["api"]
url = "http://{address}"
concurrency = 1
retry = {{ initial_backoff = "10ms", max_backoff = "50ms" }}
queue = {{ type = "memory", max_events = 5, overflow = "disk", when_full = "drop_newest" }}
"#
    ))
    .await;
    let http = client();
    for i in 0..50 {
        let response = http
            .post(relay.url("api", &format!("/{i}")))
            .body(i.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            StatusCode::ACCEPTED,
            "event {i}: memory is full, the disk tier takes it"
        );
    }
    let segments = std::fs::read_dir(relay.dir.path().join("data/queues/upstream"))
        .expect("the disk tier exists")
        .count();
    assert!(segments > 0);
    assert_eq!(
        relay.component("upstream").await["dropped_total"].as_u64(),
        Some(0),
        "nothing refused"
    );

    let upstream = Upstream::start_on(address).await;
    upstream.wait_for(50).await;
    relay.assert_settled_and_balanced().await;
    let order: Vec<u32> = upstream
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
    assert_eq!(
        order,
        (0..50).collect::<Vec<_>>(),
        "one delivery at a time keeps the order across memory and disk"
    );
    relay.shutdown().await;
}

#[test]
fn a_spilling_queue_refuses_drop_oldest_and_disk_only_keys_belong_to_the_disk_tier() {
    let text = |queue: &str| {
        format!(
            "[sources.api]\ntype = \"http\"\nlisten = \"127.0.0.1:0\"\n[sinks.up]\ntype = \"blackhole\"\ninputs = [\"api\"]\nqueue = {queue}\n"
        )
    };
    let parse = |queue: &str| {
        sluice::config::Config::parse(
            std::path::Path::new("s.toml"),
            &text(queue),
            std::iter::empty(),
            &|_| None,
        )
    };
    let Err(errors) =
        parse("{ type = \"memory\", overflow = \"disk\", when_full = \"drop_oldest\" }")
    else {
        panic!("expected an error")
    };
    assert!(
        errors.to_string().contains("never drops what it holds"),
        "{errors}"
    );
    let Err(errors) = parse("{ type = \"disk\", overflow = \"disk\" }") else {
        panic!("expected an error")
    };
    assert!(
        errors.to_string().contains("nowhere further to overflow"),
        "{errors}"
    );
    assert!(parse("{ type = \"memory\", overflow = \"disk\", sync = \"never\", overflow_max_bytes = \"64MiB\" }").is_ok());
    for disk_only in [
        "sync = \"never\"",
        "sync_gather = \"1ms\"",
        "preallocate = false",
        "direct_io = false",
    ] {
        let Err(errors) = parse(&format!("{{ type = \"memory\", {disk_only} }}")) else {
            panic!("expected an error for {disk_only}")
        };
        assert!(
            errors.to_string().contains("applies to disk queues"),
            "{errors}"
        );
    }
    assert!(parse("{ type = \"disk\", direct_io = false, preallocate = false }").is_ok());
    assert!(parse("{ type = \"disk\", sync = \"always\", sync_gather = \"0s\" }").is_ok());
    assert!(parse("{ type = \"disk\", sync_gather = \"500us\" }").is_ok());
    for (bad, says) in [
        (
            "sync = \"never\", sync_gather = \"1ms\"",
            "applies only with sync = \"always\"",
        ),
        (
            "sync = { every = \"10ms\" }, sync_gather = \"1ms\"",
            "applies only with sync",
        ),
        ("sync_gather = \"1s\"", "expected at most 100ms, found 1s"),
        (
            "sync = { every = \"0s\" }",
            "expected an interval above 0s in { every = … }",
        ),
    ] {
        let Err(errors) = parse(&format!("{{ type = \"disk\", {bad} }}")) else {
            panic!("expected an error for {bad}")
        };
        assert!(errors.to_string().contains(says), "{bad}: {errors}");
    }
}
