//! MQTT ingest benchmark, the figures of `docs/performance.md`: sensors publish to the embedded broker
//! (rumqttd), the hub's MQTT connector takes the messages, the ingest task stores them in SQLite in
//! batches and publishes them on the bus. Measured: sustained readings per second arriving on the bus,
//! the latency from publishing to the bus (p50/p99, from the time each message carries) and the
//! process's peak memory.
//!
//! `cargo bench -p hub --bench ingest`. Environment: `HUB_BENCH_READINGS` (default 1,000,000),
//! `HUB_BENCH_SENSORS` (default 2,000), `HUB_BENCH_PUBLISHERS` (default 2), `HUB_BENCH_QOS` (0 or 1,
//! default 1), `HUB_BENCH_RATE` (readings/s offered in all, default 0: as fast as the hub takes them;
//! latency means most at a rate the hub sustains, since at saturation it is the queue's length).
//!
//! The publishers are plain threads that write MQTT packets over TCP in batches of `CHUNK`: rumqttc
//! writes and flushes every message on its own, and with it the publishers in this same process took
//! more of the two cores than the hub.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hub::api::AppState;
use hub::config::Config;
use rules::EventKind;
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
    let readings = env_size("HUB_BENCH_READINGS", 1_000_000)?;
    let sensors = env_size("HUB_BENCH_SENSORS", 2_000)?.max(1);
    let publishers = env_size("HUB_BENCH_PUBLISHERS", 2)?.max(1);
    let qos = u8::from(env_size("HUB_BENCH_QOS", 1)? != 0);
    let rate = env_size("HUB_BENCH_RATE", 0)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(readings, sensors, publishers, qos, rate))
}

async fn run(
    readings: usize,
    sensors: usize,
    publishers: usize,
    qos: u8,
    rate: usize,
) -> anyhow::Result<()> {
    println!("Hub MQTT ingest benchmark");
    let offered = if rate == 0 {
        "as fast as taken".to_string()
    } else {
        format!("{rate}/s offered")
    };
    println!(
        "{readings} readings from {sensors} sensors by {publishers} publishers at QoS {qos}, {offered}, embedded broker, SQLite"
    );
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let mut config = Config::default();
    config.database.url = hub::config::Secret::new(url);
    config.mqtt_broker.listen = "127.0.0.1:0".parse()?;
    // The hub's subscription has the publishers' QoS: the broker delivers at the lower of the two, and
    // a QoS 1 subscription is held to rumqttd's window of 100 unacknowledged messages.
    config.connectors.insert(
        "mqtt".into(),
        connectors::ConnectorConfig::Mqtt(connectors::mqtt::MqttConfig {
            qos,
            ..Default::default()
        }),
    );
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
    let per_rate = rate as f64 / publishers as f64;
    for p in 0..publishers {
        let sent = sent.clone();
        let first = p * per;
        std::thread::Builder::new()
            .name(format!("bench-pub-{p}"))
            .spawn(move || {
                if let Err(e) =
                    publish(broker, p, first..first + per, sensors, qos, per_rate, &sent)
                {
                    eprintln!("publisher {p}: {e}");
                }
            })?;
    }
    let expected = (per * publishers) as u64;
    let mut got: u64 = 0;
    let mut latencies = Vec::with_capacity(expected as usize);
    let mut published: Option<Duration> = None;
    while got < expected {
        let event = match tokio::time::timeout(Duration::from_secs(20), sub.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => anyhow::bail!("bus closed"),
            Err(_) => anyhow::bail!("stalled: {got} of {expected} readings arrived"),
        };
        if let EventKind::Reading { .. } = event.kind {
            got += 1;
            if published.is_none() && sent.load(Ordering::Relaxed) >= expected {
                published = Some(start.elapsed());
            }
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
        published.unwrap_or(elapsed).as_secs_f64()
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
    let rounds = state.metrics.get("hub_ingest_rounds_total", &[]);
    let store_us = state
        .metrics
        .get("hub_ingest_store_microseconds_total", &[]);
    println!(
        "ingest rounds: {rounds}, {:.0} readings per round, {:.2} s writing in all",
        got as f64 / rounds.max(1) as f64,
        store_us as f64 / 1e6
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

/// Messages written to the socket at once.
const CHUNK: usize = 64;
/// QoS 1 messages a publisher sends before it waits for the broker's PUBACKs.
const WINDOW: u64 = 2_000;

/// One publisher: CONNECT, then the readings `which` (sensor `i % sensors`) as PUBLISH packets of
/// `{"value": .., "at": ms}`, `CHUNK` per write, at `rate` per second (0: as fast as the socket takes
/// them; at QoS 1 at most `WINDOW` unacknowledged).
fn publish(
    broker: SocketAddr,
    id: usize,
    which: std::ops::Range<usize>,
    sensors: usize,
    qos: u8,
    rate: f64,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(broker)?;
    stream.set_nodelay(true)?;
    let client_id = format!("bench-{id}");
    // CONNECT: MQTT 3.1.1, clean session, keep-alive 600 s.
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58];
    connect.extend_from_slice(&u16::try_from(client_id.len()).unwrap_or(0).to_be_bytes());
    connect.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    packet.extend_from_slice(&remaining_length(connect.len()));
    packet.extend_from_slice(&connect);
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other(format!("refused: {connack:?}")));
    }
    // PUBACKs are counted by a reader thread; each is 4 bytes (0x40, 2, packet id).
    let acked = Arc::new(AtomicU64::new(0));
    if qos == 1 {
        let mut reader = stream.try_clone()?;
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut bytes: u64 = 0;
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                acked.store(bytes / 4, Ordering::Release);
            }
        });
    }
    let start = Instant::now();
    let mut pkid: u16 = 0;
    let mut buf = Vec::with_capacity(CHUNK * 64);
    let mut done: u64 = 0;
    let total = which.len() as u64;
    let mut next = which.start;
    while next < which.end {
        let chunk = next..(next + CHUNK).min(which.end);
        next = chunk.end;
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(done as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        while qos == 1 && done - acked.load(Ordering::Acquire) >= WINDOW {
            std::thread::sleep(Duration::from_micros(200));
        }
        buf.clear();
        let at = chrono::Utc::now().timestamp_millis();
        for i in chunk.clone() {
            let topic = format!("sensors/s-{}", i % sensors);
            let payload = format!("{{\"value\": {}, \"at\": {at}}}", (i % 1000) as f64 / 100.0);
            let pkid_len = if qos == 1 { 2 } else { 0 };
            buf.push(0x30 | (qos << 1));
            buf.extend_from_slice(&remaining_length(
                2 + topic.len() + pkid_len + payload.len(),
            ));
            buf.extend_from_slice(&u16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
            buf.extend_from_slice(topic.as_bytes());
            if qos == 1 {
                pkid = pkid.checked_add(1).unwrap_or(1);
                buf.extend_from_slice(&pkid.to_be_bytes());
            }
            buf.extend_from_slice(payload.as_bytes());
        }
        stream.write_all(&buf)?;
        done += chunk.len() as u64;
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    // Stay connected until the broker has every message (QoS 1), or a moment (QoS 0).
    let deadline = Instant::now() + Duration::from_secs(60);
    while qos == 1 && acked.load(Ordering::Acquire) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&[0xE0, 0])
}

/// MQTT's variable-length encoding of a packet's remaining length.
fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}
