//! Throughput of `RuleSet::evaluate`: 2,000 sensors, 50 rules, readings on one core. Prints readings/s
//! and p50/p99 per evaluation for: a realistic mix, readings no rule wants, and readings that all run
//! a stateful rule. Run with `cargo bench -p rules`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rules::world::AffectedView;
use rules::{Event, EventKind, RuleSet, SensorView, SiteRef, StaticWorld, World};

const HEAT_POINTS: usize = 200;
const METERS: usize = 1_000;
const READINGS: usize = 400_000;

fn world() -> Arc<dyn World> {
    let mut w = StaticWorld::default();
    for hp in 0..HEAT_POINTS {
        for (name, kind) in [
            ("p_supply", "pressure"),
            ("p_return", "pressure"),
            ("t_supply", "temperature"),
            ("t_return", "temperature"),
            ("flow", "flow"),
        ] {
            w.sensors.insert(
                format!("hp-{hp}.{name}"),
                SensorView {
                    kind: kind.into(),
                    unit: "x".into(),
                    tenant: "heatco".into(),
                    supply_point: Some(format!("hp-{hp}")),
                    ..SensorView::default()
                },
            );
        }
        w.affected.push(AffectedView {
            tenant: "heatco".into(),
            supply_point: format!("hp-{hp}"),
            complexes: vec![SiteRef {
                tenant: "heatco".into(),
                site: format!("rc-{hp}"),
            }],
            consumers: 500,
            ..AffectedView::default()
        });
    }
    for m in 0..METERS {
        w.sensors.insert(
            format!("meter-{m}.v"),
            SensorView {
                kind: "volume".into(),
                tenant: "waterco".into(),
                ..SensorView::default()
            },
        );
    }
    w.sensors.insert(
        "weather.t_outdoor".into(),
        SensorView {
            kind: "temperature".into(),
            tenant: "heatco".into(),
            value: Some(-10.0),
            ..SensorView::default()
        },
    );
    Arc::new(w.prepared())
}

fn rules() -> RuleSet {
    let mut set = RuleSet::default();
    let mut load = |id: String, src: String| {
        if let Err(e) = set.load_source(&id, &src, Path::new(&format!("{id}.rhai"))) {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    // 5 pressure rules (thresholds differ), the shape of examples/pressure_drop.rhai.
    for i in 0..5 {
        let threshold = 2.0 + i as f64 * 0.2;
        load(
            format!("pressure_{i}"),
            format!(
                r#"on_reading(#{{ sensor: "hp-*.p_supply", kind: "pressure" }});
                fn on_event(ev) {{
                    let point = ev.supply_point;
                    if this.active == () {{ this.active = #{{}}; }}
                    let active = this.active[point] ?? false;
                    let low = held_for(point, ev.value < {threshold}, 60);
                    if low && !active {{
                        this.active[point] = true;
                        raise_alarm(#{{ key: "p:" + point, severity: "critical", message: "low", tenant: ev.tenant, supply_point: point }});
                        let a = affected(ev.tenant, point);
                        set_ivr_mode(a.complexes, "emergency", "Авария");
                    }} else if active && ev.value >= {threshold} + 0.5 {{
                        this.active[point] = false;
                        clear_alarm("p:" + point);
                    }}
                }}"#
            ),
        );
    }
    // 5 temperature schedule rules.
    for i in 0..5 {
        load(
            format!("temperature_{i}"),
            format!(
                r#"on_reading(#{{ sensor: "*.t_supply", kind: "temperature" }});
                fn on_event(ev) {{
                    let outdoor = last("weather.t_outdoor");
                    if outdoor == () {{ return; }}
                    let required = interpolate([[-30, 95], [-20, 83], [-10, 70], [0, 57], [8, 45]], outdoor) - {i};
                    if held_for(ev.sensor, required - ev.value > 5.0, 900) && !(this[ev.sensor] ?? false) {{
                        this[ev.sensor] = true;
                        raise_alarm("t:" + ev.sensor, "major", "below schedule");
                    }}
                }}"#
            ),
        );
    }
    // 40 rules on single meters.
    for i in 0..40 {
        load(
            format!("meter_{i}"),
            format!(
                r#"on_reading("meter-{i}.v");
                fn on_event(ev) {{ if ev.value > 1000.0 {{ notify_staff("dispatcher", "meter " + ev.sensor); }} }}"#
            ),
        );
    }
    set
}

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_736_900_000 + secs, 0).unwrap_or_default()
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn all_sensors() -> Vec<String> {
    let mut ids = Vec::new();
    for hp in 0..HEAT_POINTS {
        for name in ["p_supply", "p_return", "t_supply", "t_return", "flow"] {
            ids.push(format!("hp-{hp}.{name}"));
        }
    }
    for m in 0..METERS {
        ids.push(format!("meter-{m}.v"));
    }
    ids
}

fn events(sensors: &[String], n: usize) -> Vec<Event> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let sensor = sensors[(rng.next() % sensors.len() as u64) as usize].clone();
            // Mostly normal values, now and then a low one.
            let value = if rng.next().is_multiple_of(50) {
                1.5
            } else {
                4.0 + (rng.next() % 100) as f64
            };
            Event {
                id: i as u64,
                at: t((i / 100) as i64),
                source: "bench".into(),
                kind: EventKind::Reading { sensor, value },
            }
        })
        .collect()
}

fn scenario(name: &str, events: &[Event], world: &Arc<dyn World>, out: &mut String) {
    let mut set = rules();
    // Warm up the route cache and the allocator.
    for e in events.iter().take(10_000) {
        set.evaluate(e, world);
    }
    let mut set = rules();
    let mut times: Vec<u32> = Vec::with_capacity(events.len());
    let mut runs = 0usize;
    let mut actions = 0usize;
    let started = Instant::now();
    for e in events {
        let t0 = Instant::now();
        let eval = set.evaluate(e, world);
        times.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        runs += eval.runs.len();
        actions += eval.actions().count();
        if let Some((rule, err)) = eval.errors().next() {
            eprintln!("{rule}: {err}");
            std::process::exit(1);
        }
    }
    let total = started.elapsed();
    times.sort_unstable();
    let pct = |p: f64| Duration::from_nanos(times[((times.len() - 1) as f64 * p) as usize] as u64);
    let _ = writeln!(
        out,
        "{name:<34} {:>10.0} readings/s  {:>5.2} rule runs/reading  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  ({} actions)",
        events.len() as f64 / total.as_secs_f64(),
        runs as f64 / events.len() as f64,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        actions,
    );
}

fn main() {
    let world = world();
    let sensors = all_sensors();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} sensors, {} rules, {READINGS} readings per scenario, one thread",
        sensors.len(),
        rules().rule_ids().len()
    );
    scenario(
        "mixed (uniform over all sensors)",
        &events(&sensors, READINGS),
        &world,
        &mut out,
    );
    let unmatched: Vec<String> = sensors
        .iter()
        .filter(|s| s.ends_with(".flow"))
        .cloned()
        .collect();
    scenario(
        "no rule matches (routing only)",
        &events(&unmatched, READINGS),
        &world,
        &mut out,
    );
    let pressure: Vec<String> = sensors
        .iter()
        .filter(|s| s.ends_with(".p_supply"))
        .cloned()
        .collect();
    scenario(
        "every reading runs 5 pressure rules",
        &events(&pressure, READINGS / 4),
        &world,
        &mut out,
    );
    let meters: Vec<String> = (0..40).map(|i| format!("meter-{i}.v")).collect();
    scenario(
        "every reading runs 1 small rule",
        &events(&meters, READINGS),
        &world,
        &mut out,
    );
    print!("{out}");
}
