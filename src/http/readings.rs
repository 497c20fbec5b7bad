//! `GET /v1/readings?topic=F&since=ID&limit=N` (SPEC §5, §10): stored
//! readings as JSON pages.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{authenticate_subscriber, ApiError, AppState};
use crate::fanout::TopicFilter;

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

#[derive(Deserialize)]
pub struct ReadingsQuery {
    topic: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    access_token: Option<String>,
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ReadingsQuery>,
) -> Response {
    match page(state, headers, q).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn page(state: AppState, headers: HeaderMap, q: ReadingsQuery) -> Result<Response, ApiError> {
    let identity = authenticate_subscriber(&state, &headers, q.access_token.as_deref())?;
    let filter = TopicFilter::parse(q.topic.as_deref().unwrap_or("#"))
        .map_err(|e| ApiError::invalid(format!("topic: {e}")))?;
    if let Some(allowed) = identity.as_ref().and_then(|i| i.topics.as_ref()) {
        let permitted = allowed
            .iter()
            .filter_map(|a| TopicFilter::parse(a).ok())
            .any(|a| a.covers(&filter));
        if !permitted {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                format!("topic {filter} is outside this token's topics"),
            ));
        }
    }
    let since = parse_num(q.since.as_deref(), "since", 0)?;
    let limit = parse_num(q.limit.as_deref(), "limit", DEFAULT_LIMIT as u64)? as usize;
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!("limit: must be 1..={MAX_LIMIT}")));
    }
    let store = state.store.clone();
    let items = tokio::task::spawn_blocking(move || {
        store.read_since(since, limit, |r| filter.matches(&r.device, &r.sensor))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let next = items.last().map_or(since, |r| r.id);
    Ok(Json(json!({"items": items, "next": next})).into_response())
}

fn parse_num(v: Option<&str>, key: &str, default: u64) -> Result<u64, ApiError> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::invalid(format!("{key}: not a non-negative integer: {s:?}"))),
    }
}
