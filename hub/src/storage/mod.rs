//! Storage: what must not be lost is written here before it is acknowledged. One pool type (sqlx `Any`)
//! over SQLite (embedded default) or PostgreSQL; one repository module per table. The SQL is written once
//! for both back-ends: `$N` placeholders (`?` only in big multi-row statements on SQLite, see
//! `placeholders`), `ON CONFLICT` upserts, times as UTC milliseconds, flags as 0/1.

pub mod alarms;
pub mod audit;
pub mod campaigns;
pub mod consumers;
pub mod events;
pub mod meters;
pub mod network;
pub mod outages;
pub mod refs;
pub mod sensors;
pub mod sites;
pub mod tenants;
pub mod tickets;
pub mod users;
pub mod workers;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, Executor};

/// Errors of the storage layer. Unique-key violations and missing rows are told apart so that the API
/// can answer 409 and 404.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StorageError::Conflict {
                what: "a record with this key".into(),
            },
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StorageError::Invalid {
                field: "reference".into(),
                reason: "refers to a record that does not exist or is still referenced".into(),
            },
            _ => StorageError::Database(e),
        }
    }
}

impl StorageError {
    pub fn not_found(what: impl Into<String>) -> Self {
        StorageError::NotFound { what: what.into() }
    }
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        StorageError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Which SQL dialect the pool speaks, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database handle every part of the hub shares.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Db {
    /// Begins a transaction that will write. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`): a deferred transaction that reads first and writes later fails at once with
    /// `SQLITE_BUSY_SNAPSHOT` when another connection committed in between, where an immediate one
    /// waits its turn (the busy timeout). On PostgreSQL, a plain `BEGIN`.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Opens the pool; a SQLite file (and its folder) is created if missing and put in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Self { pool, backend })
    }

    /// Applies the migrations of this back-end that are not applied yet.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// A connection from the pool.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StorageError> {
        Ok(self.pool.acquire().await?)
    }

    /// Cheap round trip for `/readyz`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// `sqlite://PATH` -> a URL that creates the file, with its folder made first.
fn sqlite_url(url: &str) -> Result<String, StorageError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mode = if query.contains("mode=") {
        String::new()
    } else {
        "mode=rwc".to_owned()
    };
    let sep = if query.is_empty() || mode.is_empty() {
        ""
    } else {
        "&"
    };
    Ok(format!("sqlite://{path}?{query}{sep}{mode}"))
}

/// Now, in the unit the database stores (UTC milliseconds).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A JSON array of strings stored in a TEXT column.
pub fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub fn parse_json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// Keyset pagination: rows with id greater than `after`, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub after: i64,
    pub limit: i64,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            after: 0,
            limit: 100,
        }
    }
}

/// Looks up the numeric id of a row by its external id within a tenant.
pub async fn id_by_external(
    conn: &mut AnyConnection,
    table: &'static str,
    tenant_id: i64,
    external_id: &str,
) -> Result<Option<i64>, StorageError> {
    let sql = format!("SELECT id FROM {table} WHERE tenant_id = $1 AND external_id = $2");
    let id: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(external_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(id.map(|(id,)| id))
}

/// `($1, $2), ($3, $4)` for a multi-row statement of `rows` rows of `columns` values. PostgreSQL needs
/// `$N` (sqlx's `QueryBuilder` over `Any` writes `?`, which it rejects); SQLite gets anonymous `?`,
/// because sqlx binds each `$N` there by asking SQLite for the parameter's name, a linear scan, so a
/// statement of n `$N` values costs n² (it was most of a 100,000-consumer import).
pub fn placeholders(conn: &AnyConnection, rows: usize, columns: usize) -> String {
    placeholders_for(
        conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME,
        rows,
        columns,
    )
}

fn placeholders_for(anonymous: bool, rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            if anonymous {
                out.push('?');
            } else {
                out.push_str(&format!("${}", r * columns + c + 1));
            }
        }
        out.push(')');
    }
    out
}

/// Parses a value of a closed set of names (`kind`, `status`, ...), naming the field on error.
pub fn parse_name<T: FromStr>(field: &str, value: &str) -> Result<T, StorageError> {
    value
        .parse()
        .map_err(|_| StorageError::invalid(field, format!("unknown value `{value}`")))
}

#[cfg(test)]
pub(crate) mod test_db {
    use super::Db;

    /// A fresh migrated database: SQLite in a temp dir, or a new PostgreSQL database when
    /// `HUB_TEST_POSTGRES_URL` is set (CI runs the suite both ways).
    pub async fn fresh() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::testing::fresh_database_url(dir.path()).await;
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate().await.unwrap();
        (db, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_every_value() {
        assert_eq!(placeholders_for(false, 2, 2), "($1, $2), ($3, $4)");
        assert_eq!(placeholders_for(true, 2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        assert_eq!(
            sqlite_url("sqlite://data/hub.db").unwrap(),
            "sqlite://data/hub.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite://:memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite://x.db?mode=ro").unwrap(),
            "sqlite://x.db?mode=ro"
        );
    }

    #[tokio::test]
    async fn migrates_twice_without_harm() {
        let (db, _dir) = test_db::fresh().await;
        db.migrate().await.unwrap();
        db.ping().await.unwrap();
    }
}
