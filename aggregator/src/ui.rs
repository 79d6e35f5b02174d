//! The operator web page: plain HTML, CSS and JavaScript compiled into the
//! binary (`include_str!`), no build step. The page reads the JSON API
//! (`/api/v1/...`) and follows the live stream (`/api/v1/stream`); it holds
//! no state of its own beyond what it fetched.
//!
//! Routes: `/` (the page), `/ui/app.js`, `/ui/style.css`.

use crate::server::Shared;
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The routes of the web page, merged into the API router.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
}

/// Assets change with the binary: a browser must revalidate, not cache.
const NO_CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_CACHE],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            NO_CACHE,
        ],
        APP_JS,
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), NO_CACHE],
        STYLE_CSS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_the_assets_it_is_served_with() {
        assert!(INDEX_HTML.contains("/ui/app.js"));
        assert!(INDEX_HTML.contains("/ui/style.css"));
        assert!(INDEX_HTML.contains("id=\"node-count\""));
        assert!(APP_JS.contains("/api/v1/stream"));
    }
}
