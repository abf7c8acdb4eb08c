//! The one action layer: what the API, the UI, imports and (with the rules issue) rules do to the world
//! goes through here, so each change is validated, persisted with its audit entry, journaled and then
//! published on the bus, the same way whoever asked.

use rules::EventKind;

use crate::api::AppState;
use crate::storage::outages::{self, Change, NewOutage, Outage};
use crate::storage::refs::Refs;
use crate::storage::{StorageError, audit, events};

/// Records (creates, updates or closes) an outage from any source and publishes the matching event.
pub async fn record_outage(
    state: &AppState,
    actor: &str,
    source: &str,
    new: &NewOutage,
) -> Result<(Outage, Change), StorageError> {
    let mut tx = state.db.pool.begin().await?;
    let (outage, change) = outages::upsert(&mut tx, &mut Refs::new(), new).await?;
    finish_outage(state, tx, actor, source, outage, change).await
}

/// Ends an outage now (or at `at`).
pub async fn close_outage(
    state: &AppState,
    actor: &str,
    source: &str,
    id: i64,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(Outage, Change), StorageError> {
    let mut tx = state.db.pool.begin().await?;
    let (outage, change) = outages::close(&mut tx, id, at).await?;
    finish_outage(state, tx, actor, source, outage, change).await
}

async fn finish_outage(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    source: &str,
    outage: Outage,
    change: Change,
) -> Result<(Outage, Change), StorageError> {
    let kind = match change {
        Change::Unchanged => {
            tx.commit().await?;
            return Ok((outage, change));
        }
        Change::Opened => EventKind::OutageOpened,
        Change::Updated => EventKind::OutageUpdated,
        Change::Closed => EventKind::OutageClosed,
    };
    let tenant = crate::storage::tenants::get(&mut tx, outage.tenant_id).await?;
    let point = match outage.supply_point_id {
        Some(id) => Some(crate::storage::network::get(&mut tx, id).await?.external_id),
        None => None,
    };
    let action = match change {
        Change::Opened => "create",
        Change::Closed => "close",
        _ => "update",
    };
    audit::record(
        &mut tx,
        actor,
        action,
        "outage",
        &outage.id.to_string(),
        serde_json::to_value(&outage).unwrap_or_default(),
    )
    .await?;
    let event = state.bus.event(
        source,
        kind(outages::info(&outage, &tenant.external_id, point)),
    );
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok((outage, change))
}

/// Stores a reading (history and last value) and then publishes it: a reading is persisted before it
/// is acknowledged.
pub async fn record_reading(
    state: &AppState,
    source: &str,
    sensor: &crate::storage::sensors::Sensor,
    at: chrono::DateTime<chrono::Utc>,
    value: f64,
) -> Result<(), StorageError> {
    let mut conn = state.db.conn().await?;
    crate::storage::sensors::record_reading(&mut conn, sensor.id, at, value).await?;
    let mut event = state.bus.event(
        source,
        EventKind::Reading {
            sensor: sensor.external_id.clone(),
            value,
        },
    );
    event.at = at;
    state.bus.publish(event);
    Ok(())
}
