//! Campaigns, their contacts and the contacts' send attempts. A contact is a persisted state machine
//! (`queued` -> `sending` with a lease -> `sent` | `delivered` | `answered` | `confirmed` | `failed` |
//! `cancelled`), claimed by the dispatcher in calling order (life support and social objects first).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, now_ms, parse_json_list, to_ms};
use crate::names::Channel;

/// Contacts per multi-row INSERT (11 values each, under SQLite's limit of 32,766 variables).
const CONTACTS_PER_STATEMENT: usize = 2500;
/// Attempts per multi-row INSERT.
const ATTEMPTS_PER_STATEMENT: usize = 2500;
/// Ids per `IN (...)` list.
const IDS_PER_STATEMENT: usize = 5000;

/// A consumer's postal address (of `c`, a `consumers` row): their first site's, or that site's
/// parent's when the site has none (an apartment without its own address).
pub const ADDRESS: &str =
    "(SELECT COALESCE(NULLIF(s.address, ''), p.address) FROM consumer_sites cs
       JOIN sites s ON s.id = cs.site_id LEFT JOIN sites p ON p.id = s.parent_id
      WHERE cs.consumer_id = c.id ORDER BY cs.site_id LIMIT 1)";

/// Contact statuses that end the contact with someone reached.
pub const REACHED: [&str; 4] = ["sent", "delivered", "answered", "confirmed"];

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Campaign {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub template: String,
    pub channels: Vec<String>,
    #[schema(value_type = Object)]
    pub audience: serde_json::Value,
    /// `scheduled`, `running`, `paused`, `finished` or `cancelled`.
    pub status: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub contacts: i64,
    /// Texts by language and channel.
    #[schema(value_type = Object)]
    pub templates: serde_json::Value,
    #[schema(value_type = Object)]
    pub variables: serde_json::Value,
    #[schema(value_type = Object)]
    pub retry: serde_json::Value,
    /// Nothing is sent before this time.
    pub starts_at: Option<DateTime<Utc>>,
    /// The legal deadline (a planned outage's start) the campaign must finish by.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When the campaign is expected to finish at the channels' rates within quiet hours.
    pub estimated_finish_at: Option<DateTime<Utc>>,
    /// The estimate is after the deadline.
    pub deadline_at_risk: bool,
    /// Calls and SMS go out in quiet hours too (an emergency), as the launcher asked.
    pub override_quiet_hours: bool,
    /// The robot takes the operators' call list after this time even if not done.
    pub handover_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    name: String,
    template: String,
    channels: String,
    audience: String,
    status: String,
    created_by: String,
    created_at: i64,
    contacts: i64,
    templates: String,
    variables: String,
    retry: String,
    starts_at: Option<i64>,
    deadline_at: Option<i64>,
    estimated_finish_at: Option<i64>,
    deadline_at_risk: i64,
    override_quiet_hours: i64,
    handover_at: Option<i64>,
    finished_at: Option<i64>,
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_default()
}

impl From<Row> for Campaign {
    fn from(r: Row) -> Self {
        Campaign {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            template: r.template,
            channels: parse_json_list(&r.channels),
            audience: json(&r.audience),
            status: r.status,
            created_by: r.created_by,
            created_at: from_ms(r.created_at),
            contacts: r.contacts,
            templates: json(&r.templates),
            variables: json(&r.variables),
            retry: json(&r.retry),
            starts_at: r.starts_at.map(from_ms),
            deadline_at: r.deadline_at.map(from_ms),
            estimated_finish_at: r.estimated_finish_at.map(from_ms),
            deadline_at_risk: r.deadline_at_risk != 0,
            override_quiet_hours: r.override_quiet_hours != 0,
            handover_at: r.handover_at.map(from_ms),
            finished_at: r.finished_at.map(from_ms),
        }
    }
}

const COLUMNS: &str =
    "id, tenant_id, name, template, channels, audience, status, created_by, created_at, contacts,
    templates, variables, retry, starts_at, deadline_at, estimated_finish_at, deadline_at_risk,
    override_quiet_hours, handover_at, finished_at";

/// A campaign to persist, resolved and checked by `campaigns::launch`.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    pub tenant_id: i64,
    pub name: &'a str,
    pub template: &'a str,
    pub channels: &'a [Channel],
    pub audience: &'a serde_json::Value,
    pub templates: &'a serde_json::Value,
    pub variables: &'a serde_json::Value,
    pub retry: &'a serde_json::Value,
    pub status: &'a str,
    pub created_by: &'a str,
    pub starts_at: DateTime<Utc>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub estimated_finish_at: Option<DateTime<Utc>>,
    pub deadline_at_risk: bool,
    pub override_quiet_hours: bool,
    pub handover_at: Option<DateTime<Utc>>,
}

/// One contact to insert, in calling order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContact {
    pub consumer_id: i64,
    /// 0: life support or a social object (the operators' call list first); 1: everyone else.
    pub priority: i64,
    /// Channels in the order they are tried; empty: nobody can be reached (failed at once).
    pub plan: Vec<Channel>,
    /// Variables of this contact alone (an imported list's `amount`, `phone`...), as JSON.
    pub vars: Option<String>,
}

/// Inserts the campaign and its contacts (in one transaction the caller holds).
pub async fn create(
    conn: &mut AnyConnection,
    c: &NewCampaign<'_>,
    contacts: &[NewContact],
) -> Result<Campaign, StorageError> {
    let channels: Vec<&str> = c.channels.iter().map(|c| c.as_str()).collect();
    let sql = format!(
        "INSERT INTO campaigns (tenant_id, name, template, channels, audience, status, created_by, created_at,
             contacts, templates, variables, retry, starts_at, deadline_at, estimated_finish_at,
             deadline_at_risk, override_quiet_hours, handover_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         RETURNING {COLUMNS}"
    );
    let now = now_ms();
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(c.tenant_id)
        .bind(c.name)
        .bind(c.template)
        .bind(serde_json::to_string(&channels).unwrap_or_default())
        .bind(c.audience.to_string())
        .bind(c.status)
        .bind(c.created_by)
        .bind(now)
        .bind(i64::try_from(contacts.len()).unwrap_or(i64::MAX))
        .bind(c.templates.to_string())
        .bind(c.variables.to_string())
        .bind(c.retry.to_string())
        .bind(to_ms(c.starts_at))
        .bind(c.deadline_at.map(to_ms))
        .bind(c.estimated_finish_at.map(to_ms))
        .bind(i64::from(c.deadline_at_risk))
        .bind(i64::from(c.override_quiet_hours))
        .bind(c.handover_at.map(to_ms))
        .fetch_one(&mut *conn)
        .await?;
    let start = to_ms(c.starts_at);
    let hold = c.handover_at.map(to_ms);
    for chunk in contacts.chunks(CONTACTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO campaign_contacts (campaign_id, consumer_id, priority, status, updated_at, plan,
                 channel, next_attempt_at, hold_until, vars, reason) VALUES {}",
            super::placeholders(conn, chunk.len(), 11)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for contact in chunk {
            let plan: Vec<&str> = contact.plan.iter().map(|c| c.as_str()).collect();
            let first = contact.plan.first().map(|c| c.as_str());
            q = q
                .bind(row.id)
                .bind(contact.consumer_id)
                .bind(contact.priority)
                .bind(if first.is_some() { "queued" } else { "failed" })
                .bind(now)
                .bind(serde_json::to_string(&plan).unwrap_or_default())
                .bind(first)
                .bind(start)
                .bind(if contact.priority == 0 { hold } else { None })
                .bind(contact.vars.as_deref())
                .bind(first.is_none().then_some(
                    "no channel: the consumer opted out of or has no address for every channel of the campaign",
                ));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(row.into())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Campaign, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row
        .ok_or_else(|| StorageError::not_found(format!("campaign {id}")))?
        .into())
}

pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    page: PageRequest,
) -> Result<Vec<Campaign>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM campaigns WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(tenant_id)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Campaigns the dispatcher works on: running ones (scheduled ones whose time came are started first).
pub async fn running(
    conn: &mut AnyConnection,
    now: DateTime<Utc>,
) -> Result<Vec<Campaign>, StorageError> {
    sqlx::query(
        "UPDATE campaigns SET status = 'running' WHERE status = 'scheduled' AND starts_at <= $1",
    )
    .bind(to_ms(now))
    .execute(&mut *conn)
    .await?;
    let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE status = 'running' ORDER BY id");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Marks running campaigns with no contact left to send `finished`; returns their ids.
pub async fn finish_done(
    conn: &mut AnyConnection,
    now: DateTime<Utc>,
) -> Result<Vec<i64>, StorageError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "UPDATE campaigns SET status = 'finished', finished_at = $1
          WHERE status = 'running' AND NOT EXISTS (
                SELECT 1 FROM campaign_contacts cc
                 WHERE cc.campaign_id = campaigns.id AND cc.status IN ('queued', 'sending'))
          RETURNING id",
    )
    .bind(to_ms(now))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Sets a campaign's status (pause, resume, cancel); cancelling also cancels the contacts not yet sent.
/// `from` lists the statuses the change is allowed from.
pub async fn set_status(
    conn: &mut AnyConnection,
    id: i64,
    from: &[&str],
    to: &str,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let allowed = serde_json::to_string(from).unwrap_or_default();
    let done = sqlx::query(
        "UPDATE campaigns SET status = $1, finished_at = CASE WHEN $1 = 'cancelled' THEN $2 ELSE finished_at END
          WHERE id = $3 AND $4 LIKE '%\"' || status || '\"%'",
    )
    .bind(to)
    .bind(to_ms(now))
    .bind(id)
    .bind(allowed)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if done > 0 && to == "cancelled" {
        sqlx::query(
            "UPDATE campaign_contacts SET status = 'cancelled', reason = 'campaign cancelled', finished_at = $1,
                    updated_at = $1
              WHERE campaign_id = $2 AND status = 'queued'",
        )
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(done > 0)
}

/// A contact as the API and the CSV show it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Contact {
    pub id: i64,
    pub consumer_id: i64,
    pub external_id: String,
    pub name: String,
    /// 0: life support or a social object (a human operator calls first); 1: everyone else.
    pub priority: i64,
    /// `queued`, `sending`, `sent`, `delivered`, `answered`, `confirmed`, `failed` or `cancelled`.
    pub status: String,
    /// The channel being tried (while queued) or last tried.
    pub channel: Option<String>,
    /// The channel that reached the consumer.
    pub reached_via: Option<String>,
    /// Sends so far, every channel.
    pub attempts: i64,
    /// Why the last attempt did not reach them, or why the contact failed.
    pub reason: Option<String>,
    #[serde(skip)]
    pub next_attempt_at_ms: i64,
    #[serde(skip)]
    pub finished_at_ms: Option<i64>,
    #[serde(skip)]
    pub updated_at_ms: i64,
}

const CONTACT_COLUMNS: &str =
    "cc.id, cc.consumer_id, c.external_id, c.name, cc.priority, cc.status, cc.channel,
    cc.reached_via, cc.attempts, cc.reason, cc.next_attempt_at AS next_attempt_at_ms,
    cc.finished_at AS finished_at_ms, cc.updated_at AS updated_at_ms";

/// Contacts in calling order (they are inserted in that order).
pub async fn contacts(
    conn: &mut AnyConnection,
    campaign_id: i64,
    page: PageRequest,
) -> Result<Vec<Contact>, StorageError> {
    let sql = format!(
        "SELECT {CONTACT_COLUMNS} FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
          WHERE cc.campaign_id = $1 AND cc.id > $2 ORDER BY cc.id LIMIT $3"
    );
    let rows: Vec<Contact> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(campaign_id)
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows)
}

/// A contact claimed for a send, with what the message needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub campaign_id: i64,
    pub plan: String,
    pub step: i64,
    pub channel_attempts: i64,
    pub vars: Option<String>,
    pub name: String,
    pub phones: String,
    pub email: Option<String>,
    pub telegram: Option<String>,
    pub account_number: Option<String>,
    pub language: String,
    pub address: Option<String>,
}

/// Claims up to `limit` queued contacts of `channel` in the given campaigns that are due at `now`
/// (and not held for the operators): `sending`, leased until `lease_until`.
pub async fn claim(
    conn: &mut AnyConnection,
    channel: Channel,
    campaigns: &[i64],
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Claimed>, StorageError> {
    if campaigns.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    // Campaign by campaign (oldest first), so that each claim is one range of the index
    // (campaign_id, status, channel, id) read in calling order. The test is repeated outside the
    // sub-query so that, on PostgreSQL, a row another worker took meanwhile is skipped.
    let due = "campaign_id = $5 AND status = 'queued' AND channel = $2 AND next_attempt_at <= $3
         AND (hold_until IS NULL OR hold_until <= $3)";
    let sql = format!(
        "UPDATE campaign_contacts SET status = 'sending', lease_until = $1, updated_at = $3
          WHERE id IN (SELECT id FROM campaign_contacts WHERE {due} ORDER BY id LIMIT $4) AND {due}
          RETURNING id"
    );
    let mut claimed: Vec<(i64,)> = Vec::new();
    for campaign in campaigns {
        let left = limit.saturating_sub(claimed.len());
        if left == 0 {
            break;
        }
        let rows: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(to_ms(lease_until))
            .bind(channel.as_str())
            .bind(to_ms(now))
            .bind(i64::try_from(left).unwrap_or(i64::MAX))
            .bind(*campaign)
            .fetch_all(&mut *conn)
            .await?;
        claimed.extend(rows);
    }
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let ids = claimed
        .iter()
        .map(|(id,)| id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT cc.id, cc.campaign_id, cc.plan, cc.step, cc.channel_attempts, cc.vars, c.name, c.phones, c.email,
                c.telegram, c.account_number, c.language,
                {ADDRESS} AS address
           FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
          WHERE cc.id IN ({ids}) ORDER BY cc.id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?)
}

/// How a send left a contact, to be written.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub contact_id: i64,
    pub campaign_id: i64,
    /// The new status: `queued`, a reached status or `failed`.
    pub status: &'static str,
    pub step: i64,
    /// The channel to try next (queued), or the one last tried.
    pub channel: Channel,
    pub channel_attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub reached_via: Option<Channel>,
    pub reason: Option<String>,
    /// The attempt itself.
    pub tried: Channel,
    pub route: String,
    pub started_at: DateTime<Utc>,
    pub outcome: &'static str,
    pub detail: String,
}

/// Writes the outcomes of a round in one transaction the caller holds: the contacts' new states
/// (only of contacts still `sending`: a contact is recorded once) and one attempt row each.
pub async fn record(
    conn: &mut AnyConnection,
    rows: &[Recorded],
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let now_ms = to_ms(now);
    for r in rows {
        let finished = (r.status != "queued").then_some(now_ms);
        sqlx::query(
            "UPDATE campaign_contacts SET status = $1, step = $2, channel = $3, channel_attempts = $4,
                    attempts = attempts + 1, next_attempt_at = $5, lease_until = NULL, reached_via = $6,
                    reason = $7, finished_at = $8, updated_at = $9
              WHERE id = $10 AND status = 'sending'",
        )
        .bind(r.status)
        .bind(r.step)
        .bind(r.channel.as_str())
        .bind(r.channel_attempts)
        .bind(to_ms(r.next_attempt_at))
        .bind(r.reached_via.map(|c| c.as_str()))
        .bind(r.reason.as_deref())
        .bind(finished)
        .bind(now_ms)
        .bind(r.contact_id)
        .execute(&mut *conn)
        .await?;
    }
    for chunk in rows.chunks(ATTEMPTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO campaign_attempts (campaign_id, contact_id, channel, route, started_at, finished_at,
                 outcome, detail) VALUES {}",
            super::placeholders(conn, chunk.len(), 8)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.campaign_id)
                .bind(r.contact_id)
                .bind(r.tried.as_str())
                .bind(r.route.as_str())
                .bind(to_ms(r.started_at))
                .bind(now_ms)
                .bind(r.outcome)
                .bind(r.detail.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// What recovery did with contacts whose lease ran out (the hub stopped mid-send).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Calls cut by the stop: queued again.
    pub requeued: u64,
    /// Messages that may have reached the gateway: counted as sent, never sent twice.
    pub presumed_sent: u64,
}

/// The reason recorded on a message interrupted mid-send.
pub const INTERRUPTED: &str = "interrupted mid-send by a stop of the hub; not sent again, since the gateway may already have it";

/// Contacts left `sending` with an expired lease. A call cannot have survived the stop (the hub's
/// SIP stack carried it), so it is queued again. A message may or may not have reached the gateway;
/// sending it again could message the person twice, so it is counted as sent with
/// [`INTERRUPTED`] as the reason (see docs/campaigns.md, "Durability").
pub async fn recover_expired(
    conn: &mut AnyConnection,
    now: DateTime<Utc>,
) -> Result<Recovered, StorageError> {
    let now_ms = to_ms(now);
    let requeued = sqlx::query(
        "UPDATE campaign_contacts SET status = 'queued', lease_until = NULL, next_attempt_at = $1, updated_at = $1,
                reason = 'voice: call cut by a stop of the hub'
          WHERE status = 'sending' AND lease_until <= $1 AND channel = 'voice'",
    )
    .bind(now_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let presumed: Vec<(i64, i64, Option<String>)> = sqlx::query_as(
        "UPDATE campaign_contacts SET status = 'sent', lease_until = NULL, reached_via = channel,
                attempts = attempts + 1, reason = $2, finished_at = $1, updated_at = $1
          WHERE status = 'sending' AND lease_until <= $1
          RETURNING id, campaign_id, channel",
    )
    .bind(now_ms)
    .bind(INTERRUPTED)
    .fetch_all(&mut *conn)
    .await?;
    for chunk in presumed.chunks(ATTEMPTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO campaign_attempts (campaign_id, contact_id, channel, route, started_at, finished_at,
                 outcome, detail) VALUES {}",
            super::placeholders(conn, chunk.len(), 8)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, campaign, channel) in chunk {
            q = q
                .bind(*campaign)
                .bind(*id)
                .bind(channel.clone().unwrap_or_default())
                .bind("")
                .bind(now_ms)
                .bind(now_ms)
                .bind("interrupted")
                .bind(INTERRUPTED);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(Recovered {
        requeued,
        presumed_sent: presumed.len() as u64,
    })
}

/// An entry of the operators' call list: a life-support resident or a social object.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct CallListEntry {
    pub contact_id: i64,
    pub consumer_id: i64,
    pub external_id: String,
    pub name: String,
    /// JSON list of phone numbers, the first is called first.
    #[schema(value_type = Vec<String>)]
    #[sqlx(try_from = "String")]
    pub phones: JsonList,
    #[schema(value_type = bool)]
    #[sqlx(try_from = "i64")]
    pub life_support: Flag,
    #[schema(value_type = bool)]
    #[sqlx(try_from = "i64")]
    pub social_object: Flag,
    pub address: Option<String>,
    /// What the operator recorded (`reached`, `not_reached`), once done.
    pub operator_result: Option<String>,
    /// The contact's dispatch status (the robot sends after the operator or the hand-over time).
    pub status: String,
}

/// A 0/1 column as a boolean.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(transparent)]
pub struct Flag(pub bool);

impl From<i64> for Flag {
    fn from(v: i64) -> Self {
        Flag(v != 0)
    }
}

/// A JSON list of strings stored as text.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(transparent)]
pub struct JsonList(pub Vec<String>);

impl From<String> for JsonList {
    fn from(s: String) -> Self {
        JsonList(parse_json_list(&s))
    }
}

/// The call list in calling order.
pub async fn call_list(
    conn: &mut AnyConnection,
    campaign_id: i64,
) -> Result<Vec<CallListEntry>, StorageError> {
    let sql = format!(
        "SELECT cc.id AS contact_id, cc.consumer_id, c.external_id, c.name, c.phones,
                c.life_support, c.social_object,
                {ADDRESS} AS address,
                cc.operator_result, cc.status
           FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
          WHERE cc.campaign_id = $1 AND cc.priority = 0 ORDER BY cc.id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(campaign_id)
        .fetch_all(&mut *conn)
        .await?)
}

/// An operator finished a call-list entry: the robot may take the contact now.
pub async fn operator_done(
    conn: &mut AnyConnection,
    campaign_id: i64,
    contact_id: i64,
    result: &str,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let n = sqlx::query(
        "UPDATE campaign_contacts SET operator_result = $1, operator_at = $2, hold_until = NULL, updated_at = $2
          WHERE id = $3 AND campaign_id = $4 AND priority = 0",
    )
    .bind(result)
    .bind(to_ms(now))
    .bind(contact_id)
    .bind(campaign_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(StorageError::not_found(format!(
            "call-list entry {contact_id} of campaign {campaign_id}"
        )));
    }
    Ok(())
}

/// Counts of contacts by (channel, status) and of attempts by (channel, outcome).
pub async fn counts(
    conn: &mut AnyConnection,
    campaign_id: i64,
) -> Result<(Vec<(String, String, i64)>, Vec<(String, String, i64)>), StorageError> {
    let contacts: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT COALESCE(reached_via, channel, ''), status, COUNT(*) FROM campaign_contacts
          WHERE campaign_id = $1 GROUP BY COALESCE(reached_via, channel, ''), status ORDER BY 1, 2",
    )
    .bind(campaign_id)
    .fetch_all(&mut *conn)
    .await?;
    let attempts: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT channel, outcome, COUNT(*) FROM campaign_attempts WHERE campaign_id = $1
          GROUP BY channel, outcome ORDER BY 1, 2",
    )
    .bind(campaign_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok((contacts, attempts))
}

/// When the `n`-th contact (1-based, by time) was reached, if that many were.
pub async fn nth_reached_at(
    conn: &mut AnyConnection,
    campaign_id: i64,
    n: i64,
) -> Result<Option<DateTime<Utc>>, StorageError> {
    if n < 1 {
        return Ok(None);
    }
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT finished_at FROM campaign_contacts
          WHERE campaign_id = $1 AND status IN ('sent', 'delivered', 'answered', 'confirmed')
            AND finished_at IS NOT NULL
          ORDER BY finished_at LIMIT 1 OFFSET $2",
    )
    .bind(campaign_id)
    .bind(n - 1)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(t,)| from_ms(t)))
}

/// A letter to post: a consumer nothing else reached.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Letter {
    pub contact_id: i64,
    pub external_id: String,
    pub name: String,
    pub account_number: Option<String>,
    pub address: Option<String>,
    pub reason: Option<String>,
}

/// Contacts of a campaign that ended `failed`, with their postal address.
pub async fn letters(
    conn: &mut AnyConnection,
    campaign_id: i64,
) -> Result<Vec<Letter>, StorageError> {
    let sql = format!(
        "SELECT cc.id AS contact_id, c.external_id, c.name, c.account_number,
                {ADDRESS} AS address,
                cc.reason
           FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
          WHERE cc.campaign_id = $1 AND cc.status = 'failed' ORDER BY cc.id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(campaign_id)
        .fetch_all(&mut *conn)
        .await?)
}

/// Consumer fields a launch needs to plan each contact's channels, by id.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reachable {
    pub id: i64,
    pub phones: String,
    pub email: Option<String>,
    pub telegram: Option<String>,
    pub preferred_channels: String,
    pub opt_out: String,
}

/// [`Reachable`] of the given consumers (of one tenant).
pub async fn reachable(
    conn: &mut AnyConnection,
    ids: &[i64],
) -> Result<Vec<Reachable>, StorageError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let list = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT id, phones, email, telegram, preferred_channels, opt_out FROM consumers WHERE id IN ({list})"
        );
        let rows: Vec<Reachable> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?;
        out.extend(rows);
    }
    Ok(out)
}
