//! Sensors (pressure, temperature, flow...) and their readings: the last value per sensor and a
//! history table trimmed by the retention setting.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, refs::Refs, to_ms};
use crate::names::SensorKind;
use crate::types::ExternalId;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Sensor {
    pub id: i64,
    pub tenant_id: i64,
    /// Unique across tenants: it is what MQTT topics and Modbus maps name.
    pub external_id: String,
    pub kind: SensorKind,
    pub unit: String,
    pub site_id: Option<i64>,
    pub supply_point_id: Option<i64>,
    /// Seconds of silence after which the sensor is reported offline.
    pub offline_after_s: i64,
    pub last_value: Option<f64>,
    pub last_at: Option<DateTime<Utc>>,
    /// Reporting now: false once silent longer than `offline_after_s` or its device is down.
    pub online: bool,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSensor {
    pub tenant: ExternalId,
    pub external_id: ExternalId,
    pub kind: SensorKind,
    /// `bar`, `°C`, `m3/h`, ...
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub site: Option<ExternalId>,
    #[serde(default)]
    pub supply_point: Option<ExternalId>,
    #[serde(default = "default_offline_after_s")]
    pub offline_after_s: i64,
}

fn default_offline_after_s() -> i64 {
    300
}

/// One stored reading.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reading {
    pub at: DateTime<Utc>,
    pub value: f64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    external_id: String,
    kind: String,
    unit: String,
    site_id: Option<i64>,
    supply_point_id: Option<i64>,
    offline_after_s: i64,
    last_value: Option<f64>,
    last_at: Option<i64>,
    online: i64,
}

impl TryFrom<Row> for Sensor {
    type Error = StorageError;
    fn try_from(r: Row) -> Result<Self, StorageError> {
        Ok(Sensor {
            id: r.id,
            tenant_id: r.tenant_id,
            kind: super::parse_name("kind", &r.kind)?,
            external_id: r.external_id,
            unit: r.unit,
            site_id: r.site_id,
            supply_point_id: r.supply_point_id,
            offline_after_s: r.offline_after_s,
            last_value: r.last_value,
            last_at: r.last_at.map(from_ms),
            online: r.online != 0,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, external_id, kind, unit, site_id, supply_point_id, offline_after_s, last_value, last_at, online";

pub async fn upsert(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    s: &NewSensor,
) -> Result<Sensor, StorageError> {
    if !(1..=86_400 * 7).contains(&s.offline_after_s) {
        return Err(StorageError::invalid(
            "offline_after_s",
            "between 1 second and 7 days",
        ));
    }
    let tenant_id = refs.tenant(conn, s.tenant.as_str()).await?;
    let site_id = match &s.site {
        Some(x) => Some(refs.site(conn, "site", tenant_id, x.as_str()).await?),
        None => None,
    };
    let point_id = match &s.supply_point {
        Some(x) => Some(
            refs.supply_point(conn, "supply_point", tenant_id, x.as_str())
                .await?,
        ),
        None => None,
    };
    let owner: Option<(i64,)> =
        sqlx::query_as("SELECT tenant_id FROM sensors WHERE external_id = $1")
            .bind(s.external_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    if owner.is_some_and(|(t,)| t != tenant_id) {
        return Err(StorageError::Conflict {
            what: format!("sensor `{}` of another tenant", s.external_id),
        });
    }
    let sql = format!(
        "INSERT INTO sensors (tenant_id, external_id, kind, unit, site_id, supply_point_id, offline_after_s)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (external_id) DO UPDATE SET kind = excluded.kind, unit = excluded.unit,
           site_id = excluded.site_id, supply_point_id = excluded.supply_point_id,
           offline_after_s = excluded.offline_after_s
         RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(s.external_id.as_str())
        .bind(s.kind.as_str())
        .bind(&s.unit)
        .bind(site_id)
        .bind(point_id)
        .bind(s.offline_after_s)
        .fetch_one(&mut *conn)
        .await?;
    row.try_into()
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Sensor, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM sensors WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StorageError::not_found(format!("sensor {id}")))?
        .try_into()
}

pub async fn by_external(
    conn: &mut AnyConnection,
    external_id: &str,
) -> Result<Sensor, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM sensors WHERE external_id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(external_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StorageError::not_found(format!("sensor `{external_id}`")))?
        .try_into()
}

#[derive(Debug, Default, Clone)]
pub struct SensorFilter {
    pub tenant_id: Option<i64>,
    pub kind: Option<SensorKind>,
    pub site_id: Option<i64>,
    pub supply_point_id: Option<i64>,
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &SensorFilter,
    page: PageRequest,
) -> Result<Vec<Sensor>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sensors WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2)
           AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR site_id = $4) AND ($5 IS NULL OR supply_point_id = $5)
         ORDER BY id LIMIT $6"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(f.tenant_id)
        .bind(f.kind.map(|k| k.as_str()))
        .bind(f.site_id)
        .bind(f.supply_point_id)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

pub async fn delete(conn: &mut AnyConnection, id: i64) -> Result<(), StorageError> {
    let done = sqlx::query("DELETE FROM sensors WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::not_found(format!("sensor {id}")));
    }
    Ok(())
}

/// Stores a reading in the history and as the sensor's last value (unless an older reading arrives late).
pub async fn record_reading(
    conn: &mut AnyConnection,
    sensor_id: i64,
    at: DateTime<Utc>,
    value: f64,
) -> Result<(), StorageError> {
    if !value.is_finite() {
        return Err(StorageError::invalid("value", "must be a finite number"));
    }
    let at = to_ms(at);
    sqlx::query("INSERT INTO readings (sensor_id, at, value) VALUES ($1, $2, $3)")
        .bind(sensor_id)
        .bind(at)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE sensors SET last_value = $1, last_at = $2 WHERE id = $3 AND (last_at IS NULL OR last_at <= $2)")
        .bind(value)
        .bind(at)
        .bind(sensor_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One reading to store: sensor row id, time in UTC milliseconds, value.
pub type ReadingRow = (i64, i64, f64);

/// Rows per statement. A batch is written in chunks of exactly these sizes, the last chunk padded with
/// rows that the statements skip, so that a connection prepares at most these few statements:
/// with one statement text per batch size, every round prepared a new INSERT and UPDATE and churned the
/// connection's statement cache. 4,000 rows of 3 values stay under SQLite's 32,766 bound values.
const CHUNK_ROWS: [usize; 3] = [16, 256, 4000];

/// The rows of the statement that writes `n` rows (at most the largest size).
fn chunk_rows(n: usize) -> usize {
    CHUNK_ROWS
        .into_iter()
        .find(|&rows| rows >= n)
        .unwrap_or(CHUNK_ROWS[CHUNK_ROWS.len() - 1])
}

/// `(?, ?, ?), ...` on SQLite, `(CAST($1 AS BIGINT), ...)` on PostgreSQL: `rows` rows of an id, a time
/// and a value.
fn value_rows(sqlite: bool, rows: usize) -> String {
    let mut values = String::with_capacity(rows * 64);
    for i in 0..rows {
        if i > 0 {
            values.push_str(", ");
        }
        if sqlite {
            values.push_str("(?, ?, ?)");
        } else {
            let n = i * 3;
            let _ = write!(
                values,
                "(CAST(${} AS BIGINT), CAST(${} AS BIGINT), CAST(${} AS DOUBLE PRECISION))",
                n + 1,
                n + 2,
                n + 3
            );
        }
    }
    values
}

/// The INSERT into the history and the UPDATE of the last values for `rows` rows, built once per
/// back-end and size.
fn statements(sqlite: bool, rows: usize) -> &'static (String, String) {
    static SQL: [OnceLock<Vec<(String, String)>>; 2] = [OnceLock::new(), OnceLock::new()];
    let all = SQL[usize::from(sqlite)].get_or_init(|| {
        CHUNK_ROWS
            .into_iter()
            .map(|rows| {
                let values = value_rows(sqlite, rows);
                (
                    format!(
                        "INSERT INTO readings (sensor_id, at, value)
                         SELECT column1, column2, column3 FROM (VALUES {values}) AS v
                         WHERE column1 IS NOT NULL"
                    ),
                    format!(
                        "WITH v(id, at, value) AS (VALUES {values})
                         UPDATE sensors SET last_value = v.value, last_at = v.at FROM v
                         WHERE sensors.id = v.id AND (sensors.last_at IS NULL OR sensors.last_at <= v.at)"
                    ),
                )
            })
            .collect()
    });
    let i = CHUNK_ROWS.iter().position(|&r| r == rows).unwrap_or(0);
    &all[i]
}

/// Runs one of `statements` over `chunk`, padded to the statement's size with rows of a NULL sensor
/// id, which the INSERT filters out and the UPDATE's join never matches.
async fn execute_padded(
    conn: &mut AnyConnection,
    sql: &'static str,
    rows: usize,
    chunk: impl ExactSizeIterator<Item = ReadingRow>,
) -> Result<(), StorageError> {
    let pad = rows - chunk.len();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (sensor, at, value) in chunk {
        q = q.bind(sensor).bind(at).bind(value);
    }
    // Only the id is NULL: sqlx's `Any` sends a NULL double that PostgreSQL rejects as bad binary data.
    for _ in 0..pad {
        q = q.bind(None::<i64>).bind(0_i64).bind(0.0_f64);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// Stores a batch of readings (history, and each sensor's last value) in the caller's transaction:
/// one INSERT and one UPDATE per 4,000 readings. Values must be finite (the connectors check).
pub async fn record_readings(
    conn: &mut AnyConnection,
    rows: &[ReadingRow],
) -> Result<(), StorageError> {
    let sqlite = conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME;
    let largest = CHUNK_ROWS[CHUNK_ROWS.len() - 1];
    for chunk in rows.chunks(largest) {
        let size = chunk_rows(chunk.len());
        let (insert, _) = statements(sqlite, size);
        execute_padded(conn, insert, size, chunk.iter().copied()).await?;
    }
    // The newest reading of each sensor in the batch becomes its last value, all of them in one
    // statement: a round trip per sensor would cost more than the whole INSERT.
    let mut last: HashMap<i64, (i64, f64)> = HashMap::with_capacity(rows.len().min(4096));
    for &(sensor, at, value) in rows {
        let e = last.entry(sensor).or_insert((at, value));
        if at >= e.0 {
            *e = (at, value);
        }
    }
    let last: Vec<ReadingRow> = last
        .into_iter()
        .map(|(sensor, (at, value))| (sensor, at, value))
        .collect();
    for chunk in last.chunks(largest) {
        let size = chunk_rows(chunk.len());
        let (_, update) = statements(sqlite, size);
        execute_padded(conn, update, size, chunk.iter().copied()).await?;
    }
    Ok(())
}

/// Marks a sensor reporting or silent.
pub async fn set_online(
    conn: &mut AnyConnection,
    sensor_id: i64,
    online: bool,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE sensors SET online = $1 WHERE id = $2")
        .bind(i64::from(online))
        .bind(sensor_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What the ingest path needs of every sensor, keyed by external id.
pub async fn all_brief(conn: &mut AnyConnection) -> Result<Vec<Sensor>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM sensors ORDER BY id");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

/// Readings of a sensor in `[from, to)`, oldest first, at most `limit`.
pub async fn history(
    conn: &mut AnyConnection,
    sensor_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Reading>, StorageError> {
    let rows: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT at, value FROM readings WHERE sensor_id = $1 AND at >= $2 AND at < $3 ORDER BY at LIMIT $4",
    )
    .bind(sensor_id)
    .bind(to_ms(from))
    .bind(to_ms(to))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(at, value)| Reading {
            at: from_ms(at),
            value,
        })
        .collect())
}

/// Deletes history older than `keep_days`; the sensors' last values stay.
pub async fn trim_history(conn: &mut AnyConnection, keep_days: u32) -> Result<u64, StorageError> {
    let cutoff = super::now_ms() - i64::from(keep_days) * 86_400_000;
    let done = sqlx::query("DELETE FROM readings WHERE at < $1")
        .bind(cutoff)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_db;

    #[tokio::test]
    async fn batches_of_any_size_store_every_reading_and_the_newest_value() {
        let (db, _d) = test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let tenant = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &tenant)
            .await
            .unwrap();
        let mut refs = Refs::new();
        let mut ids = Vec::new();
        for i in 0..3 {
            let s: NewSensor = serde_json::from_value(
                serde_json::json!({"tenant": "t", "external_id": format!("s{i}"), "kind": "pressure"}),
            )
            .unwrap();
            ids.push(upsert(&mut c, &mut refs, &s).await.unwrap().id);
        }
        // Sizes around every statement size, and one over the largest.
        let mut total = 0;
        let mut at = 1_000;
        for n in [1, 15, 16, 17, 257, 4001] {
            let rows: Vec<ReadingRow> = (0..n)
                .map(|i| {
                    at += 1;
                    (ids[i % 2], at, at as f64 / 10.0)
                })
                .collect();
            let mut tx = sqlx::Connection::begin(&mut *c).await.unwrap();
            record_readings(&mut tx, &rows).await.unwrap();
            tx.commit().await.unwrap();
            total += n;
            let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM readings")
                .fetch_one(&mut *c)
                .await
                .unwrap();
            assert_eq!(count as usize, total, "after a batch of {n}");
            let newest = rows.iter().rev().find(|r| r.0 == ids[0]).unwrap();
            let s = get(&mut c, ids[0]).await.unwrap();
            assert_eq!(s.last_value, Some(newest.2), "after a batch of {n}");
            assert_eq!(s.last_at.map(to_ms), Some(newest.1));
        }
        // A late reading goes into the history but does not replace a newer last value.
        let mut tx = sqlx::Connection::begin(&mut *c).await.unwrap();
        record_readings(&mut tx, &[(ids[0], 5, -1.0)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_ne!(get(&mut c, ids[0]).await.unwrap().last_value, Some(-1.0));
        assert_eq!(get(&mut c, ids[2]).await.unwrap().last_value, None);
        let history = history(&mut c, ids[0], from_ms(0), from_ms(1_000_000), 10)
            .await
            .unwrap();
        assert_eq!(history[0].value, -1.0);
    }

    #[test]
    fn few_statement_sizes() {
        assert_eq!(chunk_rows(1), 16);
        assert_eq!(chunk_rows(16), 16);
        assert_eq!(chunk_rows(17), 256);
        assert_eq!(chunk_rows(4000), 4000);
        let (insert, update) = statements(false, 16);
        assert!(insert.contains("CAST($48 AS DOUBLE PRECISION)") && !insert.contains("$49"));
        assert!(update.contains("$48"));
        assert_eq!(statements(true, 256).0.matches('?').count(), 768);
    }
}
