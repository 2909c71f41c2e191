//! The disk queue: a sink's queue on the durable segment log of `sluice-diskq`, in
//! `data_dir/queues/<sink>/`. The embedded default, and what makes "nothing you were told was
//! accepted is ever lost" true across crashes.
//!
//! - Each event is one entry ([`super::codec`]) with its own sequence number, which is how a
//!   finished batch is acknowledged, in any order. A source's whole read goes in as one record
//!   ([`DiskQueue::try_push_all`]): one lock and one checksum for the lot.
//! - The events of a batch are appended with themselves as the entries' memos, so while the
//!   record is in the log's in-memory tail the sink gets the same `Arc<Event>`s back instead of
//!   decoding them. A single event (an HTTP request) gets no memo: it may be large (headers),
//!   the tail is bounded by record bytes, not by what memos hold, and one decode is cheap next
//!   to a request.
//! - `when_full`: `block` waits for acknowledgements to free space until the producer's
//!   deadline; `drop_newest` refuses at once. (`drop_oldest` is refused at config load: an
//!   acknowledged promise on disk is never thrown away to make room.)
//! - Events whose producer is still waiting (for `durable`/`delivered` acks or a passthrough
//!   answer) are kept in memory beside their record, keyed by sequence, and handed to the sink
//!   as the same `Arc<Event>`, so the answer reaches the waiting caller even after its memo
//!   left the tail. Everything else past the tail is decoded from its record; memory does not
//!   grow with the backlog.
//! - Recovery (in `sluice-diskq`) replays every unacknowledged record on start. Those events
//!   are counted `received` by the sink when the queue opens, and records lost to corruption
//!   are counted `received` and `dropped{decode_error}`, so the ledger balances from the first
//!   moment of the new process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use sluice_diskq::{AppendError, MemoOr, Options, RecordBatch, RecoveryReport, Seq, SyncPolicy};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BatchLimits, Offer, PushError, WhenFull, codec};
use crate::event::Event;
use crate::ledger::disk_metrics::DiskFigures;
use crate::ledger::{ComponentLedger, DropReason};
use crate::log_throttle::Throttle;

pub struct DiskQueue {
    log: sluice_diskq::DiskQueue<Arc<Event>>,
    when_full: WhenFull,
    ledger: Arc<ComponentLedger>,
    /// Events someone waits on, by record sequence (see the module doc).
    /// Also the lock that orders a write failure's accounting against the reader.
    waiting: Mutex<Waiting>,
    /// Source names seen in records, shared so recovered events do not each hold a copy.
    names: Mutex<HashMap<Bytes, Arc<str>>>,
    errors: Throttle,
    /// Cancelled by `close`: the driver takes no more batches and abandons the ones in flight
    /// (unacknowledged, they are delivered again after the restart); the rest stays on disk.
    stop: CancellationToken,
}

/// Events someone waits on, and the records a write failure lost.
#[derive(Default)]
struct Waiting {
    events: HashMap<Seq, Arc<Event>>,
    lost: Option<std::ops::Range<Seq>>,
}

/// Settings of one disk queue.
pub struct DiskOptions {
    pub max_bytes: u64,
    pub max_record_bytes: u32,
    pub sync: SyncPolicy,
    /// `None`: the queue's default.
    pub sync_gather: Option<std::time::Duration>,
    pub preallocate: bool,
    pub direct_io: bool,
}

impl DiskQueue {
    /// Opens (and recovers) the queue in `dir`, accounting for what it found in `ledger`.
    pub fn open(
        dir: &Path,
        options: DiskOptions,
        when_full: WhenFull,
        ledger: Arc<ComponentLedger>,
    ) -> Result<Self, sluice_diskq::Error> {
        let opts = Options {
            max_bytes: options.max_bytes,
            max_record_bytes: options.max_record_bytes,
            sync: options.sync,
            sync_gather: options
                .sync_gather
                .unwrap_or(Options::default().sync_gather),
            segment_bytes: (options.max_bytes / 8).clamp(1 << 20, 64 << 20),
            preallocate: options.preallocate,
            direct_io: options.direct_io,
            ..Options::default()
        };
        let (log, report) = sluice_diskq::DiskQueue::<Arc<Event>>::open(dir, opts)?;
        account_recovery(&report, &ledger, dir);
        let probe = log.clone();
        let recovered = serde_json::json!({
            "replayed": report.replayed_records,
            "replayed_bytes": report.replayed_bytes,
            "corrupt_records": report.corrupt_records,
            "corrupt_bytes": report.corrupt_bytes,
            "truncated_bytes": report.truncated_bytes,
        });
        let figures = log.clone();
        let _ = ledger.disk_figures.set(Box::new(move || {
            let s = figures.stats();
            DiskFigures {
                fsyncs: s.fsyncs,
                events_synced: s.records_synced,
                bytes_on_disk: s.bytes_on_disk,
                sync_latency: figures.sync_latency(),
                ack_wait: figures.entry_wait(),
            }
        }));
        let _ = ledger.queue_detail.set(Box::new(move || {
            let s = probe.stats();
            let (per_sync, per_event) = (probe.sync_latency(), probe.entry_wait());
            let ms = |h: &sluice_diskq::LatencyHistogram, q: f64| {
                h.quantile(q).map(|d| d.as_secs_f64() * 1e3)
            };
            serde_json::json!({
                "type": "disk",
                "bytes_on_disk": s.bytes_on_disk,
                "segments": s.segments,
                "unacked_records": s.unacked_records,
                "fsyncs": s.fsyncs,
                "records_synced": s.records_synced,
                "records_per_fsync": if s.fsyncs == 0 { 0.0 } else { s.records_synced as f64 / s.fsyncs as f64 },
                // Per sync, the wait of the oldest event it covered (bucket upper bounds, ±25 %).
                "sync_wait_ms": { "p50": ms(&per_sync, 0.5), "p99": ms(&per_sync, 0.99), "max": ms(&per_sync, 1.0) },
                // Per event, its wait from its append to becoming durable: the durable ack's.
                "ack_wait_ms": { "p50": ms(&per_event, 0.5), "p99": ms(&per_event, 0.99), "max": ms(&per_event, 1.0) },
                "checkpoints": s.checkpoints,
                // Events read back from segment files: the sink fell behind the in-memory tail.
                "file_read_records": s.file_read_entries,
                // Written data held in memory for the sink until it reads it.
                "tail_bytes": s.tail_bytes,
                "preallocated_segments": s.preallocated_segments,
                "recycled_segments": s.recycled_segments,
                "spare_bytes": s.spare_bytes,
                "corrupt_records": s.corrupt_records,
                "write_failed": s.write_failed,
                "recovered_at_start": recovered,
            })
        }));
        Ok(Self {
            log,
            when_full,
            ledger,
            waiting: Mutex::new(Waiting::default()),
            names: Mutex::new(HashMap::new()),
            errors: Throttle::default(),
            stop: CancellationToken::new(),
        })
    }

    /// Appends one event; waits for room until `deadline` under `block`. Returns the record's
    /// sequence, to wait on with [`DiskQueue::wait_durable`].
    pub async fn push(&self, event: Arc<Event>, deadline: Instant) -> Result<Seq, PushError> {
        let offer = Offer::new(&self.ledger);
        let result = self.offer(event, deadline).await;
        offer.settle();
        result
    }

    async fn offer(&self, event: Arc<Event>, deadline: Instant) -> Result<Seq, PushError> {
        loop {
            // Held across the append for an event someone waits on: the sink may read its
            // record as soon as it is synced, and must then find the event here, not decode a
            // copy whose answer reaches nobody (the caller would wait out its timeout).
            // Released (end of block) before any wait, and before a failure's accounting takes
            // it again.
            let (appended, record_len) = {
                let mut waiting = event.has_waiters().then(|| self.waiting.lock());
                let outcome = append_encoded(&self.log, &event);
                if let (Ok(seq), Some(waiting)) = (&outcome.0, waiting.as_mut()) {
                    waiting.events.insert(*seq, event.clone());
                }
                outcome
            };
            match appended {
                Ok(seq) => {
                    self.ledger.queued_events.inc();
                    self.ledger.queued_bytes.inc_by(record_len as i64);
                    return Ok(seq);
                }
                Err(AppendError::Full { .. }) if self.when_full == WhenFull::Block => {
                    if timeout_at(deadline, self.log.wait_space()).await.is_err() {
                        return Err(self.refuse(DropReason::QueueFull, PushError::Full));
                    }
                }
                Err(AppendError::Full { .. }) => {
                    return Err(self.refuse(DropReason::QueueFull, PushError::Full));
                }
                Err(AppendError::TooLarge { .. }) => {
                    return Err(self.refuse(DropReason::FrameTooLarge, PushError::TooLarge));
                }
                Err(AppendError::Closed) => {
                    return Err(self.refuse(DropReason::ShuttingDown, PushError::Closed));
                }
                Err(error) => {
                    if let Some(suppressed) = self.errors.check() {
                        warn!(sink = %self.ledger.name, %error, suppressed, "Cannot write to the disk queue; refusing events.");
                    }
                    self.account_write_failure();
                    return Err(self.refuse(DropReason::IoError, PushError::Io));
                }
            }
        }
    }

    /// Waits, at most `max`, while the sink reading this queue is about to fall behind its
    /// in-memory tail (never on a stalled one).
    pub async fn pace_to_reader(&self, max: std::time::Duration) {
        self.log.pace_to_reader(max).await;
    }

    /// Appends all of `events` as one record if they fit now; takes none and counts nothing
    /// otherwise (see [`super::SinkQueue::try_push_all`]).
    pub fn try_push_all(&self, events: &[Arc<Event>]) -> bool {
        if events.iter().any(|e| e.has_waiters()) {
            // They must be kept beside their records: the one-by-one path does that.
            return false;
        }
        BATCH.with(|cell| {
            let mut batch = cell.borrow_mut();
            batch.clear();
            let mut entry_bytes = 0;
            let mut clock = codec::EpochNanos::default();
            for event in events {
                batch.push_with(|buf| {
                    let start = buf.len();
                    codec::encode_with_clock(event.as_ref(), buf, &mut clock);
                    entry_bytes += buf.len() - start;
                });
            }
            // The batch's buffer itself becomes the record (it gets a recycled one back).
            let appended = self.log.append_batch_taking(&mut batch, events.to_vec());
            if batch.payload_bytes() > 1 << 20 {
                *batch = RecordBatch::new();
            }
            if appended.is_err() {
                return false;
            }
            let count = events.len() as u64;
            self.ledger.received.inc_by(count);
            self.ledger.queued_events.inc_by(count as i64);
            self.ledger.queued_bytes.inc_by(entry_bytes as i64);
            true
        })
    }

    fn refuse(&self, reason: DropReason, error: PushError) -> PushError {
        self.ledger.dropped(reason, 1);
        error
    }

    /// Resolves once the record is durable per the sync policy; an error means it never will be.
    pub async fn wait_durable(&self, seq: Seq) -> Result<(), PushError> {
        self.log.wait_durable(seq).await.map_err(|_| {
            self.account_write_failure();
            PushError::Io
        })
    }

    /// After the log's writer failed, the records appended but neither synced nor handed out
    /// yet will never be: they are counted `io_error` once, and skipped if they are read.
    fn account_write_failure(&self) {
        let mut waiting = self.waiting.lock();
        if waiting.lost.is_some() {
            return;
        }
        let stats = self.log.stats();
        let lost = stats.durable_seq.max(stats.read_seq)..stats.next_seq;
        let count = lost.end.saturating_sub(lost.start);
        waiting.events.retain(|seq, _| !lost.contains(seq));
        waiting.lost = Some(lost);
        self.ledger.queued_events.dec_by(count as i64);
        self.ledger.dropped(DropReason::IoError, count);
    }

    /// The last record appended so far, if any.
    pub fn sync_mark(&self) -> Option<Seq> {
        self.log.next_seq().checked_sub(1)
    }

    /// The next batch (events with their record sequences); empty once closed and drained.
    pub async fn next_batch(&self, limits: BatchLimits) -> (Vec<Arc<Event>>, Vec<Seq>) {
        let max_events = limits.max_events.max(1);
        if self.stop.is_cancelled() {
            return (Vec::new(), Vec::new());
        }
        let mut records = match self.log.read_memos(max_events, limits.max_bytes).await {
            Ok(records) => records,
            Err(error) => {
                warn!(sink = %self.ledger.name, %error, "Cannot read the disk queue.");
                return (Vec::new(), Vec::new());
            }
        };
        // A partial batch lingers up to `timeout` for more, taking each sync's entries as they
        // become readable and returning as soon as it is full: a fixed sleep here held every
        // partial batch for the whole timeout, and under load let the sink fall behind the
        // queue's in-memory tail (then it reads back from the files).
        if !records.is_empty() && records.len() < max_events && !limits.timeout.is_zero() {
            let deadline = Instant::now() + limits.timeout;
            let mut bytes: usize = records.iter().map(MemoOr::len).sum();
            while records.len() < max_events && bytes < limits.max_bytes {
                let more = self
                    .log
                    .read_memos(max_events - records.len(), limits.max_bytes - bytes);
                match timeout_at(deadline, more).await {
                    Ok(Ok(more)) if !more.is_empty() => {
                        bytes += more.iter().map(MemoOr::len).sum::<usize>();
                        records.extend(more);
                    }
                    // The deadline, a closed queue (empty), or an error the next call reports.
                    _ => break,
                }
            }
        }
        let mut events = Vec::with_capacity(records.len());
        let mut seqs = Vec::with_capacity(records.len());
        let mut bytes = 0i64;
        // Consecutive records nearly always name the same source: one comparison instead of a
        // lock and a hash lookup per decoded event.
        // (A name that was not UTF-8 never matches its lossy copy: it takes the long way.)
        let recent: RefCell<Option<Arc<str>>> = RefCell::new(None);
        let source_name = |bytes: &[u8]| {
            if let Some(name) = &*recent.borrow()
                && name.as_bytes() == bytes
            {
                return name.clone();
            }
            let name = self.name(bytes);
            *recent.borrow_mut() = Some(name.clone());
            name
        };
        let mut waiting = self.waiting.lock();
        for record in records {
            let seq = record.seq();
            bytes += record.len() as i64;
            if waiting
                .lost
                .as_ref()
                .is_some_and(|lost| lost.contains(&seq))
            {
                // Already counted io_error when the writer failed.
                self.log.ack(seq);
                continue;
            }
            let waited = if waiting.events.is_empty() {
                None
            } else {
                waiting.events.remove(&seq)
            };
            let decoded = match (waited, record) {
                (Some(event), _) | (None, MemoOr::Memo { memo: event, .. }) => Ok(event),
                (None, MemoOr::Bytes { bytes, .. }) => {
                    codec::decode(bytes, &source_name).map(Arc::new)
                }
            };
            let event = match decoded {
                Ok(event) => event,
                Err(error) => {
                    if let Some(suppressed) = self.errors.check() {
                        warn!(sink = %self.ledger.name, seq, %error, suppressed, "Skipping a record that is not an event.");
                    }
                    self.ledger.queued_events.dec();
                    self.ledger.dropped(DropReason::DecodeError, 1);
                    self.log.ack(seq);
                    continue;
                }
            };
            events.push(event);
            seqs.push(seq);
        }
        self.ledger.queued_bytes.dec_by(bytes);
        self.ledger.queued_events.dec_by(events.len() as i64);
        self.ledger.in_flight.inc_by(events.len() as i64);
        (events, seqs)
    }

    fn name(&self, bytes: &[u8]) -> Arc<str> {
        let mut names = self.names.lock();
        if let Some(name) = names.get(bytes) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(String::from_utf8_lossy(bytes).as_ref());
        if names.len() < 1024 {
            names.insert(Bytes::copy_from_slice(bytes), name.clone());
        }
        name
    }

    /// Acknowledges a finished batch: its records may be deleted.
    pub fn finish(&self, seqs: &[Seq]) {
        self.log.ack_many(seqs);
    }

    /// Stops appends, syncs what is buffered and writes the checkpoint.
    pub async fn close(&self) {
        self.stop.cancel();
        if let Err(error) = self.log.close().await {
            warn!(sink = %self.ledger.name, %error, "Closing the disk queue failed; unsynced events will be replayed or lost.");
        }
    }

    pub fn len(&self) -> usize {
        self.log.stats().unacked_records as usize
    }

    /// Resolves once the queue is closing: deliveries in flight may stop where they are.
    pub async fn closing(&self) {
        self.stop.cancelled().await;
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> sluice_diskq::Stats {
        self.log.stats()
    }
}

thread_local! {
    /// Where events are encoded before `append` copies them into the log: one buffer per
    /// thread instead of an allocation per event.
    static RECORD: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
    /// The same for a whole read's worth of events.
    static BATCH: std::cell::RefCell<RecordBatch> = std::cell::RefCell::new(RecordBatch::new());
}

/// Encodes `event` and appends it; returns the outcome and the record's length.
fn append_encoded(
    log: &sluice_diskq::DiskQueue<Arc<Event>>,
    event: &Event,
) -> (Result<Seq, AppendError>, usize) {
    RECORD.with(|cell| {
        let mut record = cell.borrow_mut();
        record.clear();
        codec::encode_into(event, &mut *record);
        let outcome = (log.append(&record), record.len());
        if record.capacity() > 1 << 20 {
            // One large event must not keep a large buffer per thread alive.
            *record = bytes::BytesMut::new();
        }
        outcome
    })
}

fn account_recovery(report: &RecoveryReport, ledger: &ComponentLedger, dir: &Path) {
    let recovered = report.replayed_records;
    ledger.received.inc_by(recovered + report.corrupt_records);
    ledger.queued_events.inc_by(recovered as i64);
    // Reading them takes their bytes off again, as for events appended in this process.
    ledger.queued_bytes.inc_by(report.replayed_bytes as i64);
    ledger.dropped(DropReason::DecodeError, report.corrupt_records);
    if report.corrupt_records > 0 || report.corrupt_bytes > 0 || report.truncated_bytes > 0 {
        warn!(
            sink = %ledger.name,
            dir = %dir.display(),
            corrupt_records = report.corrupt_records,
            corrupt_bytes = report.corrupt_bytes,
            truncated_bytes = report.truncated_bytes,
            replayed = recovered,
            "Disk queue recovered with damage: skipped what could not be read, delivering the rest."
        );
    } else if recovered > 0 {
        info!(sink = %ledger.name, dir = %dir.display(), replayed = recovered, replayed_bytes = report.replayed_bytes, "Disk queue recovered; redelivering what was not acknowledged.");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::event::{Attributes, EventId};
    use crate::ledger::{ComponentKind, Ledger};

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            EventId { node: 1, seq },
            Arc::from("test"),
            Bytes::from(vec![b'x'; 10]),
            Attributes::None,
        ))
    }

    /// A disk queue in `dir` (64 MiB, synced always) and the ledger it counts in.
    fn open(dir: &std::path::Path) -> (Ledger, Arc<DiskQueue>) {
        let ledger = Ledger::new();
        let options = DiskOptions {
            max_bytes: 64 << 20,
            max_record_bytes: 1 << 20,
            sync: SyncPolicy::Always,
            sync_gather: None,
            preallocate: false,
            direct_io: true,
        };
        let component = ledger.component("q", ComponentKind::Sink, "test");
        let q = DiskQueue::open(dir, options, WhenFull::Block, component).expect("open");
        (ledger, Arc::new(q))
    }

    #[tokio::test]
    async fn a_partial_batch_returns_as_soon_as_it_fills_not_at_its_timeout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ledger, q) = open(dir.path());
        let soon = || Instant::now() + Duration::from_secs(5);
        q.push(event(0), soon()).await.expect("room");
        let producer = {
            let q = q.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                for seq in 1..4 {
                    q.push(event(seq), soon()).await.expect("room");
                }
            })
        };
        let linger = BatchLimits {
            max_events: 4,
            max_bytes: usize::MAX,
            timeout: Duration::from_secs(30),
        };
        let started = std::time::Instant::now();
        let (events, seqs) = q.next_batch(linger).await;
        assert_eq!(
            events.iter().map(|e| e.id.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3],
            "the late events joined the batch"
        );
        assert_eq!(seqs.len(), 4);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "returned when full, not after the 30 s linger: {:?}",
            started.elapsed()
        );
        producer.await.expect("producer");
        let stats = ledger.stats().components.remove(0);
        assert_eq!(stats.received, 4);
        assert!(stats.balanced, "{stats:?}");
    }
    #[test]
    fn every_event_someone_waits_on_reaches_the_sink_as_itself() {
        // The sink may read a record the moment it is synced. An event whose caller waits for
        // its answer must then be found beside it, not decoded afresh: a copy has no way back
        // to the caller. Pushes race the sink on two workers, with a third thread keeping a
        // CPU busy so that pushing tasks get preempted.
        const EVENTS: u64 = 3000;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let (_ledger, q) = open(dir.path());
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hog = {
            let busy = busy.clone();
            std::thread::spawn(move || {
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let copies = runtime.block_on(async {
            let sink = {
                let q = q.clone();
                tokio::spawn(async move {
                    let (mut seen, mut copies) = (0, 0);
                    while seen < EVENTS {
                        let (events, seqs) = q.next_batch(BatchLimits::SINGLE).await;
                        seen += events.len() as u64;
                        copies += events.iter().filter(|e| !e.wants_reply()).count();
                        q.finish(&seqs);
                    }
                    copies
                })
            };
            let pushers: Vec<_> = (0..4)
                .map(|p| {
                    let q = q.clone();
                    tokio::spawn(async move {
                        let mut answers = Vec::new();
                        for i in 0..EVENTS / 4 {
                            let e = event(p * EVENTS + i);
                            answers.push(e.want_reply());
                            let deadline = Instant::now() + Duration::from_secs(5);
                            q.push(e, deadline).await.expect("room");
                        }
                        answers
                    })
                })
                .collect();
            for p in pushers {
                p.await.expect("pusher");
            }
            tokio::time::timeout(Duration::from_secs(30), sink)
                .await
                .expect("the sink got every event")
                .expect("sink")
        });
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        hog.join().expect("hog");
        assert_eq!(copies, 0, "events read back without their waiting caller");
    }
}
