//! The supply network: supply points (boiler houses, heat points, substations...) and what each feeds
//! (other supply points and sites), as a graph. `affected()` is answered from the in-memory
//! `rules::network::NetworkIndex` that `load_index` builds from these tables.

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, refs::Refs};
use crate::names::SupplyPointKind;
use crate::types::ExternalId;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SupplyPoint {
    pub id: i64,
    pub tenant_id: i64,
    pub external_id: String,
    pub kind: SupplyPointKind,
    pub name: String,
    /// The site where the equipment stands (a boiler house building, a basement).
    pub site_id: Option<i64>,
    /// Ids of the supply points this one feeds.
    pub feeds_points: Vec<i64>,
    /// Ids of the sites this one feeds directly (their sub-sites are fed too).
    pub feeds_sites: Vec<i64>,
}

/// A supply point and its outgoing links; an upsert replaces the links.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSupplyPoint {
    pub tenant: ExternalId,
    pub external_id: ExternalId,
    pub kind: SupplyPointKind,
    pub name: String,
    /// External id of the site where it stands.
    #[serde(default)]
    pub site: Option<ExternalId>,
    /// External ids of the supply points it feeds (they must exist or come earlier in the import).
    #[serde(default)]
    pub feeds_points: Vec<ExternalId>,
    /// External ids of the sites it feeds.
    #[serde(default)]
    pub feeds_sites: Vec<ExternalId>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    external_id: String,
    kind: String,
    name: String,
    site_id: Option<i64>,
}

const COLUMNS: &str = "id, tenant_id, external_id, kind, name, site_id";

pub async fn upsert(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    p: &NewSupplyPoint,
) -> Result<SupplyPoint, StorageError> {
    if p.name.trim().is_empty() {
        return Err(StorageError::invalid("name", "must not be empty"));
    }
    let tenant_id = refs.tenant(conn, p.tenant.as_str()).await?;
    let site_id = match &p.site {
        Some(s) => Some(refs.site(conn, "site", tenant_id, s.as_str()).await?),
        None => None,
    };
    let mut to_points = Vec::with_capacity(p.feeds_points.len());
    for (i, ext) in p.feeds_points.iter().enumerate() {
        if ext == &p.external_id {
            return Err(StorageError::invalid(
                format!("feeds_points[{i}]"),
                "a supply point cannot feed itself",
            ));
        }
        to_points.push(
            refs.supply_point(conn, &format!("feeds_points[{i}]"), tenant_id, ext.as_str())
                .await?,
        );
    }
    let mut to_sites = Vec::with_capacity(p.feeds_sites.len());
    for (i, ext) in p.feeds_sites.iter().enumerate() {
        to_sites.push(
            refs.site(conn, &format!("feeds_sites[{i}]"), tenant_id, ext.as_str())
                .await?,
        );
    }
    let sql = format!(
        "INSERT INTO supply_points (tenant_id, external_id, kind, name, site_id) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant_id, external_id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
           site_id = excluded.site_id
         RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(p.external_id.as_str())
        .bind(p.kind.as_str())
        .bind(&p.name)
        .bind(site_id)
        .fetch_one(&mut *conn)
        .await?;
    refs.remember("supply_points", tenant_id, &row.external_id, row.id);
    sqlx::query("DELETE FROM supply_links WHERE from_point_id = $1")
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    to_points.sort_unstable();
    to_points.dedup();
    to_sites.sort_unstable();
    to_sites.dedup();
    for to in &to_points {
        sqlx::query("INSERT INTO supply_links (from_point_id, to_point_id) VALUES ($1, $2)")
            .bind(row.id)
            .bind(*to)
            .execute(&mut *conn)
            .await?;
    }
    for to in &to_sites {
        sqlx::query("INSERT INTO supply_links (from_point_id, to_site_id) VALUES ($1, $2)")
            .bind(row.id)
            .bind(*to)
            .execute(&mut *conn)
            .await?;
    }
    with_links(row, to_points, to_sites)
}

fn with_links(
    r: Row,
    feeds_points: Vec<i64>,
    feeds_sites: Vec<i64>,
) -> Result<SupplyPoint, StorageError> {
    Ok(SupplyPoint {
        id: r.id,
        tenant_id: r.tenant_id,
        kind: super::parse_name("kind", &r.kind)?,
        external_id: r.external_id,
        name: r.name,
        site_id: r.site_id,
        feeds_points,
        feeds_sites,
    })
}

async fn links(conn: &mut AnyConnection, id: i64) -> Result<(Vec<i64>, Vec<i64>), StorageError> {
    let rows: Vec<(Option<i64>, Option<i64>)> =
        sqlx::query_as("SELECT to_point_id, to_site_id FROM supply_links WHERE from_point_id = $1 ORDER BY to_point_id, to_site_id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    Ok((
        rows.iter().filter_map(|r| r.0).collect(),
        rows.iter().filter_map(|r| r.1).collect(),
    ))
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<SupplyPoint, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM supply_points WHERE id = $1");
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StorageError::not_found(format!("supply point {id}")))?;
    let (p, s) = links(conn, id).await?;
    with_links(row, p, s)
}

pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    kind: Option<SupplyPointKind>,
    page: PageRequest,
) -> Result<Vec<SupplyPoint>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM supply_points WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2)
           AND ($3 IS NULL OR kind = $3) ORDER BY id LIMIT $4"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(tenant_id)
        .bind(kind.map(|k| k.as_str()))
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (p, s) = links(conn, r.id).await?;
        out.push(with_links(r, p, s)?);
    }
    Ok(out)
}

pub async fn delete(conn: &mut AnyConnection, id: i64) -> Result<(), StorageError> {
    let done = sqlx::query("DELETE FROM supply_points WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::not_found(format!("supply point {id}")));
    }
    Ok(())
}

/// Reads the whole network, the site tree and the consumers' sites into the in-memory index.
pub async fn load_index(
    conn: &mut AnyConnection,
) -> Result<rules::network::NetworkIndex, StorageError> {
    use futures::TryStreamExt;
    let mut b = rules::network::NetworkBuilder::default();
    {
        let mut rows = sqlx::query_as::<_, (i64, Option<i64>, Option<i64>)>(
            "SELECT from_point_id, to_point_id, to_site_id FROM supply_links",
        )
        .fetch(&mut *conn);
        while let Some((from, to_point, to_site)) = rows.try_next().await? {
            if let Some(p) = to_point {
                b.point_feeds_point(from, p);
            }
            if let Some(s) = to_site {
                b.point_feeds_site(from, s);
            }
        }
    }
    {
        let mut rows = sqlx::query_as::<_, (i64, Option<i64>)>("SELECT id, parent_id FROM sites")
            .fetch(&mut *conn);
        while let Some((id, parent)) = rows.try_next().await? {
            b.site(id, parent);
        }
    }
    {
        let mut rows = sqlx::query_as::<_, (i64, i64, i64, i64)>(
            "SELECT cs.site_id, cs.consumer_id, c.life_support, c.social_object
             FROM consumer_sites cs JOIN consumers c ON c.id = cs.consumer_id",
        )
        .fetch(&mut *conn);
        while let Some((site, consumer, life, social)) = rows.try_next().await? {
            b.consumer(site, consumer, life != 0, social != 0);
        }
    }
    Ok(b.build())
}

/// The counter the triggers of migration 0002 bump on every change of the model.
pub async fn model_version(conn: &mut AnyConnection) -> Result<i64, StorageError> {
    let (v,): (i64,) = sqlx::query_as("SELECT v FROM model_version")
        .fetch_one(&mut *conn)
        .await?;
    Ok(v)
}
