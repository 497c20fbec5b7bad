//! `GET /v1/readings?topic=F&since=ID&limit=N` (SPEC §5, §10): stored
//! readings as JSON pages.
//!
//! One request does bounded work whatever its filter matches: the store
//! scan touches at most [`ScanBound::REQUEST`] and stops when the client
//! goes away (hyper drops this handler's future, which flags the scan).
//! A page the bound cut short with no match carries `next` = the last id
//! examined, so the client continues past the scanned range (see
//! docs/protocol.md).

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{authenticate_subscriber, ApiError, AppState};
use crate::fanout::TopicFilter;
use crate::store::{panic_message, Page, ScanBound, Store, StoreError};

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
    let gone = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let flag = gone.0.clone();
    let page = tokio::task::spawn_blocking(move || {
        store.read_page(
            since,
            limit,
            ScanBound::REQUEST,
            &|| flag.load(Ordering::Relaxed),
            |r| filter.matches(&r.device, &r.sensor),
        )
    })
    .await
    .map_err(|e| match e.try_into_panic() {
        // sled's deserializer panics on some damaged pages.
        Ok(panic) => damaged(&state.store, panic_message(&*panic)),
        Err(e) => ApiError::internal(e.to_string()),
    })?
    .map_err(|e| read_failed(&state.store, e))?;
    drop(gone);
    let next = next_cursor(since, &page);
    Ok(Json(json!({"items": page.items, "next": next})).into_response())
}

/// A failed read. Damage (a page sled cannot read, a segment that does not
/// decode or that the index lists and sled lost, a blob file gone) says
/// what to do about it.
fn read_failed(store: &Store, e: StoreError) -> ApiError {
    let unreadable = matches!(&e, StoreError::Sled(sled::Error::Io(_)));
    if e.is_damage() || unreadable {
        return damaged(store, e);
    }
    ApiError::internal(e.to_string())
}

/// The answer to a read that reached damage, logged too: the operator may
/// never see this response, and start-up only checks the newest readings.
fn damaged(store: &Store, e: impl std::fmt::Display) -> ApiError {
    let detail = format!(
        "storage.path {}: the store is damaged where this read reached ({e}); inspect it with `sensorgate check-store` (daemon stopped)",
        store.path().display()
    );
    tracing::error!("{detail}");
    ApiError::internal(detail)
}

/// SPEC §10: the last item's id, or `since` when the page is empty and
/// nothing is left to scan. An empty page cut short by the scan bound
/// answers the last id examined instead, so that following `next` makes
/// progress (an empty page with `next > since` means "keep going").
fn next_cursor(since: u64, page: &Page) -> u64 {
    match page.items.last() {
        Some(r) => r.id,
        None if page.reached_end => since,
        None => page.scanned_to.max(since),
    }
}

/// Flags the blocking scan to stop when the request's future is dropped
/// (the client went away, or shutdown's drain deadline passed).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn parse_num(v: Option<&str>, key: &str, default: u64) -> Result<u64, ApiError> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::invalid(format!("{key}: not a non-negative integer: {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_follows_the_spec_and_moves_past_an_empty_bounded_scan() {
        let page = |scanned_to, reached_end| Page {
            items: Vec::new(),
            scanned_to,
            reached_end,
        };
        assert_eq!(next_cursor(5, &page(100, true)), 5);
        assert_eq!(next_cursor(5, &page(100, false)), 100);
    }
}
