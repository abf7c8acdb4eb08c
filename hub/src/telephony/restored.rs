//! "Tell me when it is over": callers who pressed 9 after an outage's announcement are subscribed to
//! its end (`outage_subscriptions`). When the outage closes (`outage_closed` on the bus) each of them
//! gets an SMS through the notification outbox (`notifications` with the caller's own number as its
//! addresses), which the delivery worker sends. A sweep at start catches outages closed while the
//! hub was down.

use chrono::Utc;
use rules::EventKind;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::storage::{Db, StorageError, json_list, now_ms};

/// Subscribers handled per outage and round.
const BATCH: i64 = 1000;

/// Runs until `shutdown`: a sweep now, then one per closed outage.
pub async fn run(db: Db, bus: Bus, shutdown: CancellationToken) {
    let mut events = bus.subscribe("telephony_restored");
    if let Err(e) = notify(&db, None).await {
        tracing::warn!(error = %e, "outage end notifications: the start-up sweep failed");
    }
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        if let EventKind::OutageClosed(o) = &event.kind {
            match notify(&db, Some(o.id)).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(outage = o.id, callers = n, "outage over: callers notified")
                }
                Err(e) => {
                    tracing::warn!(outage = o.id, error = %e, "outage end notifications failed")
                }
            }
        }
    }
}

/// The text of the SMS.
pub fn message(language: &str) -> &'static str {
    if language == "en" {
        "The emergency works at your site are over, the supply is restored."
    } else {
        "Аварийные работы на вашем объекте завершены, подача восстановлена."
    }
}

/// Queues the SMS of every subscriber of closed outages not told yet (of `outage` only, when
/// given), each in one transaction with its subscription marked. Returns how many were queued.
pub async fn notify(db: &Db, outage: Option<i64>) -> Result<u64, StorageError> {
    let mut queued = 0;
    loop {
        let (round, full) = notify_batch(db, outage).await?;
        queued += round;
        if !full {
            return Ok(queued);
        }
    }
}

/// One batch of `notify`; whether it was full (more may be waiting).
async fn notify_batch(db: &Db, outage: Option<i64>) -> Result<(u64, bool), StorageError> {
    let mut conn = db.conn().await?;
    let due: Vec<(i64, i64, String, String, String, i64)> = sqlx::query_as(
        "SELECT s.id, s.outage_id, s.phone, s.channel, s.language, o.tenant_id
         FROM outage_subscriptions s JOIN outages o ON o.id = s.outage_id
         WHERE s.notified_at IS NULL AND o.status = 'closed' AND ($1 IS NULL OR s.outage_id = $1)
         ORDER BY s.id LIMIT $2",
    )
    .bind(outage)
    .bind(BATCH)
    .fetch_all(&mut *conn)
    .await?;
    drop(conn);
    let full = due.len() as i64 == BATCH;
    let mut queued = 0;
    for (id, outage_id, phone, channel, language, tenant_id) in due {
        let mut tx = db.begin().await?;
        let (notification,): (i64,) = sqlx::query_as(
            "INSERT INTO notifications (tenant_id, recipient, channels, message, status, created_at, addresses)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6) RETURNING id",
        )
        .bind(tenant_id)
        .bind(format!("caller {phone}"))
        .bind(json_list(std::slice::from_ref(&channel)))
        .bind(message(&language))
        .bind(now_ms())
        .bind(serde_json::json!({ "phones": [phone] }).to_string())
        .fetch_one(&mut *tx)
        .await?;
        let marked = sqlx::query(
            "UPDATE outage_subscriptions SET notified_at = $1, notification_id = $2
             WHERE id = $3 AND notified_at IS NULL",
        )
        .bind(now_ms())
        .bind(notification)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 1 {
            tx.commit().await?;
            queued += 1;
            tracing::info!(outage = outage_id, %phone, notification, at = %Utc::now(), "outage over: sms queued");
        } else {
            // Another round took it meanwhile.
            tx.rollback().await?;
        }
    }
    Ok((queued, full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_of_a_closed_outage_get_one_sms_each() {
        let (db, _d) = crate::storage::test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        let site: crate::storage::sites::NewSite = serde_json::from_value(serde_json::json!({
            "tenant": "t", "external_id": "rc", "kind": "residential_complex", "name": "RC"
        }))
        .unwrap();
        let mut refs = crate::storage::refs::Refs::new();
        crate::storage::sites::upsert(&mut c, &mut refs, &site)
            .await
            .unwrap();
        let outage: crate::storage::outages::NewOutage =
            serde_json::from_value(serde_json::json!({
                "tenant": "t", "kind": "emergency", "utility": "heat", "sites": ["rc"],
                "starts_at": "2026-01-01T00:00:00Z"
            }))
            .unwrap();
        let (o, _) = crate::storage::outages::upsert(&mut c, &mut refs, &outage)
            .await
            .unwrap();
        for (phone, lang) in [("+79160000001", "ru"), ("+79160000002", "en")] {
            sqlx::query(
                "INSERT INTO outage_subscriptions (outage_id, phone, channel, language, created_at)
                 VALUES ($1, $2, 'sms', $3, 0)",
            )
            .bind(o.id)
            .bind(phone)
            .bind(lang)
            .execute(&mut *c)
            .await
            .unwrap();
        }
        assert_eq!(notify(&db, None).await.unwrap(), 0, "still active");
        sqlx::query("UPDATE outages SET status = 'closed' WHERE id = $1")
            .bind(o.id)
            .execute(&mut *c)
            .await
            .unwrap();
        assert_eq!(notify(&db, Some(o.id)).await.unwrap(), 2);
        assert_eq!(notify(&db, None).await.unwrap(), 0, "once");
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT recipient, channels, message, addresses FROM notifications ORDER BY id",
        )
        .fetch_all(&mut *c)
        .await
        .unwrap();
        assert_eq!(rows[0].0, "caller +79160000001");
        assert_eq!(rows[0].1, r#"["sms"]"#);
        assert!(rows[0].2.contains("подача восстановлена"));
        assert_eq!(rows[1].3, r#"{"phones":["+79160000002"]}"#);
        assert!(rows[1].2.contains("supply is restored"));
    }
}
