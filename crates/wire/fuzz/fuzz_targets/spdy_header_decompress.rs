//! Header blocks through one connection's decompressor: either raw fuzz
//! blocks from the start of the zlib stream, or fuzz blocks after a valid
//! first block (so the dictionary is loaded and deflate state is live).
#![no_main]

use hatch_wire::spdy::{HeaderCompressor, HeaderDecompressor, HeaderLimits, Headers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limits = HeaderLimits { max_decompressed: 64 * 1024, max_headers: 64 };
    let mut dec = HeaderDecompressor::new(limits);
    if mode & 1 == 1 {
        let Ok(mut comp) = HeaderCompressor::new() else { return };
        let mut first = Vec::new();
        if comp.compress(&Headers::new().with("streamtype", "error"), &mut first).is_err() {
            return;
        }
        assert!(dec.decompress(&first).is_ok());
    }
    // Split the rest into blocks at 0xFE bytes, stop at the first error
    // (a real connection would be closed).
    for block in rest.split(|&b| b == 0xFE) {
        if dec.decompress(block).is_err() {
            break;
        }
    }
    let _ = Headers::from_block(rest, &limits);
});
