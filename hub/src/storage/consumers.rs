//! Consumers: residents and organizations, how to reach them, and the sites (apartments, buildings)
//! they are linked to. Written in batches: an import of 100,000 consumers is a few hundred statements.

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, json_list, parse_json_list, refs::Refs};
use crate::names::{Channel, ConsumerKind};
use crate::types::{Email, ExternalId, PhoneNumber};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Consumer {
    pub id: i64,
    pub tenant_id: i64,
    pub external_id: String,
    pub kind: ConsumerKind,
    pub name: String,
    pub phones: Vec<String>,
    pub email: Option<String>,
    pub telegram: Option<String>,
    pub preferred_channels: Vec<Channel>,
    pub opt_out: Vec<Channel>,
    pub account_number: Option<String>,
    pub language: String,
    pub life_support: bool,
    pub social_object: bool,
    /// Ids of the sites the consumer is linked to.
    pub sites: Vec<i64>,
}

/// A consumer to create or update (upsert by tenant and `external_id`; the site links are replaced).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConsumer {
    pub tenant: ExternalId,
    pub external_id: ExternalId,
    pub kind: ConsumerKind,
    pub name: String,
    /// E.164 numbers, the first is called first.
    #[serde(default)]
    pub phones: Vec<PhoneNumber>,
    #[serde(default)]
    pub email: Option<Email>,
    /// Telegram chat id or @username.
    #[serde(default)]
    pub telegram: Option<String>,
    /// Channels in the order the consumer prefers; the campaign's order when empty.
    #[serde(default)]
    pub preferred_channels: Vec<Channel>,
    /// Channels the consumer refused (no consent).
    #[serde(default)]
    pub opt_out: Vec<Channel>,
    #[serde(default)]
    pub account_number: Option<String>,
    /// `ru` or `en`.
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default)]
    pub life_support: bool,
    #[serde(default)]
    pub social_object: bool,
    /// External ids of the sites (apartments, buildings) the consumer is linked to.
    #[serde(default)]
    pub sites: Vec<ExternalId>,
}

fn default_language() -> String {
    "ru".into()
}

impl NewConsumer {
    /// Checks that need no database.
    pub fn check(&self) -> Result<(), StorageError> {
        if self.name.trim().is_empty() {
            return Err(StorageError::invalid("name", "must not be empty"));
        }
        if !["ru", "en"].contains(&self.language.as_str()) {
            return Err(StorageError::invalid(
                "language",
                format!("`{}`: use ru or en", self.language),
            ));
        }
        if let Some(t) = &self.telegram
            && (t.trim().is_empty() || t.contains(char::is_whitespace))
        {
            return Err(StorageError::invalid(
                "telegram",
                "a chat id or @username without spaces",
            ));
        }
        if let Some(a) = &self.account_number
            && (a.trim().is_empty() || a.len() > 40)
        {
            return Err(StorageError::invalid("account_number", "1-40 characters"));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
pub struct ConsumerFilter {
    pub tenant_id: Option<i64>,
    pub site_id: Option<i64>,
    pub life_support: Option<bool>,
    pub social_object: Option<bool>,
    pub account_number: Option<String>,
    pub phone: Option<String>,
    pub q: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    external_id: String,
    kind: String,
    name: String,
    phones: String,
    email: Option<String>,
    telegram: Option<String>,
    preferred_channels: String,
    opt_out: String,
    account_number: Option<String>,
    language: String,
    life_support: i64,
    social_object: i64,
}

fn channels(text: &str) -> Vec<Channel> {
    parse_json_list(text)
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect()
}

impl Row {
    fn into_consumer(self, sites: Vec<i64>) -> Result<Consumer, StorageError> {
        Ok(Consumer {
            id: self.id,
            tenant_id: self.tenant_id,
            kind: super::parse_name("kind", &self.kind)?,
            external_id: self.external_id,
            name: self.name,
            phones: parse_json_list(&self.phones),
            email: self.email,
            telegram: self.telegram,
            preferred_channels: channels(&self.preferred_channels),
            opt_out: channels(&self.opt_out),
            account_number: self.account_number,
            language: self.language,
            life_support: self.life_support != 0,
            social_object: self.social_object != 0,
            sites,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, external_id, kind, name, phones, email, telegram, preferred_channels, \
                       opt_out, account_number, language, life_support, social_object";

/// Rows per statement: 14 parameters a row stays far below SQLite's and PostgreSQL's limits.
pub const BATCH: usize = 500;

/// Upserts consumers in batches of `BATCH` and replaces their site links. Returns the ids in input order.
/// The caller checks that external ids are unique within `items`.
pub async fn upsert_many(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    items: &[NewConsumer],
) -> Result<Vec<i64>, StorageError> {
    let mut ids = Vec::with_capacity(items.len());
    for chunk in items.chunks(BATCH) {
        let mut resolved = Vec::with_capacity(chunk.len());
        for c in chunk {
            c.check()?;
            let tenant_id = refs.tenant(conn, c.tenant.as_str()).await?;
            let mut sites = Vec::with_capacity(c.sites.len());
            for (i, s) in c.sites.iter().enumerate() {
                sites.push(
                    refs.site(conn, &format!("sites[{i}]"), tenant_id, s.as_str())
                        .await?,
                );
            }
            sites.sort_unstable();
            sites.dedup();
            resolved.push((tenant_id, sites));
        }
        let sql = format!(
            "INSERT INTO consumers (tenant_id, external_id, kind, name, phones, email, telegram, \
             preferred_channels, opt_out, account_number, language, life_support, social_object) VALUES {} \
             ON CONFLICT (tenant_id, external_id) DO UPDATE SET kind = excluded.kind, name = excluded.name, \
             phones = excluded.phones, email = excluded.email, telegram = excluded.telegram, \
             preferred_channels = excluded.preferred_channels, opt_out = excluded.opt_out, \
             account_number = excluded.account_number, language = excluded.language, \
             life_support = excluded.life_support, social_object = excluded.social_object \
             RETURNING id, tenant_id, external_id",
            super::placeholders(conn, chunk.len(), 13)
        );
        let mut q = sqlx::query_as::<_, (i64, i64, String)>(sqlx::AssertSqlSafe(sql));
        for (c, (tenant_id, _)) in chunk.iter().zip(&resolved) {
            let phones: Vec<String> = c.phones.iter().map(|p| p.as_str().to_owned()).collect();
            let names = |l: &[Channel]| {
                json_list(&l.iter().map(|c| c.as_str().to_owned()).collect::<Vec<_>>())
            };
            q = q
                .bind(*tenant_id)
                .bind(c.external_id.as_str().to_owned())
                .bind(c.kind.as_str())
                .bind(c.name.clone())
                .bind(json_list(&phones))
                .bind(c.email.as_ref().map(|e| e.as_str().to_owned()))
                .bind(c.telegram.clone())
                .bind(names(&c.preferred_channels))
                .bind(names(&c.opt_out))
                .bind(c.account_number.clone())
                .bind(c.language.clone())
                .bind(i64::from(c.life_support))
                .bind(i64::from(c.social_object));
        }
        let rows = q.fetch_all(&mut *conn).await?;
        let by_key: std::collections::HashMap<(i64, &str), i64> = rows
            .iter()
            .map(|(id, t, ext)| ((*t, ext.as_str()), *id))
            .collect();
        let chunk_ids: Vec<i64> = chunk
            .iter()
            .zip(&resolved)
            .map(|(c, (t, _))| {
                by_key
                    .get(&(*t, c.external_id.as_str()))
                    .copied()
                    .unwrap_or_default()
            })
            .collect();

        let sql = format!(
            "DELETE FROM consumer_sites WHERE consumer_id IN {}",
            super::placeholders(conn, 1, chunk_ids.len())
        );
        let mut del = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &chunk_ids {
            del = del.bind(*id);
        }
        del.execute(&mut *conn).await?;

        let links: Vec<(i64, i64)> = chunk_ids
            .iter()
            .zip(&resolved)
            .flat_map(|(id, (_, sites))| sites.iter().map(move |s| (*id, *s)))
            .collect();
        for part in links.chunks(BATCH * 4) {
            let sql = format!(
                "INSERT INTO consumer_sites (consumer_id, site_id) VALUES {}",
                super::placeholders(conn, part.len(), 2)
            );
            let mut ins = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (c, s) in part {
                ins = ins.bind(*c).bind(*s);
            }
            ins.execute(&mut *conn).await?;
        }
        ids.extend(chunk_ids);
    }
    Ok(ids)
}

async fn sites_of(conn: &mut AnyConnection, id: i64) -> Result<Vec<i64>, StorageError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT site_id FROM consumer_sites WHERE consumer_id = $1 ORDER BY site_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Consumer, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM consumers WHERE id = $1");
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StorageError::not_found(format!("consumer {id}")))?;
    let sites = sites_of(conn, id).await?;
    row.into_consumer(sites)
}

/// Consumers by id, in the order asked (for pages of an `affected()` answer).
pub async fn get_many(
    conn: &mut AnyConnection,
    ids: &[i64],
) -> Result<Vec<Consumer>, StorageError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(get(conn, *id).await?);
    }
    Ok(out)
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &ConsumerFilter,
    page: PageRequest,
) -> Result<Vec<Consumer>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM consumers WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2)
           AND ($3 IS NULL OR id IN (SELECT consumer_id FROM consumer_sites WHERE site_id = $3))
           AND ($4 IS NULL OR life_support = $4) AND ($5 IS NULL OR social_object = $5)
           AND ($6 IS NULL OR account_number = $6) AND ($7 IS NULL OR phones LIKE $7)
           AND ($8 IS NULL OR name LIKE $8)
         ORDER BY id LIMIT $9"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(f.tenant_id)
        .bind(f.site_id)
        .bind(f.life_support.map(i64::from))
        .bind(f.social_object.map(i64::from))
        .bind(f.account_number.clone())
        .bind(f.phone.as_ref().map(|p| format!("%\"{p}\"%")))
        .bind(f.q.as_ref().map(|q| format!("%{q}%")))
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let sites = sites_of(conn, r.id).await?;
        out.push(r.into_consumer(sites)?);
    }
    Ok(out)
}

pub async fn delete(conn: &mut AnyConnection, id: i64) -> Result<(), StorageError> {
    let done = sqlx::query("DELETE FROM consumers WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::not_found(format!("consumer {id}")));
    }
    Ok(())
}
