//! The spill queue: `queue = { type = "memory", max_events = N, overflow = "disk" }`.
//!
//! A memory queue for speed, and a disk queue behind it for when it is full. An event goes to
//! memory while memory has room and nothing waits on disk; otherwise it goes to disk (whose own
//! `when_full` then applies). Once events wait on disk, new ones follow them there until the disk
//! tier is empty again, so events keep their order while the queue spills and recovers.
//!
//! The sink reads memory first, then disk. Events in the memory tier are not durable: a source
//! feeding a spill queue acknowledges at `received` by default, and a shutdown delivers the
//! memory tier within `shutdown_timeout` while the disk tier keeps what it holds.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Accepted, BatchLimits, DiskQueue, MemoryQueue, PushError, Seq};
use crate::event::Event;

pub struct SpillQueue {
    memory: MemoryQueue,
    disk: DiskQueue,
    /// Woken by every push to either tier, and by close.
    readable: Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl SpillQueue {
    pub fn new(memory: MemoryQueue, disk: DiskQueue) -> Self {
        Self {
            memory,
            disk,
            readable: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn disk_has_waiting(&self) -> bool {
        let stats = self.disk.stats();
        stats.next_seq > stats.read_seq
    }

    pub async fn push(&self, event: Arc<Event>, deadline: Instant) -> Result<Accepted, PushError> {
        let accepted = if self.disk_has_waiting() {
            Accepted::OnDisk(self.disk.push(event, deadline).await?)
        } else {
            match self.memory.try_push(event) {
                Ok(()) => Accepted::InMemory,
                Err(event) => Accepted::OnDisk(self.disk.push(event, deadline).await?),
            }
        };
        self.readable.notify_one();
        Ok(accepted)
    }

    pub async fn wait_durable(&self, seq: Seq) -> Result<(), PushError> {
        self.disk.wait_durable(seq).await
    }

    pub fn sync_mark(&self) -> Option<Seq> {
        self.disk.sync_mark()
    }

    /// Memory first, then disk; empty once closed and the memory tier is drained.
    pub async fn next_batch(&self, limits: BatchLimits) -> (Vec<Arc<Event>>, Vec<Seq>) {
        loop {
            let readable = self.readable.notified();
            tokio::pin!(readable);
            readable.as_mut().enable();
            let from_memory = self.memory.try_pop_batch(limits);
            if !from_memory.is_empty() {
                return (from_memory, Vec::new());
            }
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return (Vec::new(), Vec::new());
            }
            if self.disk_has_waiting() {
                let batch = self
                    .disk
                    .next_batch(BatchLimits {
                        timeout: std::time::Duration::ZERO,
                        ..limits
                    })
                    .await;
                if !batch.0.is_empty() {
                    return batch;
                }
            }
            readable.await;
        }
    }

    pub fn finish(&self, seqs: &[Seq]) {
        self.disk.finish(seqs);
    }

    pub async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.memory.close();
        self.disk.close().await;
        self.readable.notify_one();
    }

    pub fn write_failed(&self) -> bool {
        self.disk.stats().write_failed
    }

    pub fn on_disk(&self) -> u64 {
        self.disk.len() as u64
    }

    pub fn len(&self) -> usize {
        self.memory.len() + self.disk.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
