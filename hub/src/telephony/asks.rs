//! The IVR's questions to the database, answered aside from the call core: the walk emits an `Ask`
//! (the meter robot's account and readings, a "tell me when it is over" subscription), the core runs
//! `serve` in a task of its own with what it knows of the call, and the `Answer` comes back to the
//! walk as a message. The core never waits for the database.

use std::time::Duration;

use super::meters::{MeterAnswer, MeterAsk, MeterInfo};
use crate::storage::{Db, StorageError, meters, now_ms, to_ms};

/// Longest the walk waits for an answer before it tells the caller to try later.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Meters(MeterAsk),
    /// Send the caller an SMS when outage `outage_id` is over.
    NotifyWhenOver {
        outage_id: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Meters(MeterAnswer),
    /// Whether the subscription is stored.
    NotifyWhenOver(bool),
}

/// What the core knows of the call.
#[derive(Debug, Clone, Default)]
pub struct AskContext {
    pub sip_call_id: String,
    /// The calling number in E.164, when it is one.
    pub from_number: Option<String>,
    pub tenant_id: Option<i64>,
    pub consumer_id: Option<i64>,
    pub language: String,
}

/// Answers one question; a database failure is the answer "failed" (logged here).
pub async fn serve(db: &Db, ask: Ask, ctx: &AskContext) -> Answer {
    let result = tokio::time::timeout(ASK_TIMEOUT, answer(db, &ask, ctx)).await;
    match result {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, ?ask, "ivr: database question failed");
            failed(&ask)
        }
        Err(_) => {
            tracing::warn!(?ask, "ivr: database question timed out");
            failed(&ask)
        }
    }
}

fn failed(ask: &Ask) -> Answer {
    match ask {
        Ask::Meters(_) => Answer::Meters(MeterAnswer::Failed),
        Ask::NotifyWhenOver { .. } => Answer::NotifyWhenOver(false),
    }
}

async fn answer(db: &Db, ask: &Ask, ctx: &AskContext) -> Result<Answer, StorageError> {
    let mut conn = db.conn().await?;
    Ok(match ask {
        Ask::Meters(MeterAsk::CallerAccount) => {
            let account = match ctx.consumer_id {
                Some(id) => {
                    let row: Option<(Option<String>,)> =
                        sqlx::query_as("SELECT account_number FROM consumers WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *conn)
                            .await?;
                    row.and_then(|r| r.0)
                }
                None => None,
            };
            Answer::Meters(MeterAnswer::CallerAccount(account))
        }
        Ask::Meters(MeterAsk::Account(account)) => {
            let found = meters::by_account(&mut conn, ctx.tenant_id, account).await?;
            Answer::Meters(MeterAnswer::Meters(found.map(|(_, list)| {
                list.into_iter()
                    .map(|m| MeterInfo {
                        id: m.id,
                        kind: m.kind,
                        serial: m.serial,
                        last_value: m.last_value,
                        last_at: m.last_at.map(to_ms),
                        monthly_increase: m.monthly_increase,
                    })
                    .collect()
            })))
        }
        Ask::Meters(MeterAsk::Store {
            meter_id,
            value,
            questioned,
        }) => {
            let mut tx = db.begin().await?;
            let id = meters::add_reading(
                &mut tx,
                *meter_id,
                *value,
                Some(&ctx.sip_call_id),
                "ivr",
                *questioned,
            )
            .await?;
            tx.commit().await?;
            tracing::info!(reading = id, meter = meter_id, value, questioned, call_id = %ctx.sip_call_id, "meter reading stored");
            Answer::Meters(MeterAnswer::Stored)
        }
        Ask::NotifyWhenOver { outage_id } => {
            let Some(phone) = &ctx.from_number else {
                return Ok(Answer::NotifyWhenOver(false));
            };
            sqlx::query(
                "INSERT INTO outage_subscriptions (outage_id, phone, channel, language, call_id, created_at)
                 VALUES ($1, $2, 'sms', $3, (SELECT MAX(id) FROM calls WHERE sip_call_id = $4), $5)
                 ON CONFLICT (outage_id, phone, channel) DO NOTHING",
            )
            .bind(*outage_id)
            .bind(phone)
            .bind(&ctx.language)
            .bind(&ctx.sip_call_id)
            .bind(now_ms())
            .execute(&mut *conn)
            .await?;
            tracing::info!(outage = outage_id, %phone, "caller subscribed to the end of the outage");
            Answer::NotifyWhenOver(true)
        }
    })
}
