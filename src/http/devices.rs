//! `GET /v1/devices` (SPEC §5): every known device with `connected` (from
//! the ingest registry), `last_seen` (Unix ms, server clock, of its newest
//! stored reading) and `sensors`. The book lives in memory
//! ([`crate::devices::DeviceBook`]): updated by every commit, seeded at
//! start-up from the newest stored readings. A token's `topics` claim
//! limits which devices and sensors it sees.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{authenticate_subscriber, AppState};
use crate::fanout::hub::Pattern;
use crate::fanout::TopicFilter;

#[derive(Deserialize)]
pub struct DevicesQuery {
    access_token: Option<String>,
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DevicesQuery>,
) -> Response {
    let identity = match authenticate_subscriber(&state, &headers, q.access_token.as_deref()) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let connected = state.ingest.registry.connected_devices();
    let mut devices = state.devices.list(&connected);
    if let Some(allowed) = identity.and_then(|i| i.topics) {
        let allowed: Vec<TopicFilter> = allowed
            .iter()
            .filter_map(|s| TopicFilter::parse(s).ok())
            .collect();
        devices.retain_mut(|d| {
            d.sensors
                .retain(|s| allowed.iter().any(|f| f.matches(&d.device, s)));
            allowed.iter().any(|f| match Pattern::of(f) {
                Pattern::Pair(dev, _) => dev.as_deref().is_none_or(|x| x == d.device),
                Pattern::Never => false,
            })
        });
    }
    Json(devices).into_response()
}
