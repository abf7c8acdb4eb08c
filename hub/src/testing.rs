//! Helpers shared by unit and end-to-end tests: a fresh database per test on SQLite or, when
//! `HUB_TEST_POSTGRES_URL` points at a server, on PostgreSQL.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// A URL of a new, empty database: `sqlite://DIR/hub.db`, or a new database on the PostgreSQL server.
pub async fn fresh_database_url(dir: &Path) -> String {
    match std::env::var("HUB_TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "hub_test_{}_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                chrono::Utc::now().timestamp_micros() % 1_000_000_000
            );
            sqlx::any::install_default_drivers();
            let mut last_err = None;
            for _ in 0..5 {
                match sqlx::AnyPool::connect(&admin).await {
                    Ok(pool) => {
                        if let Err(e) =
                            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                                .execute(&pool)
                                .await
                        {
                            panic!("create test database {name}: {e}");
                        }
                        pool.close().await;
                        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
                        return format!("{base}/{name}");
                    }
                    Err(e) => {
                        last_err = Some(e);
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
            panic!("HUB_TEST_POSTGRES_URL: cannot connect: {last_err:?}");
        }
        _ => format!("sqlite://{}/hub.db", dir.display()),
    }
}
