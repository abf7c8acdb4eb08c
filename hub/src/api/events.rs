//! `/events/stream`: the bus as Server-Sent Events, for the live UI.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use utoipa_axum::{router::OpenApiRouter, routes};

use rules::EventKind;

use super::{ApiError, AppState, CurrentUser};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// Every event on the bus as it happens (`event:` is its kind, `data:` the JSON event). Readings are
/// included; a client that cannot keep up misses the oldest (counted in `hub_bus_lagged_total`).
/// A user bound to one tenant receives only the events that name that tenant (outages, alarms).
#[utoipa::path(get, path = "/events/stream", tag = "events", responses((status = 200, content_type = "text/event-stream")))]
async fn stream(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let only_tenant = match user.0.tenant_id {
        Some(id) => {
            let mut conn = s.db.conn().await?;
            Some(
                crate::storage::tenants::get(&mut conn, id)
                    .await?
                    .external_id,
            )
        }
        None => None,
    };
    let sub = s.bus.subscribe("sse");
    let stream = futures::stream::unfold((sub, only_tenant), |(mut sub, only_tenant)| async move {
        let event = loop {
            let event = sub.recv().await?;
            if visible(&event.kind, only_tenant.as_deref()) {
                break event;
            }
        };
        let sse = SseEvent::default()
            .event(event.kind.name())
            .id(event.id.to_string())
            .data(serde_json::to_string(&*event).unwrap_or_default());
        Some((Ok(sse), (sub, only_tenant)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Whether a user bound to `only_tenant` (if any) may see the event.
fn visible(kind: &EventKind, only_tenant: Option<&str>) -> bool {
    let Some(own) = only_tenant else { return true };
    match kind {
        EventKind::OutageOpened(o) | EventKind::OutageUpdated(o) | EventKind::OutageClosed(o) => {
            o.tenant == own
        }
        EventKind::AlarmRaised(a)
        | EventKind::AlarmAcknowledged(a)
        | EventKind::AlarmCleared(a) => a.tenant.as_deref() == Some(own),
        EventKind::CallStarted(c) | EventKind::CallEnded(c) => c.tenant.as_deref() == Some(own),
        EventKind::TicketChanged(t) | EventKind::TicketOverdue(t) => t.tenant == own,
        EventKind::Reading { .. }
        | EventKind::SensorOffline { .. }
        | EventKind::SensorOnline { .. }
        | EventKind::Tick { .. } => false,
    }
}
