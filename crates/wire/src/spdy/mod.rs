//! SPDY/3.1 as kubectl, client-go and the kubelet use it (Go's spdystream),
//! plus the Kubernetes stream-protocol negotiation that rides on it.
//!
//! Pieces:
//! * [`Codec`]: one per connection; [`Codec::decode`] turns bytes into
//!   [`Frame`]s (`Ok(None)` = need more bytes), [`Codec::encode`] the reverse.
//!   Header blocks are (de)compressed with the connection's two zlib streams
//!   ([`HeaderCompressor`], [`HeaderDecompressor`]) and the SPDY/3 dictionary.
//! * Free `encode_*` functions for the frames a server writes.
//! * [`StreamProtocol`]: `X-Stream-Protocol-Version` negotiation.
//! * [`StreamType`]: the `streamtype` header that names each exec stream.
//! * [`Role`]: which ping and stream ids are yours (echo only the peer's pings).
//!
//! What a server must do with them (protocols.md §2): reply SYN_REPLY to every
//! SYN_STREAM at once; wait for the expected streams
//! ([`expected_streams_for`]); treat DATA+FIN on stdin as EOF; never block on
//! flow control (spdystream sends no WINDOW_UPDATE); ignore SETTINGS,
//! WINDOW_UPDATE and [`Frame::Unknown`]; echo the client's odd PINGs only.
//!
//! ```
//! use hatch_wire::spdy::{Codec, Frame, Headers, StreamType, encode_data};
//!
//! // A client and a server, each with its own codec.
//! let mut client = Codec::new().unwrap();
//! let mut server = Codec::new().unwrap();
//!
//! let mut wire = Vec::new();
//! let syn = Frame::SynStream {
//!     stream_id: 1, associated_stream_id: 0, priority: 0, slot: 0,
//!     fin: false, unidirectional: false,
//!     headers: Headers::new().with("streamtype", "error"),
//! };
//! client.encode(&syn, &mut wire).unwrap();
//! encode_data(1, true, b"", &mut wire).unwrap();
//! // The header block starts with zlib's FDICT header and the dictionary id.
//! assert_eq!(&wire[18..24], &[0x78, 0xF9, 0xE3, 0xC6, 0xA7, 0xC2]);
//!
//! let (frame, used) = server.decode(&wire).unwrap().unwrap();
//! let Frame::SynStream { stream_id: 1, headers, .. } = &frame else { unreachable!() };
//! assert_eq!(StreamType::from_headers(headers), Some(StreamType::Error));
//! let (frame, _) = server.decode(&wire[used..]).unwrap().unwrap();
//! assert_eq!(frame, Frame::Data { stream_id: 1, fin: true, data: vec![] });
//! assert_eq!(server.decode(&wire[..5]).unwrap(), None); // incomplete
//! ```

mod dictionary;
mod frame;
mod headers;

pub use dictionary::{DICTIONARY, DICTIONARY_ADLER32};
pub use frame::{
    Codec, FLAG_FIN, FLAG_SETTINGS_CLEAR, FLAG_UNIDIRECTIONAL, FRAME_HEADER_LEN, Frame, GoAwayStatus,
    MAX_FRAME_PAYLOAD, MAX_STREAM_ID, RstStatus, Setting, VERSION, decode, encode, encode_data, encode_goaway,
    encode_headers, encode_ping, encode_rst_stream, encode_settings, encode_syn_reply, encode_syn_stream,
    encode_window_update, frame_type,
};
pub use headers::{HeaderCompressor, HeaderDecompressor, HeaderLimits, Headers, VALUE_SEPARATOR};

/// The `Upgrade` token for SPDY.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";
/// Request header (one line per protocol, in preference order) and response
/// header carrying the chosen protocol.
pub const HEADER_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// Response header listing the server's protocols when negotiation fails (403).
pub const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
/// SYN_STREAM header naming the exec stream.
pub const HEADER_STREAM_TYPE: &str = "streamtype";

/// Errors from the SPDY codec. Every decode error is a connection error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// A frame longer than the configured maximum.
    #[error("frame payload of {length} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared payload length.
        length: usize,
        /// The limit in force.
        max: usize,
    },
    /// A control frame for a SPDY version other than 3.
    #[error("unsupported spdy version {0}")]
    UnsupportedVersion(u16),
    /// A frame whose payload does not match its type.
    #[error("invalid {name} frame: {why}")]
    InvalidFrame {
        /// Frame type name.
        name: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// Stream id 0 where a stream is required.
    #[error("stream id zero in {0} frame")]
    ZeroStreamId(&'static str),
    /// Encoding a stream id that is 0 or above 2^31-1.
    #[error("invalid stream id {0}")]
    InvalidStreamId(u32),
    /// zlib failed to inflate a header block.
    #[error("header block decompression failed: {0}")]
    Decompress(String),
    /// zlib failed to deflate a header block.
    #[error("header block compression failed: {0}")]
    Compress(String),
    /// The zlib stream asks for a dictionary other than SPDY/3's.
    #[error("header block needs unknown zlib dictionary {0:#010x}")]
    UnknownDictionary(u32),
    /// A header block larger than the limit (decompressed) or than a frame.
    #[error("header block too large")]
    HeaderBlockTooLarge,
    /// More headers than the limit.
    #[error("header block has {count} headers, limit is {max}")]
    TooManyHeaders {
        /// Declared count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A structurally broken header block.
    #[error("malformed header block: {0}")]
    MalformedHeaderBlock(&'static str),
    /// An empty, upper-case or NUL-containing header name.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// The same header name twice in one block.
    #[error("duplicate header {0:?}")]
    DuplicateHeader(String),
    /// Encoding a header value containing NUL (the multi-value separator).
    #[error("value of header {0:?} contains a nul byte")]
    InvalidHeaderValue(String),
}

/// The Kubernetes remote-command protocol negotiated in the SPDY upgrade's
/// `X-Stream-Protocol-Version` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamProtocol {
    /// `channel.k8s.io`: text errors; stdin is closed by the server right
    /// after setup; no resize.
    V1,
    /// `v2.channel.k8s.io`: the client half-closes stdin at EOF.
    V2,
    /// `v3.channel.k8s.io`: adds the `resize` stream.
    V3,
    /// `v4.channel.k8s.io`: JSON Status with the exit code on the error stream.
    V4,
    /// `v5.channel.k8s.io`: identical to v4 over SPDY.
    V5,
}

impl StreamProtocol {
    /// What the kubelet (1.27–1.33) supports over SPDY, in its order. Pass it
    /// to [`negotiate`](Self::negotiate): kubectl 1.29+ offers v5 first and
    /// then gets v4, exactly as from a real kubelet.
    pub const KUBELET_SUPPORTED: [StreamProtocol; 4] =
        [StreamProtocol::V4, StreamProtocol::V3, StreamProtocol::V2, StreamProtocol::V1];

    /// The protocol token.
    pub const fn name(self) -> &'static str {
        match self {
            StreamProtocol::V1 => "channel.k8s.io",
            StreamProtocol::V2 => "v2.channel.k8s.io",
            StreamProtocol::V3 => "v3.channel.k8s.io",
            StreamProtocol::V4 => "v4.channel.k8s.io",
            StreamProtocol::V5 => "v5.channel.k8s.io",
        }
    }

    /// Parses a protocol token (exact match).
    pub fn from_name(name: &str) -> Option<StreamProtocol> {
        [StreamProtocol::V1, StreamProtocol::V2, StreamProtocol::V3, StreamProtocol::V4, StreamProtocol::V5]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// True when the error stream carries a JSON Status (always written);
    /// false for plain text written only on failure.
    pub const fn status_is_json(self) -> bool {
        matches!(self, StreamProtocol::V4 | StreamProtocol::V5)
    }

    /// True when a TTY session has a `resize` stream.
    pub const fn supports_resize(self) -> bool {
        matches!(self, StreamProtocol::V3 | StreamProtocol::V4 | StreamProtocol::V5)
    }

    /// Go `httpstream.Handshake`: the **first client-offered** protocol the
    /// server supports. `offered` are the `X-Stream-Protocol-Version` header
    /// values (each may hold comma-separated tokens). `None` when nothing
    /// matches: answer 403 listing `supported` in
    /// [`HEADER_ACCEPTED_PROTOCOL_VERSIONS`] (400 if the header is absent).
    pub fn negotiate(offered: &[&str], supported: &[StreamProtocol]) -> Option<StreamProtocol> {
        offered
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|t| StreamProtocol::from_name(t.trim()))
            .find(|p| supported.contains(p))
    }
}

impl std::fmt::Display for StreamProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The exec stream kinds, named by the `streamtype` SYN_STREAM header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `error`: the server writes the final status here.
    Error,
    /// `stdin`.
    Stdin,
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
    /// `resize`: JSON terminal sizes (see [`crate::resize`]).
    Resize,
}

impl StreamType {
    /// The header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamType::Error => "error",
            StreamType::Stdin => "stdin",
            StreamType::Stdout => "stdout",
            StreamType::Stderr => "stderr",
            StreamType::Resize => "resize",
        }
    }

    /// Parses a header value.
    pub fn parse(value: &str) -> Option<StreamType> {
        [StreamType::Error, StreamType::Stdin, StreamType::Stdout, StreamType::Stderr, StreamType::Resize]
            .into_iter()
            .find(|t| t.as_str() == value)
    }

    /// The type named by a SYN_STREAM's `streamtype` header, if any.
    pub fn from_headers(headers: &Headers) -> Option<StreamType> {
        headers.get(HEADER_STREAM_TYPE).and_then(StreamType::parse)
    }
}

/// The streams a server must wait for before starting the process, in the
/// order kubectl opens them: `error`, then `stdin`, `stdout`, `stderr` as
/// requested (no `stderr` with a TTY), then `resize` for a TTY on v3+.
pub fn expected_streams(
    protocol: StreamProtocol,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Vec<StreamType> {
    let mut v = vec![StreamType::Error];
    if stdin {
        v.push(StreamType::Stdin);
    }
    if stdout {
        v.push(StreamType::Stdout);
    }
    if stderr && !tty {
        v.push(StreamType::Stderr);
    }
    if tty && protocol.supports_resize() {
        v.push(StreamType::Resize);
    }
    v
}

/// [`expected_streams`] for a parsed exec request.
pub fn expected_streams_for(protocol: StreamProtocol, opts: &crate::exec_options::ExecOptions) -> Vec<StreamType> {
    expected_streams(protocol, opts.stdin, opts.stdout, opts.stderr, opts.tty)
}

/// Which end of the connection we are. SPDY splits ids by parity: the client
/// uses odd stream and ping ids, the server even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that sent the upgrade request (kubectl).
    Client,
    /// The side that answered 101 (the node).
    Server,
}

impl Role {
    /// True if `id` has our parity (a stream or ping we started).
    pub const fn owns_id(self, id: u32) -> bool {
        match self {
            Role::Client => !id.is_multiple_of(2),
            Role::Server => id.is_multiple_of(2),
        }
    }

    /// Echo a received PING only when its id has the **peer's** parity; a
    /// ping with our parity is the peer's echo of ours. Echoing everything
    /// makes two Go-style peers ping-pong forever.
    pub const fn should_echo_ping(self, id: u32) -> bool {
        !self.owns_id(id)
    }

    /// The first ping id for this role (client 1, server 2); add 2 each time.
    pub const fn first_ping_id(self) -> u32 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }
}

#[cfg(test)]
mod tests;
