//! The HTTP surface (SPEC §5): routing, handshake checks, JSON errors, and
//! the small read-only routes. The two WebSocket handshakes sit side by side
//! ([`ingest`], [`stream`]) and hand the upgraded socket to their loop
//! ([`crate::ingest::connection`], [`crate::fanout::session`]), tracked on
//! the `edge` tracker ([`crate::ws::on_upgrade`]).

mod dashboard;
mod devices;
pub mod gate;
mod ingest;
mod readings;
pub mod serve;
mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::task::TaskTracker;

use crate::auth::{AuthError, Authenticator, Identity, Role};
use crate::config::Config;
use crate::devices::DeviceBook;
use crate::ingest::{HandshakeLimiter, Ingest};
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Everything the routes need, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub store: Arc<Store>,
    pub ingest: Arc<Ingest>,
    pub handshakes: HandshakeLimiter,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The MQTT bridge state, `None` when the bridge is off.
    pub bridge: Option<Arc<crate::bridge::BridgeStatus>>,
    /// The fan-out hub behind `/v1/stream`.
    pub hub: Arc<crate::fanout::Hub>,
    /// The known devices behind `/v1/devices`.
    pub devices: Arc<DeviceBook>,
    pub shutdown: Shutdown,
    /// The daemon's `edge` tracker: every upgraded WebSocket holds a token.
    pub edge: TaskTracker,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/ingest", get(ingest::get))
        .route("/v1/readings", get(readings::get))
        .route("/v1/stream", get(stream::get))
        .route("/v1/devices", get(devices::get))
        .merge(dashboard::router())
        .with_state(state)
}

/// A JSON error body: `{"error": code, "detail": ...}` plus extra fields.
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({"error": code, "detail": detail.into()}),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(d) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", d)
            }
            AuthError::Forbidden(d) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", d),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The token of a request: `Authorization: Bearer` first, then the
/// `access_token` query parameter (for clients that cannot set headers).
pub fn bearer_token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or(query_token)
}

/// Authenticates a request for `role`: 401 when the token is missing or bad,
/// 403 when it is valid but for another role.
pub fn authenticate(
    auth: &Authenticator,
    headers: &HeaderMap,
    query_token: Option<&str>,
    role: Role,
) -> Result<Identity, ApiError> {
    let token = bearer_token(headers, query_token).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing token: send Authorization: Bearer <jwt> or ?access_token=<jwt>",
        )
    })?;
    Ok(auth.verify(token, role)?)
}

/// Subscriber routes: a subscriber token, or none with
/// `auth.public_subscribers` (then `None`, meaning no topic restriction).
pub fn authenticate_subscriber(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Identity>, ApiError> {
    if state.config.auth.public_subscribers && bearer_token(headers, query_token).is_none() {
        return Ok(None);
    }
    authenticate(&state.auth, headers, query_token, Role::Subscriber).map(Some)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    // The router only serves once the store is open and the listener is up;
    // a store that refuses writes (full disk, failed flush) is not ready.
    let refusal = state.store.refusal();
    let status = if refusal.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Json(json!({
        "status": if refusal.is_some() { "not_ready" } else { "ready" },
        "store": {
            "last_id": state.store.last_id(),
            "retained_bytes": state.store.retained_bytes(),
            "writable": refusal.is_none(),
            "reason": refusal,
        },
        "devices_connected": state.ingest.registry.connected(),
        "mqtt": state.bridge.as_ref().map(|b| b.to_json(state.store.last_id())),
    }));
    (status, body).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// The per-IP handshake rate (SPEC §3, `limits.handshakes_per_ip`) of the
/// WebSocket routes, checked before any token work: past it, 429 with
/// `retry_after_ms` and `Retry-After`. `Some` is the refusal to answer.
pub fn handshake_rate_refusal(state: &AppState, peer: SocketAddr) -> Option<Response> {
    let Err(retry) = state.handshakes.check(peer.ip()) else {
        return None;
    };
    crate::events::HandshakeRejected {
        reason: "rate_limited",
    }
    .emit();
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(
            json!({"error": "rate_limited", "detail": "too many handshakes from this address",
                    "retry_after_ms": retry.as_millis_ceil()}),
        ),
    )
        .into_response();
    let secs = retry.as_millis_ceil().div_ceil(1000).to_string();
    if let Ok(v) = secs.parse() {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Some(resp)
}
