//! Keeps the in-memory `NetworkIndex` that answers `affected()` in step with storage. Database triggers
//! bump `model_version` on every change of sites, the network and consumers (whoever makes it: the API,
//! `hub import` from another process), and a reader that finds the snapshot older rebuilds it once.

use std::sync::Arc;

use rules::network::NetworkIndex;
use tokio::sync::{Mutex, RwLock};

use crate::storage::{Db, StorageError};

#[derive(Clone, Default)]
pub struct NetworkCache {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    current: RwLock<Option<(i64, Arc<NetworkIndex>)>>,
    rebuilding: Mutex<()>,
}

impl NetworkCache {
    /// A snapshot that includes every change committed before the call.
    pub async fn get(&self, db: &Db) -> Result<Arc<NetworkIndex>, StorageError> {
        let mut conn = db.conn().await?;
        let wanted = crate::storage::network::model_version(&mut conn).await?;
        if let Some(idx) = self.fresh(wanted).await {
            return Ok(idx);
        }
        // One rebuild at a time; those who waited find it done.
        let _guard = self.inner.rebuilding.lock().await;
        if let Some(idx) = self.fresh(wanted).await {
            return Ok(idx);
        }
        let started = std::time::Instant::now();
        // Read the version first: a change during the load makes the next reader rebuild again.
        let version = crate::storage::network::model_version(&mut conn).await?;
        let idx = Arc::new(crate::storage::network::load_index(&mut conn).await?);
        tracing::debug!(
            sites = idx.sites_count(),
            consumers = idx.consumers_count(),
            took = ?started.elapsed(),
            "network index rebuilt"
        );
        *self.inner.current.write().await = Some((version, idx.clone()));
        Ok(idx)
    }

    async fn fresh(&self, wanted: i64) -> Option<Arc<NetworkIndex>> {
        match &*self.inner.current.read().await {
            Some((version, idx)) if *version >= wanted => Some(idx.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{Format, ImportKind, ImportOptions, run};

    #[tokio::test]
    async fn a_change_by_anyone_is_seen_by_the_next_reader() {
        let (db, _d) = crate::storage::test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        let opts = ImportOptions {
            actor: "test".into(),
            ..Default::default()
        };
        let sites = "tenant,external_id,parent,kind,name\nt,rc,,residential_complex,RC\nt,a1,rc,apartment,A1\n";
        run(&db, ImportKind::Sites, Format::Csv, "s.csv", sites, &opts)
            .await
            .unwrap();
        let net = "tenant,external_id,kind,name,feeds_sites\nt,hp,heat_point,HP,rc\n";
        run(&db, ImportKind::Network, Format::Csv, "n.csv", net, &opts)
            .await
            .unwrap();
        let (hp,): (i64,) = sqlx::query_as("SELECT id FROM supply_points")
            .fetch_one(&db.pool)
            .await
            .unwrap();

        let cache = NetworkCache::default();
        assert_eq!(
            cache.get(&db).await.unwrap().affected(hp).consumers.len(),
            0
        );
        let same = cache.get(&db).await.unwrap();
        assert!(
            Arc::ptr_eq(&same, &cache.get(&db).await.unwrap()),
            "no change, no rebuild"
        );

        // As `hub import` from another process would: straight into the database.
        let consumers = "tenant,external_id,kind,name,sites\nt,c1,resident,Ivanova,a1\n";
        run(
            &db,
            ImportKind::Consumers,
            Format::Csv,
            "c.csv",
            consumers,
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(
            cache.get(&db).await.unwrap().affected(hp).consumers.len(),
            1
        );
    }
}
