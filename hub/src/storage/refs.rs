//! Resolves external ids (what customers' files and systems use) to row ids, with a cache so that an
//! import of 100,000 rows does not ask the database 100,000 times for the same building.

use std::collections::HashMap;

use sqlx::AnyConnection;

use super::StorageError;

#[derive(Default)]
pub struct Refs {
    /// When set, only this tenant may be referred to (a tenant-bound user is writing).
    only_tenant: Option<i64>,
    tenants: HashMap<String, i64>,
    rows: HashMap<(&'static str, i64, String), i64>,
}

impl Refs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refs that refuse every tenant but `tenant` (when given).
    pub fn scoped(tenant: Option<i64>) -> Self {
        Self {
            only_tenant: tenant,
            ..Self::default()
        }
    }

    /// The id of tenant `external_id`; an unknown tenant is a `tenant` field error.
    pub async fn tenant(
        &mut self,
        conn: &mut AnyConnection,
        external_id: &str,
    ) -> Result<i64, StorageError> {
        if let Some(id) = self.tenants.get(external_id) {
            return Ok(*id);
        }
        let id: Option<(i64,)> = sqlx::query_as("SELECT id FROM tenants WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(&mut *conn)
            .await?;
        let (id,) = id
            .ok_or_else(|| StorageError::invalid("tenant", format!("no tenant `{external_id}`")))?;
        if self.only_tenant.is_some_and(|only| only != id) {
            return Err(StorageError::invalid(
                "tenant",
                format!("`{external_id}` is not your tenant"),
            ));
        }
        self.tenants.insert(external_id.to_owned(), id);
        Ok(id)
    }

    /// The id of a site of the tenant; `field` names the column that referred to it.
    pub async fn site(
        &mut self,
        conn: &mut AnyConnection,
        field: &str,
        tenant_id: i64,
        external_id: &str,
    ) -> Result<i64, StorageError> {
        self.row(conn, "sites", "site", field, tenant_id, external_id)
            .await
    }

    /// The id of a supply point of the tenant.
    pub async fn supply_point(
        &mut self,
        conn: &mut AnyConnection,
        field: &str,
        tenant_id: i64,
        external_id: &str,
    ) -> Result<i64, StorageError> {
        self.row(
            conn,
            "supply_points",
            "supply point",
            field,
            tenant_id,
            external_id,
        )
        .await
    }

    /// Remembers a row just written, so later rows of the same import can refer to it.
    pub fn remember(&mut self, table: &'static str, tenant_id: i64, external_id: &str, id: i64) {
        self.rows
            .insert((table, tenant_id, external_id.to_owned()), id);
    }

    async fn row(
        &mut self,
        conn: &mut AnyConnection,
        table: &'static str,
        what: &str,
        field: &str,
        tenant_id: i64,
        external_id: &str,
    ) -> Result<i64, StorageError> {
        let key = (table, tenant_id, external_id.to_owned());
        if let Some(id) = self.rows.get(&key) {
            return Ok(*id);
        }
        let id = super::id_by_external(conn, table, tenant_id, external_id)
            .await?
            .ok_or_else(|| StorageError::invalid(field, format!("no {what} `{external_id}`")))?;
        self.rows.insert(key, id);
        Ok(id)
    }
}

impl Refs {
    /// Loads every site id of a tenant at once (imports of consumers refer to thousands of apartments).
    pub async fn preload_sites(
        &mut self,
        conn: &mut AnyConnection,
        tenant_id: i64,
    ) -> Result<(), StorageError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, external_id FROM sites WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_all(&mut *conn)
                .await?;
        for (id, ext) in rows {
            self.rows.insert(("sites", tenant_id, ext), id);
        }
        Ok(())
    }
}
