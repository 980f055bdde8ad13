//! End-to-end check of the SPDY codec against real kubectl binaries.
//!
//! A tiny blocking fake API server answers discovery and the pod GET, and
//! serves the exec with this crate's codecs: over SPDY (refusing the
//! WebSocket upgrade with a 400 Status, so kubectl ≥ 1.30 falls back), or
//! over WebSocket v5 (tungstenite does the framing). The fake "runs" `cat`
//! that exits 3, or `ls` that prints `hello`. Skipped when the versioned
//! kubectl binaries are not installed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hatch_wire::exec_options::ExecOptions;
use hatch_wire::k8s_ws::{self, ClientMessage, OutgoingMessage, Subprotocol, channel};
use hatch_wire::spdy::{self, Codec, Frame, GoAwayStatus, Headers, Role, StreamProtocol, StreamType};
use hatch_wire::status::{ExecOutcome, Status};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn kubectl_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let kubectl = std::env::split_paths(&path).map(|d| d.join("kubectl")).find(|p| p.exists())?;
    let real = std::fs::canonicalize(kubectl).ok()?;
    Some(real.parent()?.to_path_buf())
}

fn kubectl(version: &str) -> Option<PathBuf> {
    let p = kubectl_dir()?.join(format!("kubectl.{version}"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some(Request { method, path, query, headers }))
}

fn respond(stream: &mut TcpStream, code: u16, body: &[u8]) -> std::io::Result<()> {
    write!(stream, "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())?;
    stream.write_all(body)
}

const POD: &str = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"foo","namespace":"default"},"spec":{"containers":[{"name":"main","image":"x"}]},"status":{"phase":"Running"}}"#;
const API: &str = r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1"}]}"#;
const APIS: &str = r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#;
const V1: &str = r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"]}]}"#;

#[derive(Clone, Copy)]
enum Transport {
    Spdy,
    WebSocket,
}

fn serve_connection(stream: TcpStream, transport: Transport) -> Result<(), Box<dyn std::error::Error>> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    while let Some(req) = read_request(&mut reader)? {
        let upgrade = req.header_values("upgrade").join(",").to_ascii_lowercase();
        match (req.method.as_str(), req.path.as_str()) {
            (_, p) if p.ends_with("/exec") && upgrade.contains("spdy/3.1") && matches!(transport, Transport::Spdy) => {
                let offered = req.header_values(spdy::HEADER_PROTOCOL_VERSION);
                let Some(proto) = StreamProtocol::negotiate(&offered, &StreamProtocol::KUBELET_SUPPORTED) else {
                    return respond(&mut stream, 403, b"{}").map_err(Into::into);
                };
                let opts = ExecOptions::from_query(&req.query)?;
                write!(
                    stream,
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{}: {}\r\n\r\n",
                    spdy::HEADER_PROTOCOL_VERSION,
                    proto.name()
                )?;
                // Anything the BufReader already holds belongs to SPDY.
                let buffered = reader.buffer().to_vec();
                return spdy_session(stream, buffered, proto, &opts);
            }
            (_, p)
                if p.ends_with("/exec")
                    && upgrade.contains("websocket")
                    && matches!(transport, Transport::WebSocket) =>
            {
                let offered = req.header_values("sec-websocket-protocol");
                let Some(proto) = k8s_ws::negotiate(&offered) else {
                    return respond(&mut stream, 400, b"{}").map_err(Into::into);
                };
                let key = req.header_values("sec-websocket-key").first().copied().unwrap_or_default().to_owned();
                let opts = ExecOptions::from_query(&req.query)?;
                write!(
                    stream,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
                    tungstenite::handshake::derive_accept_key(key.as_bytes()),
                    proto.name()
                )?;
                let ws = WebSocket::from_raw_socket(
                    stream,
                    tungstenite::protocol::Role::Server,
                    Some(WebSocketConfig::default()),
                );
                return ws_session(ws, proto, &opts);
            }
            (_, p) if p.ends_with("/exec") => {
                // WebSocket attempt: refuse so kubectl falls back to SPDY.
                let body = Status::bad_request("websocket not served by this fake").with_type_meta().to_json();
                respond(&mut stream, 400, &body)?;
            }
            ("GET", "/api") => respond(&mut stream, 200, API.as_bytes())?,
            ("GET", "/apis") => respond(&mut stream, 200, APIS.as_bytes())?,
            ("GET", "/api/v1") => respond(&mut stream, 200, V1.as_bytes())?,
            ("GET", "/api/v1/namespaces/default/pods/foo") => respond(&mut stream, 200, POD.as_bytes())?,
            _ => respond(&mut stream, 404, &Status::not_found("pods", &req.path).with_type_meta().to_json())?,
        }
    }
    Ok(())
}

fn spdy_session(
    mut stream: TcpStream,
    mut buf: Vec<u8>,
    proto: StreamProtocol,
    opts: &ExecOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut codec = Codec::new()?;
    let expected = spdy::expected_streams(proto, opts.stdin, opts.stdout, opts.stderr, opts.tty);
    let mut ids: Vec<(StreamType, u32)> = Vec::new();
    let id_of = |ids: &[(StreamType, u32)], t: StreamType| ids.iter().find(|(k, _)| *k == t).map(|(_, id)| *id);
    let mut stdin = Vec::new();
    let mut started = false;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut out = Vec::new();
        while let Some((frame, used)) = codec.decode(&buf)? {
            buf.drain(..used);
            match frame {
                Frame::SynStream { stream_id, headers, .. } => {
                    if let Some(t) = StreamType::from_headers(&headers) {
                        ids.push((t, stream_id));
                    }
                    spdy::encode_syn_reply(stream_id, false, &Headers::new(), codec.compressor(), &mut out)?;
                }
                Frame::Ping { id } if Role::Server.should_echo_ping(id) => spdy::encode_ping(id, &mut out),
                Frame::Data { stream_id, fin, data } if Some(stream_id) == id_of(&ids, StreamType::Stdin) => {
                    stdin.extend_from_slice(&data);
                    if fin {
                        // "cat" that exits 3 after echoing its input.
                        finish(&ids, &stdin, 3, &mut out)?;
                    }
                }
                _ => {}
            }
        }
        if !started && ids.len() == expected.len() {
            started = true;
            if !opts.stdin {
                finish(&ids, b"hello\n", 0, &mut out)?;
            }
        }
        stream.write_all(&out)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn to_ws(m: OutgoingMessage) -> Message {
    match m {
        OutgoingMessage::Binary(b) => Message::binary(b),
        OutgoingMessage::Text(t) => Message::text(t),
    }
}

fn ws_session(
    mut ws: WebSocket<TcpStream>,
    proto: Subprotocol,
    opts: &ExecOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let send = |ws: &mut WebSocket<TcpStream>, ch: u8, data: &[u8]| -> Result<(), Box<dyn std::error::Error>> {
        ws.send(to_ws(k8s_ws::encode_data(proto, ch, data)?))?;
        Ok(())
    };
    // The Go server's "ready" message.
    send(&mut ws, channel::STDOUT, b"")?;
    let finish = |ws: &mut WebSocket<TcpStream>, out: &[u8], code: i32| -> Result<(), Box<dyn std::error::Error>> {
        send(ws, channel::STDOUT, out)?;
        let status = Status::from_exit_code(code, &format!("exit status {code}"));
        if let Some(payload) = status.error_channel_payload(proto.status_is_json()) {
            send(ws, channel::ERROR, &payload)?;
        }
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))?;
        Ok(())
    };
    if !opts.stdin {
        finish(&mut ws, b"hello\n", 0)?;
    }
    let mut stdin = Vec::new();
    loop {
        let data = match ws.read() {
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(_) => continue,
            // Close handshake done or peer gone.
            Err(_) => return Ok(()),
        };
        match k8s_ws::decode_client_message(proto, &data)? {
            Some(ClientMessage::Data { channel: channel::STDIN, payload }) => stdin.extend_from_slice(&payload),
            Some(ClientMessage::Close { channel: channel::STDIN }) => finish(&mut ws, &stdin, 3)?,
            _ => {}
        }
    }
}

fn finish(ids: &[(StreamType, u32)], stdout: &[u8], code: i32, out: &mut Vec<u8>) -> Result<(), spdy::SpdyError> {
    let mut last = 0;
    for (t, id) in ids {
        last = last.max(*id);
        match t {
            StreamType::Stdout => spdy::encode_data(*id, true, stdout, out)?,
            StreamType::Stderr => spdy::encode_data(*id, true, b"", out)?,
            _ => {}
        }
    }
    if let Some((_, id)) = ids.iter().find(|(t, _)| *t == StreamType::Error) {
        let status = Status::from_exit_code(code, &format!("exit status {code}"));
        let payload = status.error_channel_payload(true).unwrap_or_default();
        spdy::encode_data(*id, true, &payload, out)?;
    }
    spdy::encode_goaway(last, GoAwayStatus::OK, out)
}

fn start_fake(transport: Transport) -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Err(e) = serve_connection(conn, transport) {
                    eprintln!("fake server: {e}");
                }
            });
        }
    });
    Ok(port)
}

fn run_kubectl(
    binary: &Path,
    transport: Transport,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: &[u8],
) -> Result<(i32, String, String), Box<dyn std::error::Error>> {
    let port = start_fake(transport)?;
    let home = std::env::temp_dir().join(format!("hatch-wire-kubectl-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let kubeconfig = home.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{server: \"http://127.0.0.1:{port}\"}}\n  name: f\ncontexts:\n- context: {{cluster: f, user: u, namespace: default}}\n  name: f\ncurrent-context: f\nusers:\n- name: u\n  user: {{token: t}}\n"
        ),
    )?;
    let mut child = Command::new(binary)
        .args(args)
        .env("HOME", &home)
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBECACHEDIR", home.join("cache"))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin)?;
    }
    let output = child.wait_with_output()?;
    let _ = std::fs::remove_dir_all(&home);
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn kubectl_spdy_stdin_eof_and_exit_code_every_version() -> TestResult {
    // 1.27-1.29 speak SPDY directly; 1.30+ try WebSocket, get a 400 Status
    // and fall back to SPDY.
    for minor in 27..=33 {
        let Some(bin) = kubectl(&format!("1.{minor}")) else { continue };
        let (code, out, err) = run_kubectl(&bin, Transport::Spdy, &[], &["exec", "-i", "foo", "--", "cat"], b"abc\n")?;
        assert_eq!(out, "abc\n", "1.{minor} stderr: {err}");
        assert_eq!(code, 3, "1.{minor} stderr: {err}");
        assert!(err.contains("command terminated with exit code 3"), "1.{minor} stderr: {err}");
    }
    Ok(())
}

#[test]
fn kubectl_1_33_falls_back_to_spdy_and_succeeds() -> TestResult {
    let Some(bin) = kubectl("1.33") else { return Ok(()) };
    let (code, out, err) = run_kubectl(&bin, Transport::Spdy, &[], &["exec", "foo", "--", "ls", "-l", "/"], b"")?;
    assert_eq!((code, out.as_str()), (0, "hello\n"), "stderr: {err}");
    Ok(())
}

#[test]
fn kubectl_websocket_v5_close_and_exit_code() -> TestResult {
    // 1.29 needs the opt-in; 1.30+ use WebSocket by default.
    for minor in 29..=33 {
        let Some(bin) = kubectl(&format!("1.{minor}")) else { continue };
        let env = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true")];
        let (code, out, err) =
            run_kubectl(&bin, Transport::WebSocket, &env, &["exec", "-i", "foo", "--", "cat"], b"abc\n")?;
        assert_eq!(out, "abc\n", "1.{minor} stderr: {err}");
        assert_eq!(code, 3, "1.{minor} stderr: {err}");
        assert!(err.contains("command terminated with exit code 3"), "1.{minor} stderr: {err}");
        let (code, out, err) = run_kubectl(&bin, Transport::WebSocket, &env, &["exec", "foo", "--", "ls"], b"")?;
        assert_eq!((code, out.as_str()), (0, "hello\n"), "1.{minor} stderr: {err}");
    }
    // What kubectl did is what our client-side parser says it should do.
    let exit3 = Status::from_exit_code(3, "x").to_json();
    assert_eq!(ExecOutcome::from_error_stream(&exit3, true).exit_code(), 3);
    Ok(())
}
