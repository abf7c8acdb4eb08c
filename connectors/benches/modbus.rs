//! Benchmark of the Modbus connector (`cargo bench -p connectors --bench modbus`): 100 simulated
//! devices with 10 registers each, one connector per device polling every second, all in this
//! process. Reports readings per second, how far polls stray from their schedule, and CPU time.
//!
//! Environment: HUB_BENCH_SECONDS (default 10), HUB_BENCH_DEVICES (default 100),
//! HUB_BENCH_INTERVAL_MS (default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors::modbus::testing::{SimDevice, Tables, TestServer};
use connectors::modbus::{ModbusConfig, ModbusConnector, stagger};
use connectors::{Connector, ConnectorContext, ConnectorStats, INGEST_CAPACITY, Ingest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Thread names, so CPU time can be told apart per runtime (Linux keeps 15 characters).
const CONNECTOR_THREADS: &str = "hub-modbus";
const DEVICE_THREADS: &str = "modbus-sim";

/// Ten sensors over 14 holding registers: 4 u16, 2 i16, 2 u32, 2 f32.
const REGISTERS: &str = r#"
[[registers]]
sensor = "s0"
table = "holding"
address = 0
[[registers]]
sensor = "s1"
table = "holding"
address = 1
[[registers]]
sensor = "s2"
table = "holding"
address = 2
scale = 0.1
[[registers]]
sensor = "s3"
table = "holding"
address = 3
scale = 0.01
offset = -40
[[registers]]
sensor = "s4"
table = "holding"
address = 4
type = "i16"
[[registers]]
sensor = "s5"
table = "holding"
address = 5
type = "i16"
[[registers]]
sensor = "s6"
table = "holding"
address = 6
type = "u32"
[[registers]]
sensor = "s7"
table = "holding"
address = 8
type = "u32"
word_order = "little"
[[registers]]
sensor = "s8"
table = "holding"
address = 10
type = "f32"
[[registers]]
sensor = "s9"
table = "holding"
address = 12
type = "f32"
byte_order = "little"
"#;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) per thread name prefix, from /proc/self/task/*/stat.
fn cpu_by_thread(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|stat| {
            stat.split_once(" (")
                .and_then(|(_, rest)| rest.split_once(") "))
                .is_some_and(|(comm, _)| comm.starts_with(prefix))
        })
        .map(|stat| cpu_seconds(&stat))
        .sum()
}

/// The whole process's CPU seconds, from /proc/self/stat.
fn cpu_process() -> f64 {
    std::fs::read_to_string("/proc/self/stat").map_or(f64::NAN, |s| cpu_seconds(&s))
}

/// utime + stime (fields 14 and 15) of a stat line, in seconds at 100 ticks per second (the
/// Linux USER_HZ on every common architecture).
fn cpu_seconds(stat: &str) -> f64 {
    let Some((_, after_comm)) = stat.rsplit_once(") ") else {
        return f64::NAN;
    };
    // Field 3 (state) is the first after the command name.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn device_tables(n: u16) -> Tables {
    let mut t = Tables::default();
    for a in 0..14u16 {
        t.holding.insert(a, n.wrapping_mul(31).wrapping_add(a));
    }
    t
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = env("HUB_BENCH_SECONDS", 10);
    let devices = env("HUB_BENCH_DEVICES", 100) as usize;
    let interval = Duration::from_millis(env("HUB_BENCH_INTERVAL_MS", 1000));

    let sim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(DEVICE_THREADS)
        .enable_all()
        .build()?;
    let hub = tokio::runtime::Builder::new_multi_thread()
        .thread_name(CONNECTOR_THREADS)
        .enable_all()
        .build()?;

    let sims: Vec<SimDevice> = (0..devices)
        .map(|n| SimDevice::new(device_tables(n as u16)))
        .collect();
    let servers = sim.block_on(async {
        let mut servers = Vec::with_capacity(devices);
        for d in &sims {
            servers.push(TestServer::start("127.0.0.1:0".parse()?, d.clone()).await?);
        }
        Ok::<_, Box<dyn std::error::Error>>(servers)
    })?;

    let cpu_hub_0 = cpu_by_thread(CONNECTOR_THREADS);
    let cpu_sim_0 = cpu_by_thread(DEVICE_THREADS);
    let cpu_all_0 = cpu_process();

    let (readings, batches, started, elapsed) = hub.block_on(async {
        let (tx, mut rx) = mpsc::channel(INGEST_CAPACITY);
        let shutdown = CancellationToken::new();
        let mut started = Vec::with_capacity(devices);
        let mut tasks = Vec::with_capacity(devices);
        let t0 = Instant::now();
        for (n, server) in servers.iter().enumerate() {
            let addr = server.addr();
            let text = format!(
                "host = \"{}\"\nport = {}\npoll_interval_ms = {}\n{REGISTERS}",
                addr.ip(),
                addr.port(),
                interval.as_millis()
            );
            let config: ModbusConfig = toml::from_str(&text)?;
            let (connector, _handle) = ModbusConnector::new(config)?;
            let id = format!("boiler_{n}");
            let ctx = ConnectorContext {
                stats: Arc::new(ConnectorStats::new(&id, "modbus")),
                id: id.clone(),
                sink: tx.clone(),
                shutdown: shutdown.clone(),
            };
            // The connector's first poll is due at (start + stagger): its schedule's origin.
            started.push(Instant::now() + stagger(&id, interval));
            tasks.push(tokio::spawn(connector.run(ctx)));
        }
        drop(tx);
        let stop = tokio::time::sleep(Duration::from_secs(seconds));
        tokio::pin!(stop);
        let (mut readings, mut batches) = (0u64, 0u64);
        loop {
            tokio::select! {
                () = &mut stop => break,
                got = rx.recv() => match got {
                    Some(Ingest::Readings { readings: r, .. }) => {
                        readings += r.len() as u64;
                        batches += 1;
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        let elapsed = t0.elapsed();
        shutdown.cancel();
        for t in tasks {
            t.await??;
        }
        Ok::<_, Box<dyn std::error::Error>>((readings, batches, started, elapsed))
    })?;

    let cpu_hub = cpu_by_thread(CONNECTOR_THREADS) - cpu_hub_0;
    let cpu_sim = cpu_by_thread(DEVICE_THREADS) - cpu_sim_0;
    let cpu_all = cpu_process() - cpu_all_0;

    // Drift: when each request reached its device against start + stagger + n x interval.
    let mut drift_ms: Vec<f64> = Vec::new();
    let mut polls = 0usize;
    for (d, origin) in sims.iter().zip(&started) {
        for (n, (at, _)) in d.requests().iter().enumerate() {
            let due = *origin + interval * n as u32;
            let late = at.saturating_duration_since(due).as_secs_f64();
            let early = due.saturating_duration_since(*at).as_secs_f64();
            drift_ms.push((late - early) * 1000.0);
            polls += 1;
        }
    }
    drift_ms.sort_by(f64::total_cmp);
    let abs_max = drift_ms.iter().fold(0.0f64, |m, d| m.max(d.abs()));
    let secs = elapsed.as_secs_f64();

    println!(
        "modbus: {devices} devices x 10 registers, polled every {} ms for {secs:.1} s",
        interval.as_millis()
    );
    println!(
        "  readings          {readings} ({:.0}/s) in {batches} batches; {polls} polls",
        readings as f64 / secs
    );
    println!(
        "  drift from schedule  p50 {:.2} ms  p99 {:.2} ms  max |drift| {:.2} ms",
        percentile(&drift_ms, 0.5),
        percentile(&drift_ms, 0.99),
        abs_max
    );
    println!(
        "  cpu  connectors {cpu_hub:.2} s ({:.1}% of one core)  simulated devices {cpu_sim:.2} s  process {cpu_all:.2} s",
        cpu_hub / secs * 100.0
    );
    let expected = (devices as f64) * 10.0 * secs / interval.as_secs_f64();
    println!(
        "  expected about {expected:.0} readings; got {:.1}%",
        readings as f64 / expected * 100.0
    );
    sim.block_on(async {
        for s in servers {
            s.stop().await;
        }
    });
    Ok(())
}
