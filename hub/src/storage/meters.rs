//! Consumers' meters (water, heat, power) and their readings. The IVR's meter-readings robot reads an
//! account's meters and stores the readings a caller confirmed, linked to the call; the API lists both.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, now_ms, refs::Refs};
use crate::types::ExternalId;

/// What a meter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeterKind {
    ColdWater,
    HotWater,
    Heat,
    Power,
}

impl MeterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MeterKind::ColdWater => "cold_water",
            MeterKind::HotWater => "hot_water",
            MeterKind::Heat => "heat",
            MeterKind::Power => "power",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cold_water" => Some(MeterKind::ColdWater),
            "hot_water" => Some(MeterKind::HotWater),
            "heat" => Some(MeterKind::Heat),
            "power" => Some(MeterKind::Power),
            _ => None,
        }
    }
}

/// One meter of a consumer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Meter {
    pub id: i64,
    pub tenant_id: i64,
    pub consumer_id: i64,
    /// The consumer's personal account.
    pub account_number: Option<String>,
    /// Where it is installed (the consumer's first site unless said).
    pub site_id: Option<i64>,
    pub kind: MeterKind,
    pub serial: String,
    /// The last reading and when it was taken.
    pub last_value: Option<f64>,
    pub last_at: Option<DateTime<Utc>>,
    /// The usual consumption per month (the average increase of its readings, else the one given).
    pub monthly_increase: Option<f64>,
}

/// A meter to create or update (upsert by tenant and serial).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMeter {
    pub tenant: ExternalId,
    /// The consumer's external id.
    pub consumer: ExternalId,
    pub kind: MeterKind,
    pub serial: String,
    /// The reading at installation or the last one known from elsewhere.
    #[serde(default)]
    pub last_value: Option<f64>,
    /// The usual consumption per month, until readings tell.
    #[serde(default)]
    pub monthly_increase: Option<f64>,
}

type MeterRow = (
    i64,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    String,
    String,
    Option<f64>,
    Option<i64>,
    Option<f64>,
);

const METER_COLUMNS: &str = "m.id, m.tenant_id, m.consumer_id, c.account_number, m.site_id, m.kind, m.serial, \
                             m.last_value, m.last_at, m.monthly_increase";

fn meter(r: MeterRow) -> Result<Meter, StorageError> {
    Ok(Meter {
        id: r.0,
        tenant_id: r.1,
        consumer_id: r.2,
        account_number: r.3,
        site_id: r.4,
        kind: MeterKind::parse(&r.5)
            .ok_or_else(|| StorageError::invalid("kind", format!("stored kind `{}`", r.5)))?,
        serial: r.6,
        last_value: r.7,
        last_at: r.8.map(from_ms),
        monthly_increase: r.9,
    })
}

/// Creates or updates a meter; `refs` may be scoped to the writer's tenant.
pub async fn upsert(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    m: &NewMeter,
) -> Result<Meter, StorageError> {
    let serial = m.serial.trim();
    if serial.is_empty() || serial.chars().count() > 40 {
        return Err(StorageError::invalid("serial", "1-40 characters"));
    }
    for (field, v) in [
        ("last_value", m.last_value),
        ("monthly_increase", m.monthly_increase),
    ] {
        if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(StorageError::invalid(field, "a number not below 0"));
        }
    }
    let tenant_id = refs.tenant(conn, m.tenant.as_str()).await?;
    let consumer: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM consumers WHERE tenant_id = $1 AND external_id = $2")
            .bind(tenant_id)
            .bind(m.consumer.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let (consumer_id,) = consumer.ok_or_else(|| {
        StorageError::invalid("consumer", format!("no consumer `{}`", m.consumer))
    })?;
    let site: Option<(i64,)> = sqlx::query_as(
        "SELECT MIN(site_id) FROM consumer_sites WHERE consumer_id = $1 HAVING COUNT(*) > 0",
    )
    .bind(consumer_id)
    .fetch_optional(&mut *conn)
    .await?;
    let last_at = m.last_value.map(|_| now_ms());
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO meters (tenant_id, consumer_id, site_id, kind, serial, last_value, last_at, monthly_increase)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, serial) DO UPDATE SET consumer_id = excluded.consumer_id,
           site_id = excluded.site_id, kind = excluded.kind,
           last_value = COALESCE(excluded.last_value, meters.last_value),
           last_at = COALESCE(excluded.last_at, meters.last_at),
           monthly_increase = COALESCE(excluded.monthly_increase, meters.monthly_increase)
         RETURNING id",
    )
    .bind(tenant_id)
    .bind(consumer_id)
    .bind(site.map(|s| s.0))
    .bind(m.kind.as_str())
    .bind(serial)
    .bind(m.last_value)
    .bind(last_at)
    .bind(m.monthly_increase)
    .fetch_one(&mut *conn)
    .await?;
    get(conn, id).await
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Meter, StorageError> {
    let sql = format!(
        "SELECT {METER_COLUMNS} FROM meters m JOIN consumers c ON c.id = m.consumer_id WHERE m.id = $1"
    );
    let row: Option<MeterRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    meter(row.ok_or_else(|| StorageError::not_found(format!("meter {id}")))?)
}

/// Meters of one tenant or all, of one account or all, in id order.
pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    account: Option<&str>,
    page: PageRequest,
) -> Result<Vec<Meter>, StorageError> {
    let sql = format!(
        "SELECT {METER_COLUMNS} FROM meters m JOIN consumers c ON c.id = m.consumer_id
         WHERE m.id > $1 AND ($2 IS NULL OR m.tenant_id = $2) AND ($3 IS NULL OR c.account_number = $3)
         ORDER BY m.id LIMIT $4"
    );
    let rows: Vec<MeterRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(tenant_id)
        .bind(account)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = rows.into_iter().map(meter).collect::<Result<Vec<_>, _>>()?;
    for m in &mut out {
        if let Some(avg) = average_monthly_increase(conn, m.id).await? {
            m.monthly_increase = Some(avg);
        }
    }
    Ok(out)
}

/// The consumer holding personal account `account` (of `tenant` when given) and their meters.
/// `None` when no consumer has that account.
pub async fn by_account(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    account: &str,
) -> Result<Option<(i64, Vec<Meter>)>, StorageError> {
    let consumer: Option<(i64,)> = sqlx::query_as(
        "SELECT id FROM consumers WHERE account_number = $1 AND ($2 IS NULL OR tenant_id = $2)
         ORDER BY id LIMIT 1",
    )
    .bind(account)
    .bind(tenant_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((consumer_id,)) = consumer else {
        return Ok(None);
    };
    let page = PageRequest {
        after: 0,
        limit: 100,
    };
    let meters = list(conn, tenant_id, Some(account), page)
        .await?
        .into_iter()
        .filter(|m| m.consumer_id == consumer_id)
        .collect();
    Ok(Some((consumer_id, meters)))
}

/// The average increase per 30 days over the meter's readings, when they span at least 20 days.
async fn average_monthly_increase(
    conn: &mut AnyConnection,
    meter_id: i64,
) -> Result<Option<f64>, StorageError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT MIN(id), MAX(id) FROM meter_readings WHERE meter_id = $1 HAVING COUNT(*) > 1",
    )
    .bind(meter_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((first, last)) = row else {
        return Ok(None);
    };
    let ends: Vec<(f64, i64)> =
        sqlx::query_as("SELECT value, at FROM meter_readings WHERE id = $1 OR id = $2 ORDER BY id")
            .bind(first)
            .bind(last)
            .fetch_all(&mut *conn)
            .await?;
    let [(v0, t0), (v1, t1)] = ends.as_slice() else {
        return Ok(None);
    };
    let days = (t1 - t0) as f64 / 86_400_000.0;
    Ok((days >= 20.0 && v1 >= v0).then(|| (v1 - v0) / days * 30.0))
}

/// One reading as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MeterReading {
    pub id: i64,
    pub meter_id: i64,
    pub serial: String,
    pub kind: String,
    pub account_number: Option<String>,
    pub value: f64,
    pub at: DateTime<Utc>,
    /// The call it was given in (`ivr` readings).
    pub call_id: Option<i64>,
    /// `ivr` (the meter-readings robot).
    pub source: String,
    /// The caller kept it after the robot questioned it (lower than the last one, or far above the
    /// usual consumption).
    pub questioned: bool,
}

/// Stores a reading and makes it the meter's last one. `sip_call_id` links it to the newest call
/// of that SIP Call-ID (the call record is written when the call starts, long before).
pub async fn add_reading(
    conn: &mut AnyConnection,
    meter_id: i64,
    value: f64,
    sip_call_id: Option<&str>,
    source: &str,
    questioned: bool,
) -> Result<i64, StorageError> {
    if !value.is_finite() || value < 0.0 {
        return Err(StorageError::invalid("value", "a number not below 0"));
    }
    let at = now_ms();
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO meter_readings (meter_id, value, at, call_id, source, questioned)
         VALUES ($1, $2, $3, (SELECT MAX(id) FROM calls WHERE sip_call_id = $4), $5, $6) RETURNING id",
    )
    .bind(meter_id)
    .bind(value)
    .bind(at)
    .bind(sip_call_id)
    .bind(source)
    .bind(i64::from(questioned))
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("UPDATE meters SET last_value = $1, last_at = $2 WHERE id = $3")
        .bind(value)
        .bind(at)
        .bind(meter_id)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// Which readings to list.
#[derive(Debug, Clone, Default)]
pub struct ReadingFilter {
    pub tenant_id: Option<i64>,
    pub account: Option<String>,
    pub meter_id: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub call_id: Option<i64>,
}

type ReadingRow = (
    i64,
    i64,
    String,
    String,
    Option<String>,
    f64,
    i64,
    Option<i64>,
    String,
    i64,
);

/// Readings, newest first; `after` is "older than this id" when non-zero.
pub async fn readings(
    conn: &mut AnyConnection,
    f: &ReadingFilter,
    page: PageRequest,
) -> Result<Vec<MeterReading>, StorageError> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    let rows: Vec<ReadingRow> = sqlx::query_as(
        "SELECT r.id, r.meter_id, m.serial, m.kind, c.account_number, r.value, r.at, r.call_id, r.source, r.questioned
         FROM meter_readings r JOIN meters m ON m.id = r.meter_id JOIN consumers c ON c.id = m.consumer_id
         WHERE r.id < $1 AND ($2 IS NULL OR m.tenant_id = $2) AND ($3 IS NULL OR c.account_number = $3)
           AND ($4 IS NULL OR r.meter_id = $4) AND ($5 IS NULL OR r.at >= $5) AND ($6 IS NULL OR r.call_id = $6)
         ORDER BY r.id DESC LIMIT $7",
    )
    .bind(before)
    .bind(f.tenant_id)
    .bind(f.account.clone())
    .bind(f.meter_id)
    .bind(f.since.map(super::to_ms))
    .bind(f.call_id)
    .bind(page.limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| MeterReading {
            id: r.0,
            meter_id: r.1,
            serial: r.2,
            kind: r.3,
            account_number: r.4,
            value: r.5,
            at: from_ms(r.6),
            call_id: r.7,
            source: r.8,
            questioned: r.9 != 0,
        })
        .collect())
}

/// The demo's meters: cold and hot water for every resident with an account of `tenant`, with
/// deterministic serials, last readings and usual consumption. Existing meters are left alone.
pub async fn seed_demo(conn: &mut AnyConnection, tenant: &str) -> Result<u64, StorageError> {
    let mut added = 0;
    for (kind, prefix, base, monthly) in [("cold_water", "CW", 100, 6), ("hot_water", "HW", 50, 4)]
    {
        let sql = format!(
            "INSERT INTO meters (tenant_id, consumer_id, site_id, kind, serial, last_value, last_at, monthly_increase)
             SELECT c.tenant_id, c.id, (SELECT MIN(cs.site_id) FROM consumer_sites cs WHERE cs.consumer_id = c.id),
                    '{kind}', '{prefix}-' || c.account_number, {base} + (c.id % 400) + 0.5, $1, {monthly} + (c.id % 3)
             FROM consumers c JOIN tenants t ON t.id = c.tenant_id
             WHERE t.external_id = $2 AND c.kind = 'resident' AND c.account_number IS NOT NULL
             ON CONFLICT (tenant_id, serial) DO NOTHING"
        );
        added += sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms() - 30 * 86_400_000)
            .bind(tenant)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meters_by_account_and_readings_linked_to_the_call() {
        let (db, _d) = crate::storage::test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        let consumer = serde_json::from_value(serde_json::json!({
            "tenant": "t", "external_id": "c1", "kind": "resident", "name": "Ivanova",
            "account_number": "5102"
        }))
        .unwrap();
        crate::storage::consumers::upsert_many(&mut c, &mut Refs::new(), &[consumer])
            .await
            .unwrap();
        let new: NewMeter = serde_json::from_value(serde_json::json!({
            "tenant": "t", "consumer": "c1", "kind": "cold_water", "serial": "CW-1",
            "last_value": 120.5, "monthly_increase": 6.0
        }))
        .unwrap();
        let m = upsert(&mut c, &mut Refs::new(), &new).await.unwrap();
        assert_eq!(m.account_number.as_deref(), Some("5102"));
        let bad = NewMeter {
            serial: " ".into(),
            ..new.clone()
        };
        assert!(upsert(&mut c, &mut Refs::new(), &bad).await.is_err());

        assert_eq!(by_account(&mut c, None, "9999").await.unwrap(), None);
        let (_, meters) = by_account(&mut c, None, "5102").await.unwrap().unwrap();
        assert_eq!(meters, vec![m.clone()]);

        let call = crate::telephony::store::insert(&mut c, "abc@x", "+79160000001", "ivr", 1)
            .await
            .unwrap();
        add_reading(&mut c, m.id, 127.3, Some("abc@x"), "ivr", false)
            .await
            .unwrap();
        let list = readings(
            &mut c,
            &ReadingFilter {
                account: Some("5102".into()),
                ..ReadingFilter::default()
            },
            PageRequest {
                after: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].value, list[0].call_id, list[0].source.as_str()),
            (127.3, Some(call), "ivr")
        );
        assert_eq!(get(&mut c, m.id).await.unwrap().last_value, Some(127.3));
        assert!(
            add_reading(&mut c, m.id, f64::NAN, None, "ivr", false)
                .await
                .is_err()
        );
        // The demo's meters: cold and hot water per resident with an account, once.
        assert_eq!(seed_demo(&mut c, "t").await.unwrap(), 2);
        assert_eq!(seed_demo(&mut c, "t").await.unwrap(), 0);
        let page = PageRequest {
            after: 0,
            limit: 10,
        };
        let all = super::list(&mut c, None, Some("5102"), page).await.unwrap();
        let serials: Vec<&str> = all.iter().map(|m| m.serial.as_str()).collect();
        assert_eq!(serials, ["CW-1", "CW-5102", "HW-5102"]);
        assert!(all[1].last_value.is_some() && all[1].monthly_increase.is_some());
    }
}
