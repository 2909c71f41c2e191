//! The benchmark event: what a sender writes and what a receiver reads back.
//!
//! # Format
//!
//! One event is one single-line JSON object, keys always in this order:
//!
//! ```text
//! {"stream":3,"seq":12345,"ts":1732291200000000000,"pad":"xxxx…"}\n
//! ```
//!
//! - `stream`: the sender connection that produced it (each connection is its own stream, so
//!   per-stream order is meaningful);
//! - `seq`: 0, 1, 2, … within the stream;
//! - `ts`: the send time in nanoseconds since the Unix epoch (for end-to-end latency);
//! - `pad`: `x`s so the line, newline included, is exactly the configured size. When the size is
//!   too small to hold a pad field the line is simply as long as it needs to be.
//!
//! # Parsing
//!
//! [`parse`] first tries a byte-level fast path that expects exactly the layout above, then falls
//! back to a lenient serde parse (a relay may re-serialise objects with spaces or another key
//! order). Anything else — not JSON, missing fields, numbers out of range — is `None`, which the
//! tracker counts as garbage. It never panics on any input.

use std::time::{SystemTime, UNIX_EPOCH};

/// The fields of one event the harness cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub stream: u32,
    pub seq: u64,
    pub ts_ns: u64,
}

/// Default event size in bytes, trailing newline included.
pub const DEFAULT_SIZE: usize = 256;

const PREFIX: &[u8] = b"{\"stream\":";
const SEQ: &[u8] = b",\"seq\":";
const TS: &[u8] = b",\"ts\":";
const PAD_OPEN: &[u8] = b",\"pad\":\"";
const PAD_CLOSE: &[u8] = b"\"}";

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Appends `n` in decimal to `out` without going through `fmt`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends one event to `out`: exactly `size` bytes when `size` is large enough, ending with
/// `\n` when `newline` is set (lines) and without it otherwise (HTTP bodies, datagrams); the
/// newline, when absent, still counts in `size` so every transport carries the same JSON.
pub fn encode(out: &mut Vec<u8>, ev: Event, size: usize, newline: bool) {
    let start = out.len();
    out.extend_from_slice(PREFIX);
    push_u64(out, u64::from(ev.stream));
    out.extend_from_slice(SEQ);
    push_u64(out, ev.seq);
    out.extend_from_slice(TS);
    push_u64(out, ev.ts_ns);
    let used = out.len() - start + PAD_OPEN.len() + PAD_CLOSE.len() + 1;
    if used <= size {
        out.extend_from_slice(PAD_OPEN);
        out.resize(out.len() + (size - used), b'x');
        out.extend_from_slice(PAD_CLOSE);
    } else {
        out.push(b'}');
    }
    if newline {
        out.push(b'\n');
    }
}

/// Reads a decimal number at the start of `s`, returning it and the rest.
fn take_u64(s: &[u8]) -> Option<(u64, &[u8])> {
    let len = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in &s[..len] {
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((n, &s[len..]))
}

/// The fast path: exactly the layout [`encode`] writes (trailing `\r`/`\n` tolerated).
fn parse_fast(line: &[u8]) -> Option<Event> {
    let rest = line.strip_prefix(PREFIX)?;
    let (stream, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(SEQ)?;
    let (seq, rest) = take_u64(rest)?;
    let rest = rest.strip_prefix(TS)?;
    let (ts_ns, rest) = take_u64(rest)?;
    let rest = trim_end(rest);
    let ok = if let Some(pad) = rest.strip_prefix(PAD_OPEN) {
        // A fold without early exit vectorises; the pad is most of the line.
        pad.strip_suffix(PAD_CLOSE)
            .is_some_and(|p| p.iter().fold(0u8, |acc, &b| acc | (b ^ b'x')) == 0)
    } else {
        rest == b"}"
    };
    ok.then_some(Event {
        stream: u32::try_from(stream).ok()?,
        seq,
        ts_ns,
    })
}

/// Index of the first `\n` in `s`, eight bytes at a time (the classic "has zero byte" test).
pub fn find_newline(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ NL;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

fn trim_end(mut s: &[u8]) -> &[u8] {
    while let [head @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = head;
        } else {
            break;
        }
    }
    s
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    trim_end(&s[start..])
}

#[derive(serde::Deserialize)]
struct Lenient {
    stream: u32,
    seq: u64,
    ts: u64,
}

/// Parses one event from one line or JSON object; `None` means garbage.
pub fn parse(line: &[u8]) -> Option<Event> {
    if let Some(ev) = parse_fast(line) {
        return Some(ev);
    }
    let line = trim(line);
    if line.first() != Some(&b'{') {
        return None;
    }
    let l: Lenient = serde_json::from_slice(line).ok()?;
    Some(Event {
        stream: l.stream,
        seq: l.seq,
        ts_ns: l.ts,
    })
}

/// Builds an event from an already-parsed JSON value (Splunk HEC's `event` object).
pub fn from_value(v: &serde_json::Value) -> Option<Event> {
    match v {
        serde_json::Value::String(s) => parse(s.as_bytes()),
        serde_json::Value::Object(o) => Some(Event {
            stream: u32::try_from(o.get("stream")?.as_u64()?).ok()?,
            seq: o.get("seq")?.as_u64()?,
            ts_ns: o.get("ts")?.as_u64()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: Event = Event {
        stream: 3,
        seq: 12345,
        ts_ns: 1_732_291_200_000_000_000,
    };

    #[test]
    fn encoded_event_has_the_configured_size_and_parses_back() {
        for size in [64, 100, 256, 1024] {
            let mut out = Vec::new();
            encode(&mut out, EV, size, true);
            assert_eq!(out.len(), size, "{}", String::from_utf8_lossy(&out));
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(parse(&out), Some(EV));
            let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(from_value(&v), Some(EV));
        }
    }

    #[test]
    fn too_small_size_still_yields_a_valid_event() {
        let mut out = Vec::new();
        encode(&mut out, EV, 10, false);
        assert_eq!(parse(&out), Some(EV));
        assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok());
    }

    #[test]
    fn reserialised_event_parses_through_the_fallback() {
        let line = br#" { "ts": 5, "seq": 2, "stream": 1, "pad": "xx" } "#;
        assert_eq!(
            parse(line),
            Some(Event {
                stream: 1,
                seq: 2,
                ts_ns: 5
            })
        );
    }

    #[test]
    fn find_newline_matches_a_plain_search() {
        let mut buf = vec![b'a'; 40];
        assert_eq!(find_newline(&buf), None);
        for at in [0, 1, 7, 8, 9, 15, 16, 33, 39] {
            buf.fill(b'a');
            buf[at] = b'\n';
            if at + 3 < buf.len() {
                buf[at + 3] = b'\n';
            }
            assert_eq!(find_newline(&buf), Some(at), "at {at}");
        }
        assert_eq!(find_newline(&[0x8a, 0x0b, 0x0a]), Some(2));
    }

    #[test]
    fn garbage_is_none_never_a_panic() {
        let cases: &[&[u8]] = &[
            b"",
            b"hello",
            b"{\"stream\":",
            b"{\"stream\":1,\"seq\":99999999999999999999999,\"ts\":1}",
            b"{\"stream\":1,\"seq\":2}",
            &[0xff, 0xfe, 0x00, b'{'],
            b"{\"stream\":1,\"seq\":2,\"ts\":3,\"pad\":\"xx",
        ];
        for c in cases {
            assert_eq!(parse(c), None, "{:?}", String::from_utf8_lossy(c));
        }
    }
}
