//! The checkpoint: the persisted acknowledged low-water mark.
//!
//! ```text
//! offset  size  field
//! 0       4     magic     b"SLQC"
//! 4       4     version   u32 LE, currently 1
//! 8       8     low_water u64 LE: every seq below it is acknowledged
//! 16      4     crc32c    u32 LE over bytes 0 .. 16
//! ```
//!
//! It is replaced atomically: written to `checkpoint.tmp`, `fsync`ed, renamed over
//! `checkpoint`, and the directory `fsync`ed, so a crash leaves either the old or the new file.
//! A checkpoint that cannot be read (wrong size, magic or checksum) is reported and ignored:
//! the queue then replays everything still on disk (at-least-once) rather than refusing to start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::{Error, Seq};

/// File name of the checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// File name the checkpoint is written to before being renamed into place.
pub const CHECKPOINT_TMP: &str = "checkpoint.tmp";

const MAGIC: &[u8; 4] = b"SLQC";
const VERSION: u32 = 1;
const LEN: usize = 20;

/// What was found in the checkpoint file at open or inspection time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// No checkpoint file: a new queue, or one that never acknowledged anything.
    Missing,
    /// A valid checkpoint with this low-water mark.
    Loaded(Seq),
    /// The file exists but is not a valid checkpoint; everything on disk is replayed.
    Corrupt(String),
}

impl CheckpointStatus {
    /// The low-water mark, if a valid checkpoint was found.
    pub fn low_water(&self) -> Option<Seq> {
        match self {
            CheckpointStatus::Loaded(l) => Some(*l),
            _ => None,
        }
    }
}

impl std::fmt::Display for CheckpointStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointStatus::Missing => f.write_str("missing"),
            CheckpointStatus::Loaded(l) => write!(f, "acked below {l}"),
            CheckpointStatus::Corrupt(why) => write!(f, "corrupt ({why})"),
        }
    }
}

/// Encodes a checkpoint.
fn encode(low_water: Seq) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[0..4].copy_from_slice(MAGIC);
    out[4..8].copy_from_slice(&VERSION.to_le_bytes());
    out[8..16].copy_from_slice(&low_water.to_le_bytes());
    let crc = crc32c::crc32c(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes checkpoint bytes, saying what is wrong if they are not valid.
fn decode(bytes: &[u8]) -> Result<Seq, String> {
    let b: &[u8; LEN] = bytes
        .try_into()
        .map_err(|_| format!("expected {LEN} bytes, found {}", bytes.len()))?;
    if &b[0..4] != MAGIC {
        return Err(format!("expected magic \"SLQC\", found {:02x?}", &b[0..4]));
    }
    let [v0, v1, v2, v3] = [b[4], b[5], b[6], b[7]];
    let version = u32::from_le_bytes([v0, v1, v2, v3]);
    if version != VERSION {
        return Err(format!("expected version {VERSION}, found {version}"));
    }
    let stored = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    let computed = crc32c::crc32c(&b[..16]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: computed {computed:#010x}, stored {stored:#010x}"
        ));
    }
    let low = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    if low > crate::record::MAX_SEQ + 1 {
        return Err(format!(
            "expected a low-water mark of at most {}, found {low}",
            crate::record::MAX_SEQ + 1
        ));
    }
    Ok(low)
}

/// Reads the checkpoint of `dir`. Only an unreadable file (not a bad one) is an error.
pub fn read(dir: &Path) -> Result<CheckpointStatus, Error> {
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(match decode(&bytes) {
            Ok(low) => CheckpointStatus::Loaded(low),
            Err(why) => CheckpointStatus::Corrupt(format!("{}: {why}", path.display())),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CheckpointStatus::Missing),
        Err(e) => Err(Error::io("read", path, None, e)),
    }
}

/// `fsync`s a directory so that renames, creations and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, None, e))
}

/// Atomically replaces the checkpoint of `dir` with `low_water`.
pub fn write(dir: &Path, low_water: Seq) -> Result<(), Error> {
    let tmp = dir.join(CHECKPOINT_TMP);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io("create", &tmp, None, e))?;
    file.write_all(&encode(low_water))
        .map_err(|e| Error::io("write", &tmp, Some(0), e))?;
    file.sync_all()
        .map_err(|e| Error::io("fsync", &tmp, None, e))?;
    drop(file);
    let path = dir.join(CHECKPOINT_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, None, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_checkpoint_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), CheckpointStatus::Missing);
        write(dir.path(), 1234).unwrap();
        assert_eq!(read(dir.path()).unwrap(), CheckpointStatus::Loaded(1234));
        write(dir.path(), 99).unwrap();
        assert_eq!(read(dir.path()).unwrap(), CheckpointStatus::Loaded(99));
        assert!(!dir.path().join(CHECKPOINT_TMP).exists());
    }

    #[test]
    fn damaged_checkpoint_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 7).unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            matches!(read(dir.path()).unwrap(), CheckpointStatus::Corrupt(why) if why.contains("checksum"))
        );
        std::fs::write(&path, b"short").unwrap();
        assert!(
            matches!(read(dir.path()).unwrap(), CheckpointStatus::Corrupt(why) if why.contains("expected 20 bytes"))
        );
    }
}
