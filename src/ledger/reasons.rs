//! The closed sets of label values the ledger counts by: why an event was dropped, how a
//! delivery attempt ended, and what a source's connections waited for. Closed, so that every
//! metric family stays bounded whatever the traffic.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Why an event was dropped: a closed set, so metrics stay bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The queue was full (`drop_newest`, `drop_oldest`, or `block` past `accept_timeout`).
    QueueFull,
    /// Larger than the source's limit (HTTP 413).
    FrameTooLarge,
    /// Not a well-formed request or frame.
    DecodeError,
    /// The producer did not send the whole request in time.
    ReadTimeout,
    /// Missing or wrong credentials (HTTP 401).
    Unauthorized,
    /// The destination refused it for good (a 4xx other than 408 and 429).
    Rejected,
    /// Every allowed delivery attempt failed.
    RetriesExhausted,
    /// Arrived while the relay was shutting down.
    ShuttingDown,
    /// The disk queue could not write or sync it (ENOSPC, EIO): never acknowledged.
    IoError,
}

impl DropReason {
    pub const ALL: [DropReason; 9] = [
        DropReason::QueueFull,
        DropReason::FrameTooLarge,
        DropReason::DecodeError,
        DropReason::ReadTimeout,
        DropReason::Unauthorized,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::ShuttingDown,
        DropReason::IoError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::DecodeError => "decode_error",
            DropReason::ReadTimeout => "read_timeout",
            DropReason::Unauthorized => "unauthorized",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::IoError => "io_error",
        }
    }

    pub(super) fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// How one delivery attempt ended: a closed set for `sluice_delivery_attempts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    Delivered,
    /// 408, 429 or 5xx.
    RetryableStatus,
    Timeout,
    ConnectionError,
    Rejected,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 5] = [
        AttemptOutcome::Delivered,
        AttemptOutcome::RetryableStatus,
        AttemptOutcome::Timeout,
        AttemptOutcome::ConnectionError,
        AttemptOutcome::Rejected,
    ];

    pub(super) fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::RetryableStatus => "retryable_status",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::ConnectionError => "connection_error",
            AttemptOutcome::Rejected => "rejected",
        }
    }
}

/// What a source's connections waited for before reading on (time summed over connections):
/// the producer's backpressure, by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// The disk queue's sync of their earlier reads (`ack = durable`).
    Sync,
    /// A disk queue's sink about to fall out of the queue's in-memory tail (pacing).
    Sink,
}

impl WaitReason {
    pub const ALL: [WaitReason; 2] = [WaitReason::Sync, WaitReason::Sink];

    pub(super) fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Sync => "sync",
            WaitReason::Sink => "sink",
        }
    }
}

impl EncodeLabelValue for WaitReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for AttemptOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}
