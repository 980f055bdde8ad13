//! SPDY/3.1 frames: types, decoding and encoding.
//!
//! ```text
//! Control frame: |1| version(15)=3 | type(16) | flags(8) | length(24) | payload
//! Data frame:    |0| stream-id(31)            | flags(8) | length(24) | payload
//! ```

use super::SpdyError;
use super::headers::{HeaderCompressor, HeaderDecompressor, HeaderLimits, Headers};

/// The only SPDY version spoken.
pub const VERSION: u16 = 3;
/// Length of every frame header.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload the 24-bit length field can describe.
pub const MAX_FRAME_PAYLOAD: usize = 0x00FF_FFFF;
/// Largest stream id (31 bits).
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;

/// FIN flag (DATA, SYN_STREAM, SYN_REPLY, HEADERS): the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL flag (SYN_STREAM).
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// CLEAR_SETTINGS flag (SETTINGS).
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Control frame type numbers.
pub mod frame_type {
    /// SYN_STREAM.
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY.
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM.
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS.
    pub const SETTINGS: u16 = 4;
    /// PING.
    pub const PING: u16 = 6;
    /// GOAWAY.
    pub const GOAWAY: u16 = 7;
    /// HEADERS.
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u16 = 9;
}

/// RST_STREAM status code. Unknown codes are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    /// 1.
    pub const PROTOCOL_ERROR: RstStatus = RstStatus(1);
    /// 2.
    pub const INVALID_STREAM: RstStatus = RstStatus(2);
    /// 3.
    pub const REFUSED_STREAM: RstStatus = RstStatus(3);
    /// 4.
    pub const UNSUPPORTED_VERSION: RstStatus = RstStatus(4);
    /// 5: what spdystream's `Reset()` sends, and kubectl at the end of a session.
    pub const CANCEL: RstStatus = RstStatus(5);
    /// 6.
    pub const INTERNAL_ERROR: RstStatus = RstStatus(6);
    /// 7.
    pub const FLOW_CONTROL_ERROR: RstStatus = RstStatus(7);
    /// 8.
    pub const STREAM_IN_USE: RstStatus = RstStatus(8);
    /// 9.
    pub const STREAM_ALREADY_CLOSED: RstStatus = RstStatus(9);
    /// 10.
    pub const INVALID_CREDENTIALS: RstStatus = RstStatus(10);
    /// 11.
    pub const FRAME_TOO_LARGE: RstStatus = RstStatus(11);
}

/// GOAWAY status code. Unknown codes are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    /// 0: normal close.
    pub const OK: GoAwayStatus = GoAwayStatus(0);
    /// 1.
    pub const PROTOCOL_ERROR: GoAwayStatus = GoAwayStatus(1);
    /// 2.
    pub const INTERNAL_ERROR: GoAwayStatus = GoAwayStatus(2);
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Setting {
    /// Per-entry flags (1 = persist value, 2 = persisted).
    pub flags: u8,
    /// Setting id, 24 bits (7 = INITIAL_WINDOW_SIZE).
    pub id: u32,
    /// Value.
    pub value: u32,
}

/// A decoded SPDY frame. Header blocks are already decompressed.
///
/// Unknown flag bits are ignored on decode, and the reserved top bit of stream
/// ids is masked off, as the spec asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream data. An empty DATA with `fin` is how kubectl signals stdin EOF.
    Data {
        /// Stream (never 0).
        stream_id: u32,
        /// Last frame from the sender on this stream.
        fin: bool,
        /// Payload, at most [`MAX_FRAME_PAYLOAD`] bytes.
        data: Vec<u8>,
    },
    /// Opens a stream. kubectl opens one per channel, with a `streamtype` header.
    SynStream {
        /// New stream id (client: odd, server: even).
        stream_id: u32,
        /// Associated stream (0 = none).
        associated_stream_id: u32,
        /// Priority 0 (highest) – 7.
        priority: u8,
        /// Credential slot (unused, 0).
        slot: u8,
        /// Sender's half is closed right away.
        fin: bool,
        /// Recipient may not send on it.
        unidirectional: bool,
        /// The headers.
        headers: Headers,
    },
    /// Accepts a stream. Reply to each SYN_STREAM at once (kubectl waits for it).
    SynReply {
        /// Stream being accepted.
        stream_id: u32,
        /// Replier's half is closed right away.
        fin: bool,
        /// The headers (empty from the kubelet).
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream (never 0).
        stream_id: u32,
        /// Why (never 0).
        status: RstStatus,
    },
    /// Session settings; safe to ignore (spdystream does).
    Settings {
        /// Clear persisted settings.
        clear: bool,
        /// Entries.
        entries: Vec<Setting>,
    },
    /// Liveness check. Echo only the peer's ids: see [`super::Role::should_echo_ping`].
    Ping {
        /// Ping id (client: odd, server: even).
        id: u32,
    },
    /// The sender is closing the session.
    GoAway {
        /// Highest stream id the sender processed.
        last_good_stream_id: u32,
        /// Why.
        status: GoAwayStatus,
    },
    /// More headers for a stream (unused by exec).
    Headers {
        /// Stream (never 0).
        stream_id: u32,
        /// Sender's half closes.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit. spdystream ignores these; so may you.
    WindowUpdate {
        /// Stream, or 0 for the whole session.
        stream_id: u32,
        /// Credit in bytes (31 bits).
        delta: u32,
    },
    /// A well-formed control frame of a type this codec does not know (e.g.
    /// SPDY/3's CREDENTIAL). The spec says to ignore it; it has been consumed.
    Unknown {
        /// The control frame type.
        frame_type: u16,
        /// Its flags.
        flags: u8,
        /// Its payload length (skipped).
        length: usize,
    },
}

/// Decodes one frame from the start of `buf`.
///
/// * `Ok(None)`: incomplete, read more bytes and call again with the whole
///   buffer (nothing was consumed, the decompressor is untouched);
/// * `Ok(Some((frame, n)))`: a frame; drop the first `n` bytes of `buf`;
/// * `Err`: the peer broke the protocol; the connection is unusable (send
///   GOAWAY with PROTOCOL_ERROR and close).
///
/// A length above `max_frame_len` (capped at [`MAX_FRAME_PAYLOAD`]) fails as
/// soon as the 8-byte header is present, so the caller never buffers it.
pub fn decode(
    buf: &[u8],
    max_frame_len: usize,
    decompressor: &mut HeaderDecompressor,
) -> Result<Option<(Frame, usize)>, SpdyError> {
    let Some((header, rest)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let flags = header[4];
    let length = (usize::from(header[5]) << 16) | (usize::from(header[6]) << 8) | usize::from(header[7]);
    let max = max_frame_len.min(MAX_FRAME_PAYLOAD);
    if length > max {
        return Err(SpdyError::FrameTooLarge { length, max });
    }
    let is_control = word & 0x8000_0000 != 0;
    if is_control {
        let version = ((word >> 16) & 0x7FFF) as u16;
        if version != VERSION {
            return Err(SpdyError::UnsupportedVersion(version));
        }
    }
    let Some(payload) = rest.get(..length) else {
        return Ok(None);
    };
    let consumed = FRAME_HEADER_LEN + length;
    let frame = if is_control {
        decode_control((word & 0xFFFF) as u16, flags, payload, decompressor)?
    } else {
        let stream_id = word & MAX_STREAM_ID;
        if stream_id == 0 {
            return Err(SpdyError::ZeroStreamId("DATA"));
        }
        Frame::Data { stream_id, fin: flags & FLAG_FIN != 0, data: payload.to_vec() }
    };
    Ok(Some((frame, consumed)))
}

fn read_u32(p: &[u8], at: usize) -> Option<u32> {
    let bytes = p.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn decode_control(kind: u16, flags: u8, p: &[u8], dec: &mut HeaderDecompressor) -> Result<Frame, SpdyError> {
    use self::frame_type as t;
    let invalid = |name: &'static str, why: &'static str| SpdyError::InvalidFrame { name, why };
    let fin = flags & FLAG_FIN != 0;
    let stream = |name: &'static str| -> Result<u32, SpdyError> {
        let id = read_u32(p, 0).ok_or(invalid(name, "payload too short"))? & MAX_STREAM_ID;
        if id == 0 {
            return Err(SpdyError::ZeroStreamId(name));
        }
        Ok(id)
    };
    let exact = |name: &'static str, len: usize| {
        if p.len() == len { Ok(()) } else { Err(invalid(name, "wrong payload length")) }
    };
    // An empty compressed block means "no headers"; Go always sends one,
    // but accepting it costs nothing and does not touch the zlib stream.
    let mut headers = |block: &[u8]| {
        if block.is_empty() { Ok(Headers::new()) } else { dec.decompress(block) }
    };
    Ok(match kind {
        t::SYN_STREAM => {
            let stream_id = stream("SYN_STREAM")?;
            if p.len() < 10 {
                return Err(invalid("SYN_STREAM", "payload too short"));
            }
            Frame::SynStream {
                stream_id,
                associated_stream_id: read_u32(p, 4).unwrap_or_default() & MAX_STREAM_ID,
                priority: p[8] >> 5,
                slot: p[9],
                fin,
                unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                headers: headers(&p[10..])?,
            }
        }
        t::SYN_REPLY => Frame::SynReply { stream_id: stream("SYN_REPLY")?, fin, headers: headers(&p[4..])? },
        t::HEADERS => Frame::Headers { stream_id: stream("HEADERS")?, fin, headers: headers(&p[4..])? },
        t::RST_STREAM => {
            exact("RST_STREAM", 8)?;
            let stream_id = stream("RST_STREAM")?;
            let status = read_u32(p, 4).unwrap_or_default();
            if status == 0 {
                return Err(invalid("RST_STREAM", "status 0"));
            }
            Frame::RstStream { stream_id, status: RstStatus(status) }
        }
        t::SETTINGS => {
            let count = read_u32(p, 0).ok_or(invalid("SETTINGS", "payload too short"))?;
            let entries_len =
                (count as usize).checked_mul(8).ok_or(invalid("SETTINGS", "entry count does not match length"))?;
            if p.len() - 4 != entries_len {
                return Err(invalid("SETTINGS", "entry count does not match length"));
            }
            let entries = p[4..]
                .chunks_exact(8)
                .map(|e| Setting {
                    flags: e[0],
                    id: u32::from_be_bytes([0, e[1], e[2], e[3]]),
                    value: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
                })
                .collect();
            Frame::Settings { clear: flags & FLAG_SETTINGS_CLEAR != 0, entries }
        }
        t::PING => {
            exact("PING", 4)?;
            Frame::Ping { id: read_u32(p, 0).unwrap_or_default() }
        }
        t::GOAWAY => {
            exact("GOAWAY", 8)?;
            Frame::GoAway {
                last_good_stream_id: read_u32(p, 0).unwrap_or_default() & MAX_STREAM_ID,
                status: GoAwayStatus(read_u32(p, 4).unwrap_or_default()),
            }
        }
        t::WINDOW_UPDATE => {
            exact("WINDOW_UPDATE", 8)?;
            Frame::WindowUpdate {
                stream_id: read_u32(p, 0).unwrap_or_default() & MAX_STREAM_ID,
                delta: read_u32(p, 4).unwrap_or_default() & 0x7FFF_FFFF,
            }
        }
        other => Frame::Unknown { frame_type: other, flags, length: p.len() },
    })
}

/// Encodes `frame`, appending it to `out`. Header blocks go through
/// `compressor` (which must be this connection's only one). On error nothing
/// is appended, but a header block may already have been fed to the
/// compressor: treat errors from header frames as fatal for the connection.
///
/// Fails on values the wire cannot carry: stream id 0 or above 2^31-1 where
/// a stream is required, priority above 7, a payload above
/// [`MAX_FRAME_PAYLOAD`] (split DATA yourself), RST status 0, invalid header
/// names or values. `Frame::Unknown` cannot be encoded.
pub fn encode(frame: &Frame, compressor: &mut HeaderCompressor, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    match frame {
        Frame::Data { stream_id, fin, data } => encode_data(*stream_id, *fin, data, out),
        Frame::SynStream { stream_id, associated_stream_id, priority, slot, fin, unidirectional, headers } => {
            let flags = (u8::from(*fin) * FLAG_FIN) | (u8::from(*unidirectional) * FLAG_UNIDIRECTIONAL);
            let ids = (*stream_id, *associated_stream_id);
            push_syn_stream(ids, *priority, *slot, flags, headers, compressor, out)
        }
        Frame::SynReply { stream_id, fin, headers } => {
            encode_headers_frame(frame_type::SYN_REPLY, *stream_id, *fin, headers, compressor, out)
        }
        Frame::Headers { stream_id, fin, headers } => {
            encode_headers_frame(frame_type::HEADERS, *stream_id, *fin, headers, compressor, out)
        }
        Frame::RstStream { stream_id, status } => encode_rst_stream(*stream_id, *status, out),
        Frame::Settings { clear, entries } => encode_settings(*clear, entries, out),
        Frame::Ping { id } => {
            encode_ping(*id, out);
            Ok(())
        }
        Frame::GoAway { last_good_stream_id, status } => encode_goaway(*last_good_stream_id, *status, out),
        Frame::WindowUpdate { stream_id, delta } => encode_window_update(*stream_id, *delta, out),
        Frame::Unknown { .. } => {
            Err(SpdyError::InvalidFrame { name: "UNKNOWN", why: "unknown frames cannot be encoded" })
        }
    }
}

fn check_stream(id: u32) -> Result<(), SpdyError> {
    if id == 0 || id > MAX_STREAM_ID {
        return Err(SpdyError::InvalidStreamId(id));
    }
    Ok(())
}

fn push_syn_stream(
    (stream_id, associated_stream_id): (u32, u32),
    priority: u8,
    slot: u8,
    flags: u8,
    headers: &Headers,
    compressor: &mut HeaderCompressor,
    out: &mut Vec<u8>,
) -> Result<(), SpdyError> {
    check_stream(stream_id)?;
    if associated_stream_id > MAX_STREAM_ID {
        return Err(SpdyError::InvalidStreamId(associated_stream_id));
    }
    if priority > 7 {
        return Err(SpdyError::InvalidFrame { name: "SYN_STREAM", why: "priority above 7" });
    }
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&stream_id.to_be_bytes());
    p.extend_from_slice(&associated_stream_id.to_be_bytes());
    p.push(priority << 5);
    p.push(slot);
    compressor.compress(headers, &mut p)?;
    push_control(out, frame_type::SYN_STREAM, flags, &p)
}

fn push_control(out: &mut Vec<u8>, frame_type: u16, flags: u8, payload: &[u8]) -> Result<(), SpdyError> {
    push_header(out, 0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(frame_type), flags, payload.len())?;
    out.extend_from_slice(payload);
    Ok(())
}

fn push_header(out: &mut Vec<u8>, word: u32, flags: u8, length: usize) -> Result<(), SpdyError> {
    if length > MAX_FRAME_PAYLOAD {
        return Err(SpdyError::FrameTooLarge { length, max: MAX_FRAME_PAYLOAD });
    }
    out.extend_from_slice(&word.to_be_bytes());
    // `length` fits in 24 bits, checked above.
    let l = (length as u32).to_be_bytes();
    out.extend_from_slice(&[flags, l[1], l[2], l[3]]);
    Ok(())
}

fn encode_headers_frame(
    frame_type: u16,
    stream_id: u32,
    fin: bool,
    headers: &Headers,
    compressor: &mut HeaderCompressor,
    out: &mut Vec<u8>,
) -> Result<(), SpdyError> {
    check_stream(stream_id)?;
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&stream_id.to_be_bytes());
    compressor.compress(headers, &mut p)?;
    push_control(out, frame_type, u8::from(fin) * FLAG_FIN, &p)
}

/// Appends a DATA frame. `data` must be at most [`MAX_FRAME_PAYLOAD`] bytes
/// (kubectl sends ≤ 32 KiB; so should you, to keep pings flowing).
pub fn encode_data(stream_id: u32, fin: bool, data: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
    check_stream(stream_id)?;
    out.reserve(FRAME_HEADER_LEN + data.len());
    push_header(out, stream_id, u8::from(fin) * FLAG_FIN, data.len())?;
    out.extend_from_slice(data);
    Ok(())
}

/// Appends a SYN_REPLY frame (`fin: false`, empty headers is what the kubelet sends).
pub fn encode_syn_reply(
    stream_id: u32,
    fin: bool,
    headers: &Headers,
    compressor: &mut HeaderCompressor,
    out: &mut Vec<u8>,
) -> Result<(), SpdyError> {
    encode_headers_frame(frame_type::SYN_REPLY, stream_id, fin, headers, compressor, out)
}

/// Appends a SYN_STREAM frame with priority 0, slot 0, no associated stream
/// (what kubectl sends).
pub fn encode_syn_stream(
    stream_id: u32,
    fin: bool,
    headers: &Headers,
    compressor: &mut HeaderCompressor,
    out: &mut Vec<u8>,
) -> Result<(), SpdyError> {
    push_syn_stream((stream_id, 0), 0, 0, u8::from(fin) * FLAG_FIN, headers, compressor, out)
}

/// Appends a HEADERS frame.
pub fn encode_headers(
    stream_id: u32,
    fin: bool,
    headers: &Headers,
    compressor: &mut HeaderCompressor,
    out: &mut Vec<u8>,
) -> Result<(), SpdyError> {
    encode_headers_frame(frame_type::HEADERS, stream_id, fin, headers, compressor, out)
}

/// Appends a RST_STREAM frame.
pub fn encode_rst_stream(stream_id: u32, status: RstStatus, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    check_stream(stream_id)?;
    if status.0 == 0 {
        return Err(SpdyError::InvalidFrame { name: "RST_STREAM", why: "status 0" });
    }
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&stream_id.to_be_bytes());
    p[4..].copy_from_slice(&status.0.to_be_bytes());
    push_control(out, frame_type::RST_STREAM, 0, &p)
}

/// Appends a SETTINGS frame. Setting ids must fit in 24 bits.
pub fn encode_settings(clear: bool, entries: &[Setting], out: &mut Vec<u8>) -> Result<(), SpdyError> {
    let mut p = Vec::with_capacity(4 + entries.len() * 8);
    let count = u32::try_from(entries.len())
        .map_err(|_| SpdyError::FrameTooLarge { length: usize::MAX, max: MAX_FRAME_PAYLOAD })?;
    p.extend_from_slice(&count.to_be_bytes());
    for e in entries {
        if e.id > 0x00FF_FFFF {
            return Err(SpdyError::InvalidFrame { name: "SETTINGS", why: "setting id above 24 bits" });
        }
        let id = e.id.to_be_bytes();
        p.extend_from_slice(&[e.flags, id[1], id[2], id[3]]);
        p.extend_from_slice(&e.value.to_be_bytes());
    }
    push_control(out, frame_type::SETTINGS, u8::from(clear) * FLAG_SETTINGS_CLEAR, &p)
}

/// Appends a PING frame (infallible).
pub fn encode_ping(id: u32, out: &mut Vec<u8>) {
    let word = 0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(frame_type::PING);
    out.extend_from_slice(&word.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 4]);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Appends a GOAWAY frame.
pub fn encode_goaway(last_good_stream_id: u32, status: GoAwayStatus, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    if last_good_stream_id > MAX_STREAM_ID {
        return Err(SpdyError::InvalidStreamId(last_good_stream_id));
    }
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&last_good_stream_id.to_be_bytes());
    p[4..].copy_from_slice(&status.0.to_be_bytes());
    push_control(out, frame_type::GOAWAY, 0, &p)
}

/// Appends a WINDOW_UPDATE frame (`stream_id` 0 = session; `delta` 1..=2^31-1).
pub fn encode_window_update(stream_id: u32, delta: u32, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    if stream_id > MAX_STREAM_ID {
        return Err(SpdyError::InvalidStreamId(stream_id));
    }
    if delta == 0 || delta > 0x7FFF_FFFF {
        return Err(SpdyError::InvalidFrame { name: "WINDOW_UPDATE", why: "delta must be 1..=2^31-1" });
    }
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&stream_id.to_be_bytes());
    p[4..].copy_from_slice(&delta.to_be_bytes());
    push_control(out, frame_type::WINDOW_UPDATE, 0, &p)
}

/// One connection's framing state: its header compressor and decompressor
/// (one zlib stream per direction) and the frame size limit. This is the
/// easiest way to use the module: create one per SPDY connection.
#[derive(Debug)]
pub struct Codec {
    compressor: HeaderCompressor,
    decompressor: HeaderDecompressor,
    max_frame_len: usize,
}

impl Codec {
    /// Protocol maximum frame size and default header limits.
    pub fn new() -> Result<Codec, SpdyError> {
        Codec::with_limits(MAX_FRAME_PAYLOAD, HeaderLimits::default())
    }

    /// Rejects frames with payloads above `max_frame_len` and header blocks
    /// beyond `header_limits`.
    pub fn with_limits(max_frame_len: usize, header_limits: HeaderLimits) -> Result<Codec, SpdyError> {
        Ok(Codec {
            compressor: HeaderCompressor::new()?,
            decompressor: HeaderDecompressor::new(header_limits),
            max_frame_len: max_frame_len.min(MAX_FRAME_PAYLOAD),
        })
    }

    /// See [`decode`].
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        decode(buf, self.max_frame_len, &mut self.decompressor)
    }

    /// See [`encode`].
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        encode(frame, &mut self.compressor, out)
    }

    /// The compressor, for the `encode_*` helpers that need one.
    pub fn compressor(&mut self) -> &mut HeaderCompressor {
        &mut self.compressor
    }
}
