//! Errors returned by the queue.
//!
//! Every message says what was expected, what was found, and where (file and offset), so an
//! operator reading a log line knows which file to look at. A failed write or sync is captured
//! once as a [`WriteFailure`] and shared (behind an `Arc`) by every caller it affects: the
//! queue is poisoned for writes from then on and never reports later records durable.

use std::path::PathBuf;
use std::sync::Arc;

/// A write, sync or file-creation failure of the writer thread. Once one happens the queue
/// accepts no more appends and resolves no more `wait_durable` calls successfully until it is
/// reopened (after `fsync` fails, the kernel may have dropped the dirty pages: retrying could
/// report data durable that is not on disk).
#[derive(Debug)]
pub struct WriteFailure {
    /// The file being written or synced.
    pub path: PathBuf,
    /// What was being done: `"write"`, `"fdatasync"`, `"create"`.
    pub op: &'static str,
    /// File offset of the write, when there is one.
    pub offset: Option<u64>,
    /// The operating system's error.
    pub source: std::io::Error,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.op, self.path.display())?;
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        write!(
            f,
            " failed: {} (expected success; the queue refuses writes until reopened)",
            self.source
        )
    }
}

/// Errors of opening, reading, syncing and inspecting a queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a queue file failed. Its message includes the operating system's
    /// error, which is therefore not also its `source()` (an error chain would say it twice).
    #[error("{op} {path}{}: {os_error}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Io {
        /// What was being done (`"read"`, `"open"`, `"truncate"`, …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// File offset, when relevant.
        offset: Option<u64>,
        /// The operating system's error.
        os_error: std::io::Error,
    },
    /// Another live process (or another `DiskQueue` in this process) holds the directory.
    #[error(
        "queue directory {dir} is locked by another process (lock file {lock}): expected exclusive use; stop the other process or use another directory"
    )]
    Locked {
        /// The queue directory.
        dir: PathBuf,
        /// The lock file that could not be locked.
        lock: PathBuf,
    },
    /// The options cannot work together.
    #[error("invalid disk queue options: {0}")]
    InvalidOptions(String),
    /// The writer failed earlier; this record (or this sync) is not durable.
    #[error("record is not durable: {0}")]
    WriteFailed(Arc<WriteFailure>),
    /// The queue was closed before the operation could complete.
    #[error("disk queue is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: Option<u64>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            op,
            path: path.into(),
            offset,
            os_error: source,
        }
    }
}

/// Why [`crate::DiskQueue::append`] (or `append_batch`, for the whole batch) refused a record.
/// Nothing is written in any of these cases.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// Appending would take the queue past `max_bytes` on disk (or the writer is so far behind
    /// that too many bytes wait in memory). The caller applies its own policy; wait with
    /// [`crate::DiskQueue::wait_space`] and retry to block.
    #[error(
        "disk queue full: {bytes} bytes used + {record_bytes} for this record would pass max_bytes {max_bytes}"
    )]
    Full {
        /// Bytes on disk (plus bytes waiting to be written) when the append was refused.
        bytes: u64,
        /// Encoded size of the refused record.
        record_bytes: u64,
        /// The configured limit.
        max_bytes: u64,
    },
    /// The record (one entry, or a whole batch's payload) is larger than `max_record_bytes`.
    #[error("record of {len} bytes exceeds max_record_bytes {max}")]
    TooLarge {
        /// The record's payload length.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// A previous write or sync failed; the queue is poisoned for writes until reopened.
    #[error("disk queue writer failed earlier: {0}")]
    Io(Arc<WriteFailure>),
    /// `close()` was called.
    #[error("disk queue is closed")]
    Closed,
}
