//! The web UI: static assets from `dashboards/web`, embedded in the binary.

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;

/// Files of the UI, compiled in so the binary is all a user needs.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../dashboards/web/index.html"),
    ),
    (
        "alarms.html",
        "text/html; charset=utf-8",
        include_str!("../../dashboards/web/alarms.html"),
    ),
    (
        "tickets.html",
        "text/html; charset=utf-8",
        include_str!("../../dashboards/web/tickets.html"),
    ),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", axum::routing::get(asset))
        .route("/ui/{*path}", axum::routing::get(asset))
}

async fn asset(uri: Uri) -> Response {
    let path = uri
        .path()
        .trim_start_matches("/ui/")
        .trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    match ASSETS.iter().find(|(name, _, _)| *name == path) {
        Some((_, mime, body)) => ([(header::CONTENT_TYPE, *mime)], *body).into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
