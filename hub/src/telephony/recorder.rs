//! The recorder task: writes the core's call reports to the `calls` table in the order they come, so
//! the core never waits for the database. A failed write is logged and the call goes on.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::caller::CallerInfo;
use super::core::CallKey;
use super::events::CallEvents;
use super::store;
use crate::bus::Bus;
use crate::storage::Db;

/// Reports the recorder's channel holds; beyond that the core drops and counts them.
pub const RECORDER_CHANNEL: usize = 1024;

#[derive(Debug)]
pub enum RecordOp {
    Start {
        key: CallKey,
        sip_call_id: String,
        from: String,
        to: String,
        at: i64,
    },
    Caller {
        key: CallKey,
        info: CallerInfo,
    },
    Answered {
        key: CallKey,
        at: i64,
    },
    End {
        key: CallKey,
        at: i64,
        outcome: String,
        digits: String,
        queue: Option<String>,
    },
    /// An outbound call whose row the handle inserted (`id`), to publish and to update.
    Outbound {
        key: CallKey,
        id: i64,
        info: Box<rules::CallInfo>,
        at: i64,
    },
    /// The detail of an outcome (the digit, the SIP code, the reason of a failure).
    Detail {
        key: CallKey,
        detail: String,
    },
}

pub async fn run(
    db: Db,
    bus: Option<Bus>,
    mut ops: mpsc::Receiver<RecordOp>,
    shutdown: CancellationToken,
) {
    let mut rows = std::collections::HashMap::new();
    let mut events = CallEvents::new(bus);
    loop {
        let op = tokio::select! {
            op = ops.recv() => op,
            // Reports already queued are still written: the core has stopped sending by then.
            _ = shutdown.cancelled() => {
                ops.close();
                ops.recv().await
            }
        };
        let Some(op) = op else { return };
        if let Err(e) = write(&db, &mut rows, &mut events, op).await {
            tracing::warn!(error = %e, "call record not written");
        }
    }
}

async fn write(
    db: &Db,
    rows: &mut std::collections::HashMap<CallKey, i64>,
    events: &mut CallEvents,
    op: RecordOp,
) -> Result<(), crate::storage::StorageError> {
    let mut conn = db.conn().await?;
    match op {
        RecordOp::Start {
            key,
            sip_call_id,
            from,
            to,
            at,
        } => {
            let id = store::insert(&mut conn, &sip_call_id, &from, &to, at).await?;
            rows.insert(key, id);
            let info = rules::CallInfo {
                id,
                tenant: None,
                direction: "inbound".into(),
                from,
                to,
                site: None,
                consumer: None,
                purpose: None,
                outcome: None,
                duration_s: None,
            };
            events.begin(&mut conn, key, info, at, false).await?;
        }
        RecordOp::Caller { key, info } => {
            if let Some(id) = rows.get(&key) {
                store::set_caller(
                    &mut conn,
                    *id,
                    info.tenant_id,
                    info.consumer_id,
                    info.site_id,
                    info.mode,
                )
                .await?;
                events
                    .caller(
                        &mut conn,
                        key,
                        info.tenant_id,
                        info.site_id,
                        info.consumer_id,
                    )
                    .await?;
            }
        }
        RecordOp::Answered { key, at } => {
            if let Some(id) = rows.get(&key) {
                store::answered(&mut conn, *id, at).await?;
            }
        }
        RecordOp::End {
            key,
            at,
            outcome,
            digits,
            queue,
        } => {
            if let Some(id) = rows.remove(&key) {
                store::ended(&mut conn, id, at, &outcome, &digits, queue.as_deref()).await?;
                events.end(&mut conn, key, &outcome, at).await?;
            }
        }
        RecordOp::Outbound { key, id, info, at } => {
            rows.insert(key, id);
            events.begin(&mut conn, key, *info, at, true).await?;
        }
        RecordOp::Detail { key, detail } => {
            if let Some(id) = rows.get(&key) {
                store::set_detail(&mut conn, *id, &detail).await?;
            }
        }
    }
    Ok(())
}
