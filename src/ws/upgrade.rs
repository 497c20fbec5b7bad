//! The WebSocket opening handshake (RFC 6455 §4.2) on top of axum's
//! routing: [`Upgrade`] checks the request like axum's own extractor does,
//! [`on_upgrade`] answers 101 and runs the connection on a [`Socket`] once
//! hyper hands the stream over.
//!
//! Why not axum's `WebSocketUpgrade`: it only gives out tungstenite's socket,
//! whose read buffer stays allocated for the connection's life; ours holds
//! none while the peer is silent (see [`super::socket`]).

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;

use super::Socket;

/// A request that asks for a WebSocket, with what the answer needs.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// `Sec-WebSocket-Protocol` values the client offered.
    offered: Vec<HeaderValue>,
    /// The one of them the server picked (RFC 6455 §4.2.2).
    protocol: Option<&'static str>,
    max_message: usize,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("request method must be GET")]
    MethodNotGet,
    #[error("`Connection` header did not include `upgrade`")]
    ConnectionHeader,
    #[error("`Upgrade` header did not include `websocket`")]
    UpgradeHeader,
    #[error("`Sec-WebSocket-Version` header did not include `13`")]
    Version,
    #[error("`Sec-WebSocket-Key` header missing")]
    KeyMissing,
    #[error("connection is not upgradable (HTTP/1.1 only)")]
    NotUpgradable,
}

/// Only for axum's sake: both routes take `Result<Upgrade, Rejection>` and
/// answer with the daemon's JSON error.
impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(Rejection::MethodNotGet);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(Rejection::ConnectionHeader);
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(Rejection::UpgradeHeader);
        }
        if !has_token(headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(Rejection::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Rejection::KeyMissing)?
            .clone();
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|p| HeaderValue::from_bytes(p.trim_ascii()).ok())
            .collect();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Rejection::NotUpgradable)?;
        Ok(Upgrade {
            key,
            on_upgrade,
            offered,
            protocol: None,
            max_message: 64 * 1024,
        })
    }
}

/// Whether the comma-separated header `name` holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

impl Upgrade {
    /// Picks the first of `ours` (in our order of preference) that the
    /// client offered.
    pub fn protocols(mut self, ours: &[&'static str]) -> Upgrade {
        self.protocol = ours
            .iter()
            .copied()
            .find(|p| self.offered.iter().any(|o| o.as_bytes() == p.as_bytes()));
        self
    }

    pub fn selected_protocol(&self) -> Option<&'static str> {
        self.protocol
    }

    /// The largest message (and frame) the client may send.
    pub fn max_message(mut self, bytes: usize) -> Upgrade {
        self.max_message = bytes;
        self
    }
}

/// Answers the handshake with 101 and, once hyper hands the stream over,
/// runs `serve` on it in a task of its own, holding a token of `edge` until
/// it returns, so that shutdown waits for the connection (up to the drain
/// deadline).
pub fn on_upgrade<F, Fut>(upgrade: Upgrade, edge: &TaskTracker, serve: F) -> Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Upgrade {
        key,
        on_upgrade,
        protocol,
        max_message,
        ..
    } = upgrade;
    let token = edge.token();
    tokio::spawn(async move {
        // Fails when the client went away before the 101 was written.
        if let Ok(upgraded) = on_upgrade.await {
            serve(Socket::new(TokioIo::new(upgraded), max_message)).await;
        }
        drop(token);
    });
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).expect("base64 is a header value"),
            ),
        ],
    )
        .into_response();
    if let Some(p) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_tokens_match_in_lists_and_any_case() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
        assert!(!has_token(&h, header::UPGRADE, "websocket"));
    }
}
