//! Handshake authentication (SPEC §3, §10): 401 for a missing or bad token,
//! 403 for a valid token with another role, 429 past the per-IP handshake
//! rate, and never an upgrade without a device token.

use sensorgate::auth::{Authenticator, Role};
use sensorgate_test_kit::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

/// Attempts a WebSocket handshake on `/v1/ingest{query}` with an optional
/// `Authorization` header value. `Ok(ws)` on upgrade, else the HTTP status
/// and JSON body the server answered with.
async fn handshake(
    d: &TestDaemon,
    query: &str,
    authorization: Option<&str>,
) -> Result<Ws, (u16, Value)> {
    let mut req = format!("ws://{}/v1/ingest{query}", d.addr())
        .into_client_request()
        .unwrap();
    if let Some(a) = authorization {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("JSON error body, got {body:?}"));
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("unexpected handshake error {e}"),
    }
}

async fn refused(d: &TestDaemon, query: &str, authorization: Option<&str>) -> (u16, Value) {
    match handshake(d, query, authorization).await {
        Ok(_) => panic!("upgraded without a good device token ({query}, {authorization:?})"),
        Err(r) => r,
    }
}

fn assert_unauthorized((status, body): (u16, Value)) -> String {
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized", "{body}");
    body["detail"].as_str().expect("a detail").to_string()
}

fn assert_forbidden((status, body): (u16, Value)) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    assert!(body["detail"].is_string(), "{body}");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn device_claims(sub: &str) -> Value {
    json!({"sub": sub, "role": "device", "exp": unix_secs() + 3600})
}

#[tokio::test]
async fn no_token_is_401_with_json_body_and_no_upgrade() {
    let d = TestDaemon::start().await;
    let detail = assert_unauthorized(refused(&d, "", None).await);
    assert!(detail.contains("token"), "{detail}");
    // A plain (non-upgrade) request gets the same answer.
    let resp = reqwest::get(d.http("/v1/ingest")).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn malformed_authorization_is_401() {
    let d = TestDaemon::start().await;
    for auth in [
        "Bearer ",
        "Bearer not.a.jwt",
        "Bearer garbage",
        "Basic ZDE6cHc=",
    ] {
        assert_unauthorized(refused(&d, "", Some(auth)).await);
    }
    assert_unauthorized(refused(&d, "?access_token=", None).await);
    assert_unauthorized(refused(&d, "?access_token=abc.def.ghi", None).await);
}

#[tokio::test]
async fn token_in_authorization_header_upgrades() {
    let d = TestDaemon::start().await;
    let token = d.token(Role::Device, "d1");
    let mut ws = handshake(&d, "", Some(&bearer(&token))).await.unwrap();
    let welcome = recv_frame(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["device"], "d1");
}

#[tokio::test]
async fn token_in_access_token_query_upgrades() {
    let d = TestDaemon::start().await;
    let token = d.token(Role::Device, "d7");
    let mut ws = handshake(&d, &format!("?access_token={token}"), None)
        .await
        .unwrap();
    let welcome = recv_frame(&mut ws).await;
    assert_eq!(welcome["device"], "d7");
    send(&mut ws, &batch(Some(1), "t", 1)).await;
    assert_eq!(recv_frame(&mut ws).await["type"], "ack");
    // The device is the token's `sub`, whatever the payload says.
    let stored = d.stored("#").await;
    assert_eq!(stored[0]["device"], "d7");
}

#[tokio::test]
async fn device_field_in_payload_cannot_speak_for_another_device() {
    let d = TestDaemon::start().await;
    let (mut ws, _) = d.device("d1").await;
    let frame = json!({"seq": 1, "device": "d2", "readings": [
        {"sensor": "t", "ts": 1, "value": 1, "device": "d2"}
    ]});
    send(&mut ws, &frame).await;
    assert_eq!(recv_frame(&mut ws).await["type"], "ack");
    assert!(d.stored("d2/#").await.is_empty());
    assert_eq!(d.stored("d1/t").await.len(), 1);
}

#[tokio::test]
async fn token_signed_with_another_secret_is_401() {
    let d = TestDaemon::start().await;
    let other = Authenticator::new("not-the-secret").mint(Role::Device, "d1", None, None);
    let detail = assert_unauthorized(refused(&d, "", Some(&bearer(&other))).await);
    assert!(detail.contains("signature"), "{detail}");
    let q = format!("?access_token={other}");
    assert_unauthorized(refused(&d, &q, None).await);
}

#[tokio::test]
async fn token_with_another_algorithm_is_401() {
    let d = TestDaemon::start().await;
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &device_claims("d1"),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_unauthorized(refused(&d, "", Some(&bearer(&t))).await);
}

#[tokio::test]
async fn expired_token_is_401() {
    let d = TestDaemon::start().await;
    let t = jwt(
        &json!({"sub": "d1", "role": "device", "exp": unix_secs() - 10}),
        SECRET,
    );
    let detail = assert_unauthorized(refused(&d, "", Some(&bearer(&t))).await);
    assert!(detail.contains("expired"), "{detail}");
}

#[tokio::test]
async fn token_before_nbf_is_401_and_exp_nbf_are_optional() {
    let d = TestDaemon::start().await;
    let early = jwt(
        &json!({"sub": "d1", "role": "device", "nbf": unix_secs() + 600}),
        SECRET,
    );
    assert_unauthorized(refused(&d, "", Some(&bearer(&early))).await);
    // Neither exp nor nbf: accepted (they are enforced only when present).
    let bare = jwt(&json!({"sub": "d1", "role": "device"}), SECRET);
    let mut ws = handshake(&d, "", Some(&bearer(&bare))).await.unwrap();
    assert_eq!(recv_frame(&mut ws).await["type"], "welcome");
}

#[tokio::test]
async fn token_without_role_is_401() {
    let d = TestDaemon::start().await;
    let t = jwt(&json!({"sub": "d1", "exp": unix_secs() + 3600}), SECRET);
    assert_unauthorized(refused(&d, "", Some(&bearer(&t))).await);
}

#[tokio::test]
async fn token_without_sub_is_401() {
    let d = TestDaemon::start().await;
    for claims in [
        json!({"role": "device", "exp": unix_secs() + 3600}),
        json!({"sub": "", "role": "device"}),
    ] {
        let t = jwt(&claims, SECRET);
        assert_unauthorized(refused(&d, "", Some(&bearer(&t))).await);
    }
}

#[tokio::test]
async fn device_sub_breaking_the_name_rule_is_401() {
    let d = TestDaemon::start().await;
    let too_long = "d".repeat(65);
    for sub in ["a/b", "d+", "#", "d 1", too_long.as_str()] {
        let t = jwt(&device_claims(sub), SECRET);
        assert_unauthorized(refused(&d, "", Some(&bearer(&t))).await);
    }
}

#[tokio::test]
async fn subscriber_token_on_ingest_is_403() {
    let d = TestDaemon::start().await;
    let t = d.token(Role::Subscriber, "web");
    assert_forbidden(refused(&d, "", Some(&bearer(&t))).await);
    assert_forbidden(refused(&d, &format!("?access_token={t}"), None).await);
    // An unknown role is a wrong role too.
    let admin = jwt(&json!({"sub": "d1", "role": "admin"}), SECRET);
    assert_forbidden(refused(&d, "", Some(&bearer(&admin))).await);
}

#[tokio::test]
async fn device_token_on_readings_is_403() {
    let d = TestDaemon::start().await;
    let client = reqwest::Client::new();
    let device = d.token(Role::Device, "d1");
    let resp = client
        .get(d.http("/v1/readings"))
        .bearer_auth(&device)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    let resp = client
        .get(d.http("/v1/readings"))
        .query(&[("access_token", &device)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // No token: 401; a subscriber token: 200.
    let resp = client.get(d.http("/v1/readings")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let sub = d.token(Role::Subscriber, "web");
    let resp = client
        .get(d.http("/v1/readings"))
        .query(&[("access_token", &sub)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn handshakes_over_the_per_ip_limit_are_429_before_token_checks() {
    let d = TestDaemon::start_with(|c| c.limits.handshakes_per_ip = 3).await;
    for _ in 0..3 {
        assert_unauthorized(refused(&d, "", Some("Bearer bad")).await);
    }
    // Past the limit even a bad token gets 429, not 401: no token work.
    let (status, body) = refused(&d, "", Some("Bearer bad")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0, "{body}");
    // ...and so does a good one.
    let good = bearer(&d.token(Role::Device, "d1"));
    let (status, _) = refused(&d, "", Some(&good)).await;
    assert_eq!(status, 429);
    // The budget refills (3 per second).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut ws = handshake(&d, "", Some(&good)).await.unwrap();
    assert_eq!(recv_frame(&mut ws).await["type"], "welcome");
}
