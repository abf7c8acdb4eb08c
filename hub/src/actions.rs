//! The one action layer: what the API, the UI, imports and (with the rules issue) rules do to the world
//! goes through here, so each change is validated, persisted with its audit entry, journaled and then
//! published on the bus, the same way whoever asked.

use rules::EventKind;

use crate::api::AppState;
use crate::storage::outages::{self, Change, NewOutage, Outage};
use crate::storage::refs::Refs;
use crate::storage::{StorageError, audit, events};

/// Records (creates, updates or closes) an outage from any source and publishes the matching event.
/// With `tenant_scope`, an outage of another tenant is refused (a tenant-bound user asks).
pub async fn record_outage(
    state: &AppState,
    actor: &str,
    source: &str,
    tenant_scope: Option<i64>,
    new: &NewOutage,
) -> Result<(Outage, Change), StorageError> {
    let mut tx = state.db.begin().await?;
    let (outage, change) = outages::upsert(&mut tx, &mut Refs::scoped(tenant_scope), new).await?;
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
    let mut tx = state.db.begin().await?;
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
    let info = outage_info(&mut tx, &outage).await?;
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
    let event = state.bus.event(source, kind(info));
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok((outage, change))
}

/// Journals and publishes an outage change stored elsewhere (an import, in its own transaction).
pub async fn announce_outage(
    state: &AppState,
    source: &str,
    outage: &Outage,
    change: Change,
) -> Result<(), StorageError> {
    let kind = match change {
        Change::Unchanged => return Ok(()),
        Change::Opened => EventKind::OutageOpened,
        Change::Updated => EventKind::OutageUpdated,
        Change::Closed => EventKind::OutageClosed,
    };
    let mut tx = state.db.begin().await?;
    let info = outage_info(&mut tx, outage).await?;
    let event = state.bus.event(source, kind(info));
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok(())
}

async fn outage_info(
    conn: &mut sqlx::AnyConnection,
    outage: &Outage,
) -> Result<rules::OutageInfo, StorageError> {
    let tenant = crate::storage::tenants::get(conn, outage.tenant_id).await?;
    let point = match outage.supply_point_id {
        Some(id) => Some(crate::storage::network::get(conn, id).await?.external_id),
        None => None,
    };
    Ok(outages::info(outage, &tenant.external_id, point))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outage_is_journaled_published_and_kept_to_its_tenant() {
        let (_app, state, _token, _d) = crate::api::test_app(crate::names::Role::Dispatcher).await;
        let mut conn = state.db.conn().await.unwrap();
        let mut ids = Vec::new();
        for t in ["t1", "t2"] {
            let new = serde_json::from_value(
                serde_json::json!({"external_id": t, "name": t, "kind": "supplier"}),
            )
            .unwrap();
            ids.push(
                crate::storage::tenants::upsert(&mut conn, &new)
                    .await
                    .unwrap()
                    .id,
            );
        }
        let site = serde_json::from_value(serde_json::json!({"tenant": "t1", "external_id": "rc", "kind": "residential_complex", "name": "RC"})).unwrap();
        crate::storage::sites::upsert(&mut conn, &mut Refs::new(), &site)
            .await
            .unwrap();
        drop(conn);
        let new: NewOutage = serde_json::from_value(serde_json::json!({
            "tenant": "t1", "external_id": "d-1", "kind": "emergency", "utility": "heat",
            "sites": ["rc"], "starts_at": "2026-11-23T06:00:00Z"
        }))
        .unwrap();

        let err = record_outage(&state, "t2-dispatcher", "api", Some(ids[1]), &new)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "tenant: `t1` is not your tenant");

        let mut sub = state.bus.subscribe("test");
        let (outage, change) = record_outage(&state, "dispatcher", "api", Some(ids[0]), &new)
            .await
            .unwrap();
        assert_eq!(change, Change::Opened);
        let event = sub.recv().await.unwrap();
        assert!(
            matches!(&event.kind, EventKind::OutageOpened(o) if o.id == outage.id && o.tenant == "t1")
        );
        let mut conn = state.db.conn().await.unwrap();
        let journal = events::recent(&mut conn, 1).await.unwrap();
        assert_eq!(journal[0].0, "outage_opened");
        let (_, again) = record_outage(&state, "dispatcher", "api", None, &new)
            .await
            .unwrap();
        assert_eq!(
            again,
            Change::Unchanged,
            "the same record twice is idempotent"
        );
    }
}
