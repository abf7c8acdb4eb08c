//! MQTT ingest benchmark, the figures of `docs/performance.md`: sensors publish to the embedded broker
//! (rumqttd), the hub's MQTT connector takes the messages, the ingest task stores them in SQLite in
//! batches and publishes them on the bus. Measured: sustained readings per second arriving on the bus,
//! the latency from publishing to the bus (p50/p99, from the time each message carries) and the
//! process's peak memory.
//!
//! `cargo bench -p hub --bench ingest`. Environment: `HUB_BENCH_READINGS` (default 500,000),
//! `HUB_BENCH_SENSORS` (default 2,000), `HUB_BENCH_PUBLISHERS` (default 4), `HUB_BENCH_QOS` (0 or 1,
//! default 1).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hub::api::AppState;
use hub::config::Config;
use rules::EventKind;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

fn env_size(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let readings = env_size("HUB_BENCH_READINGS", 500_000)?;
    let sensors = env_size("HUB_BENCH_SENSORS", 2_000)?.max(1);
    let publishers = env_size("HUB_BENCH_PUBLISHERS", 4)?.max(1);
    let qos = if env_size("HUB_BENCH_QOS", 1)? == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(readings, sensors, publishers, qos))
}

async fn run(readings: usize, sensors: usize, publishers: usize, qos: QoS) -> anyhow::Result<()> {
    println!("Hub MQTT ingest benchmark");
    println!(
        "{readings} readings from {sensors} sensors by {publishers} publishers at {qos:?}, embedded broker, SQLite"
    );
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let mut config = Config::default();
    config.database.url = hub::config::Secret::new(url);
    config.mqtt_broker.listen = "127.0.0.1:0".parse()?;
    let db = hub::open_db(&config).await?;
    {
        let mut conn = db.conn().await?;
        let tenant = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )?;
        hub::storage::tenants::upsert(&mut conn, &tenant).await?;
        let mut refs = hub::storage::refs::Refs::new();
        for i in 0..sensors {
            let s = serde_json::from_value(
                serde_json::json!({"tenant": "t", "external_id": format!("s-{i}"), "kind": "pressure"}),
            )?;
            hub::storage::sensors::upsert(&mut conn, &mut refs, &s).await?;
        }
    }
    let mut state = AppState::new(db, config.clone());
    let tasks = tokio_util::task::TaskTracker::new();
    let shutdown = CancellationToken::new();
    hub::start_connectors(&mut state, &config, &tasks, &shutdown).await?;
    let broker = state.connectors.mqtt_broker.context("embedded broker")?;
    let mut sub = state.bus.subscribe("bench");
    // Let the hub's connector subscribe before anything is published.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let per = readings / publishers;
    for p in 0..publishers {
        let sent = sent.clone();
        let mut o = MqttOptions::new(format!("bench-{p}"), broker.ip().to_string(), broker.port());
        o.set_inflight(1000).set_request_channel_capacity(10_000);
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        tokio::spawn(async move {
            for i in 0..per {
                let sensor = (p * per + i) % sensors;
                let at = chrono::Utc::now().timestamp_millis();
                let payload = format!("{{\"value\": {}, \"at\": {at}}}", (i % 1000) as f64 / 100.0);
                if client
                    .publish(format!("sensors/s-{sensor}"), qos, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let expected = (per * publishers) as u64;
    let mut got: u64 = 0;
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut first: Option<Instant> = None;
    while got < expected {
        let event = match tokio::time::timeout(Duration::from_secs(20), sub.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => anyhow::bail!("bus closed"),
            Err(_) => anyhow::bail!("stalled: {got} of {expected} readings arrived"),
        };
        if let EventKind::Reading { .. } = event.kind {
            first.get_or_insert_with(Instant::now);
            got += 1;
            let ms = (chrono::Utc::now() - event.at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0;
            latencies.push(ms);
        }
    }
    let elapsed = start.elapsed();
    let lagged = state
        .metrics
        .get("hub_bus_lagged_total", &[("subscriber", "bench")]);
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "on the bus: {got} readings in {:.2} s = {:.0} readings/s (publishing took {:.2} s)",
        elapsed.as_secs_f64(),
        got as f64 / elapsed.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    println!(
        "publish -> bus latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (ms resolution)",
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    let stored: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM readings")
        .fetch_one(&state.db.pool)
        .await?;
    println!(
        "stored: {} readings; bus subscriber lagged: {lagged}",
        stored.0
    );
    println!("peak memory (VmHWM): {}", peak_memory());
    shutdown.cancel();
    Ok(())
}

fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
