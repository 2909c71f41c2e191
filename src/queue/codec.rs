//! How an event is written into a disk-queue record, and read back.
//!
//! The disk queue stores opaque records; this is the layout of one event inside one
//! (little-endian throughout):
//!
//! | field          | size            | meaning                                               |
//! | -------------- | --------------- | ----------------------------------------------------- |
//! | version        | 1               | `1`                                                   |
//! | flags          | 1               | bit 0: peer address follows; bit 1: HTTP request follows |
//! | node           | 4               | event id, node part                                   |
//! | seq            | 8               | event id, sequence part                               |
//! | received_at    | 8               | nanoseconds since the Unix epoch                      |
//! | source         | 2 + n           | the source's name                                     |
//! | peer           | 1 + 4/16 + 2    | family (4 or 6), address, port — if flagged           |
//! | http           | see below       | if flagged                                            |
//! | payload        | 4 + n           | the event's bytes                                     |
//!
//! HTTP: method (1 + n), path and query (4 + n), header count (2, at most 1024), then per
//! header name (2 + n) and value (4 + n).
//!
//! Decoding checks every length against the bytes that are there before slicing, never
//! allocates from a length it has not checked, and fails with [`DecodeError`] on a short,
//! overlong or malformed record; the caller counts it as a `decode_error` drop. The payload of
//! a decoded event is a slice of the record, not a copy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::event::{Attributes, Event, EventId, HttpRequest};

const VERSION: u8 = 1;
const HAS_PEER: u8 = 1;
const HAS_HTTP: u8 = 2;
/// More headers than any HTTP server here accepts (hyper's limit is 100); `HeaderMap` itself
/// panics past 32768.
const MAX_HEADERS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt event record: {0}")]
pub struct DecodeError(&'static str);

/// Writes `event` as one record.
pub fn encode(event: &Event) -> BytesMut {
    let mut out = BytesMut::with_capacity(event.size() + 64);
    encode_into(event, &mut out);
    out
}

/// Appends the record of `event` to `out` (a `BytesMut`, or a disk-queue batch's `Vec`).
pub fn encode_into(event: &Event, out: &mut impl BufMut) {
    encode_with_clock(event, out, &mut EpochNanos::default());
}

/// Turns receive times into nanoseconds since the Unix epoch, remembering the last one: the
/// events of one socket read share their receive time, and converting it for each of them
/// showed in S2's profile (about 1.4 % of the relay's samples).
#[derive(Debug, Default)]
pub struct EpochNanos {
    last: Option<(SystemTime, u64)>,
}

impl EpochNanos {
    fn of(&mut self, time: SystemTime) -> u64 {
        match self.last {
            Some((known, nanos)) if known == time => nanos,
            _ => {
                let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
                let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
                self.last = Some((time, nanos));
                nanos
            }
        }
    }
}

/// Source names up to this long take [`encode_with_clock`]'s fast path.
const SHORT_SOURCE: usize = 64;

/// The most bytes an event without HTTP parts with a short source name has in front of its
/// payload: version, flags, id, receive time, source, peer and payload length.
const SHORT_HEAD: usize = 1 + 1 + 4 + 8 + 8 + (2 + SHORT_SOURCE) + (1 + 16 + 2) + 4;

/// [`encode_into`] for one of many events, with a clock shared by all of them.
///
/// An event without HTTP parts (a line, a datagram, a frame) has its fields laid out on the
/// stack and appended with one copy, then its payload with another: putting each field into
/// the buffer on its own, each with its own capacity check, was about 5 % of the relay's CPU
/// in S2. The bytes are the same either way.
pub fn encode_with_clock(event: &Event, out: &mut impl BufMut, clock: &mut EpochNanos) {
    let peer = match &event.attributes {
        Attributes::Peer(peer) => Some(*peer),
        Attributes::Http(request) => request.peer,
        Attributes::None => None,
    };
    if event.http().is_some() || event.source.len() > SHORT_SOURCE {
        encode_fields(event, peer, out, clock);
        return;
    }
    let mut head = [0u8; SHORT_HEAD];
    // Fixed offsets, so that each field is one store, not a call to `memcpy`.
    head[0] = VERSION;
    head[1] = if peer.is_some() { HAS_PEER } else { 0 };
    head[2..6].copy_from_slice(&event.id.node.to_le_bytes());
    head[6..14].copy_from_slice(&event.id.seq.to_le_bytes());
    head[14..22].copy_from_slice(&clock.of(event.received_at).to_le_bytes());
    let source = event.source.as_bytes();
    // At most SHORT_SOURCE bytes: the length fits.
    head[22..24].copy_from_slice(&(source.len() as u16).to_le_bytes());
    let mut n = 24 + source.len();
    head[24..n].copy_from_slice(source);
    match peer.map(|p| (p.ip(), p.port())) {
        Some((IpAddr::V4(ip), port)) => {
            head[n] = 4;
            head[n + 1..n + 5].copy_from_slice(&ip.octets());
            head[n + 5..n + 7].copy_from_slice(&port.to_le_bytes());
            n += 7;
        }
        Some((IpAddr::V6(ip), port)) => {
            head[n] = 6;
            head[n + 1..n + 17].copy_from_slice(&ip.octets());
            head[n + 17..n + 19].copy_from_slice(&port.to_le_bytes());
            n += 19;
        }
        None => {}
    }
    head[n..n + 4].copy_from_slice(&(event.payload.len() as u32).to_le_bytes());
    n += 4;
    out.put_slice(&head[..n]);
    out.put_slice(&event.payload);
}

/// [`encode_with_clock`] field by field: any event.
fn encode_fields(
    event: &Event,
    peer: Option<SocketAddr>,
    out: &mut impl BufMut,
    clock: &mut EpochNanos,
) {
    let mut flags = 0;
    if peer.is_some() {
        flags |= HAS_PEER;
    }
    if event.http().is_some() {
        flags |= HAS_HTTP;
    }
    out.put_u8(VERSION);
    out.put_u8(flags);
    out.put_u32_le(event.id.node);
    out.put_u64_le(event.id.seq);
    out.put_u64_le(clock.of(event.received_at));
    put_short(out, event.source.as_bytes());
    if let Some(peer) = peer {
        match peer.ip() {
            IpAddr::V4(ip) => {
                out.put_u8(4);
                out.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.put_u8(6);
                out.put_slice(&ip.octets());
            }
        }
        out.put_u16_le(peer.port());
    }
    if let Some(request) = event.http() {
        let method = request.method.as_str().as_bytes();
        out.put_u8(u8::try_from(method.len()).unwrap_or(0));
        out.put_slice(&method[..method.len().min(255)]);
        put_long(out, request.uri.to_string().as_bytes());
        let headers = request.headers.len().min(u16::MAX as usize);
        out.put_u16_le(headers as u16);
        for (name, value) in request.headers.iter().take(headers) {
            put_short(out, name.as_str().as_bytes());
            put_long(out, value.as_bytes());
        }
    }
    put_long(out, &event.payload);
}

fn put_short(out: &mut impl BufMut, bytes: &[u8]) {
    let len = bytes.len().min(u16::MAX as usize);
    out.put_u16_le(len as u16);
    out.put_slice(&bytes[..len]);
}

fn put_long(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u32_le(bytes.len() as u32);
    out.put_slice(bytes);
}

/// Bounds-checked reads from a record.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            Err(DecodeError(what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.0.get_u16_le())
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.0.get_u32_le())
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.need(8, what)?;
        Ok(self.0.get_u64_le())
    }
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, what)?;
        Ok(self.0.split_to(n))
    }
    fn short(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(what)? as usize;
        self.bytes(n, what)
    }
    fn long(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u32(what)? as usize;
        self.bytes(n, what)
    }
}

/// Reads an event back; `source` resolves a source name to the shared name (so a million
/// recovered events do not hold a million copies of it).
pub fn decode(record: Bytes, source: &dyn Fn(&[u8]) -> Arc<str>) -> Result<Event, DecodeError> {
    let mut r = Reader(record);
    if r.u8("version")? != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let flags = r.u8("flags")?;
    if flags & !(HAS_PEER | HAS_HTTP) != 0 {
        return Err(DecodeError("unknown flags"));
    }
    let id = EventId {
        node: r.u32("node")?,
        seq: r.u64("seq")?,
    };
    let received_at = UNIX_EPOCH + Duration::from_nanos(r.u64("received_at")?);
    let source = source(&r.short("source")?);
    let peer = if flags & HAS_PEER != 0 {
        let ip = match r.u8("peer family")? {
            4 => IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&r.bytes(4, "peer")?[..]).map_err(|_| DecodeError("peer"))?,
            )),
            6 => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&r.bytes(16, "peer")?[..]).map_err(|_| DecodeError("peer"))?,
            )),
            _ => return Err(DecodeError("peer family")),
        };
        Some(SocketAddr::new(ip, r.u16("peer port")?))
    } else {
        None
    };
    let attributes = if flags & HAS_HTTP != 0 {
        let method_len = r.u8("method")? as usize;
        let method = Method::from_bytes(&r.bytes(method_len, "method")?)
            .map_err(|_| DecodeError("method"))?;
        let uri = Uri::from_maybe_shared(r.long("uri")?).map_err(|_| DecodeError("uri"))?;
        let count = r.u16("header count")?;
        if usize::from(count) > MAX_HEADERS {
            return Err(DecodeError("too many headers"));
        }
        let mut headers = HeaderMap::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = HeaderName::from_bytes(&r.short("header name")?)
                .map_err(|_| DecodeError("header name"))?;
            let value = HeaderValue::from_maybe_shared(r.long("header value")?)
                .map_err(|_| DecodeError("header value"))?;
            headers.append(name, value);
        }
        Attributes::Http(Box::new(HttpRequest {
            method,
            uri,
            headers,
            peer,
        }))
    } else if let Some(peer) = peer {
        Attributes::Peer(peer)
    } else {
        Attributes::None
    };
    let payload = r.long("payload")?;
    if r.0.has_remaining() {
        return Err(DecodeError("trailing bytes"));
    }
    let mut event = Event::new(id, source, payload, attributes);
    event.received_at = received_at;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanos(at: std::time::SystemTime) -> u64 {
        at.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn name(bytes: &[u8]) -> Arc<str> {
        Arc::from(String::from_utf8_lossy(bytes).as_ref())
    }

    #[test]
    fn an_http_event_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let request = HttpRequest {
            method: Method::PATCH,
            uri: Uri::from_static("/v1/x?y=z"),
            headers,
            peer: Some("[::1]:8080".parse().expect("addr")),
        };
        let event = Event::new(
            EventId { node: 7, seq: 9 },
            Arc::from("api"),
            Bytes::from_static(b"body"),
            Attributes::Http(Box::new(request)),
        );
        let back = decode(encode(&event).freeze(), &name).expect("round trip");
        assert_eq!(
            (back.id, &*back.source, &back.payload[..]),
            (event.id, "api", &b"body"[..])
        );
        assert_eq!(nanos(back.received_at), nanos(event.received_at));
        let http = back.http().expect("http");
        assert_eq!(
            (
                http.method.as_str(),
                http.uri.to_string(),
                http.headers.get_all("x-a").iter().count()
            ),
            ("PATCH", "/v1/x?y=z".to_string(), 2)
        );
        assert_eq!(http.peer, Some("[::1]:8080".parse().expect("addr")));
    }

    #[test]
    fn a_shared_clock_encodes_each_event_at_its_own_receive_time() {
        let at = |nanos| UNIX_EPOCH + Duration::from_nanos(nanos);
        let times = [at(5), at(5), at(1_700_000_000_123_456_789), at(5)];
        let mut clock = EpochNanos::default();
        for (seq, time) in times.into_iter().enumerate() {
            let event = Event::new_at(
                EventId {
                    node: 1,
                    seq: seq as u64,
                },
                Arc::from("tcp"),
                Bytes::from_static(b"line"),
                Attributes::None,
                time,
            );
            let mut out = BytesMut::new();
            encode_with_clock(&event, &mut out, &mut clock);
            let back = decode(out.freeze(), &name).expect("round trip");
            assert_eq!(nanos(back.received_at), nanos(time), "event {seq}");
        }
    }

    #[test]
    fn every_truncation_and_a_trailing_byte_are_errors_not_panics() {
        let event = Event::new(
            EventId { node: 1, seq: 2 },
            Arc::from("tcp"),
            Bytes::from_static(b"line"),
            Attributes::Peer("127.0.0.1:9".parse().expect("addr")),
        );
        let record = encode(&event).freeze();
        for cut in 0..record.len() {
            assert!(decode(record.slice(..cut), &name).is_err(), "cut at {cut}");
        }
        let mut longer = BytesMut::from(&record[..]);
        longer.put_u8(0);
        assert!(decode(longer.freeze(), &name).is_err());
        assert!(
            decode(
                Bytes::from_static(&[
                    1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
                ]),
                &name
            )
            .is_err()
        );
    }

    #[test]
    fn the_fast_path_writes_the_bytes_the_field_by_field_path_does() {
        let peers: [Option<SocketAddr>; 3] = [
            None,
            Some("10.1.2.3:5140".parse().expect("addr")),
            Some("[2001:db8::7]:65535".parse().expect("addr")),
        ];
        let long = "l".repeat(SHORT_SOURCE + 1);
        let widest = "s".repeat(SHORT_SOURCE);
        for (i, peer) in peers.into_iter().enumerate() {
            for source in ["", "tcp", &widest, &long] {
                let event = Event::new_at(
                    EventId {
                        node: 0xdead_beef,
                        seq: u64::MAX - i as u64,
                    },
                    Arc::from(source),
                    Bytes::from(vec![b'p'; i * 300]),
                    peer.map_or(Attributes::None, Attributes::Peer),
                    UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
                );
                let mut fast = Vec::new();
                encode_with_clock(&event, &mut fast, &mut EpochNanos::default());
                let mut slow = Vec::new();
                encode_fields(&event, peer, &mut slow, &mut EpochNanos::default());
                assert_eq!(fast, slow, "peer {i}, source of {} bytes", source.len());
                let back = decode(Bytes::from(fast), &name).expect("round trip");
                assert_eq!((&*back.source, back.payload.len()), (source, i * 300));
            }
        }
    }

    #[test]
    fn a_huge_header_count_is_an_error_not_a_panic() {
        // Found by the event_record fuzz target: HeaderMap::with_capacity panics past 32768.
        let crash: &[u8] = &[
            1, 2, 0, 0, 0, 23, 250, 0, 0, 23, 0, 0, 33, 33, 0, 0, 2, 0, 0, 156, 0, 0, 2, 0, 16, 0,
            1, 84, 6, 0, 0, 0, 83, 95, 95, 95, 95, 95, 95, 122, 95, 95, 95, 95, 95, 95, 95, 95, 95,
            95, 95, 95, 95, 95, 95, 37, 95, 95, 95, 255, 0, 0,
        ];
        assert!(decode(Bytes::copy_from_slice(crash), &name).is_err());
    }
}
