//! What the stream sources (`tcp`, `unix`) share: the accept loop and the per-connection read
//! loop. `tcp.rs` and `unix.rs` only bind their listener.
//!
//! Accept loop: over `max_connections`, a connection is accepted and closed at once and counted
//! (`connections_rejected`); accept errors (usually out of file descriptors) back off briefly.
//! On shutdown the listener closes; open connections stop reading and get `grace` to finish
//! the event they are pushing.
//!
//! Read loop, one task per connection: read into a `BytesMut`, cut frames with the
//! [`Decoder`], and hand the read's events to the [`Fanout`] together (one record in a disk
//! queue), or one by one to a queue that cannot take them all at once. The loop reads nothing
//! while a push waits (`when_full = "block"`): the socket's receive buffer fills and TCP flow
//! control slows the producer — nothing is dropped. With `ack = durable` it also reads nothing
//! while its last four reads wait for their sync, and after a read of at least
//! `PACE_MIN_READ` it waits (at most `PACE_MAX`) for a disk queue's sink that is still reading
//! but about to fall out of the queue's in-memory tail, never for a stalled one. Both waits are
//! counted by cause (`WaitReason`). Timeouts: `idle_timeout` closes a connection that sent
//! nothing for that long (off by default: a producer may stay connected for days, quiet at night);
//! `partial_frame_timeout` closes one that sent part of a frame and stalled, counting the part
//! as `read_timeout`.
//!
//! Ledger, per frame: `received`, then `delivered` (every queue took it) or `dropped{reason}`;
//! `in_flight` while a push waits for room. Pushes that succeed at once are counted per read,
//! not per event, to keep shared counters off the hot path. A partial frame cut off by
//! shutdown is counted `shutting_down`; one cut off by a reset connection `decode_error`.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::framing::{Decoder, Frame, Framing, strip_prefix};
use super::{AckPoint, Fanout, SourceContext, Took};
use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};
use crate::event::{Attributes, Event, IdGenerator};
use crate::ledger::{ComponentLedger, DropReason, WaitReason};
use crate::log_throttle::Throttle;

/// Bytes asked of the socket per read (the most a read holds, and so a disk queue's record).
/// In S2, 128 KiB carried more than 64 KiB: medians of 14 and 10 rounds of
/// `sluice bench --scenario s2 --against-memory`, 76.5 % of the memory queue's events/s against
/// 69.5 % (fewer reads, appends, records and wake-ups per event), at a p99 sync wait under full
/// load of 10–11 ms against 7–9 ms; the memory path was no faster.
const READ_CHUNK: usize = 128 * 1024;
/// With `ack = durable`, how many reads of one connection may wait for their sync while it
/// reads on. One read behind let a connection append only once per sync. In S2, two measured
/// 8–15 % more events/s than one at no more CPU per event, and (once spares were no longer
/// zero-filled for large syncs) three another 7 % (medians of five alternating runs: 2.03M
/// against 1.89M); four was no better than three then. Once the disk queue's tail held only
/// unread writes (16 MiB), on a VM with a disk about 30 % slower: eight measured 12 % more
/// than three with an 8 MiB tail (medians of six alternating runs: 1.58M against 1.41M), but
/// doubled the p99 sync wait at full load (5 to 8–10 ms, each sync covering more); five and
/// six carried about as much as eight (1.38–1.61M, against 1.31–1.39M for three and four) at
/// a p99 sync wait of 6–7 ms. Eight with an 8 MiB tail made the sink fall behind it and read
/// 18 % of events back from the files. Once the disk queue's writer ran ahead of the process
/// (nice −10: syncs twice as frequent) and with 128 KiB reads, four with an 8 MiB tail beat six
/// with 16 MiB in each of five alternating rounds (medians 2.41M against 2.22M events/s), at a
/// p99 sync wait of 3.6–5.1 ms against 6.1 and a peak RSS of 31–33 MiB against 45–47; three
/// with 8 MiB was between.
const DURABLE_WINDOW: usize = 4;
/// The longest one read waits for a disk queue's reader to catch up (see `pace_to_readers`).
/// Long enough for a sink that only lacked CPU to take a batch or two; short enough that the
/// one wait a stalled sink costs goes unnoticed.
const PACE_MAX: Duration = Duration::from_millis(5);
/// Only a read at least this large waits for the sink: a connection that outruns the sink
/// reads full buffers, and a trickle of small reads (thousands of quiet producers) would only
/// pile waiters up without slowing anyone who matters.
const PACE_MIN_READ: usize = 16 * 1024;
/// Below this much spare room the buffer grows before the next read.
const MIN_READ: usize = 4 * 1024;
/// A push waits this long at most; sockets rely on TCP flow control, not on a deadline.
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The keys `tcp` and `unix` sources share, besides their address.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub framing: Framing,
    pub max_frame_bytes: ByteSize,
    pub strip_prefix: Option<String>,
    pub max_connections: usize,
    pub idle_timeout: Option<HumanDuration>,
    pub partial_frame_timeout: HumanDuration,
    pub ack: Option<AckPoint>,
}

pub mod defaults {
    use crate::config::{ByteSize, HumanDuration};
    pub fn max_frame_bytes() -> ByteSize {
        ByteSize::mib(1)
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn partial_frame_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
}

impl StreamOptions {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.ack == Some(AckPoint::Delivered) {
            errors.push(locator.error_with_hint(
                &format!("{prefix}.ack"),
                "a stream has no answer to hold back until delivery",
                "use \"durable\" (reads wait for the disk queue's sync) or \"received\"",
            ));
        }
        if self.max_frame_bytes.0 == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_frame_bytes"),
                "expected at least 1 byte, found 0",
            ));
        }
        if self.max_connections == 0 {
            errors.push(locator.error(
                &format!("{prefix}.max_connections"),
                "expected at least 1, found 0",
            ));
        }
        if self.idle_timeout.is_some_and(|t| t.0.is_zero()) {
            errors.push(locator.error_with_hint(
                &format!("{prefix}.idle_timeout"),
                "expected a duration above zero",
                "remove the key to keep quiet connections open",
            ));
        }
        if self.partial_frame_timeout.0.is_zero() {
            errors.push(locator.error(
                &format!("{prefix}.partial_frame_timeout"),
                "expected a duration above zero",
            ));
        }
        if self.strip_prefix.as_deref() == Some("") {
            errors.push(locator.error_with_hint(
                &format!("{prefix}.strip_prefix"),
                "expected a prefix, found an empty string",
                "remove the key to keep lines whole",
            ));
        }
        errors
    }
}

/// Where a connection comes from.
pub struct Peer {
    /// Shown at `/stats`.
    pub label: String,
    /// Becomes the event's `Attributes::Peer`.
    pub addr: Option<SocketAddr>,
}

/// A bound listener of some stream kind.
pub trait StreamListener: Send + Sync + 'static {
    type Stream: AsyncRead + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Peer)>> + Send;
}

/// One stream source's shared state.
struct StreamSource {
    name: Arc<str>,
    fanout: Fanout,
    ledger: Arc<ComponentLedger>,
    ids: Arc<IdGenerator>,
    framing: Framing,
    max_frame_bytes: usize,
    prefix: Bytes,
    idle_timeout: Option<Duration>,
    partial_frame_timeout: Duration,
    shutdown: CancellationToken,
    grace: Duration,
    warn_throttle: Throttle,
    /// Wait for the disk queues' sync after each read.
    durable: bool,
}

/// Serves `listener` until shutdown, then waits (up to the grace period) for connections.
pub async fn serve<L: StreamListener>(listener: L, options: StreamOptions, context: SourceContext) {
    context.ledger.connections.track();
    let max_connections = options.max_connections;
    let any_durable = context.fanout.any_durable();
    let source = Arc::new(StreamSource {
        name: context.name,
        fanout: context.fanout,
        ledger: context.ledger,
        ids: context.ids,
        framing: options.framing,
        max_frame_bytes: options.max_frame_bytes.as_usize(),
        prefix: Bytes::from(options.strip_prefix.unwrap_or_default()),
        idle_timeout: options.idle_timeout.map(|t| t.0),
        partial_frame_timeout: options.partial_frame_timeout.0,
        shutdown: context.shutdown,
        grace: context.grace,
        warn_throttle: Throttle::default(),
        durable: options.ack.unwrap_or(if any_durable {
            AckPoint::Durable
        } else {
            AckPoint::Received
        }) == AckPoint::Durable,
    });
    let slots = Arc::new(Semaphore::new(max_connections));
    let accept_errors = Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = source.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if let Some(suppressed) = accept_errors.check() {
                        warn!(source = %source.name, %error, suppressed, "Cannot accept a connection.");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            source.ledger.connections_rejected.inc();
            drop(stream);
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            source.read_connection(stream, peer).await;
            drop(slot);
        });
    }
    drop(listener);
    // Connections see the same shutdown signal; every slot back means every one has ended.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(
        source.grace + Duration::from_secs(1),
        slots.acquire_many(all),
    )
    .await
    .is_err()
    {
        debug!(source = %source.name, "Connections still open after the shutdown grace period.");
    }
}

/// Why a read loop ended.
enum End {
    Eof,
    Shutdown,
    Stalled,
    Idle,
    Error(io::Error),
}

impl StreamSource {
    async fn read_connection<S: AsyncRead + Unpin>(&self, mut stream: S, peer: Peer) {
        let connection = self.ledger.connections.open(peer.label);
        let mut decoder = Decoder::new(self.framing, self.max_frame_bytes);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // ack = durable: the sync marks of the reads not yet known to be synced, oldest first.
        let mut unsynced = VecDeque::with_capacity(DURABLE_WINDOW + 1);
        // The events of one read, handed to the queues together.
        let mut of_read = Vec::new();
        let end = loop {
            if buf.capacity() - buf.len() < MIN_READ {
                buf.reserve(READ_CHUNK);
            }
            let mid_frame = decoder.is_mid_frame(&buf);
            let limit = if mid_frame {
                Some(self.partial_frame_timeout)
            } else {
                self.idle_timeout
            };
            let read = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break End::Shutdown,
                read = read_within(&mut stream, &mut buf, limit) => read,
            };
            let n = match read {
                None if mid_frame => break End::Stalled,
                None => break End::Idle,
                Some(Ok(0)) => break End::Eof,
                Some(Ok(n)) => n,
                Some(Err(error)) => break End::Error(error),
            };
            let mut tally = Tally::now();
            while let Some(frame) = decoder.decode(&mut buf) {
                match frame {
                    Frame::Event(payload) => of_read.push(self.event(payload, peer.addr, &tally)),
                    Frame::Dropped(reason) => self.drop_frame(reason),
                }
            }
            let events = of_read.len() as u64;
            let abandoned = self.push_read(&mut of_read, &mut tally).await;
            connection.record(n as u64, events);
            // A sink that falls out of its disk queue's in-memory tail reads back from the
            // files and decodes every event again, which slows it further: while it is about
            // to, and still reading, a connection that reads full buffers lets it catch up
            // first (bounded, and never for a stalled sink, so a destination that is down does
            // not slow the producer).
            if n >= PACE_MIN_READ {
                let pacing = std::time::Instant::now();
                self.fanout.pace_to_readers(PACE_MAX).await;
                self.waited(WaitReason::Sink, pacing);
            }
            if abandoned {
                break End::Shutdown;
            }
            // ack = durable: before the next read, all but the last DURABLE_WINDOW reads are
            // synced, so TCP flow control carries the disk's pace back to the producer. Waiting
            // reads behind lets appending overlap syncing; one sync serves every connection
            // waiting at that moment. Marks are watermarks: waiting on one covers the older.
            if self.durable && events > 0 {
                unsynced.push_back(self.fanout.sync_marks());
                let mut due = None;
                while unsynced.len() > DURABLE_WINDOW {
                    due = unsynced.pop_front();
                }
                if let Some(previous) = due {
                    let syncing = std::time::Instant::now();
                    let synced = self.fanout.wait_marks(&previous).await;
                    self.waited(WaitReason::Sync, syncing);
                    if let Err(reason) = synced {
                        self.warn(
                            &connection.peer,
                            "The disk queue cannot sync; closing the connection.",
                        );
                        break End::Error(io::Error::other(reason.as_str()));
                    }
                }
            }
        };
        match end {
            End::Eof => match decoder.finish(&mut buf) {
                Some(Frame::Event(payload)) => {
                    let mut tally = Tally::now();
                    let event = self.event(payload, peer.addr, &tally);
                    self.emit(event, Took::NONE, &mut tally).await;
                    self.flush(&mut tally);
                    connection.record(0, 1);
                }
                Some(Frame::Dropped(reason)) => self.drop_frame(reason),
                None => {}
            },
            End::Shutdown => self.drop_partial(&mut decoder, &mut buf, DropReason::ShuttingDown),
            End::Stalled => {
                self.drop_partial(&mut decoder, &mut buf, DropReason::ReadTimeout);
                self.warn(
                    &connection.peer,
                    "Closing a connection that stalled mid-frame.",
                );
            }
            End::Idle => {
                debug!(source = %self.name, peer = %connection.peer, "Closing an idle connection.")
            }
            End::Error(error) => {
                self.drop_partial(&mut decoder, &mut buf, DropReason::DecodeError);
                debug!(source = %self.name, peer = %connection.peer, %error, "Connection ended with an error.");
            }
        }
    }

    /// Counts a partial frame that will never be finished, if there is one.
    fn drop_partial(&self, decoder: &mut Decoder, buf: &mut BytesMut, reason: DropReason) {
        // `finish` reports what the stream held; anything it would have kept is cut short here.
        if decoder.finish(buf).is_some() {
            self.drop_frame(reason);
        }
    }

    /// Counts the wait since `since`, if there was one worth counting (most calls return at
    /// once, and a shared counter is no place for them).
    fn waited(&self, reason: WaitReason, since: std::time::Instant) {
        let waited = since.elapsed();
        if waited >= Duration::from_micros(10) {
            self.ledger.waited(reason, waited);
        }
    }

    fn drop_frame(&self, reason: DropReason) {
        self.ledger.received.inc();
        self.ledger.dropped(reason, 1);
    }

    fn warn(&self, peer: &str, message: &'static str) {
        if let Some(suppressed) = self.warn_throttle.check() {
            warn!(source = %self.name, %peer, suppressed, "{message}");
        }
    }

    fn flush(&self, tally: &mut Tally) {
        if tally.delivered > 0 {
            self.ledger.received.inc_by(tally.delivered);
            self.ledger.delivered.inc_by(tally.delivered);
            tally.delivered = 0;
        }
    }

    fn event(&self, payload: Bytes, peer: Option<SocketAddr>, tally: &Tally) -> Arc<Event> {
        let payload = strip_prefix(payload, &self.prefix);
        let attributes = peer.map_or(Attributes::None, Attributes::Peer);
        Arc::new(Event::new_at(
            self.ids.next(),
            self.name.clone(),
            payload,
            attributes,
            tally.received_at,
        ))
    }

    /// Hands the events of one read to the queues, emptying `read`: all at once where they fit
    /// now, otherwise one by one. Returns whether a push had to be abandoned for shutdown (the
    /// events after it are then counted `shutting_down`, not silently lost).
    async fn push_read(&self, read: &mut Vec<Arc<Event>>, tally: &mut Tally) -> bool {
        if read.is_empty() {
            return false;
        }
        let took = match self.fanout.try_push_all(read) {
            Ok(()) => {
                tally.delivered += read.len() as u64;
                read.clear();
                self.flush(tally);
                return false;
            }
            Err(took) => took,
        };
        let mut abandoned = false;
        for event in read.drain(..) {
            if abandoned {
                self.drop_frame(DropReason::ShuttingDown);
            } else {
                abandoned = !self.emit(event, took, tally).await;
            }
        }
        self.flush(tally);
        abandoned
    }

    /// Pushes one event to the queues not in `took`; `false` when the push had to be abandoned
    /// because the relay is shutting down and the queue made no room within the grace period.
    async fn emit(&self, event: Arc<Event>, took: Took, tally: &mut Tally) -> bool {
        let mut push = pin!(self.fanout.push_except(event, tally.deadline, took));
        // Most pushes finish at once; only one that waits is counted as in flight.
        let first = poll_fn(|cx| Poll::Ready(push.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            match result {
                Ok(()) => tally.delivered += 1,
                Err(reason) => self.drop_frame(reason),
            }
            return true;
        }
        self.flush(tally);
        self.ledger.received.inc();
        self.ledger.in_flight.inc();
        let result = tokio::select! {
            result = push.as_mut() => Some(result),
            _ = self.shutdown.cancelled() => None,
        };
        // Shutting down: the queue may still make room within the grace period.
        let result = match result {
            Some(result) => Some(result),
            None => tokio::time::timeout(self.grace, push).await.ok(),
        };
        let pushed = result.is_some();
        match result {
            Some(Ok(())) => {
                self.ledger.delivered.inc();
            }
            Some(Err(reason)) => self.ledger.dropped(reason, 1),
            None => self.ledger.dropped(DropReason::ShuttingDown, 1),
        }
        self.ledger.in_flight.dec();
        pushed
    }
}

/// Events pushed at once, counted in the ledger once per read; and the clock, read once per
/// read rather than once per event (it showed up in profiles).
struct Tally {
    delivered: u64,
    received_at: SystemTime,
    deadline: Instant,
}

impl Tally {
    fn now() -> Self {
        Self {
            delivered: 0,
            received_at: SystemTime::now(),
            deadline: Instant::now() + FAR,
        }
    }
}

/// One read, bounded by `limit` when there is one; `None` when the limit passed.
async fn read_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: Option<Duration>,
) -> Option<io::Result<usize>> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, stream.read_buf(buf)).await.ok(),
        None => Some(stream.read_buf(buf).await),
    }
}
