//! Records taken from their batches under direct I/O start at aligned offsets behind padding
//! records: the padding is invisible to readers (from the tail and from files), to recovery
//! and to `inspect`, and every entry reads back in order with its bytes.

use std::fs::File;

use super::small_opts;
use crate::record::{self, Decoded};
use crate::segment::{self, Item, Scanner};
use crate::{DiskQueue, Options, RecordBatch, Seq};

fn entry(seq: Seq) -> Vec<u8> {
    format!("entry-{seq}-{}", "p".repeat((seq % 29) as usize * 5)).into_bytes()
}

/// Appends small records and taken batches, alternating; returns the next seq.
fn append_mixed(q: &DiskQueue<u64>, rounds: u64) -> Seq {
    let mut next = 0;
    let mut batch = RecordBatch::new();
    for i in 0..rounds {
        if i % 3 == 0 {
            assert_eq!(q.append(&entry(next)).unwrap(), next);
            next += 1;
            continue;
        }
        let n = 2 + i % 7;
        for seq in next..next + n {
            batch.push(&entry(seq));
        }
        let memos = (next..next + n).collect();
        let seqs = q.append_batch_taking(&mut batch, memos).unwrap();
        assert_eq!(seqs, next..next + n);
        next = seqs.end;
    }
    next
}

fn read_all(q: &DiskQueue<u64>, to: Seq) {
    let mut got = Vec::new();
    while let Some(batch) = q.try_read_entries(7, 1 << 20).unwrap() {
        if batch.is_empty() {
            break;
        }
        got.extend(batch);
    }
    let seqs: Vec<Seq> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (0..to).collect::<Vec<_>>());
    for e in &got {
        assert_eq!(e.bytes, entry(e.seq), "bytes of {}", e.seq);
    }
}

/// Walks every segment's bytes record by record: returns the pads found and the offsets of the
/// records behind them, after checking the scanner sees the same records and nothing corrupt.
fn walk_segments(dir: &std::path::Path) -> (usize, Vec<u64>) {
    let (mut pads, mut behind) = (0, Vec::new());
    for (first, path) in segment::list_segments(dir).unwrap() {
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        let mut records = Vec::new();
        while at < bytes.len() {
            match record::decode(&bytes[at..]) {
                Decoded::Padding { len, .. } => {
                    pads += 1;
                    at += len;
                    behind.push(at as u64);
                }
                Decoded::Record { len, .. } => {
                    records.push(at as u64);
                    at += len;
                }
                _ => break,
            }
        }
        let file = File::open(&path).unwrap();
        let mut sc = Scanner::new(&file, &path, bytes.len() as u64, 0, first);
        let mut scanned = Vec::new();
        loop {
            match sc.next_item().unwrap() {
                Item::Record { offset, .. } => scanned.push(offset),
                Item::Unused { .. } | Item::End => break,
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        assert_eq!(scanned, records, "{}", path.display());
    }
    (pads, behind)
}

#[tokio::test]
async fn padding_aligns_taken_records_and_no_reader_sees_it() {
    for read_cache_bytes in [1 << 20, 0] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            segment_bytes: 64 * 1024,
            max_bytes: 16 << 20,
            read_cache_bytes,
            ..small_opts()
        };
        let (q, _) = DiskQueue::<u64>::open(dir.path(), opts.clone()).unwrap();
        let align = q
            .shared()
            .direct_io
            .then_some(q.shared().direct_align as u64);
        let next = append_mixed(&q, 300);
        q.wait_durable(next - 1).await.unwrap();
        read_all(&q, next);
        q.close().await.unwrap();
        drop(q);

        let (pads, behind) = walk_segments(dir.path());
        match align {
            Some(align) => {
                assert!(pads > 10, "only {pads} pads");
                assert!(behind.iter().all(|at| at % align == 0), "{behind:?}");
            }
            None => assert_eq!(pads, 0, "padding without direct I/O"),
        }
        let report = crate::inspect(dir.path()).unwrap();
        assert_eq!(report.corrupt_records(), 0, "{report}");
        assert_eq!(report.entries(), next);

        let (q, report) = DiskQueue::<u64>::open(dir.path(), opts).unwrap();
        assert_eq!((report.corrupt_records, report.next_seq), (0, next));
        read_all(&q, next);
    }
}
