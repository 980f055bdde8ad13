//! Kubernetes exec/attach over WebSocket: subprotocol negotiation and the
//! channel-multiplexed message payloads.
//!
//! The WebSocket framing itself (masking, fragmentation, ping/pong, close
//! frames) is done by tungstenite; this module only deals with the *content*
//! of complete data messages.
//!
//! # Wire format
//!
//! | protocol | message | layout |
//! |---|---|---|
//! | [`V5`](Subprotocol::V5), [`V4`](Subprotocol::V4), [`V1`](Subprotocol::V1) | binary | `[channel] ++ payload` |
//! | [`V4Base64`](Subprotocol::V4Base64), [`V1Base64`](Subprotocol::V1Base64) | text | `('0' + channel) ++ base64(payload)` (standard alphabet, padded) |
//! | [`V5`](Subprotocol::V5) only | binary | `[0xFF, channel]`: the client closed that channel (stdin EOF) |
//!
//! Channel numbers are in [`channel`]. After the upgrade the Go server sends
//! one empty "ready" message on the lowest channel it will write (usually
//! `encode_data(proto, channel::STDOUT, b"")`); kubectl ignores it, other
//! clients may wait for it.
//!
//! # Server example
//!
//! ```
//! use hatch_wire::k8s_ws::{self, channel, ClientMessage, Subprotocol};
//!
//! // Sec-WebSocket-Protocol as kubectl sends it:
//! let proto = k8s_ws::negotiate(&["v5.channel.k8s.io"]).unwrap();
//! assert_eq!(proto, Subprotocol::V5);
//!
//! // stdin from the client, then stdin EOF:
//! let msg = k8s_ws::decode_client_message(proto, b"\x00hello").unwrap();
//! assert_eq!(msg, Some(ClientMessage::Data { channel: channel::STDIN, payload: b"hello".as_slice().into() }));
//! let msg = k8s_ws::decode_client_message(proto, &[0xFF, 0x00]).unwrap();
//! assert_eq!(msg, Some(ClientMessage::Close { channel: channel::STDIN }));
//!
//! // stdout to the client:
//! let out = k8s_ws::encode_data(proto, channel::STDOUT, b"hi\n").unwrap();
//! assert_eq!(out, k8s_ws::OutgoingMessage::Binary(b"\x01hi\n".to_vec()));
//! ```

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Channel numbers, identical in every WebSocket subprotocol.
pub mod channel {
    /// Client → server: process stdin.
    pub const STDIN: u8 = 0;
    /// Server → client: process stdout.
    pub const STDOUT: u8 = 1;
    /// Server → client: process stderr (never used when a TTY is allocated).
    pub const STDERR: u8 = 2;
    /// Server → client: the final status (JSON `metav1.Status` on v4/v5,
    /// plain text on v1 and only on failure). See [`crate::status`].
    pub const ERROR: u8 = 3;
    /// Client → server: terminal size events (JSON). See [`crate::resize`].
    pub const RESIZE: u8 = 4;
    /// Client → server, v5 only: "I closed channel N". Never a data channel.
    pub const CLOSE: u8 = 255;
    /// Highest ordinary data channel (`RESIZE`). A CLOSE may only target
    /// channels `0..=MAX_DATA`.
    pub const MAX_DATA: u8 = RESIZE;
}

/// A Kubernetes channel subprotocol negotiated in `Sec-WebSocket-Protocol`.
///
/// The variants are listed in the server's preference order, which is also
/// the order of [`Subprotocol::ALL`] and of [`negotiate`]'s choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// `v5.channel.k8s.io`: binary, JSON status, supports CLOSE. kubectl ≥ 1.29 offers only this one.
    V5,
    /// `v4.channel.k8s.io`: binary, JSON status.
    V4,
    /// `v4.base64.channel.k8s.io`: text/base64, JSON status.
    V4Base64,
    /// `channel.k8s.io`: binary, plain-text error message only on failure.
    V1,
    /// `base64.channel.k8s.io`: text/base64, plain-text error message only on failure.
    V1Base64,
}

impl Subprotocol {
    /// Every supported protocol, in server preference order.
    pub const ALL: [Subprotocol; 5] =
        [Subprotocol::V5, Subprotocol::V4, Subprotocol::V4Base64, Subprotocol::V1, Subprotocol::V1Base64];

    /// The protocol the Go server speaks when the client sends **no**
    /// `Sec-WebSocket-Protocol` header at all. In that case the 101 response
    /// must not carry a `Sec-WebSocket-Protocol` header either (RFC 6455: a
    /// server may only echo a protocol the client offered).
    pub const IMPLICIT: Subprotocol = Subprotocol::V1;

    /// The token used in `Sec-WebSocket-Protocol`.
    pub const fn name(self) -> &'static str {
        match self {
            Subprotocol::V5 => "v5.channel.k8s.io",
            Subprotocol::V4 => "v4.channel.k8s.io",
            Subprotocol::V4Base64 => "v4.base64.channel.k8s.io",
            Subprotocol::V1 => "channel.k8s.io",
            Subprotocol::V1Base64 => "base64.channel.k8s.io",
        }
    }

    /// Parses a protocol token (exact, case-sensitive match, like the Go server).
    pub fn from_name(name: &str) -> Option<Subprotocol> {
        Subprotocol::ALL.into_iter().find(|p| p.name() == name)
    }

    /// True for the text protocols whose payloads are base64 with an ASCII
    /// channel digit.
    pub const fn is_base64(self) -> bool {
        matches!(self, Subprotocol::V4Base64 | Subprotocol::V1Base64)
    }

    /// True when the error channel carries a JSON `metav1.Status` (always sent,
    /// including on success); false when it carries a plain-text message sent
    /// only on failure. Pass this to [`Status::error_channel_payload`](crate::status::Status::error_channel_payload).
    pub const fn status_is_json(self) -> bool {
        matches!(self, Subprotocol::V5 | Subprotocol::V4 | Subprotocol::V4Base64)
    }

    /// True when the client can half-close a channel with a CLOSE message
    /// (`[0xFF, channel]`). Only v5.
    pub const fn supports_close(self) -> bool {
        matches!(self, Subprotocol::V5)
    }
}

impl std::fmt::Display for Subprotocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Picks the protocol to answer with, from the `Sec-WebSocket-Protocol`
/// header values the client sent.
///
/// Each element may be a whole header value with comma-separated tokens
/// (`"v4.channel.k8s.io, channel.k8s.io"`); tokens are trimmed. The choice
/// follows the *server's* preference order ([`Subprotocol::ALL`]), not the
/// order of the offer. Returns `None` when nothing supported was offered,
/// including when `offered` is empty: if the header is absent altogether the
/// caller may serve [`Subprotocol::IMPLICIT`] without echoing a header, as the
/// Go server does; if it was present but unsupported, reject the upgrade
/// (kubectl then falls back to SPDY).
pub fn negotiate(offered: &[&str]) -> Option<Subprotocol> {
    let offered_token =
        |name: &str| offered.iter().flat_map(|value| value.split(',')).any(|token| token.trim() == name);
    Subprotocol::ALL.into_iter().find(|p| offered_token(p.name()))
}

/// Errors from decoding or encoding channel messages. All of them are protocol
/// violations by the peer (decode) or misuse by the caller (encode); the Go
/// server drops the connection on the decode ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A CLOSE message (channel 255) on a protocol other than v5.
    #[error("close message (channel 255) is only valid on v5.channel.k8s.io, not {0}")]
    CloseNotSupported(Subprotocol),
    /// A v5 CLOSE message whose length is not exactly 2 bytes.
    #[error("close message must be exactly 2 bytes, got {0}")]
    CloseLength(usize),
    /// A v5 CLOSE message targeting a channel that does not exist.
    #[error("close message targets invalid channel {0}")]
    CloseChannel(u8),
    /// A base64-protocol message whose first byte is not an ASCII digit.
    #[error("invalid channel byte {0:#04x} in base64 message, expected an ascii digit")]
    Base64Channel(u8),
    /// A base64-protocol payload that is not valid standard padded base64.
    #[error("invalid base64 payload: {0}")]
    Base64Payload(String),
    /// Encoding: the channel cannot be written on this protocol (base64
    /// protocols can only carry channels 0–9; 255 is reserved for CLOSE).
    #[error("channel {channel} cannot be encoded on {protocol}")]
    UnencodableChannel {
        /// The channel the caller asked for.
        channel: u8,
        /// The negotiated protocol.
        protocol: Subprotocol,
    },
}

/// A complete WebSocket message to send: binary for the binary protocols,
/// text for the base64 ones. Maps 1:1 onto `tungstenite::Message::{Binary, Text}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingMessage {
    /// Send as a binary message.
    Binary(Vec<u8>),
    /// Send as a text message.
    Text(String),
}

impl OutgoingMessage {
    /// The message payload as bytes, whatever its kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            OutgoingMessage::Binary(b) => b,
            OutgoingMessage::Text(s) => s.as_bytes(),
        }
    }
}

/// A decoded message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// Bytes for `channel` (usually [`channel::STDIN`] or [`channel::RESIZE`]).
    /// Channels the session did not open are not an error here: the Go server
    /// silently drops data for them, and so should the caller. The payload
    /// may be empty. It borrows from the input for binary protocols.
    Data {
        /// Target channel.
        channel: u8,
        /// The bytes, without the channel prefix (base64 already decoded).
        payload: Cow<'a, [u8]>,
    },
    /// v5 only: the client will send nothing more on `channel` (stdin EOF
    /// when `channel == STDIN`). Close the write side of the process's stdin
    /// and keep output flowing. Repeated CLOSEs for the same channel should
    /// be ignored.
    Close {
        /// The channel being closed, `0..=channel::MAX_DATA`.
        channel: u8,
    },
}

/// A decoded data message from the server (for our own client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMessage<'a> {
    /// Source channel ([`channel::STDOUT`], [`channel::STDERR`], [`channel::ERROR`]).
    /// Drop channels you do not know, as kubectl does.
    pub channel: u8,
    /// The bytes, without the channel prefix.
    pub payload: Cow<'a, [u8]>,
}

/// Decodes one complete message received from the client (server side).
///
/// Pass the message payload whether it arrived as a text or a binary frame:
/// like the Go server, the layout is chosen by the protocol, not by the frame
/// type. Returns:
/// * `Ok(None)` for an **empty** message (no channel byte): the Go server
///   skips these, so ignore it and keep reading;
/// * `Ok(Some(Data))` / `Ok(Some(Close))` otherwise;
/// * `Err` for a protocol violation: a malformed CLOSE (not exactly
///   `[0xFF, 0..=4]`), a CLOSE on a non-v5 protocol, or bad base64. Drop the
///   connection.
pub fn decode_client_message(protocol: Subprotocol, message: &[u8]) -> Result<Option<ClientMessage<'_>>, WsError> {
    let Some((&first, rest)) = message.split_first() else {
        return Ok(None);
    };
    if !protocol.is_base64() && first == channel::CLOSE {
        if !protocol.supports_close() {
            return Err(WsError::CloseNotSupported(protocol));
        }
        return match rest {
            [target] if *target <= channel::MAX_DATA => Ok(Some(ClientMessage::Close { channel: *target })),
            [target] => Err(WsError::CloseChannel(*target)),
            _ => Err(WsError::CloseLength(message.len())),
        };
    }
    let (channel, payload) = split_data(protocol, first, rest)?;
    Ok(Some(ClientMessage::Data { channel, payload }))
}

/// Decodes one complete message received from the server (client side).
///
/// `Ok(None)` for an empty message. Any channel is accepted (including 255,
/// which a server never legitimately sends); the caller drops the ones it did
/// not open.
pub fn decode_server_message(protocol: Subprotocol, message: &[u8]) -> Result<Option<ServerMessage<'_>>, WsError> {
    let Some((&first, rest)) = message.split_first() else {
        return Ok(None);
    };
    let (channel, payload) = split_data(protocol, first, rest)?;
    Ok(Some(ServerMessage { channel, payload }))
}

fn split_data(protocol: Subprotocol, first: u8, rest: &[u8]) -> Result<(u8, Cow<'_, [u8]>), WsError> {
    if !protocol.is_base64() {
        return Ok((first, Cow::Borrowed(rest)));
    }
    if !first.is_ascii_digit() {
        return Err(WsError::Base64Channel(first));
    }
    let payload = BASE64.decode(rest).map_err(|e| WsError::Base64Payload(e.to_string()))?;
    Ok((first - b'0', Cow::Owned(payload)))
}

/// Encodes a data message on `channel` (either direction).
///
/// An empty payload is valid (it is the Go server's "ready" message). Fails
/// only for channels the protocol cannot carry: [`channel::CLOSE`] (use
/// [`encode_close`]) and, on the base64 protocols, anything above 9.
///
/// On the binary protocols a message is nothing but `[channel] ++ payload`,
/// so a hot path may skip this copy: read process output into `buf[1..]`
/// of a buffer whose `buf[0]` is the channel, and send `buf` as is.
pub fn encode_data(protocol: Subprotocol, channel: u8, payload: &[u8]) -> Result<OutgoingMessage, WsError> {
    let unencodable = WsError::UnencodableChannel { channel, protocol };
    if channel == channel::CLOSE {
        return Err(unencodable);
    }
    if protocol.is_base64() {
        if channel > 9 {
            return Err(unencodable);
        }
        let mut text = String::with_capacity(1 + payload.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        BASE64.encode_string(payload, &mut text);
        Ok(OutgoingMessage::Text(text))
    } else {
        let mut bytes = Vec::with_capacity(1 + payload.len());
        bytes.push(channel);
        bytes.extend_from_slice(payload);
        Ok(OutgoingMessage::Binary(bytes))
    }
}

/// Encodes a v5 CLOSE message `[0xFF, channel]` (client side: sent at local
/// stdin EOF with `channel::STDIN`). Fails on other protocols or for a target
/// outside `0..=channel::MAX_DATA`.
pub fn encode_close(protocol: Subprotocol, channel: u8) -> Result<OutgoingMessage, WsError> {
    if !protocol.supports_close() {
        return Err(WsError::CloseNotSupported(protocol));
    }
    if channel > channel::MAX_DATA {
        return Err(WsError::CloseChannel(channel));
    }
    Ok(OutgoingMessage::Binary(vec![channel::CLOSE, channel]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        for p in Subprotocol::ALL {
            assert_eq!(Subprotocol::from_name(p.name()), Some(p));
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!(Subprotocol::from_name("v3.channel.k8s.io"), None);
        assert_eq!(Subprotocol::from_name("V5.channel.k8s.io"), None);
        assert_eq!(Subprotocol::from_name(""), None);
    }

    #[test]
    fn properties() {
        use Subprotocol::*;
        assert!(V5.supports_close());
        assert!(!V4.supports_close() && !V1.supports_close() && !V4Base64.supports_close());
        assert!(V5.status_is_json() && V4.status_is_json() && V4Base64.status_is_json());
        assert!(!V1.status_is_json() && !V1Base64.status_is_json());
        assert!(V4Base64.is_base64() && V1Base64.is_base64());
        assert!(!V5.is_base64() && !V4.is_base64() && !V1.is_base64());
    }

    #[test]
    fn negotiate_prefers_server_order() {
        assert_eq!(negotiate(&["v5.channel.k8s.io"]), Some(Subprotocol::V5));
        // A browser client offering v4,v3,v2,channel gets v4.
        assert_eq!(
            negotiate(&["v4.channel.k8s.io,v3.channel.k8s.io, v2.channel.k8s.io ,channel.k8s.io"]),
            Some(Subprotocol::V4)
        );
        // Server order wins over client order.
        assert_eq!(
            negotiate(&["channel.k8s.io", "v4.base64.channel.k8s.io", "v5.channel.k8s.io"]),
            Some(Subprotocol::V5)
        );
        assert_eq!(negotiate(&["base64.channel.k8s.io", "channel.k8s.io"]), Some(Subprotocol::V1));
        assert_eq!(negotiate(&["base64.channel.k8s.io"]), Some(Subprotocol::V1Base64));
        assert_eq!(negotiate(&[]), None);
        assert_eq!(negotiate(&[""]), None);
        assert_eq!(negotiate(&["v3.channel.k8s.io, xterm"]), None);
    }

    #[test]
    fn decode_binary_data() -> Result<(), WsError> {
        let m = decode_client_message(Subprotocol::V4, b"\x00abc")?;
        assert_eq!(m, Some(ClientMessage::Data { channel: 0, payload: Cow::Borrowed(b"abc") }));
        // Channel byte only: empty payload.
        let m = decode_client_message(Subprotocol::V5, b"\x04")?;
        assert_eq!(m, Some(ClientMessage::Data { channel: 4, payload: Cow::Borrowed(b"") }));
        // Unknown channels pass through for the caller to drop.
        let m = decode_client_message(Subprotocol::V1, b"\x09x")?;
        assert!(matches!(m, Some(ClientMessage::Data { channel: 9, .. })));
        Ok(())
    }

    #[test]
    fn empty_message_is_ignorable() -> Result<(), WsError> {
        for p in Subprotocol::ALL {
            assert_eq!(decode_client_message(p, b"")?, None);
            assert_eq!(decode_server_message(p, b"")?, None);
        }
        Ok(())
    }

    #[test]
    fn v5_close_rules() {
        let p = Subprotocol::V5;
        assert_eq!(decode_client_message(p, &[0xFF, 0]), Ok(Some(ClientMessage::Close { channel: 0 })));
        assert_eq!(decode_client_message(p, &[0xFF, 4]), Ok(Some(ClientMessage::Close { channel: 4 })));
        assert_eq!(decode_client_message(p, &[0xFF]), Err(WsError::CloseLength(1)));
        assert_eq!(decode_client_message(p, &[0xFF, 0, 0]), Err(WsError::CloseLength(3)));
        assert_eq!(decode_client_message(p, &[0xFF, 5]), Err(WsError::CloseChannel(5)));
        assert_eq!(decode_client_message(p, &[0xFF, 0xFF]), Err(WsError::CloseChannel(0xFF)));
        for p in [Subprotocol::V4, Subprotocol::V1] {
            assert_eq!(decode_client_message(p, &[0xFF, 0]), Err(WsError::CloseNotSupported(p)));
        }
    }

    #[test]
    fn base64_decode() -> Result<(), WsError> {
        let m = decode_client_message(Subprotocol::V4Base64, b"0aGVsbG8=")?;
        assert_eq!(m, Some(ClientMessage::Data { channel: 0, payload: Cow::Owned(b"hello".to_vec()) }));
        let m = decode_client_message(Subprotocol::V1Base64, b"4")?;
        assert!(matches!(m, Some(ClientMessage::Data { channel: 4, ref payload }) if payload.is_empty()));
        assert_eq!(decode_client_message(Subprotocol::V1Base64, b"xaGk="), Err(WsError::Base64Channel(b'x')));
        // A base64 client cannot send CLOSE; 0xFF is just a bad digit.
        assert_eq!(decode_client_message(Subprotocol::V4Base64, &[0xFF, 0]), Err(WsError::Base64Channel(0xFF)));
        assert!(matches!(decode_client_message(Subprotocol::V4Base64, b"0aGVsbG8"), Err(WsError::Base64Payload(_))));
        Ok(())
    }

    #[test]
    fn encode_binary_and_text() -> Result<(), WsError> {
        assert_eq!(encode_data(Subprotocol::V5, channel::STDOUT, b"hi")?, OutgoingMessage::Binary(b"\x01hi".to_vec()));
        assert_eq!(encode_data(Subprotocol::V5, channel::STDOUT, b"")?, OutgoingMessage::Binary(vec![1]));
        assert_eq!(
            encode_data(Subprotocol::V4Base64, channel::STDERR, b"hello")?,
            OutgoingMessage::Text("2aGVsbG8=".into())
        );
        assert_eq!(encode_data(Subprotocol::V1Base64, channel::ERROR, b"")?, OutgoingMessage::Text("3".into()));
        assert!(encode_data(Subprotocol::V5, channel::CLOSE, b"").is_err());
        assert!(encode_data(Subprotocol::V1Base64, 10, b"").is_err());
        assert_eq!(encode_close(Subprotocol::V5, channel::STDIN)?, OutgoingMessage::Binary(vec![0xFF, 0]));
        assert!(encode_close(Subprotocol::V4, 0).is_err());
        assert!(encode_close(Subprotocol::V5, 5).is_err());
        Ok(())
    }

    fn any_protocol() -> impl Strategy<Value = Subprotocol> {
        prop::sample::select(Subprotocol::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn data_round_trips(p in any_protocol(), ch in 0u8..=9, payload in prop::collection::vec(any::<u8>(), 0..512)) {
            let msg = encode_data(p, ch, &payload).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let decoded = decode_client_message(p, msg.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, Some(ClientMessage::Data { channel: ch, payload: Cow::Borrowed(payload.as_slice()) }));
            let decoded = decode_server_message(p, msg.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decoded, Some(ServerMessage { channel: ch, payload: Cow::Borrowed(payload.as_slice()) }));
        }

        #[test]
        fn close_round_trips(ch in 0u8..=channel::MAX_DATA) {
            let msg = encode_close(Subprotocol::V5, ch).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode_client_message(Subprotocol::V5, msg.as_bytes()), Ok(Some(ClientMessage::Close { channel: ch })));
        }

        #[test]
        fn garbage_never_panics(p in any_protocol(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_client_message(p, &bytes);
            let _ = decode_server_message(p, &bytes);
        }

        #[test]
        fn negotiate_never_panics(offers in prop::collection::vec(".{0,40}", 0..4)) {
            let refs: Vec<&str> = offers.iter().map(String::as_str).collect();
            let _ = negotiate(&refs);
        }
    }
}
