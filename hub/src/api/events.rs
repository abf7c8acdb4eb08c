//! `/events/stream`: the bus as Server-Sent Events, for the live UI.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{AppState, CurrentUser};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// Every event on the bus as it happens (`event:` is its kind, `data:` the JSON event). Readings are
/// included; a client that cannot keep up misses the oldest and is told with a `lagged` event.
#[utoipa::path(get, path = "/events/stream", tag = "events", responses((status = 200, content_type = "text/event-stream")))]
async fn stream(
    State(s): State<AppState>,
    _user: CurrentUser,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let sub = s.bus.subscribe("sse");
    let stream = futures::stream::unfold(sub, |mut sub| async move {
        let event = sub.recv().await?;
        let sse = SseEvent::default()
            .event(event.kind.name())
            .id(event.id.to_string())
            .data(serde_json::to_string(&*event).unwrap_or_default());
        Some((Ok(sse), sub))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
