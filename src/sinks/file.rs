//! The `file` sink: every event a newline-terminated record in a local file, with rotation.
//!
//! ```toml
//! [sinks.audit_log]
//! type = "file"
//! inputs = ["vault"]
//! path = "/var/log/sluice/{sink}.log"   # {sink} = this sink's name; {route} is reserved
//! max_size = "100MiB"                   # rotate before a batch would pass this size
//! max_age = "24h"                       # rotate once the file has been open this long
//! max_backups = 10                      # rotated files kept (0 = all)
//! compression = "gzip"                  # gzip rotated files
//! ```
//!
//! Records: the payload and an LF (none added when the payload already ends in one). A batch is
//! one `write`, never split across files: rotation happens between batches, so a batch larger
//! than `max_size` makes a file of its own.
//!
//! Rotation renames the file to `NAME.YYYYMMDDTHHMMSS.mmmZ` (UTC; `.N` appended on a clash),
//! gzips it to `….gz` when asked (level 1, before the next write), then deletes the oldest
//! rotated files beyond `max_backups`. `max_age` counts from when the relay opened the file.
//!
//! SIGHUP (logrotate's `postrotate`): the file is closed and opened again by path before the
//! next write, so records go to the new file once logrotate has moved the old one away.
//!
//! A failed write is truncated back to the last whole batch and retried by the driver with
//! backoff (events stay queued); "delivered" means handed to the operating system, not fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::http::Compression;
use super::socket::{Framing, defaults, encode_frame};
use super::{Attempt, Sink};
use crate::config::error::{ConfigError, Locator};
use crate::config::{ByteSize, HumanDuration};
use crate::event::Event;
use crate::ledger::AttemptOutcome;
use crate::queue::{BatchConfig, BatchLimits};

/// Replaced by the sink's name in `path`.
pub const SINK_PLACEHOLDER: &str = "{sink}";
/// Reserved for the route's name once routes exist.
pub const ROUTE_PLACEHOLDER: &str = "{route}";

fn default_max_backups() -> usize {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub path: String,
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    #[serde(default = "default_max_backups")]
    pub max_backups: usize,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "defaults::batch")]
    pub batch: BatchConfig,
}

impl FileSinkConfig {
    pub fn validate(&self, prefix: &str, locator: &Locator) -> Vec<ConfigError> {
        let key = format!("{prefix}.path");
        let mut errors = self.batch.validate(&format!("{prefix}.batch"), locator);
        if self.path.contains(ROUTE_PLACEHOLDER) {
            errors.push(locator.error_with_hint(
                &key,
                "{route} is reserved for routes, which this relay does not have yet",
                "use {sink} or a fixed name",
            ));
        }
        let rest = self
            .path
            .replace(SINK_PLACEHOLDER, "")
            .replace(ROUTE_PLACEHOLDER, "");
        if rest.contains('{') || rest.contains('}') {
            errors.push(locator.error_with_hint(
                &key,
                format!("unknown placeholder in {:?}", self.path),
                "the path may hold {sink}",
            ));
        }
        if self.path.trim().is_empty() || self.path.ends_with('/') {
            errors
                .push(locator.error(&key, format!("expected a file path, found {:?}", self.path)));
        }
        if self.max_size.is_some_and(|s| s.0 == 0) {
            errors.push(locator.error(
                &format!("{prefix}.max_size"),
                "expected at least 1 byte, found 0",
            ));
        }
        if self.max_age.is_some_and(|a| a.0.is_zero()) {
            errors.push(locator.error(
                &format!("{prefix}.max_age"),
                "expected a duration above zero",
            ));
        }
        errors
    }
}

/// The open file and what rotation needs to know about it.
struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    opened_at: Instant,
    /// Device and inode of the open file.
    identity: Option<(u64, u64)>,
    max_size: Option<u64>,
    max_age: Option<Duration>,
    max_backups: usize,
    gzip: bool,
}

impl Writer {
    fn write(&mut self, bytes: &[u8], reopen: bool) -> io::Result<()> {
        if reopen && self.file.take().is_some() {
            info!(path = %self.path.display(), "Reopening the file (SIGHUP).");
        }
        if self.file.is_none() {
            self.open()?;
        }
        if self.due(bytes.len() as u64) {
            self.rotate()?;
            self.open()?;
        }
        let size = self.size;
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("the file is not open"));
        };
        if let Err(error) = file.write_all(bytes) {
            // Leave whole batches only: the retry writes this one again.
            let _ = file.set_len(size);
            return Err(error);
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Whether the file must rotate before `incoming` more bytes; an empty file never does.
    fn due(&self, incoming: u64) -> bool {
        let full = self.max_size.is_some_and(|max| self.size + incoming > max);
        let old = self
            .max_age
            .is_some_and(|age| self.opened_at.elapsed() >= age);
        self.size > 0 && (full || old)
    }

    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let metadata = file.metadata()?;
        self.size = metadata.len();
        // Reopening the same file (SIGHUP without a move) keeps its age.
        let identity = (metadata.dev(), metadata.ino());
        if self.identity != Some(identity) {
            self.identity = Some(identity);
            self.opened_at = Instant::now();
        }
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let rotated = backup_path(&self.path, SystemTime::now());
        fs::rename(&self.path, &rotated)?;
        self.size = 0;
        // The next file is new even if the system reuses the inode number.
        self.identity = None;
        if self.gzip {
            gzip(&rotated)?;
        }
        prune(&self.path, self.max_backups)
    }
}

/// `app.log` → `app.log.20261122T163800.123Z`, with `.N` added if that name is taken.
fn backup_path(path: &Path, now: SystemTime) -> PathBuf {
    let stamp: String = humantime::format_rfc3339_millis(now)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let base = format!("{}.{stamp}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() || PathBuf::from(format!("{}.gz", candidate.display())).exists() {
        candidate = PathBuf::from(format!("{base}.{n}"));
        n += 1;
    }
    candidate
}

fn gzip(path: &Path) -> io::Result<()> {
    let target = PathBuf::from(format!("{}.gz", path.display()));
    let mut input = File::open(path)?;
    let mut encoder = GzEncoder::new(File::create(&target)?, GzLevel::fast());
    io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    fs::remove_file(path)
}

/// The rotated files of `path`, oldest first.
pub fn backups(path: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .and_then(|n| n.strip_prefix(&prefix).map(str::to_owned))
                .is_some_and(|rest| rest.len() >= 20 && rest.as_bytes()[8] == b'T')
        })
        .collect();
    found.sort();
    Ok(found)
}

fn prune(path: &Path, keep: usize) -> io::Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let found = backups(path)?;
    for old in found.iter().take(found.len().saturating_sub(keep)) {
        fs::remove_file(old)?;
    }
    Ok(())
}

pub struct FileSink {
    writer: Arc<Mutex<Writer>>,
    reopen: Arc<AtomicBool>,
    hangup: Option<JoinHandle<()>>,
    batch: BatchLimits,
    path: PathBuf,
}

impl FileSink {
    /// Must be called inside the runtime: it starts the SIGHUP listener.
    pub fn new(config: &FileSinkConfig, sink_name: &str) -> Self {
        let path = PathBuf::from(config.path.replace(SINK_PLACEHOLDER, sink_name));
        let reopen = Arc::new(AtomicBool::new(false));
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut signals) => {
                let reopen = reopen.clone();
                Some(tokio::spawn(async move {
                    while signals.recv().await.is_some() {
                        reopen.store(true, Ordering::SeqCst);
                    }
                }))
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "Cannot listen for SIGHUP; the file will not be reopened on it.");
                None
            }
        };
        Self {
            writer: Arc::new(Mutex::new(Writer {
                path: path.clone(),
                file: None,
                size: 0,
                opened_at: Instant::now(),
                identity: None,
                max_size: config.max_size.map(|s| s.0),
                max_age: config.max_age.map(|a| a.0),
                max_backups: config.max_backups,
                gzip: config.compression == Compression::Gzip,
            })),
            reopen,
            hangup,
            batch: config.batch.limits(),
            path,
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Some(task) = &self.hangup {
            task.abort();
        }
    }
}

impl Sink for FileSink {
    type Request = Bytes;

    fn batch_limits(&self) -> BatchLimits {
        self.batch
    }

    fn encode(&self, events: &[Arc<Event>]) -> Bytes {
        let size: usize = events.iter().map(|e| e.payload.len() + 1).sum();
        let mut out = BytesMut::with_capacity(size);
        for event in events {
            encode_frame(Framing::Lines, &event.payload, &mut out);
        }
        out.freeze()
    }

    async fn send(&self, records: &Bytes, _events: &[Arc<Event>]) -> Attempt {
        let writer = self.writer.clone();
        let records = records.clone();
        let reopen = self.reopen.swap(false, Ordering::SeqCst);
        let written =
            tokio::task::spawn_blocking(move || writer.lock().write(&records, reopen)).await;
        let error = match written {
            Ok(Ok(())) => return Attempt::Delivered,
            Ok(Err(error)) => error.to_string(),
            Err(join) => join.to_string(),
        };
        if reopen {
            // Not reopened yet: try again on the next attempt.
            self.reopen.store(true, Ordering::SeqCst);
        }
        Attempt::Retry {
            outcome: AttemptOutcome::ConnectionError,
            after: None,
            detail: format!("cannot write to {}: {error}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_sort_by_time_and_never_clash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.log");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let first = backup_path(&path, t);
        assert!(
            first
                .to_string_lossy()
                .ends_with("a.log.20231114T221320.123Z"),
            "{first:?}"
        );
        fs::write(&first, b"x").expect("write");
        let second = backup_path(&path, t);
        assert_ne!(first, second);
        fs::write(&second, b"x").expect("write");
        fs::write(dir.path().join("a.log.bak"), b"not ours").expect("write");
        assert_eq!(backups(&path).expect("list"), vec![first, second]);
    }
}
