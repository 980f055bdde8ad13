//! `StreamingServer::serve` over mutual TLS, as the API server reaches a remote node: a CA, a
//! node certificate, a client certificate; a client without one gets nothing.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use hatch_wire::k8s_ws::{self, Subprotocol, channel};
use hatch_wire::status::ExecOutcome;

type Leaf = (CertificateDer<'static>, PrivateKeyDer<'static>);

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, sans: Vec<String>) -> Result<Leaf, Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))))
}

struct Pki {
    ca: CertificateDer<'static>,
    node: Leaf,
    client: Leaf,
}

fn pki() -> Result<Pki, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, "hatch test ca");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    Ok(Pki {
        ca: ca.der().clone(),
        node: leaf(&ca, "node:test", vec!["127.0.0.1".into()])?,
        client: leaf(&ca, "hatch-server", vec![])?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_mutual_tls() -> TestResult {
    with_fixture(async |fx| {
        let pki = pki()?;
        // The tree uses ring only; rustls deprecates it for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone())?;
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![pki.node.0.clone()], pki.node.1.clone_key())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        tokio::spawn(fx.server.clone().serve(listener, Some(Arc::new(server_config)), shutdown.clone()));

        let client_config = |with_cert: bool| -> Result<rustls::ClientConfig, Error> {
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone());
            Ok(if with_cert {
                builder.with_client_auth_cert(vec![pki.client.0.clone()], pki.client.1.clone_key())?
            } else {
                builder.with_no_client_auth()
            })
        };
        let exec = async |with_cert: bool| -> Result<(Vec<u8>, Vec<u8>), Error> {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(with_cert)?));
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
            let tls = connector.connect(name, tcp).await?;
            let path = exec_path(MAIN, &["echo", "over-tls"], &["stdout"]);
            let mut req = format!("wss://{addr}{path}").into_client_request()?;
            req.headers_mut().insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse()?);
            let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await?;
            let (mut stdout, mut error) = (Vec::new(), Vec::new());
            while let Some(m) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
                match m? {
                    Message::Binary(b) => match k8s_ws::decode_server_message(Subprotocol::V5, &b)? {
                        Some(m) if m.channel == channel::STDOUT => stdout.extend_from_slice(&m.payload),
                        Some(m) if m.channel == channel::ERROR => error.extend_from_slice(&m.payload),
                        _ => {}
                    },
                    Message::Close(_) => {
                        let _ = ws.close(None).await;
                        break;
                    }
                    _ => {}
                }
            }
            Ok((stdout, error))
        };

        let (stdout, error) = exec(true).await?;
        assert_eq!(stdout, b"over-tls\n");
        assert_eq!(ExecOutcome::from_error_stream(&error, true), ExecOutcome::Exit(0));
        assert!(exec(false).await.is_err(), "a client without a certificate was served");
        shutdown.cancel();
        Ok(())
    })
    .await
}
