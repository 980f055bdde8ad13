//! Kubernetes exec over WebSocket (RFC 6455), as the kubelet serves it.
//!
//! After the 101: one empty "ready" message on the lowest channel the server writes; then
//! stdout (1) and stderr (2) from the process, stdin (0) and resizes (4) from the client, v5's
//! `[0xFF, 0]` as stdin EOF; at the end the Status on channel 3 and a close frame with 1000,
//! after which the client's close echo is awaited so the socket closes cleanly. tungstenite
//! answers pings while the client's messages are read, so the reader task never stops reading
//! for long (only while the process is not taking its stdin).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use hatch_wire::k8s_ws::{self, ClientMessage, OutgoingMessage, Subprotocol, channel};

use super::session::{CLOSE_GRACE, ClientEnd, Exec, Outcome, Output, Resizer, StdinFeed, join_end};
use crate::engine::exec::Stream;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Largest client message or frame accepted. kubectl sends at most 32 KiB + 1; other clients
/// (the Python one) send a whole `write_stdin` call as one message.
const MAX_MESSAGE: usize = 4 << 20;
/// How long a terminal session waits for the client's first size before starting anyway.
const TTY_CUE_WAIT: Duration = Duration::from_millis(500);
/// How long a close frame for a misbehaving client may take to go out.
const ABORT_GRACE: Duration = Duration::from_secs(2);

struct WsOutput {
    tx: SplitSink<Ws, Message>,
    protocol: Subprotocol,
}

impl WsOutput {
    async fn send_channel(&mut self, ch: u8, data: &[u8]) -> Result<(), String> {
        let message = match k8s_ws::encode_data(self.protocol, ch, data).map_err(|e| e.to_string())? {
            OutgoingMessage::Binary(b) => Message::Binary(b.into()),
            OutgoingMessage::Text(t) => Message::Text(t.into()),
        };
        self.tx.send(message).await.map_err(|e| e.to_string())
    }

    async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), String> {
        let frame = CloseFrame { code, reason: reason.to_owned().into() };
        self.tx.send(Message::Close(Some(frame))).await.map_err(|e| e.to_string())
    }
}

impl Output for WsOutput {
    async fn send(&mut self, stream: Stream, data: &[u8]) -> Result<(), String> {
        let ch = match stream {
            Stream::Stdout => channel::STDOUT,
            Stream::Stderr => channel::STDERR,
        };
        self.send_channel(ch, data).await
    }
}

/// Runs one upgraded WebSocket exec session to its end.
pub(super) async fn run(mut exec: Exec, upgraded: Upgraded, protocol: Subprotocol) {
    // A 32 KiB read buffer (tungstenite's default is 128 KiB, allocated per connection): clients
    // send stdin in messages of at most 32 KiB, and a thousand idle shells should stay cheap.
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(32 * 1024);
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let (tx, rx) = ws.split();
    let mut out = WsOutput { tx, protocol };

    let ready = if exec.opts.stdout {
        channel::STDOUT
    } else if exec.opts.stderr {
        channel::STDERR
    } else {
        channel::ERROR
    };
    if let Err(e) = out.send_channel(ready, b"").await {
        exec.finish(None, Some(format!("client went away: {e}")));
        return;
    }

    let (feed, stdin_rx) = StdinFeed::new(exec.opts.stdin);
    let (sized_tx, sized_rx) = oneshot::channel();
    let reader = read_client(rx, protocol, feed, Resizer::new(exec.session.clone()), sized_tx);
    let mut client = tokio::spawn(reader);
    if exec.opts.tty {
        // kubectl before 1.34 reads messages before its local streams exist and drops what
        // arrives too early (kubernetes#131203); a terminal answers at once (a prompt, `tty`).
        // Its initial size, sent once its streams are ready, is the cue to start, and gives the
        // terminal its real size from the first byte. A client that sends none waits a moment.
        let _ = tokio::time::timeout(TTY_CUE_WAIT, sized_rx).await;
    }

    match exec.execute(&mut out, &mut client, stdin_rx).await {
        Outcome::Report(ending) => {
            let status = exec.status(&ending);
            let payload = status.error_channel_payload(protocol.status_is_json());
            let goodbye = async {
                if let Some(payload) = payload {
                    out.send_channel(channel::ERROR, &payload).await?;
                }
                out.close(CloseCode::Normal, "").await
            };
            let mut client_done = false;
            let mut error = ending.error();
            tokio::select! {
                sent = goodbye => {
                    if let Err(e) = sent {
                        error.get_or_insert(format!("client went away before the status: {e}"));
                    }
                }
                end = &mut client => {
                    client_done = true;
                    let end = join_end(end);
                    if !matches!(end, ClientEnd::Closed) {
                        error.get_or_insert(end.describe());
                    }
                }
            }
            // Read on until the client's close echo, so nothing unread makes the close a reset.
            if !client_done && tokio::time::timeout(CLOSE_GRACE, &mut client).await.is_err() {
                tracing::debug!("websocket client did not answer the close frame");
            }
            client.abort();
            drop(out);
            exec.finish(ending.exit_code(), error);
        }
        Outcome::Abandoned { end, exit_code } => {
            match &end {
                ClientEnd::Protocol(why) => {
                    let reason: String = why.chars().take(100).collect();
                    let _ = tokio::time::timeout(ABORT_GRACE, out.close(CloseCode::Protocol, &reason)).await;
                }
                // tungstenite queued the reply to the client's close frame; send it.
                ClientEnd::Closed => {
                    let _ = tokio::time::timeout(ABORT_GRACE, out.tx.flush()).await;
                }
                ClientEnd::Gone(_) => {}
            }
            drop(out);
            exec.finish(exit_code, Some(end.describe()));
        }
    }
}

/// Reads the client's messages until it leaves, closes, or breaks the protocol.
async fn read_client(
    mut rx: SplitStream<Ws>,
    protocol: Subprotocol,
    mut stdin: StdinFeed,
    mut resizer: Resizer,
    sized: oneshot::Sender<()>,
) -> ClientEnd {
    let mut sized = Some(sized);
    while let Some(message) = rx.next().await {
        let payload: Bytes = match message {
            Ok(Message::Binary(b)) => b,
            // The layout follows the protocol, not the frame type (as in the Go server).
            Ok(Message::Text(t)) => t.into(),
            Ok(Message::Close(_)) => return ClientEnd::Closed,
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Err(e) => return classify(e),
        };
        match k8s_ws::decode_client_message(protocol, &payload) {
            Err(e) => return ClientEnd::Protocol(e.to_string()),
            Ok(None) => {}
            Ok(Some(ClientMessage::Data { channel: channel::STDIN, payload: data })) => {
                // Binary protocols borrow from the message: share it rather than copy.
                let data = match data {
                    Cow::Borrowed(b) => payload.slice_ref(b),
                    Cow::Owned(v) => Bytes::from(v),
                };
                stdin.send(data).await;
            }
            Ok(Some(ClientMessage::Data { channel: channel::RESIZE, payload: data })) => {
                resizer.push(&data);
                if let Some(sized) = sized.take() {
                    let _ = sized.send(());
                }
            }
            // Channels nobody reads here: dropped, as the kubelet drops them.
            Ok(Some(ClientMessage::Data { .. })) => {}
            Ok(Some(ClientMessage::Close { channel: channel::STDIN })) => stdin.close(),
            Ok(Some(ClientMessage::Close { .. })) => {}
        }
    }
    ClientEnd::Gone("connection closed".to_owned())
}

fn classify(e: WsError) -> ClientEnd {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ClientEnd::Gone("connection closed".to_owned()),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            ClientEnd::Gone("connection closed without a close frame".to_owned())
        }
        WsError::Io(e) => ClientEnd::Gone(e.to_string()),
        other => ClientEnd::Protocol(other.to_string()),
    }
}
