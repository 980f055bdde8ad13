//! Pure codecs for the wire protocols on hatch's exec path.
//!
//! Nothing in this crate does IO: every function takes bytes (or a string) and
//! returns bytes (or a typed value), so each codec can be unit-tested,
//! property-tested and fuzzed in isolation. The transports (tungstenite for
//! WebSocket framing, TCP for SPDY and the Docker hijack) live in the crates
//! that use this one.
//!
//! | module | protocol | used by |
//! |---|---|---|
//! | [`k8s_ws`] | Kubernetes exec over WebSocket: `v5`/`v4`/`v4.base64`/`channel.k8s.io`/`base64.channel.k8s.io` message payloads | node streaming server, server proxy, CLI |
//! | [`spdy`] | SPDY/3.1 frames and zlib header blocks as kubectl/spdystream use them, plus the k8s stream-protocol negotiation | node streaming server |
//! | [`stdcopy`] | Docker's multiplexed stdout/stderr framing | node Docker API, tests |
//! | [`status`] | `metav1.Status` JSON (exit codes on the error channel, API error bodies) | everyone |
//! | [`resize`] | terminal size messages (`{"Width":100,"Height":30}\n`) | node, CLI |
//! | [`exec_options`] | the exec query string (`command=ls&stdin=true&…`) | server, node, CLI |
//! | [`units`] | Docker's human durations and sizes (`Up 5 minutes`, `1.98MB`) | node Docker API, CLI |
//!
//! Conventions shared by every module:
//! * Decoders never panic on any input; they return a typed error (lower-case
//!   message, [`thiserror`]) or report that more bytes are needed.
//! * "Incomplete" is never an error: streaming decoders return `Ok(None)` (or an
//!   equivalent) and keep their state; errors mean the peer broke the protocol.
//! * Encoders produce exactly the bytes the Go reference implementations
//!   (client-go, the kubelet, spdystream, the Docker daemon) produce, so real
//!   clients see no difference.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod exec_options;
pub mod k8s_ws;
pub mod resize;
pub mod spdy;
pub mod status;
pub mod stdcopy;
pub mod units;
