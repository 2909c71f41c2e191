//! Model-based property test: random appends (one by one, and in batches written as one
//! multi-entry record, with or without memos), reads (small enough to stop inside a record),
//! out-of-order acks (one by one and in bulk), clean reopens and crashes, checked against a
//! simple in-memory model after every step. Segments are made from zero-filled spares, so a
//! crash damages the unsynced end of the active segment in one of three ways: cut at a random
//! byte (a growing file), zeroed from a random byte (writes over preallocated zeros that never
//! reached the disk), or zeroed over a random range with the bytes after it kept (a later page
//! of a write reached the disk and an earlier one did not).
//!
//! Promises checked:
//! - nothing reported durable is lost across a crash; only entries never reported durable may
//!   go missing, and only where a crash left a hole;
//! - nothing stale comes back: every entry handed out carries the payload appended under its
//!   seq in the current lifetime of that seq;
//! - nothing acknowledged and checkpointed by a clean close comes back;
//! - entries come out in order, with their payloads, and seqs are contiguous;
//! - a memo, when one comes back, is the one attached to that entry in this process lifetime;
//! - a batch is all or nothing: `TooLarge` exactly when its payload passes the limit;
//! - after a clean close, the low-water mark and next seq survive exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;

use crate::{AppendError, DiskQueue, Options, RecordBatch, Seq, SyncPolicy};

#[derive(Debug, Clone)]
enum Op {
    Append {
        n: u8,
        size: u16,
    },
    AppendBatch {
        n: u8,
        size: u16,
        memos: bool,
        take: bool,
    },
    WaitDurable,
    Read {
        max: u8,
    },
    Ack {
        pick: Index,
        count: u8,
    },
    CleanReopen,
    Crash {
        damage: Option<(u8, Index, Index)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..12, 0u16..400).prop_map(|(n, size)| Op::Append { n, size }),
        4 => (1u8..20, 0u16..400, any::<bool>(), any::<bool>())
            .prop_map(|(n, size, memos, take)| Op::AppendBatch { n, size, memos, take }),
        3 => Just(Op::WaitDurable),
        4 => (1u8..20).prop_map(|max| Op::Read { max }),
        4 => (any::<Index>(), 1u8..10).prop_map(|(pick, count)| Op::Ack { pick, count }),
        1 => Just(Op::CleanReopen),
        3 => proptest::option::of((0u8..3, any::<Index>(), any::<Index>()))
            .prop_map(|damage| Op::Crash { damage }),
    ]
}

fn policy() -> impl Strategy<Value = SyncPolicy> {
    prop_oneof![
        Just(SyncPolicy::Always),
        Just(SyncPolicy::Every(Duration::from_millis(3))),
        Just(SyncPolicy::Never),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// Every entry that may still be in the queue, by seq.
    records: BTreeMap<Seq, Vec<u8>>,
    /// Memos attached in this process lifetime, by seq.
    memos: BTreeMap<Seq, u64>,
    next_seq: Seq,
    /// Every seq below is durable (wait_durable said so, or a clean close synced it).
    durable_upto: Seq,
    /// Every seq below is acknowledged.
    low: Seq,
    /// Acknowledged above `low`.
    acked: BTreeSet<Seq>,
    /// A low-water mark certainly on disk (clean close, or read back after a reopen).
    persisted_low: Seq,
    read_next: Seq,
    handed: Vec<Seq>,
    epoch: u32,
    /// Seqs never reported durable that a crash with a hole may have lost (recovery then
    /// treats them as acknowledged).
    maybe_lost: BTreeSet<Seq>,
}

impl Model {
    fn ack(&mut self, seq: Seq) {
        self.acked.insert(seq);
        while self.acked.remove(&self.low) {
            self.low += 1;
        }
    }

    /// Takes the queue's low-water mark `queue_low` over if it is ahead because seqs in
    /// `maybe_lost` were lost (and so acknowledged by recovery); fails if it is ahead for any
    /// other reason.
    fn lost_up_to(&mut self, queue_low: Seq) -> Result<(), TestCaseError> {
        for s in self.low..queue_low {
            if self.acked.contains(&s) {
                continue;
            }
            prop_assert!(
                self.maybe_lost.contains(&s),
                "low-water mark {} passed {}, neither acked nor lost",
                queue_low,
                s
            );
            self.records.remove(&s);
            self.ack(s);
        }
        Ok(())
    }

    /// After any reopen, the queue starts reading at its low-water mark and forgets acks above.
    fn reopened(&mut self, low: Seq, next: Seq) {
        self.records.retain(|&s, _| s < next);
        self.maybe_lost.retain(|&s| s < next);
        self.memos.clear();
        self.next_seq = next;
        self.low = low;
        self.persisted_low = low;
        self.acked.clear();
        self.handed.clear();
        self.read_next = low;
        self.epoch += 1;
    }
}

/// `max_bytes` is either roomy or 16 KiB (four segments), so that `Full`, roll-over of a fully
/// acknowledged segment and deletion all happen between crashes. With `early` (reading before
/// durable), acknowledged records can be lost in a crash, which exercises a checkpoint ahead of
/// the data.
fn opts(sync: SyncPolicy, small: bool, early: bool) -> Options {
    Options {
        max_bytes: if small { 16 * 1024 } else { 1 << 30 },
        segment_bytes: 4096,
        max_record_bytes: 4096,
        sync,
        // Both: a gathering writer (the default) and one that syncs at once.
        sync_gather: if small {
            Duration::ZERO
        } else {
            Options::default().sync_gather
        },
        checkpoint_interval: Duration::from_millis(2),
        read_cache_bytes: 2048,
        read_before_durable: early,
        preallocate: true,
        // Both write paths: direct I/O applies to `SyncPolicy::Always` only.
        direct_io: !small,
    }
}

fn open(
    dir: &Path,
    sync: SyncPolicy,
    small: bool,
    early: bool,
) -> (DiskQueue<u64>, crate::RecoveryReport) {
    let (q, report) = DiskQueue::open(dir, opts(sync, small, early))
        .expect("reopen must never fail on crash damage");
    if !small {
        // Direct I/O: spares are recycled segments, whose old records crashes leave behind.
        q.only_recycled_spares();
    }
    (q, report)
}

async fn run(
    sync: SyncPolicy,
    small: bool,
    early: bool,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), sync, small, early);
    let mut m = Model::default();
    let mut batch = RecordBatch::new();
    for op in ops {
        match op {
            Op::Append { n, size } => {
                for _ in 0..n {
                    let mut payload = format!("{}:{}:", m.epoch, m.next_seq).into_bytes();
                    payload.resize(payload.len().max(size as usize), b'.');
                    let seq = match q.append(&payload) {
                        Ok(seq) => seq,
                        Err(AppendError::Full { .. }) if small => break,
                        Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                    };
                    prop_assert_eq!(seq, m.next_seq);
                    m.records.insert(seq, payload);
                    m.next_seq += 1;
                }
            }
            Op::AppendBatch {
                n,
                size,
                memos,
                take,
            } => {
                batch.clear();
                let mut payloads = Vec::new();
                for i in 0..u64::from(n) {
                    let mut payload = format!("{}:{}:b", m.epoch, m.next_seq + i).into_bytes();
                    payload.resize(payload.len().max(size as usize), b'~');
                    batch.push_with(|buf| buf.extend_from_slice(&payload));
                    payloads.push(payload);
                }
                let memo = |seq: Seq| u64::from(m.epoch) << 40 | seq;
                let memo_list: Vec<u64> = if memos {
                    (m.next_seq..m.next_seq + u64::from(n)).map(memo).collect()
                } else {
                    Vec::new()
                };
                let too_large = batch.payload_bytes() > 4096;
                let appended = if take {
                    q.append_batch_taking(&mut batch, memo_list)
                } else {
                    q.append_batch(&batch, memo_list)
                };
                match appended {
                    Ok(seqs) => {
                        prop_assert!(!too_large);
                        prop_assert_eq!(seqs.clone(), m.next_seq..m.next_seq + u64::from(n));
                        for (seq, payload) in seqs.zip(payloads) {
                            m.records.insert(seq, payload);
                            if memos {
                                m.memos.insert(seq, memo(seq));
                            }
                        }
                        m.next_seq += u64::from(n);
                    }
                    Err(AppendError::TooLarge { .. }) if too_large => {}
                    Err(AppendError::Full { .. }) if small => {}
                    Err(e) => return Err(TestCaseError::fail(format!("append_batch: {e}"))),
                }
                prop_assert_eq!(q.stats().next_seq, m.next_seq, "all or nothing");
            }
            Op::WaitDurable => {
                if m.next_seq > 0 {
                    let waited = tokio::time::timeout(
                        Duration::from_secs(10),
                        q.wait_durable(m.next_seq - 1),
                    )
                    .await;
                    prop_assert!(matches!(waited, Ok(Ok(()))), "wait_durable: {:?}", waited);
                    m.durable_upto = m.next_seq;
                }
            }
            Op::Read { max } => {
                if let Some(entries) = q.try_read_entries(max as usize, 1 << 20).unwrap() {
                    prop_assert!(!entries.is_empty() && entries.len() <= max as usize);
                    let durable = q.stats().durable_seq;
                    for crate::Entry { seq, bytes, memo } in entries {
                        if let Some(memo) = memo {
                            prop_assert_eq!(Some(&memo), m.memos.get(&seq), "memo of {}", seq);
                        }
                        prop_assert!(
                            early || seq < durable,
                            "seq {} handed out before durable",
                            seq
                        );
                        prop_assert!(
                            seq >= m.read_next,
                            "out of order: {} < {}",
                            seq,
                            m.read_next
                        );
                        for lost in m.read_next..seq {
                            prop_assert!(m.maybe_lost.contains(&lost), "gap at {}", lost);
                            m.records.remove(&lost);
                            m.ack(lost);
                        }
                        m.read_next = seq;
                        prop_assert_eq!(
                            Some(&bytes.to_vec()),
                            m.records.get(&seq),
                            "payload of {}",
                            seq
                        );
                        m.read_next += 1;
                        m.handed.push(seq);
                    }
                }
            }
            Op::Ack { pick, count } => {
                // Several acks go in one `ack_many`, in the (random) order picked.
                let mut seqs = Vec::new();
                for _ in 0..count {
                    if m.handed.is_empty() {
                        break;
                    }
                    let seq = m.handed.swap_remove(pick.index(m.handed.len()));
                    m.ack(seq);
                    seqs.push(seq);
                }
                match seqs[..] {
                    [seq] => q.ack(seq),
                    _ => q.ack_many(&seqs),
                }
                m.lost_up_to(q.stats().acked_low_water)?;
                prop_assert_eq!(q.stats().acked_low_water, m.low);
            }
            Op::CleanReopen => {
                q.close().await.unwrap();
                m.lost_up_to(q.stats().acked_low_water)?;
                prop_assert_eq!(q.stats().checkpointed_low_water, m.low);
                drop(q);
                let (nq, report) = open(dir.path(), sync, small, early);
                q = nq;
                m.lost_up_to(report.acked_low_water)?;
                prop_assert_eq!(report.acked_low_water, m.low);
                prop_assert_eq!(report.next_seq, m.next_seq);
                // Seqs lost in an earlier crash show up as a gap again, and only those.
                let may_lose = m.maybe_lost.range(m.low..).count() as u64;
                prop_assert!(report.corrupt_records <= may_lose);
                prop_assert_eq!(
                    report.replayed_records + report.corrupt_records,
                    m.next_seq - m.low
                );
                prop_assert_eq!(report.truncated_bytes, 0);
                m.durable_upto = m.next_seq;
                let (low, next) = (m.low, m.next_seq);
                m.reopened(low, next);
            }
            Op::Crash { damage } => {
                let info = q.crash();
                let mut hole = false;
                // The writer's segment may be gone already: once every record in it is
                // acknowledged it is deleted (or recycled) before the writer moves on.
                let active = info.active.as_ref().and_then(|path| {
                    let file = std::fs::OpenOptions::new().write(true).open(path).ok()?;
                    Some((file.metadata().map_or(0, |m| m.len()), file))
                });
                if let (Some((shape, a, b)), Some((len, file))) = (damage, active) {
                    let (lo, hi) = (info.durable_len, info.written_len.min(len));
                    match shape {
                        0 if len > lo => {
                            let at = lo + a.index((len - lo + 1) as usize) as u64;
                            file.set_len(at).unwrap();
                        }
                        1 | 2 if hi > lo => {
                            let at = lo + a.index((hi - lo) as usize) as u64;
                            let end = if shape == 1 {
                                hi
                            } else {
                                at + 1 + b.index((hi - at) as usize) as u64
                            };
                            let zeros = vec![0u8; (end - at) as usize];
                            std::os::unix::fs::FileExt::write_all_at(&file, &zeros, at).unwrap();
                            hole = end < hi;
                        }
                        _ => {}
                    }
                }
                if hole {
                    m.maybe_lost.extend(m.durable_upto..m.next_seq);
                }
                let (nq, report) = open(dir.path(), sync, small, early);
                q = nq;
                let (low, next) = (report.acked_low_water, report.next_seq);
                prop_assert!(
                    m.persisted_low <= low,
                    "low {} below {}",
                    low,
                    m.persisted_low
                );
                if low > m.low {
                    m.lost_up_to(low)?;
                }
                prop_assert!(low <= m.low, "low {} above {}", low, m.low);
                prop_assert!(next <= m.next_seq, "next {} > {}", next, m.next_seq);
                prop_assert!(
                    next >= m.durable_upto,
                    "durable records lost: next {} < durable {}",
                    next,
                    m.durable_upto
                );
                if m.maybe_lost.is_empty() {
                    prop_assert_eq!(report.replayed_records, next - low);
                    prop_assert_eq!(report.corrupt_records, 0);
                    let bytes: usize = (low..next)
                        .filter_map(|s| m.records.get(&s).map(Vec::len))
                        .sum();
                    prop_assert_eq!(report.replayed_bytes, bytes as u64);
                } else {
                    prop_assert!(report.replayed_records <= next - low);
                }
                m.reopened(low, next);
            }
        }
    }
    // Finally everything still in the queue reads back, in order.
    q.close().await.unwrap();
    loop {
        let batch = q.read_batch(50, 1 << 20).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for (seq, bytes) in batch {
            prop_assert!(seq >= m.read_next);
            for lost in m.read_next..seq {
                prop_assert!(m.maybe_lost.contains(&lost), "gap at {}", lost);
            }
            m.read_next = seq;
            prop_assert_eq!(Some(&bytes.to_vec()), m.records.get(&seq));
            m.read_next += 1;
        }
    }
    prop_assert_eq!(m.read_next, m.next_seq);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_the_model_across_crashes_and_reopens(
        sync in policy(),
        small in any::<bool>(),
        early in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(sync, small, early, ops))?;
    }
}
