//! The disk's own ceiling for a durable queue: what `pwrite` + `fdatasync` alone achieve on the
//! filesystem the relay's queue lives on, with no relay in the way. S2's baseline.
//!
//! A thread appends chunks of the size S2's group commits reach (about 256 KiB: ~1000 records of
//! 256-byte events per sync) to a file and syncs after each, for a fixed time, twice: into a
//! growing file (what a fresh segment costs: the sync also writes the inode's new size) and over
//! a file whose blocks already exist (what a recycled segment costs). The VM's disk here varies
//! by several times from minute to minute, so S2 is only comparable with a ceiling measured in
//! the same sitting; the figure to read is S2 as a share of it.
//!
//! Bytes per event: the event, the disk queue's per-entry framing and event header (about 60
//! bytes) — so events/s = bytes/s ÷ (size + 60).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Bytes per `pwrite` + `fdatasync` round.
const CHUNK: usize = 256 * 1024;
/// The pre-written file: one segment of the disk queue's largest default size.
const SEGMENT: usize = 64 * 1024 * 1024;
/// What the disk queue adds to an event on disk (entry length, event header, source name).
const PER_EVENT_OVERHEAD: usize = 60;

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// `growing` (fresh file) or `overwrite` (blocks already there).
    pub file: &'static str,
    pub syncs_per_sec: f64,
    pub bytes_per_sec: f64,
    /// `bytes_per_sec` in events of the scenario's size.
    pub events_per_sec: f64,
    /// Mean wall time of one write + sync.
    pub round_us: f64,
}

/// Measures both ceilings in `dir` for `duration` each; `event_size` converts bytes to events.
pub fn measure(dir: &Path, duration: Duration, event_size: usize) -> Result<Vec<Ceiling>> {
    let growing = rounds(dir, duration, false)?;
    let overwrite = rounds(dir, duration, true)?;
    let per_event = (event_size + PER_EVENT_OVERHEAD) as f64;
    Ok([("growing", growing), ("overwrite", overwrite)]
        .into_iter()
        .map(|(file, (count, elapsed))| {
            let secs = elapsed.as_secs_f64().max(1e-9);
            let bytes_per_sec = (count * CHUNK) as f64 / secs;
            Ceiling {
                file,
                syncs_per_sec: count as f64 / secs,
                bytes_per_sec,
                events_per_sec: bytes_per_sec / per_event,
                round_us: secs * 1e6 / count.max(1) as f64,
            }
        })
        .collect())
}

/// Writes and syncs chunks for `duration`; returns the rounds done and the time they took.
fn rounds(dir: &Path, duration: Duration, prewritten: bool) -> Result<(usize, Duration)> {
    let path = dir.join("disk-ceiling.tmp");
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {path:?}"))?;
    let chunk = vec![b'x'; CHUNK];
    if prewritten {
        for i in 0..SEGMENT / CHUNK {
            file.write_all_at(&chunk, (i * CHUNK) as u64)?;
        }
        file.sync_all()?;
    }
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < duration {
        // A recycled segment is overwritten from the start; wrap around within one.
        let at = if prewritten {
            count % (SEGMENT / CHUNK) * CHUNK
        } else {
            count * CHUNK
        };
        file.write_all_at(&chunk, at as u64)
            .with_context(|| format!("writing {path:?}"))?;
        file.sync_data()
            .with_context(|| format!("syncing {path:?}"))?;
        count += 1;
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok((count, elapsed))
}

/// The median of each kind of file over the runs (by events/s).
pub fn medians(all: &[Ceiling]) -> Vec<Ceiling> {
    ["growing", "overwrite"]
        .into_iter()
        .filter_map(|file| {
            let mut of: Vec<&Ceiling> = all.iter().filter(|c| c.file == file).collect();
            of.sort_by(|a, b| a.events_per_sec.total_cmp(&b.events_per_sec));
            of.get(of.len() / 2).map(|c| (*c).clone())
        })
        .collect()
}

/// One line per ceiling (medians over the runs), for the table's footer.
pub fn lines(ceilings: &[Ceiling]) -> String {
    ceilings
        .iter()
        .map(|c| {
            format!(
                "disk ceiling ({} file, {} KiB per pwrite + fdatasync, no relay): {:.0} MB/s, {:.0} syncs/s, {:.0} µs per round = {:.0} events/s\n",
                c.file,
                CHUNK / 1024,
                c.bytes_per_sec / 1e6,
                c.syncs_per_sec,
                c.round_us,
                c.events_per_sec
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_both_files_and_cleans_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ceilings = measure(dir.path(), Duration::from_millis(50), 256).expect("measure");
        assert_eq!(ceilings.len(), 2);
        assert!(
            ceilings
                .iter()
                .all(|c| c.syncs_per_sec > 0.0 && c.events_per_sec > 0.0)
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        assert!(lines(&ceilings).contains("growing file"));
    }
}
