//! The rules runtime (bus -> rules -> action layer). One task owns the `RuleSet`: it feeds it every
//! event of the bus, fires its timers and cron schedules, carries out the actions it returns through
//! the same functions the API uses (alarms, outages, IVR modes, campaigns, staff notifications, Modbus
//! writes), persists each rule's state so a restart resumes, and reloads rule files when they change.
//! Rules read a `HubWorld`: sensors, their recent readings and the supply network, kept in memory and
//! refreshed from storage, so a rule never waits on the database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use rules::network::NetworkIndex;
use rules::{
    Action, AffectedView, Diagnostic, Evaluation, Event, EventKind, RuleInfo, RuleSet, SensorView,
    SiteRef, TraceEntry, World,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::storage::{StorageError, audit, now_ms};

/// Commands from the API to the runtime.
const COMMAND_QUEUE: usize = 64;
/// How often the world's sensors and network are refreshed from storage.
const WORLD_REFRESH: Duration = Duration::from_secs(5);
/// Events taken from the bus per wake-up of the runtime before it looks at commands and ticks.
const EVENTS_PER_WAKEUP: usize = 256;

/// `[rules]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Run rules with `hub serve`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Folder of `.rhai` rule files (with their `.test.json` fixtures), watched for changes. The
    /// default is the examples shipped in the source tree.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Milliseconds between two looks at the folder for changed, new or removed files.
    #[serde(default = "default_reload_ms")]
    pub reload_ms: u64,
    /// Minutes of readings per sensor kept in memory for rules (averages, rates of change).
    #[serde(default = "default_history_minutes")]
    pub history_minutes: u64,
}

fn default_true() -> bool {
    true
}
fn default_dir() -> PathBuf {
    PathBuf::from("rules/examples")
}
fn default_reload_ms() -> u64 {
    1000
}
fn default_history_minutes() -> u64 {
    60
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            enabled: true,
            dir: default_dir(),
            reload_ms: default_reload_ms(),
            history_minutes: default_history_minutes(),
        }
    }
}

/// Names and the network as rules see them, rebuilt when the model changes.
#[derive(Default)]
struct Model {
    index: Arc<NetworkIndex>,
    /// (tenant, supply point external id) -> id
    points: HashMap<(String, String), i64>,
    point_names: HashMap<i64, String>,
    /// site id -> (tenant, external id)
    sites: HashMap<i64, SiteRef>,
}

/// Recent readings of each sensor, oldest first.
type History = HashMap<String, VecDeque<(DateTime<Utc>, f64)>>;

/// A sensor row as the world loads it: id, kind, unit, tenant, site, supply point, last value and time.
type SensorRow = (
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<i64>,
);

/// The hub's memory as rules read it.
pub struct HubWorld {
    sensors: RwLock<HashMap<String, SensorView>>,
    history: RwLock<History>,
    model: RwLock<Arc<Model>>,
    keep: chrono::Duration,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // A poisoned lock means a panic elsewhere mid-update; the data is still usable for reading.
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HubWorld {
    fn new(history_minutes: u64) -> Self {
        HubWorld {
            sensors: RwLock::default(),
            history: RwLock::default(),
            model: RwLock::default(),
            keep: chrono::Duration::minutes(i64::try_from(history_minutes).unwrap_or(60)),
        }
    }

    /// Takes in a reading before rules see it. False for a reading of a sensor the world has not
    /// loaded yet (its history is kept all the same).
    fn apply(&self, event: &Event) -> bool {
        let EventKind::Reading { sensor, value } = &event.kind else {
            return true;
        };
        let known = match write(&self.sensors).get_mut(sensor) {
            Some(s) => {
                s.value = Some(*value);
                s.at = Some(event.at);
                true
            }
            None => false,
        };
        let mut history = write(&self.history);
        let h = match history.get_mut(sensor) {
            Some(h) => h,
            None => history.entry(sensor.clone()).or_default(),
        };
        h.push_back((event.at, *value));
        let cutoff = event.at - self.keep;
        while h.front().is_some_and(|(at, _)| *at < cutoff) {
            h.pop_front();
        }
        known
    }

    /// Sets a reading as its sensor's last value (after `refresh` loaded a sensor new to the world).
    fn apply_value(&self, event: &Event) {
        if let EventKind::Reading { sensor, value } = &event.kind
            && let Some(s) = write(&self.sensors).get_mut(sensor)
        {
            s.value = Some(*value);
            s.at = Some(event.at);
        }
    }

    /// Reloads sensors and, when the network changed, the names of points and sites. True when a
    /// sensor was added or its metadata changed: the rules' routes (which filter on it) are stale.
    async fn refresh(&self, state: &AppState) -> Result<bool, StorageError> {
        let index = state.network.get(&state.db).await?;
        let mut conn = state.db.conn().await?;
        let stale = !Arc::ptr_eq(&read(&self.model).index, &index);
        if stale {
            let points: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT p.id, p.external_id, t.external_id FROM supply_points p JOIN tenants t ON t.id = p.tenant_id",
            )
            .fetch_all(&mut *conn)
            .await?;
            let sites: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT s.id, s.external_id, t.external_id FROM sites s JOIN tenants t ON t.id = s.tenant_id",
            )
            .fetch_all(&mut *conn)
            .await?;
            let mut m = Model {
                index: index.clone(),
                ..Model::default()
            };
            for (id, ext, tenant) in points {
                m.point_names.insert(id, ext.clone());
                m.points.insert((tenant, ext), id);
            }
            for (id, site, tenant) in sites {
                m.sites.insert(id, SiteRef { tenant, site });
            }
            *write(&self.model) = Arc::new(m);
        }
        let model = read(&self.model).clone();
        let rows: Vec<SensorRow> =
            sqlx::query_as(
                "SELECT s.external_id, s.kind, s.unit, t.external_id, s.site_id, s.supply_point_id, s.last_value, s.last_at
                 FROM sensors s JOIN tenants t ON t.id = s.tenant_id",
            )
            .fetch_all(&mut *conn)
            .await?;
        let mut sensors = write(&self.sensors);
        let mut changed = false;
        for (id, kind, unit, tenant, site, point, value, at) in rows {
            let fresh = SensorView {
                id: id.clone(),
                kind,
                unit,
                tenant,
                site: site.and_then(|s| model.sites.get(&s).cloned()),
                supply_point: point.and_then(|p| model.point_names.get(&p).cloned()),
                value,
                at: at.map(crate::storage::from_ms),
            };
            changed |= sensors.get(&id).is_none_or(|s| {
                (&s.kind, &s.unit, &s.tenant, &s.site, &s.supply_point)
                    != (
                        &fresh.kind,
                        &fresh.unit,
                        &fresh.tenant,
                        &fresh.site,
                        &fresh.supply_point,
                    )
            });
            match sensors.get_mut(&id) {
                // The in-memory value is newer than what storage had at the time of the query.
                Some(s) if s.at >= fresh.at => {
                    let (v, a) = (s.value, s.at);
                    *s = SensorView {
                        value: v,
                        at: a,
                        ..fresh
                    };
                }
                _ => {
                    sensors.insert(id, fresh);
                }
            }
        }
        Ok(changed)
    }
}

impl World for HubWorld {
    fn sensor(&self, id: &str) -> Option<SensorView> {
        read(&self.sensors).get(id).cloned()
    }

    fn history(&self, id: &str, since: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)> {
        read(&self.history)
            .get(id)
            .map(|h| h.iter().filter(|(at, _)| *at >= since).copied().collect())
            .unwrap_or_default()
    }

    fn affected(&self, tenant: &str, supply_point: &str) -> Option<AffectedView> {
        let model = read(&self.model).clone();
        let id = *model
            .points
            .get(&(tenant.to_string(), supply_point.to_string()))?;
        let a = model.index.affected(id);
        let count = |v: &Vec<i64>| v.len() as u64;
        Some(AffectedView {
            tenant: tenant.to_string(),
            supply_point: supply_point.to_string(),
            supply_points: a
                .supply_points
                .iter()
                .filter_map(|p| model.point_names.get(p).cloned())
                .collect(),
            complexes: a
                .roots
                .iter()
                .filter_map(|s| model.sites.get(s).cloned())
                .collect(),
            sites: count(&a.sites),
            consumers: count(&a.consumers),
            life_support: count(&a.life_support),
            social_objects: count(&a.social_objects),
        })
    }
}

/// A rule as the API shows it: what the engine knows, plus the last load error of its file.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuleStatus {
    #[schema(value_type = Object)]
    pub rule: serde_json::Value,
    /// The file's current version failed to compile: the previous version keeps running.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Diagnostic>,
    #[schema(value_type = Vec<Object>)]
    pub warnings: Vec<Diagnostic>,
}

enum Command {
    List(oneshot::Sender<Vec<RuleStatus>>),
    Trace(String, oneshot::Sender<Vec<TraceEntry>>),
    /// A file was written by the API: load it now (and audit who).
    Reload(
        PathBuf,
        String,
        oneshot::Sender<Result<Vec<Diagnostic>, Diagnostic>>,
    ),
    Remove(String, String, oneshot::Sender<bool>),
}

/// The API's handle on the runtime.
#[derive(Clone)]
pub struct RulesHandle {
    tx: mpsc::Sender<Command>,
    pub dir: PathBuf,
}

impl RulesHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn list(&self) -> Vec<RuleStatus> {
        self.ask(Command::List).await.unwrap_or_default()
    }

    pub async fn trace(&self, rule: &str) -> Vec<TraceEntry> {
        self.ask(|tx| Command::Trace(rule.to_string(), tx))
            .await
            .unwrap_or_default()
    }

    pub async fn reload(
        &self,
        path: PathBuf,
        actor: &str,
    ) -> Option<Result<Vec<Diagnostic>, Diagnostic>> {
        self.ask(|tx| Command::Reload(path, actor.to_string(), tx))
            .await
    }

    pub async fn remove(&self, rule: &str, actor: &str) -> bool {
        self.ask(|tx| Command::Remove(rule.to_string(), actor.to_string(), tx))
            .await
            .unwrap_or(false)
    }
}

/// Where a rule's `write_register` goes: the Modbus connector that maps the sensor.
#[derive(Default)]
pub struct Writers {
    by_sensor: HashMap<String, connectors::modbus::ModbusHandle>,
}

impl Writers {
    pub fn add(
        &mut self,
        sensors: impl IntoIterator<Item = String>,
        handle: &connectors::modbus::ModbusHandle,
    ) {
        for s in sensors {
            self.by_sensor.insert(s, handle.clone());
        }
    }

    pub async fn write(&self, sensor: &str, value: f64) -> Result<(), connectors::ConnectorError> {
        match self.by_sensor.get(sensor) {
            Some(h) => h.write(sensor, value).await,
            None => Err(connectors::ConnectorError::InvalidWrite(format!(
                "no Modbus connector maps the sensor `{sensor}`"
            ))),
        }
    }
}

/// The runtime task.
pub struct Runtime {
    state: AppState,
    config: RulesConfig,
    set: RuleSet,
    world: Arc<HubWorld>,
    files: HashMap<PathBuf, (SystemTime, u64)>,
    errors: HashMap<String, Diagnostic>,
    warnings: HashMap<String, Vec<Diagnostic>>,
    commands: mpsc::Receiver<Command>,
    modbus: Arc<Writers>,
}

impl Runtime {
    /// Loads the rules and their saved state; returns the runtime and the API's handle.
    pub async fn new(
        state: AppState,
        config: RulesConfig,
    ) -> Result<(Runtime, RulesHandle), StorageError> {
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let world = Arc::new(HubWorld::new(config.history_minutes));
        world.refresh(&state).await?;
        let mut set = RuleSet::default();
        let mut conn = state.db.conn().await?;
        let saved: Vec<(String, String)> = sqlx::query_as("SELECT rule, state FROM rule_state")
            .fetch_all(&mut *conn)
            .await?;
        drop(conn);
        for (rule, text) in saved {
            match serde_json::from_str(&text) {
                Ok(v) => {
                    if let Err(e) = set.import_state(&rule, v) {
                        tracing::warn!(%rule, error = %e, "saved rule state not restored");
                    }
                }
                Err(e) => tracing::warn!(%rule, error = %e, "saved rule state is not JSON"),
            }
        }
        let handle = RulesHandle {
            tx,
            dir: config.dir.clone(),
        };
        let modbus = state.modbus.clone();
        let mut rt = Runtime {
            state,
            config,
            set,
            world,
            files: HashMap::new(),
            errors: HashMap::new(),
            warnings: HashMap::new(),
            commands,
            modbus,
        };
        rt.scan("start").await;
        Ok((rt, handle))
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sub = self.state.bus.subscribe("rules");
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.reload_ms.max(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_cron = Utc::now();
        let mut last_refresh = tokio::time::Instant::now();
        // Unknown sensors that refreshed the world since the last periodic refresh: once each.
        let mut asked: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = sub.recv() => {
                    let Some(event) = event else { break };
                    self.take(&event, &mut asked).await;
                    // A run of waiting events per wake-up, bounded so commands and ticks still get
                    // their turn under a flood.
                    for _ in 0..EVENTS_PER_WAKEUP {
                        let Some(event) = sub.try_recv() else { break };
                        self.take(&event, &mut asked).await;
                    }
                }
                Some(cmd) = self.commands.recv() => self.command(cmd).await,
                _ = tick.tick() => {
                    self.scan("file").await;
                    let now = Utc::now();
                    let world: Arc<dyn World> = self.world.clone();
                    if self.set.next_timer_due().is_some_and(|t| t <= now) {
                        let eval = self.set.fire_due(now, &world);
                        self.dispatch(eval).await;
                    }
                    if self.set.next_cron_due(last_cron).is_some_and(|t| t <= now) {
                        let eval = self.set.run_cron(last_cron, now, &world);
                        self.dispatch(eval).await;
                    }
                    last_cron = now;
                    self.save_state().await;
                    if last_refresh.elapsed() >= WORLD_REFRESH {
                        last_refresh = tokio::time::Instant::now();
                        asked.clear();
                        self.refresh_world().await;
                    }
                }
            }
        }
        self.save_state().await;
    }

    /// One event from the bus: into the world, through the rules, their actions carried out.
    async fn take(&mut self, event: &Event, asked: &mut HashSet<String>) {
        if !self.world.apply(event)
            && let EventKind::Reading { sensor, .. } = &event.kind
            && asked.insert(sensor.clone())
        {
            // Ingest publishes readings of known sensors only: an unknown one is new, and its first
            // reading must already see its kind, tenant and supply point.
            self.refresh_world().await;
            self.world.apply_value(event);
        }
        let world: Arc<dyn World> = self.world.clone();
        let eval = self.set.evaluate(event, &world);
        self.dispatch(eval).await;
    }

    /// Reloads the world; a new sensor or changed metadata re-routes readings (a sensor whose first
    /// reading came before the world knew its kind would otherwise never reach a rule filtering on it).
    async fn refresh_world(&mut self) {
        match self.world.refresh(&self.state).await {
            Ok(true) => self.set.invalidate_routes(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "rules: world not refreshed"),
        }
    }

    /// Loads new and changed rule files, removes the rules of deleted ones.
    async fn scan(&mut self, actor: &str) {
        let files = match rules::engine::rule_files(&self.config.dir) {
            Ok(f) => f,
            Err(e) => {
                if self.files.is_empty() && actor == "start" {
                    tracing::warn!(dir = %self.config.dir.display(), error = %e, "no rules loaded");
                }
                Vec::new()
            }
        };
        let mut seen = Vec::new();
        for path in files {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            seen.push(path.clone());
            if self.files.get(&path) == Some(&stamp) {
                continue;
            }
            self.files.insert(path.clone(), stamp);
            let _ = self.load(&path, actor).await;
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !seen.contains(p))
            .cloned()
            .collect();
        for path in gone {
            self.files.remove(&path);
            let id = rules::engine::rule_id(&path);
            // A deleted file that never compiled leaves no error behind in the list.
            self.errors.remove(&id);
            self.warnings.remove(&id);
            if self.set.remove(&id) {
                self.record(actor, "delete", &id, serde_json::json!({"file": path}))
                    .await;
            }
        }
    }

    async fn load(&mut self, path: &Path, actor: &str) -> Result<Vec<Diagnostic>, Diagnostic> {
        let id = rules::engine::rule_id(path);
        match self.set.load_file(path) {
            Ok(warnings) => {
                self.errors.remove(&id);
                self.warnings.insert(id.clone(), warnings.clone());
                tracing::info!(rule = %id, "rule loaded");
                self.record(actor, "load", &id, serde_json::json!({"file": path}))
                    .await;
                Ok(warnings)
            }
            Err(e) => {
                let d = match e {
                    rules::RuleError::Compile(d) => d,
                    other => Diagnostic {
                        file: path.to_path_buf(),
                        line: None,
                        column: None,
                        level: rules::Level::Error,
                        message: other.to_string(),
                    },
                };
                tracing::warn!(rule = %id, "{d}");
                self.errors.insert(id.clone(), d.clone());
                self.record(
                    actor,
                    "reject",
                    &id,
                    serde_json::json!({"error": d.to_string()}),
                )
                .await;
                Err(d)
            }
        }
    }

    async fn record(&self, actor: &str, action: &str, rule: &str, details: serde_json::Value) {
        let result = async {
            let mut conn = self.state.db.conn().await?;
            audit::record(&mut conn, actor, action, "rule", rule, details).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "rule change not audited");
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::List(reply) => {
                let list = self
                    .set
                    .rules()
                    .into_iter()
                    .map(|r: RuleInfo| RuleStatus {
                        error: self.errors.get(&r.id).cloned(),
                        warnings: self.warnings.get(&r.id).cloned().unwrap_or_default(),
                        rule: serde_json::to_value(&r).unwrap_or_default(),
                    })
                    .chain(
                        // Files that never compiled have no rule yet, only their error.
                        self.errors
                            .iter()
                            .filter(|(id, _)| !self.set.rule_ids().contains(id))
                            .map(|(id, d)| RuleStatus {
                                rule: serde_json::json!({"id": id, "file": d.file}),
                                error: Some(d.clone()),
                                warnings: Vec::new(),
                            }),
                    )
                    .collect();
                let _ = reply.send(list);
            }
            Command::Trace(rule, reply) => {
                let trace = self
                    .set
                    .trace()
                    .filter(|t| t.rule == rule)
                    .cloned()
                    .collect();
                let _ = reply.send(trace);
            }
            Command::Reload(path, actor, reply) => {
                let result = self.load(&path, &actor).await;
                if let Ok(meta) = std::fs::metadata(&path) {
                    self.files.insert(
                        path,
                        (
                            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            meta.len(),
                        ),
                    );
                }
                let _ = reply.send(result);
            }
            Command::Remove(rule, actor, reply) => {
                let removed = self.set.remove(&rule);
                self.errors.remove(&rule);
                self.warnings.remove(&rule);
                if removed {
                    self.record(&actor, "delete", &rule, serde_json::json!({}))
                        .await;
                }
                let _ = reply.send(removed);
            }
        }
    }

    /// Writes the state of every rule whose state changed.
    async fn save_state(&mut self) {
        for rule in self.set.take_dirty() {
            let Ok(value) = self.set.export_state(&rule) else {
                continue;
            };
            let result = async {
                let mut conn = self.state.db.conn().await?;
                sqlx::query(
                    "INSERT INTO rule_state (rule, state, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (rule) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                )
                .bind(&rule)
                .bind(value.to_string())
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
                Ok::<_, StorageError>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(%rule, error = %e, "rule state not saved");
            }
        }
    }

    /// Carries out what rules asked for; a failing action is logged and counted, never fatal.
    async fn dispatch(&mut self, eval: Evaluation) {
        for run in eval.runs {
            if let Some(e) = &run.error {
                self.state
                    .metrics
                    .inc("hub_rule_errors_total", &[("rule", &run.rule)]);
                tracing::warn!(rule = %run.rule, "rule failed: {e}");
            }
            for action in run.actions {
                let actor = format!("rule:{}", run.rule);
                self.state.metrics.inc(
                    "hub_rule_actions_total",
                    &[("rule", &run.rule), ("action", action.name())],
                );
                if let Err(e) = perform(&self.state, &self.modbus, &actor, &action).await {
                    self.state
                        .metrics
                        .inc("hub_rule_action_errors_total", &[("rule", &run.rule)]);
                    tracing::warn!(rule = %run.rule, action = action.name(), error = %e, "action failed");
                }
            }
        }
    }
}

/// Why an action could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Telephony(#[from] crate::telephony::TelephonyError),
    #[error(transparent)]
    Connector(#[from] connectors::ConnectorError),
    #[error(transparent)]
    Ticket(#[from] crate::tickets::TicketError),
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    v: &serde_json::Value,
) -> Result<T, ActionError> {
    serde_path_to_error::deserialize(v.clone())
        .map_err(|e| ActionError::Invalid(format!("{what}: {}: {}", e.path(), e.inner())))
}

async fn site_id(state: &AppState, s: &SiteRef) -> Result<i64, ActionError> {
    let mut conn = state.db.conn().await?;
    let mut refs = crate::storage::refs::Refs::new();
    let tenant = refs.tenant(&mut conn, &s.tenant).await?;
    Ok(refs.site(&mut conn, "sites", tenant, &s.site).await?)
}

/// One action, through the same layer as the API's. Exhaustive: a new action kind must be handled here.
pub async fn perform(
    state: &AppState,
    modbus: &Writers,
    actor: &str,
    action: &Action,
) -> Result<(), ActionError> {
    match action {
        Action::RaiseAlarm { .. } => {
            let spec = crate::alarms::AlarmSpec::from_action(action)
                .ok_or_else(|| ActionError::Invalid("not an alarm".into()))?;
            crate::alarms::raise(state, actor, &spec).await?;
        }
        Action::ClearAlarm { key, reason } => {
            crate::alarms::clear(
                state,
                actor,
                crate::alarms::AlarmRef::Key(key),
                reason.as_deref(),
            )
            .await?;
        }
        Action::RecordOutage(body) => {
            let new = parse("outage", body)?;
            crate::actions::record_outage(state, actor, "rules", None, &new).await?;
        }
        Action::CloseOutage {
            tenant,
            external_id,
        } => {
            let id: Option<(i64,)> = {
                let mut conn = state.db.conn().await?;
                sqlx::query_as(
                    "SELECT o.id FROM outages o JOIN tenants t ON t.id = o.tenant_id
                     WHERE t.external_id = $1 AND o.external_id = $2",
                )
                .bind(tenant)
                .bind(external_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(StorageError::from)?
            };
            let (id,) = id.ok_or_else(|| {
                ActionError::Invalid(format!("no outage `{external_id}` of tenant `{tenant}`"))
            })?;
            crate::actions::close_outage(state, actor, "rules", id, None).await?;
        }
        Action::SetIvrMode {
            sites,
            mode,
            announcement,
        } => {
            let mode = match mode {
                rules::IvrMode::Day => crate::telephony::IvrMode::Day,
                rules::IvrMode::Night => crate::telephony::IvrMode::Night,
                rules::IvrMode::Emergency => crate::telephony::IvrMode::Emergency,
            };
            for s in sites {
                let id = site_id(state, s).await?;
                crate::telephony::set_ivr_mode(
                    &state.db,
                    id,
                    Some(mode),
                    announcement.as_deref(),
                    actor,
                )
                .await?;
            }
        }
        Action::RevertIvrMode { sites } => {
            for s in sites {
                let id = site_id(state, s).await?;
                crate::telephony::set_ivr_mode(&state.db, id, None, None, actor).await?;
            }
        }
        Action::LaunchCampaign(body) => {
            let req = parse("campaign", body)?;
            crate::campaigns::launch(state, actor, None, &req).await?;
        }
        Action::CreateTicket(body) => {
            let new: crate::tickets::NewTicket = parse("create_ticket", body)?;
            crate::tickets::create(state, actor, &new).await?;
        }
        Action::NotifyStaff {
            tenant,
            to,
            message,
        } => {
            crate::alarms::notify_staff(state, tenant.as_deref(), to, message).await?;
        }
        Action::WriteRegister { sensor, value } => {
            modbus.write(sensor, *value).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{Format, ImportKind, ImportOptions, run};
    use crate::names::Role;

    /// Tenant `t1`: boiler house `bh` feeds heat point `hp`, which feeds complex `rc` (building `b1`
    /// with consumers `c1`, on life support, and `c2`); sensor `hp.p` sits on `hp`.
    async fn hub() -> (AppState, tempfile::TempDir) {
        crate::api::test_world(
            Role::Engineer,
            &[
            (
                ImportKind::Sites,
                "tenant,external_id,parent,kind,name\nt1,rc,,residential_complex,RC\nt1,b1,rc,building,B1\n",
            ),
            (
                ImportKind::Network,
                "tenant,external_id,kind,name,site,feeds_points,feeds_sites\nt1,hp,heat_point,HP,,,rc\nt1,bh,boiler_house,BH,,hp,\n",
            ),
            (
                ImportKind::Consumers,
                "tenant,external_id,kind,name,phones,life_support,sites\nt1,c1,resident,Ivanova,+79990000001,true,b1\nt1,c2,resident,Petrov,+79990000002,false,b1\n",
            ),
            (
                ImportKind::Sensors,
                "tenant,external_id,kind,unit,site,supply_point,offline_after_s\nt1,hp.p,pressure,bar,,hp,300\n",
            ),
            ],
        )
        .await
    }

    fn rc() -> SiteRef {
        SiteRef {
            tenant: "t1".into(),
            site: "rc".into(),
        }
    }

    async fn perform_ok(state: &AppState, action: Action) {
        perform(state, &Writers::default(), "rule:test", &action)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", action.name()));
    }

    async fn perform_err(state: &AppState, action: Action) -> String {
        perform(state, &Writers::default(), "rule:test", &action)
            .await
            .expect_err(action.name())
            .to_string()
    }

    #[tokio::test]
    async fn the_world_maps_the_network_to_site_refs() {
        let (state, _d) = hub().await;
        let world = HubWorld::new(60);
        assert!(
            world.refresh(&state).await.unwrap(),
            "first load: new sensors"
        );
        assert!(
            !world.refresh(&state).await.unwrap(),
            "nothing changed: routes stay"
        );

        let a = world.affected("t1", "hp").expect("hp is known");
        assert_eq!(a.complexes, [rc()]);
        assert_eq!(a.supply_points, ["hp"]);
        assert_eq!((a.consumers, a.life_support), (2, 1));
        let up = world.affected("t1", "bh").expect("bh is known");
        let mut points = up.supply_points.clone();
        points.sort();
        assert_eq!(points, ["bh", "hp"], "upstream feeds everything below");
        assert_eq!(up.complexes, [rc()]);
        assert!(world.affected("t1", "nope").is_none());
        assert!(
            world.affected("t2", "hp").is_none(),
            "points are per tenant"
        );

        let s = world.sensor("hp.p").expect("sensor");
        assert_eq!(
            (
                s.kind.as_str(),
                s.tenant.as_str(),
                s.supply_point.as_deref()
            ),
            ("pressure", "t1", Some("hp"))
        );

        // A reading is in memory at once; a refresh from storage does not roll it back.
        let at = Utc::now();
        let reading = state.bus.event(
            "test",
            EventKind::Reading {
                sensor: "hp.p".into(),
                value: 2.5,
            },
        );
        world.apply(&Event { at, ..reading });
        world.refresh(&state).await.unwrap();
        assert_eq!(world.sensor("hp.p").unwrap().value, Some(2.5));
        assert_eq!(world.history("hp.p", at), [(at, 2.5)]);

        // A sensor added to storage is new to the world (so readings are routed again).
        let unknown = state.bus.event(
            "test",
            EventKind::Reading {
                sensor: "hp.t".into(),
                value: 70.0,
            },
        );
        assert!(!world.apply(&unknown), "hp.t is not loaded yet");
        let opts = ImportOptions {
            actor: "test".into(),
            ..Default::default()
        };
        let csv = "tenant,external_id,kind,unit,site,supply_point,offline_after_s\nt1,hp.t,temperature,C,,hp,300\n";
        run(
            &state.db,
            ImportKind::Sensors,
            Format::Csv,
            "s.csv",
            csv,
            &opts,
        )
        .await
        .unwrap();
        assert!(world.refresh(&state).await.unwrap());
        world.apply_value(&unknown);
        assert_eq!(world.sensor("hp.t").unwrap().value, Some(70.0));
        assert!(world.apply(&unknown));
    }

    #[tokio::test]
    async fn an_alarm_is_raised_and_cleared() {
        let (state, _d) = hub().await;
        let mut sub = state.bus.subscribe("test");
        perform_ok(
            &state,
            Action::RaiseAlarm {
                key: "p:hp".into(),
                severity: rules::Severity::Critical,
                message: "pressure 2.1 bar".into(),
                tenant: Some("t1".into()),
                sensor: Some("hp.p".into()),
                site: None,
                supply_point: Some("hp".into()),
            },
        )
        .await;
        let e = sub.recv().await.unwrap();
        assert!(
            matches!(&e.kind, EventKind::AlarmRaised(a) if a.key == "p:hp"),
            "{e:?}"
        );
        let row: (String, String, String, Option<i64>) = sqlx::query_as(
            "SELECT state, severity, source, supply_point_id FROM alarms WHERE key = 'p:hp'",
        )
        .fetch_one(&state.db.pool)
        .await
        .unwrap();
        assert_eq!((row.0.as_str(), row.1.as_str()), ("active", "critical"));
        assert!(row.3.is_some(), "linked to the supply point");
        perform_ok(
            &state,
            Action::ClearAlarm {
                key: "p:hp".into(),
                reason: Some("back to normal".into()),
            },
        )
        .await;
        let (st,): (String,) = sqlx::query_as("SELECT state FROM alarms WHERE key = 'p:hp'")
            .fetch_one(&state.db.pool)
            .await
            .unwrap();
        assert_eq!(st, "cleared");
    }

    #[tokio::test]
    async fn an_ivr_override_is_stored_and_reverted() {
        let (state, _d) = hub().await;
        perform_ok(
            &state,
            Action::SetIvrMode {
                sites: vec![rc()],
                mode: rules::IvrMode::Emergency,
                announcement: Some("авария на hp".into()),
            },
        )
        .await;
        let rows: Vec<(String, Option<String>, String)> =
            sqlx::query_as("SELECT mode, announcement, set_by FROM ivr_overrides")
                .fetch_all(&state.db.pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [(
                "emergency".to_string(),
                Some("авария на hp".to_string()),
                "rule:test".to_string()
            )]
        );
        perform_ok(&state, Action::RevertIvrMode { sites: vec![rc()] }).await;
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ivr_overrides")
            .fetch_one(&state.db.pool)
            .await
            .unwrap();
        assert_eq!(n, 0, "back to the schedule");
        let err = perform_err(
            &state,
            Action::SetIvrMode {
                sites: vec![SiteRef {
                    tenant: "t1".into(),
                    site: "nowhere".into(),
                }],
                mode: rules::IvrMode::Night,
                announcement: None,
            },
        )
        .await;
        assert!(err.contains("nowhere"), "{err}");
    }

    #[tokio::test]
    async fn a_campaign_gets_one_contact_per_consumer_life_support_first() {
        let (state, _d) = hub().await;
        perform_ok(
            &state,
            Action::LaunchCampaign(serde_json::json!({
                "name": "Авария", "tenant": "t1", "audience": {"supply_point": "hp"},
                "template": "heat_emergency", "channels": ["sms", "voice"]
            })),
        )
        .await;
        let (id, contacts, by): (i64, i64, String) =
            sqlx::query_as("SELECT id, contacts, created_by FROM campaigns")
                .fetch_one(&state.db.pool)
                .await
                .unwrap();
        assert_eq!((contacts, by.as_str()), (2, "rule:test"));
        let order: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.external_id, cc.priority FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
             WHERE cc.campaign_id = $1 ORDER BY cc.id",
        )
        .bind(id)
        .fetch_all(&state.db.pool)
        .await
        .unwrap();
        assert_eq!(order, [("c1".to_string(), 0), ("c2".to_string(), 1)]);
        let err = perform_err(
            &state,
            Action::LaunchCampaign(
                serde_json::json!({"name": "x", "tenant": "t1", "audience": {}, "colour": 1}),
            ),
        )
        .await;
        assert!(err.starts_with("campaign: colour"), "{err}");
    }

    #[tokio::test]
    async fn an_outage_is_recorded_and_closed() {
        let (state, _d) = hub().await;
        perform_ok(
            &state,
            Action::RecordOutage(serde_json::json!({
                "tenant": "t1", "external_id": "auto-hp", "kind": "emergency", "utility": "heat",
                "supply_point": "hp", "reason": "pressure drop", "starts_at": Utc::now()
            })),
        )
        .await;
        let status = || async {
            let (s,): (String,) =
                sqlx::query_as("SELECT status FROM outages WHERE external_id = 'auto-hp'")
                    .fetch_one(&state.db.pool)
                    .await
                    .unwrap();
            s
        };
        assert_eq!(status().await, "active");
        perform_ok(
            &state,
            Action::CloseOutage {
                tenant: "t1".into(),
                external_id: "auto-hp".into(),
            },
        )
        .await;
        assert_eq!(status().await, "closed");
        let err = perform_err(
            &state,
            Action::CloseOutage {
                tenant: "t1".into(),
                external_id: "never".into(),
            },
        )
        .await;
        assert_eq!(err, "no outage `never` of tenant `t1`");
    }

    #[tokio::test]
    async fn staff_are_notified_through_the_outbox() {
        let (state, _d) = hub().await;
        perform_ok(
            &state,
            Action::NotifyStaff {
                tenant: Some("t1".into()),
                to: "on_duty_engineer".into(),
                message: "sensor hp.p silent".into(),
            },
        )
        .await;
        let rows: Vec<(String, String, String, Option<i64>)> =
            sqlx::query_as("SELECT recipient, message, status, tenant_id FROM notifications")
                .fetch_all(&state.db.pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str()),
            ("on_duty_engineer", "sensor hp.p silent", "pending")
        );
        assert!(rows[0].3.is_some());
    }

    #[tokio::test]
    async fn a_write_to_an_unmapped_sensor_is_refused() {
        let (state, _d) = hub().await;
        let err = perform_err(
            &state,
            Action::WriteRegister {
                sensor: "hp.valve".into(),
                value: 45.0,
            },
        )
        .await;
        assert_eq!(err, "no Modbus connector maps the sensor `hp.valve`");
    }

    #[tokio::test]
    async fn a_rule_opens_a_ticket_through_the_ticket_layer() {
        let (state, _d) = hub().await;
        let mut sub = state.bus.subscribe("test");
        perform(
            &state,
            &Writers::default(),
            "rule:leak",
            &Action::CreateTicket(serde_json::json!({
                "tenant": "t1", "site": "b1", "category": "water",
                "description": "water in the basement", "priority": "urgent"
            })),
        )
        .await
        .unwrap();
        let rows: Vec<(String, String, String, String, String)> =
            sqlx::query_as("SELECT category, status, priority, source, created_by FROM tickets")
                .fetch_all(&state.db.pool)
                .await
                .unwrap();
        assert_eq!(
            rows,
            [(
                "water".into(),
                "new".into(),
                "urgent".into(),
                "rules".into(),
                "rule:leak".into()
            )]
        );
        let event = sub.recv().await.unwrap();
        assert!(
            matches!(&event.kind, EventKind::TicketChanged(t) if t.site.as_deref() == Some("b1")),
            "{event:?}"
        );
        let err = perform_err(
            &state,
            Action::CreateTicket(
                serde_json::json!({"tenant": "t1", "site": "nowhere", "category": "water"}),
            ),
        )
        .await;
        assert_eq!(err, "site: no site `nowhere`");
        let err = perform_err(
            &state,
            Action::CreateTicket(
                serde_json::json!({"tenant": "t1", "category": "water", "colour": "red"}),
            ),
        )
        .await;
        assert!(err.contains("unknown field `colour`"), "{err}");
    }
}
