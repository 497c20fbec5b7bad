//! WebSocket clients of the daemon: devices on `/v1/ingest` (MessagePack
//! batches, acks, errors, closes) and subscribers on `/v1/stream` (JSON or
//! MessagePack readings), plus the frames and tokens they send.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sensorgate::auth::{Authenticator, Role};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::{Ws, SECRET};

/// `v` as named MessagePack, the encoding devices send.
pub fn mp(v: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap()
}

/// A batch of `n` numeric readings on `sensor`.
pub fn batch(seq: Option<u64>, sensor: &str, n: usize) -> Value {
    let readings: Vec<Value> = (0..n)
        .map(|i| json!({"sensor": sensor, "ts": 1_763_800_000_000_i64 + i as i64, "value": i as f64 + 0.5, "unit": "C"}))
        .collect();
    match seq {
        Some(s) => json!({"seq": s, "readings": readings}),
        None => json!({"readings": readings}),
    }
}

pub async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Binary(mp(v).into())).await.unwrap();
}

/// Next server frame, decoded from MessagePack to JSON (pings skipped).
pub async fn recv_frame(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10s")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Binary(b) => {
                return rmp_serde::from_slice(&b).expect("server frames are MessagePack")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Waits for the server to close the socket; returns the close code.
pub async fn recv_close(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("close within 10s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends raw bytes as one binary frame (for hand-built or broken MessagePack).
pub async fn send_bytes(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// Next server frame, which must be an `error` with `code`; returns it.
pub async fn recv_error(ws: &mut Ws, code: &str) -> Value {
    let e = recv_frame(ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], code, "{e}");
    assert!(e["detail"].is_string(), "{e}");
    e
}

/// A device token for `sub` signed with the test secret, with custom claims.
pub fn jwt(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A WebSocket client on `/v1/ingest` of the daemon at `host:port` with a
/// device token for `sub` signed with the test secret.
pub async fn connect_device(base: &str, sub: &str) -> Ws {
    connect_ingest(base, &device_token(sub))
        .await
        .expect("device connects")
}

/// A device token for `sub` signed with the tests' [`SECRET`], no expiry.
pub fn device_token(sub: &str) -> String {
    Authenticator::new(SECRET).mint(Role::Device, sub, None, None)
}

/// Opens `/v1/ingest` of the daemon at `host:port` with `token` as bearer;
/// the handshake's error when it is refused.
pub async fn connect_ingest(
    base: &str,
    token: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{base}/v1/ingest")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// Opens `/v1/stream?{query}` with an optional bearer token, subprotocol
/// offer and `Origin`; returns the socket and the handshake response.
pub async fn connect_stream_with(
    addr: std::net::SocketAddr,
    query: &str,
    token: Option<&str>,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{addr}/v1/stream?{query}")
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    if let Some(t) = token {
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(p) = protocol {
        h.insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        h.insert("origin", o.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await
}

/// Next subscriber message: JSON text or MessagePack binary, as JSON.
pub async fn recv_msg(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message within 20s")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("text frames are JSON"),
            Message::Binary(b) => {
                return rmp_serde::from_slice(&b).expect("binary frames are MessagePack")
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Sends a JSON op as a text frame.
pub async fn send_op(ws: &mut Ws, op: &Value) {
    ws.send(Message::Text(op.to_string().into())).await.unwrap();
}

/// Reads `readings` frames until `n` items arrived; any other message fails.
pub async fn recv_items(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = recv_msg(ws).await;
        assert_eq!(m["type"], "readings", "{m}");
        out.extend(m["items"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(out.len(), n, "more items than expected");
    out
}

/// The ids of JSON items.
pub fn ids_of(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["id"].as_u64().unwrap()).collect()
}

/// Sends `batches` acked batches of `n` readings on `sensor` from an
/// already connected device, starting at `first_seq`; returns the next seq.
pub async fn publish_acked(
    ws: &mut Ws,
    first_seq: u64,
    batches: u64,
    sensor: &str,
    n: usize,
) -> u64 {
    for seq in first_seq..first_seq + batches {
        send(ws, &batch(Some(seq), sensor, n)).await;
        let ack = recv_frame(ws).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    first_seq + batches
}
