//! Hub: a rules-driven automation and notification hub for utilities. The library holds everything;
//! `main` only parses the command line. `run` starts the daemon: storage, the event bus, the HTTP API
//! and UI, and (as their issues land) connectors, rules, campaigns and telephony.

pub mod actions;
pub mod alarms;
pub mod api;
pub mod auth;
pub mod automation;
pub mod bus;
pub mod campaigns;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod import;
pub mod ingest;
pub mod metrics;
pub mod names;
pub mod network;
pub mod simulate;
pub mod storage;
pub mod telephony;
pub mod testing;
pub mod tickets;
pub mod types;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::config::Config;
use crate::names::Role;
use crate::storage::{Db, StorageError, users};

/// Failures that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("http {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Setup(String),
}

/// How `hub serve` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Load the demo data set (idempotent) and create one user per role.
    pub demo: bool,
}

/// Chooses the TLS crypto provider for the whole process. Two are compiled in (the MQTT client's and
/// the HTTP client's dependencies each bring one), and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    // Err only means one is installed already (a second call, or a test harness did it).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Opens and migrates the database named by the configuration.
pub async fn open_db(config: &Config) -> Result<Db, StorageError> {
    let db = Db::connect(
        config.database.url.expose(),
        config.database.max_connections,
    )
    .await?;
    db.migrate().await?;
    Ok(db)
}

/// Runs the hub until `shutdown` is cancelled; in-flight requests finish first.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), HubError> {
    install_crypto_provider();
    let db = open_db(&config).await?;
    tracing::info!(database = %config.database.url, "database ready");
    if opts.demo {
        let summary = demo::load(&db).await?;
        println!("{summary}");
        for (user, password) in demo::ensure_users(&db).await? {
            println!("demo user {:<10} password {password}", user);
        }
    }
    if let Some(password) = ensure_first_admin(&db).await? {
        println!(
            "first start: created user `admin` with password {password} (shown once; change it)"
        );
    }

    let mut state = AppState::new(db.clone(), config.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    // Telephony first: the runtimes started below (rules, campaigns, escalation) place calls with it.
    if config.telephony.enabled {
        let phone = telephony::start(
            &config.telephony,
            db.clone(),
            state.network.clone(),
            state.metrics.clone(),
            Some(state.bus.clone()),
            &tasks,
            shutdown.clone(),
        )
        .await
        .map_err(|e| HubError::Setup(e.to_string()))?;
        println!("sip listening on udp:{}", phone.sip_addr());
        if config.telephony.listen_tcp {
            println!("sip listening on tcp:{}", phone.sip_addr());
        }
        tracing::info!(addr = %phone.sip_addr(), "sip listening");
        // Callers who asked to be told when an outage is over (key 9 after the announcement).
        tasks.spawn(telephony::restored::run(
            db.clone(),
            state.bus.clone(),
            shutdown.clone(),
        ));
        state.telephony = Some(phone);
    }
    start_connectors(&mut state, &config, &tasks, &shutdown).await?;
    if config.rules.enabled {
        let (runtime, handle) =
            automation::Runtime::new(state.clone(), config.rules.clone()).await?;
        state.rules = Some(handle);
        tasks.spawn(runtime.run(shutdown.clone()));
    }

    tasks.spawn({
        let (escalator, state, shutdown) = (
            alarms::Escalator::new(config.alarms.clone()),
            state.clone(),
            shutdown.clone(),
        );
        async move {
            if let Err(e) = escalator.run(state, shutdown).await {
                tracing::error!(error = %e, "alarm escalation stopped");
            }
        }
    });
    tasks.spawn(tickets::Scheduler::new(&config.tickets).run(state.clone(), shutdown.clone()));
    let deliverer = delivery::Deliverer::from_config(&config).map_err(HubError::Setup)?;
    tasks.spawn(deliverer.run(state.clone(), shutdown.clone()));
    if config.campaigns.enabled {
        // Voice through the telephony core when it runs; otherwise voice contacts fall through.
        let dialer = state.telephony.clone().map(|phone| {
            Arc::new(campaigns::voice::TelephonyDialer::new(phone, &config))
                as Arc<dyn campaigns::dispatch::Dialer>
        });
        let dispatcher = campaigns::dispatch::Dispatcher::from_config(&config, dialer)
            .map_err(HubError::Setup)?;
        tasks.spawn(dispatcher.run(state.clone(), shutdown.clone()));
    }
    tasks.spawn(trim_readings(
        db.clone(),
        config.database.readings_retention_days,
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| HubError::Bind {
            addr: config.http.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(HubError::Serve)?;
    println!("http listening on http://{addr}");
    tracing::info!(%addr, "http listening");
    let bus = state.bus.clone();
    let app = api::app(state);
    let stopping = shutdown.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stopping.cancelled().await;
            // Live streams never finish by themselves: end them so in-flight requests can.
            bus.close();
        })
        .await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    db.pool.close().await;
    tracing::info!("stopped");
    result.map_err(HubError::Serve)
}

/// Starts the embedded MQTT broker (unless disabled), the ingest task and every configured connector.
pub async fn start_connectors(
    state: &mut AppState,
    config: &Config,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), HubError> {
    let broker = &config.mqtt_broker;
    let mqtt_broker = if broker.enabled {
        let (listen, max_payload, max_connections) = (
            broker.listen,
            broker.max_payload_bytes,
            broker.max_connections,
        );
        let addr = tokio::task::spawn_blocking(move || {
            connectors::mqtt::broker::start(listen, max_payload, max_connections)
        })
        .await
        .map_err(|e| HubError::Setup(format!("mqtt broker: {e}")))?
        .map_err(|e| HubError::Setup(e.to_string()))?;
        println!("mqtt listening on {addr}");
        tracing::info!(%addr, "embedded mqtt broker listening");
        Some(addr)
    } else {
        None
    };
    let mut configured = config.connectors.clone();
    if configured.is_empty() && mqtt_broker.is_some() {
        // QoS 0 between the embedded broker and the hub: they live and die in one process, so the
        // hub's acknowledgements would protect nothing (a sensor's QoS 1 PUBACK comes from the broker)
        // and rumqttd's fixed window of 100 unacknowledged messages would cap ingest (docs/performance.md).
        let embedded = connectors::mqtt::MqttConfig {
            qos: 0,
            ..connectors::mqtt::MqttConfig::default()
        };
        configured.insert("mqtt".into(), connectors::ConnectorConfig::Mqtt(embedded));
    }
    let (sink, rx) = tokio::sync::mpsc::channel(connectors::INGEST_CAPACITY);
    let mut stats = Vec::new();
    let mut writers = automation::Writers::default();
    let mut embedded = Vec::new();
    for (id, c) in configured {
        let ctx = connectors::ConnectorContext {
            id: id.clone(),
            sink: sink.clone(),
            stats: Arc::new(connectors::ConnectorStats::new(&id, c.kind())),
            shutdown: shutdown.clone(),
        };
        stats.push(ctx.stats.clone());
        match c {
            connectors::ConnectorConfig::Mqtt(m) => {
                if m.url.is_empty() {
                    embedded.push(ctx.stats.clone());
                }
                let connector = connectors::mqtt::MqttConnector::new(m, mqtt_broker)
                    .map_err(|e| HubError::Setup(format!("connectors.{id}: {e}")))?;
                tasks.spawn(supervise(id, connectors::Connector::run(connector, ctx)));
            }
            connectors::ConnectorConfig::Modbus(m) => {
                let sensors: Vec<String> = m.registers.iter().map(|r| r.sensor.clone()).collect();
                let (connector, handle) = connectors::modbus::ModbusConnector::new(m)
                    .map_err(|e| HubError::Setup(format!("connectors.{id}: {e}")))?;
                writers.add(sensors, &handle);
                tasks.spawn(supervise(id, connectors::Connector::run(connector, ctx)));
            }
        }
    }
    state.modbus = Arc::new(writers);
    // A sensor publishing to the embedded broker right after the start must not be lost for want of
    // the hub's subscription: wait (a little) for it before the hub reports itself listening.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while embedded.iter().any(|s| !s.is_ready()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    state.connectors = Arc::new(ingest::Connectors {
        stats,
        mqtt_broker,
        queue: Some(sink),
    });
    let ingestor = ingest::Ingestor::new(state.clone()).await?;
    tasks.spawn(ingestor.run(rx, shutdown.clone()));
    Ok(())
}

/// Runs a connector until it returns; a connector that stops on an error is logged (the hub goes on).
async fn supervise(
    id: String,
    task: impl std::future::Future<Output = Result<(), connectors::ConnectorError>>,
) {
    if let Err(e) = task.await {
        tracing::error!(connector = %id, error = %e, "connector stopped");
    }
}

/// With no user at all, creates `admin` with a random password, returned to be printed once.
pub async fn ensure_first_admin(db: &Db) -> Result<Option<String>, StorageError> {
    let mut conn = db.conn().await?;
    if users::count(&mut conn).await? > 0 {
        return Ok(None);
    }
    let password = auth::new_password();
    let hash = auth::hash_password(&password)
        .map_err(|e| StorageError::invalid("password", e.to_string()))?;
    users::create(&mut conn, "admin", &hash, Role::Admin, None).await?;
    crate::storage::audit::record(
        &mut conn,
        "system",
        "create",
        "user",
        "admin",
        serde_json::json!({"first_start": true}),
    )
    .await?;
    Ok(Some(password))
}

/// Hourly: deletes reading history older than the retention setting.
async fn trim_readings(db: Db, keep_days: u32, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match db.conn().await {
            Ok(mut conn) => match storage::sensors::trim_history(&mut conn, keep_days).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "reading history trimmed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading history trim failed"),
            },
            Err(e) => tracing::warn!(error = %e, "reading history trim: no connection"),
        }
    }
}
