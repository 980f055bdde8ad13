//! A byte stream fed to a connection's codec in arbitrary pieces: never
//! panics, and splitting the input never changes the decoded frames.
#![no_main]

use hatch_wire::spdy::{Frame, HeaderDecompressor, HeaderLimits, decode};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 64 * 1024;

// The free `decode` with a bare decompressor: `Codec` would also build a
// compressor per run, which costs most of the fuzzing time.
fn decompressor() -> HeaderDecompressor {
    HeaderDecompressor::new(HeaderLimits { max_decompressed: 64 * 1024, max_headers: 64 })
}

fn decode_whole(input: &[u8]) -> Vec<Frame> {
    let mut dec = decompressor();
    let mut rest = input;
    let mut frames = Vec::new();
    while let Ok(Some((frame, used))) = decode(rest, MAX_FRAME, &mut dec) {
        assert!(used > 0 && used <= rest.len());
        frames.push(frame);
        rest = &rest[used..];
    }
    frames
}

fn decode_piecewise(input: &[u8], step: usize) -> Vec<Frame> {
    let mut dec = decompressor();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&buf, MAX_FRAME, &mut dec) {
                Ok(Some((frame, used))) => {
                    frames.push(frame);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    frames
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let whole = decode_whole(input);
    let pieces = decode_piecewise(input, usize::from(step.max(1)));
    assert_eq!(whole, pieces);
});
