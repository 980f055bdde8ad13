//! The resize channel in arbitrary messages: never panics, stays bounded,
//! and terminates.
#![no_main]

use hatch_wire::resize::ResizeDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let mut dec = ResizeDecoder::with_max_pending(256);
    for piece in input.chunks(usize::from(step.max(1))) {
        dec.push(piece);
        // Every call consumes at least one value or reports None/Err.
        for _ in 0..=piece.len() {
            match dec.next_size() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
});
