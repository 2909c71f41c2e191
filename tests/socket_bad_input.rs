//! Bad input and hard limits at the socket sources: binary garbage, a 100 MiB line, a client
//! that stalls mid-line, idle connections, 10,000 connections at once, shutdown while blocked,
//! and config mistakes — each counted, the relay still serving, the ledger balanced.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::sockets::{
    LineReceiver, component, dropped, relay_config, send_tcp, tcp_sink, tcp_source,
};
use common::{TestRelay, refusing_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_passes_as_lines_and_bad_octet_counts_resync() {
    let (receiver, lines) = LineReceiver::collecting().await;
    let relay = TestRelay::start(&relay_config(
        &tcp_source(""),
        &format!(
            "{}\n[sources.syslog]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nframing = \"octet_counting\"\n",
            tcp_sink(receiver.addr, "")
        )
        .replace("inputs = [\"in\"]", "inputs = [\"in\", \"syslog\"]"),
    ))
    .await;
    // Pseudo-random bytes, NUL and 0xFF included.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let garbage: Vec<u8> = (0..200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let expected: Vec<&[u8]> = garbage
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    send_tcp(relay.addr("in"), &garbage).await;
    receiver.wait_for(expected.len() as u64).await;
    {
        let got = lines.lock();
        assert_eq!(got.len(), expected.len());
        assert!(got.iter().zip(&expected).all(|(a, b)| &a[..] == *b));
    }
    lines.lock().clear();
    send_tcp(
        relay.addr("syslog"),
        b"11 <13>1 first\xff\x00garbage here\n8 <13>1 ok",
    )
    .await;
    receiver.wait_for(expected.len() as u64 + 2).await;
    assert_eq!(
        lines.lock().clone(),
        vec![
            Bytes::from_static(b"<13>1 first"),
            Bytes::from_static(b"<13>1 ok")
        ]
    );
    let stats = relay.assert_settled_and_balanced().await;
    assert_eq!(dropped(component(&stats, "syslog"), "decode_error"), 1);
    relay.shutdown().await;
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_line_is_streamed_past_not_buffered() {
    let (receiver, lines) = LineReceiver::collecting().await;
    let relay =
        TestRelay::start(&relay_config(&tcp_source(""), &tcp_sink(receiver.addr, ""))).await;
    let before = peak_rss_kib();
    let mut stream = TcpStream::connect(relay.addr("in")).await.expect("connect");
    stream.write_all(b"before\n").await.expect("write");
    let chunk = vec![b'L'; 1 << 20];
    for _ in 0..100 {
        stream.write_all(&chunk).await.expect("write");
    }
    stream.write_all(b"\nafter\n").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    receiver.wait_for(2).await;
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    assert_eq!(
        lines.lock().clone(),
        vec![Bytes::from_static(b"before"), Bytes::from_static(b"after")]
    );
    let stats = relay.assert_settled_and_balanced().await;
    assert_eq!(dropped(component(&stats, "in"), "frame_too_large"), 1);
    // Buffering the line whole would take over 100 MiB; other tests share this process.
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_line_then_a_stall_is_counted_while_others_are_served() {
    let (receiver, lines) = LineReceiver::collecting().await;
    let relay = TestRelay::start(&relay_config(
        &tcp_source("partial_frame_timeout = \"500ms\""),
        &tcp_sink(receiver.addr, ""),
    ))
    .await;
    let mut staller = TcpStream::connect(relay.addr("in")).await.expect("connect");
    staller.write_all(b"{\"half\":").await.expect("write");
    // Another producer is served at once meanwhile.
    let mut other = TcpStream::connect(relay.addr("in")).await.expect("connect");
    for i in 0..10 {
        other
            .write_all(format!("other {i}\n").as_bytes())
            .await
            .expect("write");
    }
    receiver.wait_for(10).await;
    // The staller's connection is closed by the relay after the timeout.
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), staller.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the relay closes a stalled connection");
    let stats = relay.assert_settled_and_balanced().await;
    assert_eq!(dropped(component(&stats, "in"), "read_timeout"), 1);
    assert_eq!(lines.lock().len(), 10);
    // An idle connection with no partial frame stays open (no idle_timeout is set).
    other.write_all(b"still here\n").await.expect("write");
    receiver.wait_for(11).await;
    relay.shutdown().await;
}

/// Raises the soft open-files limit to the hard one.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// 10,000 clients open at once against `max_connections = 4000`. Client and relay share this
/// process, so 10,000 served connections would need 20,000 descriptors plus the rest — more
/// than this machine's hard limit of 20,000 — hence the cap: the other 6,000 are accepted,
/// closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_at_once_are_served_or_counted() {
    const CLIENTS: usize = 10_000;
    const MAX: u64 = 4_000;
    let limit = raise_fd_limit();
    assert!(limit >= 16_000, "need 16,000 descriptors, have {limit}");
    let (receiver, _) = LineReceiver::collecting().await;
    let relay = TestRelay::start(&relay_config(
        &tcp_source(&format!("max_connections = {MAX}")),
        &tcp_sink(receiver.addr, ""),
    ))
    .await;
    let source = relay.addr("in");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(source).await.expect("connect");
                let _ = stream.write_all(format!("client {i}\n").as_bytes()).await;
                // Hold the connection open until the test aborts this task.
                std::future::pending::<()>().await;
            })
        })
        .collect();
    let stats = relay
        .wait_for("every connection served or rejected", |s| {
            let source = component(s, "in");
            source["delivered"].as_u64().unwrap_or(0)
                + source["connections_rejected"].as_u64().unwrap_or(0)
                >= CLIENTS as u64
        })
        .await;
    let counts = component(&stats, "in");
    assert_eq!(counts["delivered"], MAX, "{counts:#}");
    assert_eq!(counts["connections"]["open"], MAX);
    assert_eq!(
        counts["connections"]["list"].as_array().map(Vec::len),
        Some(256)
    );
    for client in &clients {
        client.abort();
    }
    // The relay still serves a new producer.
    relay
        .wait_for("connections to close", |s| {
            component(s, "in")["connections"]["open"] == 0
        })
        .await;
    send_tcp(source, b"after the storm\n").await;
    receiver.wait_for(MAX + 1).await;
    relay.assert_settled_and_balanced().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_source_blocked_on_a_full_queue_and_counts_what_it_held() {
    // A peer that is never there, and a small blocking queue: the source soon waits.
    let (_held, nobody) = refusing_addr();
    let relay = TestRelay::start(
        &relay_config(
            &tcp_source(""),
            &tcp_sink(
                nobody,
                "queue = { type = \"memory\", max_events = 10, when_full = \"block\" }\nbatch = { max_events = 5 }",
            ),
        )
        .replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"2s\""),
    )
    .await;
    let mut producer = TcpStream::connect(relay.addr("in")).await.expect("connect");
    for i in 0..100 {
        producer
            .write_all(format!("line {i}\n").as_bytes())
            .await
            .expect("write");
    }
    relay
        .wait_for("the source to block", |s| {
            component(s, "in")["in_flight"] == 1
        })
        .await;
    let ledger = relay.relay.ledger.clone();
    let started = std::time::Instant::now();
    let report = relay.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(!report.drained);
    let stats = ledger.stats();
    let source = stats
        .components
        .iter()
        .find(|c| c.name == "in")
        .expect("source");
    assert!(source.balanced, "{source:?}");
    assert_eq!(source.in_flight, 0);
    assert!(
        source.dropped.get("shutting_down").is_some_and(|n| *n >= 1),
        "{source:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_connection_without_a_drop() {
    let (receiver, _) = LineReceiver::collecting().await;
    let relay = TestRelay::start(&relay_config(
        &tcp_source("idle_timeout = \"300ms\""),
        &tcp_sink(receiver.addr, ""),
    ))
    .await;
    let mut quiet = TcpStream::connect(relay.addr("in")).await.expect("connect");
    quiet.write_all(b"hello\n").await.expect("write");
    receiver.wait_for(1).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), quiet.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the relay closes a connection idle past idle_timeout"
    );
    let stats = relay.assert_settled_and_balanced().await;
    let source = component(&stats, "in");
    assert_eq!(source["dropped_total"], 0, "{source:#}");
    assert_eq!(source["connections"]["open"], 0);
    relay.shutdown().await;
}

#[test]
fn socket_config_mistakes_name_the_key() {
    let cases = [
        (
            "[sources.in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nframing = \"octets\"",
            "sources.in.framing",
        ),
        (
            "[sources.in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"\nmax_frame_bytes = 0",
            "sources.in.max_frame_bytes",
        ),
        (
            "[sources.in]\ntype = \"unix\"\npath = \"/tmp/x.sock\"\nmode = \"0999\"",
            "sources.in.mode",
        ),
        (
            "[sources.in]\ntype = \"udp\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 5",
            "sources.in.max_connections",
        ),
    ];
    let sink = "[sinks.out]\ntype = \"blackhole\"\ninputs = [\"in\"]";
    for (source, key) in cases {
        let text = format!("{source}\n{sink}\n");
        let error =
            sluice::config::Config::parse(std::path::Path::new("t.toml"), &text, [], &|_| None)
                .expect_err(key)
                .to_string();
        assert!(error.contains(key), "{key}: {error}");
    }
    let source = "[sources.in]\ntype = \"tcp\"\nlisten = \"127.0.0.1:0\"";
    let sinks = [
        (
            "type = \"tcp\"\naddress = \"localhost\"",
            "sinks.out.address",
            "host:port",
        ),
        (
            "type = \"tcp\"\naddress = \"127.0.0.1:9\"\nconnections = 0",
            "sinks.out.connections",
            "1 to 64",
        ),
        (
            "type = \"udp\"\naddress = \"127.0.0.1:9\"\nmax_datagram_bytes = 70000",
            "sinks.out.max_datagram_bytes",
            "65507",
        ),
        (
            "type = \"file\"\npath = \"/var/log/{route}.log\"",
            "sinks.out.path",
            "reserved",
        ),
        (
            "type = \"file\"\npath = \"/var/log/{name}.log\"",
            "sinks.out.path",
            "unknown placeholder",
        ),
    ];
    for (body, key, says) in sinks {
        let text = format!("{source}\n[sinks.out]\ninputs = [\"in\"]\n{body}\n");
        let error =
            sluice::config::Config::parse(std::path::Path::new("t.toml"), &text, [], &|_| None)
                .expect_err(key)
                .to_string();
        assert!(
            error.contains(key) && error.contains(says),
            "{key}: {error}"
        );
    }
}
