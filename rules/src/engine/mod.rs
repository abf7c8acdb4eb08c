//! The rule engine: `RuleSet` holds the compiled `.rhai` rules, routes each bus `Event` to the rules
//! whose triggers match (indexed by sensor id), runs their `on_event` in the sandbox and returns the
//! recorded `Action`s for the hub to dispatch. Timers and cron schedules run when the hub passes time in.

mod api;
mod event_map;
mod state;
mod triggers;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Scope};
use serde::Serialize;

pub use api::Limits;
pub use state::{RuleMemory, StateExport, Timer};
pub use triggers::{Trigger, glob_match};

use crate::action::Action;
use crate::error::{Diagnostic, Level, RuleError};
use crate::event::{Event, EventKind};
use crate::world::World;
use api::{RunCtx, Shared, lock};

/// How many sensor ids the route cache holds before it starts over (ids come from outside).
const ROUTE_CACHE_LIMIT: usize = 100_000;
/// Default length of the trace ring buffer.
const DEFAULT_TRACE_CAPACITY: usize = 256;
/// Runs one `fire_due` or `run_cron` call performs at most (a timer may set an already due timer).
const MAX_RUNS_PER_TICK: usize = 1_000;
/// Budget of the top level of a rule file (declarations) at load.
const DECLARATION_BUDGET: Duration = Duration::from_millis(200);

/// What set off an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// A bus event (`kind` as in `EventKind::name`).
    Event { id: u64, kind: &'static str },
    /// Due timers, fired by `fire_due(now)`.
    Timers { now: DateTime<Utc> },
    /// Cron occurrences in `(from, to]`, fired by `run_cron`.
    Cron {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// A `dry_run` event.
    DryRun { index: usize },
}

/// Why a run failed. A failed run has no effect: its actions, state and timer changes are dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunError {
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// A sandbox limit stopped the run (operations, time budget, sizes, depth, actions).
    pub limit: bool,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}")?;
            if let Some(col) = self.column {
                write!(f, ", column {col}")?;
            }
            write!(f, ": ")?;
        }
        f.write_str(&self.message)
    }
}

/// One rule's run of `on_event`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleRun {
    pub rule: String,
    /// For timer and cron runs: which (`timer notice_10d`, `cron 0 0 6 * * *`).
    pub cause: Option<String>,
    pub actions: Vec<Action>,
    pub error: Option<RunError>,
    pub logs: Vec<String>,
    pub duration: Duration,
}

/// The result of `evaluate`, `fire_due` or `run_cron`: the runs of every matching rule, in rule id
/// order (in time order for timers and cron).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub at: DateTime<Utc>,
    pub input: Input,
    pub runs: Vec<RuleRun>,
}

impl Evaluation {
    /// Every action of every successful run, in order.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.runs.iter().flat_map(|r| r.actions.iter())
    }

    pub fn into_actions(self) -> Vec<Action> {
        self.runs.into_iter().flat_map(|r| r.actions).collect()
    }

    pub fn errors(&self) -> impl Iterator<Item = (&str, &RunError)> {
        self.runs
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| (r.rule.as_str(), e)))
    }
}

/// Counters of one rule since it was first loaded (they survive reloads).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleMetrics {
    pub evaluations: u64,
    pub errors: u64,
    pub limit_hits: u64,
    pub actions: u64,
    pub time_total: Duration,
    pub time_max: Duration,
    pub last_error: Option<RunError>,
}

/// One run, kept in the trace ring buffer for debugging.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceEntry {
    pub at: DateTime<Utc>,
    pub rule: String,
    pub input: String,
    pub actions: Vec<Action>,
    pub error: Option<RunError>,
    pub logs: Vec<String>,
    pub duration: Duration,
}

/// What the hub can show of a loaded rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub id: String,
    pub file: Option<PathBuf>,
    pub triggers: Vec<String>,
    pub metrics: RuleMetrics,
    pub pending_timers: usize,
}

struct Rule {
    id: String,
    file: Option<PathBuf>,
    /// Functions only: the top level ran once at load.
    ast: AST,
    triggers: Vec<Trigger>,
    vars: Dynamic,
    memory: RuleMemory,
    /// The memory changed since the last `take_dirty`.
    dirty: bool,
    /// `on_event` ran since the last `take_dirty`: `this` may have changed.
    ran: bool,
    /// Fingerprint of `this` when last reported.
    vars_fingerprint: u64,
    metrics: RuleMetrics,
}

/// A compiled rule, not yet installed.
struct Compiled {
    ast: AST,
    triggers: Vec<Trigger>,
    warnings: Vec<Diagnostic>,
}

/// Rule indices a sensor's events go to.
#[derive(Debug, Default)]
struct Route {
    reading: Vec<usize>,
    status: Vec<usize>,
    /// The sensor's part of the event map (`sensor`, `kind`, `unit`, `tenant`, `site`,
    /// `supply_point`), built once per sensor rather than once per reading.
    fields: rhai::Map,
}

/// The set of loaded rules with their state, metrics and trace.
pub struct RuleSet {
    engine: Engine,
    decl_engine: Engine,
    decls: Arc<Mutex<Vec<Trigger>>>,
    ctx: Shared,
    decl_ctx: Shared,
    limits: Limits,
    /// Sorted by id.
    rules: Vec<Rule>,
    routes: HashMap<String, Arc<Route>>,
    /// State imported before its rule was loaded.
    pending_state: HashMap<String, StateExport>,
    trace: VecDeque<TraceEntry>,
    trace_capacity: usize,
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl RuleSet {
    pub fn new(limits: Limits) -> Self {
        let ctx: Shared = Arc::new(Mutex::new(RunCtx::new(limits.clone())));
        let mut engine = api::sandboxed_engine(&limits, &ctx);
        api::register_runtime(&mut engine, &ctx);
        let decl_ctx: Shared = Arc::new(Mutex::new(RunCtx::new(limits.clone())));
        let decls = Arc::new(Mutex::new(Vec::new()));
        let mut decl_engine = api::sandboxed_engine(&limits, &decl_ctx);
        api::register_declarations(&mut decl_engine, &decls);
        RuleSet {
            engine,
            decl_engine,
            decls,
            ctx,
            decl_ctx,
            limits,
            rules: Vec::new(),
            routes: HashMap::new(),
            pending_state: HashMap::new(),
            trace: VecDeque::new(),
            trace_capacity: DEFAULT_TRACE_CAPACITY,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Length of the trace ring buffer; 0 turns tracing off.
    pub fn set_trace_capacity(&mut self, capacity: usize) {
        self.trace_capacity = capacity;
        while self.trace.len() > capacity {
            self.trace.pop_front();
        }
    }

    // ----- loading -----

    /// Loads every `*.rhai` in `dir` (not recursive). Files that fail keep their previous version (if
    /// any); the returned diagnostics list errors and warnings, by file.
    pub fn load_dir(&mut self, dir: &Path) -> Result<Vec<Diagnostic>, RuleError> {
        let mut out = Vec::new();
        for file in rule_files(dir)? {
            match self.load_file(&file) {
                Ok(warnings) => out.extend(warnings),
                Err(RuleError::Compile(d)) => out.push(d),
                Err(e) => out.push(Diagnostic {
                    file: file.clone(),
                    line: None,
                    column: None,
                    level: Level::Error,
                    message: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Loads or replaces the rule of one file (rule id = file stem). On error the previous version
    /// keeps running. Returns warnings.
    pub fn load_file(&mut self, path: &Path) -> Result<Vec<Diagnostic>, RuleError> {
        let source = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let id = rule_id(path);
        self.load_source(&id, &source, path)
    }

    /// Compiles `source` as rule `id` and installs it, replacing a previous version (whose state and
    /// metrics it keeps). `file` is used in diagnostics.
    pub fn load_source(
        &mut self,
        id: &str,
        source: &str,
        file: &Path,
    ) -> Result<Vec<Diagnostic>, RuleError> {
        let compiled = self.compile(source, file).map_err(RuleError::Compile)?;
        let warnings = compiled.warnings;
        match self.rules.binary_search_by(|r| r.id.as_str().cmp(id)) {
            Ok(i) => {
                let r = &mut self.rules[i];
                r.ast = compiled.ast;
                r.triggers = compiled.triggers;
                r.file = Some(file.to_path_buf());
            }
            Err(i) => {
                let mut rule = Rule {
                    id: id.to_string(),
                    file: Some(file.to_path_buf()),
                    ast: compiled.ast,
                    triggers: compiled.triggers,
                    vars: Dynamic::from_map(Map::new()),
                    memory: RuleMemory::default(),
                    dirty: false,
                    ran: false,
                    vars_fingerprint: fingerprint(&Dynamic::from_map(Map::new())),
                    metrics: RuleMetrics::default(),
                };
                if let Some(state) = self.pending_state.remove(id) {
                    apply_state(&mut rule, state)?;
                }
                self.rules.insert(i, rule);
            }
        }
        self.routes.clear();
        Ok(warnings)
    }

    /// Removes a rule (its file was deleted). Its state goes with it.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.rules.binary_search_by(|r| r.id.as_str().cmp(id)) {
            Ok(i) => {
                self.rules.remove(i);
                self.routes.clear();
                true
            }
            Err(_) => false,
        }
    }

    /// Ids of the loaded rules, sorted.
    pub fn rule_ids(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.id.clone()).collect()
    }

    pub fn rules(&self) -> Vec<RuleInfo> {
        self.rules
            .iter()
            .map(|r| RuleInfo {
                id: r.id.clone(),
                file: r.file.clone(),
                triggers: r.triggers.iter().map(Trigger::describe).collect(),
                metrics: r.metrics.clone(),
                pending_timers: r.memory.timers.len(),
            })
            .collect()
    }

    pub fn metrics(&self, id: &str) -> Option<&RuleMetrics> {
        self.find(id).map(|r| &r.metrics)
    }

    /// The most recent runs, oldest first.
    pub fn trace(&self) -> impl Iterator<Item = &TraceEntry> {
        self.trace.iter()
    }

    /// The sensor routes depend on sensor metadata (kind, tenant, site, supply point): call this when
    /// the hub's model changes.
    pub fn invalidate_routes(&mut self) {
        self.routes.clear();
    }

    fn find(&self, id: &str) -> Option<&Rule> {
        self.rules
            .binary_search_by(|r| r.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.rules[i])
    }

    fn compile(&self, source: &str, file: &Path) -> Result<Compiled, Diagnostic> {
        let diag = |line: Option<usize>, column: Option<usize>, message: String| Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            level: Level::Error,
            message,
        };
        let ast = self.decl_engine.compile(source).map_err(|e| {
            let pos = e.position();
            diag(pos.line(), pos.position(), e.err_type().to_string())
        })?;
        lock(&self.decls).clear();
        {
            let mut g = lock(&self.decl_ctx);
            g.deadline = Some(Instant::now() + DECLARATION_BUDGET);
        }
        let ran = self.decl_engine.run_ast(&ast);
        lock(&self.decl_ctx).deadline = None;
        let triggers = std::mem::take(&mut *lock(&self.decls));
        if let Err(e) = ran {
            let e = run_error(&e);
            let message = if e.message.contains("Function not found") {
                format!(
                    "{} (the top level of a rule may only declare triggers: on_reading, \
                     on_sensor_status, on_outage, on_alarm, on_cron, on_call, on_ticket)",
                    e.message
                )
            } else {
                e.message
            };
            return Err(diag(e.line, e.column, message));
        }
        let handler = ast.iter_functions().find(|f| f.name == "on_event");
        match handler {
            None => {
                return Err(diag(
                    None,
                    None,
                    "no `fn on_event(ev)`: the rule would never do anything".into(),
                ));
            }
            Some(f) if f.params.len() != 1 => {
                return Err(diag(
                    None,
                    None,
                    format!(
                        "`on_event` must take one parameter (the event map), not {}",
                        f.params.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        let mut warnings = Vec::new();
        if triggers.is_empty() {
            warnings.push(Diagnostic {
                level: Level::Warning,
                ..diag(
                    None,
                    None,
                    "no triggers declared (on_reading, on_outage, on_cron, ...): only timers set \
                     by earlier versions can run it"
                        .into(),
                )
            });
        }
        Ok(Compiled {
            ast: ast.clone_functions_only(),
            triggers,
            warnings,
        })
    }

    // ----- state -----

    /// Rules whose state changed since the last call; the hub exports and persists them. Whether
    /// `this` changed is judged here (a walk of `this` of each rule that ran since), not on every
    /// run: call it periodically, e.g. once a second.
    pub fn take_dirty(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &mut self.rules {
            if r.ran {
                r.ran = false;
                let fp = fingerprint(&r.vars);
                if fp != r.vars_fingerprint {
                    r.vars_fingerprint = fp;
                    r.dirty = true;
                }
            }
            if r.dirty {
                r.dirty = false;
                out.push(r.id.clone());
            }
        }
        out
    }

    pub fn is_dirty(&self, id: &str) -> bool {
        self.find(id)
            .is_some_and(|r| r.dirty || (r.ran && fingerprint(&r.vars) != r.vars_fingerprint))
    }

    /// A rule's `this` map, `held_for`/`hysteresis` memory and pending timers, as JSON.
    pub fn export_state(&self, id: &str) -> Result<serde_json::Value, RuleError> {
        let rule = self.find(id).ok_or_else(|| RuleError::State {
            rule: id.to_string(),
            reason: "no such rule".into(),
        })?;
        let vars: serde_json::Value =
            rhai::serde::from_dynamic(&rule.vars).map_err(|e| RuleError::State {
                rule: id.to_string(),
                reason: format!("`this` cannot be saved: {e}"),
            })?;
        serde_json::to_value(StateExport {
            vars,
            memory: rule.memory.clone(),
        })
        .map_err(|e| RuleError::State {
            rule: id.to_string(),
            reason: e.to_string(),
        })
    }

    /// Restores what `export_state` returned. For a rule not loaded yet, the state waits for it.
    pub fn import_state(&mut self, id: &str, state: serde_json::Value) -> Result<(), RuleError> {
        let state: StateExport = serde_json::from_value(state).map_err(|e| RuleError::State {
            rule: id.to_string(),
            reason: e.to_string(),
        })?;
        match self.rules.binary_search_by(|r| r.id.as_str().cmp(id)) {
            Ok(i) => apply_state(&mut self.rules[i], state),
            Err(_) => {
                self.pending_state.insert(id.to_string(), state);
                Ok(())
            }
        }
    }

    // ----- evaluation -----

    /// Runs every rule whose triggers match `event`. Failing rules are reported in the result and do
    /// not stop the others. The hub updates its world with the event (last value, history) first.
    pub fn evaluate(&mut self, event: &Event, world: &Arc<dyn World>) -> Evaluation {
        let mut eval = Evaluation {
            at: event.at,
            input: Input::Event {
                id: event.id,
                kind: event.kind.name(),
            },
            runs: Vec::new(),
        };
        let (matched, route) = self.matching(event, world.as_ref());
        let indices: &[usize] = match (&route, &event.kind) {
            (Some(r), EventKind::Reading { .. }) => &r.reading,
            (Some(r), _) => &r.status,
            (None, _) => &matched,
        };
        let Some((&last, rest)) = indices.split_last() else {
            return eval;
        };
        let ev = event_map::event_map(event, world.as_ref(), route.as_ref().map(|r| &r.fields));
        let input = if self.trace_capacity > 0 {
            event_map::summary(event)
        } else {
            String::new()
        };
        // Each rule gets its own copy of `ev` (a rule may change it); the last one takes the original.
        for &i in rest {
            let run = self.run(i, ev.clone(), event.at, world, &input, None);
            eval.runs.push(run);
        }
        let run = self.run(last, ev, event.at, world, &input, None);
        eval.runs.push(run);
        eval
    }

    /// Rule indices an event goes to, in id order: for sensor events, the sensor's cached route.
    fn matching(&mut self, event: &Event, world: &dyn World) -> (Vec<usize>, Option<Arc<Route>>) {
        let list = match &event.kind {
            EventKind::Reading { sensor, .. }
            | EventKind::SensorOffline { sensor }
            | EventKind::SensorOnline { sensor } => {
                return (Vec::new(), Some(self.route(sensor, world)));
            }
            EventKind::OutageOpened(o)
            | EventKind::OutageUpdated(o)
            | EventKind::OutageClosed(o) => {
                self.select(|t| matches!(t, Trigger::Outage(f) if f.matches(o)))
            }
            EventKind::AlarmRaised(a)
            | EventKind::AlarmAcknowledged(a)
            | EventKind::AlarmCleared(a) => {
                self.select(|t| matches!(t, Trigger::Alarm(f) if f.matches(a)))
            }
            EventKind::CallStarted(c) | EventKind::CallEnded(c) => {
                self.select(|t| matches!(t, Trigger::Call(f) if f.matches(c)))
            }
            EventKind::TicketChanged(tk) | EventKind::TicketOverdue(tk) => {
                self.select(|t| matches!(t, Trigger::Ticket(f) if f.matches(tk)))
            }
            // Cron is run by `run_cron`; a Tick on the bus is a record of it, not a trigger.
            EventKind::Tick { .. } => Vec::new(),
        };
        (list, None)
    }

    fn select(&self, pred: impl Fn(&Trigger) -> bool) -> Vec<usize> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.triggers.iter().any(&pred))
            .map(|(i, _)| i)
            .collect()
    }

    fn route(&mut self, sensor: &str, world: &dyn World) -> Arc<Route> {
        if let Some(r) = self.routes.get(sensor) {
            return r.clone();
        }
        let meta = world.sensor(sensor);
        let mut route = Route {
            fields: event_map::sensor_fields(sensor, meta.as_ref()),
            ..Route::default()
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let reading = rule
                .triggers
                .iter()
                .any(|t| matches!(t, Trigger::Reading(f) if f.matches(sensor, meta.as_ref())));
            let status = rule
                .triggers
                .iter()
                .any(|t| matches!(t, Trigger::SensorStatus(f) if f.matches(sensor, meta.as_ref())));
            if reading {
                route.reading.push(i);
            }
            if status {
                route.status.push(i);
            }
        }
        if self.routes.len() >= ROUTE_CACHE_LIMIT {
            self.routes.clear();
        }
        let route = Arc::new(route);
        self.routes.insert(sensor.to_string(), route.clone());
        route
    }

    /// One run of rule `i`'s `on_event(ev)` at event time `now`.
    fn run(
        &mut self,
        i: usize,
        ev: Dynamic,
        now: DateTime<Utc>,
        world: &Arc<dyn World>,
        input: &str,
        cause: Option<String>,
    ) -> RuleRun {
        let Some(rule) = self.rules.get_mut(i) else {
            return RuleRun {
                rule: String::new(),
                cause,
                actions: Vec::new(),
                error: None,
                logs: Vec::new(),
                duration: Duration::ZERO,
            };
        };
        {
            let mut g = lock(&self.ctx);
            g.world = Some(world.clone());
            g.now = now;
            g.actions.clear();
            g.logs.clear();
            g.dropped_logs = 0;
            g.memory = std::mem::take(&mut rule.memory);
            g.undo = None;
            g.deadline = Some(Instant::now() + self.limits.time_budget);
        }
        rule.ran = true;
        let mut scope = Scope::new();
        let started = Instant::now();
        let result = self.engine.call_fn_with_options::<Dynamic>(
            CallFnOptions::new()
                .eval_ast(false)
                .bind_this_ptr(&mut rule.vars),
            &mut scope,
            &rule.ast,
            "on_event",
            (ev,),
        );
        let duration = started.elapsed();
        let (mut actions, mut logs, memory, undo) = {
            let mut g = lock(&self.ctx);
            g.world = None;
            g.deadline = None;
            if g.dropped_logs > 0 {
                let n = g.dropped_logs;
                g.logs.push(format!("({n} more log lines dropped)"));
            }
            (
                std::mem::take(&mut g.actions),
                std::mem::take(&mut g.logs),
                std::mem::take(&mut g.memory),
                g.undo.take(),
            )
        };
        let m = &mut rule.metrics;
        m.evaluations += 1;
        m.time_total += duration;
        m.time_max = m.time_max.max(duration);
        let error = match result {
            Ok(_) => {
                if undo.is_some() {
                    rule.dirty = true;
                }
                rule.memory = memory;
                m.actions += actions.len() as u64;
                None
            }
            Err(e) => {
                let e = run_error(&e);
                m.errors += 1;
                if e.limit {
                    m.limit_hits += 1;
                }
                m.last_error = Some(e.clone());
                rule.memory = undo.unwrap_or(memory);
                actions.clear();
                Some(e)
            }
        };
        if self.trace_capacity > 0 {
            if self.trace.len() >= self.trace_capacity {
                self.trace.pop_front();
            }
            self.trace.push_back(TraceEntry {
                at: now,
                rule: rule.id.clone(),
                input: match &cause {
                    Some(c) => c.clone(),
                    None => input.to_string(),
                },
                actions: actions.clone(),
                error: error.clone(),
                logs: logs.clone(),
                duration,
            });
        }
        logs.shrink_to_fit();
        RuleRun {
            rule: rule.id.clone(),
            cause,
            actions,
            error,
            logs,
            duration,
        }
    }

    // ----- timers -----

    /// When the earliest pending timer of any rule is due.
    pub fn next_timer_due(&self) -> Option<DateTime<Utc>> {
        self.rules.iter().filter_map(|r| r.memory.next_due()).min()
    }

    /// Fires every timer due at or before `now`, earliest first; each run sees its timer's due time
    /// as the event time.
    pub fn fire_due(&mut self, now: DateTime<Utc>, world: &Arc<dyn World>) -> Evaluation {
        let mut eval = Evaluation {
            at: now,
            input: Input::Timers { now },
            runs: Vec::new(),
        };
        for _ in 0..MAX_RUNS_PER_TICK {
            let next = self
                .rules
                .iter()
                .enumerate()
                .flat_map(|(i, r)| {
                    r.memory
                        .timers
                        .iter()
                        .map(move |t| (t.due, i, t.name.clone()))
                })
                .filter(|(due, ..)| *due <= now)
                .min();
            let Some((_, i, name)) = next else { break };
            let rule = &mut self.rules[i];
            let Some(pos) = rule.memory.timers.iter().position(|t| t.name == name) else {
                break;
            };
            let timer = rule.memory.timers.remove(pos);
            rule.dirty = true;
            let mut m = event_map::envelope("timer", timer.due, "timer");
            m.insert("name".into(), timer.name.clone().into());
            let data = rhai::serde::to_dynamic(&timer.data).unwrap_or(Dynamic::UNIT);
            m.insert("data".into(), data);
            let cause = format!("timer {}", timer.name);
            let run = self.run(i, Dynamic::from_map(m), timer.due, world, "", Some(cause));
            eval.runs.push(run);
        }
        eval
    }

    // ----- cron -----

    /// The first cron occurrence of any rule after `after`.
    pub fn next_cron_due(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.rules
            .iter()
            .flat_map(|r| &r.triggers)
            .filter_map(|t| match t {
                Trigger::Cron(c) => c.next_after(after),
                _ => None,
            })
            .min()
    }

    /// Runs every cron occurrence in `(from, to]`, in time order (the hub passes the previous `to` as
    /// the next `from`, so each occurrence runs once). `ev` is `#{ type: "cron", schedule, tz, .. }`.
    pub fn run_cron(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        world: &Arc<dyn World>,
    ) -> Evaluation {
        let mut due: Vec<(DateTime<Utc>, usize, String, String)> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for t in &rule.triggers {
                if let Trigger::Cron(c) = t {
                    for at in c.between(from, to, MAX_RUNS_PER_TICK) {
                        due.push((at, i, c.expr.clone(), c.tz.name().to_string()));
                    }
                }
            }
        }
        due.sort();
        due.truncate(MAX_RUNS_PER_TICK);
        let mut eval = Evaluation {
            at: to,
            input: Input::Cron { from, to },
            runs: Vec::new(),
        };
        for (at, i, expr, tz) in due {
            let mut m = event_map::envelope("cron", at, "cron");
            m.insert("schedule".into(), expr.clone().into());
            m.insert("tz".into(), tz.into());
            let cause = format!("cron {expr}");
            let run = self.run(i, Dynamic::from_map(m), at, world, "", Some(cause));
            eval.runs.push(run);
        }
        eval
    }
}

fn apply_state(rule: &mut Rule, state: StateExport) -> Result<(), RuleError> {
    let vars = match state.vars {
        serde_json::Value::Null => Dynamic::from_map(Map::new()),
        v => rhai::serde::to_dynamic(v).map_err(|e| RuleError::State {
            rule: rule.id.clone(),
            reason: e.to_string(),
        })?,
    };
    rule.vars_fingerprint = fingerprint(&vars);
    rule.vars = vars;
    rule.memory = state.memory;
    rule.dirty = false;
    rule.ran = false;
    Ok(())
}

/// Rule id of a file: its stem.
pub fn rule_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `*.rhai` files of a directory, sorted.
pub fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RuleError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort();
    Ok(files)
}

fn run_error(e: &EvalAltResult) -> RunError {
    let inner = e.unwrap_inner();
    let limit = matches!(
        inner,
        EvalAltResult::ErrorTooManyOperations(..)
            | EvalAltResult::ErrorTooManyVariables(..)
            | EvalAltResult::ErrorTooManyModules(..)
            | EvalAltResult::ErrorStackOverflow(..)
            | EvalAltResult::ErrorDataTooLarge(..)
            | EvalAltResult::ErrorTerminated(..)
    ) || matches!(inner, EvalAltResult::ErrorRuntime(v, _)
        if v.read_lock::<rhai::ImmutableString>().is_some_and(|s| s.starts_with("limit:")));
    let message = match inner {
        EvalAltResult::ErrorTerminated(reason, _) => format!("stopped: {reason}"),
        EvalAltResult::ErrorTooManyOperations(_) => "stopped: too many operations".to_string(),
        other => other.to_string(),
    };
    let pos = if inner.position().is_none() {
        e.position()
    } else {
        inner.position()
    };
    RunError {
        message,
        line: pos.line(),
        column: pos.position(),
        limit,
    }
}

/// A hash of a script value's structure and contents (to know whether `this` changed).
fn fingerprint(v: &Dynamic) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(v: &Dynamic, h: &mut std::collections::hash_map::DefaultHasher) {
        v.type_name().hash(h);
        if let Ok(x) = v.as_int() {
            x.hash(h);
        } else if let Ok(x) = v.as_float() {
            x.to_bits().hash(h);
        } else if let Ok(x) = v.as_bool() {
            x.hash(h);
        } else if let Some(m) = v.read_lock::<Map>() {
            m.len().hash(h);
            for (k, x) in m.iter() {
                k.as_str().hash(h);
                walk(x, h);
            }
        } else if let Some(a) = v.read_lock::<rhai::Array>() {
            a.len().hash(h);
            for x in a.iter() {
                walk(x, h);
            }
        } else if !v.is_unit() {
            // Strings, characters, timestamps, function pointers: their text.
            v.to_string().hash(h);
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    walk(v, &mut h);
    h.finish()
}

/// Compiles `source` without installing it and runs it over `events` (each applied to a copy of the
/// world first, as the hub does), firing its timers in between. One `Evaluation` per event.
pub fn dry_run(
    source: &str,
    events: &[Event],
    world: &crate::world::StaticWorld,
) -> Result<Vec<Evaluation>, RuleError> {
    let mut set = RuleSet::default();
    set.load_source("dry_run", source, Path::new("dry_run.rhai"))?;
    let mut world = world.clone().prepared();
    let mut out = Vec::new();
    for (index, event) in events.iter().enumerate() {
        world.apply(event);
        let shared: Arc<dyn World> = Arc::new(world.clone());
        let mut timers = set.fire_due(event.at, &shared);
        let mut eval = set.evaluate(event, &shared);
        timers.runs.append(&mut eval.runs);
        timers.input = Input::DryRun { index };
        timers.at = event.at;
        out.push(timers);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
