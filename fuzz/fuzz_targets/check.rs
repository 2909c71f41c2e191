// What both targets check, shared with `include!`: the input is fed once whole and once in
// small chunks, and the frames must be the same — a decoder's answer may not depend on how the
// network cut the stream — and each must respect the framing's limits.
//
// Input layout: byte 0 picks `max_frame_bytes` (1 to 64, small so that limits are hit), byte 1
// the chunk size (1 to 32), the rest is the stream.

use bytes::BytesMut;
use sluice::sources::framing::{Decoder, Frame, Framing};

fn frames(framing: Framing, max: usize, input: &[u8], chunk: usize) -> Vec<Frame> {
    let mut decoder = Decoder::new(framing, max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(frame) = decoder.decode(&mut buf) {
            out.push(frame);
        }
        // Between reads, at most a frame's limit (or a 9-digit length) and a CR are held.
        assert!(
            buf.len() <= max.max(9) + 1,
            "buffer held {} bytes",
            buf.len()
        );
    }
    out.extend(decoder.finish(&mut buf));
    assert!(buf.is_empty(), "finish leaves nothing behind");
    out
}

fn check(framing: Framing, data: &[u8]) {
    let [max, chunk, input @ ..] = data else {
        return;
    };
    let max = usize::from(max % 64) + 1;
    let chunk = usize::from(chunk % 32) + 1;
    let whole = frames(framing, max, input, input.len());
    let chunked = frames(framing, max, input, chunk);
    assert_eq!(whole, chunked, "chunking changed the frames");
    let mut event_bytes = 0;
    for frame in &whole {
        if let Frame::Event(payload) = frame {
            assert!(!payload.is_empty(), "no empty events");
            assert!(payload.len() <= max, "an event over the limit");
            if framing == Framing::Lines {
                assert!(!payload.contains(&b'\n'), "a line holds no LF");
            }
            event_bytes += payload.len();
        }
    }
    assert!(event_bytes <= input.len(), "events hold only input bytes");
}
