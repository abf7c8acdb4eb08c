//! Calls on the bus: the recorder, once a call's row is written, journals and publishes `call_started`
//! (an inbound call when its caller is known or not, so rules see the site; an outbound call at once)
//! and `call_ended` (outcome and duration), with the tenant, site and consumer by external id.

use std::collections::HashMap;

use rules::{CallInfo, EventKind};
use sqlx::AnyConnection;

use super::core::CallKey;
use crate::bus::Bus;
use crate::storage::{StorageError, events};

/// Where the events come from.
pub const SOURCE: &str = "telephony";

struct Tracked {
    info: CallInfo,
    started_ms: i64,
    published: bool,
}

/// The recorder's view of calls in progress, for their events.
pub struct CallEvents {
    bus: Option<Bus>,
    calls: HashMap<CallKey, Tracked>,
}

impl CallEvents {
    pub fn new(bus: Option<Bus>) -> Self {
        Self {
            bus,
            calls: HashMap::new(),
        }
    }

    /// A call's row exists. Outbound calls are published at once (`publish_now`); inbound ones when
    /// the caller is known.
    pub async fn begin(
        &mut self,
        conn: &mut AnyConnection,
        key: CallKey,
        info: CallInfo,
        started_ms: i64,
        publish_now: bool,
    ) -> Result<(), StorageError> {
        self.calls.insert(
            key,
            Tracked {
                info,
                started_ms,
                published: false,
            },
        );
        if publish_now {
            self.publish_started(conn, key).await?;
        }
        Ok(())
    }

    /// The inbound caller was looked up: names of the tenant, complex and consumer, then `call_started`.
    pub async fn caller(
        &mut self,
        conn: &mut AnyConnection,
        key: CallKey,
        tenant_id: Option<i64>,
        site_id: Option<i64>,
        consumer_id: Option<i64>,
    ) -> Result<(), StorageError> {
        let Some(t) = self.calls.get_mut(&key) else {
            return Ok(());
        };
        t.info.tenant = external_id(conn, "tenants", tenant_id).await?;
        t.info.site = external_id(conn, "sites", site_id).await?;
        t.info.consumer = external_id(conn, "consumers", consumer_id).await?;
        self.publish_started(conn, key).await
    }

    async fn publish_started(
        &mut self,
        conn: &mut AnyConnection,
        key: CallKey,
    ) -> Result<(), StorageError> {
        let (Some(bus), Some(t)) = (self.bus.as_ref(), self.calls.get_mut(&key)) else {
            return Ok(());
        };
        if t.published {
            return Ok(());
        }
        t.published = true;
        let event = bus.event(SOURCE, EventKind::CallStarted(t.info.clone()));
        events::append(conn, &event).await?;
        bus.publish(event);
        Ok(())
    }

    /// The call ended: `call_started` first if it was not out yet (a caller who hung up at once), then
    /// `call_ended` with the outcome and duration.
    pub async fn end(
        &mut self,
        conn: &mut AnyConnection,
        key: CallKey,
        outcome: &str,
        ended_ms: i64,
    ) -> Result<(), StorageError> {
        self.publish_started(conn, key).await?;
        let (Some(bus), Some(t)) = (self.bus.as_ref(), self.calls.remove(&key)) else {
            return Ok(());
        };
        let mut info = t.info;
        info.outcome = Some(outcome.to_owned());
        info.duration_s = Some((ended_ms - t.started_ms).max(0) as f64 / 1000.0);
        let event = bus.event(SOURCE, EventKind::CallEnded(info));
        events::append(conn, &event).await?;
        bus.publish(event);
        Ok(())
    }
}

async fn external_id(
    conn: &mut AnyConnection,
    table: &'static str,
    id: Option<i64>,
) -> Result<Option<String>, StorageError> {
    let Some(id) = id else { return Ok(None) };
    let sql = format!("SELECT external_id FROM {table} WHERE id = $1");
    let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.0))
}
