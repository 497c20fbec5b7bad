//! `GET /v1/ingest` (SPEC §3): the device handshake. Handshake rate per IP
//! first (before any token work), then the device token, then the upgrade;
//! the connection itself runs in [`crate::ingest::connection`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{authenticate, handshake_rate_refusal, ApiError, AppState};
use crate::auth::Role;
use crate::ingest::connection;
use crate::ws;

#[derive(Deserialize)]
pub struct IngestQuery {
    access_token: Option<String>,
}

pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<IngestQuery>,
    ws: Result<ws::Upgrade, ws::Rejection>,
) -> Response {
    if let Some(refused) = handshake_rate_refusal(&state, peer) {
        return refused;
    }
    let identity = match authenticate(
        &state.auth,
        &headers,
        q.access_token.as_deref(),
        Role::Device,
    ) {
        Ok(identity) => identity,
        Err(e) => {
            crate::events::HandshakeRejected { reason: "auth" }.emit();
            return e.into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::invalid(format!("not a WebSocket upgrade: {rejection}"))
                .into_response()
        }
    };
    let max_frame = state.config.limits.max_frame_bytes;
    let ws = ws.max_message(max_frame);
    let ingest = state.ingest.clone();
    ws::on_upgrade(ws, &state.edge, move |socket| {
        connection::run(socket, identity.sub.into(), ingest)
    })
}
