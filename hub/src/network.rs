//! Keeps the in-memory `NetworkIndex` that answers `affected()` in step with storage: every change of
//! sites, the network or consumers bumps a generation, and the next reader rebuilds the snapshot once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rules::network::NetworkIndex;
use tokio::sync::{Mutex, RwLock};

use crate::storage::{Db, StorageError};

#[derive(Clone, Default)]
pub struct NetworkCache {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    wanted: AtomicU64,
    current: RwLock<(u64, Option<Arc<NetworkIndex>>)>,
    rebuilding: Mutex<()>,
}

impl NetworkCache {
    /// The model changed: the next `get` rebuilds.
    pub fn invalidate(&self) {
        self.inner.wanted.fetch_add(1, Ordering::SeqCst);
    }

    /// A snapshot that includes every change committed before the call.
    pub async fn get(&self, db: &Db) -> Result<Arc<NetworkIndex>, StorageError> {
        let wanted = self.inner.wanted.load(Ordering::SeqCst);
        if let (generation, Some(idx)) = &*self.inner.current.read().await
            && *generation >= wanted {
                return Ok(idx.clone());
            }
        // One rebuild at a time; those who waited find it done.
        let _guard = self.inner.rebuilding.lock().await;
        if let (generation, Some(idx)) = &*self.inner.current.read().await
            && *generation >= wanted {
                return Ok(idx.clone());
            }
        let started = std::time::Instant::now();
        let generation = self.inner.wanted.load(Ordering::SeqCst);
        let mut conn = db.conn().await?;
        let idx = Arc::new(crate::storage::network::load_index(&mut conn).await?);
        tracing::debug!(sites = idx.sites_count(), consumers = idx.consumers_count(), took = ?started.elapsed(), "network index rebuilt");
        *self.inner.current.write().await = (generation, Some(idx.clone()));
        Ok(idx)
    }
}
