//! `hub import sites|network|consumers|sensors FILE` (and `POST /api/v1/import/{kind}`): CSV or JSON,
//! validated row by row into the same typed records the API takes, written in one transaction.
//! Every bad row is reported as `file:line: field: reason`; any bad row means nothing changes unless
//! `skip_invalid`. Re-importing upserts by external id.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::names::names;
use crate::storage::consumers::NewConsumer;
use crate::storage::network::NewSupplyPoint;
use crate::storage::refs::Refs;
use crate::storage::sensors::NewSensor;
use crate::storage::sites::NewSite;
use crate::storage::{Db, StorageError, audit, consumers, network, sensors, sites};

names! {
    /// What a file holds.
    pub enum ImportKind { Sites = "sites", Network = "network", Consumers = "consumers", Sensors = "sensors", Outages = "outages" }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// By file extension; CSV unless it ends in `.json`.
    pub fn of_path(path: &str) -> Format {
        if path.to_ascii_lowercase().ends_with(".json") {
            Format::Json
        } else {
            Format::Csv
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub skip_invalid: bool,
    /// Who imports, for the audit log.
    pub actor: String,
    /// Rows of other tenants are refused (the importing user is bound to this tenant).
    pub tenant_scope: Option<i64>,
}

/// One bad row.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct RowError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.field, self.reason
        )
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportReport {
    pub kind: ImportKind,
    /// Data rows in the file.
    pub rows: usize,
    /// Rows written (0 when a bad row stopped the import).
    pub imported: usize,
    pub errors: Vec<RowError>,
    /// Outages created, updated or closed, for the caller to announce on the bus once committed.
    #[serde(skip)]
    #[schema(ignore)]
    pub outages: Vec<(
        crate::storage::outages::Outage,
        crate::storage::outages::Change,
    )>,
}

/// CSV columns holding `;`-separated lists.
fn list_columns(kind: ImportKind) -> &'static [&'static str] {
    match kind {
        ImportKind::Sites | ImportKind::Sensors => &[],
        ImportKind::Outages => &["sites"],
        ImportKind::Network => &["feeds_points", "feeds_sites"],
        ImportKind::Consumers => &["phones", "preferred_channels", "opt_out", "sites"],
    }
}

/// CSV columns holding yes/no.
fn bool_columns(kind: ImportKind) -> &'static [&'static str] {
    match kind {
        ImportKind::Consumers => &["life_support", "social_object"],
        _ => &[],
    }
}

/// CSV columns holding whole numbers.
fn int_columns(kind: ImportKind) -> &'static [&'static str] {
    match kind {
        ImportKind::Sensors => &["offline_after_s"],
        _ => &[],
    }
}

type Rows = Vec<(usize, Value)>;

/// Splits a file into (line, JSON object) rows; unreadable parts become errors.
fn parse_rows(
    kind: ImportKind,
    format: Format,
    file: &str,
    text: &str,
    errors: &mut Vec<RowError>,
) -> Rows {
    let err = |line: usize, field: &str, reason: String| RowError {
        file: file.to_owned(),
        line,
        field: field.to_owned(),
        reason,
    };
    match format {
        Format::Json => {
            let items: Vec<&serde_json::value::RawValue> = match serde_json::from_str(text) {
                Ok(items) => items,
                Err(e) => {
                    errors.push(err(
                        e.line().max(1),
                        "file",
                        format!("not a JSON array of objects: {e}"),
                    ));
                    return Vec::new();
                }
            };
            items
                .into_iter()
                .filter_map(|raw| {
                    let offset = raw.get().as_ptr() as usize - text.as_ptr() as usize;
                    let line = crate::config::line_col(text, offset).0;
                    match serde_json::from_str::<Value>(raw.get()) {
                        Ok(v @ Value::Object(_)) => Some((line, v)),
                        _ => {
                            errors.push(err(line, "row", "not a JSON object".into()));
                            None
                        }
                    }
                })
                .collect()
        }
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            let headers = match reader.headers() {
                Ok(h) => h.clone(),
                Err(e) => {
                    errors.push(err(1, "header", e.to_string()));
                    return Vec::new();
                }
            };
            let mut rows = Vec::new();
            for record in reader.records() {
                let record = match record {
                    Ok(r) => r,
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line() as usize);
                        errors.push(err(line, "row", csv_reason(&e)));
                        continue;
                    }
                };
                let line = record.position().map_or(0, |p| p.line() as usize);
                let mut obj = Map::new();
                for (name, value) in headers.iter().zip(record.iter()) {
                    if value.is_empty() {
                        continue;
                    }
                    obj.insert(name.to_owned(), csv_value(kind, name, value));
                }
                rows.push((line, Value::Object(obj)));
            }
            rows
        }
    }
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("has {len} fields, the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        _ => e.to_string(),
    }
}

fn csv_value(kind: ImportKind, column: &str, value: &str) -> Value {
    if list_columns(kind).contains(&column) {
        return Value::Array(
            value
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        );
    }
    if bool_columns(kind).contains(&column) {
        match value.to_lowercase().as_str() {
            "1" | "true" | "yes" | "y" | "да" => return Value::Bool(true),
            "0" | "false" | "no" | "n" | "нет" => return Value::Bool(false),
            _ => {}
        }
    }
    if int_columns(kind).contains(&column)
        && let Ok(n) = value.parse::<i64>()
    {
        return Value::from(n);
    }
    Value::String(value.to_owned())
}

/// Deserializes rows into `T`; failures become row errors naming the field.
fn typed<T: DeserializeOwned>(
    file: &str,
    rows: Rows,
    errors: &mut Vec<RowError>,
) -> Vec<(usize, T)> {
    rows.into_iter()
        .filter_map(
            |(line, v)| match serde_path_to_error::deserialize::<_, T>(v) {
                Ok(t) => Some((line, t)),
                Err(e) => {
                    let path = e.path().to_string();
                    let msg = e.into_inner().to_string();
                    let field = if path == "." {
                        msg.strip_prefix("missing field `")
                            .and_then(|r| r.split('`').next())
                            .unwrap_or("row")
                            .to_owned()
                    } else {
                        path
                    };
                    errors.push(RowError {
                        file: file.to_owned(),
                        line,
                        field,
                        reason: msg,
                    });
                    None
                }
            },
        )
        .collect()
}

/// Reports rows whose key repeats an earlier row's.
fn reject_duplicates<T>(
    file: &str,
    rows: Vec<(usize, T)>,
    key: impl Fn(&T) -> String,
    errors: &mut Vec<RowError>,
) -> Vec<(usize, T)> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    rows.into_iter()
        .filter(|(line, t)| match seen.get(&key(t)) {
            Some(first) => {
                errors.push(RowError {
                    file: file.to_owned(),
                    line: *line,
                    field: "external_id".into(),
                    reason: format!("`{}` repeats line {first}", key(t)),
                });
                false
            }
            None => {
                seen.insert(key(t), *line);
                true
            }
        })
        .collect()
}

/// Imports `text` (named `file` in messages) into the database.
pub async fn run(
    db: &Db,
    kind: ImportKind,
    format: Format,
    file: &str,
    text: &str,
    opts: &ImportOptions,
) -> Result<ImportReport, StorageError> {
    let mut errors = Vec::new();
    let rows = parse_rows(kind, format, file, text, &mut errors);
    let total = rows.len() + errors.len();
    let mut tx = db.begin().await?;
    let mut refs = Refs::scoped(opts.tenant_scope);
    let row_err = |file: &str, line: usize, e: StorageError| -> Result<RowError, StorageError> {
        match e {
            StorageError::Invalid { field, reason } => Ok(RowError {
                file: file.to_owned(),
                line,
                field,
                reason,
            }),
            StorageError::Conflict { what } => Ok(RowError {
                file: file.to_owned(),
                line,
                field: "external_id".into(),
                reason: format!("{what} already exists"),
            }),
            other => Err(other),
        }
    };
    let mut imported = 0;
    let mut changed = Vec::new();
    match kind {
        ImportKind::Sites => {
            let items = typed::<NewSite>(file, rows, &mut errors);
            let items = reject_duplicates(
                file,
                items,
                |s| format!("{}/{}", s.tenant, s.external_id),
                &mut errors,
            );
            for (line, s) in items {
                match sites::upsert(&mut tx, &mut refs, &s).await {
                    Ok(_) => imported += 1,
                    Err(e) => errors.push(row_err(file, line, e)?),
                }
            }
        }
        ImportKind::Network => {
            let items = typed::<NewSupplyPoint>(file, rows, &mut errors);
            let items = reject_duplicates(
                file,
                items,
                |s| format!("{}/{}", s.tenant, s.external_id),
                &mut errors,
            );
            for (line, p) in items {
                match network::upsert(&mut tx, &mut refs, &p).await {
                    Ok(_) => imported += 1,
                    Err(e) => errors.push(row_err(file, line, e)?),
                }
            }
        }
        ImportKind::Sensors => {
            let items = typed::<NewSensor>(file, rows, &mut errors);
            let items = reject_duplicates(file, items, |s| s.external_id.to_string(), &mut errors);
            for (line, s) in items {
                match sensors::upsert(&mut tx, &mut refs, &s).await {
                    Ok(_) => imported += 1,
                    Err(e) => errors.push(row_err(file, line, e)?),
                }
            }
        }
        ImportKind::Outages => {
            let items = typed::<crate::storage::outages::NewOutage>(file, rows, &mut errors);
            for (line, o) in items {
                match crate::storage::outages::upsert(&mut tx, &mut refs, &o).await {
                    Ok((outage, change)) => {
                        imported += 1;
                        if change != crate::storage::outages::Change::Unchanged {
                            changed.push((outage, change));
                        }
                    }
                    Err(e) => errors.push(row_err(file, line, e)?),
                }
            }
        }
        ImportKind::Consumers => {
            let items = typed::<NewConsumer>(file, rows, &mut errors);
            let items = reject_duplicates(
                file,
                items,
                |c| format!("{}/{}", c.tenant, c.external_id),
                &mut errors,
            );
            // Resolve references row by row first, so a bad row is reported and left out of the batch.
            let mut good = Vec::with_capacity(items.len());
            let mut preloaded = std::collections::HashSet::new();
            for (line, c) in items {
                match check_consumer(&mut tx, &mut refs, &mut preloaded, &c).await {
                    Ok(()) => good.push(c),
                    Err(e) => errors.push(row_err(file, line, e)?),
                }
            }
            if errors.is_empty() || opts.skip_invalid {
                imported = consumers::upsert_many(&mut tx, &mut refs, &good)
                    .await?
                    .len();
            }
        }
    }
    errors.sort_by_key(|e| e.line);
    if !errors.is_empty() && !opts.skip_invalid {
        tx.rollback().await?;
        return Ok(ImportReport {
            kind,
            rows: total,
            imported: 0,
            errors,
            outages: Vec::new(),
        });
    }
    let details = serde_json::json!({"file": file, "rows": total, "imported": imported, "skipped": errors.len()});
    audit::record(&mut tx, &opts.actor, "import", kind.as_str(), file, details).await?;
    tx.commit().await?;
    Ok(ImportReport {
        kind,
        rows: total,
        imported,
        errors,
        outages: changed,
    })
}

async fn check_consumer(
    conn: &mut sqlx::AnyConnection,
    refs: &mut Refs,
    preloaded: &mut std::collections::HashSet<i64>,
    c: &NewConsumer,
) -> Result<(), StorageError> {
    c.check()?;
    let tenant_id = refs.tenant(conn, c.tenant.as_str()).await?;
    if preloaded.insert(tenant_id) {
        refs.preload_sites(conn, tenant_id).await?;
    }
    for (i, s) in c.sites.iter().enumerate() {
        refs.site(conn, &format!("sites[{i}]"), tenant_id, s.as_str())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_db;

    async fn seeded() -> (Db, tempfile::TempDir) {
        let (db, dir) = test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t1", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        (db, dir)
    }

    async fn count(db: &Db, table: &str) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&db.pool)
                .await
                .unwrap();
        n
    }

    async fn import_sites(db: &Db, opts: &ImportOptions) -> ImportReport {
        run(db, ImportKind::Sites, Format::Csv, "sites.csv", SITES, opts)
            .await
            .unwrap()
    }

    const SITES: &str = "tenant,external_id,parent,kind,name,address\n\
        t1,rc1,,residential_complex,Complex 1,Lenina 1\n\
        t1,b1,rc1,building,Building 1,Lenina 1 b1\n\
        t1,a1,b1,apartment,Apt 1,\n";

    #[tokio::test]
    async fn bad_rows_are_each_reported_and_change_nothing() {
        let (db, _d) = seeded().await;
        let opts = ImportOptions {
            actor: "test".into(),
            ..Default::default()
        };
        let r = import_sites(&db, &opts).await;
        assert_eq!((r.rows, r.imported, r.errors.len()), (3, 3, 0));
        let bad = "tenant,external_id,kind,name,phones,life_support,sites\n\
            t1,c1,resident,Ivanova,+74951234567,no,a1\n\
            t1,c2,resident,Petrov,12345,no,a1\n\
            t1,c3,martian,Sidorov,,no,a1\n\
            t1,c4,resident,Kuz,,maybe,a1\n\
            t1,c5,resident,Orlov,,no,a9\n\
            t1,c1,resident,Again,,no,a1\n\
            t1,c6,resident\n";
        let r = run(&db, ImportKind::Consumers, Format::Csv, "c.csv", bad, &opts)
            .await
            .unwrap();
        let lines: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert_eq!(r.imported, 0);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines[0].starts_with("c.csv:3: phones[0]: "), "{lines:#?}");
        assert!(
            lines[1].starts_with("c.csv:4: kind: unknown variant `martian`"),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("c.csv:5: life_support: "),
            "{lines:#?}"
        );
        assert_eq!(lines[3], "c.csv:6: sites[0]: no site `a9`");
        assert_eq!(lines[4], "c.csv:7: external_id: `t1/c1` repeats line 2");
        assert!(
            lines[5].starts_with("c.csv:8: row: has 3 fields"),
            "{lines:#?}"
        );
        assert_eq!(count(&db, "consumers").await, 0);

        let skip = ImportOptions {
            skip_invalid: true,
            ..opts.clone()
        };
        let r = run(&db, ImportKind::Consumers, Format::Csv, "c.csv", bad, &skip)
            .await
            .unwrap();
        assert_eq!(r.imported, 1);
        assert_eq!(count(&db, "consumers").await, 1);
    }

    #[tokio::test]
    async fn json_rows_have_lines_and_reimport_is_idempotent() {
        let (db, _d) = seeded().await;
        let opts = ImportOptions {
            actor: "test".into(),
            ..Default::default()
        };
        import_sites(&db, &opts).await;
        let json = r#"[
  {"tenant": "t1", "external_id": "bh1", "kind": "boiler_house", "name": "BH", "feeds_points": []},
  {"tenant": "t1", "external_id": "hp1", "kind": "heat_point", "name": "HP", "feeds_sites": ["rc1"]},
  {"tenant": "t1", "external_id": "bh1", "kind": "boiler_house", "name": "BH", "feeds_points": ["hp1"], "colour": 1}
]"#;
        let r = run(
            &db,
            ImportKind::Network,
            Format::Json,
            "net.json",
            json,
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].line, 4);
        assert!(
            r.errors[0].reason.contains("unknown field `colour`"),
            "{:?}",
            r.errors
        );
        let fixed = json.replace(", \"colour\": 1", "").replacen(
            "\"bh1\", \"kind\": \"boiler_house\", \"name\": \"BH\", \"feeds_points\": []},\n",
            "\"bh0\", \"kind\": \"boiler_house\", \"name\": \"BH0\"},\n",
            1,
        );
        for _ in 0..2 {
            let r = run(
                &db,
                ImportKind::Network,
                Format::Json,
                "net.json",
                &fixed,
                &opts,
            )
            .await
            .unwrap();
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
        assert_eq!(count(&db, "supply_points").await, 3);
        assert_eq!(count(&db, "supply_links").await, 2);
        let r = run(&db, ImportKind::Network, Format::Json, "x.json", "{", &opts)
            .await
            .unwrap();
        assert_eq!(r.errors[0].field, "file");
    }

    #[tokio::test]
    async fn a_tenant_bound_import_cannot_touch_other_tenants() {
        let (db, _d) = seeded().await;
        let mut c = db.conn().await.unwrap();
        let t2 = serde_json::from_value(
            serde_json::json!({"external_id": "t2", "name": "T2", "kind": "supplier"}),
        )
        .unwrap();
        let t2 = crate::storage::tenants::upsert(&mut c, &t2).await.unwrap();
        drop(c);
        let opts = ImportOptions {
            actor: "t2-engineer".into(),
            tenant_scope: Some(t2.id),
            ..Default::default()
        };
        let r = import_sites(&db, &opts).await;
        assert_eq!(r.imported, 0);
        assert_eq!(
            r.errors[0].to_string(),
            "sites.csv:2: tenant: `t1` is not your tenant"
        );
        assert_eq!(count(&db, "sites").await, 0);
    }
}
