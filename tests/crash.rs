//! SIGKILL under load (DESIGN.md scenario S7) with the real binary: an HTTP source that answers
//! once an event is fsynced to the disk queue (`ack = "durable"`, `sync = "always"`), its
//! upstream down, killed at random moments while producers send; a restart with the upstream
//! up must deliver every request that was answered 2xx. Duplicates are allowed (at-least-once)
//! and counted. And the event id a producer was given is the one the upstream sees after a
//! restart, so receivers can deduplicate.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::process::{Sluice, component, count, dropped, http_relay_config};
use common::{Behaviour, Upstream, client, wait_until};
use parking_lot::Mutex;

/// Requests planned per kill point.
const REQUESTS: usize = 1200;
/// Concurrent producers, each sending one request at a time.
const PRODUCERS: usize = 16;

const DURABLE_SOURCE: &str = r#"ack = "durable""#;
const SYNCED_DISK_QUEUE: &str = r#"queue = { type = "disk", sync = "always" }"#;
const ALWAYS: &str = r#""always""#;

/// The seed of the kill points: `SLUICE_TEST_SEED` to repeat a run, else a random one.
fn seed() -> u64 {
    std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// What one kill point showed.
struct Round {
    kill_at: usize,
    /// Requests answered 2xx before the kill.
    acked: usize,
    /// Requests whose answer the kill cut off (they may or may not have been stored).
    cut_off: usize,
    /// Records the restarted relay found on disk.
    replayed: u64,
    /// Requests that reached the upstream before the kill.
    delivered_before: usize,
    /// Requests that reached the upstream after the restart (duplicates included).
    delivered_after: usize,
    /// Requests that arrived more than once (at-least-once delivery allows it).
    duplicates: usize,
    /// Cut-off requests that were stored all the same and delivered.
    cut_off_delivered: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_acknowledged_before_a_sigkill_is_delivered_after_the_restart() {
    let seed = seed();
    println!("kill points seeded with {seed} (SLUICE_TEST_SEED={seed} repeats them)");
    let mut rng = fastrand::Rng::with_seed(seed);
    // Upstream down during the load (S7), fsync before every ack; then once with a slow
    // upstream up, so that deliveries are in flight at the kill and at-least-once shows as
    // duplicates; then the other sync policies, whose durable acks wait for a periodic sync or
    // only for write(2) (enough to survive the death of the process, which is all SIGKILL does).
    let plan = [
        (0.1, DuringLoad::Down, ALWAYS),
        (0.5, DuringLoad::Down, ALWAYS),
        (0.9, DuringLoad::Down, ALWAYS),
        (0.5, DuringLoad::Slow, ALWAYS),
        (0.25, DuringLoad::Down, r#"{ every = "50ms" }"#),
        (0.5, DuringLoad::Down, r#""never""#),
    ];
    for (round, (share, upstream, sync)) in plan.into_iter().enumerate() {
        let jitter = rng.f64() * 0.1 - 0.05;
        let kill_at = ((share + jitter) * REQUESTS as f64) as usize;
        let r = crash_and_restart(round, kill_at, upstream, sync).await;
        println!(
            "kill point {round} (upstream {upstream:?} during the load, sync = {sync}): SIGKILL at request {} of \
             {REQUESTS}: {} acknowledged, {} cut off ({} of those stored and delivered all the \
             same), {} delivered before the kill; after the restart {} replayed, {} delivered, \
             {} duplicates",
            r.kill_at,
            r.acked,
            r.cut_off,
            r.cut_off_delivered,
            r.delivered_before,
            r.replayed,
            r.delivered_after,
            r.duplicates
        );
        assert!(r.acked > 0, "the kill came after some acknowledgements");
    }
}

/// The upstream while the producers send, before the kill.
#[derive(Clone, Copy, Debug)]
enum DuringLoad {
    Down,
    /// Up, answering after 20 ms.
    Slow,
}

/// Sends up to [`REQUESTS`] requests from [`PRODUCERS`] producers; the producer that draws
/// request number `kill_at` SIGKILLs the relay instead. Then restarts it with the upstream up
/// and checks that every acknowledged request arrives.
async fn crash_and_restart(
    round: usize,
    kill_at: usize,
    during_load: DuringLoad,
    sync: &str,
) -> Round {
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = Upstream::start().await;
    upstream.set(Behaviour {
        delay: Duration::from_millis(20),
        ..Behaviour::default()
    });
    let address = upstream.addr;
    let upstream = match during_load {
        DuringLoad::Down => {
            upstream.stop();
            None
        }
        DuringLoad::Slow => Some(upstream),
    };
    let config = http_relay_config(
        &format!("http://{address}"),
        DURABLE_SOURCE,
        &format!(r#"queue = {{ type = "disk", sync = {sync} }}"#),
    );
    let mut relay = Sluice::start(dir.path(), &config).await;

    let next = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    // Body → the event id its producer was told; and the requests cut off by the kill.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let cut_off: Arc<Mutex<Vec<String>>> = Arc::default();
    let pid = relay.pid();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (next, killed, acked, cut_off) =
                (next.clone(), killed.clone(), acked.clone(), cut_off.clone());
            let (http, api) = (client(), relay.api.clone());
            tokio::spawn(async move {
                while !killed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= REQUESTS {
                        return;
                    }
                    if i == kill_at {
                        // SAFETY: kill(2) on our own child, not yet reaped; no memory effects.
                        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
                        assert_eq!(rc, 0, "SIGKILL");
                        killed.store(true, Ordering::SeqCst);
                        return;
                    }
                    let body = format!("round {round} request {i}");
                    match http
                        .post(format!("{api}/crash/{i}"))
                        .body(body.clone())
                        .send()
                        .await
                    {
                        Ok(response) => {
                            assert!(
                                response.status().is_success(),
                                "nothing is refused before the kill: {body} got {}",
                                response.status()
                            );
                            let id = response
                                .headers()
                                .get("x-sluice-event-id")
                                .and_then(|v| v.to_str().ok())
                                .expect("an accepted request is told its event id")
                                .to_string();
                            acked.lock().insert(body, id);
                        }
                        Err(_) => cut_off.lock().push(body),
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.expect("producer");
    }
    relay.wait_exit().await;
    let acked = std::mem::take(&mut *acked.lock());
    let cut_off = std::mem::take(&mut *cut_off.lock());
    assert!(
        killed.load(Ordering::SeqCst),
        "the relay was killed during the load"
    );

    let upstream = match upstream {
        Some(upstream) => upstream,
        None => Upstream::start_on(address).await,
    };
    upstream.set(Behaviour::default());
    // Let requests the killed relay had sent finish being recorded (they take 20 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let delivered_before = upstream.count();
    let mut relay = Sluice::start(dir.path(), &config).await;
    let arrived_bodies = || -> HashSet<String> { upstream.bodies().into_iter().collect() };
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        let arrived = arrived_bodies();
        let missing: Vec<&String> = acked.keys().filter(|b| !arrived.contains(*b)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "round {round} (kill at {kill_at}): {} of {} acknowledged requests never arrived, \
             e.g. {:?}; log:\n{}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(5)],
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = relay.wait_idle_and_balanced().await;
    let recovered = relay.log_fields("Disk queue recovered");
    let replayed = recovered
        .first()
        .and_then(|f| f["replayed"].as_u64())
        .unwrap_or(0);
    let sink = component(&stats, "upstream");
    let received = upstream.received.lock().clone();
    assert_eq!(
        count(sink, "received"),
        replayed,
        "the restarted sink counts what it recovered as received: {stats:#}"
    );
    assert_eq!(
        dropped(sink, "decode_error"),
        0,
        "a SIGKILL leaves no corrupt record: {stats:#}\n{}",
        relay.log_text()
    );
    assert_eq!(
        count(sink, "delivered") as usize,
        received.len() - delivered_before,
        "every delivery the restarted sink counts reached the upstream: {stats:#}"
    );
    assert!(replayed as usize >= acked.len(), "{stats:#}");

    let mut times: HashMap<String, usize> = HashMap::new();
    for request in &received {
        let body = String::from_utf8_lossy(&request.body).into_owned();
        if let Some(id) = acked.get(&body) {
            let seen = request
                .headers
                .get("x-sluice-event-id")
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                seen,
                Some(id.as_str()),
                "the replayed event keeps the id its producer was given ({body})"
            );
        }
        *times.entry(body).or_default() += 1;
    }
    let duplicates = times.values().filter(|n| **n > 1).count();
    let cut_off_delivered = cut_off.iter().filter(|b| times.contains_key(*b)).count();
    assert!(
        times
            .keys()
            .all(|b| acked.contains_key(b) || cut_off.contains(b)),
        "only requests that were sent arrive"
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
    Round {
        kill_at,
        acked: acked.len(),
        cut_off: cut_off.len(),
        replayed,
        delivered_before,
        delivered_after: received.len() - delivered_before,
        duplicates,
        cut_off_delivered,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_event_reaches_the_upstream_with_the_id_its_producer_was_given() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    let config = http_relay_config(&format!("http://{address}"), "", SYNCED_DISK_QUEUE);
    let http = client();
    const EVENTS: usize = 20;

    // Half of the events go through a clean stop, all of them through a SIGKILL.
    let mut given: HashMap<String, String> = HashMap::new();
    for stop in ["sigterm", "sigkill"] {
        let mut relay = Sluice::start(dir.path(), &config).await;
        for i in 0..EVENTS / 2 {
            let body = format!("{stop} {i}");
            let response = http
                .post(format!("{}/ids/{i}", relay.api))
                .body(body.clone())
                .send()
                .await
                .expect("request");
            assert_eq!(response.status(), http::StatusCode::ACCEPTED);
            let id = response
                .headers()
                .get("x-sluice-event-id")
                .and_then(|v| v.to_str().ok())
                .expect("event id header")
                .to_string();
            given.insert(body, id);
        }
        if stop == "sigterm" {
            assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
            assert_eq!(
                relay.last_log_fields()["kept_on_disk"],
                EVENTS / 2,
                "{}",
                relay.log_text()
            );
        } else {
            relay.kill().await;
        }
    }
    let distinct: HashSet<&String> = given.values().collect();
    assert_eq!(distinct.len(), EVENTS, "every event has its own id");

    let upstream = Upstream::start_on(address).await;
    let mut relay = Sluice::start(dir.path(), &config).await;
    upstream.wait_for(EVENTS).await;
    let stats = relay.wait_idle_and_balanced().await;
    let seen: HashMap<String, String> = upstream.bodies_with_ids().into_iter().collect();
    assert_eq!(
        seen, given,
        "after the restart the upstream sees each event under the id its producer was given"
    );
    assert_eq!(count(component(&stats, "upstream"), "delivered"), 20);

    // Events taken after the restart get ids of their own, so a receiver that deduplicates by
    // id does not mistake them for the replayed ones.
    let response = http
        .post(format!("{}/ids/new", relay.api))
        .body("after the restart")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), http::StatusCode::ACCEPTED);
    let new_id = response
        .headers()
        .get("x-sluice-event-id")
        .and_then(|v| v.to_str().ok())
        .expect("event id header")
        .to_string();
    assert!(!distinct.contains(&new_id), "{new_id} was already given");
    wait_until("the new event upstream", || upstream.count() == EVENTS + 1).await;
    relay.wait_idle_and_balanced().await;
    assert_eq!(relay.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigkill_while_the_backlog_is_replayed_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = Upstream::start().await.stop();
    // 1 MiB segments, so the replay acknowledges whole segments and deletes them.
    let config = http_relay_config(
        &format!("http://{address}"),
        DURABLE_SOURCE,
        r#"queue = { type = "disk", sync = "always", max_bytes = "8MiB", max_event_bytes = "64KiB" }"#,
    );
    const EVENTS: usize = 800;
    let bodies: Vec<String> = (0..EVENTS)
        .map(|i| format!("{i:05} {}", "y".repeat(4096)))
        .collect();

    // Run 1: everything acknowledged while the upstream is down, then SIGKILL.
    let mut relay = Sluice::start(dir.path(), &config).await;
    let http = client();
    for (i, body) in bodies.iter().enumerate() {
        let response = http
            .post(format!("{}/twice/{i}", relay.api))
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), http::StatusCode::ACCEPTED);
    }
    relay.kill().await;

    // Run 2: the replay goes to a slow upstream and is killed halfway.
    let upstream = Upstream::start_on(address).await;
    upstream.set(Behaviour {
        delay: Duration::from_millis(2),
        ..Behaviour::default()
    });
    let mut relay = Sluice::start(dir.path(), &config).await;
    upstream.wait_for(EVENTS / 2).await;
    relay.kill().await;
    // Let requests the killed relay had sent finish being recorded.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let in_run_2: HashSet<String> = upstream
        .received
        .lock()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();

    // Run 3: the rest, and no more than the killed replay may repeat.
    upstream.set(Behaviour::default());
    let mut relay = Sluice::start(dir.path(), &config).await;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let times = loop {
        let mut times: HashMap<String, usize> = HashMap::new();
        for r in upstream.received.lock().iter() {
            *times
                .entry(String::from_utf8_lossy(&r.body).into_owned())
                .or_default() += 1;
        }
        if bodies.iter().all(|b| times.contains_key(b)) {
            break times;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {EVENTS} acknowledged events never arrived; log:\n{}",
            bodies.iter().filter(|b| !times.contains_key(*b)).count(),
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stats = relay.wait_idle_and_balanced().await;
    let replayed = relay
        .log_fields("Disk queue recovered")
        .first()
        .and_then(|f| f["replayed"].as_u64())
        .unwrap_or(0);
    let duplicates = times.values().filter(|n| **n > 1).count();
    println!(
        "second kill: {} delivered before it, {replayed} replayed after it, {duplicates} \
         duplicates",
        in_run_2.len()
    );
    assert_eq!(times.len(), EVENTS, "only what was sent arrives");
    for (body, n) in &times {
        assert!(
            *n == 1 || *n == 2 && in_run_2.contains(body),
            "only an event the killed replay delivered may arrive again, once: {} arrived {n} \
             times",
            &body[..5]
        );
    }
    assert_eq!(
        count(component(&stats, "upstream"), "delivered"),
        replayed,
        "{stats:#}"
    );
    assert_eq!(
        replayed as usize,
        EVENTS - in_run_2.len() + duplicates,
        "the third run replays what the second did not deliver, plus what it delivered but \
         had not yet checkpointed"
    );
    assert_eq!(relay.terminate().await, Some(0), "{}", relay.log_text());
}
