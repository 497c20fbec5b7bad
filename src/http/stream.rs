//! `GET /v1/stream` (SPEC §4): the subscriber handshake. Handshake rate
//! per IP, then origin, then token, then the upgrade with the chosen
//! subprotocol; the connection itself runs in [`crate::fanout::session`].

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{authenticate_subscriber, handshake_rate_refusal, ApiError, AppState};
use crate::fanout::session::{self, Params};
use crate::fanout::wire::{Encoding, PROTO_JSON, PROTO_MSGPACK};
use crate::fanout::TopicFilter;
use crate::ws;

/// Query parameters of `/v1/stream`; `topic` may repeat.
#[derive(Debug, Default, PartialEq)]
pub struct StreamQuery {
    pub access_token: Option<String>,
    pub topics: Vec<String>,
    pub since: Option<String>,
}

impl StreamQuery {
    /// Parses a raw query string. `%XX` is decoded; `+` stays `+` (it is a
    /// wildcard here, and filters never contain spaces). `#` must be sent
    /// as `%23`, as in any URL.
    pub fn parse(raw: &str) -> StreamQuery {
        let mut q = StreamQuery::default();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match percent_decode(k).as_str() {
                "access_token" => q.access_token = Some(v),
                "topic" => q.topics.push(v),
                "since" => q.since = Some(v),
                _ => {}
            }
        }
        q
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `server.allowed_origins` (SPEC §10): empty allows any; a request without
/// `Origin` (not a browser) is allowed. Compared without a trailing `/`,
/// scheme and host case-insensitively.
pub fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.is_empty() {
        return true;
    }
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    let origin = norm(origin);
    allowed.iter().any(|a| a == "*" || norm(a) == origin)
}

pub async fn get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    ws: Result<ws::Upgrade, ws::Rejection>,
) -> Response {
    // The same per-IP handshake rate as `/v1/ingest`, before anything else.
    if let Some(refused) = handshake_rate_refusal(&state, peer) {
        return refused;
    }
    let q = StreamQuery::parse(raw.as_deref().unwrap_or(""));
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !origin_allowed(&state.config.server.allowed_origins, origin) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "origin {:?} is not in server.allowed_origins",
                origin.unwrap_or("")
            ),
        )
        .into_response();
    }
    let identity = match authenticate_subscriber(&state, &headers, q.access_token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::invalid(format!("not a WebSocket upgrade: {rejection}"))
                .into_response()
        }
    };
    // A claim entry that is not a valid filter allows nothing.
    let allowed = identity.and_then(|i| i.topics).map(|t| {
        t.iter()
            .filter_map(|s| TopicFilter::parse(s).ok())
            .collect::<Vec<_>>()
    });
    let ws = ws.protocols(&[PROTO_MSGPACK, PROTO_JSON]);
    let encoding = Encoding::from_protocol(ws.selected_protocol());
    let params = Params {
        encoding,
        allowed,
        topics: q.topics,
        since: q.since,
    };
    // Small client messages only (ops).
    let ws = ws.max_message(64 * 1024);
    let hub = state.hub.clone();
    let store = state.store.clone();
    let config = state.config.clone();
    let shutdown = state.shutdown.clone();
    ws::on_upgrade(ws, &state.edge, move |socket| {
        session::run(socket, hub, store, config, shutdown, params)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_repeated_topics_and_decodes_percent() {
        let q = StreamQuery::parse("topic=d1%2F%23&topic=+/temp&since=5&access_token=abc&x=1");
        assert_eq!(q.topics, vec!["d1/#", "+/temp"]);
        assert_eq!(q.since.as_deref(), Some("5"));
        assert_eq!(q.access_token.as_deref(), Some("abc"));
        assert_eq!(percent_decode("%2"), "%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
    }

    #[test]
    fn origins() {
        let list = vec!["https://a.example".to_string()];
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list, Some("https://A.example/")));
        assert!(!origin_allowed(&list, Some("https://evil.example")));
        assert!(origin_allowed(&[], Some("https://evil.example")));
    }
}
