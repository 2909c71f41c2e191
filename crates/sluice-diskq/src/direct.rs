//! Direct I/O for segment writes: whole aligned blocks, straight to the device.
//!
//! Why: under [`crate::SyncPolicy::Always`] every write is followed by an `fdatasync`, so the
//! page cache buys nothing: the kernel copies each byte into it, allocates pages and buffer
//! heads for a file that is new every segment, walks them again at the sync, and frees them
//! when the segment is deleted. Measured on the development VM (a C loop, 384 KiB per round,
//! a new 64 MiB file each time one fills): 360–370 µs of CPU per write + sync buffered, against
//! 150–170 µs with `O_DIRECT`, and the round's wall time fell from 1.1 ms to 0.7–0.8 ms.
//!
//! `O_DIRECT` wants the file offset, the length and the memory of each write aligned to the
//! device's direct-I/O alignment (its logical block size and DMA alignment, 512 B or 4 KiB:
//! [`alignment`] probes it). Records are appended at any byte, so a [`DirectStage`] gathers a
//! segment's writes into one `pwritev` of aligned pieces:
//!
//! - Small records are copied into the stage, an aligned buffer.
//! - A large record taken from its batch (see `batch.rs`) starts at an aligned offset in the
//!   file, behind a padding record (see `record.rs`), and at an aligned address in memory: its
//!   whole blocks go to the device from its own buffer, and only its last partial block is
//!   copied into the stage ([`DirectStage::write_from`]). Before this, copying every record
//!   into the stage was 4–6 % of the relay's CPU in S2.
//! - The block a write ends in is padded with zeros up to a [`BLOCK`] boundary, which recovery
//!   reads as unused space after the last record (see `segment.rs`); the next write rewrites
//!   that block with the same leading bytes, which the stage kept, plus the new ones. A torn
//!   rewrite can only tear bytes that are identical before and after, so it never damages a
//!   record already durable.
//! - A segment the writer did not write in this process (reopened after recovery) has its last
//!   partial block read back from the file before the first write to it.
//! - The file on disk may extend up to one block past the live end (zeros), like a segment
//!   made from a spare extends to `segment_bytes`.
//!
//! Direct I/O is used only where the filesystem takes it: [`alignment`] probes the queue's
//! directory once at open (tmpfs, for one, refuses `O_DIRECT` on older kernels), and the
//! writer falls back to buffered writes if it does not. It is Linux-only; elsewhere
//! [`alignment`] is always `None`.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

/// The largest direct-I/O alignment Linux devices want (512 B or 4 KiB): the alignment of the
/// stage's and record batches' memory, and the boundary every write's zero padding reaches.
pub(crate) const BLOCK: usize = 4096;

/// The smallest logical block size Linux devices have: what [`alignment`] tries first.
const SMALL_ALIGN: usize = 512;

/// Bytes staged before a write is issued mid-batch (a batch larger than this is written in
/// several pieces, each whole blocks).
const STAGE_BYTES: usize = 1024 * 1024;

/// Pieces a write gathers at most (the kernel takes up to 1024 in one `pwritev`).
const MAX_PIECES: usize = 256;

/// Name of the file [`supported`] writes, and removes, to test the directory.
const PROBE_FILE: &str = "direct-io.probe.tmp";

/// Opens `path` for writing (creating it if needed), with `O_DIRECT` if `direct`.
pub(crate) fn open_for_write(path: &Path, direct: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    if direct {
        // A direct write of a partial block first reads that block back (`DirectStage::seek`).
        opts.read(true);
        set_direct(&mut opts);
    }
    opts.open(path)
}

/// Adds `O_DIRECT` to `opts` (on Linux; elsewhere nothing).
#[cfg(target_os = "linux")]
pub(crate) fn set_direct(opts: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    opts.custom_flags(libc::O_DIRECT);
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn set_direct(_opts: &mut OpenOptions) {}

/// Whether segment files in `dir` can be written with `O_DIRECT`, and with what alignment of
/// offsets, lengths and memory: opens a probe file there with it, writes one [`BLOCK`], then
/// tries 512 bytes at offset 512 from memory aligned to 512 only. Any failure of the first
/// write means no direct I/O; of the second, an alignment of a whole `BLOCK`.
pub(crate) fn alignment(dir: &Path) -> Option<usize> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let path = dir.join(PROBE_FILE);
    let probe = || -> io::Result<usize> {
        let file = open_for_write(&path, true)?;
        let mut buf = AlignedBuf::new(2 * BLOCK);
        file.write_all_at(&buf.as_mut_slice()[..BLOCK], 0)?;
        let small = SMALL_ALIGN;
        Ok(
            match file.write_all_at(&buf.as_mut_slice()[small..2 * small], small as u64) {
                Ok(()) => small,
                Err(_) => BLOCK,
            },
        )
    };
    let result = probe();
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(align) => Some(align),
        Err(e) => {
            tracing::info!(dir = %dir.display(), error = %e, "The disk queue's filesystem refuses direct I/O; writing segments through the page cache.");
            None
        }
    }
}

/// Whether segment files in `dir` can be written with `O_DIRECT` (see [`alignment`]).
#[cfg(test)]
pub(crate) fn supported(dir: &Path) -> bool {
    alignment(dir).is_some()
}

/// A zeroed buffer whose usable part starts at a [`BLOCK`] boundary in memory. Safe code: it
/// over-allocates by one block and uses the aligned window inside.
pub(crate) struct AlignedBuf {
    bytes: Vec<u8>,
    skew: usize,
    cap: usize,
}

impl AlignedBuf {
    pub(crate) fn new(cap: usize) -> Self {
        let bytes = vec![0u8; cap + BLOCK];
        let skew = bytes.as_ptr().align_offset(BLOCK).min(BLOCK);
        AlignedBuf { bytes, skew, cap }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[self.skew..self.skew + self.cap]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        let (skew, cap) = (self.skew, self.cap);
        &mut self.bytes[skew..skew + cap]
    }
}

/// One part of a pending write: bytes of the stage, or whole blocks of a record's own buffer.
enum Piece {
    Staged(Range<usize>),
    Borrowed(Bytes),
}

/// Collects one segment's writes into aligned blocks, and writes them with one `pwritev` (see
/// the module doc).
pub(crate) struct DirectStage {
    buf: AlignedBuf,
    /// The device's direct-I/O alignment (offsets, lengths and memory): 512 or 4096.
    align: usize,
    /// File offset of the pending write's first byte; always a multiple of `align`.
    start: u64,
    /// The pending write's closed pieces, in file order from `start`.
    pieces: Vec<Piece>,
    /// The open piece is `buf[open..used]`; it starts at an `align` boundary, in the file and
    /// in `buf`, and so does every closed piece.
    open: usize,
    used: usize,
    /// Bytes of the pending write, the open piece included.
    len: u64,
    /// Whether any pending byte has not been written yet.
    dirty: bool,
}

impl DirectStage {
    /// A stage for a device with direct-I/O alignment `align` (see [`alignment`]).
    pub(crate) fn new(align: usize) -> Self {
        DirectStage {
            // Room past the stage for the zeros that pad a write to a block boundary.
            buf: AlignedBuf::new(STAGE_BYTES + BLOCK),
            align,
            start: 0,
            pieces: Vec::new(),
            open: 0,
            used: 0,
            len: 0,
            dirty: false,
        }
    }

    /// Forgets what is staged (the next write is to another file). Unwritten bytes are lost:
    /// call [`DirectStage::flush`] first.
    pub(crate) fn reset(&mut self) {
        self.start = 0;
        self.pieces.clear();
        self.open = 0;
        self.used = 0;
        self.len = 0;
        self.dirty = false;
    }

    /// The file offset the next staged byte goes to.
    fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Stages a copy of `data` for file offset `offset` of `file`, writing the stage out when it
    /// fills.
    pub(crate) fn write_at(&mut self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        if offset != self.end() {
            self.flush(file)?;
            self.seek(file, offset)?;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let room = STAGE_BYTES - self.used;
            let (now, later) = rest.split_at(rest.len().min(room));
            let used = self.used;
            self.buf.as_mut_slice()[used..used + now.len()].copy_from_slice(now);
            self.used += now.len();
            self.len += now.len() as u64;
            self.dirty = true;
            rest = later;
            if self.used == STAGE_BYTES {
                self.flush(file)?;
            }
        }
        Ok(())
    }

    /// Like [`DirectStage::write_at`], but `data`'s whole blocks are written from `data`
    /// itself, not copied, when `offset` and `data`'s address are both aligned (the rest, less
    /// than a block, is staged). Otherwise it is copied like any other write.
    pub(crate) fn write_from(&mut self, file: &File, data: Bytes, offset: u64) -> io::Result<()> {
        let align = self.align as u64;
        let whole = data.len() / self.align * self.align;
        if !offset.is_multiple_of(align)
            || !(data.as_ptr() as usize).is_multiple_of(self.align)
            || whole == 0
        {
            return self.write_at(file, &data, offset);
        }
        if offset != self.end() {
            self.flush(file)?;
            self.seek(file, offset)?;
        }
        // The open piece ends at `offset`, a boundary: it is whole blocks, and the next piece of
        // the stage starts at a boundary of `buf` too.
        if self.used > self.open {
            self.pieces.push(Piece::Staged(self.open..self.used));
            self.open = self.used;
        }
        self.pieces.push(Piece::Borrowed(data.slice(..whole)));
        self.len += whole as u64;
        self.dirty = true;
        self.write_at(file, &data[whole..], offset + whole as u64)?;
        if self.pieces.len() >= MAX_PIECES {
            self.flush(file)?;
        }
        Ok(())
    }

    /// Writes what is pending, its last block padded with zeros, and keeps the leading bytes of
    /// its last partial `align` block for the next write.
    pub(crate) fn flush(&mut self, file: &File) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let end = self.end();
        let zeros = (end.next_multiple_of(BLOCK as u64) - end) as usize;
        let (open, used) = (self.open, self.used);
        let stage = self.buf.as_mut_slice();
        stage[used..used + zeros].fill(0);
        let stage = self.buf.as_slice();
        let mut slices: Vec<IoSlice<'_>> = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Staged(r) => IoSlice::new(&stage[r.clone()]),
                Piece::Borrowed(b) => IoSlice::new(b),
            })
            .collect();
        if used + zeros > open {
            slices.push(IoSlice::new(&stage[open..used + zeros]));
        }
        write_all_vectored_at(file, &mut slices, self.start)?;
        // The open piece starts at a boundary, so the partial block lies within it.
        let keep = (end % self.align as u64) as usize;
        self.buf.as_mut_slice().copy_within(used - keep..used, 0);
        self.start = end - keep as u64;
        self.len = keep as u64;
        self.pieces.clear();
        self.open = 0;
        self.used = keep;
        self.dirty = false;
        Ok(())
    }

    /// Starts staging at `offset`, reading back the bytes of its block before it.
    fn seek(&mut self, file: &File, offset: u64) -> io::Result<()> {
        let head = (offset % self.align as u64) as usize;
        self.reset();
        self.start = offset - head as u64;
        self.len = head as u64;
        self.used = head;
        if head > 0 {
            let block = &mut self.buf.as_mut_slice()[..self.align];
            block.fill(0);
            // One aligned read: a short count means the file ends inside the block (a direct
            // read cannot resume at an unaligned offset, and needs not).
            let got = loop {
                match file.read_at(block, self.start) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            };
            if got < head {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the segment ends at {}, before the write offset {offset}",
                        self.start + got as u64
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Writes all of `slices` at `offset` with `pwritev`, resuming after a short write.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    while !slices.is_empty() {
        match rustix::io::pwritev(file, slices, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the device took no bytes of a write",
                ));
            }
            Ok(n) => {
                IoSlice::advance_slices(&mut slices, n);
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_and_file(direct: bool) -> (tempfile::TempDir, File, DirectStage) {
        let dir = tempfile::tempdir().unwrap();
        let align = alignment(dir.path()).filter(|_| direct);
        let file = open_for_write(&dir.path().join("seg"), align.is_some()).unwrap();
        (dir, file, DirectStage::new(align.unwrap_or(BLOCK)))
    }

    fn contents(dir: &tempfile::TempDir) -> Vec<u8> {
        std::fs::read(dir.path().join("seg")).unwrap()
    }

    #[test]
    fn writes_land_at_their_offsets_padded_to_a_block() {
        for direct in [true, false] {
            let (dir, file, mut stage) = stage_and_file(direct);
            let mut expect = Vec::new();
            for (i, n) in [10usize, 5000, 4086, 1, 3 * STAGE_BYTES / 2, 77]
                .into_iter()
                .enumerate()
            {
                let data = vec![i as u8 + 1; n];
                stage.write_at(&file, &data, expect.len() as u64).unwrap();
                expect.extend_from_slice(&data);
                if i % 2 == 1 {
                    stage.flush(&file).unwrap();
                }
            }
            stage.flush(&file).unwrap();
            let got = contents(&dir);
            assert_eq!(got.len(), expect.len().next_multiple_of(BLOCK));
            assert_eq!(&got[..expect.len()], &expect[..]);
            assert!(got[expect.len()..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn a_write_elsewhere_reads_back_the_head_of_its_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, vec![7u8; 6000]).unwrap();
        let align = alignment(dir.path());
        let file = open_for_write(&path, align.is_some()).unwrap();
        let mut stage = DirectStage::new(align.unwrap_or(BLOCK));
        stage.write_at(&file, &[9u8; 100], 5000).unwrap();
        stage.flush(&file).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got[..5000].iter().all(|&b| b == 7));
        assert!(got[5000..5100].iter().all(|&b| b == 9));
        assert!(got[5100..].iter().all(|&b| b == 0), "padding is zeros");
    }

    #[test]
    fn a_write_past_the_end_of_the_file_is_an_error_not_a_gap() {
        let (_dir, file, mut stage) = stage_and_file(true);
        let err = stage.write_at(&file, &[1u8; 10], 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_flush_with_nothing_new_writes_nothing() {
        let (dir, file, mut stage) = stage_and_file(true);
        stage.flush(&file).unwrap();
        assert!(contents(&dir).is_empty());
        stage.write_at(&file, &[1u8; 10], 0).unwrap();
        stage.flush(&file).unwrap();
        stage.flush(&file).unwrap();
        assert_eq!(contents(&dir).len(), BLOCK);
    }

    /// `n` bytes of `fill` at a `BLOCK`-aligned address, as a taken record's buffer is.
    fn aligned_bytes(n: usize, fill: u8, skew: usize) -> Bytes {
        let mut v = vec![fill; n + 2 * BLOCK];
        let at = (v.as_ptr() as usize).wrapping_neg() % BLOCK + skew;
        v[..at].fill(0xee);
        Bytes::from(v).slice(at..at + n)
    }

    #[test]
    fn records_written_from_their_own_buffers_land_like_copied_ones() {
        for direct in [true, false] {
            let (dir, file, mut stage) = stage_and_file(direct);
            let align = stage.align;
            let mut expect = Vec::new();
            // Copied and borrowed writes, aligned and not, with flushes in between and a
            // stage that fills up.
            let plan: [(usize, bool, usize); 9] = [
                (100, false, 0),
                (align - 100, false, 0),
                (5 * align + 17, true, 0),
                (align - 17, false, 0),
                (3 * align, true, 0),
                (10, true, 0),
                (align - 10 + 2 * align, true, 3),
                (2 * STAGE_BYTES, false, 0),
                (7 * align + 1, true, 0),
            ];
            for (i, (n, borrowed, skew)) in plan.into_iter().enumerate() {
                let fill = i as u8 + 1;
                let at = expect.len() as u64;
                if borrowed {
                    stage
                        .write_from(&file, aligned_bytes(n, fill, skew), at)
                        .unwrap();
                } else {
                    stage.write_at(&file, &vec![fill; n], at).unwrap();
                }
                expect.extend(std::iter::repeat_n(fill, n));
                if i % 3 == 2 {
                    stage.flush(&file).unwrap();
                }
            }
            stage.flush(&file).unwrap();
            let got = contents(&dir);
            assert_eq!(
                got.len(),
                expect.len().next_multiple_of(BLOCK),
                "direct: {direct}"
            );
            assert!(got[..expect.len()] == expect[..], "direct: {direct}");
            assert!(got[expect.len()..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn the_probe_finds_an_alignment_the_device_takes() {
        let dir = tempfile::tempdir().unwrap();
        if let Some(align) = alignment(dir.path()) {
            assert!(align == SMALL_ALIGN || align == BLOCK);
            assert!(!dir.path().join(PROBE_FILE).exists());
        }
    }
}
