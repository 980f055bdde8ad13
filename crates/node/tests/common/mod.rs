//! A real engine (runc + the static hatch-init) with a busybox pod, the k8s streaming server on
//! loopback, and this crate's own WebSocket and SPDY clients to drive it.
//!
//! Needs root, runc, `/bin/busybox` (static) and the static hatch-init, found through
//! `HATCH_INIT` or next to the test binary's target directory
//! (`scripts/build --debug` or `RUSTFLAGS="-C target-feature=+crt-static" cargo build -p
//! hatch-init --target x86_64-unknown-linux-gnu`).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use hatch_node::engine::container::{Container, ContainerSpec};
use hatch_node::engine::pods::{LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE};
use hatch_node::engine::{Engine, EngineConfig};
use hatch_node::k8s::{AUDIT_ID_HEADER, ExecObserver, ExecSummary, StreamingServer};
use hatch_wire::k8s_ws::{self, OutgoingMessage, Subprotocol, channel};
use hatch_wire::resize::{self, TerminalSize};
use hatch_wire::spdy::{self, Codec, Frame, GoAwayStatus, Headers, RstStatus, StreamType};
use tokio_util::sync::CancellationToken;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), Error>;

pub const NS: &str = "ns1";
pub const POD: &str = "web";
/// Running `sleep`: execs go here.
pub const MAIN: &str = "main";
/// Created, never started.
pub const IDLE: &str = "idle";

const WAIT: Duration = Duration::from_secs(60);

pub fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}

/// Percent-encodes a query value (Go `QueryEscape`-like).
pub fn q(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `/exec/ns1/web/main?command=…&…` for `argv` and the listed flags (`stdin`, `stdout`, …).
pub fn exec_path(container: &str, argv: &[&str], flags: &[&str]) -> String {
    let mut query: Vec<String> = argv.iter().map(|a| format!("command={}", q(a))).collect();
    query.extend(flags.iter().map(|f| if f.contains('=') { (*f).to_owned() } else { format!("{f}=true") }));
    format!("/exec/{NS}/{POD}/{container}?{}", query.join("&"))
}

fn find_init() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("HATCH_INIT") {
        return Ok(p.into());
    }
    let rel = Path::new("x86_64-unknown-linux-gnu/debug/hatch-init");
    let mut candidates = Vec::new();
    // <target>/debug/deps/<test binary>
    if let Some(target) = std::env::current_exe()?.ancestors().nth(3) {
        candidates.push(target.join(rel));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target").join(rel));
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| {
        err("static hatch-init not found: run scripts/build --debug (or set HATCH_INIT); these tests need it")
    })
}

fn find_runc() -> Result<PathBuf, Error> {
    ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| err("runc not found (apt-get install runc)"))
}

/// The busybox rootfs of `tests/conftest.py::build_busybox_rootfs`.
fn build_busybox_rootfs(dest: &Path) -> Result<(), Error> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err(err("/bin/busybox missing (apt-get install busybox-static)"));
    }
    for d in ["bin", "etc", "tmp", "root", "home/alice", "var/log"] {
        std::fs::create_dir_all(dest.join(d))?;
    }
    std::fs::copy(busybox, dest.join("bin/busybox"))?;
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", dest.join("bin").join(applet))?;
        }
    }
    std::fs::write(
        dest.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(dest.join("etc/group"), "root:x:0:\nalice:x:1000:\nstaff:x:50:alice\nnogroup:x:65534:\n")?;
    std::fs::set_permissions(dest.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::os::unix::fs::chown(dest.join("home/alice"), Some(1000), Some(1000))?;
    Ok(())
}

struct Recorder(mpsc::UnboundedSender<ExecSummary>);

impl ExecObserver for Recorder {
    fn exec_finished(&self, summary: ExecSummary) {
        let _ = self.0.send(summary);
    }
}

/// One engine, one pod (`ns1/web`: `main` running, `idle` created), one streaming server.
pub struct Fixture {
    pub engine: Arc<Engine>,
    pub server: Arc<StreamingServer>,
    pub addr: SocketAddr,
    pub data: tempfile::TempDir,
    containers: Vec<Arc<Container>>,
    summaries: Mutex<(mpsc::UnboundedReceiver<ExecSummary>, Vec<ExecSummary>)>,
    shutdown: CancellationToken,
}

fn pod_spec(container: &str) -> ContainerSpec {
    let mut spec = ContainerSpec {
        image: "busybox:k8s".into(),
        cmd: Some(vec!["sleep".into(), "100000".into()]),
        ..Default::default()
    };
    spec.labels.insert(LABEL_POD_NAMESPACE.into(), NS.into());
    spec.labels.insert(LABEL_POD_NAME.into(), POD.into());
    spec.labels.insert(LABEL_CONTAINER_NAME.into(), container.into());
    spec
}

impl Fixture {
    pub async fn start() -> Result<Fixture, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(err("the k8s streaming tests need root (runc containers)"));
        }
        // Short: the engine's unix socket paths must stay under 100 bytes.
        let data = tempfile::Builder::new().prefix("hk").tempdir_in("/tmp")?;
        let src = data.path().join("bb");
        build_busybox_rootfs(&src)?;
        let engine = Engine::open(EngineConfig {
            data_dir: data.path().join("d"),
            runc: find_runc()?,
            init_binary: find_init()?,
            rootfs: hatch_runtime::rootfs::RootfsKind::Overlay,
        })
        .await?;
        let images = engine.images.clone();
        tokio::task::spawn_blocking(move || images.import_dir(&src, Some("busybox:k8s"))).await??;
        let mut containers = Vec::new();
        let main = engine.create(Some(format!("{POD}-{MAIN}-{}", std::process::id())), pod_spec(MAIN)).await;
        let main = main?;
        containers.push(main.clone());
        let idle = engine.create(Some(format!("{POD}-{IDLE}-{}", std::process::id())), pod_spec(IDLE)).await?;
        containers.push(idle);
        let (tx, rx) = mpsc::unbounded_channel();
        let server = StreamingServer::new(engine.clone(), Some(Arc::new(Recorder(tx))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        tokio::spawn(server.clone().serve(listener, None, shutdown.clone()));
        let fx = Fixture {
            engine: engine.clone(),
            server,
            addr,
            data,
            containers,
            summaries: Mutex::new((rx, Vec::new())),
            shutdown,
        };
        // Start after the fixture exists, so a failure still cleans up.
        if let Err(e) = engine.start(&main).await {
            fx.cleanup().await?;
            return Err(e.into());
        }
        Ok(fx)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().join("d")
    }

    /// Removes the containers through the engine and checks nothing is left behind.
    pub async fn cleanup(&self) -> TestResult {
        self.shutdown.cancel();
        for c in &self.containers {
            self.engine.remove(c, true).await?;
        }
        let runc_root = self.data_dir().join("runc");
        let out =
            std::process::Command::new(find_runc()?).arg("--root").arg(&runc_root).args(["list", "-q"]).output()?;
        let left = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        let data = self.data.path().to_string_lossy().into_owned();
        let mounted: Vec<&str> = mounts.lines().filter(|l| l.contains(&data)).collect();
        if !left.is_empty() || !mounted.is_empty() {
            return Err(err(format!("left behind: runc containers {left:?}, mounts {mounted:?}")));
        }
        Ok(())
    }

    /// The observer's summary for the request sent with `Hatch-Audit-Id: audit_id`.
    pub async fn summary(&self, audit_id: &str) -> Result<ExecSummary, Error> {
        let mut guard = self.summaries.lock().await;
        let (rx, seen) = &mut *guard;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = seen.iter().position(|s| s.audit_id.as_deref() == Some(audit_id)) {
                return Ok(seen.remove(i));
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => seen.push(s),
                Ok(None) => return Err(err("observer channel closed")),
                Err(_) => return Err(err(format!("no summary for {audit_id}"))),
            }
        }
    }
}

/// Runs `test` against a fresh fixture, then cleans up whatever happened.
pub async fn with_fixture<F>(test: F) -> TestResult
where
    F: AsyncFnOnce(&Fixture) -> TestResult,
{
    let fx = Fixture::start().await?;
    let result = std::panic::AssertUnwindSafe(test(&fx)).catch_unwind().await;
    let cleaned = fx.cleanup().await;
    match result {
        Ok(r) => {
            r?;
            cleaned
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

pub fn audit_id(tag: &str) -> String {
    format!("{tag}-{}", rand::random::<u32>())
}

// ---- plain HTTP ------------------------------------------------------------------------------

/// Sends a raw request and reads the response head (and the body, when not a 101).
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub stream: Option<TcpStream>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }

    pub fn status_json(&self) -> Result<serde_json::Value, Error> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<RawResponse, Error> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await??;
        if n == 0 {
            return Err(err("connection closed before the response head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| err("bad status line"))?;
    let mut body = buf[head_end..].to_vec();
    let mut resp = RawResponse { status, head, body: Vec::new(), stream: None };
    if status == 101 {
        // What the server sent right after the 101 (WebSocket's ready message, say).
        resp.body = body;
        resp.stream = Some(stream);
        return Ok(resp);
    }
    let length: usize = resp.header("content-length").first().and_then(|v| v.parse().ok()).unwrap_or(0);
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await??;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    resp.body = body;
    Ok(resp)
}

/// Reads until EOF (or an error such as a reset); true if the server closed within `within`.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let read_all = async {
        let mut chunk = [0u8; 65536];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

// ---- WebSocket client ------------------------------------------------------------------------

/// What a client has seen of a session.
#[derive(Debug, Default)]
pub struct Seen {
    /// Kept unless `discard_stdout` (throughput runs count bytes only).
    pub stdout: Vec<u8>,
    pub stdout_len: u64,
    pub discard_stdout: bool,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
    /// Channel of each data message, in order (the first is the "ready" message).
    pub channels: Vec<u8>,
    pub close_code: Option<u16>,
    pub pongs: Vec<Vec<u8>>,
    pub ended: bool,
}

pub struct WsClient {
    pub protocol: Subprotocol,
    tx: SplitSink<WebSocketStream<TcpStream>, Message>,
    rx: mpsc::UnboundedReceiver<Result<Message, String>>,
    reader: tokio::task::JoinHandle<()>,
    pub seen: Seen,
}

pub async fn ws_connect(addr: SocketAddr, path: &str, offered: &[&str], audit: &str) -> Result<WsClient, Error> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    if !offered.is_empty() {
        req.headers_mut().insert("Sec-WebSocket-Protocol", offered.join(", ").parse()?);
    }
    req.headers_mut().insert(AUDIT_ID_HEADER, audit.parse()?);
    let stream = TcpStream::connect(addr).await?;
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    let chosen = resp.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
    let protocol = match chosen {
        Some(name) => Subprotocol::from_name(name).ok_or_else(|| err(format!("server chose {name}")))?,
        None if offered.is_empty() => Subprotocol::IMPLICIT,
        None => return Err(err("server did not echo a protocol")),
    };
    let (tx, mut rx_ws) = ws.split();
    let (events, rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(m) = rx_ws.next().await {
            let failed = m.is_err();
            if events.send(m.map_err(|e| e.to_string())).is_err() || failed {
                break;
            }
        }
    });
    Ok(WsClient { protocol, tx, rx, reader, seen: Seen::default() })
}

impl WsClient {
    /// Disappears: the TCP connection closes without a close frame.
    pub async fn vanish(self) {
        self.reader.abort();
        let _ = self.reader.await;
        drop(self.tx);
    }

    pub async fn send_raw(&mut self, m: Message) -> TestResult {
        self.tx.send(m).await?;
        Ok(())
    }

    async fn send_out(&mut self, m: OutgoingMessage) -> TestResult {
        let m = match m {
            OutgoingMessage::Binary(b) => Message::Binary(b.into()),
            OutgoingMessage::Text(t) => Message::Text(t.into()),
        };
        self.send_raw(m).await
    }

    pub async fn stdin(&mut self, data: &[u8]) -> TestResult {
        for chunk in data.chunks(32 * 1024) {
            let m = k8s_ws::encode_data(self.protocol, channel::STDIN, chunk)?;
            self.send_out(m).await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&mut self) -> TestResult {
        let m = k8s_ws::encode_close(self.protocol, channel::STDIN)?;
        self.send_out(m).await
    }

    pub async fn resize(&mut self, width: u16, height: u16) -> TestResult {
        let m = k8s_ws::encode_data(self.protocol, channel::RESIZE, &resize::encode(TerminalSize { width, height }))?;
        self.send_out(m).await
    }

    /// Reads messages until `done(seen)` or the end of the session.
    pub async fn pump_until(&mut self, done: impl Fn(&Seen) -> bool, within: Duration) -> TestResult {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen) {
            if self.seen.ended {
                return Err(err(format!("session ended first: {:?}", self.seen_text())));
            }
            let m = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Err(err(format!("timed out; seen so far: {:?}", self.seen_text()))),
                Ok(None) => {
                    self.seen.ended = true;
                    continue;
                }
                Ok(Some(Err(e))) => {
                    self.seen.ended = true;
                    if self.seen.close_code.is_none() {
                        return Err(err(format!("websocket error before a close frame: {e}")));
                    }
                    continue;
                }
                Ok(Some(Ok(m))) => m,
            };
            match m {
                Message::Binary(b) => self.record(&b)?,
                Message::Text(t) => self.record(t.as_bytes())?,
                Message::Close(frame) => {
                    self.seen.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Message::Pong(p) => self.seen.pongs.push(p.to_vec()),
                Message::Ping(_) | Message::Frame(_) => {}
            }
        }
        Ok(())
    }

    fn record(&mut self, payload: &[u8]) -> TestResult {
        let Some(m) = k8s_ws::decode_server_message(self.protocol, payload)? else { return Ok(()) };
        self.seen.channels.push(m.channel);
        match m.channel {
            channel::STDOUT => {
                self.seen.stdout_len += m.payload.len() as u64;
                if !self.seen.discard_stdout {
                    self.seen.stdout.extend_from_slice(&m.payload);
                }
            }
            channel::STDERR => self.seen.stderr.extend_from_slice(&m.payload),
            channel::ERROR => self.seen.error.extend_from_slice(&m.payload),
            other => return Err(err(format!("message on unexpected channel {other}"))),
        }
        Ok(())
    }

    /// Reads to the end of the session (close frame, then the connection's end).
    pub async fn finish(&mut self) -> TestResult {
        self.pump_until(|s| s.ended, WAIT).await
    }

    pub fn seen_text(&self) -> (String, String, String, Option<u16>) {
        (
            String::from_utf8_lossy(&self.seen.stdout).into_owned(),
            String::from_utf8_lossy(&self.seen.stderr).into_owned(),
            String::from_utf8_lossy(&self.seen.error).into_owned(),
            self.seen.close_code,
        )
    }
}

// ---- SPDY client -----------------------------------------------------------------------------

/// A SPDY/3.1 exec client built on `hatch_wire::spdy`, choreographed like kubectl's.
pub struct SpdyClient {
    /// The protocol the server chose.
    pub protocol: String,
    wr: OwnedWriteHalf,
    enc: Codec,
    frames: mpsc::UnboundedReceiver<Frame>,
    pending: VecDeque<Frame>,
    next_id: u32,
    pub ids: Vec<(StreamType, u32)>,
    pub seen: SpdySeen,
}

#[derive(Debug, Default)]
pub struct SpdySeen {
    /// Kept unless `discard_stdout` (throughput runs count bytes only).
    pub stdout: Vec<u8>,
    pub stdout_len: u64,
    pub discard_stdout: bool,
    pub stderr: Vec<u8>,
    pub error: Vec<u8>,
    pub fins: Vec<u32>,
    pub pings: Vec<u32>,
    pub goaway: Option<GoAwayStatus>,
    pub resets: Vec<u32>,
    pub ended: bool,
}

impl SpdyClient {
    /// Upgrades `path` offering `offered` (one header line each) and returns the client, or the
    /// refusal.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        offered: &[&str],
        audit: &str,
    ) -> Result<Result<SpdyClient, RawResponse>, Error> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), (AUDIT_ID_HEADER, audit)];
        headers.extend(offered.iter().map(|p| ("X-Stream-Protocol-Version", *p)));
        let mut resp = raw_request(addr, "POST", path, &headers).await?;
        let Some(stream) = resp.stream.take() else { return Ok(Err(resp)) };
        // spdystream would lose bytes buffered behind the 101: the server must wait for us.
        if !resp.body.is_empty() {
            return Err(err("bytes after the 101 before the client spoke"));
        }
        let protocol = resp.header("x-stream-protocol-version").first().cloned().unwrap_or_default();
        let (mut rd, wr) = stream.into_split();
        let (events, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let Ok(mut dec) = Codec::new() else { return };
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 256 * 1024];
            loop {
                while let Ok(Some((frame, used))) = dec.decode(&buf) {
                    buf.drain(..used);
                    if events.send(frame).is_err() {
                        return;
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Ok(Ok(SpdyClient {
            protocol,
            wr,
            enc: Codec::new()?,
            frames,
            pending: VecDeque::new(),
            next_id: 1,
            ids: Vec::new(),
            seen: SpdySeen::default(),
        }))
    }

    pub fn id(&self, kind: StreamType) -> Option<u32> {
        self.ids.iter().find(|(k, _)| *k == kind).map(|(_, id)| *id)
    }

    pub async fn write(&mut self, bytes: &[u8]) -> TestResult {
        self.wr.write_all(bytes).await?;
        Ok(())
    }

    /// Opens the streams one by one, waiting for each SYN_REPLY, as kubectl does.
    pub async fn open(&mut self, kinds: &[StreamType]) -> TestResult {
        for kind in kinds {
            let id = self.next_id;
            self.next_id += 2;
            let frame = Frame::SynStream {
                stream_id: id,
                associated_stream_id: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new().with("streamtype", kind.as_str()),
            };
            let mut out = Vec::new();
            self.enc.encode(&frame, &mut out)?;
            self.write(&out).await?;
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                    Ok(Some(Frame::SynReply { stream_id, .. })) if stream_id == id => break,
                    Ok(Some(other)) => self.pending.push_back(other),
                    Ok(None) => return Err(err("connection closed while opening streams")),
                    Err(_) => return Err(err(format!("no SYN_REPLY for stream {id}"))),
                }
            }
            self.ids.push((*kind, id));
        }
        Ok(())
    }

    pub async fn stdin(&mut self, data: &[u8]) -> TestResult {
        let id = self.id(StreamType::Stdin).ok_or_else(|| err("no stdin stream"))?;
        let mut out = Vec::with_capacity(data.len() + data.len() / 4096);
        for chunk in data.chunks(32 * 1024) {
            spdy::encode_data(id, false, chunk, &mut out)?;
        }
        self.write(&out).await
    }

    pub async fn stdin_fin(&mut self) -> TestResult {
        let id = self.id(StreamType::Stdin).ok_or_else(|| err("no stdin stream"))?;
        let mut out = Vec::new();
        spdy::encode_data(id, true, b"", &mut out)?;
        self.write(&out).await
    }

    pub async fn resize(&mut self, width: u16, height: u16) -> TestResult {
        let id = self.id(StreamType::Resize).ok_or_else(|| err("no resize stream"))?;
        let mut out = Vec::new();
        spdy::encode_data(id, false, &resize::encode(TerminalSize { width, height }), &mut out)?;
        self.write(&out).await
    }

    pub async fn ping(&mut self, id: u32) -> TestResult {
        let mut out = Vec::new();
        spdy::encode_ping(id, &mut out);
        self.write(&out).await
    }

    fn record(&mut self, frame: Frame) {
        let kind_of = |id: u32| self.ids.iter().find(|(_, i)| *i == id).map(|(k, _)| *k);
        match frame {
            Frame::Data { stream_id, fin, data } => {
                match kind_of(stream_id) {
                    Some(StreamType::Stdout) => {
                        self.seen.stdout_len += data.len() as u64;
                        if !self.seen.discard_stdout {
                            self.seen.stdout.extend_from_slice(&data);
                        }
                    }
                    Some(StreamType::Stderr) => self.seen.stderr.extend_from_slice(&data),
                    Some(StreamType::Error) => self.seen.error.extend_from_slice(&data),
                    _ => {}
                }
                if fin {
                    self.seen.fins.push(stream_id);
                }
            }
            Frame::Ping { id } => self.seen.pings.push(id),
            Frame::GoAway { status, .. } => self.seen.goaway = Some(status),
            Frame::RstStream { stream_id, .. } => self.seen.resets.push(stream_id),
            _ => {}
        }
    }

    pub async fn pump_until(&mut self, done: impl Fn(&SpdySeen) -> bool, within: Duration) -> TestResult {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.seen) {
            if let Some(f) = self.pending.pop_front() {
                self.record(f);
                continue;
            }
            if self.seen.ended {
                return Err(err(format!("connection ended first: {:?}", self.seen)));
            }
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Err(_) => return Err(err(format!("timed out; seen so far: {:?}", self.seen))),
                Ok(None) => self.seen.ended = true,
                Ok(Some(f)) => self.record(f),
            }
        }
        Ok(())
    }

    /// Reads until the error stream and the output streams are finished, then lets go like
    /// kubectl: RST(CANCEL) on every stream, GOAWAY, close; returns once the server closed too.
    pub async fn finish(&mut self) -> TestResult {
        let wanted: Vec<u32> = self
            .ids
            .iter()
            .filter(|(k, _)| matches!(k, StreamType::Error | StreamType::Stdout | StreamType::Stderr))
            .map(|(_, id)| *id)
            .collect();
        self.pump_until(|s| wanted.iter().all(|id| s.fins.contains(id)), WAIT).await?;
        let mut out = Vec::new();
        for (_, id) in &self.ids {
            spdy::encode_rst_stream(*id, RstStatus::CANCEL, &mut out)?;
        }
        spdy::encode_goaway(0, GoAwayStatus::OK, &mut out)?;
        self.write(&out).await?;
        self.wr.shutdown().await?;
        self.pump_until(|s| s.ended, WAIT).await
    }

    /// The outcome kubectl would see on the error stream.
    pub fn outcome(&self) -> hatch_wire::status::ExecOutcome {
        let json = matches!(self.protocol.as_str(), "v4.channel.k8s.io" | "v5.channel.k8s.io");
        hatch_wire::status::ExecOutcome::from_error_stream(&self.seen.error, json)
    }
}
