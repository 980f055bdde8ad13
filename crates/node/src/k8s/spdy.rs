//! Kubernetes exec over SPDY/3.1, as the kubelet serves it to kubectl (spdystream).
//!
//! Nothing is sent after the 101 until the client's first frame. Each SYN_STREAM gets its
//! SYN_REPLY at once (the client waits for it before opening the next stream); the process
//! starts once every expected stream exists (30 s at most). The socket is read at all times by
//! one task, which answers the client's (odd) pings, feeds stdin (DATA+FIN = EOF) and resizes;
//! frames go out through one writer task, control frames first. There is no flow control:
//! spdystream never sends WINDOW_UPDATE, so nothing waits for a window. At the end: FIN on the
//! output streams, the Status on the error stream, FIN on the rest, GOAWAY, and the connection
//! closes once the client has let go (it resets its streams and sends GOAWAY itself).

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use hatch_wire::spdy::{
    Codec, FRAME_HEADER_LEN, Frame, GoAwayStatus, HeaderLimits, Headers, Role, StreamProtocol, StreamType, encode_data,
    encode_goaway, encode_ping, encode_syn_reply, expected_streams_for,
};

use super::session::{CLOSE_GRACE, ClientEnd, Exec, Outcome, Output, Resizer, StdinFeed, join_end};
use crate::engine::exec::Stream;

type Io = TokioIo<Upgraded>;

/// The kubelet's `DefaultStreamCreationTimeout`.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame accepted from the client (kubectl's are at most 32 KiB of data).
const MAX_FRAME: usize = 1 << 20;
/// Payload per DATA frame sent, as the kubelet's 32 KiB copy buffer makes them.
const DATA_FRAME: usize = 32 * 1024;
/// Streams one session may open (an exec needs five at most).
const MAX_STREAMS: usize = 16;
/// Control frames (SYN_REPLY, ping echoes) waiting for the socket before the client is deemed
/// to be flooding us without reading.
const CONTROL_QUEUE: usize = 64;
/// Output buffers (each up to one engine read, 256 KiB) waiting for the socket.
const DATA_QUEUE: usize = 4;
const READ_CHUNK: usize = 64 * 1024;
/// How long a terminal session waits for the client's first size before starting anyway.
const TTY_CUE_WAIT: Duration = Duration::from_millis(500);
/// How long a GOAWAY for a misbehaving client may take to go out.
const ABORT_GRACE: Duration = Duration::from_secs(2);

/// The client's streams, by type.
#[derive(Debug, Clone, Copy, Default)]
struct Streams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Streams {
    fn slot(&mut self, kind: StreamType) -> &mut Option<u32> {
        match kind {
            StreamType::Error => &mut self.error,
            StreamType::Stdin => &mut self.stdin,
            StreamType::Stdout => &mut self.stdout,
            StreamType::Stderr => &mut self.stderr,
            StreamType::Resize => &mut self.resize,
        }
    }

    fn has(&self, kind: StreamType) -> bool {
        let mut copy = *self;
        copy.slot(kind).is_some()
    }

    fn kind_of(&self, id: u32) -> Option<StreamType> {
        [
            (self.error, StreamType::Error),
            (self.stdin, StreamType::Stdin),
            (self.stdout, StreamType::Stdout),
            (self.stderr, StreamType::Stderr),
            (self.resize, StreamType::Resize),
        ]
        .into_iter()
        .find_map(|(sid, kind)| (sid == Some(id)).then_some(kind))
    }

    fn last_id(&self) -> u32 {
        [self.error, self.stdin, self.stdout, self.stderr, self.resize].into_iter().flatten().max().unwrap_or(0)
    }
}

struct SpdyOutput {
    data: mpsc::Sender<Vec<u8>>,
    streams: Streams,
    stdin_finished: bool,
}

impl SpdyOutput {
    async fn queue(&self, frames: Vec<u8>) -> Result<(), String> {
        self.data.send(frames).await.map_err(|_| "connection closed".to_owned())
    }

    /// FIN on the output streams, the status on the error stream, FIN on the rest, GOAWAY.
    fn end_frames(&self, status: Option<&[u8]>) -> Vec<u8> {
        let s = &self.streams;
        let mut b = Vec::new();
        for id in [s.stdout, s.stderr].into_iter().flatten() {
            push_data(&mut b, id, true, b"");
        }
        if let Some(id) = s.error {
            for chunk in status.unwrap_or_default().chunks(DATA_FRAME) {
                push_data(&mut b, id, false, chunk);
            }
            push_data(&mut b, id, true, b"");
        }
        let stdin = s.stdin.filter(|_| !self.stdin_finished);
        for id in [stdin, s.resize].into_iter().flatten() {
            push_data(&mut b, id, true, b"");
        }
        let _ = encode_goaway(s.last_id(), GoAwayStatus::OK, &mut b);
        b
    }
}

fn push_data(out: &mut Vec<u8>, id: u32, fin: bool, data: &[u8]) {
    // Fails only for stream id 0, which no registered stream has.
    if let Err(e) = encode_data(id, fin, data, out) {
        tracing::warn!(error = %e, "encode spdy data frame");
    }
}

impl Output for SpdyOutput {
    async fn send(&mut self, stream: Stream, data: &[u8]) -> Result<(), String> {
        let id = match stream {
            Stream::Stdout => self.streams.stdout,
            Stream::Stderr => self.streams.stderr,
        };
        // A stream the client did not open: the bytes have nowhere to go.
        let Some(id) = id else { return Ok(()) };
        let mut frames = Vec::with_capacity(data.len() + FRAME_HEADER_LEN * data.len().div_ceil(DATA_FRAME));
        for chunk in data.chunks(DATA_FRAME) {
            push_data(&mut frames, id, false, chunk);
        }
        self.queue(frames).await
    }
}

/// Runs one upgraded SPDY exec session to its end.
pub(super) async fn run(mut exec: Exec, upgraded: Upgraded, protocol: StreamProtocol) {
    let codec = match Codec::with_limits(MAX_FRAME, HeaderLimits::default()) {
        Ok(c) => c,
        Err(e) => {
            exec.finish(None, Some(format!("spdy codec: {e}")));
            return;
        }
    };
    let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
    let mut writer = tokio::spawn(write_frames(wr, control_rx, data_rx));
    let (ready_tx, ready_rx) = oneshot::channel();
    let (sized_tx, sized_rx) = oneshot::channel();
    let (stdin, stdin_rx) = StdinFeed::new(exec.opts.stdin);
    let reader = Reader {
        codec,
        control: control_tx,
        expected: expected_streams_for(protocol, &exec.opts),
        streams: Streams::default(),
        opened: 0,
        last_id: 0,
        ready: Some(ready_tx),
        sized: Some(sized_tx),
        stdin,
        resizer: Resizer::new(exec.session.clone()),
    };
    let mut client = tokio::spawn(reader.run(rd));
    let mut out = SpdyOutput { data: data_tx, streams: Streams::default(), stdin_finished: false };

    let ready = tokio::select! {
        ready = ready_rx => ready.ok(),
        _ = tokio::time::sleep(STREAM_TIMEOUT) => None,
    };
    let Some(streams) = ready else {
        // Nothing was started, so there is nothing to hang up.
        let why = match tokio::time::timeout(Duration::from_millis(100), &mut client).await {
            Ok(end) => join_end(end).describe(),
            Err(_) => {
                client.abort();
                let mut goaway = Vec::new();
                let _ = encode_goaway(out.streams.last_id(), GoAwayStatus::OK, &mut goaway);
                let _ = tokio::time::timeout(ABORT_GRACE, out.queue(goaway)).await;
                "timed out waiting for the client to create streams".to_owned()
            }
        };
        drop(out);
        close_writer(&mut writer).await;
        exec.finish(None, Some(why));
        return;
    };
    out.streams = streams;
    if protocol == StreamProtocol::V1
        && let Some(id) = streams.stdin
    {
        // Like the kubelet: v1 clients never half-close, so the server ends its side of stdin
        // right after setup.
        let mut fin = Vec::new();
        push_data(&mut fin, id, true, b"");
        if out.queue(fin).await.is_ok() {
            out.stdin_finished = true;
        }
    }

    if exec.opts.tty && streams.resize.is_some() {
        // kubectl sends the terminal's size right after its streams exist: starting on it gives
        // the process its real size from the first byte (`stty size`, a full-screen editor).
        let _ = tokio::time::timeout(TTY_CUE_WAIT, sized_rx).await;
    }

    match exec.execute(&mut out, &mut client, stdin_rx).await {
        Outcome::Report(ending) => {
            let status = exec.status(&ending);
            let payload = status.error_channel_payload(protocol.status_is_json());
            let frames = out.end_frames(payload.as_deref());
            let mut error = ending.error();
            let mut client_done = false;
            tokio::select! {
                sent = out.queue(frames) => {
                    if let Err(e) = sent {
                        error.get_or_insert(format!("client went away before the status: {e}"));
                    }
                }
                end = &mut client => {
                    client_done = true;
                    error.get_or_insert(join_end(end).describe());
                }
            }
            // The client closes once it has read everything (after resetting its streams and
            // sending GOAWAY); until then its pings are still answered.
            if !client_done && tokio::time::timeout(CLOSE_GRACE, &mut client).await.is_err() {
                tracing::debug!("spdy client did not close after GOAWAY");
            }
            client.abort();
            drop(out);
            close_writer(&mut writer).await;
            exec.finish(ending.exit_code(), error);
        }
        Outcome::Abandoned { end, exit_code } => {
            if let ClientEnd::Protocol(_) = &end {
                let mut goaway = Vec::new();
                let _ = encode_goaway(out.streams.last_id(), GoAwayStatus::PROTOCOL_ERROR, &mut goaway);
                let _ = tokio::time::timeout(ABORT_GRACE, out.queue(goaway)).await;
            }
            drop(out);
            close_writer(&mut writer).await;
            exec.finish(exit_code, Some(end.describe()));
        }
    }
}

/// Lets the writer flush what is queued and close, but not wait forever on a client that
/// stopped reading.
async fn close_writer(writer: &mut JoinHandle<std::io::Result<()>>) {
    match tokio::time::timeout(CLOSE_GRACE, &mut *writer).await {
        Ok(Ok(Err(e))) => tracing::debug!(error = %e, "spdy writer"),
        Ok(_) => {}
        Err(_) => writer.abort(),
    }
}

/// Writes queued frames, control frames first, until the data queue closes; then shuts the
/// connection's write side.
async fn write_frames(
    mut wr: WriteHalf<Io>,
    mut control: mpsc::Receiver<Vec<u8>>,
    mut data: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut control_open = true;
    loop {
        let frames = tokio::select! {
            biased;
            c = control.recv(), if control_open => match c {
                Some(frames) => frames,
                None => {
                    control_open = false;
                    continue;
                }
            },
            d = data.recv() => match d {
                Some(frames) => frames,
                None => break,
            },
        };
        wr.write_all(&frames).await?;
    }
    wr.flush().await?;
    wr.shutdown().await
}

/// Reads the client's frames for the whole session.
struct Reader {
    codec: Codec,
    control: mpsc::Sender<Vec<u8>>,
    expected: Vec<StreamType>,
    streams: Streams,
    opened: usize,
    last_id: u32,
    ready: Option<oneshot::Sender<Streams>>,
    /// Fired by the first resize data.
    sized: Option<oneshot::Sender<()>>,
    stdin: StdinFeed,
    resizer: Resizer,
}

impl Reader {
    async fn run(mut self, mut rd: ReadHalf<Io>) -> ClientEnd {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            loop {
                let (frame, used) = match self.codec.decode(&buf) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(e) => return ClientEnd::Protocol(e.to_string()),
                };
                buf.advance(used);
                if let Err(end) = self.handle(frame).await {
                    return end;
                }
            }
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return ClientEnd::Gone("connection closed".to_owned()),
                Ok(_) => {}
                Err(e) => return ClientEnd::Gone(e.to_string()),
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), ClientEnd> {
        match frame {
            Frame::SynStream { stream_id, fin, headers, .. } => self.open_stream(stream_id, fin, &headers)?,
            Frame::Data { stream_id, fin, data } => match self.streams.kind_of(stream_id) {
                Some(StreamType::Stdin) => {
                    self.stdin.send(Bytes::from(data)).await;
                    if fin {
                        self.stdin.close();
                    }
                }
                Some(StreamType::Resize) => {
                    self.resizer.push(&data);
                    if let Some(sized) = self.sized.take() {
                        let _ = sized.send(());
                    }
                }
                // Output streams carry nothing from the client; unknown streams are ignored.
                _ => {}
            },
            Frame::RstStream { stream_id, status } => {
                tracing::debug!(stream_id, status = status.0, "spdy client reset a stream");
                if self.streams.kind_of(stream_id) == Some(StreamType::Stdin) {
                    self.stdin.close();
                }
            }
            Frame::Ping { id } => {
                if Role::Server.should_echo_ping(id) {
                    let mut echo = Vec::with_capacity(12);
                    encode_ping(id, &mut echo);
                    self.queue_control(echo)?;
                }
            }
            // The client is closing; its streams end with the connection.
            Frame::GoAway { last_good_stream_id, status } => {
                tracing::debug!(last_good_stream_id, status = status.0, "spdy client sent GOAWAY");
            }
            // spdystream ignores these, and so do we: no flow control, no settings.
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    fn open_stream(&mut self, id: u32, fin: bool, headers: &Headers) -> Result<(), ClientEnd> {
        if Role::Server.owns_id(id) || id <= self.last_id {
            return Err(ClientEnd::Protocol(format!("invalid stream id {id} after {}", self.last_id)));
        }
        self.last_id = id;
        self.opened += 1;
        if self.opened > MAX_STREAMS {
            return Err(ClientEnd::Protocol(format!("more than {MAX_STREAMS} streams")));
        }
        let mut reply = Vec::new();
        encode_syn_reply(id, false, &Headers::new(), self.codec.compressor(), &mut reply)
            .map_err(|e| ClientEnd::Protocol(e.to_string()))?;
        self.queue_control(reply)?;
        let Some(kind) = StreamType::from_headers(headers) else {
            tracing::debug!(id, streamtype = ?headers.get(hatch_wire::spdy::HEADER_STREAM_TYPE), "ignoring stream of unknown type");
            return Ok(());
        };
        let slot = self.streams.slot(kind);
        if slot.is_some() {
            return Err(ClientEnd::Protocol(format!("second {} stream", kind.as_str())));
        }
        *slot = Some(id);
        if fin && kind == StreamType::Stdin {
            self.stdin.close();
        }
        if self.expected.iter().all(|k| self.streams.has(*k))
            && let Some(ready) = self.ready.take()
        {
            let _ = ready.send(self.streams);
        }
        Ok(())
    }

    fn queue_control(&self, frame: Vec<u8>) -> Result<(), ClientEnd> {
        match self.control.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(ClientEnd::Protocol("client sends control frames without reading the replies".to_owned()))
            }
            // The session is ending and the writer is gone: nothing to answer.
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }
}
