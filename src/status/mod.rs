//! `GET /status` on the admin port: the tier as this peer sees it.
//!
//! - [`doc`]: [`StatusDoc`], built purely from a cluster view, the ring, traffic counters
//!   and this peer's shedding.
//! - [`page`]: the self-refreshing HTML page served to browsers on the same URL.
//! - [`cli`]: `satmesh status`: fetches the document and prints it as a table.
//!
//! The peer implements [`StatusSource`]; [`routes`] turns it into a router that the admin
//! router merges. JSON is the default; a request whose `Accept` prefers `text/html` (a
//! browser) gets the page, which fetches the same URL as JSON every second.

pub mod cli;
pub mod doc;
pub mod page;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;

pub use doc::{OapStatus, PeerStatus, RingStatus, ShedStatus, StatusDoc, Totals, digest_hex};

/// Where the status document comes from: the peer, or fixed data in tests.
pub trait StatusSource: Send + Sync {
    /// The current document. Called once per request, so keep it cheap (no IO).
    fn status(&self) -> StatusDoc;
}

/// `GET /status`, to merge into the admin router.
pub fn routes(source: Arc<dyn StatusSource>) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(source)
}

async fn status(State(source): State<Arc<dyn StatusSource>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut response = if prefers_html(accept) {
        Html(page::PAGE).into_response()
    } else {
        Json(source.status()).into_response()
    };
    let h = response.headers_mut();
    // One URL, two representations: caches must key on Accept, and the page must never
    // be shown a stale document.
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether `accept` ranks `text/html` above `application/json` (explicit media types
/// only; `*/*`, as curl sends, means JSON).
fn prefers_html(accept: &str) -> bool {
    let quality = |wanted: &str| {
        accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?;
                if !media.eq_ignore_ascii_case(wanted) {
                    return None;
                }
                let q = parts
                    .filter_map(|p| p.strip_prefix("q="))
                    .find_map(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some(q)
            })
            .fold(0.0_f32, f32::max)
    };
    let html = quality("text/html");
    html > 0.0 && html > quality("application/json")
}

#[cfg(test)]
mod tests {
    use super::prefers_html;

    #[test]
    fn browsers_get_html_and_everyone_else_json() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(firefox));
        assert!(prefers_html("text/html"));
        assert!(!prefers_html(""));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
        assert!(!prefers_html("application/json, text/html;q=0.5"));
        assert!(!prefers_html("text/html;q=0"));
        assert!(prefers_html("application/json;q=0.1, TEXT/HTML"));
    }
}
