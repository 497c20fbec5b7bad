//! `GET /` (SPEC §5): the live dashboard, a static page embedded in the
//! binary. It owns only the serving of the files under `web/` (HTML, CSS,
//! JavaScript modules, the vendored uPlot): content types, a strict
//! Content-Security-Policy, `ETag` revalidation and gzip. The page itself
//! talks to the daemon only through the public API (`/v1/devices`,
//! `/v1/readings`, `/v1/stream`), like any other client; see
//! `docs/dashboard.md`.
//!
//! Every file is compressed at most once per process (lazily, on the first
//! request that accepts gzip) and kept: assets never change while the
//! binary runs, so a request costs a header lookup and a copy-free body.

use std::io::Write;
use std::sync::{LazyLock, OnceLock};

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

/// Scripts, styles, images and connections from this origin only: no
/// inline script or style, no eval, no framing, no plugins. `connect-src
/// 'self'` covers `ws:`/`wss:` to the same host (CSP Level 3).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Assets are not fingerprinted, so browsers revalidate each use: a
/// matching `If-None-Match` costs a 304 without a body.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
struct Asset {
    /// URL path under `/ui/` (`""` is the page itself at `/`).
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
    /// Strong validator from the content; the gzip variant appends `-gz`.
    etag: String,
    gzip: OnceLock<Option<Bytes>>,
}

macro_rules! asset {
    ($name:literal, $file:literal, $mime:literal) => {
        (
            $name,
            $mime,
            include_bytes!(concat!("../../web/", $file)).as_slice(),
        )
    };
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    [
        asset!("", "index.html", "text/html; charset=utf-8"),
        asset!("app.js", "app.js", "text/javascript; charset=utf-8"),
        asset!("stream.js", "stream.js", "text/javascript; charset=utf-8"),
        asset!("devices.js", "devices.js", "text/javascript; charset=utf-8"),
        asset!("charts.js", "charts.js", "text/javascript; charset=utf-8"),
        asset!("style.css", "style.css", "text/css; charset=utf-8"),
        asset!("icon.svg", "icon.svg", "image/svg+xml"),
        asset!(
            "vendor/uplot/uPlot.esm.js",
            "vendor/uplot/uPlot.esm.js",
            "text/javascript; charset=utf-8"
        ),
        asset!(
            "vendor/uplot/uPlot.min.css",
            "vendor/uplot/uPlot.min.css",
            "text/css; charset=utf-8"
        ),
        asset!(
            "vendor/uplot/LICENSE",
            "vendor/uplot/LICENSE",
            "text/plain; charset=utf-8"
        ),
    ]
    .into_iter()
    .map(|(name, mime, body)| Asset {
        name,
        mime,
        body,
        etag: format!("\"{:016x}\"", fnv1a(body)),
        gzip: OnceLock::new(),
    })
    .collect()
});

/// The dashboard's routes: the page at `/`, its files under `/ui/`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*path}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("", &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&path, &headers)
}

fn serve(name: &str, req: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let gzip = accepts_gzip(req).then(|| asset.gzipped()).flatten();
    let etag = match gzip {
        Some(_) => format!("{}-gz\"", asset.etag.trim_end_matches('"')),
        None => asset.etag.clone(),
    };
    let mut resp = if if_none_match(req, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match &gzip {
            Some(z) => z.clone().into_response(),
            None => Bytes::from_static(asset.body).into_response(),
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    if gzip.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

impl Asset {
    /// The gzip body, compressed on first use; `None` when gzip would not
    /// make it smaller (the SVG icon, tiny files).
    fn gzipped(&self) -> Option<Bytes> {
        self.gzip
            .get_or_init(|| {
                let z = gzip(self.body);
                (z.len() < self.body.len()).then(|| Bytes::from(z))
            })
            .clone()
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    enc.write_all(body).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// `Accept-Encoding` lists `gzip` (or `*`) without `q=0`.
fn accepts_gzip(req: &HeaderMap) -> bool {
    req.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// `If-None-Match` names `etag` (or is `*`).
fn if_none_match(req: &HeaderMap, etag: &str) -> bool {
    req.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// FNV-1a, 64 bits: a content hash that is stable across builds and
/// needs no crate; an `ETag` needs no cryptographic strength.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        let ae = header::ACCEPT_ENCODING;
        assert!(accepts_gzip(&headers(&[(ae.clone(), "gzip, deflate, br")])));
        assert!(accepts_gzip(&headers(&[(
            ae.clone(),
            "br;q=1.0, GZIP;q=0.5"
        )])));
        assert!(accepts_gzip(&headers(&[(ae.clone(), "*")])));
        assert!(!accepts_gzip(&headers(&[(ae.clone(), "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[(ae.clone(), "br, deflate")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etags_match_exactly_or_weakly_or_star() {
        let inm = header::IF_NONE_MATCH;
        assert!(if_none_match(
            &headers(&[(inm.clone(), "\"a\", \"b\"")]),
            "\"b\""
        ));
        assert!(if_none_match(
            &headers(&[(inm.clone(), "W/\"b\"")]),
            "\"b\""
        ));
        assert!(if_none_match(&headers(&[(inm.clone(), "*")]), "\"b\""));
        assert!(!if_none_match(&headers(&[(inm.clone(), "\"a\"")]), "\"b\""));
    }

    #[test]
    fn every_asset_is_embedded_and_the_page_names_only_embedded_files() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for a in ASSETS.iter() {
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        // Every `/ui/...` reference in the page resolves to an asset.
        for part in page.split("\"/ui/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "index.html references /ui/{name}, which is not embedded"
            );
        }
    }
}
