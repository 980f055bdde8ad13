//! Terminal size messages on the resize channel (WebSocket channel 4, SPDY
//! `resize` stream).
//!
//! Clients write Go `json.Encoder` output: `{"Width":100,"Height":30}\n`.
//! The Go server runs a *streaming* JSON decoder over the whole channel, so
//! an object may be split across messages and several may share one; the
//! [`ResizeDecoder`] does the same.
//!
//! ```
//! use hatch_wire::resize::{self, ResizeDecoder, TerminalSize};
//!
//! let size = TerminalSize { width: 100, height: 30 };
//! assert_eq!(resize::encode(size), b"{\"Width\":100,\"Height\":30}\n");
//!
//! let mut dec = ResizeDecoder::new();
//! dec.push(b"{\"Width\":100,\"Hei");
//! assert_eq!(dec.next_size(), Ok(None)); // incomplete
//! dec.push(b"ght\":30}\n{\"width\":80,\"height\":24}");
//! assert_eq!(dec.next_size(), Ok(Some(size)));
//! assert_eq!(dec.next_size(), Ok(Some(TerminalSize { width: 80, height: 24 })));
//! assert_eq!(dec.next_size(), Ok(None));
//! ```

use serde_json::Value;

/// A terminal size in character cells. Either may be 0 when the client
/// omitted it (Go leaves missing fields at zero); callers usually ignore a
/// 0×0 size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TerminalSize {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// Encodes a size as client-go does: `{"Width":W,"Height":H}\n`.
pub fn encode(size: TerminalSize) -> Vec<u8> {
    format!("{{\"Width\":{},\"Height\":{}}}\n", size.width, size.height).into_bytes()
}

/// Default bound on buffered bytes that do not yet form a complete value.
pub const DEFAULT_MAX_PENDING: usize = 4096;

/// Errors from [`ResizeDecoder`]. Once one is returned the decoder stays
/// failed and returns it again on every call, like the Go server, which stops
/// reading the resize stream at the first decode error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    /// The stream is not valid JSON.
    #[error("invalid resize json: {0}")]
    Json(String),
    /// A JSON value that is not an object.
    #[error("resize message is not a json object")]
    NotAnObject,
    /// `Width` or `Height` is not an integer in `0..=65535`.
    #[error("resize field {0} is not an integer in 0..=65535")]
    BadField(&'static str),
    /// More than the limit of bytes arrived without forming a complete value.
    #[error("resize message exceeds {0} bytes without a complete json value")]
    TooLong(usize),
}

/// Streaming decoder for the resize channel: [`push`](Self::push) received
/// bytes, then call [`next_size`](Self::next_size) until it returns
/// `Ok(None)`.
#[derive(Debug, Clone)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
    // Bytes before `start` are consumed; compacted lazily.
    start: usize,
    max_pending: usize,
    failed: Option<ResizeError>,
}

impl Default for ResizeDecoder {
    fn default() -> Self {
        ResizeDecoder::new()
    }
}

impl ResizeDecoder {
    /// A decoder with the default bound of [`DEFAULT_MAX_PENDING`] bytes.
    pub fn new() -> ResizeDecoder {
        ResizeDecoder::with_max_pending(DEFAULT_MAX_PENDING)
    }

    /// A decoder that fails once more than `max_pending` bytes are buffered
    /// without forming a complete JSON value.
    pub fn with_max_pending(max_pending: usize) -> ResizeDecoder {
        ResizeDecoder { buf: Vec::new(), start: 0, max_pending, failed: None }
    }

    /// Appends received bytes (one channel message, any split). Memory use is
    /// bounded by the largest pushed chunk plus `max_pending` as long as the
    /// caller drains [`next_size`](Self::next_size) after each push.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete size, `Ok(None)` if more bytes are needed.
    pub fn next_size(&mut self) -> Result<Option<TerminalSize>, ResizeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.decode_one();
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
        }
        result
    }

    fn decode_one(&mut self) -> Result<Option<TerminalSize>, ResizeError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        // Whitespace between values is not "pending garbage".
        let skip = pending.iter().take_while(|b| b.is_ascii_whitespace()).count();
        self.start += skip;
        let pending = pending.get(skip..).unwrap_or_default();
        if pending.is_empty() {
            return Ok(None);
        }
        let mut stream = serde_json::Deserializer::from_slice(pending).into_iter::<Value>();
        match stream.next() {
            None => Ok(None),
            Some(Ok(value)) => {
                self.start += stream.byte_offset();
                size_from_value(&value).map(Some)
            }
            Some(Err(e)) if e.is_eof() => {
                if pending.len() > self.max_pending {
                    Err(ResizeError::TooLong(self.max_pending))
                } else {
                    Ok(None)
                }
            }
            Some(Err(e)) => Err(ResizeError::Json(e.to_string())),
        }
    }
}

// Go's json.Unmarshal into a struct: keys match field names
// case-insensitively, unknown keys are ignored, missing or null fields stay 0,
// and a later duplicate key wins.
fn size_from_value(value: &Value) -> Result<TerminalSize, ResizeError> {
    let Value::Object(map) = value else {
        return Err(ResizeError::NotAnObject);
    };
    let mut size = TerminalSize::default();
    for (key, v) in map {
        let (slot, name) = if key.eq_ignore_ascii_case("width") {
            (&mut size.width, "Width")
        } else if key.eq_ignore_ascii_case("height") {
            (&mut size.height, "Height")
        } else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        *slot = v.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or(ResizeError::BadField(name))?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(dec: &mut ResizeDecoder) -> Result<Vec<TerminalSize>, ResizeError> {
        let mut out = Vec::new();
        while let Some(s) = dec.next_size()? {
            out.push(s);
        }
        Ok(out)
    }

    const fn ts(width: u16, height: u16) -> TerminalSize {
        TerminalSize { width, height }
    }

    #[test]
    fn encode_matches_go() {
        assert_eq!(encode(ts(100, 30)), b"{\"Width\":100,\"Height\":30}\n");
        assert_eq!(encode(ts(0, 65535)), b"{\"Width\":0,\"Height\":65535}\n");
    }

    #[test]
    fn concatenated_and_split() -> Result<(), ResizeError> {
        let mut dec = ResizeDecoder::new();
        dec.push(b"{\"Width\":1,\"Height\":2}\n{\"Width\":3,\"Height\":4}\n{\"Wid");
        assert_eq!(drain(&mut dec)?, vec![ts(1, 2), ts(3, 4)]);
        dec.push(b"th\":5,");
        assert_eq!(drain(&mut dec)?, vec![]);
        dec.push(b"\"Height\":6}");
        assert_eq!(drain(&mut dec)?, vec![ts(5, 6)]);
        dec.push(b"\n \r\n\t");
        assert_eq!(drain(&mut dec)?, vec![]);
        Ok(())
    }

    #[test]
    fn go_unmarshal_semantics() -> Result<(), ResizeError> {
        let mut dec = ResizeDecoder::new();
        dec.push(br#"{"width":80,"height":24}{"WIDTH":1}{"Width":9,"Extra":[1,2],"Height":null}{"Width":1,"Width":2}"#);
        assert_eq!(drain(&mut dec)?, vec![ts(80, 24), ts(1, 0), ts(9, 0), ts(2, 0)]);
        Ok(())
    }

    #[test]
    fn errors_are_sticky() {
        let mut dec = ResizeDecoder::new();
        dec.push(b"{\"Width\":1,\"Height\":2}]");
        assert_eq!(dec.next_size(), Ok(Some(ts(1, 2))));
        assert!(matches!(dec.next_size(), Err(ResizeError::Json(_))));
        dec.push(b"{\"Width\":1,\"Height\":2}");
        assert!(matches!(dec.next_size(), Err(ResizeError::Json(_))));
    }

    #[test]
    fn rejects_bad_values() {
        for (input, err) in [
            (&b"[1,2]"[..], ResizeError::NotAnObject),
            (b"42 ", ResizeError::NotAnObject),
            (b"{\"Width\":65536}", ResizeError::BadField("Width")),
            (b"{\"Height\":-1}", ResizeError::BadField("Height")),
            (b"{\"Height\":1.5}", ResizeError::BadField("Height")),
            (b"{\"Width\":\"80\"}", ResizeError::BadField("Width")),
        ] {
            let mut dec = ResizeDecoder::new();
            dec.push(input);
            assert_eq!(dec.next_size(), Err(err));
        }
    }

    #[test]
    fn bounded_pending() {
        let mut dec = ResizeDecoder::new();
        dec.push(b"{\"Width\":\"");
        dec.push(&[b'a'; DEFAULT_MAX_PENDING]);
        assert_eq!(dec.next_size(), Err(ResizeError::TooLong(DEFAULT_MAX_PENDING)));
        // Exactly at the bound is still fine.
        let mut dec = ResizeDecoder::with_max_pending(10);
        dec.push(b"{\"Width\":1");
        assert_eq!(dec.next_size(), Ok(None));
        dec.push(b"0");
        assert_eq!(dec.next_size(), Err(ResizeError::TooLong(10)));
    }

    proptest! {
        #[test]
        fn round_trip_any_split(sizes in prop::collection::vec((any::<u16>(), any::<u16>()), 1..8), cut in any::<prop::sample::Index>()) {
            let stream: Vec<u8> = sizes.iter().flat_map(|&(w, h)| encode(ts(w, h))).collect();
            let at = cut.index(stream.len() + 1);
            let mut dec = ResizeDecoder::new();
            let mut got = Vec::new();
            for part in [&stream[..at], &stream[at..]] {
                dec.push(part);
                got.extend(drain(&mut dec).map_err(|e| TestCaseError::fail(e.to_string()))?);
            }
            let want: Vec<TerminalSize> = sizes.iter().map(|&(w, h)| ts(w, h)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn garbage_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut dec = ResizeDecoder::with_max_pending(64);
            for c in &chunks {
                dec.push(c);
                for _ in 0..100 {
                    match dec.next_size() {
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
    }
}
