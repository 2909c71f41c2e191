//! Disk queue directories that no configured sink reads.
//!
//! Events acknowledged into a disk queue stay in `data_dir/queues/<sink>/` until that sink
//! delivers them. A sink that was renamed, removed, or switched to a memory queue leaves them
//! there: nothing reads them, and nothing said so. At start the relay looks at every queue
//! directory no sink's disk queue (or spill tier) opened, and warns about each one that still
//! holds unacknowledged events, naming how many and how to get them delivered, so that nothing
//! it once accepted is left behind silently.
//!
//! It reads the directories with [`sluice_diskq::inspect`] (read-only, no lock), in the
//! background after the relay is ready: a large stranded backlog must not delay the start.

use std::path::{Path, PathBuf};

use tracing::{debug, warn};

/// A queue directory holding events no configured sink will deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stranded {
    pub dir: PathBuf,
    /// Unacknowledged entries, as `sluice queue inspect` counts them.
    pub events: u64,
    /// Bytes of its segment files.
    pub bytes: u64,
}

/// The directories under `data_dir/queues` that are not named in `read` and still hold
/// unacknowledged events. Directories that cannot be read are logged and skipped.
pub fn find(data_dir: &Path, read: &[&str]) -> Vec<Stranded> {
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
        match sluice_diskq::inspect(&dir) {
            Ok(report) if report.unacked_records() > 0 => stranded.push(Stranded {
                dir,
                events: report.unacked_records(),
                bytes: report.bytes(),
            }),
            Ok(_) => {}
            Err(error) => debug!(dir = %dir.display(), %error, "Cannot inspect a queue directory."),
        }
    }
    stranded.sort_by(|a, b| a.dir.cmp(&b.dir));
    stranded
}

/// Logs a warning for each of `stranded`.
pub fn warn_each(stranded: &[Stranded]) {
    for s in stranded {
        let sink = s
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        warn!(
            dir = %s.dir.display(),
            events = s.events,
            bytes = s.bytes,
            "A disk queue holds events that no sink reads (a sink renamed, removed, or switched to a memory queue?): they are kept, not delivered, until a sink named {sink:?} with a disk queue is configured again. `sluice queue inspect` shows them."
        );
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
        assert_eq!(stranded[0].events, 7);
        assert!(stranded[0].bytes > 0);
        warn_each(&stranded);
    }

    #[test]
    fn no_queue_directory_is_no_finding() {
        let data = tempfile::tempdir().expect("temp dir");
        assert!(find(data.path(), &[]).is_empty());
        assert!(find(&data.path().join("missing"), &[]).is_empty());
    }
}
