//! The harness measured against things whose answer is known: an in-process relay that loses or
//! duplicates on purpose, receivers fed garbage, a relay that rejects its config, and the
//! no-relay baseline. Everything runs on 127.0.0.1 and finishes in seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sluice_bench::receivers::{HttpReceiver, Mode, TcpReceiver};
use sluice_bench::scenario::{self, Target};
use sluice_bench::tracker::{SharedTracker, Tracker};
use sluice_bench::{BenchArgs, payload};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(extra: &[&str]) -> BenchArgs {
    let argv = ["sluice-bench"].iter().chain(extra);
    Cli::parse_from(argv).bench
}

/// A TCP line relay in this process: line `i` (counted over all connections) is forwarded
/// `copies(i)` times.
async fn lossy_tcp_relay(upstream: SocketAddr, copies: fn(u64) -> usize) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(out) = TcpStream::connect(upstream).await else {
                    return;
                };
                let mut out = BufWriter::new(out);
                let mut lines = BufReader::new(inbound);
                let mut line = Vec::new();
                while lines.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                    for _ in 0..copies(counter.fetch_add(1, Ordering::Relaxed)) {
                        if out.write_all(&line).await.is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
                let _ = out.flush().await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_dropping_every_1000th_event_is_reported_exactly() -> Result<()> {
    let plan = sluice_bench::plan(&args(&["--scenario", "s1", "--events", "100000"]))?;
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        scenario::run_external(&plan, |up| {
            lossy_tcp_relay(up, |i| usize::from(i % 1000 != 999))
        }),
    )
    .await??;
    assert_eq!(r.sent, 100_000);
    assert_eq!(r.lost, 100, "{r:#?}");
    assert_eq!(r.delivered, 99_900);
    assert_eq!((r.duplicates, r.garbage), (0, 0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_duplicating_every_700th_event_is_reported_exactly() -> Result<()> {
    let plan = sluice_bench::plan(&args(&["--scenario", "s1", "--events", "40000"]))?;
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        scenario::run_external(&plan, |up| {
            lossy_tcp_relay(up, |i| if i % 700 == 0 { 2 } else { 1 })
        }),
    )
    .await??;
    // i = 0, 700, …, 39900: 58 lines sent twice.
    assert_eq!(
        (r.lost, r.duplicates, r.delivered),
        (0, 58, 40_000),
        "{r:#?}"
    );
    Ok(())
}

async fn post(
    client: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Vec<u8>,
    gzip: bool,
) -> Result<u16> {
    let mut req = hyper::Request::post("/ingest").header("host", "bench");
    if gzip {
        req = req.header("content-encoding", "gzip");
    }
    client.ready().await?;
    let resp = client
        .send_request(req.body(Full::new(Bytes::from(body)))?)
        .await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    let (client, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(client)
}

fn event(seq: u64) -> Vec<u8> {
    let mut v = Vec::new();
    let ev = payload::Event {
        stream: 0,
        seq,
        ts_ns: payload::now_ns(),
    };
    payload::encode(&mut v, ev, 256, true);
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

#[tokio::test]
async fn http_receiver_counts_garbage_and_bad_gzip_and_keeps_serving() -> Result<()> {
    let tracker = Arc::new(SharedTracker::new(Tracker::new(100, payload::now_ns())));
    let rx = HttpReceiver::start(tracker.clone(), None).await?;
    let mut c = connect(rx.addr()).await?;
    assert_eq!(
        post(&mut c, b"garbage\n{\"not\":\"ours\"}\n".to_vec(), false).await?,
        200
    );
    let good = gzip(&[event(0), event(1)].concat());
    assert_eq!(
        post(&mut c, good[..good.len() - 9].to_vec(), true).await?,
        400
    );
    assert_eq!(
        post(&mut c, b"\x1f\x8b not gzip at all".to_vec(), true).await?,
        400
    );
    assert_eq!(post(&mut c, b"[{\"stream\":0".to_vec(), false).await?, 400);
    // Same connection, still serving: a good gzip body and a JSON array.
    assert_eq!(post(&mut c, good, true).await?, 200);
    let arr = format!("[{}]", String::from_utf8_lossy(event(2).trim_ascii_end()));
    assert_eq!(post(&mut c, arr.into_bytes(), false).await?, 200);
    let s = tracker.with(|t| t.summary(&[3]));
    assert_eq!(
        (s.unique, s.missing, s.garbage, s.bad_bodies),
        (3, 0, 2, 3),
        "{s:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tcp_receiver_counts_garbage_and_keeps_reading() -> Result<()> {
    let tracker = Arc::new(SharedTracker::new(Tracker::new(100, payload::now_ns())));
    let rx = TcpReceiver::start(tracker.clone()).await?;
    let mut s = TcpStream::connect(rx.addr()).await?;
    s.write_all(b"junk\n\x00\xff\xfe{{{\n").await?;
    s.write_all(&event(0)).await?;
    s.write_all(&event(1)[..100]).await?; // split line…
    s.write_all(&event(1)[100..]).await?; // …completed by the next write
    s.write_all(&event(2)[..50]).await?; // truncated at close
    s.shutdown().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tracker.with(|t| t.summary(&[]).garbage) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = tracker.with(|t| t.summary(&[3]));
    assert_eq!((s.unique, s.missing, s.garbage), (2, 1, 3), "{s:?}");
    Ok(())
}

#[tokio::test]
async fn http_receiver_goes_down_and_comes_back_on_the_same_port() -> Result<()> {
    let tracker = Arc::new(SharedTracker::new(Tracker::new(100, payload::now_ns())));
    let rx = HttpReceiver::start(tracker.clone(), None).await?;
    let ctl = rx.control();
    ctl.set_mode(Mode::Unavailable);
    let mut c = connect(rx.addr()).await?;
    assert_eq!(post(&mut c, event(0), false).await?, 503);
    ctl.set_mode(Mode::Down);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(rx.addr()).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        post(&mut c, event(1), false).await.is_err(),
        "open connection dropped"
    );
    ctl.set_mode(Mode::Up);
    let mut c = loop {
        match connect(rx.addr()).await {
            Ok(c) => break c,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => return Err(e),
        }
    };
    assert_eq!(post(&mut c, event(2), false).await?, 200);
    assert_eq!(tracker.unique(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_runs_end_to_end_over_tcp_and_http() -> Result<()> {
    for scen in ["s1", "s3"] {
        let a = args(&[
            "--scenario",
            scen,
            "--events",
            "20000",
            "--no-sluice",
            "--baseline",
        ]);
        let plan = sluice_bench::plan(&a)?;
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            scenario::run_once(&plan, Target::Baseline, None, 1, false),
        )
        .await??;
        assert_eq!(
            (r.sent, r.delivered, r.lost, r.duplicates),
            (20_000, 20_000, 0, 0)
        );
        assert!(r.events_per_sec > 0.0 && r.latency_p99_us > 0.0, "{r:#?}");
        if scen == "s3" {
            assert!(r.producer_p99_us.is_some_and(|p| p > 0.0));
        }
    }
    // The whole entry point, with JSON and a plot.
    let dir = tempfile::tempdir()?;
    let svg = dir.path().join("b.svg");
    let svg_arg = svg.to_string_lossy().into_owned();
    let a = args(&[
        "--scenario",
        "s1",
        "--events",
        "20000",
        "--no-sluice",
        "--baseline",
        "--runs",
        "2",
        "--json",
        "--plot",
        &svg_arg,
    ]);
    tokio::time::timeout(
        Duration::from_secs(30),
        sluice_bench::run(a, "/nonexistent".into()),
    )
    .await??;
    assert!(std::fs::read_to_string(&svg)?.starts_with("<svg"));
    Ok(())
}

#[tokio::test]
async fn relay_that_rejects_its_config_fails_fast_with_its_message() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let fake = dir.path().join("sluice");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'error: sources.in.type: unknown source type \"tcp\"' >&2\nexit 2\n",
    )?;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
    let plan = sluice_bench::plan(&args(&["--scenario", "s1", "--events", "1000"]))?;
    let started = std::time::Instant::now();
    let err = scenario::run_once(&plan, Target::Sluice, Some(&fake), 1, false)
        .await
        .expect_err("the relay refused its config");
    let msg = format!("{err:#}");
    assert!(msg.contains("unknown source type"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_and_udp_senders_deliver_numbered_streams() -> Result<()> {
    use sluice_bench::senders::{self, LoadPlan, Transport};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("in.sock");
    let unix = tokio::net::UnixListener::bind(&path)?;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let udp_addr = udp.local_addr()?;
    let tracker = Arc::new(SharedTracker::new(Tracker::new(1000, payload::now_ns())));
    let t = tracker.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = unix.accept().await {
            let t = t.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut s = s;
                if tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)
                    .await
                    .is_ok()
                {
                    t.with(|t| t.record_lines(&buf, payload::now_ns()));
                }
            });
        }
    });
    let t = tracker.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = udp.recv(&mut buf).await {
            // Datagrams carry stream + 10 so they do not collide with the Unix streams.
            if let Some(mut ev) = payload::parse(&buf[..n]) {
                ev.stream += 10;
                t.with(|t| t.record(ev, payload::now_ns()));
            }
        }
    });
    let mut plan = LoadPlan {
        transport: Transport::Unix(path),
        connections: 2,
        events_per_conn: 1000,
        duration: None,
        size: 128,
        rate: 0,
        window: None,
    };
    let unix_report = senders::run(&plan).await?;
    plan.transport = Transport::Udp(udp_addr);
    plan.events_per_conn = 300;
    plan.rate = 20_000;
    let udp_report = senders::run(&plan).await?;
    assert_eq!(unix_report.sent_per_stream, vec![1000, 1000]);
    assert_eq!(udp_report.sent_per_stream, vec![300, 300]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tracker.unique() < 2600 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sent = vec![0; 12];
    sent[..2].copy_from_slice(&[1000, 1000]);
    sent[10..].copy_from_slice(&[300, 300]);
    let s = tracker.with(|t| t.summary(&sent));
    assert_eq!(
        (s.unique, s.missing, s.duplicates, s.garbage),
        (2600, 0, 0, 0),
        "{s:?}"
    );
    Ok(())
}

/// An HTTP relay in this process: answers 202 at once, forwards bodies upstream in order in
/// batches, retrying every 50 ms until the upstream answers 2xx.
async fn buffering_http_relay(upstream: SocketAddr) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let tx = tx.clone();
                async move {
                    let body = BodyExt::collect(req.into_body()).await?.to_bytes();
                    let _ = tx.send(body);
                    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = hyper::StatusCode::ACCEPTED;
                    Ok::<_, hyper::Error>(resp)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = first.to_vec();
            while batch.len() < 64 * 1024 {
                let Ok(more) = rx.try_recv() else { break };
                batch.push(b'\n');
                batch.extend_from_slice(&more);
            }
            loop {
                let ok = match connect(upstream).await {
                    Ok(mut c) => matches!(post(&mut c, batch.clone(), false).await, Ok(200)),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_through_a_buffering_relay_loses_nothing_and_measures_the_drain() -> Result<()> {
    let plan = sluice_bench::plan(&args(&[
        "--scenario",
        "s4",
        "--outage-after",
        "500ms",
        "--outage",
        "1s",
        "--duration",
        "2s",
        "--rate",
        "2000",
        "--connections",
        "4",
    ]))?;
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        scenario::run_external(&plan, buffering_http_relay),
    )
    .await??;
    assert!(r.sent >= 3_000, "{r:#?}");
    assert_eq!((r.lost, r.rejected, r.send_errors), (0, 0, 0), "{r:#?}");
    assert_eq!(r.delivered, r.sent);
    let drain = r.drain_secs.expect("an outage ran");
    assert!(drain < 2.0, "{r:#?}");
    assert!(
        r.producer_outage_p99_us.is_some_and(|p| p < 100_000.0),
        "{r:#?}"
    );
    // Events sent during the outage waited for it to end.
    assert!(r.latency_max_us > 500_000.0, "{r:#?}");
    Ok(())
}
