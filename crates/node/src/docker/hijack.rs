//! Relaying a hijacked Docker connection (`Upgrade: tcp`) to a process.
//!
//! Client → process is raw stdin; the client half-closes it at EOF (`CloseWrite`), which must
//! never end the output. Process → client is raw with a terminal and stdcopy frames without one.
//! A client that goes away entirely (socket fully closed) hangs up the exec.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use hatch_runtime::stdio::Sink;
use hatch_wire::stdcopy::{StdStream, encode_header};

use crate::engine::Engine;
use crate::engine::container::Container;
use crate::engine::exec::{RunningExec, Stream};

const STDIN_CHUNK: usize = 128 * 1024;

/// The raw connection behind an upgraded request, and what hyper had already read of it.
pub struct Hijacked {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buffered: Bytes,
}

impl Hijacked {
    pub fn new(upgraded: Upgraded) -> Option<Hijacked> {
        let parts = upgraded.downcast::<TokioIo<UnixStream>>().ok()?;
        let (rd, wr) = parts.io.into_inner().into_split();
        Some(Hijacked { rd, wr, buffered: parts.read_buf })
    }
}

/// Where client input goes.
pub enum StdinTarget {
    /// Discard it (nothing attached to stdin).
    None,
    /// An exec's stdin pipe or terminal.
    Sink(Sink),
    /// A container's main process; `stdin_once` closes it at the client's EOF.
    Main { engine: Arc<Engine>, container: Arc<Container>, stdin_once: bool },
}

/// How the client's side ended.
enum ClientEnd {
    /// The client typed the detach sequence: stop relaying, leave the process running.
    Detached,
    /// The connection is fully closed.
    Gone,
}

/// Docker's detach sequence (`--detach-keys`, default `ctrl-p,ctrl-q`), e.g. `ctrl-a,x`.
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    let spec = if spec.is_empty() { "ctrl-p,ctrl-q" } else { spec };
    spec.split(',')
        .map(|key| {
            let key = key.trim();
            if let Some(c) = key.strip_prefix("ctrl-") {
                match c.as_bytes() {
                    [b] if b.is_ascii_lowercase() => Ok(b - b'a' + 1),
                    [b'@'] => Ok(0),
                    [b @ b'['..=b'_'] => Ok(b - b'@'),
                    _ => Err(format!("Unknown character: '{key}'")),
                }
            } else if key.len() == 1 {
                Ok(key.as_bytes()[0])
            } else {
                Err(format!("Unknown character: '{key}'"))
            }
        })
        .collect()
}

/// Finds the detach sequence in a terminal's input, holding back a partial match.
struct EscapeProxy {
    keys: Vec<u8>,
    matched: usize,
}

impl EscapeProxy {
    /// Appends what may pass to `out`; true when the full sequence was typed.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.keys.get(self.matched) == Some(&b) {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return true;
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if self.keys.first() == Some(&b) {
                self.matched = 1;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// Resolves when the peer has closed its end completely (not merely half-closed).
///
/// The stream's own readiness cannot be waited on for this: after the client's half-close its
/// read side stays "closed" (always ready), and clearing its write readiness would stall the
/// output writer. So a duplicate descriptor is registered for write readiness alone: a hang-up
/// arrives there as "write closed".
async fn peer_gone(stream: &UnixStream) {
    use std::os::fd::AsFd;
    let Ok(dup) = stream.as_fd().try_clone_to_owned() else { return };
    let Ok(watch) = hatch_runtime::stdio::register_with(dup, Interest::WRITABLE) else { return };
    loop {
        let Ok(mut guard) = watch.writable().await else { return };
        if guard.ready().is_write_closed() {
            return;
        }
        guard.clear_ready_matching(tokio::io::Ready::WRITABLE);
    }
}

async fn write_to_target(target: &mut StdinTarget, data: &[u8]) -> std::io::Result<()> {
    match target {
        StdinTarget::None => Ok(()),
        StdinTarget::Sink(sink) => sink.write_all(data).await,
        StdinTarget::Main { engine, container, .. } => engine.write_stdin(container, data).await,
    }
}

async fn close_target(target: StdinTarget) {
    if let StdinTarget::Main { engine, container, stdin_once: true } = target {
        engine.close_stdin(&container).await;
    }
    // Dropping an exec's sink closes the pipe: EOF for the process.
}

/// Copies client input to `target` until the client's EOF, then waits for it to go away.
async fn client_input(
    mut rd: OwnedReadHalf,
    buffered: Bytes,
    mut target: StdinTarget,
    detach: Option<Vec<u8>>,
) -> ClientEnd {
    let mut proxy = detach.map(|keys| EscapeProxy { keys, matched: 0 });
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut pass = Vec::new();
    let mut pending = buffered;
    let mut target_open = true;
    loop {
        let data: &[u8] = if !pending.is_empty() {
            &pending
        } else {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => &buf[..n],
                Err(_) => return ClientEnd::Gone,
            }
        };
        let data = match &mut proxy {
            Some(p) => {
                pass.clear();
                if p.feed(data, &mut pass) {
                    return ClientEnd::Detached;
                }
                &pass[..]
            }
            None => data,
        };
        // A process that stopped reading does not stop the client from being heard (its
        // output still flows); later input is dropped.
        if target_open && !data.is_empty() && write_to_target(&mut target, data).await.is_err() {
            target_open = false;
        }
        pending = Bytes::new();
    }
    close_target(target).await;
    peer_gone(rd.as_ref()).await;
    ClientEnd::Gone
}

/// Waits (briefly, bounded) until the client has read everything sent so far: the 101 response.
///
/// docker-py reads the response head through a buffered reader, then reads the stream from the
/// raw socket; bytes that arrived together with the head sit in that buffer and are lost. dockerd
/// never shows this because its exec starts tens of milliseconds after the 101; hatch's starts
/// before it. `SIOCOUTQ` on a unix socket counts the bytes the peer has not consumed yet.
async fn peer_read_response(wr: &OwnedWriteHalf) {
    use std::os::fd::AsRawFd;
    let fd = wr.as_ref().as_raw_fd();
    let unread = || {
        let mut pending: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int to the pointer, which lives across the call; the
        // descriptor is the open socket `wr` borrows.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut pending) };
        if rc < 0 { 0 } else { pending }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while unread() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_micros(200)).await;
    }
}

/// Writes `data` as one stdcopy frame (or raw for a terminal).
async fn write_output(wr: &mut OwnedWriteHalf, tty: bool, stderr: bool, data: &[u8]) -> std::io::Result<()> {
    if tty {
        return wr.write_all(data).await;
    }
    let stream = if stderr { StdStream::Stderr } else { StdStream::Stdout };
    let header = encode_header(stream, data.len()).map_err(std::io::Error::other)?;
    let (mut head, mut body): (&[u8], &[u8]) = (&header, data);
    while !head.is_empty() || !body.is_empty() {
        let n = wr.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

/// Relays an exec's streams over a hijacked connection until the exec is over.
pub async fn relay_exec(conn: Hijacked, run: RunningExec, tty: bool, detach_keys: Option<Vec<u8>>) {
    let Hijacked { rd, mut wr, buffered } = conn;
    let RunningExec { session: _session, stdin, mut output, control } = run;
    let target = stdin.map_or(StdinTarget::None, StdinTarget::Sink);
    let mut client = tokio::spawn(client_input(rd, buffered, target, detach_keys));
    let hang_up = || {
        let _ = control.try_send(crate::engine::exec::ExecControl::Hangup);
    };
    let mut first_write = true;
    loop {
        tokio::select! {
            next = output.next() => match next {
                Ok(Some((stream, len))) => {
                    if first_write {
                        first_write = false;
                        peer_read_response(&wr).await;
                    }
                    let data = output.chunk(stream, len);
                    if write_output(&mut wr, tty, stream == Stream::Stderr, data).await.is_err() {
                        hang_up();
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "exec output");
                    break;
                }
            },
            end = &mut client => {
                if !matches!(end, Ok(ClientEnd::Detached)) {
                    hang_up();
                }
                break;
            }
        }
    }
    client.abort();
    let _ = wr.shutdown().await;
}

/// Relays a container's main process (`docker attach`, `docker run`) until it exits or the
/// client leaves.
pub async fn relay_attach(
    conn: Hijacked,
    mut output: tokio::sync::mpsc::Receiver<crate::engine::container::OutputChunk>,
    target: StdinTarget,
    tty: bool,
    streams: (bool, bool),
    detach_keys: Option<Vec<u8>>,
) {
    let Hijacked { rd, mut wr, buffered } = conn;
    let mut client = tokio::spawn(client_input(rd, buffered, target, detach_keys));
    peer_read_response(&wr).await;
    loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Some(chunk) => {
                    let wanted = if chunk.stderr { streams.1 } else { streams.0 };
                    if wanted && write_output(&mut wr, tty, chunk.stderr, &chunk.data).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = &mut client => break,
        }
    }
    client.abort();
    let _ = wr.shutdown().await;
}

/// Tells the client why nothing runs (after the 101, as Docker does), then closes.
pub async fn write_failure(conn: Hijacked, tty: bool, message: &str) {
    let Hijacked { mut wr, .. } = conn;
    peer_read_response(&wr).await;
    let _ = write_output(&mut wr, tty, true, format!("{message}\r\n").as_bytes()).await;
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_key_specs() {
        assert_eq!(parse_detach_keys(""), Ok(vec![16, 17]));
        assert_eq!(parse_detach_keys("ctrl-a,x"), Ok(vec![1, b'x']));
        assert_eq!(parse_detach_keys("ctrl-\\"), Ok(vec![28]));
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("abc").is_err());
    }

    #[test]
    fn escape_proxy_holds_partial_matches() {
        let mut p = EscapeProxy { keys: vec![16, 17], matched: 0 };
        let mut out = Vec::new();
        assert!(!p.feed(b"ab\x10", &mut out));
        assert_eq!(out, b"ab");
        // The partial match is released when the next byte breaks it.
        assert!(!p.feed(b"c", &mut out));
        assert_eq!(out, b"ab\x10c");
        assert!(!p.feed(b"\x10\x10", &mut out));
        assert!(p.feed(b"\x11", &mut out));
        assert_eq!(out, b"ab\x10c\x10");
    }
}
