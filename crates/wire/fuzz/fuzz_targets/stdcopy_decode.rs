//! stdcopy decoding in arbitrary read sizes: never panics, never loops, and
//! the chunks add up to the same bytes however the input is split.
#![no_main]

use hatch_wire::stdcopy::{Decoder, StdStream};
use libfuzzer_sys::fuzz_target;

fn run(input: &[u8], step: usize) -> (Vec<(StdStream, u8)>, bool) {
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    for piece in input.chunks(step) {
        if dec.feed(piece, |s, c| out.extend(c.iter().map(|b| (s, *b)))).is_err() {
            return (out, false);
        }
    }
    (out, dec.finish().is_ok())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let a = run(input, usize::from(step.max(1)));
    let b = run(input, input.len().max(1));
    assert_eq!(a, b);
});
