//! Rules runtime benchmark, the figures of `docs/performance.md` ("Rules in the hub"): the hub's own
//! `automation::Runtime` on a fresh SQLite database with 2,000 sensors and 50 rule files, fed readings
//! straight onto the bus (no MQTT, no ingest: what is measured is bus -> rules -> actions). Measured:
//! readings evaluated per second (by the rules' own counters, paced so the runtime never falls behind
//! the bus), the latency from publishing a threshold-crossing reading to its `AlarmRaised` on the bus
//! (p50/p99, under background load), and that rewriting rule files under load loses no event.
//!
//! `cargo bench -p hub --bench rules_runtime`. Environment: `HUB_BENCH_READINGS` (default 1,000,000),
//! `HUB_BENCH_SENSORS` (2,000), `HUB_BENCH_RULES` (50), `HUB_BENCH_ALARMS` (200),
//! `HUB_BENCH_LOAD_RATE` (background readings/s during the latency and reload phases, 50,000),
//! `HUB_BENCH_RELOADS` (5).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hub::api::AppState;
use hub::automation::{RulesConfig, RulesHandle, Runtime};
use hub::config::Config;
use rules::EventKind;
use tokio_util::sync::CancellationToken;

/// Readings published but not yet evaluated, at most: well under the bus's 65,536 so nothing is lost.
const WINDOW: u64 = 16_384;
/// Readings per publish burst.
const BATCH: usize = 1_000;

fn env_size(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

struct Sizes {
    readings: usize,
    sensors: usize,
    rules: usize,
    alarms: usize,
    load_rate: usize,
    reloads: usize,
}

/// The rules folder and who is in which group.
struct Layout {
    /// Rules on groups of sensors (`group_NN`, one per group).
    groups: usize,
    per_group: usize,
}

impl Layout {
    fn sensor(&self, i: usize) -> String {
        let i = i % (self.groups * self.per_group);
        format!("g{:02}.s{}", i / self.per_group, i % self.per_group)
    }
}

fn main() -> anyhow::Result<()> {
    let sizes = Sizes {
        readings: env_size("HUB_BENCH_READINGS", 1_000_000)?,
        sensors: env_size("HUB_BENCH_SENSORS", 2_000)?,
        rules: env_size("HUB_BENCH_RULES", 50)?.max(6),
        alarms: env_size("HUB_BENCH_ALARMS", 200)?.max(1),
        load_rate: env_size("HUB_BENCH_LOAD_RATE", 50_000)?.max(1_000),
        reloads: env_size("HUB_BENCH_RELOADS", 5)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(sizes))
}

/// A group rule of one of three shapes: a threshold counted in `this`, a condition held for 30 s, a
/// rate of change over the sensor's recent history.
fn group_rule(g: usize, limit: f64) -> String {
    let body = match g % 3 {
        0 => "if ev.value > limit() { this.high = (this.high ?? 0) + 1; }",
        1 => "if held_for(ev.sensor, ev.value > limit(), 30) { log(\"high \" + ev.sensor); }",
        _ => "if rate_of_change(ev.sensor, 10) < -1.0 { this.falls = (this.falls ?? 0) + 1; }",
    };
    format!(
        "on_reading(\"g{g:02}.*\");\n\nfn limit() {{ {limit:.1} }}\n\nfn on_event(ev) {{\n    {body}\n}}\n"
    )
}

fn write_rule(dir: &Path, id: &str, source: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{id}.tmp"));
    std::fs::write(&tmp, source)?;
    std::fs::rename(&tmp, dir.join(format!("{id}.rhai")))?;
    Ok(())
}

async fn run(sizes: Sizes) -> anyhow::Result<()> {
    let group_sensors = sizes.sensors.saturating_sub(sizes.alarms).max(1);
    // Rules: one per group, 4 on sensor kinds across all groups, 1 raising alarms.
    let groups = (sizes.rules - 5).min(group_sensors);
    let layout = Layout {
        groups,
        per_group: (group_sensors / groups).max(1),
    };
    println!("Hub rules runtime benchmark");
    println!(
        "{} sensors ({} in {} groups, {} alarm sensors), {} rules ({} group rules, 4 on kinds, 1 raising alarms), SQLite",
        layout.groups * layout.per_group + sizes.alarms,
        layout.groups * layout.per_group,
        layout.groups,
        sizes.alarms,
        layout.groups + 5,
        layout.groups
    );
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    let mut config = Config::default();
    config.database.url = hub::config::Secret::new(url);
    let db = hub::open_db(&config).await?;
    {
        let mut conn = db.conn().await?;
        let tenant = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )?;
        hub::storage::tenants::upsert(&mut conn, &tenant).await?;
        let mut refs = hub::storage::refs::Refs::new();
        let kinds = ["pressure", "temperature", "flow", "level"];
        let ids = (0..layout.groups * layout.per_group)
            .map(|i| (layout.sensor(i), kinds[i % kinds.len()]))
            .chain((0..sizes.alarms).map(|k| (format!("alarm.{k}"), "pressure")));
        for (id, kind) in ids {
            let s = serde_json::from_value(
                serde_json::json!({"tenant": "t", "external_id": id, "kind": kind}),
            )?;
            hub::storage::sensors::upsert(&mut conn, &mut refs, &s).await?;
        }
    }
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir)?;
    for g in 0..layout.groups {
        write_rule(&rules_dir, &format!("group_{g:02}"), &group_rule(g, 8.0))?;
    }
    for (k, filter) in [
        "#{ kind: \"temperature\" }",
        "#{ kind: \"flow\", tenant: \"t\" }",
        "#{ kind: \"level\" }",
        "#{ sensor: \"g0*\", kind: \"pressure\" }",
    ]
    .iter()
    .enumerate()
    {
        write_rule(
            &rules_dir,
            &format!("kind_{k}"),
            &format!(
                "on_reading({filter});\n\nfn on_event(ev) {{\n    if ev.value > 9.5 {{ this.hot = (this.hot ?? 0) + 1; }}\n}}\n"
            ),
        )?;
    }
    write_rule(
        &rules_dir,
        "alarm",
        "on_reading(\"alarm.*\");\n\nfn on_event(ev) {\n    if ev.value > 100.0 {\n        raise_alarm(#{ key: \"bench:\" + ev.sensor, severity: \"major\", message: `value ${ev.value}`, tenant: ev.tenant, sensor: ev.sensor });\n    }\n}\n",
    )?;

    let state = AppState::new(db, config);
    let shutdown = CancellationToken::new();
    let rules_config = RulesConfig {
        dir: rules_dir.clone(),
        reload_ms: 100,
        ..RulesConfig::default()
    };
    let (runtime, handle) = Runtime::new(state.clone(), rules_config).await?;
    let task = tokio::spawn(runtime.run(shutdown.clone()));
    let loaded = handle.list().await;
    anyhow::ensure!(
        loaded.iter().all(|r| r.error.is_none()) && loaded.len() == layout.groups + 5,
        "rules did not load: {:?}",
        loaded
            .iter()
            .filter_map(|r| r.error.as_ref())
            .collect::<Vec<_>>()
    );
    let lagged = || {
        state
            .metrics
            .get("hub_bus_lagged_total", &[("subscriber", "rules")])
    };

    // 1. Throughput: as fast as the runtime takes them, never more than WINDOW ahead.
    let before = evaluations(&handle).await;
    let start = Instant::now();
    let mut published: u64 = 0;
    let mut i = 0usize;
    while (published as usize) < sizes.readings {
        for _ in 0..BATCH {
            let value = (i % 1000) as f64 / 100.0;
            publish(&state, layout.sensor(i), value);
            i += 1;
        }
        published += BATCH as u64;
        if published > WINDOW {
            while published - (group_evaluations(&handle).await - before.group) > WINDOW {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    let done = drained(&handle, before.group + published).await?;
    let elapsed = start.elapsed();
    let after = evaluations(&handle).await;
    println!(
        "throughput: {published} readings in {:.2} s = {:.0} readings/s evaluated ({:.2} rule runs per reading, {:.1} µs of rule time per reading); bus lagged: {}",
        elapsed.as_secs_f64(),
        published as f64 / elapsed.as_secs_f64(),
        (after.all - before.all) as f64 / published as f64,
        (after.time - before.time).as_secs_f64() * 1e6 / published as f64,
        lagged()
    );
    anyhow::ensure!(done, "the rules did not evaluate every reading");

    // 2. Latency: a threshold-crossing reading every 10 ms on a distinct alarm sensor, under load.
    let mut sub = state.bus.subscribe("bench");
    let load = Load::start(&state, &layout, sizes.load_rate);
    let mut latencies = Vec::with_capacity(sizes.alarms);
    for k in 0..sizes.alarms {
        let key = format!("bench:alarm.{k}");
        let sent = Instant::now();
        publish(&state, format!("alarm.{k}"), 150.0);
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .with_context(|| format!("no alarm {key} within 10 s"))?
                .context("bus closed")?;
            if matches!(&event.kind, EventKind::AlarmRaised(a) if a.key == key) {
                latencies.push(sent.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(sub);
    let background = load.stop().await;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "reading -> AlarmRaised ({} alarms, {} background readings at {} /s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; bus lagged: {}",
        latencies.len(),
        background.iter().sum::<u64>(),
        sizes.load_rate,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lagged()
    );

    // The background readings of the latency phase are evaluated before the next phase counts.
    let expected = before.group + published + background.iter().sum::<u64>();
    anyhow::ensure!(
        drained(&handle, expected).await?,
        "the rules did not evaluate every background reading"
    );

    // 3. Hot reload under load: rewrite `group_00` while readings flow; count its evaluations.
    let before = evaluations(&handle).await;
    let before_g0 = rule_evaluations(&handle, "group_00").await;
    let load = Load::start(&state, &layout, sizes.load_rate);
    for n in 0..sizes.reloads {
        tokio::time::sleep(Duration::from_millis(300)).await;
        write_rule(
            &rules_dir,
            "group_00",
            &group_rule(0, 8.0 + n as f64 / 10.0),
        )?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_group = load.stop().await;
    let sent: u64 = per_group.iter().sum();
    drained(&handle, before.group + sent).await?;
    let g0 = rule_evaluations(&handle, "group_00").await - before_g0;
    let all = group_evaluations(&handle).await - before.group;
    let loads: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM audit_log WHERE object_type = 'rule' AND object_id = 'group_00' AND action = 'load'",
    )
    .fetch_one(&state.db.pool)
    .await?;
    println!(
        "hot reload under load: group_00 rewritten {} times ({} loads audited); its readings {}, its evaluations {}; all group readings {sent}, evaluations {all}; bus lagged: {}",
        sizes.reloads,
        loads.0 - 1,
        per_group[0],
        g0,
        lagged()
    );
    anyhow::ensure!(
        g0 == per_group[0] && all == sent && lagged() == 0,
        "events lost across the reload"
    );
    println!("no event lost");

    shutdown.cancel();
    task.await?;
    Ok(())
}

fn publish(state: &AppState, sensor: String, value: f64) {
    state.bus.publish(
        state
            .bus
            .event("bench", EventKind::Reading { sensor, value }),
    );
}

/// Counters summed over the rules.
struct Totals {
    /// Runs of the group rules: exactly one per group reading.
    group: u64,
    all: u64,
    time: Duration,
}

async fn evaluations(handle: &RulesHandle) -> Totals {
    let mut t = Totals {
        group: 0,
        all: 0,
        time: Duration::ZERO,
    };
    for r in handle.list().await {
        let m = &r.rule["metrics"];
        let n = m["evaluations"].as_u64().unwrap_or(0);
        t.all += n;
        if r.rule["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("group_"))
        {
            t.group += n;
        }
        if let Ok(d) = serde_json::from_value::<Duration>(m["time_total"].clone()) {
            t.time += d;
        }
    }
    t
}

async fn group_evaluations(handle: &RulesHandle) -> u64 {
    evaluations(handle).await.group
}

async fn rule_evaluations(handle: &RulesHandle, id: &str) -> u64 {
    handle
        .list()
        .await
        .iter()
        .find(|r| r.rule["id"] == id)
        .and_then(|r| r.rule["metrics"]["evaluations"].as_u64())
        .unwrap_or(0)
}

/// Waits until the group rules have run `target` times (false after 30 s).
async fn drained(handle: &RulesHandle, target: u64) -> anyhow::Result<bool> {
    let start = Instant::now();
    loop {
        let n = group_evaluations(handle).await;
        if n >= target {
            return Ok(n == target);
        }
        if start.elapsed() > Duration::from_secs(30) {
            println!("stalled at {n} of {target} evaluations");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Background readings over the group sensors at a steady rate; counts what went to each group.
struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl Load {
    fn start(state: &AppState, layout: &Layout, rate: usize) -> Load {
        let stop = CancellationToken::new();
        let (state, groups, per_group) = (state.clone(), layout.groups, layout.per_group);
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let layout = Layout { groups, per_group };
                let mut counts = vec![0u64; groups];
                let per_tick = (rate / 1000).max(1);
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let mut i = 0usize;
                while !stop.is_cancelled() {
                    tick.tick().await;
                    for _ in 0..per_tick {
                        let n = i % (groups * per_group);
                        counts[n / per_group] += 1;
                        publish(&state, layout.sensor(n), (i % 1000) as f64 / 100.0);
                        i += 1;
                    }
                }
                counts
            }
        });
        Load { stop, task }
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
