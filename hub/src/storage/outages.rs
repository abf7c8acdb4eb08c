//! Outages: planned or emergency, on a supply point or on sites, with their times and status.
//! Idempotent by the dispatch system's external id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, now_ms, refs::Refs, to_ms};
use crate::names::{OutageKind, OutageStatus, Utility};
use crate::types::ExternalId;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Outage {
    pub id: i64,
    pub tenant_id: i64,
    pub external_id: Option<String>,
    pub kind: OutageKind,
    pub utility: Utility,
    pub supply_point_id: Option<i64>,
    /// Sites named directly (besides those fed by the supply point).
    pub sites: Vec<i64>,
    pub status: OutageStatus,
    pub reason: String,
    pub starts_at: DateTime<Utc>,
    pub expected_end: Option<DateTime<Utc>>,
    pub actual_end: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An outage to record. With an `external_id` the call is idempotent: the same id updates the outage.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOutage {
    pub tenant: ExternalId,
    /// The dispatch system's id of the record.
    #[serde(default)]
    pub external_id: Option<ExternalId>,
    pub kind: OutageKind,
    pub utility: Utility,
    /// External id of the supply point that is off (everything it feeds is affected).
    #[serde(default)]
    pub supply_point: Option<ExternalId>,
    /// External ids of sites that are off (with all their sub-sites).
    #[serde(default)]
    pub sites: Vec<ExternalId>,
    /// `planned` or `active` by default from `kind` and `starts_at`; `closed` with `actual_end` closes it.
    #[serde(default)]
    pub status: Option<OutageStatus>,
    #[serde(default)]
    pub reason: String,
    pub starts_at: DateTime<Utc>,
    #[serde(default)]
    pub expected_end: Option<DateTime<Utc>>,
    #[serde(default)]
    pub actual_end: Option<DateTime<Utc>>,
}

/// What an upsert did, so the caller publishes the right event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Opened,
    Updated,
    Closed,
    Unchanged,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    external_id: Option<String>,
    kind: String,
    utility: String,
    supply_point_id: Option<i64>,
    status: String,
    reason: String,
    starts_at: i64,
    expected_end: Option<i64>,
    actual_end: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

impl Row {
    fn into_outage(self, sites: Vec<i64>) -> Result<Outage, StorageError> {
        Ok(Outage {
            id: self.id,
            tenant_id: self.tenant_id,
            external_id: self.external_id,
            kind: super::parse_name("kind", &self.kind)?,
            utility: super::parse_name("utility", &self.utility)?,
            supply_point_id: self.supply_point_id,
            sites,
            status: super::parse_name("status", &self.status)?,
            reason: self.reason,
            starts_at: from_ms(self.starts_at),
            expected_end: self.expected_end.map(from_ms),
            actual_end: self.actual_end.map(from_ms),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        })
    }
}

const COLUMNS: &str = "id, tenant_id, external_id, kind, utility, supply_point_id, status, reason, starts_at, \
                       expected_end, actual_end, created_at, updated_at";

impl NewOutage {
    fn resolved_status(&self, now: DateTime<Utc>) -> OutageStatus {
        match self.status {
            Some(s) => s,
            None if self.actual_end.is_some() => OutageStatus::Closed,
            None if self.kind == OutageKind::Planned && self.starts_at > now => {
                OutageStatus::Planned
            }
            None => OutageStatus::Active,
        }
    }
}

pub async fn upsert(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    o: &NewOutage,
) -> Result<(Outage, Change), StorageError> {
    if o.supply_point.is_none() && o.sites.is_empty() {
        return Err(StorageError::invalid(
            "supply_point",
            "name a supply point or at least one site",
        ));
    }
    if o.expected_end.is_some_and(|e| e <= o.starts_at) {
        return Err(StorageError::invalid(
            "expected_end",
            "must be after starts_at",
        ));
    }
    if o.actual_end.is_some_and(|e| e < o.starts_at) {
        return Err(StorageError::invalid(
            "actual_end",
            "must not be before starts_at",
        ));
    }
    let status = o.resolved_status(Utc::now());
    if status == OutageStatus::Closed && o.actual_end.is_none() {
        return Err(StorageError::invalid(
            "actual_end",
            "a closed outage needs its actual end",
        ));
    }
    let tenant_id = refs.tenant(conn, o.tenant.as_str()).await?;
    let point_id = match &o.supply_point {
        Some(p) => Some(
            refs.supply_point(conn, "supply_point", tenant_id, p.as_str())
                .await?,
        ),
        None => None,
    };
    let mut site_ids = Vec::new();
    for (i, s) in o.sites.iter().enumerate() {
        site_ids.push(
            refs.site(conn, &format!("sites[{i}]"), tenant_id, s.as_str())
                .await?,
        );
    }
    site_ids.sort_unstable();
    site_ids.dedup();

    let previous = match &o.external_id {
        Some(ext) => {
            let sql =
                format!("SELECT {COLUMNS} FROM outages WHERE tenant_id = $1 AND external_id = $2");
            let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(tenant_id)
                .bind(ext.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(r) => {
                    let sites = sites_of(conn, r.id).await?;
                    Some(r.into_outage(sites)?)
                }
                None => None,
            }
        }
        None => None,
    };
    let now = now_ms();
    let row: Row = match &previous {
        None => {
            let sql = format!(
                "INSERT INTO outages (tenant_id, external_id, kind, utility, supply_point_id, status, reason,
                   starts_at, expected_end, actual_end, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING {COLUMNS}"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(tenant_id)
                .bind(o.external_id.as_ref().map(|e| e.as_str().to_owned()))
                .bind(o.kind.as_str())
                .bind(o.utility.as_str())
                .bind(point_id)
                .bind(status.as_str())
                .bind(&o.reason)
                .bind(to_ms(o.starts_at))
                .bind(o.expected_end.map(to_ms))
                .bind(o.actual_end.map(to_ms))
                .bind(now)
                .fetch_one(&mut *conn)
                .await?
        }
        Some(prev) => {
            let sql = format!(
                "UPDATE outages SET kind = $1, utility = $2, supply_point_id = $3, status = $4, reason = $5,
                   starts_at = $6, expected_end = $7, actual_end = $8, updated_at = $9 WHERE id = $10
                 RETURNING {COLUMNS}"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(o.kind.as_str())
                .bind(o.utility.as_str())
                .bind(point_id)
                .bind(status.as_str())
                .bind(&o.reason)
                .bind(to_ms(o.starts_at))
                .bind(o.expected_end.map(to_ms))
                .bind(o.actual_end.map(to_ms))
                .bind(now)
                .bind(prev.id)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    sqlx::query("DELETE FROM outage_sites WHERE outage_id = $1")
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    for s in &site_ids {
        sqlx::query("INSERT INTO outage_sites (outage_id, site_id) VALUES ($1, $2)")
            .bind(row.id)
            .bind(*s)
            .execute(&mut *conn)
            .await?;
    }
    let outage = row.into_outage(site_ids)?;
    let ended = |s: OutageStatus| matches!(s, OutageStatus::Closed | OutageStatus::Cancelled);
    let change = match &previous {
        None => Change::Opened,
        Some(p) if !ended(p.status) && ended(outage.status) => Change::Closed,
        Some(p) if same(p, &outage) => Change::Unchanged,
        Some(_) => Change::Updated,
    };
    Ok((outage, change))
}

fn same(a: &Outage, b: &Outage) -> bool {
    (
        a.kind,
        a.utility,
        a.supply_point_id,
        &a.sites,
        a.status,
        &a.reason,
        a.starts_at,
        a.expected_end,
        a.actual_end,
    ) == (
        b.kind,
        b.utility,
        b.supply_point_id,
        &b.sites,
        b.status,
        &b.reason,
        b.starts_at,
        b.expected_end,
        b.actual_end,
    )
}

async fn sites_of(conn: &mut AnyConnection, id: i64) -> Result<Vec<i64>, StorageError> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT site_id FROM outage_sites WHERE outage_id = $1 ORDER BY site_id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Outage, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM outages WHERE id = $1");
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StorageError::not_found(format!("outage {id}")))?;
    let sites = sites_of(conn, id).await?;
    row.into_outage(sites)
}

/// Ends an outage now (or at `at`): status closed with its actual end.
pub async fn close(
    conn: &mut AnyConnection,
    id: i64,
    at: Option<DateTime<Utc>>,
) -> Result<(Outage, Change), StorageError> {
    let current = get(conn, id).await?;
    if matches!(
        current.status,
        OutageStatus::Closed | OutageStatus::Cancelled
    ) {
        return Ok((current, Change::Unchanged));
    }
    let end = at.unwrap_or_else(Utc::now).max(current.starts_at);
    sqlx::query("UPDATE outages SET status = $1, actual_end = $2, updated_at = $3 WHERE id = $4")
        .bind(OutageStatus::Closed.as_str())
        .bind(to_ms(end))
        .bind(now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok((get(conn, id).await?, Change::Closed))
}

#[derive(Debug, Default, Clone)]
pub struct OutageFilter {
    pub tenant_id: Option<i64>,
    pub status: Option<OutageStatus>,
    pub kind: Option<OutageKind>,
    pub supply_point_id: Option<i64>,
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &OutageFilter,
    page: PageRequest,
) -> Result<Vec<Outage>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM outages WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2)
           AND ($3 IS NULL OR status = $3) AND ($4 IS NULL OR kind = $4) AND ($5 IS NULL OR supply_point_id = $5)
         ORDER BY id LIMIT $6"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(f.tenant_id)
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.kind.map(|k| k.as_str()))
        .bind(f.supply_point_id)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let sites = sites_of(conn, r.id).await?;
        out.push(r.into_outage(sites)?);
    }
    Ok(out)
}

/// The event payload rules and the UI see.
pub fn info(o: &Outage, tenant: &str, supply_point: Option<String>) -> rules::OutageInfo {
    rules::OutageInfo {
        id: o.id,
        tenant: tenant.to_owned(),
        external_id: o.external_id.clone(),
        kind: o.kind.as_str().to_owned(),
        utility: o.utility.as_str().to_owned(),
        supply_point,
        status: o.status.as_str().to_owned(),
        reason: o.reason.clone(),
        starts_at: o.starts_at,
        expected_end: o.expected_end,
        actual_end: o.actual_end,
    }
}
