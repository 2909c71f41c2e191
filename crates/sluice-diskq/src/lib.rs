//! A durable, crash-safe, group-committing segment log used as a FIFO queue.
//!
//! `sluice-diskq` stores opaque byte entries and numbers them. It knows nothing about HTTP or
//! events: the relay encodes its events into entries and wraps this crate.
//!
//! Terms: an *entry* is what an appender hands in and a reader gets back; each has its own
//! sequence number (seq) and is acknowledged on its own. A *record* is the unit on disk, with
//! one header and one checksum, holding one entry ([`DiskQueue::append`]) or many
//! ([`DiskQueue::append_batch`]). Counters named `*_records` in [`Stats`] and
//! [`RecoveryReport`] count sequence numbers, i.e. entries.
//!
//! # Design constraints
//!
//! - **Nothing reported durable is lost.** [`DiskQueue::wait_durable`] resolves only once the
//!   entry is covered by the configured [`SyncPolicy`]; a write or sync error poisons the
//!   writer and every pending and later waiter gets the error instead.
//! - **Group commit.** Appenders copy their record into one in-memory batch and return its
//!   sequence numbers at once. A dedicated writer thread swaps the batch out, `write()`s it, and
//!   covers it with a single `fdatasync` (`File::sync_data`); every waiter covered by that sync is
//!   released by it. While it syncs, the next batch accumulates; right after a sync it lets
//!   the next one gather for up to [`Options::sync_gather`] (200 µs) while nobody waits on
//!   it, so that a stream of pipelined appends is covered by fewer, larger syncs (a
//!   `wait_durable` caller, a reader that has caught up, 1 MiB waiting, or a close ends the
//!   gathering; an append after a quiet moment is written at once). The writer thread lowers
//!   its nice value by 10 where the process may (root, `CAP_SYS_NICE`, `RLIMIT_NICE`): it is
//!   asleep in I/O most of the time, and on busy CPUs its wake-ups otherwise queue behind
//!   the appenders it is about to release. Files are never written through
//!   mmap; under [`SyncPolicy::Always`] they are written with `O_DIRECT` where the filesystem
//!   takes it ([`Options::direct_io`]), in whole blocks gathered into one `pwritev` per round,
//!   the last one padded with zeros to a 4 KiB boundary. A large batch handed over with
//!   [`DiskQueue::append_batch_taking`] is placed at a block boundary (behind a padding record)
//!   and written from its own buffer: no copy between the appender and the device.
//! - **Bounded memory.** Recovery streams through segments; readers are served from an
//!   in-memory tail of written batches they have not finished (bounded by
//!   [`Options::read_cache_bytes`]; a batch leaves it once read, or when newer writes push it
//!   out) and otherwise read segment files through a 256 KiB window. Memory does not grow with
//!   the backlog, and falls back once the reader has caught up.
//! - **Corruption is skipped, never fatal.** A bad record is skipped and counted; a torn tail is
//!   truncated. The queue refuses to open only if the directory is unreadable or locked by
//!   another live process.
//!
//! # Directory layout
//!
//! | file                          | contents                                                     |
//! | ----------------------------- | ------------------------------------------------------------ |
//! | `00000000000000000000.seg`    | a segment: records back to back, named by its first seq       |
//! | `checkpoint`                  | the acknowledged low-water mark (20 bytes, see below)         |
//! | `checkpoint.tmp`              | a checkpoint being written; removed on open                   |
//! | `lock`                        | held with an exclusive `flock` (fs4) while a queue is open    |
//! | `spare.seg.tmp`               | the next segment's blocks, written ahead: a recycled acknowledged segment, or `segment_bytes` zeros (see [`Options::preallocate`]); removed on open |
//! | `direct-io.probe.tmp`         | one block written at open to test `O_DIRECT`, removed at once |
//!
//! # Record layout (little-endian)
//!
//! | offset | size | field   | meaning                                                    |
//! | ------ | ---- | ------- | ---------------------------------------------------------- |
//! | 0      | 4    | length  | bits 0..30: payload bytes, at most 256 MiB (format limit); bit 31: the *entries* flag; bit 30: the *pad* flag |
//! | 4      | 4    | crc32c  | CRC-32C over `seq` and `payload` (then the length field, if flagged or a pad) |
//! | 8      | 8    | seq     | the sequence number of the record's first entry            |
//! | 16     | len  | payload | unflagged: one entry, opaque bytes                         |
//!
//! A flagged record's payload holds several entries, numbered `seq`, `seq + 1`, …:
//!
//! | offset | size | field   | meaning                                                    |
//! | ------ | ---- | ------- | ---------------------------------------------------------- |
//! | 0      | 4    | count   | number of entries, at least 2                              |
//! | 4      | 4    | len     | bytes of the first entry                                   |
//! | 8      | len  | entry   | opaque bytes; then `len` and `entry` again, `count` times  |
//!
//! A record of one entry is always written unflagged, so queues written before multi-entry
//! records existed read the same. A flagged record whose entries do not fill its payload
//! exactly, and a length field with any other bit above the limit set (or both flags), are
//! corrupt.
//!
//! A *padding record* (pad flag) holds no entry: its payload is zeros to skip, and its seq is
//! that of the record after it. The writer puts one in front of a large record to start it at
//! a direct-I/O block boundary; readers, recovery and `inspect` step over it. (Queues written
//! before padding existed read the same; a binary from before then counts a pad as a corrupt
//! record of no entries, and skips it.)
//!
//! A segment made from the spare holds its records followed by zeros up to `segment_bytes`,
//! or by a recycled file's old records: from a record boundary, zeros up to the end of a file
//! are unused space, not a record (an all-zero header never is one: its checksum field, 0,
//! never matches), and so are zeros up to the next 4 KiB boundary followed by a valid record
//! whose seq is below the expected one (sequence numbers only grow: it can only be old). The
//! segment's live end is where they start; appends overwrite them. A segment the writer
//! leaves is cut to its records, so only the active segment of a crashed queue holds either.
//!
//! Records never span segments. A segment rolls over when the next record would take it past
//! [`Options::segment_bytes`] (a record larger than that gets a segment of its own). Within a
//! segment sequence numbers are contiguous (a record's first seq is the previous record's first
//! seq plus its entry count), and they continue across segments and restarts: numbering
//! resumes at `max(seq of the last valid entry on disk + 1, low-water mark)`. So the seqs of
//! entries that were never durable and were lost in a crash are given out again; and when the
//! checkpoint is ahead of the data (acknowledged records lost with unsynced data), numbering
//! jumps to the low-water mark and continues in a fresh segment.
//!
//! # Limits
//!
//! | limit                                   | value                                          |
//! | --------------------------------------- | ---------------------------------------------- |
//! | record payload (a whole batch)          | `max_record_bytes` (default 16 MiB, ≤ 256 MiB) |
//! | entries per record                      | 2^26 (each takes at least 4 bytes of payload)  |
//! | segment size                            | `segment_bytes` (default 64 MiB), ≥ 4 KiB      |
//! | bytes on disk                           | `max_bytes`, counted in whole segments: a segment is deleted only once every record in it is acknowledged, so acknowledged records in the oldest segment still count. |
//! | bytes waiting for the writer            | 64 MiB (beyond it `append` reports `Full`)     |
//! | in-memory read tail                     | `read_cache_bytes` (default 8 MiB) of buffer memory, plus the memos of entries not yet read; only batches not yet read |
//! | recycled chunk buffers                  | 4 MiB                                          |
//! | sequence numbers                        | below 2^63 (a record claiming more is corrupt) |
//!
//! # Writing, reading, acknowledging
//!
//! - [`DiskQueue::append`] assigns the next seq and buffers the record; it fails fast with
//!   [`AppendError::Full`] at `max_bytes` (nothing is ever dropped by this crate).
//!   [`DiskQueue::append_batch`] does the same for every entry of a [`RecordBatch`] at once:
//!   one lock, one record, one checksum (for a large batch, computed before the lock is
//!   taken, so that only a combination with the seq's checksum happens under it).
//!   [`DiskQueue::append_batch_taking`] takes a large batch's buffer as the record itself
//!   instead of copying it (the batch keeps room for the header at its front).
//! - An appender may attach a *memo* (any `M: Clone + Send + Sync`) to each entry: it stays in
//!   memory beside the written data and comes back with the entry when the reader is served
//!   from the in-memory tail, so the reader need not decode the bytes. The reader gets the
//!   memo itself (moved out, not cloned): the queue keeps no reference to it afterwards.
//!   Memos are never written; one not yet read is dropped when its data leaves the tail or
//!   the queue is reopened, and the entry then comes back without one.
//! - The writer thread publishes two watermarks: *written* (handed to the OS) and *durable*
//!   (covered by the sync policy). Readers see a record once it is durable, so nothing is ever
//!   delivered that could still vanish or whose producer could still be told it failed (with
//!   `Always` that costs the reader one group sync; [`Options::read_before_durable`] trades
//!   this away for latency).
//! - [`DiskQueue::read_entries`] (and [`DiskQueue::read_batch`], without memos) hands each
//!   entry out once per process lifetime, in order; a read may stop inside a multi-entry
//!   record, and the next one continues there.
//! - [`DiskQueue::ack`] and [`DiskQueue::ack_many`] may arrive out of order; the contiguous
//!   low-water mark is written to the checkpoint at most every [`Options::checkpoint_interval`]
//!   (sooner when it frees a segment), and a segment is deleted once the checkpoint covers all its
//!   entries.
//!
//! # Checkpoint layout (little-endian)
//!
//! | offset | size | field     | meaning                                                |
//! | ------ | ---- | --------- | ------------------------------------------------------ |
//! | 0      | 4    | magic     | `SLQC`                                                 |
//! | 4      | 4    | version   | 1                                                      |
//! | 8      | 8    | low_water | every seq below it is acknowledged                     |
//! | 16     | 4    | crc32c    | CRC-32C over bytes 0..16                               |
//!
//! It is replaced atomically: written to `checkpoint.tmp`, `fsync`ed, renamed, and the directory
//! `fsync`ed. A segment is deleted only after a checkpoint covering all its records is durable.
//!
//! # Recovery, and what a bad byte does
//!
//! On open the checkpoint is read and segments are scanned forward, verifying every checksum.
//! Everything at or above the low-water mark is handed out again (at-least-once: acks that were
//! not yet checkpointed are lost, and those records come back).
//!
//! - **A bad record** (checksum mismatch, impossible length, malformed entries, stale seq) is
//!   skipped: the scanner resynchronises on the next offset holding a record with a sane
//!   length, a sequence number consistent with the bytes skipped, a matching checksum and
//!   well-formed entries. The lost sequence numbers (every entry of the lost records) are
//!   counted in `corrupt_records` (and treated as acknowledged), the bytes in `corrupt_bytes`.
//! - **A torn tail** (bytes at the end of the last segment that are not a record and not all
//!   zero, with nothing valid after them) is truncated and counted in `truncated_bytes` (up to
//!   where a final run of zeros begins). A bit flip in the very last record looks the same,
//!   and is treated the same. A torn multi-entry record loses all its entries; none of them
//!   had been reported durable. Zeros followed by stray record bytes (a crash that persisted
//!   a later page of a write and not an earlier one) are a torn tail too.
//! - **Zeros after the last record** (unused preallocated space, or a write whose data never
//!   reached the disk, so never reported durable) end the segment cleanly: nothing is
//!   reported or truncated.
//! - **A damaged checkpoint** is ignored: everything on disk is replayed.
//! - A length field of 4 GiB costs nothing: lengths are checked against the format limit and
//!   the bytes actually in the file before anything is read or allocated.
//!
//! # Using it
//!
//! ```no_run
//! use sluice_diskq::{DiskQueue, Options, RecordBatch};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Recovery does blocking file I/O: call `open` from `spawn_blocking` in an async program.
//! // The memo type (here `u32`) is whatever the reader wants back beside the bytes.
//! let (queue, report) =
//!     DiskQueue::<u32>::open("/var/lib/sluice/queues/upstream", Options::default())?;
//! println!("{report}");
//! let seq = queue.append(b"an encoded event")?;
//! queue.wait_durable(seq).await?; // now it may be acknowledged to the producer
//! let mut batch = RecordBatch::new();
//! batch.push(b"one");
//! batch.push_with(|buf| buf.extend_from_slice(b"two, encoded in place"));
//! let seqs = queue.append_batch(&batch, vec![1, 2])?;
//! queue.wait_durable(seqs.end - 1).await?;
//! let entries = queue.read_entries(512, 1 << 20).await?;
//! for entry in &entries {
//!     // … deliver `entry.memo` if it is there, else decode `entry.bytes`.
//! }
//! let seqs: Vec<_> = entries.iter().map(|e| e.seq).collect();
//! queue.ack_many(&seqs);
//! queue.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Dropping the last handle without `close()` also flushes, syncs and checkpoints (joining the
//! writer thread, so it blocks for a moment); only a real crash skips that.

mod acks;
mod append;
mod batch;
mod bufpool;
mod checkpoint;
mod crc;
mod direct;
mod error;
mod inspect;
mod latency;
mod prep;
mod queue;
mod reader;
pub mod record;
mod recovery;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use batch::RecordBatch;
pub use checkpoint::CheckpointStatus;
pub use error::{AppendError, Error, WriteFailure};
pub use inspect::{InspectReport, SegmentReport, inspect};
pub use latency::LatencyHistogram;
pub use queue::DiskQueue;
pub use reader::{Entry, MemoOr};
pub use recovery::{RecoveryReport, SkippedRegion};

/// An entry's sequence number: per queue, contiguous from 0, surviving restarts.
pub type Seq = u64;

/// When appended records become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every write batch is followed by an `fdatasync`; `wait_durable` resolves after it.
    Always,
    /// Batches are written at once and synced at most this often; `wait_durable` resolves after
    /// the next periodic sync covering the record.
    Every(Duration),
    /// Never sync (except when a segment rolls over, and on close): `wait_durable` resolves
    /// once `write()` returned. Survives a process crash, not a power loss.
    Never,
}

/// Queue configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// Upper bound of bytes on disk (see the limits table: counted in whole segments).
    pub max_bytes: u64,
    /// Target size of a segment file (default 64 MiB).
    pub segment_bytes: u64,
    /// Largest record payload accepted by `append` and `append_batch` (for a batch: its
    /// [`RecordBatch::payload_bytes`]; default 16 MiB, at most 256 MiB).
    pub max_record_bytes: u32,
    /// When records become durable (default [`SyncPolicy::Always`]).
    pub sync: SyncPolicy,
    /// Under [`SyncPolicy::Always`], how long the writer may gather appends after a sync
    /// before it writes and syncs them (default 200 µs; zero: never). A sync costs CPU whatever
    /// it covers (the write and flush requests, their interrupts, the wake-ups it causes), so
    /// for a stream of appends nobody waits on yet (a producer that keeps several writes in
    /// flight, and a reader with a backlog) fewer, larger syncs leave more CPU to everything
    /// else. The gathering ends as soon as anyone calls [`DiskQueue::wait_durable`] for an
    /// entry not yet durable, or a reader has read everything durable and waits for more, so
    /// neither a producer waiting for its ack nor a consumer that has caught up is kept waiting
    /// by it; and once 1 MiB waits to be written. In effect it gathers only when the queue is
    /// busy both ways, where the CPU it saves is what limits throughput. It begins only right after a sync: an append to a queue that has not synced
    /// for this long is written at once. Measured in S2 and S3 on 2 vCPUs: see the section of
    /// 2026-12-07 afternoon in BENCHMARKS.md.
    pub sync_gather: Duration,
    /// Longest time an advanced low-water mark waits before being checkpointed (default 1 s).
    pub checkpoint_interval: Duration,
    /// Memory of written batches kept for the reader until it has read them (default 8 MiB,
    /// counted in buffer capacity). The memos attached to their entries are kept until read
    /// (or until their batch leaves), and are not counted. Appenders that pace themselves to
    /// the reader ([`DiskQueue::pace_to_reader`]) wait while it has more than half of this
    /// left to read.
    pub read_cache_bytes: usize,
    /// Hand records to readers as soon as they are written, before they are durable (default
    /// false). Lowers delivery latency under `SyncPolicy::Every`, at a price: if the sync then
    /// fails, or the machine loses power first, a record may have been delivered that its
    /// producer was told failed (or never heard about), and after a power loss its seq may be
    /// given to another record.
    pub read_before_durable: bool,
    /// Keep one spare segment file of blocks already written, so that new segments overwrite
    /// existing blocks rather than grow a file, which makes each `fdatasync` about twice as
    /// fast and half as costly in CPU (default true). With direct I/O, an acknowledged segment
    /// of at least half a segment is renamed to the spare instead of being deleted (recycled:
    /// no byte written); otherwise a background thread writes `segment_bytes` zeros, only once
    /// the active segment is a quarter full (giving the segment before it time to be
    /// acknowledged and recycled) and only while syncs are small (under 128 KiB on average
    /// since the preparer last looked: for large group commits the zeros cost more than they
    /// save). The spare is real disk usage: it is
    /// kept only while `bytes on disk + 2 * segment_bytes <= max_bytes`. See `prep.rs`.
    pub preallocate: bool,
    /// Write segments with `O_DIRECT` under [`SyncPolicy::Always`], where the filesystem takes
    /// it (default true). Every write is synced at once anyway, so the page cache only adds
    /// work: the copy, page and buffer-head allocation for each new segment, and the walk at
    /// `fdatasync`. Measured: about half the CPU per write + sync, and a shorter round. Other
    /// sync policies always write through the page cache, which is what lets their writes
    /// return before the disk has them. See `direct.rs`.
    pub direct_io: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 10 * 1024 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 16 * 1024 * 1024,
            sync: SyncPolicy::Always,
            sync_gather: Duration::from_micros(200),
            checkpoint_interval: Duration::from_secs(1),
            read_cache_bytes: 8 * 1024 * 1024,
            read_before_durable: false,
            preallocate: true,
            direct_io: true,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<(), Error> {
        if self.max_record_bytes > record::FORMAT_MAX_PAYLOAD {
            return Err(Error::InvalidOptions(format!(
                "max_record_bytes: expected at most {}, found {}",
                record::FORMAT_MAX_PAYLOAD,
                self.max_record_bytes
            )));
        }
        if self.segment_bytes < 4096 {
            return Err(Error::InvalidOptions(format!(
                "segment_bytes: expected at least 4096, found {}",
                self.segment_bytes
            )));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(Error::InvalidOptions(format!(
                "max_bytes: expected at least segment_bytes ({}), found {}",
                self.segment_bytes, self.max_bytes
            )));
        }
        let largest = u64::from(self.max_record_bytes) + record::HEADER_LEN as u64;
        if self.max_bytes < largest {
            return Err(Error::InvalidOptions(format!(
                "max_bytes: expected at least max_record_bytes + {} ({largest}) so that every \
                 accepted record fits, found {}",
                record::HEADER_LEN,
                self.max_bytes
            )));
        }
        if let SyncPolicy::Every(d) = self.sync
            && d.is_zero()
        {
            return Err(Error::InvalidOptions(
                "sync: expected a non-zero interval for Every, found 0; use Always".into(),
            ));
        }
        Ok(())
    }
}

/// A snapshot of the queue's counters and watermarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// The seq the next append will get.
    pub next_seq: Seq,
    /// Every seq below this is acknowledged.
    pub acked_low_water: Seq,
    /// The low-water mark last written to the checkpoint.
    pub checkpointed_low_water: Seq,
    /// Entries appended (or recovered) and not yet acknowledged.
    pub unacked_records: u64,
    /// The seq the next `read_entries` starts at.
    pub read_seq: Seq,
    /// Every seq below this has been handed to the OS.
    pub written_seq: Seq,
    /// Every seq below this is durable per the sync policy.
    pub durable_seq: Seq,
    /// Bytes in segment files, including bytes waiting to be written.
    pub bytes_on_disk: u64,
    /// Bytes appended but not yet written.
    pub pending_bytes: u64,
    /// Number of segments (including the active one).
    pub segments: usize,
    /// `fdatasync` calls on segment files.
    pub fsyncs: u64,
    /// Entries made durable by those syncs.
    pub records_synced: u64,
    /// Bytes written to segment files by this process.
    pub bytes_written: u64,
    /// Checkpoints written by this process.
    pub checkpoints: u64,
    /// Entries lost to corruption (at recovery or while reading).
    pub corrupt_records: u64,
    /// Bytes skipped because of corruption.
    pub corrupt_bytes: u64,
    /// Whether a write or sync failed (the queue refuses writes until reopened).
    pub write_failed: bool,
    /// Entries readers got from segment files rather than from the in-memory tail of recent
    /// writes (they fell further behind than [`Options::read_cache_bytes`], or the queue was
    /// reopened). Each costs a file read and a decode, and has no memo.
    pub file_read_entries: u64,
    /// Memory the in-memory tail holds: written chunks the reader has not finished, at most
    /// [`Options::read_cache_bytes`].
    pub tail_bytes: u64,
    /// Segments created from a spare (zero-filled or recycled) by this process.
    pub preallocated_segments: u64,
    /// Acknowledged segments renamed to the spare instead of deleted (see
    /// [`Options::preallocate`]).
    pub recycled_segments: u64,
    /// Bytes of the spare segment file on disk (ready, or being prepared).
    pub spare_bytes: u64,
}
