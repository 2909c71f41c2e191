//! The receiving side's ledger: which events arrived, how often, in what order, how late.
//!
//! Per stream it keeps a bitset of the sequence numbers seen, so that at the end it can say,
//! exactly, how many events were unique, duplicated, reordered (arrived after a higher sequence
//! number of the same stream) and — given how many the sender sent per stream — missing.
//! Anything that does not parse as a benchmark event, or names a sequence number beyond what the
//! run can have sent, is garbage: counted, never fatal. End-to-end latency (receive time minus
//! the event's send timestamp) goes into an HDR histogram; unique arrivals are also bucketed over
//! time for the throughput plot.
//!
//! [`Tracker`] is plain single-threaded state; [`SharedTracker`] wraps it for the receivers'
//! connection tasks, which take the lock once per read buffer or request body, not per event.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::payload::{self, Event};

/// Streams beyond this id are garbage (senders number their connections from 0).
const MAX_STREAMS: u32 = 65_536;
/// Width of one throughput-over-time bucket.
pub const BUCKET_NS: u64 = 100_000_000;
/// Highest latency the histogram tracks exactly (one hour); larger values are clamped.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// The latency histogram used everywhere: nanoseconds, 1 ns to one hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants within hdrhistogram's documented range, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid bounds")
}

#[derive(Default, Debug)]
struct StreamState {
    seen: Vec<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    highest: Option<u64>,
}

/// What one stream and the whole run look like at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackerSummary {
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub missing: u64,
    pub garbage: u64,
    pub bad_bodies: u64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub latency_max_us: f64,
    /// Nanoseconds since the epoch of the last new unique event, if any arrived.
    pub last_unique_ns: Option<u64>,
    /// When the last unique event sent before the cutoff arrived (see [`Tracker::set_cutoff`]).
    pub backlog_drained_ns: Option<u64>,
}

/// Per-stream sequence bitsets, counters and the latency histogram.
#[derive(Debug)]
pub struct Tracker {
    streams: Vec<StreamState>,
    seq_limit: u64,
    garbage: u64,
    bad_bodies: u64,
    latency: Histogram<u64>,
    origin_ns: u64,
    timeline: Vec<u64>,
    unique: u64,
    last_unique_ns: Option<u64>,
    cutoff_ns: u64,
    backlog_drained_ns: Option<u64>,
}

impl Tracker {
    /// `seq_limit` is one more than the highest sequence number any stream may carry (the
    /// number of events sent per stream when known); `origin_ns` is time zero of the timeline.
    pub fn new(seq_limit: u64, origin_ns: u64) -> Self {
        Tracker {
            streams: Vec::new(),
            seq_limit,
            garbage: 0,
            bad_bodies: 0,
            latency: latency_histogram(),
            origin_ns,
            timeline: Vec::new(),
            unique: 0,
            last_unique_ns: None,
            cutoff_ns: u64::MAX,
            backlog_drained_ns: None,
        }
    }

    /// From now on, only events sent before `ns` count towards
    /// [`TrackerSummary::backlog_drained_ns`]: after an outage ends, that is when the backlog
    /// built up during it had fully arrived.
    pub fn set_cutoff(&mut self, ns: u64) {
        self.cutoff_ns = ns;
    }

    /// Records one received event at `recv_ns`.
    pub fn record(&mut self, ev: Event, recv_ns: u64) {
        if ev.stream >= MAX_STREAMS || ev.seq >= self.seq_limit {
            self.garbage += 1;
            return;
        }
        let idx = ev.stream as usize;
        if self.streams.len() <= idx {
            self.streams.resize_with(idx + 1, StreamState::default);
        }
        let st = &mut self.streams[idx];
        let (word, bit) = ((ev.seq / 64) as usize, ev.seq % 64);
        if st.seen.len() <= word {
            st.seen.resize(word + 1, 0);
        }
        if st.seen[word] & (1 << bit) != 0 {
            st.duplicates += 1;
            return;
        }
        st.seen[word] |= 1 << bit;
        st.unique += 1;
        match st.highest {
            Some(h) if ev.seq < h => st.reordered += 1,
            _ => st.highest = Some(ev.seq),
        }
        self.unique += 1;
        self.last_unique_ns = Some(recv_ns);
        if ev.ts_ns < self.cutoff_ns {
            self.backlog_drained_ns = Some(recv_ns);
        }
        self.latency
            .saturating_record(recv_ns.saturating_sub(ev.ts_ns).max(1));
        let bucket = (recv_ns.saturating_sub(self.origin_ns) / BUCKET_NS) as usize;
        if bucket < 100_000 {
            if self.timeline.len() <= bucket {
                self.timeline.resize(bucket + 1, 0);
            }
            self.timeline[bucket] += 1;
        }
    }

    /// Parses one line or JSON object and records it, or counts it as garbage.
    pub fn record_raw(&mut self, raw: &[u8], recv_ns: u64) {
        match payload::parse(raw) {
            Some(ev) => self.record(ev, recv_ns),
            None => self.garbage += 1,
        }
    }

    /// Records every line of `buf` (which must end at a line boundary, final newline excluded
    /// or not). A blank line is garbage too: no sender writes one, so a relay invented it.
    pub fn record_lines(&mut self, mut buf: &[u8], recv_ns: u64) {
        while !buf.is_empty() {
            let end = payload::find_newline(buf).unwrap_or(buf.len());
            self.record_raw(&buf[..end], recv_ns);
            buf = buf.get(end + 1..).unwrap_or_default();
        }
    }

    pub fn add_garbage(&mut self, n: u64) {
        self.garbage += n;
    }

    /// A whole request body could not be decoded (corrupt gzip, bad JSON array…).
    pub fn add_bad_body(&mut self) {
        self.bad_bodies += 1;
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Unique arrivals per [`BUCKET_NS`] since the origin.
    pub fn timeline(&self) -> &[u64] {
        &self.timeline
    }

    pub fn latency(&self) -> &Histogram<u64> {
        &self.latency
    }

    /// The final tally; `sent_per_stream[i]` is how many events stream `i` sent.
    pub fn summary(&self, sent_per_stream: &[u64]) -> TrackerSummary {
        let mut s = TrackerSummary {
            unique: self.unique,
            garbage: self.garbage,
            bad_bodies: self.bad_bodies,
            last_unique_ns: self.last_unique_ns,
            backlog_drained_ns: self.backlog_drained_ns,
            ..TrackerSummary::default()
        };
        for (i, &sent) in sent_per_stream.iter().enumerate() {
            let got = self.streams.get(i).map_or(0, |st| st.unique);
            s.missing += sent.saturating_sub(got);
        }
        for st in &self.streams {
            s.duplicates += st.duplicates;
            s.reordered += st.reordered;
        }
        if !self.latency.is_empty() {
            let us = |ns: u64| ns as f64 / 1000.0;
            s.latency_p50_us = us(self.latency.value_at_quantile(0.50));
            s.latency_p99_us = us(self.latency.value_at_quantile(0.99));
            s.latency_max_us = us(self.latency.max());
        }
        s
    }
}

/// A [`Tracker`] shared by receiver tasks, with a lock-free count of unique events so the
/// scenario can poll for completion without contending with them.
#[derive(Debug)]
pub struct SharedTracker {
    inner: Mutex<Tracker>,
    unique: AtomicU64,
}

impl SharedTracker {
    pub fn new(tracker: Tracker) -> Self {
        SharedTracker {
            inner: Mutex::new(tracker),
            unique: AtomicU64::new(0),
        }
    }

    /// Runs `f` under the lock and publishes the new unique count.
    pub fn with<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        // A panic while holding the lock would be a bug in the tracker itself; keep counting.
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut t);
        self.unique.store(t.unique(), Ordering::Release);
        r
    }

    pub fn unique(&self) -> u64 {
        self.unique.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(stream: u32, seq: u64) -> Event {
        Event {
            stream,
            seq,
            ts_ns: 1_000,
        }
    }

    #[test]
    fn detects_a_lost_event() {
        let mut t = Tracker::new(10, 0);
        for seq in (0..10).filter(|&s| s != 4) {
            t.record(ev(0, seq), 2_000);
        }
        let s = t.summary(&[10]);
        assert_eq!(
            (s.unique, s.missing, s.duplicates, s.reordered),
            (9, 1, 0, 0)
        );
    }

    #[test]
    fn detects_a_duplicate() {
        let mut t = Tracker::new(10, 0);
        for seq in [0, 1, 2, 2, 3] {
            t.record(ev(1, seq), 2_000);
        }
        let s = t.summary(&[0, 4]);
        assert_eq!(
            (s.unique, s.missing, s.duplicates, s.reordered),
            (4, 0, 1, 0)
        );
    }

    #[test]
    fn detects_a_reordered_stream_independently_of_other_streams() {
        let mut t = Tracker::new(10, 0);
        for (stream, seq) in [(0, 0), (1, 5), (0, 2), (0, 1), (1, 6), (0, 3)] {
            t.record(ev(stream, seq), 2_000);
        }
        let s = t.summary(&[4, 0]);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.missing, 0);
        assert_eq!(s.unique, 6);
    }

    #[test]
    fn garbage_and_out_of_range_are_counted_not_recorded() {
        let mut t = Tracker::new(10, 0);
        t.record_lines(b"not json\n\n{\"stream\":0,\"seq\":10,\"ts\":1}\n", 5);
        t.record(ev(MAX_STREAMS, 0), 5);
        let s = t.summary(&[]);
        assert_eq!((s.garbage, s.unique), (4, 0), "the blank line counts too");
    }

    #[test]
    fn latency_and_timeline_are_recorded() {
        let mut t = Tracker::new(100, 0);
        for seq in 0..100 {
            t.record(ev(0, seq), 1_000 + 1_000 * (seq + 1));
        }
        let s = t.summary(&[100]);
        assert!((s.latency_p50_us - 50.0).abs() < 1.0, "{s:?}");
        assert!((s.latency_max_us - 100.0).abs() < 1.0, "{s:?}");
        assert_eq!(t.timeline(), &[100]);
    }
}
