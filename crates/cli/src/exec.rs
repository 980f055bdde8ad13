//! `hatch exec`: the Kubernetes exec protocol (WebSocket `v5.channel.k8s.io`) to the API server
//! from the kubeconfig, so it also works against any Kubernetes API server for the flags
//! Kubernetes has. hatch's extras (`-u`, `--privileged`, `-e`, `-w`, `-d`) travel as extra query
//! parameters; a server that does not know them refuses with a clear message.

use std::os::fd::AsFd;

use futures_util::{SinkExt, StreamExt};
use hatch_wire::exec_options::ExecOptions;
use hatch_wire::k8s_ws::{self, OutgoingMessage, Subprotocol, channel};
use hatch_wire::status::ExecOutcome;
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::cluster::{ApiFailure, Cluster, ClusterError, status_message};
use crate::terminal;

/// What `hatch exec` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub namespace: Option<String>,
    pub pod: String,
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
    pub detach: bool,
    pub user: Option<String>,
    pub privileged: bool,
    pub env: Vec<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("exec: {0}")]
    Protocol(String),
    #[error("{0}")]
    Remote(String),
    #[error(
        "{server} is not a hatch server: it would ignore {flags} and run the command without them; \
         drop {flags}, or point KUBECONFIG at a hatch server"
    )]
    ExtensionsUnsupported { server: String, flags: String },
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Larger than kubectl's 32 KiB: fewer messages per megabyte (hatch's node takes up to 4 MiB).
const STDIN_CHUNK: usize = 256 * 1024;

fn to_message(m: OutgoingMessage) -> Message {
    match m {
        OutgoingMessage::Binary(b) => Message::Binary(b.into()),
        OutgoingMessage::Text(t) => Message::Text(t.into()),
    }
}

fn handshake_error(e: tungstenite::Error, pod: &str) -> ExecError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let message = resp.body().as_deref().map(status_message).unwrap_or_default();
            let message = match status {
                http::StatusCode::NOT_FOUND if message.is_empty() => format!("pod {pod:?} not found"),
                _ => message,
            };
            ExecError::Cluster(ClusterError::Api(ApiFailure { status, message }))
        }
        other => ExecError::Protocol(format!("upgrade failed: {other}")),
    }
}

/// Before an exec that uses hatch's extensions: makes sure the server honours them. A
/// Kubernetes API server ignores query parameters it does not know, so `-u alice` sent there
/// would run as the image's user; hatch's `/version` lists the extensions it honours. Plain
/// execs skip this request.
async fn require_extensions(cluster: &Cluster, options: &ExecOptions) -> Result<(), ExecError> {
    let used = options.extensions_used();
    if used.is_empty() {
        return Ok(());
    }
    let version = cluster.get_json("/version").await?;
    let offered: Vec<&str> = version
        .get("hatchExecExtensions")
        .and_then(|v| v.as_array())
        .map(|names| names.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = used.into_iter().filter(|name| !offered.contains(name)).map(extension_flag).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ExecError::ExtensionsUnsupported { server: cluster.config.server.clone(), flags: missing.join(", ") })
}

/// The `hatch exec` flag behind an extension parameter, for messages.
fn extension_flag(name: &str) -> &str {
    match name {
        "user" => "-u/--user",
        "privileged" => "--privileged",
        "env" => "-e/--env",
        "workdir" => "-w/--workdir",
        "detach" => "-d/--detach",
        other => other,
    }
}

/// Runs the exec and returns the remote exit code (what `hatch exec` exits with).
pub async fn exec(cluster: &Cluster, mut req: ExecRequest) -> Result<i32, ExecError> {
    if req.tty && !terminal::stdin_is_terminal() {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        req.tty = false;
    }
    let namespace = req.namespace.clone().unwrap_or_else(|| cluster.config.namespace.clone());
    let options = ExecOptions {
        command: req.command.clone(),
        container: req.container.clone(),
        stdin: req.stdin && !req.detach,
        stdout: !req.detach,
        stderr: !req.tty && !req.detach,
        tty: req.tty,
        user: req.user.clone(),
        privileged: req.privileged,
        env: req.env.clone(),
        workdir: req.workdir.clone(),
        detach: req.detach,
    };
    require_extensions(cluster, &options).await?;
    let url = format!(
        "wss://{}/api/v1/namespaces/{namespace}/pods/{}/exec?{}",
        cluster.authority,
        req.pod,
        options.to_query()
    );
    let mut request = url.into_client_request().map_err(|e| ExecError::Protocol(e.to_string()))?;
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", http::HeaderValue::from_static("v5.channel.k8s.io"));
    if let Some(auth) = cluster.bearer() {
        let value = http::HeaderValue::from_str(&auth).map_err(|e| ExecError::Protocol(e.to_string()))?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let began = std::time::Instant::now();
    let stream = cluster.connect().await?;
    tracing::debug!(tls_us = began.elapsed().as_micros() as u64, "connected");
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| handshake_error(e, &req.pod))?;
    tracing::debug!(upgraded_us = began.elapsed().as_micros() as u64, "upgraded");
    let chosen = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
    if chosen != Subprotocol::V5.name() {
        return Err(ExecError::Protocol(format!(
            "the server does not speak {} (it chose {chosen:?}); hatch exec needs a Kubernetes 1.30+ or hatch server",
            Subprotocol::V5.name()
        )));
    }

    let raw = if req.tty { Some(terminal::RawMode::enable(std::io::stdin().as_fd())?) } else { None };
    let result = session(ws, &req).await;
    tracing::debug!(done_us = began.elapsed().as_micros() as u64, "session over");
    drop(raw);
    result
}

/// Output chunks for the local terminal, tagged with their channel.
type OutputChunk = (u8, bytes::Bytes);

/// Writes output on a thread of its own: the session keeps reading (and decrypting) the next
/// message while a slow terminal takes the last one.
fn spawn_output_writer() -> (std::sync::mpsc::SyncSender<OutputChunk>, std::thread::JoinHandle<std::io::Result<()>>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<OutputChunk>(64);
    let writer = std::thread::spawn(move || {
        let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
        for (ch, data) in rx {
            if ch == channel::STDERR { write_fd(stderr.as_fd(), &data)? } else { write_fd(stdout.as_fd(), &data)? }
        }
        Ok(())
    });
    (tx, writer)
}

/// Writes all of `data` to a descriptor, bypassing std's line-buffered stdout (which scans
/// binary output for newlines and copies it once more).
fn write_fd(fd: std::os::fd::BorrowedFd<'_>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn session(
    ws: tokio_tungstenite::WebSocketStream<crate::cluster::ServerStream>,
    req: &ExecRequest,
) -> Result<i32, ExecError> {
    let proto = Subprotocol::V5;
    // First, before any await: the terminal is raw already, and a signal must not end the
    // process before the mode is put back.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (mut sink, mut stream) = ws.split();
    let send_err = |e: tungstenite::Error| ExecError::Protocol(format!("send: {e}"));
    // The size goes first, before any input, so the remote process starts with the right one.
    let mut winch = signal(SignalKind::window_change())?;
    let send_size = |rows: u16, cols: u16| -> Result<Message, ExecError> {
        let payload = hatch_wire::resize::encode(hatch_wire::resize::TerminalSize { width: cols, height: rows });
        k8s_ws::encode_data(proto, channel::RESIZE, &payload)
            .map(to_message)
            .map_err(|e| ExecError::Protocol(e.to_string()))
    };
    if req.tty
        && let Some((rows, cols)) = terminal::size(std::io::stdout().as_fd())
    {
        sink.send(send_size(rows, cols)?).await.map_err(send_err)?;
    }
    let mut stdin = tokio::io::stdin();
    let mut stdin_open = req.stdin && !req.detach;
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut status = Vec::new();
    let (output, writer) = spawn_output_writer();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let Some(m) = k8s_ws::decode_server_message(proto, &data)
                        .map_err(|e| ExecError::Protocol(e.to_string()))? else { continue };
                    match m.channel {
                        // v5 is a binary protocol: the payload is the message after its channel
                        // byte, handed to the writer without a copy.
                        channel::STDOUT | channel::STDERR => {
                            let writer_alive = output.send((m.channel, data.slice(1..))).is_ok();
                            if !writer_alive {
                                break; // the writer failed; its error is reported below
                            }
                        }
                        channel::ERROR => status.extend_from_slice(&m.payload),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => break,
                Some(Err(e)) => return Err(ExecError::Protocol(format!("connection lost: {e}"))),
            },
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let close = k8s_ws::encode_close(proto, channel::STDIN).map_err(|e| ExecError::Protocol(e.to_string()))?;
                    sink.send(to_message(close)).await.map_err(send_err)?;
                }
                Ok(n) => {
                    let data = k8s_ws::encode_data(proto, channel::STDIN, &buf[..n]).map_err(|e| ExecError::Protocol(e.to_string()))?;
                    sink.send(to_message(data)).await.map_err(send_err)?;
                }
            },
            _ = winch.recv(), if req.tty => {
                if let Some((rows, cols)) = terminal::size(std::io::stdout().as_fd()) {
                    sink.send(send_size(rows, cols)?).await.map_err(send_err)?;
                }
            }
            _ = interrupt.recv() => return Ok(130),
            _ = terminate.recv() => return Ok(143),
        }
    }
    let _ = sink.close().await;
    // Everything received is on the terminal before the exit code is.
    drop(output);
    if let Ok(Err(e)) = writer.join() {
        return Err(ExecError::Terminal(e));
    }
    if status.is_empty() {
        // kubectl treats an empty status as success (kubectl#1726); hatch does not: a session
        // that ends without one was cut.
        return Err(ExecError::Protocol("the connection ended before the exit status arrived".into()));
    }
    match ExecOutcome::from_error_stream(&status, true) {
        ExecOutcome::Exit(code) => Ok(i32::from(code)),
        ExecOutcome::Error(message) => Err(ExecError::Remote(message)),
    }
}
