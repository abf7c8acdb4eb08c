//! The functions a rule can call. Declarations (`on_reading`, `on_cron`, ...) exist only while the top
//! level of a file runs at load; everything else exists only inside `on_event`. Action functions
//! record an `Action` in the run's context, reads go to the `World` snapshot: none does I/O.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use serde::Deserialize;

use super::state::{RuleMemory, Timer};
use super::triggers::{
    AlarmFilter, CallFilter, CronTrigger, OutageFilter, SensorFilter, TicketFilter, Trigger,
};
use crate::action::{Action, IvrMode, Severity, SiteRef};
use crate::world::World;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Sandbox limits of one `RuleSet`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rhai operations per run of `on_event`.
    pub max_operations: u64,
    pub max_call_levels: usize,
    /// Expression depth at the top level and inside functions.
    pub max_expr_depth: usize,
    pub max_function_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    /// Wall-clock budget of one run of `on_event`.
    pub time_budget: std::time::Duration,
    /// Actions one run may record.
    pub max_actions: usize,
    /// Log lines one run may keep (more are dropped and counted).
    pub max_logs: usize,
    /// Pending timers per rule.
    pub max_timers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 100_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            time_budget: std::time::Duration::from_millis(50),
            max_actions: 100,
            max_logs: 50,
            max_timers: 100,
        }
    }
}

/// The state of one run of `on_event`, shared with the registered functions.
pub(crate) struct RunCtx {
    pub world: Option<Arc<dyn World>>,
    /// The event's time: every time-based helper judges on it, never on the wall clock.
    pub now: DateTime<Utc>,
    pub actions: Vec<Action>,
    pub logs: Vec<String>,
    pub dropped_logs: usize,
    pub memory: RuleMemory,
    /// The memory as it was before the first change of this run, to roll a failed run back.
    pub undo: Option<RuleMemory>,
    pub deadline: Option<Instant>,
    pub limits: Limits,
}

impl RunCtx {
    pub fn new(limits: Limits) -> Self {
        RunCtx {
            world: None,
            now: DateTime::UNIX_EPOCH,
            actions: Vec::new(),
            logs: Vec::new(),
            dropped_logs: 0,
            memory: RuleMemory::default(),
            undo: None,
            deadline: None,
            limits,
        }
    }

    fn log(&mut self, line: String) {
        if self.logs.len() < self.limits.max_logs {
            self.logs.push(line);
        } else {
            self.dropped_logs += 1;
        }
    }

    fn push(&mut self, action: Action) -> Res<()> {
        if self.actions.len() >= self.limits.max_actions {
            return Err(format!(
                "limit: more than {} actions in one run",
                self.limits.max_actions
            )
            .into());
        }
        self.actions.push(action);
        Ok(())
    }

    fn world(&self) -> Res<Arc<dyn World>> {
        self.world
            .clone()
            .ok_or_else(|| "no world is available here".into())
    }

    /// The memory, about to change: the first change of a run keeps a copy for rollback.
    fn memory_mut(&mut self) -> &mut RuleMemory {
        if self.undo.is_none() {
            self.undo = Some(self.memory.clone());
        }
        &mut self.memory
    }

    fn set_timer(&mut self, timer: Timer) -> Res<()> {
        let exists = self.memory.timers.iter().any(|t| t.name == timer.name);
        if !exists && self.memory.timers.len() >= self.limits.max_timers {
            return Err(
                format!("limit: more than {} pending timers", self.limits.max_timers).into(),
            );
        }
        self.memory_mut().set_timer(timer);
        Ok(())
    }
}

pub(crate) type Shared = Arc<Mutex<RunCtx>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside a registered function cannot leave the context half-updated in a way that
    // matters: every run resets it, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An engine with the sandbox applied: limits, no `eval`, no modules, output into the run's log.
pub(crate) fn sandboxed_engine(limits: &Limits, ctx: &Shared) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_function_expr_depth)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(0)
        .set_strict_variables(true)
        .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.disable_symbol("eval");
    let c = ctx.clone();
    engine.on_progress(move |ops| {
        // Reading the clock on every operation would cost more than the operation.
        if ops % 512 != 0 {
            return None;
        }
        let deadline = lock(&c).deadline?;
        (Instant::now() > deadline).then(|| Dynamic::from("time budget exceeded"))
    });
    let c = ctx.clone();
    engine.on_print(move |s| lock(&c).log(s.to_string()));
    let c = ctx.clone();
    engine.on_debug(move |s, _, pos| lock(&c).log(format!("{s} ({pos})")));
    engine
}

/// Declarations, available only while the top level of a rule file runs.
pub(crate) fn register_declarations(engine: &mut Engine, out: &Arc<Mutex<Vec<Trigger>>>) {
    fn add(out: &Mutex<Vec<Trigger>>, t: Trigger) -> Res<()> {
        lock(out).push(t);
        Ok(())
    }
    let o = out.clone();
    engine.register_fn("on_reading", move |p: ImmutableString| {
        add(&o, Trigger::Reading(glob_filter(&p)))
    });
    let o = out.clone();
    engine.register_fn("on_reading", move |m: Map| {
        add(&o, Trigger::Reading(SensorFilter::from_map(&m)?))
    });
    let o = out.clone();
    engine.register_fn("on_sensor_status", move || {
        add(&o, Trigger::SensorStatus(SensorFilter::default()))
    });
    let o = out.clone();
    engine.register_fn("on_sensor_status", move |p: ImmutableString| {
        add(&o, Trigger::SensorStatus(glob_filter(&p)))
    });
    let o = out.clone();
    engine.register_fn("on_sensor_status", move |m: Map| {
        add(&o, Trigger::SensorStatus(SensorFilter::from_map(&m)?))
    });
    let o = out.clone();
    engine.register_fn("on_outage", move || {
        add(&o, Trigger::Outage(OutageFilter::default()))
    });
    let o = out.clone();
    engine.register_fn("on_outage", move |m: Map| {
        add(&o, Trigger::Outage(OutageFilter::from_map(&m)?))
    });
    let o = out.clone();
    engine.register_fn("on_alarm", move || {
        add(&o, Trigger::Alarm(AlarmFilter::default()))
    });
    let o = out.clone();
    engine.register_fn("on_alarm", move |key: ImmutableString| {
        add(
            &o,
            Trigger::Alarm(AlarmFilter {
                key: Some(key.to_string()),
                severity: None,
            }),
        )
    });
    let o = out.clone();
    engine.register_fn("on_alarm", move |m: Map| {
        add(&o, Trigger::Alarm(AlarmFilter::from_map(&m)?))
    });
    let o = out.clone();
    engine.register_fn("on_cron", move |expr: ImmutableString| {
        add(&o, Trigger::Cron(CronTrigger::parse(&expr, "UTC")?))
    });
    let o = out.clone();
    engine.register_fn(
        "on_cron",
        move |expr: ImmutableString, tz: ImmutableString| {
            add(&o, Trigger::Cron(CronTrigger::parse(&expr, &tz)?))
        },
    );
    let o = out.clone();
    engine.register_fn("on_call", move || {
        add(&o, Trigger::Call(CallFilter::default()))
    });
    let o = out.clone();
    engine.register_fn("on_call", move |m: Map| {
        add(&o, Trigger::Call(CallFilter::from_map(&m)?))
    });
    let o = out.clone();
    engine.register_fn("on_ticket", move || {
        add(&o, Trigger::Ticket(TicketFilter::default()))
    });
    let o = out.clone();
    engine.register_fn("on_ticket", move |m: Map| {
        add(&o, Trigger::Ticket(TicketFilter::from_map(&m)?))
    });
}

fn glob_filter(pattern: &str) -> SensorFilter {
    SensorFilter {
        sensor: Some(pattern.to_string()),
        ..SensorFilter::default()
    }
}

/// Every function available inside `on_event`.
pub(crate) fn register_runtime(engine: &mut Engine, ctx: &Shared) {
    register_actions(engine, ctx);
    register_reads(engine, ctx);
    register_conditions(engine, ctx);
    register_timers(engine, ctx);
    register_helpers(engine, ctx);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmArgs {
    key: String,
    severity: Severity,
    message: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    sensor: Option<String>,
    #[serde(default)]
    site: Option<SiteRef>,
    #[serde(default)]
    supply_point: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyArgs {
    #[serde(default)]
    tenant: Option<String>,
    to: String,
    message: String,
}

fn from_dyn<T: for<'de> Deserialize<'de>>(what: &str, v: Dynamic) -> Res<T> {
    rhai::serde::from_dynamic(&v).map_err(|e| format!("{what}: {e}").into())
}

fn json_map(what: &str, m: Map) -> Res<serde_json::Value> {
    from_dyn(what, Dynamic::from_map(m))
}

fn parse_enum<T: for<'de> Deserialize<'de>>(what: &str, s: &str) -> Res<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{what}: unknown value {s:?}").into())
}

/// Sites as an array of `#{ tenant, site }` maps (e.g. `affected(..).complexes`) or one such map.
fn sites(what: &str, v: Dynamic) -> Res<Vec<SiteRef>> {
    if v.is_map() {
        Ok(vec![from_dyn(what, v)?])
    } else {
        from_dyn(what, v)
    }
}

fn num(what: &str, v: &Dynamic) -> Res<f64> {
    if let Ok(f) = v.as_float() {
        Ok(f)
    } else if let Ok(i) = v.as_int() {
        Ok(i as f64)
    } else {
        Err(format!("{what}: expected a number, got {}", v.type_name()).into())
    }
}

fn seconds(what: &str, v: &Dynamic) -> Res<chrono::Duration> {
    let s = num(what, v)?;
    if !(0.0..=1e10).contains(&s) {
        return Err(format!("{what}: seconds out of range: {s}").into());
    }
    Ok(chrono::Duration::milliseconds((s * 1000.0).round() as i64))
}

fn register_actions(engine: &mut Engine, ctx: &Shared) {
    let c = ctx.clone();
    engine.register_fn("raise_alarm", move |m: Map| -> Res<()> {
        let a: AlarmArgs = from_dyn("raise_alarm", Dynamic::from_map(m))?;
        lock(&c).push(Action::RaiseAlarm {
            key: a.key,
            severity: a.severity,
            message: a.message,
            tenant: a.tenant,
            sensor: a.sensor,
            site: a.site,
            supply_point: a.supply_point,
        })
    });
    let c = ctx.clone();
    engine.register_fn(
        "raise_alarm",
        move |key: ImmutableString,
              severity: ImmutableString,
              message: ImmutableString|
              -> Res<()> {
            let severity = parse_enum("raise_alarm severity", &severity)?;
            lock(&c).push(Action::RaiseAlarm {
                key: key.to_string(),
                severity,
                message: message.to_string(),
                tenant: None,
                sensor: None,
                site: None,
                supply_point: None,
            })
        },
    );
    let c = ctx.clone();
    engine.register_fn("clear_alarm", move |key: ImmutableString| -> Res<()> {
        lock(&c).push(Action::ClearAlarm {
            key: key.to_string(),
            reason: None,
        })
    });
    let c = ctx.clone();
    engine.register_fn(
        "clear_alarm",
        move |key: ImmutableString, reason: ImmutableString| -> Res<()> {
            lock(&c).push(Action::ClearAlarm {
                key: key.to_string(),
                reason: Some(reason.to_string()),
            })
        },
    );
    let c = ctx.clone();
    engine.register_fn("record_outage", move |m: Map| -> Res<()> {
        let body = json_map("record_outage", m)?;
        lock(&c).push(Action::RecordOutage(body))
    });
    let c = ctx.clone();
    engine.register_fn(
        "close_outage",
        move |tenant: ImmutableString, external_id: ImmutableString| -> Res<()> {
            lock(&c).push(Action::CloseOutage {
                tenant: tenant.to_string(),
                external_id: external_id.to_string(),
            })
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "set_ivr_mode",
        move |s: Dynamic, mode: ImmutableString| -> Res<()> {
            let sites = sites("set_ivr_mode sites", s)?;
            let mode: IvrMode = parse_enum("set_ivr_mode mode", &mode)?;
            lock(&c).push(Action::SetIvrMode {
                sites,
                mode,
                announcement: None,
            })
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "set_ivr_mode",
        move |s: Dynamic, mode: ImmutableString, announcement: ImmutableString| -> Res<()> {
            let sites = sites("set_ivr_mode sites", s)?;
            let mode: IvrMode = parse_enum("set_ivr_mode mode", &mode)?;
            lock(&c).push(Action::SetIvrMode {
                sites,
                mode,
                announcement: Some(announcement.to_string()),
            })
        },
    );
    let c = ctx.clone();
    engine.register_fn("revert_ivr_mode", move |s: Dynamic| -> Res<()> {
        let sites = sites("revert_ivr_mode sites", s)?;
        lock(&c).push(Action::RevertIvrMode { sites })
    });
    let c = ctx.clone();
    engine.register_fn("launch_campaign", move |m: Map| -> Res<()> {
        let body = json_map("launch_campaign", m)?;
        lock(&c).push(Action::LaunchCampaign(body))
    });
    let c = ctx.clone();
    engine.register_fn("create_ticket", move |m: Map| -> Res<()> {
        let body = json_map("create_ticket", m)?;
        lock(&c).push(Action::CreateTicket(body))
    });
    let c = ctx.clone();
    engine.register_fn(
        "notify_staff",
        move |to: ImmutableString, message: ImmutableString| -> Res<()> {
            lock(&c).push(Action::NotifyStaff {
                tenant: None,
                to: to.to_string(),
                message: message.to_string(),
            })
        },
    );
    let c = ctx.clone();
    engine.register_fn("notify_staff", move |m: Map| -> Res<()> {
        let a: NotifyArgs = from_dyn("notify_staff", Dynamic::from_map(m))?;
        lock(&c).push(Action::NotifyStaff {
            tenant: a.tenant,
            to: a.to,
            message: a.message,
        })
    });
    let c = ctx.clone();
    engine.register_fn(
        "write_register",
        move |sensor: ImmutableString, value: Dynamic| -> Res<()> {
            let value = num("write_register value", &value)?;
            if !value.is_finite() {
                return Err("write_register: value is not finite".into());
            }
            lock(&c).push(Action::WriteRegister {
                sensor: sensor.to_string(),
                value,
            })
        },
    );
}

/// One reading from the history window.
type Sample = (DateTime<Utc>, f64);

/// Readings of `id` in the last `secs` seconds before the event.
fn window(c: &Shared, id: &str, secs: &Dynamic) -> Res<Vec<Sample>> {
    let span = seconds("window", secs)?;
    let (world, now) = {
        let g = lock(c);
        (g.world()?, g.now)
    };
    Ok(world
        .history(id, now - span)
        .into_iter()
        .filter(|(t, _)| *t <= now)
        .collect())
}

fn aggregate(
    engine: &mut Engine,
    ctx: &Shared,
    name: &'static str,
    f: fn(&[Sample]) -> Option<f64>,
) {
    let c = ctx.clone();
    engine.register_fn(
        name,
        move |id: ImmutableString, secs: Dynamic| -> Res<Dynamic> {
            let w = window(&c, &id, &secs)?;
            Ok(f(&w).map(Dynamic::from_float).unwrap_or(Dynamic::UNIT))
        },
    );
}

fn avg(w: &[Sample]) -> Option<f64> {
    (!w.is_empty()).then(|| w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
}

fn register_reads(engine: &mut Engine, ctx: &Shared) {
    let c = ctx.clone();
    engine.register_fn("sensor", move |id: ImmutableString| -> Res<Dynamic> {
        let world = lock(&c).world()?;
        match world.sensor(&id) {
            Some(s) => rhai::serde::to_dynamic(s),
            None => Ok(Dynamic::UNIT),
        }
    });
    let c = ctx.clone();
    engine.register_fn("last", move |id: ImmutableString| -> Res<Dynamic> {
        let world = lock(&c).world()?;
        Ok(world
            .sensor(&id)
            .and_then(|s| s.value)
            .map(Dynamic::from_float)
            .unwrap_or(Dynamic::UNIT))
    });
    let c = ctx.clone();
    engine.register_fn(
        "affected",
        move |tenant: ImmutableString, point: ImmutableString| -> Res<Dynamic> {
            let world = lock(&c).world()?;
            match world.affected(&tenant, &point) {
                Some(a) => rhai::serde::to_dynamic(a),
                None => Ok(Dynamic::UNIT),
            }
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "active_outages",
        move |tenant: ImmutableString| -> Res<Dynamic> {
            let world = lock(&c).world()?;
            rhai::serde::to_dynamic(world.active_outages(&tenant))
        },
    );
    aggregate(engine, ctx, "avg_over", avg);
    aggregate(engine, ctx, "moving_average", avg);
    aggregate(engine, ctx, "min_over", |w| {
        w.iter().map(|p| p.1).reduce(f64::min)
    });
    aggregate(engine, ctx, "max_over", |w| {
        w.iter().map(|p| p.1).reduce(f64::max)
    });
    aggregate(engine, ctx, "rate_of_change", |w| {
        let (first, last) = (w.first()?, w.last()?);
        let dt = (last.0 - first.0).num_milliseconds() as f64 / 1000.0;
        (dt > 0.0).then(|| (last.1 - first.1) / dt)
    });
}

fn register_conditions(engine: &mut Engine, ctx: &Shared) {
    let c = ctx.clone();
    engine.register_fn(
        "held_for",
        move |key: ImmutableString, cond: bool, secs: Dynamic| -> Res<bool> {
            let span = seconds("held_for", &secs)?;
            let mut g = lock(&c);
            let now = g.now;
            if !cond {
                if g.memory.held.contains_key(key.as_str()) {
                    g.memory_mut().held.remove(key.as_str());
                }
                return Ok(false);
            }
            let since = match g.memory.held.get(key.as_str()) {
                Some(since) => *since,
                None => {
                    g.memory_mut().held.insert(key.to_string(), now);
                    now
                }
            };
            Ok(now - since >= span)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "hysteresis",
        move |key: ImmutableString, value: Dynamic, low: Dynamic, high: Dynamic| -> Res<bool> {
            let v = num("hysteresis value", &value)?;
            let (low, high) = (num("hysteresis low", &low)?, num("hysteresis high", &high)?);
            if low > high {
                return Err("hysteresis: low is above high".into());
            }
            let mut g = lock(&c);
            let prev = g
                .memory
                .hysteresis
                .get(key.as_str())
                .copied()
                .unwrap_or(false);
            let state = if v >= high {
                true
            } else if v <= low {
                false
            } else {
                prev
            };
            if state != prev || !g.memory.hysteresis.contains_key(key.as_str()) {
                g.memory_mut().hysteresis.insert(key.to_string(), state);
            }
            Ok(state)
        },
    );
}

fn timer_data(v: Dynamic) -> Res<serde_json::Value> {
    from_dyn("timer data", v)
}

/// A moment given as unix seconds (int) or an RFC 3339 string.
fn moment(v: &Dynamic) -> Res<DateTime<Utc>> {
    if let Ok(i) = v.as_int() {
        return DateTime::from_timestamp(i, 0)
            .ok_or_else(|| format!("time out of range: {i}").into());
    }
    if let Some(s) = v.read_lock::<ImmutableString>() {
        return parse_time(&s);
    }
    Err(format!(
        "expected unix seconds or an RFC 3339 string, got {}",
        v.type_name()
    )
    .into())
}

fn parse_time(s: &str) -> Res<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("time {s:?}: {e}").into())
}

fn parse_tz(tz: &str) -> Res<Tz> {
    tz.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {tz:?}").into())
}

/// The next moment after `now` when the wall clock in `tz` shows `hhmm`.
fn next_local(now: DateTime<Utc>, hhmm: &str, tz: Tz) -> Res<DateTime<Utc>> {
    let time = NaiveTime::parse_from_str(hhmm, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(hhmm, "%H:%M:%S"))
        .map_err(|_| format!("at: expected \"HH:MM\", got {hhmm:?}"))?;
    let mut day = now.with_timezone(&tz).date_naive();
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&day.and_time(time)).earliest() {
            let t = t.with_timezone(&Utc);
            if t > now {
                return Ok(t);
            }
        }
        day = day.succ_opt().ok_or("at: date out of range")?;
    }
    Err(format!("at: no {hhmm} in {tz} soon").into())
}

fn register_timers(engine: &mut Engine, ctx: &Shared) {
    fn after(c: &Shared, secs: &Dynamic, name: &str, data: Dynamic) -> Res<()> {
        let span = seconds("after", secs)?;
        let data = timer_data(data)?;
        let mut g = lock(c);
        let due = g.now + span;
        g.set_timer(Timer {
            name: name.to_string(),
            due,
            data,
        })
    }
    fn at(c: &Shared, due: DateTime<Utc>, name: &str, data: Dynamic) -> Res<()> {
        let data = timer_data(data)?;
        lock(c).set_timer(Timer {
            name: name.to_string(),
            due,
            data,
        })
    }
    let c = ctx.clone();
    engine.register_fn(
        "after",
        move |secs: Dynamic, name: ImmutableString, data: Dynamic| after(&c, &secs, &name, data),
    );
    let c = ctx.clone();
    engine.register_fn("after", move |secs: Dynamic, name: ImmutableString| {
        after(&c, &secs, &name, Dynamic::UNIT)
    });
    let c = ctx.clone();
    engine.register_fn(
        "at",
        move |when: Dynamic, name: ImmutableString, data: Dynamic| -> Res<()> {
            at(&c, moment(&when)?, &name, data)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "at",
        move |when: Dynamic, name: ImmutableString| -> Res<()> {
            at(&c, moment(&when)?, &name, Dynamic::UNIT)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "at",
        move |hhmm: ImmutableString,
              tz: ImmutableString,
              name: ImmutableString,
              data: Dynamic|
              -> Res<()> {
            let now = lock(&c).now;
            let due = next_local(now, &hhmm, parse_tz(&tz)?)?;
            at(&c, due, &name, data)
        },
    );
    let c = ctx.clone();
    engine.register_fn("cancel_timer", move |name: ImmutableString| -> bool {
        let mut g = lock(&c);
        if !g.memory.timers.iter().any(|t| t.name == name.as_str()) {
            return false;
        }
        g.memory_mut().timers.retain(|t| t.name != name.as_str());
        true
    });
    let c = ctx.clone();
    engine.register_fn("timer_pending", move |name: ImmutableString| -> bool {
        lock(&c)
            .memory
            .timers
            .iter()
            .any(|t| t.name == name.as_str())
    });
}

fn register_helpers(engine: &mut Engine, ctx: &Shared) {
    let c = ctx.clone();
    engine.register_fn("log", move |msg: Dynamic| {
        lock(&c).log(msg.to_string());
    });
    // The standard library's `log(x)` (base-10 logarithm) would swallow a number silently: in a rule,
    // `log` always writes to the trace (`log(x, 10.0)` is still the logarithm).
    let c = ctx.clone();
    engine.register_fn("log", move |x: f64| {
        lock(&c).log(Dynamic::from_float(x).to_string());
    });
    let c = ctx.clone();
    engine.register_fn("log", move |x: i64| {
        lock(&c).log(x.to_string());
    });
    let c = ctx.clone();
    engine.register_fn("now", move || -> i64 { lock(&c).now.timestamp() });
    engine.register_fn("unix", |s: ImmutableString| -> Res<i64> {
        Ok(parse_time(&s)?.timestamp())
    });
    engine.register_fn("iso", |ts: i64| -> Res<String> {
        DateTime::from_timestamp(ts, 0)
            .map(|t| t.to_rfc3339())
            .ok_or_else(|| format!("iso: time out of range: {ts}").into())
    });
    engine.register_fn("local", |when: Dynamic, tz: ImmutableString| -> Res<Map> {
        let t = moment(&when)?.with_timezone(&parse_tz(&tz)?);
        let mut m = Map::new();
        m.insert("year".into(), (t.year() as i64).into());
        m.insert("month".into(), (t.month() as i64).into());
        m.insert("day".into(), (t.day() as i64).into());
        m.insert("hour".into(), (t.hour() as i64).into());
        m.insert("minute".into(), (t.minute() as i64).into());
        m.insert("second".into(), (t.second() as i64).into());
        m.insert(
            "weekday".into(),
            (t.weekday().number_from_monday() as i64).into(),
        );
        m.insert("date".into(), t.format("%Y-%m-%d").to_string().into());
        m.insert("time".into(), t.format("%H:%M").to_string().into());
        Ok(m)
    });
    engine.register_fn("interpolate", |table: Array, x: Dynamic| -> Res<f64> {
        interpolate(&table, num("interpolate x", &x)?)
    });
}

/// Linear interpolation in a table of `[x, y]` pairs sorted by x, clamped at both ends.
fn interpolate(table: &Array, x: f64) -> Res<f64> {
    let mut points = Vec::with_capacity(table.len());
    for row in table {
        let pair = row
            .read_lock::<Array>()
            .ok_or("interpolate: each row must be [x, y]")?;
        match pair.as_slice() {
            [a, b] => points.push((num("interpolate", a)?, num("interpolate", b)?)),
            _ => return Err("interpolate: each row must be [x, y]".into()),
        }
    }
    if points.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err("interpolate: x must increase".into());
    }
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Err("interpolate: empty table".into());
    };
    if x <= first.0 {
        return Ok(first.1);
    }
    if x >= last.0 {
        return Ok(last.1);
    }
    for w in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x <= x1 {
            return Ok(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    Ok(last.1)
}
