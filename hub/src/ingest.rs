//! Where the connectors' input lands (connectors -> here -> storage -> bus). One task drains the
//! ingest channel in batches: readings are written in one transaction, then acknowledged to their
//! connector (an MQTT PUBACK), then published; outage records go through the action layer like the
//! API's; and every sensor's silence is watched, so that `sensor_offline` and `sensor_online` events
//! are raised (and journaled) when a sensor stops and starts reporting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectors::{ConnectorStats, Ingest, Reading, StatsSnapshot};
use rules::EventKind;
use serde::Serialize;
use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::storage::outages::NewOutage;
use crate::storage::sensors::{self, ReadingRow, Sensor};
use crate::storage::{Backend, Db, StorageError, events, to_ms};

/// Ingest messages taken from the channel per round at most: all that waits, so that under load the
/// rounds (one transaction each) grow and the fixed cost of a write is shared by more readings.
const ROUND: usize = connectors::INGEST_CAPACITY;
/// How long an unknown sensor id is remembered as unknown before the database is asked again.
const UNKNOWN_TTL: Duration = Duration::from_secs(10);
/// More remembered unknown ids than this and the memory is cleared (junk with random ids).
const UNKNOWN_MAX: usize = 10_000;
/// The longest wait between retries of a failed write (the database is down or locked).
const RETRY_MAX: Duration = Duration::from_secs(10);
/// SQLite page cache of the ingest's own connection, in KiB: the pages that take new readings (the
/// last page of every sensor in the `(sensor_id, at)` index) must stay cached, or each insert reads
/// its page back through the WAL. The default is 2 MiB.
const SQLITE_CACHE_KIB: i64 = 64 * 1024;
/// WAL pages after which the ingest's commits checkpoint (SQLite's default is 1,000). Each round
/// rewrites the same hot index pages; a longer WAL lets a checkpoint (and its fsync) write each of
/// them once for many rounds.
const SQLITE_WAL_AUTOCHECKPOINT: i64 = 20_000;

/// The running connectors, for the API and metrics.
#[derive(Clone, Default)]
pub struct Connectors {
    pub stats: Vec<Arc<ConnectorStats>>,
    /// Where the embedded MQTT broker listens, if it runs.
    pub mqtt_broker: Option<std::net::SocketAddr>,
    /// The ingest channel, for its depth.
    pub queue: Option<mpsc::Sender<Ingest>>,
}

/// `GET /api/v1/connectors`
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectorsReport {
    /// `host:port` of the embedded MQTT broker, when it runs.
    pub mqtt_broker: Option<String>,
    /// Messages waiting in the ingest channel.
    pub queue_depth: usize,
    #[schema(value_type = Vec<Object>)]
    pub connectors: Vec<StatsSnapshot>,
}

impl Connectors {
    pub fn queue_depth(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }

    pub fn report(&self) -> ConnectorsReport {
        ConnectorsReport {
            mqtt_broker: self.mqtt_broker.map(|a| a.to_string()),
            queue_depth: self.queue_depth(),
            connectors: self.stats.iter().map(|s| s.snapshot()).collect(),
        }
    }
}

/// Sensor lookups by external id, with misses remembered for a while.
#[derive(Default)]
struct SensorCache {
    known: HashMap<String, Sensor>,
    unknown: HashMap<String, tokio::time::Instant>,
}

impl SensorCache {
    async fn resolve(
        &mut self,
        state: &AppState,
        id: &str,
    ) -> Result<Option<&Sensor>, StorageError> {
        if !self.known.contains_key(id) {
            if let Some(since) = self.unknown.get(id)
                && since.elapsed() < UNKNOWN_TTL
            {
                return Ok(None);
            }
            let mut conn = state.db.conn().await?;
            match sensors::by_external(&mut conn, id).await {
                Ok(s) => {
                    self.unknown.remove(id);
                    self.known.insert(id.to_string(), s);
                }
                Err(StorageError::NotFound { .. }) => {
                    if self.unknown.len() >= UNKNOWN_MAX {
                        self.unknown.clear();
                    }
                    self.unknown
                        .insert(id.to_string(), tokio::time::Instant::now());
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.known.get(id))
    }
}

/// A connection for writing readings, with SQLite's cache and checkpoint settings for it.
async fn writer(db: &Db) -> Result<PoolConnection<Any>, StorageError> {
    let mut conn = db.conn().await?;
    if db.backend == Backend::Sqlite {
        let pragmas = format!(
            "PRAGMA cache_size = -{SQLITE_CACHE_KIB}; PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT};"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(pragmas))
            .execute(&mut *conn)
            .await?;
    }
    Ok(conn)
}

/// When each sensor was last heard of and whether it counts as online.
struct Watch {
    sensor_id: i64,
    external_id: String,
    offline_after: chrono::Duration,
    last_seen: DateTime<Utc>,
    online: bool,
}

/// The ingest task's state.
pub struct Ingestor {
    state: AppState,
    /// The connection the readings are written with, kept from round to round when the pool has
    /// others for the rest of the hub: acquiring one per round cost a ping and a hand-off to the
    /// driver (about 0.15 ms), and it carries the SQLite settings above. Dropped on any error.
    conn: Option<PoolConnection<Any>>,
    cache: SensorCache,
    watch: HashMap<i64, Watch>,
    log: connectors::RateLimitedLog,
}

impl Ingestor {
    /// Loads every sensor; those that were online before a restart get a full interval to speak again.
    pub async fn new(state: AppState) -> Result<Self, StorageError> {
        let mut conn = state.db.conn().await?;
        let all = sensors::all_brief(&mut conn).await?;
        drop(conn);
        let now = Utc::now();
        let mut me = Ingestor {
            state,
            conn: None,
            cache: SensorCache::default(),
            watch: HashMap::new(),
            log: connectors::RateLimitedLog::new(Duration::from_secs(10), 3),
        };
        for s in all {
            me.watch.insert(
                s.id,
                Watch {
                    sensor_id: s.id,
                    external_id: s.external_id.clone(),
                    offline_after: chrono::Duration::seconds(s.offline_after_s),
                    last_seen: now,
                    online: s.online,
                },
            );
            me.cache.known.insert(s.external_id.clone(), s);
        }
        Ok(me)
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Ingest>, shutdown: CancellationToken) {
        let mut buf = Vec::with_capacity(ROUND);
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = rx.recv_many(&mut buf, ROUND) => {
                    if n == 0 {
                        break;
                    }
                    self.round(std::mem::take(&mut buf), &shutdown).await;
                }
                _ = every_second.tick() => self.check_silence(Utc::now()).await,
            }
        }
        // What is left in the channel was not acknowledged: the peers send it again.
    }

    /// Handles one round of messages: all readings in one transaction first, then the rest in order.
    async fn round(&mut self, batch: Vec<Ingest>, shutdown: &CancellationToken) {
        let mut readings: Vec<(Arc<ConnectorStats>, Vec<Reading>)> = Vec::new();
        let mut acks = Vec::new();
        let mut rest = Vec::new();
        for ingest in batch {
            match ingest {
                Ingest::Readings {
                    connector,
                    readings: r,
                    ack,
                } => {
                    readings.push((connector, r));
                    acks.extend(ack);
                }
                other => rest.push(other),
            }
        }
        if !readings.is_empty() {
            let started = std::time::Instant::now();
            let stored = self.store_readings(&readings, shutdown).await;
            self.state.metrics.inc("hub_ingest_rounds_total", &[]);
            self.state.metrics.add(
                "hub_ingest_store_microseconds_total",
                &[],
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
            let Some(events) = stored else {
                return; // stopping before it could be stored: unacknowledged, so redelivered
            };
            for ack in acks {
                // The connector may have stopped meanwhile; the data is stored either way.
                let _ = ack.send(());
            }
            // Published in one go (counters once per round), then the senders are marked heard, so
            // that a `sensor_online` follows the reading that brought the sensor back.
            let heard: Vec<i64> = events.iter().map(|e| e.0).collect();
            let bus = &self.state.bus;
            bus.publish_all(events.into_iter().map(|(_, sensor, value, at)| {
                let mut event = bus.event("ingest", EventKind::Reading { sensor, value });
                event.at = at;
                event
            }));
            let now = Utc::now();
            for sensor_id in heard {
                self.heard(sensor_id, now).await;
            }
        }
        for ingest in rest {
            match ingest {
                Ingest::Readings { .. } => {}
                Ingest::Outage {
                    connector,
                    origin,
                    record,
                    ack,
                } => {
                    self.outage(&connector, &origin, record).await;
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Ingest::Status {
                    connector,
                    sensors,
                    online,
                    reason,
                } => {
                    if !online {
                        for s in sensors {
                            let id = match self.cache.resolve(&self.state, &s).await {
                                Ok(Some(sensor)) => sensor.id,
                                _ => continue,
                            };
                            self.set_online(id, false, Some(&reason)).await;
                        }
                    } else {
                        tracing::debug!(connector = %connector.id, "device back: its sensors go online with their next reading");
                    }
                }
            }
        }
    }

    /// Writes the readings of known sensors, retrying until the database takes them; returns what to
    /// publish, or `None` when the hub stops first.
    async fn store_readings(
        &mut self,
        batches: &[(Arc<ConnectorStats>, Vec<Reading>)],
        shutdown: &CancellationToken,
    ) -> Option<Vec<(i64, String, f64, DateTime<Utc>)>> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.try_store(batches).await {
                Ok(published) => return Some(published),
                Err(e) => {
                    self.state.metrics.inc("hub_ingest_write_errors_total", &[]);
                    if let Some(suppressed) = self.log.allow() {
                        tracing::error!(error = %e, suppressed, "readings not stored; retrying");
                    }
                    // A sensor may have been deleted: look them all up again.
                    self.cache.known.clear();
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn try_store(
        &mut self,
        batches: &[(Arc<ConnectorStats>, Vec<Reading>)],
    ) -> Result<Vec<(i64, String, f64, DateTime<Utc>)>, StorageError> {
        let now = Utc::now();
        let mut rows: Vec<ReadingRow> = Vec::new();
        let mut published = Vec::new();
        for (connector, readings) in batches {
            let mut accepted = 0;
            for r in readings {
                let Some(sensor) = self.cache.resolve(&self.state, &r.sensor).await? else {
                    connector.reject(
                        &r.sensor,
                        "unknown sensor (add it with the API or `hub import sensors`)",
                    );
                    continue;
                };
                let at = r.at.unwrap_or(now);
                rows.push((sensor.id, to_ms(at), r.value));
                published.push((sensor.id, r.sensor.clone(), r.value, at));
                accepted += 1;
            }
            connector.accepted(accepted);
        }
        if rows.is_empty() {
            return Ok(published);
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(writer(&self.state.db).await?),
        };
        let written = async {
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            sensors::record_readings(&mut tx, &rows).await?;
            tx.commit().await?;
            Ok::<_, StorageError>(())
        }
        .await;
        // A pool of one connection is shared with the rest of the hub between rounds.
        if written.is_err() || self.state.db.pool.options().get_max_connections() < 2 {
            self.conn = None;
        }
        written?;
        self.state
            .metrics
            .add("hub_readings_stored_total", &[], rows.len() as u64);
        Ok(published)
    }

    /// An outage record from a feed: the same validation and action layer as `POST /api/v1/outages`.
    async fn outage(
        &mut self,
        connector: &ConnectorStats,
        origin: &str,
        record: serde_json::Value,
    ) {
        let parsed: Result<NewOutage, _> = serde_path_to_error::deserialize(record);
        let new = match parsed {
            Ok(n) => n,
            Err(e) => {
                let field = e.path().to_string();
                connector.reject(origin, &format!("outage record: {field}: {}", e.inner()));
                return;
            }
        };
        let actor = format!("connector:{}", connector.id);
        let source = format!("{}.{}", connector.kind, connector.id);
        match crate::actions::record_outage(&self.state, &actor, &source, None, &new).await {
            Ok(_) => connector.accepted(1),
            Err(e) => connector.reject(origin, &format!("outage record: {e}")),
        }
    }

    /// A reading arrived: the sensor is heard from, and back online if it was not.
    async fn heard(&mut self, sensor_id: i64, now: DateTime<Utc>) {
        let back = match self.watch.get_mut(&sensor_id) {
            Some(w) => {
                w.last_seen = now;
                !w.online
            }
            None => {
                if let Some(s) = self.cache.known.values().find(|s| s.id == sensor_id) {
                    self.watch.insert(
                        sensor_id,
                        Watch {
                            sensor_id,
                            external_id: s.external_id.clone(),
                            offline_after: chrono::Duration::seconds(s.offline_after_s),
                            last_seen: now,
                            online: s.online,
                        },
                    );
                    !s.online
                } else {
                    false
                }
            }
        };
        if back {
            self.set_online(sensor_id, true, None).await;
        }
    }

    /// Every second: sensors silent for longer than their interval go offline.
    async fn check_silence(&mut self, now: DateTime<Utc>) {
        let silent: Vec<i64> = self
            .watch
            .values()
            .filter(|w| w.online && now - w.last_seen > w.offline_after)
            .map(|w| w.sensor_id)
            .collect();
        for id in silent {
            self.set_online(id, false, Some("silent")).await;
        }
    }

    /// Records a transition (flag, journal) and publishes it.
    async fn set_online(&mut self, sensor_id: i64, online: bool, reason: Option<&str>) {
        let Some(w) = self.watch.get_mut(&sensor_id) else {
            return;
        };
        if w.online == online {
            return;
        }
        w.online = online;
        let sensor = w.external_id.clone();
        let kind = if online {
            EventKind::SensorOnline { sensor }
        } else {
            EventKind::SensorOffline { sensor }
        };
        let event = self.state.bus.event("ingest", kind);
        let stored = async {
            let mut tx = self.state.db.begin().await?;
            sensors::set_online(&mut tx, sensor_id, online).await?;
            events::append(&mut tx, &event).await?;
            tx.commit().await?;
            Ok::<_, StorageError>(())
        }
        .await;
        if let Err(e) = stored {
            tracing::error!(error = %e, sensor_id, "sensor status not stored");
        }
        if let Some(k) = self.cache.known.values_mut().find(|s| s.id == sensor_id) {
            k.online = online;
        }
        tracing::info!(sensor = %w.external_id, online, reason = reason.unwrap_or(""), "sensor status");
        self.state.bus.publish(event);
    }
}
