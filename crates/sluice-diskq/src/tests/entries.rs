//! Multi-entry records, memos and batched acks: entries of one batch are numbered
//! contiguously, read back in order (a read may stop inside a record), carry their memos while
//! in the in-memory tail, survive reopens and crashes as their records do, and are
//! acknowledged in bulk.

use std::fs::OpenOptions;
use std::sync::Arc;

use super::small_opts;
use crate::{AppendError, DiskQueue, Entry, MemoOr, Options, RecordBatch, Seq, segment};

fn batch_of(entries: &[Vec<u8>]) -> RecordBatch {
    let mut batch = RecordBatch::new();
    for e in entries {
        batch.push(e);
    }
    batch
}

fn entry(seq: Seq) -> Vec<u8> {
    format!("entry-{seq}-{}", "e".repeat((seq % 13) as usize * 8)).into_bytes()
}

/// Appends batches of the given sizes (entries numbered from `from`), with memo `seq * 10`.
fn append_batches(q: &DiskQueue<u64>, from: Seq, sizes: &[usize]) -> Seq {
    let mut next = from;
    for &n in sizes {
        let entries: Vec<Vec<u8>> = (next..next + n as u64).map(entry).collect();
        let memos = (next..next + n as u64).map(|s| s * 10).collect();
        let seqs = q.append_batch(&batch_of(&entries), memos).unwrap();
        assert_eq!(seqs, next..next + n as u64);
        next = seqs.end;
    }
    next
}

/// Reads everything available, `max` entries at a time.
fn drain_entries(q: &DiskQueue<u64>, max: usize) -> Vec<Entry<u64>> {
    let mut out = Vec::new();
    while let Some(batch) = q.try_read_entries(max, 1 << 20).unwrap() {
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= max);
        out.extend(batch);
    }
    out
}

fn check_in_order(got: &[Entry<u64>], from: Seq, to: Seq) {
    let seqs: Vec<Seq> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (from..to).collect::<Vec<_>>());
    for e in got {
        assert_eq!(e.bytes, entry(e.seq), "bytes of {}", e.seq);
    }
}

/// What the relay does: a field typed `sluice_diskq::DiskQueue` and an `open` that does not
/// name the memo type. Compiling is the test.
#[test]
fn a_field_typed_disk_queue_opens_without_naming_the_memo_type() {
    struct Holder {
        log: crate::DiskQueue,
        detail: Box<dyn Fn() -> u64 + Send + Sync>,
    }
    fn open(dir: &std::path::Path) -> Result<Holder, crate::Error> {
        let (log, report) = crate::DiskQueue::open(dir, small_opts())?;
        let probe = log.clone();
        let detail = Box::new(move || probe.stats().next_seq + report.next_seq);
        Ok(Holder { log, detail })
    }
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path()).unwrap();
    h.log.append(b"x").unwrap();
    assert_eq!((h.detail)(), 1);
}

#[tokio::test]
async fn batch_entries_read_back_in_order_from_the_tail_and_from_files() {
    for read_cache_bytes in [1 << 20, 0] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            read_cache_bytes,
            ..small_opts()
        };
        let (q, _) = DiskQueue::<u64>::open(dir.path(), opts).unwrap();
        let end = append_batches(&q, 0, &[1, 5, 3, 40, 2, 7, 1, 1, 30]);
        q.wait_durable(end - 1).await.unwrap();
        // Reads of 3 entries stop inside most records.
        let got = drain_entries(&q, 3);
        check_in_order(&got, 0, end);
        let from_tail = read_cache_bytes > 0;
        for e in &got {
            let expected = from_tail.then_some(e.seq * 10);
            assert_eq!(e.memo, expected, "memo of {} (tail: {from_tail})", e.seq);
        }
        assert!(q.stats().segments > 1, "the batches span several segments");
    }
}

#[tokio::test]
async fn file_reads_that_keep_up_with_the_writer_in_one_segment_lose_nothing() {
    // With no in-memory tail every read is a file read, and the reader's window is reused
    // from one read to the next: bytes it read past the last record (padding, zeros) must not
    // hide the records written there since.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        read_cache_bytes: 0,
        segment_bytes: 1 << 20,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<u64>::open(dir.path(), opts).unwrap();
    let mut next = 0;
    for round in 0..30 {
        let end = append_batches(&q, next, &[1 + round % 4, 2]);
        q.wait_durable(end - 1).await.unwrap();
        let got = drain_entries(&q, 3);
        check_in_order(&got, next, end);
        assert!(got.iter().all(|e| e.memo.is_none()), "read from the file");
        next = end;
    }
    let stats = q.stats();
    assert_eq!((stats.segments, stats.corrupt_records), (1, 0));
    assert_eq!(stats.file_read_entries, next);
}

#[tokio::test]
async fn entries_with_an_empty_one_read_back_from_the_tail_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    // Lengths kept with the memos find entries without reading the buffer; a 0 among them
    // makes the reader walk the record instead. Both must give the same entries.
    let with_empty = [b"a".to_vec(), Vec::new(), b"bcd".to_vec()];
    let plain = [b"xy".to_vec(), b"z".to_vec()];
    let first = q
        .append_batch(&batch_of(&with_empty), vec![1, 2, 3])
        .unwrap();
    let second = q.append_batch(&batch_of(&plain), vec![4, 5]).unwrap();
    q.wait_durable(second.end - 1).await.unwrap();
    let got = drain_entries(&q, 2);
    let seen: Vec<(Seq, Vec<u8>, Option<u64>)> = got
        .iter()
        .map(|e| (e.seq, e.bytes.to_vec(), e.memo))
        .collect();
    let expected: Vec<(Seq, Vec<u8>, Option<u64>)> = with_empty
        .iter()
        .chain(&plain)
        .enumerate()
        .map(|(i, b)| (first.start + i as u64, b.clone(), Some(i as u64 + 1)))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_byte_limit_stops_a_read_inside_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    let end = append_batches(&q, 0, &[10]);
    q.wait_durable(end - 1).await.unwrap();
    let first = q.read_entries(100, 1).await.unwrap();
    assert_eq!(
        first.len(),
        1,
        "one entry over the byte limit is still returned"
    );
    let rest = q.read_entries(100, 1 << 20).await.unwrap();
    assert_eq!(rest.first().map(|e| e.seq), Some(1));
    check_in_order(&[first, rest].concat(), 0, end);
}

#[tokio::test]
async fn memos_come_back_from_the_tail_and_are_none_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<Arc<str>>::open(dir.path(), small_opts()).unwrap();
        let memo: Arc<str> = Arc::from("event");
        let one = q.append_with_memo(b"single", memo.clone()).unwrap();
        let plain = q.append(b"no memo").unwrap();
        let batch = batch_of(&[b"a".to_vec(), b"b".to_vec()]);
        let both = q
            .append_batch(&batch, vec![memo.clone(), Arc::from("other")])
            .unwrap();
        q.wait_durable(both.end - 1).await.unwrap();
        let got = q.read_entries(10, 1 << 20).await.unwrap();
        let memos: Vec<Option<&str>> = got.iter().map(|e| e.memo.as_deref()).collect();
        assert_eq!(
            memos,
            vec![Some("event"), None, Some("event"), Some("other")]
        );
        assert_eq!((one, plain, both), (0, 1, 2..4));
        assert!(Arc::ptr_eq(got[0].memo.as_ref().unwrap(), &memo));
        q.close().await.unwrap();
    }
    let (q, report) = DiskQueue::<Arc<str>>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(report.replayed_records, 4);
    let got = q.read_entries(10, 1 << 20).await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|e| e.memo.is_none()));
    assert_eq!(&got[3].bytes[..], b"b");
}

#[tokio::test]
async fn read_memos_gives_the_memo_or_else_the_bytes_with_lengths_either_way() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<Arc<str>>::open(dir.path(), small_opts()).unwrap();
        q.append_with_memo(b"single", Arc::from("event")).unwrap();
        q.append(b"no memo").unwrap();
        let batch = batch_of(&[b"a".to_vec(), b"bc".to_vec()]);
        let both = q
            .append_batch(&batch, vec![Arc::from("first"), Arc::from("second")])
            .unwrap();
        q.wait_durable(both.end - 1).await.unwrap();
        let got = q.read_memos(10, 1 << 20).await.unwrap();
        // (seq, length, memo, or else the bytes as text)
        let shape: Vec<(u64, usize, String)> = got
            .iter()
            .map(|e| match e {
                MemoOr::Memo { seq, len, memo } => (*seq, *len, format!("memo {memo}")),
                MemoOr::Bytes { seq, bytes } => (
                    *seq,
                    bytes.len(),
                    format!("bytes {}", String::from_utf8_lossy(bytes)),
                ),
            })
            .collect();
        let want = [
            (0, 6, "memo event"),
            (1, 7, "bytes no memo"),
            (2, 1, "memo first"),
            (3, 2, "memo second"),
        ];
        assert_eq!(shape, want.map(|(s, l, t)| (s, l, t.to_string())).to_vec());
        assert_eq!(got.iter().map(MemoOr::len).sum::<usize>(), 16);
        q.close().await.unwrap();
    }
    // After a reopen there are no memos: every entry comes with its bytes.
    let (q, _) = DiskQueue::<Arc<str>>::open(dir.path(), small_opts()).unwrap();
    let got = q.read_memos(10, 1 << 20).await.unwrap();
    assert_eq!(
        got.iter().map(MemoOr::seq).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert!(matches!(&got[3], MemoOr::Bytes { bytes, .. } if &bytes[..] == b"bc"));
}

#[tokio::test]
async fn memos_are_moved_out_when_read_so_the_tail_keeps_nothing_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<Arc<str>>::open(dir.path(), small_opts()).unwrap();
    let events: Vec<Arc<str>> = (0..3).map(|i| Arc::from(format!("event {i}"))).collect();
    let batch = batch_of(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    let seqs = q.append_batch(&batch, events.clone()).unwrap();
    q.wait_durable(seqs.end - 1).await.unwrap();
    // Still in the tail, unread: the queue holds one reference to each.
    assert!(events.iter().all(|e| Arc::strong_count(e) == 2));
    // A read that stops inside the record takes only the memos it hands out.
    let first = q.read_entries(2, 1 << 20).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(
        Arc::strong_count(&events[0]),
        2,
        "ours and the entry's, none in the tail"
    );
    assert_eq!(
        Arc::strong_count(&events[2]),
        2,
        "unread: still in the tail"
    );
    drop(first);
    assert_eq!(Arc::strong_count(&events[0]), 1);
    assert_eq!(Arc::strong_count(&events[1]), 1);
    let rest = q.read_entries(10, 1 << 20).await.unwrap();
    assert!(Arc::ptr_eq(rest[0].memo.as_ref().unwrap(), &events[2]));
    drop(rest);
    assert_eq!(Arc::strong_count(&events[2]), 1);
    q.close().await.unwrap();
}

#[tokio::test]
async fn append_batch_limits_apply_to_the_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_record_bytes: 100,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    let big = batch_of(&vec![vec![b'x'; 30]; 3]);
    assert_eq!(big.payload_bytes(), 4 + 3 * 34);
    assert!(matches!(
        q.append_batch(&big, Vec::new()),
        Err(AppendError::TooLarge { len: 106, max: 100 })
    ));
    let fits = batch_of(&vec![vec![b'x'; 30]; 2]);
    assert_eq!(q.append_batch(&fits, Vec::new()).unwrap(), 0..2);
    assert_eq!(
        q.append_batch(&RecordBatch::new(), Vec::new()).unwrap(),
        2..2
    );
    assert_eq!(q.stats().next_seq, 2);
}

#[tokio::test]
async fn a_full_queue_refuses_a_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_bytes: 8192,
        max_record_bytes: 4000,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<()>::open(dir.path(), opts).unwrap();
    let batch = batch_of(&vec![vec![b'y'; 96]; 30]);
    let mut appended = 0;
    let err = loop {
        match q.append_batch(&batch, Vec::new()) {
            Ok(seqs) => appended += seqs.end - seqs.start,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, AppendError::Full { .. }), "{err}");
    assert_eq!(appended % 30, 0);
    assert_eq!(q.stats().next_seq, appended, "nothing of the refused batch");
}

#[tokio::test]
async fn ack_many_records_runs_and_out_of_order_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    let end = append_batches(&q, 0, &[20]);
    q.wait_durable(end - 1).await.unwrap();
    q.ack_many(&[5, 6, 7, 8, 12, 11, 10]);
    assert_eq!(q.stats().acked_low_water, 0);
    assert_eq!(q.stats().unacked_records, 13);
    q.ack_many(&[0, 1, 2, 4, 3, 3, 9, 100, 101]);
    let s = q.stats();
    assert_eq!((s.acked_low_water, s.unacked_records), (13, 7));
    q.ack_many(&[]);
    q.ack_many(&(13..20).collect::<Vec<_>>());
    assert_eq!(q.stats().acked_low_water, 20);
}

#[tokio::test]
async fn reopening_inside_a_batch_record_replays_only_its_unacknowledged_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
        append_batches(&q, 0, &[10, 10]);
        q.ack_many(&(0..14).collect::<Vec<_>>());
        q.close().await.unwrap();
    }
    let (q, report) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(
        (
            report.acked_low_water,
            report.replayed_records,
            report.next_seq
        ),
        (14, 6, 20)
    );
    check_in_order(&drain_entries(&q, 4), 14, 20);
    let inspected = crate::inspect(dir.path()).unwrap();
    assert_eq!((inspected.records(), inspected.entries()), (2, 20));
    assert_eq!(inspected.last_seq(), Some(19));
    assert_eq!(inspected.unacked_records(), 6);
}

#[tokio::test]
async fn a_torn_batch_record_loses_all_its_entries_and_numbering_resumes_before_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
        append_batches(&q, 0, &[3, 8]);
        q.close().await.unwrap();
    }
    let segs = segment::list_segments(dir.path()).unwrap();
    let (_, last) = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let f = OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    let (q, report) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(report.next_seq, 3);
    assert_eq!(report.corrupt_records, 0);
    assert!(report.truncated_bytes > 0);
    check_in_order(&drain_entries(&q, 100), 0, 3);
    let end = append_batches(&q, 3, &[4]);
    q.wait_durable(end - 1).await.unwrap();
    check_in_order(&drain_entries(&q, 100), 3, 7);
}

#[tokio::test]
async fn a_corrupt_batch_record_in_the_middle_loses_exactly_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let first_len;
    {
        let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
        append_batches(&q, 0, &[4]);
        q.close().await.unwrap();
        drop(q);
        first_len = std::fs::metadata(&segment::list_segments(dir.path()).unwrap()[0].1)
            .unwrap()
            .len();
        let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
        append_batches(&q, 4, &[6, 5]);
        q.close().await.unwrap();
    }
    let segs = segment::list_segments(dir.path()).unwrap();
    assert_eq!(segs.len(), 1);
    // Flip a byte inside an entry of the second record (seqs 4..10).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segs[0].1)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let at = first_len + 30;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    drop(f);
    let (q, report) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(
        (
            report.corrupt_records,
            report.next_seq,
            report.replayed_records
        ),
        (6, 15, 9)
    );
    let got: Vec<Seq> = drain_entries(&q, 3).iter().map(|e| e.seq).collect();
    assert_eq!(got, [0, 1, 2, 3, 10, 11, 12, 13, 14]);
}

#[tokio::test]
async fn a_reader_with_over_half_the_tail_to_read_is_falling_behind() {
    // What four batches take in the tail, measured with a tail large enough for anything.
    let measure = tempfile::tempdir().unwrap();
    let big = Options {
        read_cache_bytes: 1 << 20,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<u64>::open(measure.path(), big).unwrap();
    let end = append_batches(&q, 0, &[10, 10, 10, 10]);
    q.wait_durable(end - 1).await.unwrap();
    let four = q.stats().tail_bytes as usize;
    assert!(four > 0);

    // A tail just large enough for them: unread, they fill more than half of it.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        read_cache_bytes: four + four / 4,
        ..small_opts()
    };
    let (q, _) = DiskQueue::<u64>::open(dir.path(), opts).unwrap();
    assert!(
        !q.reader_falling_behind(),
        "no tail, nothing to fall behind"
    );
    let end = append_batches(&q, 0, &[10, 10, 10, 10]);
    q.wait_durable(end - 1).await.unwrap();
    assert_eq!(q.stats().tail_bytes as usize, four);
    assert!(q.reader_falling_behind(), "nothing read yet");
    let read = q.read_entries(30, 1 << 20).await.unwrap();
    assert_eq!(read.len(), 30);
    assert!(!q.reader_falling_behind(), "a quarter of it left to read");
}

#[tokio::test]
async fn recovery_counts_the_bytes_of_the_entries_it_will_hand_out_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (q, _) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
        q.append(b"seven b").unwrap();
        // A multi-entry record that the low-water mark will cut after its first entry.
        let lens = [1usize, 22, 333];
        let batch = batch_of(&lens.map(|n| vec![b'x'; n]));
        q.append_batch(&batch, Vec::new()).unwrap();
        let last = q.append(&[b'y'; 4000]).unwrap();
        q.wait_durable(last).await.unwrap();
        let got = q.read_entries(2, 1 << 20).await.unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
        q.ack_many(&[0, 1]);
        q.close().await.unwrap();
    }
    let (q, report) = DiskQueue::<u64>::open(dir.path(), small_opts()).unwrap();
    assert_eq!(report.replayed_records, 3, "{report}");
    assert_eq!(report.replayed_bytes, 22 + 333 + 4000, "{report}");
    let got = q.read_entries(10, 1 << 20).await.unwrap();
    let read: usize = got.iter().map(|e| e.bytes.len()).sum();
    assert_eq!(read as u64, report.replayed_bytes);
}
