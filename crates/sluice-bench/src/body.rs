//! Decoding an HTTP request body received from a relay's sink into benchmark events.
//!
//! Accepted shapes (after `Content-Encoding: gzip`, if present, is undone):
//!
//! - newline-delimited JSON: one event per line (a blank line is garbage: no sender wrote it);
//! - a JSON array of events: `[{…},{…}]` (split at top-level commas by a small scanner that
//!   knows about strings and nesting, so one bad element does not hide its neighbours);
//! - Splunk HEC: concatenated envelopes `{"event":{…}}{"event":"{…}"}`, on one line or many,
//!   whose `event` is the event object or a string holding it.
//!
//! Every element that is not an event is counted as garbage. A body that cannot be decoded as a
//! whole — corrupt or truncated gzip, an unterminated array, more than [`MAX_DECODED`] bytes —
//! counts as one bad body (plus whatever garbage was already seen) and is answered 400; the
//! receiver keeps serving either way.

use std::io::Read;

use crate::tracker::Tracker;

/// Largest decompressed body accepted (a gzip bomb is a bad body, not an OOM).
pub const MAX_DECODED: u64 = 256 * 1024 * 1024;

/// Why a whole body was refused.
#[derive(Debug)]
pub enum BadBody {
    Gzip(std::io::Error),
    TooLarge,
    UnterminatedArray,
}

impl std::fmt::Display for BadBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadBody::Gzip(e) => write!(f, "expected a gzip body, decoding failed: {e}"),
            BadBody::TooLarge => write!(f, "decoded body is over {MAX_DECODED} bytes"),
            BadBody::UnterminatedArray => write!(f, "expected a JSON array, found no closing ']'"),
        }
    }
}

/// Undoes gzip when `gzip` is set.
pub fn decompress(body: &[u8], gzip: bool) -> Result<std::borrow::Cow<'_, [u8]>, BadBody> {
    if !gzip {
        return Ok(body.into());
    }
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(body)
        .take(MAX_DECODED + 1)
        .read_to_end(&mut out)
        .map_err(BadBody::Gzip)?;
    if out.len() as u64 > MAX_DECODED {
        return Err(BadBody::TooLarge);
    }
    Ok(out.into())
}

/// Decodes one body and records its events at `recv_ns`.
pub fn record_body(t: &mut Tracker, body: &[u8], gzip: bool, recv_ns: u64) -> Result<(), BadBody> {
    let result = decompress(body, gzip).and_then(|plain| {
        let start = plain.iter().position(|b| !b.is_ascii_whitespace());
        match start.map(|i| &plain[i..]) {
            Some(rest) if rest.first() == Some(&b'[') => record_array(t, rest, recv_ns),
            Some(rest) => {
                record_lines_or_hec(t, rest, recv_ns);
                Ok(())
            }
            None => Ok(()),
        }
    });
    if result.is_err() {
        t.add_bad_body();
    }
    result
}

fn record_lines_or_hec(t: &mut Tracker, body: &[u8], recv_ns: u64) {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    for line in body.split(|&b| b == b'\n') {
        if let Some(ev) = crate::payload::parse(line) {
            t.record(ev, recv_ns);
        } else if contains(line, b"\"event\"") {
            record_hec(t, line, recv_ns);
        } else {
            t.add_garbage(1);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn record_hec(t: &mut Tracker, line: &[u8], recv_ns: u64) {
    let stream = serde_json::Deserializer::from_slice(line).into_iter::<serde_json::Value>();
    for item in stream {
        match item {
            Ok(v) => match v.get("event").and_then(crate::payload::from_value) {
                Some(ev) => t.record(ev, recv_ns),
                None => t.add_garbage(1),
            },
            Err(_) => {
                // The rest of the line cannot be resynchronised; count it once.
                t.add_garbage(1);
                break;
            }
        }
    }
}

fn record_array(t: &mut Tracker, body: &[u8], recv_ns: u64) -> Result<(), BadBody> {
    let (elements, complete) = split_array(body);
    for e in elements {
        t.record_raw(e, recv_ns);
    }
    if complete {
        Ok(())
    } else {
        Err(BadBody::UnterminatedArray)
    }
}

/// Splits `[a, b, c]` into its top-level elements; `false` if the array never closes.
pub fn split_array(body: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    let mut elem_start = 1;
    for (i, &b) in body.iter().enumerate().skip(1) {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b',' | b']' if depth == 0 => {
                let e = &body[elem_start..i];
                if !e.iter().all(|c| c.is_ascii_whitespace()) {
                    out.push(e);
                }
                elem_start = i + 1;
                if b == b']' {
                    return (out, true);
                }
            }
            _ => {}
        }
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Event, encode};
    use std::io::Write;

    fn line(seq: u64) -> Vec<u8> {
        let mut v = Vec::new();
        let ev = Event {
            stream: 0,
            seq,
            ts_ns: 1,
        };
        encode(&mut v, ev, 128, false);
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("in-memory write");
        enc.finish().expect("in-memory write")
    }

    fn run(body: &[u8], gzip: bool) -> (crate::tracker::TrackerSummary, bool) {
        let mut t = Tracker::new(100, 0);
        let ok = record_body(&mut t, body, gzip, 10).is_ok();
        (t.summary(&[]), ok)
    }

    #[test]
    fn ndjson_array_and_hec_all_decode() {
        let nd = [line(0), line(1), line(2)].join(&b'\n');
        let arr = [
            b"[".to_vec(),
            [line(0), line(1), line(2)].join(&b','),
            b"]".to_vec(),
        ]
        .concat();
        let obj = String::from_utf8(line(1)).expect("ascii");
        let hec = format!(
            "{{\"event\":{}}}{{\"event\":{}}}\n{{\"time\":1,\"event\":{}}}",
            String::from_utf8(line(0)).expect("ascii"),
            serde_json::to_string(&obj).expect("string"),
            String::from_utf8(line(2)).expect("ascii"),
        );
        for body in [nd, arr, hec.into_bytes()] {
            for gz in [false, true] {
                let b = if gz { gzip(&body) } else { body.clone() };
                let (s, ok) = run(&b, gz);
                assert!(ok);
                assert_eq!((s.unique, s.garbage, s.bad_bodies), (3, 0, 0));
            }
        }
    }

    #[test]
    fn garbage_elements_are_counted_and_neighbours_kept() {
        let body = [
            line(0),
            b"garbage".to_vec(),
            line(1),
            b"{\"event\":7}".to_vec(),
        ]
        .join(&b'\n');
        let (s, ok) = run(&body, false);
        assert!(ok);
        assert_eq!((s.unique, s.garbage), (2, 2));
        let arr = [
            b"[".to_vec(),
            line(0),
            b",\"x\",{\"a\":[1,2]},".to_vec(),
            line(1),
            b"]".to_vec(),
        ]
        .concat();
        let (s, ok) = run(&arr, false);
        assert!(ok);
        assert_eq!((s.unique, s.garbage), (2, 2));
    }

    #[test]
    fn truncated_or_corrupt_gzip_and_open_arrays_are_bad_bodies() {
        let body = gzip(&[line(0), line(1)].join(&b'\n'));
        let (s, ok) = run(&body[..body.len() / 2], true);
        assert!(!ok);
        assert_eq!(s.bad_bodies, 1);
        let (s, ok) = run(b"\x1f\x8b\x08\x00garbage-not-deflate", true);
        assert!(!ok);
        assert_eq!(s.bad_bodies, 1);
        let open = [b"[".to_vec(), line(0), b",".to_vec(), line(1)].concat();
        let (s, ok) = run(&open, false);
        assert!(!ok);
        assert_eq!((s.bad_bodies, s.unique), (1, 1));
    }
}
