//! SPDY/3 header blocks: the name/value list and its zlib compression.
//!
//! A connection has exactly one [`HeaderCompressor`] (for the frames it
//! sends) and one [`HeaderDecompressor`] (for the frames it receives). Each
//! is a single zlib stream primed with the SPDY/3 dictionary that lives as
//! long as the connection; every header block ends with a `Z_SYNC_FLUSH` so
//! the peer can decode it without waiting for more. Never create one per
//! frame, and never skip a received block: the stream would desynchronise.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;
use super::dictionary::{DICTIONARY, DICTIONARY_ADLER32};

/// Separator between several values of one header.
pub const VALUE_SEPARATOR: u8 = 0;

/// An ordered list of headers with lowercase names; each name appears once
/// and has one or more values (joined with NUL on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<String>)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds `value` to header `name` (lowercased), creating it if needed.
    /// Names and values are checked when the block is encoded.
    pub fn append(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.entries.push((name, vec![value])),
        }
    }

    /// Builder form of [`append`](Self::append).
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Headers {
        self.append(name, value);
        self
    }

    /// The first value of `name` (looked up case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).first().map(String::as_str)
    }

    /// All values of `name` (looked up case-insensitively), in order.
    pub fn get_all(&self, name: &str) -> &[String] {
        self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map_or(&[], |(_, v)| v.as_slice())
    }

    /// Every header as `(name, values)`, in block order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Serializes the uncompressed block: `u32 count`, then per header
    /// `u32 len, name, u32 len, values joined by NUL`.
    pub fn to_block(&self) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::new();
        push_len(&mut out, self.entries.len())?;
        for (name, values) in &self.entries {
            check_name(name)?;
            push_len(&mut out, name.len())?;
            out.extend_from_slice(name.as_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            for (i, v) in values.iter().enumerate() {
                if v.as_bytes().contains(&VALUE_SEPARATOR) {
                    return Err(SpdyError::InvalidHeaderValue(name.clone()));
                }
                if i > 0 {
                    out.push(VALUE_SEPARATOR);
                }
                out.extend_from_slice(v.as_bytes());
            }
            let value_len = u32::try_from(out.len() - len_at - 4).map_err(|_| SpdyError::HeaderBlockTooLarge)?;
            out[len_at..len_at + 4].copy_from_slice(&value_len.to_be_bytes());
        }
        Ok(out)
    }

    /// Parses an uncompressed block, enforcing `limits.max_headers`.
    /// Rejects (like spdystream) upper-case and duplicate names, plus empty
    /// names, NUL in names, non-UTF-8 and trailing bytes.
    pub fn from_block(block: &[u8], limits: &HeaderLimits) -> Result<Headers, SpdyError> {
        let mut r = block;
        let count = take_u32(&mut r)? as usize;
        if count > limits.max_headers {
            return Err(SpdyError::TooManyHeaders { count, max: limits.max_headers });
        }
        // Each header needs at least 8 length bytes: don't trust `count`
        // for the allocation.
        if count > r.len() / 8 {
            return Err(SpdyError::MalformedHeaderBlock("header count exceeds block size"));
        }
        let mut headers = Headers { entries: Vec::with_capacity(count) };
        for _ in 0..count {
            let name = take_str(&mut r)?;
            check_name(name)?;
            if headers.entries.iter().any(|(n, _)| n == name) {
                return Err(SpdyError::DuplicateHeader(name.to_owned()));
            }
            let value = take_str(&mut r)?;
            let values = value.split('\0').map(str::to_owned).collect();
            headers.entries.push((name.to_owned(), values));
        }
        if !r.is_empty() {
            return Err(SpdyError::MalformedHeaderBlock("trailing bytes after headers"));
        }
        Ok(headers)
    }
}

impl<N: AsRef<str>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Headers {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n.as_ref(), v);
        }
        h
    }
}

fn check_name(name: &str) -> Result<(), SpdyError> {
    if name.is_empty() || name.bytes().any(|b| b == 0 || b.is_ascii_uppercase()) {
        return Err(SpdyError::InvalidHeaderName(name.to_owned()));
    }
    Ok(())
}

fn push_len(out: &mut Vec<u8>, len: usize) -> Result<(), SpdyError> {
    let len = u32::try_from(len).map_err(|_| SpdyError::HeaderBlockTooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn take_u32(r: &mut &[u8]) -> Result<u32, SpdyError> {
    let Some((head, rest)) = r.split_first_chunk::<4>() else {
        return Err(SpdyError::MalformedHeaderBlock("truncated length"));
    };
    *r = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str<'a>(r: &mut &'a [u8]) -> Result<&'a str, SpdyError> {
    let len = take_u32(r)? as usize;
    if len > r.len() {
        return Err(SpdyError::MalformedHeaderBlock("truncated name or value"));
    }
    let (s, rest) = r.split_at(len);
    *r = rest;
    std::str::from_utf8(s).map_err(|_| SpdyError::MalformedHeaderBlock("name or value is not utf-8"))
}

/// Bounds on received header blocks, so a small compressed block cannot make
/// us allocate without limit (a "zlib bomb").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Largest decompressed block accepted, in bytes.
    pub max_decompressed: usize,
    /// Largest number of distinct header names accepted.
    pub max_headers: usize,
}

impl Default for HeaderLimits {
    /// 256 KiB and 256 headers: kubectl sends one header per stream.
    fn default() -> Self {
        HeaderLimits { max_decompressed: 256 * 1024, max_headers: 256 }
    }
}

/// Compresses outgoing header blocks: one per connection.
pub struct HeaderCompressor {
    z: Compress,
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor").field("total_out", &self.z.total_out()).finish()
    }
}

impl HeaderCompressor {
    /// A new stream at best compression, primed with the SPDY/3 dictionary,
    /// as spdystream does; its first block starts `78 F9 E3 C6 A7 C2`.
    pub fn new() -> Result<HeaderCompressor, SpdyError> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(DICTIONARY).map_err(|e| SpdyError::Compress(e.to_string()))?;
        Ok(HeaderCompressor { z })
    }

    /// Compresses a serialized block and appends it to `out`, ending with a
    /// sync flush.
    pub fn compress_block(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let start_in = self.z.total_in();
        loop {
            // zlib's bound for a sync flush is a little over the input; the
            // loop covers the rare case where it needs more.
            out.reserve(block.len() / 2 + 64);
            let consumed = usize::try_from(self.z.total_in() - start_in)
                .map_err(|_| SpdyError::Compress("counter overflow".into()))?;
            let input = block.get(consumed..).unwrap_or_default();
            let before_out = out.len();
            let status =
                self.z.compress_vec(input, out, FlushCompress::Sync).map_err(|e| SpdyError::Compress(e.to_string()))?;
            let consumed = usize::try_from(self.z.total_in() - start_in)
                .map_err(|_| SpdyError::Compress("counter overflow".into()))?;
            // Done once all input is in and the flush fit in the buffer.
            if consumed == block.len() && out.len() < out.capacity() {
                return Ok(());
            }
            if status == Status::BufError && out.len() == before_out {
                return Err(SpdyError::Compress("no progress".into()));
            }
        }
    }

    /// Serializes and compresses `headers`, appending to `out`.
    pub fn compress(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        self.compress_block(&headers.to_block()?, out)
    }
}

/// Decompresses received header blocks: one per connection.
pub struct HeaderDecompressor {
    z: Decompress,
    limits: HeaderLimits,
    chunk: Box<[u8]>,
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor")
            .field("limits", &self.limits)
            .field("total_in", &self.z.total_in())
            .finish()
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        HeaderDecompressor::new(HeaderLimits::default())
    }
}

impl HeaderDecompressor {
    /// A new stream enforcing `limits`.
    pub fn new(limits: HeaderLimits) -> HeaderDecompressor {
        HeaderDecompressor { z: Decompress::new(true), limits, chunk: vec![0; 16 * 1024].into_boxed_slice() }
    }

    /// The limits in force.
    pub fn limits(&self) -> HeaderLimits {
        self.limits
    }

    /// Inflates one compressed block (the whole header-block part of one
    /// frame) into raw bytes, at most `limits.max_decompressed` of them.
    /// Any error leaves the stream unusable: treat it as a connection error.
    pub fn decompress_block(&mut self, compressed: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let max = self.limits.max_decompressed;
        let mut out = Vec::new();
        let start_in = self.z.total_in();
        loop {
            let consumed = usize::try_from(self.z.total_in() - start_in)
                .map_err(|_| SpdyError::Decompress("counter overflow".into()))?;
            let input = compressed.get(consumed..).unwrap_or_default();
            let before_out = self.z.total_out();
            let result = self.z.decompress(input, &mut self.chunk, FlushDecompress::Sync);
            let produced = usize::try_from(self.z.total_out() - before_out)
                .map_err(|_| SpdyError::Decompress("counter overflow".into()))?;
            if out.len() + produced > max {
                return Err(SpdyError::HeaderBlockTooLarge);
            }
            out.extend_from_slice(self.chunk.get(..produced).unwrap_or_default());
            let consumed_now = usize::try_from(self.z.total_in() - start_in)
                .map_err(|_| SpdyError::Decompress("counter overflow".into()))?;
            match result {
                Ok(Status::StreamEnd) => {
                    // The peer ended its zlib stream; nothing may follow.
                    if consumed_now != compressed.len() {
                        return Err(SpdyError::Decompress("data after end of zlib stream".into()));
                    }
                    return Ok(out);
                }
                Ok(_) => {
                    // All input taken and the output chunk not filled: the
                    // sync-flushed block is complete.
                    if consumed_now == compressed.len() && produced < self.chunk.len() {
                        return Ok(out);
                    }
                    if consumed_now == consumed && produced == 0 {
                        return Err(SpdyError::Decompress("no progress".into()));
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ADLER32) => {
                        self.z.set_dictionary(DICTIONARY).map_err(|e| SpdyError::Decompress(e.to_string()))?;
                    }
                    Some(other) => return Err(SpdyError::UnknownDictionary(other)),
                    None => return Err(SpdyError::Decompress(e.to_string())),
                },
            }
        }
    }

    /// Inflates and parses one compressed block.
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let block = self.decompress_block(compressed)?;
        Headers::from_block(&block, &self.limits)
    }
}
