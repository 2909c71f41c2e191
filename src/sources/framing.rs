//! Framing: where one event ends and the next begins in a byte stream (TCP, Unix sockets).
//!
//! Both decoders work in place over the connection's read buffer (`BytesMut`): a frame leaves
//! the buffer as a `Bytes` slice of it (`split_to(..).freeze()`), never as a copy. They keep
//! their state between reads, so a frame may arrive in any number of reads and one read may hold
//! any number of frames. Neither ever holds more than `max_frame_bytes` (plus one read) of a
//! frame: a longer one is skipped as it streams past, so a 100 MiB line costs no 100 MiB buffer.
//!
//! # `lines` (the default)
//!
//! ```text
//! frame      = payload LF            ; LF = 0x0A
//! payload    = *OCTET, without LF    ; one trailing CR (0x0D) is removed: CRLF works too
//! ```
//!
//! - An empty line (after removing the CR) is skipped: it is no event and is not counted.
//! - A line longer than `max_frame_bytes` (not counting its LF/CRLF) is counted once as
//!   `frame_too_large`, and every byte up to and including its LF is discarded; the next line
//!   is read normally. The connection survives.
//! - Any other byte, binary or not, is payload: the decoder does not look inside lines.
//! - At end of stream, an unterminated last line is still an event ([`Decoder::finish`]).
//!
//! # `octet_counting` (RFC 6587 §3.4.1, syslog over TCP)
//!
//! ```text
//! frame      = msg-len SP payload
//! msg-len    = NONZERO-DIGIT *8DIGIT  ; 1 to 9 digits, the payload's length in bytes
//! ```
//!
//! - Before a length, LF and CR bytes are skipped (some shippers end each frame with one).
//! - A length above `max_frame_bytes` is counted once as `frame_too_large` and exactly that many
//!   payload bytes are skipped: the length says where the next frame starts, so framing holds.
//! - **Resync rule**: a header that is not a well-formed length — a non-digit where a digit or
//!   the SP belongs, a leading `0`, more than 9 digits — is counted once as `decode_error`, and
//!   the decoder discards every byte up to and including the next LF, then expects a length
//!   again. (A length cannot be trusted once a header is bad; LF is where line-minded senders,
//!   and most octet-counting ones, end a record.) The connection survives.
//! - An empty payload (`0 `) is a malformed length by the rule above.
//! - At end of stream, a frame cut short is counted as `decode_error`.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::ledger::DropReason;

/// How a stream source finds frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    #[default]
    Lines,
    OctetCounting,
}

/// What a decoder found next in the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole payload, sliced from the buffer.
    Event(Bytes),
    /// A frame the decoder had to throw away, counted once.
    Dropped(DropReason),
}

/// The longest `msg-len` accepted: 9 digits, under 1 GB.
const MAX_LENGTH_DIGITS: usize = 9;

/// A framing decoder with its state between reads.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    max_frame_bytes: usize,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a frame (lines) or a length header (octet counting); `scanned` bytes at the
    /// front of the buffer are known to hold no LF (lines) — so they are not searched again.
    Normal { scanned: usize },
    /// Discarding up to and including the next LF.
    SkipLine,
    /// Octet counting: reading `remaining` payload bytes of the current frame.
    Payload { remaining: usize },
    /// Octet counting: discarding `remaining` bytes of a frame that is too large.
    SkipBytes { remaining: usize },
}

impl Decoder {
    pub fn new(framing: Framing, max_frame_bytes: usize) -> Self {
        Self {
            framing,
            max_frame_bytes: max_frame_bytes.max(1),
            state: State::Normal { scanned: 0 },
        }
    }

    /// The next frame in `buf`, if a whole one (or a decision to drop one) is there. Call it
    /// until it returns `None`, then read more into `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        match self.framing {
            Framing::Lines => self.decode_line(buf),
            Framing::OctetCounting => self.decode_counted(buf),
        }
    }

    /// The stream ended: what is left in `buf` as a last frame, if anything. The buffer is
    /// empty afterwards and the decoder is ready for a new stream.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let state = std::mem::replace(&mut self.state, State::Normal { scanned: 0 });
        let rest = buf.split().freeze();
        match (self.framing, state) {
            (Framing::Lines, State::Normal { .. }) => {
                let line = trim_cr(rest);
                if line.len() > self.max_frame_bytes {
                    return Some(Frame::Dropped(DropReason::FrameTooLarge));
                }
                (!line.is_empty()).then_some(Frame::Event(line))
            }
            (Framing::OctetCounting, State::Normal { .. }) => {
                let meaningful = rest.iter().any(|b| !matches!(b, b'\n' | b'\r'));
                meaningful.then_some(Frame::Dropped(DropReason::DecodeError))
            }
            (Framing::OctetCounting, State::Payload { .. }) => {
                Some(Frame::Dropped(DropReason::DecodeError))
            }
            // Already counted when skipping began.
            (_, State::SkipLine | State::SkipBytes { .. }) | (Framing::Lines, _) => None,
        }
    }

    /// Whether the decoder holds part of a frame (or is skipping one) between reads.
    pub fn is_mid_frame(&self, buf: &BytesMut) -> bool {
        !buf.is_empty() || !matches!(self.state, State::Normal { .. })
    }

    fn decode_line(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            match self.state {
                State::Normal { scanned } => {
                    let from = scanned.min(buf.len());
                    match memchr::memchr(b'\n', &buf[from..]) {
                        Some(offset) => {
                            let end = from + offset;
                            self.state = State::Normal { scanned: 0 };
                            let mut line = buf.split_to(end + 1);
                            line.truncate(end);
                            if line.last() == Some(&b'\r') {
                                line.truncate(end - 1);
                            }
                            if line.len() > self.max_frame_bytes {
                                return Some(Frame::Dropped(DropReason::FrameTooLarge));
                            }
                            if line.is_empty() {
                                continue;
                            }
                            return Some(Frame::Event(line.freeze()));
                        }
                        None => {
                            // One byte of slack for a CR that a later LF would remove.
                            if buf.len() > self.max_frame_bytes + 1 {
                                buf.clear();
                                self.state = State::SkipLine;
                                return Some(Frame::Dropped(DropReason::FrameTooLarge));
                            }
                            self.state = State::Normal { scanned: buf.len() };
                            return None;
                        }
                    }
                }
                State::SkipLine => {
                    if !skip_line(buf) {
                        return None;
                    }
                    self.state = State::Normal { scanned: 0 };
                }
                State::Payload { .. } | State::SkipBytes { .. } => {
                    // Octet-counting states never occur with line framing.
                    self.state = State::Normal { scanned: 0 };
                }
            }
        }
    }

    fn decode_counted(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            match self.state {
                State::Normal { .. } => {
                    let junk = buf
                        .iter()
                        .position(|b| !matches!(b, b'\n' | b'\r'))
                        .unwrap_or(buf.len());
                    let _ = buf.split_to(junk);
                    match parse_length(buf) {
                        Header::Incomplete => return None,
                        Header::Malformed => {
                            self.state = State::SkipLine;
                            return Some(Frame::Dropped(DropReason::DecodeError));
                        }
                        Header::Length { len, header } => {
                            let _ = buf.split_to(header);
                            if len > self.max_frame_bytes {
                                self.state = State::SkipBytes { remaining: len };
                                return Some(Frame::Dropped(DropReason::FrameTooLarge));
                            }
                            self.state = State::Payload { remaining: len };
                        }
                    }
                }
                State::Payload { remaining } => {
                    if buf.len() < remaining {
                        return None;
                    }
                    self.state = State::Normal { scanned: 0 };
                    return Some(Frame::Event(buf.split_to(remaining).freeze()));
                }
                State::SkipBytes { remaining } => {
                    let n = remaining.min(buf.len());
                    let _ = buf.split_to(n);
                    if n < remaining {
                        self.state = State::SkipBytes {
                            remaining: remaining - n,
                        };
                        return None;
                    }
                    self.state = State::Normal { scanned: 0 };
                }
                State::SkipLine => {
                    if !skip_line(buf) {
                        return None;
                    }
                    self.state = State::Normal { scanned: 0 };
                }
            }
        }
    }
}

/// Discards through the next LF; `false` (buffer emptied) when there is none yet.
fn skip_line(buf: &mut BytesMut) -> bool {
    match memchr::memchr(b'\n', buf) {
        Some(end) => {
            let _ = buf.split_to(end + 1);
            true
        }
        None => {
            buf.clear();
            false
        }
    }
}

fn trim_cr(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

enum Header {
    Incomplete,
    Malformed,
    /// A payload of `len` bytes follows a header of `header` bytes (digits and SP).
    Length {
        len: usize,
        header: usize,
    },
}

fn parse_length(buf: &[u8]) -> Header {
    let mut len = 0usize;
    for (i, &byte) in buf.iter().enumerate() {
        match byte {
            b' ' if i > 0 => return Header::Length { len, header: i + 1 },
            b'0' if i == 0 => return Header::Malformed,
            b'0'..=b'9' if i < MAX_LENGTH_DIGITS => {
                len = len * 10 + usize::from(byte - b'0');
            }
            _ => return Header::Malformed,
        }
    }
    Header::Incomplete
}

/// Removes `prefix` from the start of `payload` when it is there (Vault's `prefix` option);
/// a payload without it is kept whole.
pub fn strip_prefix(payload: Bytes, prefix: &[u8]) -> Bytes {
    if !prefix.is_empty() && payload.starts_with(prefix) {
        payload.slice(prefix.len()..)
    } else {
        payload
    }
}

/// A whole UDP datagram as an event payload: one trailing LF (or CRLF) removed.
pub fn datagram_payload(payload: Bytes) -> Bytes {
    let mut payload = payload;
    if payload.last() == Some(&b'\n') {
        payload.truncate(payload.len() - 1);
        payload = trim_cr(payload);
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes and collects every frame, `finish` included.
    fn run(framing: Framing, max: usize, input: &[u8], chunk: usize) -> Vec<Frame> {
        let mut decoder = Decoder::new(framing, max);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf) {
                frames.push(frame);
            }
        }
        frames.extend(decoder.finish(&mut buf));
        frames
    }

    fn event(text: &str) -> Frame {
        Frame::Event(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn lines_split_on_lf_tolerate_crlf_and_skip_empty_lines() {
        let input = b"one\r\ntwo\n\n\r\nthree\nlast";
        for chunk in [1, 2, 3, 7, 100] {
            assert_eq!(
                run(Framing::Lines, 100, input, chunk),
                vec![event("one"), event("two"), event("three"), event("last")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_overlong_line_is_dropped_once_and_its_neighbours_survive() {
        let long = "x".repeat(50);
        let input = format!("before\n{long}\nafter\n");
        for chunk in [1, 4, 16, 1000] {
            assert_eq!(
                run(Framing::Lines, 10, input.as_bytes(), chunk),
                vec![
                    event("before"),
                    Frame::Dropped(DropReason::FrameTooLarge),
                    event("after")
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_even_with_crlf() {
        assert_eq!(
            run(Framing::Lines, 3, b"abc\r\nabcd\r\nab\n", 1),
            vec![
                event("abc"),
                Frame::Dropped(DropReason::FrameTooLarge),
                event("ab")
            ]
        );
    }

    #[test]
    fn skipping_a_huge_line_keeps_the_buffer_small() {
        let mut decoder = Decoder::new(Framing::Lines, 1024);
        let mut buf = BytesMut::new();
        let mut dropped = 0;
        for _ in 0..1000 {
            buf.extend_from_slice(&[b'y'; 4096]);
            while let Some(frame) = decoder.decode(&mut buf) {
                assert_eq!(frame, Frame::Dropped(DropReason::FrameTooLarge));
                dropped += 1;
            }
            assert!(buf.len() <= 4096 + 1025, "buffer grew to {}", buf.len());
        }
        buf.extend_from_slice(b"tail\nok\n");
        assert_eq!(decoder.decode(&mut buf), Some(event("ok")));
        assert_eq!(dropped, 1, "one long line is one drop");
    }

    #[test]
    fn octet_counting_reads_frames_across_reads() {
        let input = b"5 hello11 hello world\n3 a\nb";
        for chunk in [1, 2, 5, 100] {
            assert_eq!(
                run(Framing::OctetCounting, 100, input, chunk),
                vec![event("hello"), event("hello world"), event("a\nb")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn octet_counting_skips_an_oversized_frame_by_its_length() {
        let input = b"3 abc20 aaaaaaaaaaaaaaaaaaaa2 ok";
        assert_eq!(
            run(Framing::OctetCounting, 5, input, 3),
            vec![
                event("abc"),
                Frame::Dropped(DropReason::FrameTooLarge),
                event("ok")
            ]
        );
    }

    #[test]
    fn octet_counting_resyncs_after_a_bad_header_at_the_next_lf() {
        for bad in [
            "x5 hello\n",
            "05 hello\n",
            "1234567890 big\n",
            " 5 hello\n",
            "0 \n",
        ] {
            let input = format!("2 ok{bad}4 next");
            assert_eq!(
                run(Framing::OctetCounting, 100, input.as_bytes(), 1),
                vec![
                    event("ok"),
                    Frame::Dropped(DropReason::DecodeError),
                    event("next")
                ],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn octet_counting_counts_a_truncated_last_frame() {
        assert_eq!(
            run(Framing::OctetCounting, 100, b"5 hel", 2),
            vec![Frame::Dropped(DropReason::DecodeError)]
        );
        assert_eq!(
            run(Framing::OctetCounting, 100, b"2 ok\r\n", 2),
            vec![event("ok")]
        );
    }

    /// The fuzz targets' property, on seeded random input: how the stream is cut into reads
    /// never changes the frames.
    #[test]
    fn chunking_never_changes_the_frames() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"ab\r\n 0123456789";
        for _ in 0..2000 {
            let len = rng.usize(0..200);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let max = rng.usize(1..24);
            for framing in [Framing::Lines, Framing::OctetCounting] {
                let whole = run(framing, max, &input, input.len().max(1));
                let chunked = run(framing, max, &input, rng.usize(1..8));
                assert_eq!(whole, chunked, "{framing:?} max {max} {input:?}");
            }
        }
    }

    #[test]
    fn prefix_and_datagram_helpers() {
        let line = Bytes::from_static(b"@cee:{\"a\":1}");
        assert_eq!(
            strip_prefix(line.clone(), b"@cee:"),
            Bytes::from_static(b"{\"a\":1}")
        );
        assert_eq!(strip_prefix(line.clone(), b"nope"), line);
        assert_eq!(
            datagram_payload(Bytes::from_static(b"{}\r\n")),
            Bytes::from_static(b"{}")
        );
        assert_eq!(
            datagram_payload(Bytes::from_static(b"{}")),
            Bytes::from_static(b"{}")
        );
    }
}
