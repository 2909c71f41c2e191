//! Chunk buffers, recycled between the in-memory tail and the appenders.
//!
//! Appenders copy records into a pending chunk's buffer; the writer writes it and keeps it in
//! the read tail as [`Bytes`]. Allocating each chunk's buffer afresh (and growing it by
//! doubling while appends accumulate during a sync) cost page faults, page zeroing and
//! `realloc` copies on every chunk. So a chunk starts from a generously sized buffer taken from
//! this pool, and the buffer comes back to the pool when the last handle to its bytes is
//! dropped (the tail evicting it, or a reader letting go of the last entry sliced from it).
//!
//! Invariants:
//! - The pool holds at most [`POOL_MAX_BYTES`] of buffer capacity; buffers beyond that, or
//!   larger than it, are freed.
//! - A small chunk does not pin a large buffer in the tail: if it fills less than an eighth of
//!   its buffer, its bytes are copied out and the buffer goes back to the pool at once.
//! - Its mutex is only ever taken last (possibly while the queue's state lock is held, never
//!   the reverse), so it cannot deadlock.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

/// Capacity a fresh chunk buffer starts with. A buffer that had to grow keeps its size when
/// recycled, so after a warm-up chunks no longer grow. (256 KiB measured no better: under light
/// load the tail, counted in capacity, then holds fewer chunks.)
pub(crate) const CHUNK_START: usize = 64 * 1024;

/// Buffer capacity the pool keeps at most.
pub(crate) const POOL_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Spare chunk buffers. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    bufs: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// An empty buffer of at least `at_least` bytes of capacity (and usually far more).
    pub fn take(&self, at_least: usize) -> Vec<u8> {
        let mut buf = self
            .bufs
            .lock()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(at_least.max(CHUNK_START)));
        buf.reserve(at_least);
        buf
    }

    /// Keeps `buf` for a later chunk, if there is room.
    pub fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut bufs = self.bufs.lock();
        let held: usize = bufs.iter().map(Vec::capacity).sum();
        if held + buf.capacity() <= POOL_MAX_BYTES {
            bufs.push(buf);
        } else {
            // Freed after the lock is released.
            drop(bufs);
        }
    }

    /// Turns a written chunk's buffer, whose bytes start at `skip`, into the [`Bytes`] the tail
    /// keeps, returning them and the memory they hold (to count against the tail's budget).
    pub fn freeze(pool: &Arc<BufPool>, buf: Vec<u8>, skip: usize) -> (Bytes, usize) {
        let skip = skip.min(buf.len());
        if buf.len() - skip < buf.capacity() / 8 {
            let bytes = Bytes::copy_from_slice(&buf[skip..]);
            pool.put(buf);
            let held = bytes.len();
            return (bytes, held);
        }
        let held = buf.capacity();
        let owner = Pooled {
            buf,
            pool: pool.clone(),
        };
        (Bytes::from_owner(owner).slice(skip..), held)
    }

    /// Buffers currently kept (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.bufs.lock().len()
    }
}

/// A buffer that returns to its pool when the last [`Bytes`] handle to it is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<BufPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_slice_is_dropped() {
        let pool = Arc::new(BufPool::default());
        let mut buf = pool.take(10);
        assert!(buf.capacity() >= CHUNK_START);
        buf.resize(CHUNK_START, 7);
        let (bytes, held) = BufPool::freeze(&pool, buf, 0);
        assert_eq!(held, bytes.len());
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert_eq!(pool.len(), 0, "a slice still holds the buffer");
        drop(slice);
        assert_eq!(pool.len(), 1);
        let again = pool.take(1);
        assert!(again.is_empty() && again.capacity() >= CHUNK_START);
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn a_small_chunk_is_copied_out_and_its_buffer_kept() {
        let pool = Arc::new(BufPool::default());
        let mut buf = pool.take(10);
        buf.extend_from_slice(b"small");
        let (bytes, held) = BufPool::freeze(&pool, buf, 0);
        assert_eq!((&bytes[..], held), (&b"small"[..], 5));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn the_pool_is_bounded() {
        let pool = Arc::new(BufPool::default());
        for _ in 0..2 * POOL_MAX_BYTES / CHUNK_START {
            pool.put(Vec::with_capacity(CHUNK_START));
        }
        assert_eq!(pool.len(), POOL_MAX_BYTES / CHUNK_START);
        pool.put(Vec::with_capacity(2 * POOL_MAX_BYTES));
        assert_eq!(pool.len(), POOL_MAX_BYTES / CHUNK_START);
    }
}
