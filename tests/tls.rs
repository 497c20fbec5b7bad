//! TLS termination (SPEC §5): with `server.tls_cert`/`server.tls_key` set, the
//! daemon speaks `https://` and `wss://` only.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use sensorgate_test_kit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn connector(cert_der: CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_serves_https_and_wss() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let d = TestDaemon::start_with(|c| {
        c.server.tls_cert = Some(cert_path);
        c.server.tls_key = Some(key_path);
    })
    .await;
    let tls = connector(cert.cert.der().clone());
    let name = ServerName::try_from("localhost").unwrap();

    // https: a raw request over the TLS stream.
    let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let mut stream = tls.connect(name.clone(), tcp).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // wss: a device connects, gets its welcome, and its batch is acked.
    let tcp = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    let mut req = format!("wss://localhost:{}/v1/ingest", d.addr().port())
        .into_client_request()
        .unwrap();
    let token = d.token(sensorgate::auth::Role::Device, "d1");
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let welcome = recv_frame_any(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    send_any(&mut ws, &batch(Some(1), "temp", 2)).await;
    assert_eq!(recv_frame_any(&mut ws).await["type"], "ack");

    // Plain HTTP on the TLS port gets nowhere.
    assert!(reqwest::get(d.http("/healthz")).await.is_err());
}

#[tokio::test]
async fn missing_tls_key_fails_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.tls_cert = Some(dir.path().join("nope.pem"));
    config.server.tls_key = Some(dir.path().join("nope.key"));
    let err = match sensorgate::Daemon::start(Arc::new(config)).await {
        Ok(_) => panic!("daemon started without its certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("server.tls_cert"), "{err}");
}

async fn send_any<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, v: &serde_json::Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        mp(v).into(),
    ))
    .await
    .unwrap();
}

async fn recv_frame_any<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    loop {
        match ws.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Binary(b) => {
                return rmp_serde::from_slice(&b).unwrap()
            }
            _ => continue,
        }
    }
}
