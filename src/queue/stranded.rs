//! Disk queue directories that no configured sink reads.
//!
//! Events acknowledged into a disk queue stay in `data_dir/queues/<sink>/` until that sink
//! delivers them. A sink that was renamed, removed, or switched to a memory queue leaves them
//! there: nothing reads them, and nothing said so. At start the relay looks at every queue
//! directory no sink's disk queue (or spill tier) opened, and warns about each one that still
//! holds unacknowledged events, naming how many and how to get them delivered, so that nothing
//! it once accepted is left behind silently. They also show in `/stats` (`stranded_queues`) and
//! in `/metrics` (`sluice_stranded_queues`, their number), for monitoring to alert on.
//!
//! It reads the directories with [`sluice_diskq::inspect`] (read-only, no lock), in the
//! background after the relay is ready: a large stranded backlog must not delay the start.
//! A directory whose segments pass [`INSPECT_AT_MOST`] is not read at all (acknowledged
//! segments are deleted, so that much is a backlog anyway): its bytes are reported instead of
//! its events, rather than reading it whole at every start.

use std::path::{Path, PathBuf};

use tracing::{debug, warn};

/// Segment bytes above which a stranded directory is reported without being read.
pub const INSPECT_AT_MOST: u64 = 256 << 20;

/// A queue directory holding events no configured sink will deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub dir: PathBuf,
    /// Unacknowledged entries, as `sluice queue inspect` counts them (`None`: not counted, the
    /// directory holds more than [`INSPECT_AT_MOST`], or its segments could not be read).
    pub events: Option<u64>,
    /// Bytes of its segment files.
    pub bytes: u64,
}

impl From<Stranded> for crate::ledger::StrandedQueue {
    fn from(s: Stranded) -> Self {
        crate::ledger::StrandedQueue {
            dir: s.dir.display().to_string(),
            events: s.events,
            bytes: s.bytes,
        }
    }
}

/// The directories under `data_dir/queues` that are not named in `read` and still hold
/// unacknowledged events (or segments that could not be read: reported uncounted).
pub fn find(data_dir: &Path, read: &[&str]) -> Vec<Stranded> {
    find_reading_at_most(data_dir, read, INSPECT_AT_MOST)
}

/// [`find`], reading directories of at most `inspect_at_most` bytes of segments.
fn find_reading_at_most(data_dir: &Path, read: &[&str], inspect_at_most: u64) -> Vec<Stranded> {
    let queues = data_dir.join("queues");
    let entries = match std::fs::read_dir(&queues) {
        Ok(entries) => entries,
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                debug!(dir = %queues.display(), %error, "Cannot list the queue directories.");
            }
            return Vec::new();
        }
    };
    let mut stranded = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || name.to_str().is_some_and(|n| read.contains(&n)) {
            continue;
        }
        let dir = entry.path();
        let bytes = segment_bytes(&dir);
        if bytes > inspect_at_most {
            stranded.push(Stranded {
                dir,
                events: None,
                bytes,
            });
            continue;
        }
        match sluice_diskq::inspect(&dir) {
            Ok(report) if report.unacked_records() > 0 => stranded.push(Stranded {
                dir,
                events: Some(report.unacked_records()),
                bytes: report.bytes(),
            }),
            Ok(_) => {}
            // Segments it cannot read are still events nobody delivers, as far as it can tell.
            Err(error) if bytes > 0 => {
                debug!(dir = %dir.display(), %error, "Cannot inspect a queue directory.");
                stranded.push(Stranded {
                    dir,
                    events: None,
                    bytes,
                });
            }
            Err(error) => debug!(dir = %dir.display(), %error, "Cannot inspect a queue directory."),
        }
    }
    stranded.sort_by(|a, b| a.dir.cmp(&b.dir));
    stranded
}

/// The bytes of the segment files (`*.seg`) in `dir`, from their metadata.
fn segment_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Logs a warning for each of `stranded`.
pub fn warn_each(stranded: &[Stranded]) {
    for s in stranded {
        let sink = s
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let why = format!(
            "A disk queue holds events that no sink reads (a sink renamed, removed, or switched \
             to a memory queue?): they are kept, not delivered, until a sink named {sink:?} with \
             a disk queue is configured again. `sluice queue inspect` shows them."
        );
        match s.events {
            Some(events) => warn!(dir = %s.dir.display(), events, bytes = s.bytes, "{why}"),
            // Too large to read at every start: counted by `sluice queue inspect` instead.
            None => warn!(dir = %s.dir.display(), bytes = s.bytes, "{why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_diskq::{DiskQueue, Options};

    use super::*;

    fn queue_with(dir: &Path, appended: u64, acked: u64) {
        let (q, _) = DiskQueue::<()>::open(dir, Options::default()).expect("open");
        for i in 0..appended {
            q.append(format!("event {i}").as_bytes()).expect("append");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut left = acked as usize;
            while left > 0 {
                let read = q.read_batch(left, 1 << 20).await.expect("read");
                left -= read.len();
                for (seq, _) in read {
                    q.ack(seq);
                }
            }
            q.close().await.expect("close");
        });
    }

    #[test]
    fn only_unread_directories_with_unacknowledged_events_are_stranded() {
        let data = tempfile::tempdir().expect("temp dir");
        let queues = data.path().join("queues");
        queue_with(&queues.join("renamed"), 10, 3);
        queue_with(&queues.join("delivered"), 5, 5);
        queue_with(&queues.join("configured"), 4, 0);
        std::fs::create_dir_all(queues.join("empty")).expect("mkdir");
        std::fs::write(queues.join("a-file"), b"not a queue").expect("write");

        let stranded = find(data.path(), &["configured"]);
        assert_eq!(stranded.len(), 1, "{stranded:?}");
        assert_eq!(stranded[0].dir, queues.join("renamed"));
        assert_eq!(stranded[0].events, Some(7));
        assert!(stranded[0].bytes > 0);
        warn_each(&stranded);
    }

    #[test]
    fn a_large_directory_is_reported_by_its_bytes_without_being_read() {
        let data = tempfile::tempdir().expect("temp dir");
        queue_with(&data.path().join("queues").join("big"), 3, 0);
        let stranded = find_reading_at_most(data.path(), &[], 1);
        assert_eq!(stranded.len(), 1, "{stranded:?}");
        assert_eq!(stranded[0].events, None);
        assert!(stranded[0].bytes > 1);
        warn_each(&stranded);
    }

    #[test]
    fn segments_that_cannot_be_read_are_reported_uncounted() {
        let data = tempfile::tempdir().expect("temp dir");
        let broken = data.path().join("queues").join("broken");
        // A directory where a segment file should be: listed, but not readable as one.
        std::fs::create_dir_all(broken.join("00000000000000000000.seg")).expect("mkdir");
        let stranded = find(data.path(), &[]);
        assert_eq!(stranded.len(), 1, "{stranded:?}");
        assert_eq!((&stranded[0].dir, stranded[0].events), (&broken, None));
    }

    #[test]
    fn no_queue_directory_is_no_finding() {
        let data = tempfile::tempdir().expect("temp dir");
        assert!(find(data.path(), &[]).is_empty());
        assert!(find(&data.path().join("missing"), &[]).is_empty());
    }
}
