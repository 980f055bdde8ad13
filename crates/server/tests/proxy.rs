//! The exec proxy against a fake node on mutual TLS: a 101 is relayed and the streams spliced; any
//! other answer is relayed with `Connection: close` and the backend connection is dropped, never
//! reused for anything else (CVE-2018-1002105).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use hatch_server::contract::{ContainerReport, NodeStatusReport, PodReport};
use hatch_server::{Server, ServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Fixture {
    server: Arc<Server>,
    addr: std::net::SocketAddr,
    backend: TcpListener,
    backend_tls: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
    _stop: tokio_util::sync::DropGuard,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::open(ServerConfig::new(dir.path().to_path_buf())).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.clone().serve(listener, stop.clone()));

    // The fake node: a certificate from the cluster CA for its name, and client certificates required.
    let issued = server.pki.issue("node:fake", &["fake".into(), "127.0.0.1".into()], true, true).unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.pki.ca_der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), hatch_server::tls::provider())
            .build()
            .unwrap();
    let backend_tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(hatch_server::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    server.node_status("fake", fake_node_report(&backend)).await.unwrap();
    Fixture { server, addr, backend, backend_tls, _dir: dir, _stop: stop.drop_guard() }
}

/// Node `fake` is Ready, serves exec on `listener`, and runs pod `default/p` (container `p`).
fn fake_node_report(listener: &TcpListener) -> NodeStatusReport {
    NodeStatusReport {
        ready: true,
        streaming_address: listener.local_addr().unwrap().to_string(),
        pods: vec![PodReport {
            namespace: "default".into(),
            name: "p".into(),
            mirror: true,
            containers: vec![ContainerReport { name: "p".into(), state: "running".into(), ..Default::default() }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Reads an HTTP head (through the blank line).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "connection closed inside a head: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A client connection to the server, trusting the cluster CA.
async fn client(f: &Fixture) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.server.pki.ca_der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(hatch_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

fn exec_request(token: &str) -> String {
    format!(
        "POST /api/v1/namespaces/default/pods/p/exec?command=ls&container=p&stdout=true HTTP/1.1\r\n\
         Host: server\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nHatch-Audit-Id: forged\r\n\r\n"
    )
}

/// Accepts the proxied connection and checks what arrived: only the server, only the exec.
async fn accept_backend(f: &Fixture) -> (tokio_rustls::server::TlsStream<TcpStream>, String) {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), f.backend.accept()).await.unwrap().unwrap();
    let mut tls = tokio_rustls::TlsAcceptor::from(f.backend_tls.clone()).accept(tcp).await.unwrap();
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(hatch_server::pki::common_name(peer.as_ref()).as_deref(), Some("hatch-server"));
    let head = read_head(&mut tls).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("POST /exec/default/p/p?command=ls&container=p&stdout=true HTTP/1.1\r\n"), "{head}");
    assert!(!lower.contains("authorization:"), "credentials reached the node: {head}");
    assert!(lower.contains("upgrade: spdy/3.1") && lower.contains("x-stream-protocol-version: v4.channel.k8s.io"));
    let audit_id = lower.lines().find_map(|l| l.strip_prefix("hatch-audit-id: ")).unwrap().trim().to_string();
    assert_ne!(audit_id, "forged", "the client chose the audit id");
    (tls, audit_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_relayed_and_the_backend_connection_dropped() {
    let f = fixture().await;
    let mut c = client(&f).await;
    c.write_all(exec_request(f.server.admin_token()).as_bytes()).await.unwrap();

    let (mut backend, audit_id) = accept_backend(&f).await;
    let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"container p is shy","reason":"BadRequest","code":400}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    backend.write_all(answer.as_bytes()).await.unwrap();
    backend.flush().await.unwrap();

    // The client gets the node's answer, on a connection that then closes.
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().ok();
    assert!(String::from_utf8_lossy(&rest).contains("container p is shy"));

    // The backend connection is closed; nothing else is ever sent on it.
    let mut after = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), backend.read_to_end(&mut after)).await;
    assert!(read.is_ok(), "the server kept the refused backend connection open");
    assert!(after.is_empty(), "the server reused the backend connection: {}", String::from_utf8_lossy(&after));

    // Audited: the start, and an end that says what the node answered.
    let log = std::fs::read_to_string(f.server.audit.path()).unwrap();
    let end: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["auditID"] == audit_id.as_str() && r["stage"] == "end")
        .unwrap();
    assert!(end["error"].as_str().unwrap().contains("node answered 400"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_relayed_and_spliced_both_ways() {
    let f = fixture().await;
    let mut c = client(&f).await;
    c.write_all(exec_request(f.server.admin_token()).as_bytes()).await.unwrap();

    let (mut backend, _) = accept_backend(&f).await;
    backend
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
              X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n",
        )
        .await
        .unwrap();
    backend.flush().await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{head}");

    // Raw bytes both ways, untouched.
    c.write_all(b"\x80\x03\x00\x01client-frame").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), backend.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"\x80\x03\x00\x01client-frame");
    backend.write_all(b"node-frame").await.unwrap();
    backend.flush().await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"node-frame");

    // The node ends the session: the client sees the end.
    backend.shutdown().await.unwrap();
    drop(backend);
    let mut rest = Vec::new();
    assert!(tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_fails_fast_with_a_status() {
    let f = fixture().await;
    // The node's address now has nobody listening.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let report = NodeStatusReport {
        ready: true,
        streaming_address: gone.to_string(),
        pods: vec![PodReport {
            namespace: "default".into(),
            name: "p".into(),
            mirror: true,
            containers: vec![ContainerReport { name: "p".into(), state: "running".into(), ..Default::default() }],
            ..Default::default()
        }],
        ..Default::default()
    };
    f.server.node_status("fake", report).await.unwrap();
    let mut c = client(&f).await;
    let started = std::time::Instant::now();
    c.write_all(exec_request(f.server.admin_token()).as_bytes()).await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().ok();
    let body = String::from_utf8_lossy(&rest);
    assert!(body.contains(r#""kind":"Status""#) && body.contains("error dialing node"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Points node `fake` at a new fake node that answers every exec with a 400 naming the connection
/// it came on (`conn-<n>`, counted from 0), and closes connection `close_unused` once accepted.
async fn serve_refusals(f: &Fixture, close_unused: usize) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    f.server.node_status("fake", fake_node_report(&listener)).await.unwrap();
    let tls = f.backend_tls.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else { return };
                if n == close_unused {
                    return;
                }
                let head = read_head(&mut conn).await;
                assert!(head.starts_with("POST /exec/default/p/p?"), "{head}");
                let body = format!(
                    r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"conn-{n}","code":400}}"#
                );
                let answer = format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.flush().await;
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest).await;
                assert!(rest.is_empty(), "a second request on one connection");
            });
        }
    });
}

/// Runs an exec that the fake node refuses; returns the connection it was served on.
async fn refused_on(f: &Fixture) -> usize {
    let mut c = client(f).await;
    c.write_all(exec_request(f.server.admin_token()).as_bytes()).await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().ok();
    let body = String::from_utf8_lossy(&rest).to_string();
    let n = body.split("conn-").nth(1).and_then(|r| r.split('"').next()).unwrap_or_else(|| panic!("{body}"));
    n.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_dialled_connections_carry_one_exec_and_dead_ones_are_replaced() {
    let f = fixture().await;
    // Connection 2, dialled ahead for the third exec, is closed by the node before that exec comes.
    serve_refusals(&f, 2).await;
    assert_eq!(refused_on(&f).await, 0, "the first exec dials");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused_on(&f).await, 1, "the second exec takes the connection dialled ahead");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(refused_on(&f).await > 2, "the third exec does not fail on the dead connection");
}
