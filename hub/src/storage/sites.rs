//! Sites as a tree: residential complex -> building -> entrance -> apartment, and non-residential
//! objects (basement, parking, yard, boiler house...) at any level.

use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, refs::Refs};
use crate::names::check_site_kind;
use crate::types::ExternalId;

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Site {
    pub id: i64,
    pub tenant_id: i64,
    pub external_id: String,
    pub parent_id: Option<i64>,
    pub kind: String,
    pub name: String,
    pub address: String,
}

/// A site to create or update (upsert by tenant and `external_id`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    /// External id of the tenant.
    pub tenant: ExternalId,
    pub external_id: ExternalId,
    /// External id of the parent site (it must exist or come earlier in the same import).
    #[serde(default)]
    pub parent: Option<ExternalId>,
    /// `residential_complex`, `building`, `entrance`, `apartment`, `basement`, `parking`, `yard`, ... or
    /// a custom lowercase identifier.
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub address: String,
}

/// Filters of the site list.
#[derive(Debug, Default, Clone)]
pub struct SiteFilter {
    pub tenant_id: Option<i64>,
    pub kind: Option<String>,
    pub parent_id: Option<i64>,
    /// Only top-level sites.
    pub roots: bool,
    /// Substring of name or address.
    pub q: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, external_id, parent_id, kind, name, address";

pub async fn upsert(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    s: &NewSite,
) -> Result<Site, StorageError> {
    check_site_kind(&s.kind).map_err(|r| StorageError::invalid("kind", r))?;
    if s.name.trim().is_empty() {
        return Err(StorageError::invalid("name", "must not be empty"));
    }
    let tenant_id = refs.tenant(conn, s.tenant.as_str()).await?;
    let parent_id = match &s.parent {
        Some(p) if p == &s.external_id => {
            return Err(StorageError::invalid(
                "parent",
                "a site cannot be its own parent",
            ));
        }
        Some(p) => Some(refs.site(conn, "parent", tenant_id, p.as_str()).await?),
        None => None,
    };
    if let Some(parent_id) = parent_id {
        // Re-parenting under one's own descendant would cut the subtree off the tree.
        if let Some(own_id) =
            super::id_by_external(conn, "sites", tenant_id, s.external_id.as_str()).await?
            && ancestors(conn, parent_id).await?.contains(&own_id)
        {
            return Err(StorageError::invalid(
                "parent",
                "would make the site its own ancestor",
            ));
        }
    }
    let sql = format!(
        "INSERT INTO sites (tenant_id, external_id, parent_id, kind, name, address)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, external_id) DO UPDATE SET parent_id = excluded.parent_id,
           kind = excluded.kind, name = excluded.name, address = excluded.address
         RETURNING {COLUMNS}"
    );
    let site: Site = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(s.external_id.as_str())
        .bind(parent_id)
        .bind(&s.kind)
        .bind(&s.name)
        .bind(&s.address)
        .fetch_one(&mut *conn)
        .await?;
    refs.remember("sites", tenant_id, &site.external_id, site.id);
    Ok(site)
}

/// The site and its ancestors' ids, nearest first.
pub async fn ancestors(conn: &mut AnyConnection, id: i64) -> Result<Vec<i64>, StorageError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "WITH RECURSIVE up(id, parent_id, depth) AS (
           SELECT id, parent_id, 0 FROM sites WHERE id = $1
           UNION ALL SELECT s.id, s.parent_id, up.depth + 1 FROM sites s JOIN up ON s.id = up.parent_id
             WHERE up.depth < 64)
         SELECT id FROM up ORDER BY depth",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Site, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM sites WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StorageError::not_found(format!("site {id}")))
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &SiteFilter,
    page: PageRequest,
) -> Result<Vec<Site>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sites WHERE id > $1
           AND ($2 IS NULL OR tenant_id = $2) AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR parent_id = $4)
           AND ($5 = 0 OR parent_id IS NULL)
           AND ($6 IS NULL OR name LIKE $6 OR address LIKE $6)
         ORDER BY id LIMIT $7"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(f.tenant_id)
        .bind(f.kind.clone())
        .bind(f.parent_id)
        .bind(i64::from(f.roots))
        .bind(f.q.as_ref().map(|q| format!("%{q}%")))
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?)
}

pub async fn delete(conn: &mut AnyConnection, id: i64) -> Result<(), StorageError> {
    let done = sqlx::query("DELETE FROM sites WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::not_found(format!("site {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{tenants, test_db};

    fn site(ext: &str, parent: Option<&str>, kind: &str) -> NewSite {
        serde_json::from_value(serde_json::json!({
            "tenant": "t1", "external_id": ext, "parent": parent, "kind": kind, "name": ext
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn tree_upserts_and_refuses_cycles() {
        let (db, _d) = test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t1", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        tenants::upsert(&mut c, &t).await.unwrap();
        let mut refs = Refs::new();
        let rc = upsert(&mut c, &mut refs, &site("rc", None, "residential_complex"))
            .await
            .unwrap();
        let b = upsert(&mut c, &mut refs, &site("b1", Some("rc"), "building"))
            .await
            .unwrap();
        assert_eq!(b.parent_id, Some(rc.id));
        let err = upsert(
            &mut c,
            &mut refs,
            &site("rc", Some("b1"), "residential_complex"),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("own ancestor"), "{err}");
        let err = upsert(&mut c, &mut refs, &site("x", Some("nope"), "yard"))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "parent: no site `nope`");
        let err = upsert(&mut c, &mut refs, &site("x", None, "Big Yard"))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("kind:"), "{err}");
        let roots = list(
            &mut c,
            &SiteFilter {
                roots: true,
                ..Default::default()
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
        assert_eq!(roots.len(), 1);
        let found = list(
            &mut c,
            &SiteFilter {
                q: Some("b1".into()),
                ..Default::default()
            },
            PageRequest::default(),
        )
        .await
        .unwrap();
        assert_eq!(found[0].id, b.id);
        assert_eq!(ancestors(&mut c, b.id).await.unwrap(), vec![b.id, rc.id]);
    }
}
