//! Docker's multiplexed stream framing (`application/vnd.docker.multiplexed-stream`),
//! used on hijacked attach/exec connections when no TTY is allocated.
//!
//! Each frame is an 8-byte header `[stream, 0, 0, 0, len u32 BE]` followed by
//! `len` payload bytes. With a TTY the stream is raw bytes instead: do not
//! use this module then.
//!
//! ```
//! use hatch_wire::stdcopy::{self, Decoder, StdStream};
//!
//! let mut wire = Vec::new();
//! stdcopy::encode_frame(StdStream::Stdout, b"hello\n", &mut wire).unwrap();
//! assert_eq!(wire, b"\x01\x00\x00\x00\x00\x00\x00\x06hello\n");
//!
//! // Decode it arriving in two reads, without buffering whole frames.
//! let mut dec = Decoder::new();
//! let mut out = Vec::new();
//! for read in [&wire[..3], &wire[3..]] {
//!     dec.feed(read, |stream, chunk| out.push((stream, chunk.to_vec()))).unwrap();
//! }
//! dec.finish().unwrap();
//! assert_eq!(out, vec![(StdStream::Stdout, b"hello\n".to_vec())]);
//! ```

/// Length of a frame header.
pub const HEADER_LEN: usize = 8;

/// Largest payload one frame can carry.
pub const MAX_PAYLOAD: usize = u32::MAX as usize;

/// The stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StdStream {
    /// 0: stdin (never sent by the daemon, accepted for completeness).
    Stdin = 0,
    /// 1: stdout.
    Stdout = 1,
    /// 2: stderr.
    Stderr = 2,
    /// 3: an error from the daemon itself; the docker CLI's `StdCopy` turns
    /// its payload into an error and stops.
    SystemErr = 3,
}

impl StdStream {
    /// The wire id.
    pub const fn id(self) -> u8 {
        self as u8
    }

    /// Parses a wire id.
    pub const fn from_id(id: u8) -> Option<StdStream> {
        match id {
            0 => Some(StdStream::Stdin),
            1 => Some(StdStream::Stdout),
            2 => Some(StdStream::Stderr),
            3 => Some(StdStream::SystemErr),
            _ => None,
        }
    }
}

/// Errors from the stdcopy codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StdcopyError {
    /// A header names a stream other than 0–3 (docker's `StdCopy` rejects it
    /// too). Often means the connection is a raw TTY stream, not stdcopy.
    #[error("unknown stdcopy stream id {0}")]
    UnknownStream(u8),
    /// Encoding a payload larger than `u32::MAX` bytes.
    #[error("stdcopy payload of {0} bytes exceeds the 4 GiB frame limit")]
    PayloadTooLarge(usize),
    /// The input ended inside a frame.
    #[error("stdcopy stream truncated: {0} bytes missing from the current frame")]
    Truncated(u64),
}

/// The 8-byte header for a frame of `len` payload bytes on `stream`.
pub fn encode_header(stream: StdStream, len: usize) -> Result<[u8; HEADER_LEN], StdcopyError> {
    let len = u32::try_from(len).map_err(|_| StdcopyError::PayloadTooLarge(len))?;
    let l = len.to_be_bytes();
    Ok([stream.id(), 0, 0, 0, l[0], l[1], l[2], l[3]])
}

/// Appends one frame (header + payload) to `out`. Writing the header and
/// then the payload separately (vectored write) avoids the copy; this is
/// the convenient form.
pub fn encode_frame(stream: StdStream, payload: &[u8], out: &mut Vec<u8>) -> Result<(), StdcopyError> {
    let header = encode_header(stream, payload.len())?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(())
}

/// Parses a frame header into its stream and payload length. Bytes 1–3 are
/// ignored, as docker's `StdCopy` does.
pub fn decode_header(header: &[u8; HEADER_LEN]) -> Result<(StdStream, u32), StdcopyError> {
    let stream = StdStream::from_id(header[0]).ok_or(StdcopyError::UnknownStream(header[0]))?;
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    Ok((stream, len))
}

/// What one [`Decoder::decode`] call got from its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Bytes of the input used; pass the rest to the next call.
    pub consumed: usize,
    /// Payload bytes among them, with their stream, if any.
    pub chunk: Option<(StdStream, &'a [u8])>,
}

/// Incremental decoder: feed it whatever each read returned; it hands back
/// payload chunks as soon as they arrive (a frame split across reads comes
/// out as several chunks of the same stream), without buffering payloads.
///
/// After an error the decoder is not usable: the framing is lost.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    header_len: usize,
    // The frame whose payload is being read, and the bytes left in it.
    current: Option<(StdStream, u32)>,
}

impl Decoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Decodes from the start of `input`: how many bytes were consumed and,
    /// if any payload bytes were among them, that chunk.
    /// Call again with the rest of the input until it is empty; a call on
    /// non-empty input always consumes at least one byte or fails.
    /// Zero-length frames are consumed silently.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, StdcopyError> {
        let mut consumed = 0;
        loop {
            if let Some((stream, remaining)) = self.current {
                let rest = input.get(consumed..).unwrap_or_default();
                if rest.is_empty() {
                    return Ok(Decoded { consumed, chunk: None });
                }
                let take = remaining.min(u32::try_from(rest.len()).unwrap_or(u32::MAX));
                let left = remaining - take;
                let take = take as usize;
                let chunk = &rest[..take];
                self.current = if left == 0 { None } else { Some((stream, left)) };
                return Ok(Decoded { consumed: consumed + take, chunk: Some((stream, chunk)) });
            }
            let rest = input.get(consumed..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(Decoded { consumed, chunk: None });
            }
            let want = HEADER_LEN - self.header_len;
            let take = want.min(rest.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&rest[..take]);
            self.header_len += take;
            consumed += take;
            if self.header_len < HEADER_LEN {
                return Ok(Decoded { consumed, chunk: None });
            }
            self.header_len = 0;
            let (stream, len) = decode_header(&self.header)?;
            if len > 0 {
                self.current = Some((stream, len));
            }
        }
    }

    /// Decodes all of `input`, calling `on_chunk` for every payload chunk.
    pub fn feed(&mut self, mut input: &[u8], mut on_chunk: impl FnMut(StdStream, &[u8])) -> Result<(), StdcopyError> {
        while !input.is_empty() {
            let Decoded { consumed, chunk } = self.decode(input)?;
            if let Some((stream, bytes)) = chunk {
                on_chunk(stream, bytes);
            }
            input = input.get(consumed..).unwrap_or_default();
        }
        Ok(())
    }

    /// True between frames (the only place a stream may legitimately end).
    pub fn at_frame_boundary(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }

    /// Call at EOF: fails if the stream ended inside a header or payload.
    pub fn finish(&self) -> Result<(), StdcopyError> {
        match self.current {
            Some((_, left)) => Err(StdcopyError::Truncated(u64::from(left))),
            None if self.header_len > 0 => Err(StdcopyError::Truncated((HEADER_LEN - self.header_len) as u64)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream() -> impl Strategy<Value = StdStream> {
        prop::sample::select(vec![StdStream::Stdin, StdStream::Stdout, StdStream::Stderr, StdStream::SystemErr])
    }

    #[test]
    fn header_layout() -> Result<(), StdcopyError> {
        assert_eq!(encode_header(StdStream::Stderr, 0x0102_0304)?, [2, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(decode_header(&[1, 9, 9, 9, 0, 0, 1, 0])?, (StdStream::Stdout, 256));
        assert_eq!(decode_header(&[4, 0, 0, 0, 0, 0, 0, 0]), Err(StdcopyError::UnknownStream(4)));
        Ok(())
    }

    #[test]
    fn unknown_stream_is_error() {
        let mut dec = Decoder::new();
        // A TTY stream mistaken for stdcopy.
        assert_eq!(dec.feed(b"hello world", |_, _| {}), Err(StdcopyError::UnknownStream(b'h')));
    }

    #[test]
    fn truncation_detected() -> Result<(), StdcopyError> {
        let mut dec = Decoder::new();
        dec.feed(&[1, 0, 0, 0, 0, 0, 0, 5, b'a'], |_, _| {})?;
        assert_eq!(dec.finish(), Err(StdcopyError::Truncated(4)));
        let mut dec = Decoder::new();
        dec.feed(&[1, 0, 0], |_, _| {})?;
        assert!(!dec.at_frame_boundary());
        assert_eq!(dec.finish(), Err(StdcopyError::Truncated(5)));
        Ok(())
    }

    #[test]
    fn empty_frames_skipped() -> Result<(), StdcopyError> {
        let mut wire = Vec::new();
        encode_frame(StdStream::Stdout, b"", &mut wire)?;
        encode_frame(StdStream::Stderr, b"x", &mut wire)?;
        let mut out = Vec::new();
        let mut dec = Decoder::new();
        dec.feed(&wire, |s, c| out.push((s, c.to_vec())))?;
        assert_eq!(out, vec![(StdStream::Stderr, b"x".to_vec())]);
        assert!(dec.at_frame_boundary());
        Ok(())
    }

    proptest! {
        #[test]
        fn round_trip_any_split(
            frames in prop::collection::vec((stream(), prop::collection::vec(any::<u8>(), 0..300)), 0..10),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut wire = Vec::new();
            for (s, p) in &frames {
                encode_frame(*s, p, &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let mut dec = Decoder::new();
            // Re-assemble per-frame payloads from the chunks.
            let mut got: Vec<(StdStream, Vec<u8>)> = Vec::new();
            for w in points.windows(2) {
                dec.feed(&wire[w[0]..w[1]], |s, c| got.push((s, c.to_vec())))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            dec.finish().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let flat = |v: &[(StdStream, Vec<u8>)]| -> Vec<(StdStream, u8)> {
                v.iter().flat_map(|(s, p)| p.iter().map(move |b| (*s, *b))).collect()
            };
            prop_assert_eq!(flat(&got), flat(&frames));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), cut in any::<prop::sample::Index>()) {
            let at = cut.index(bytes.len() + 1);
            let mut dec = Decoder::new();
            if dec.feed(&bytes[..at], |_, _| {}).is_ok() {
                let _ = dec.feed(&bytes[at..], |_, _| {});
            }
            let _ = dec.finish();
        }
    }
}
