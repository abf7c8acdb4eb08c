//! A campaign's results: counts by channel and outcome, how long it took to reach 50, 90 and 100 % of
//! its contacts, and the CSV exports (the report, every contact, the postal letters for those nothing
//! else reached).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;

use crate::storage::campaigns::{self, Campaign, REACHED};
use crate::storage::{PageRequest, StorageError, from_ms};

/// Contacts by status; contacts and attempts by channel.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub campaign: i64,
    pub status: String,
    pub contacts: i64,
    /// Contacts by status (queued, sending, sent, delivered, answered, confirmed, failed, cancelled).
    #[schema(value_type = Object)]
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Contacts by the channel that reached them (or that is being tried) and status.
    pub by_channel: Vec<Count>,
    /// Send attempts by channel and outcome (busy, no_answer, failed...).
    pub attempts: Vec<Count>,
    pub reached: i64,
    /// Seconds from the campaign's start until 50 %, 90 % and 100 % of the contacts were reached.
    pub seconds_to_50: Option<f64>,
    pub seconds_to_90: Option<f64>,
    pub seconds_to_100: Option<f64>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub deadline_at_risk: bool,
    pub override_quiet_hours: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Count {
    pub channel: String,
    pub outcome: String,
    pub count: i64,
}

pub async fn report(conn: &mut AnyConnection, c: &Campaign) -> Result<Report, StorageError> {
    let (contacts, attempts) = campaigns::counts(conn, c.id).await?;
    let mut by_status = std::collections::BTreeMap::new();
    for (_, status, n) in &contacts {
        *by_status.entry(status.clone()).or_insert(0) += n;
    }
    let total: i64 = by_status.values().sum();
    let reached: i64 = REACHED
        .iter()
        .map(|s| by_status.get(*s).copied().unwrap_or(0))
        .sum();
    let start = c.starts_at.unwrap_or(c.created_at);
    let at = |pct: i64| {
        let n = (total * pct + 99) / 100;
        (n, pct)
    };
    let mut times = Vec::new();
    for pct in [50, 90, 100] {
        let (n, _) = at(pct);
        let t = if total > 0 && n <= reached {
            campaigns::nth_reached_at(conn, c.id, n)
                .await?
                .map(|t| ((t - start).num_milliseconds().max(0) as f64) / 1000.0)
        } else {
            None
        };
        times.push(t);
    }
    Ok(Report {
        campaign: c.id,
        status: c.status.clone(),
        contacts: total,
        by_status,
        by_channel: contacts
            .into_iter()
            .map(|(channel, outcome, count)| Count {
                channel,
                outcome,
                count,
            })
            .collect(),
        attempts: attempts
            .into_iter()
            .map(|(channel, outcome, count)| Count {
                channel,
                outcome,
                count,
            })
            .collect(),
        reached,
        seconds_to_50: times[0],
        seconds_to_90: times[1],
        seconds_to_100: times[2],
        deadline_at: c.deadline_at,
        deadline_at_risk: c.deadline_at_risk,
        override_quiet_hours: c.override_quiet_hours,
    })
}

fn csv_of(rows: Vec<Vec<String>>) -> Result<String, StorageError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.write_record(&r)
            .map_err(|e| StorageError::invalid("csv", e.to_string()))?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| StorageError::invalid("csv", e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The report as CSV: `section,channel,outcome,count` rows, then the times.
pub fn report_csv(r: &Report) -> Result<String, StorageError> {
    let mut rows = vec![vec![
        "section".into(),
        "channel".into(),
        "outcome".into(),
        "count".into(),
    ]];
    for (status, n) in &r.by_status {
        rows.push(vec![
            "contacts".into(),
            String::new(),
            status.clone(),
            n.to_string(),
        ]);
    }
    for c in &r.by_channel {
        rows.push(vec![
            "contacts_by_channel".into(),
            c.channel.clone(),
            c.outcome.clone(),
            c.count.to_string(),
        ]);
    }
    for c in &r.attempts {
        rows.push(vec![
            "attempts".into(),
            c.channel.clone(),
            c.outcome.clone(),
            c.count.to_string(),
        ]);
    }
    for (name, v) in [
        ("seconds_to_50", r.seconds_to_50),
        ("seconds_to_90", r.seconds_to_90),
        ("seconds_to_100", r.seconds_to_100),
    ] {
        rows.push(vec![
            "time".into(),
            String::new(),
            name.into(),
            v.map(|s| format!("{s:.1}")).unwrap_or_default(),
        ]);
    }
    csv_of(rows)
}

/// Every contact as CSV, in calling order.
pub async fn contacts_csv(
    conn: &mut AnyConnection,
    campaign_id: i64,
) -> Result<String, StorageError> {
    let mut rows = vec![
        [
            "contact",
            "consumer",
            "name",
            "priority",
            "status",
            "channel",
            "reached_via",
            "attempts",
            "reason",
            "finished_at",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>(),
    ];
    let mut page = PageRequest {
        after: 0,
        limit: 10_000,
    };
    loop {
        let batch = campaigns::contacts(conn, campaign_id, page).await?;
        let Some(last) = batch.last() else { break };
        page.after = last.id;
        let full = batch.len() as i64 == page.limit;
        for c in batch {
            rows.push(vec![
                c.id.to_string(),
                c.external_id,
                c.name,
                c.priority.to_string(),
                c.status,
                c.channel.unwrap_or_default(),
                c.reached_via.unwrap_or_default(),
                c.attempts.to_string(),
                c.reason.unwrap_or_default(),
                c.finished_at_ms
                    .map(|t| from_ms(t).to_rfc3339())
                    .unwrap_or_default(),
            ]);
        }
        if !full {
            break;
        }
    }
    csv_of(rows)
}

/// The postal letter list: consumers no channel reached, with their address.
pub async fn letters_csv(
    conn: &mut AnyConnection,
    campaign_id: i64,
) -> Result<String, StorageError> {
    let mut rows = vec![
        [
            "contact", "consumer", "name", "account", "address", "reason",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<_>>(),
    ];
    for l in campaigns::letters(conn, campaign_id).await? {
        rows.push(vec![
            l.contact_id.to_string(),
            l.external_id,
            l.name,
            l.account_number.unwrap_or_default(),
            l.address.unwrap_or_default(),
            l.reason.unwrap_or_default(),
        ]);
    }
    csv_of(rows)
}
