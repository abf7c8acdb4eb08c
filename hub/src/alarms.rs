//! Alarms in the action layer: rules (`raise_alarm`, `clear_alarm`, `notify_staff`), the API and the
//! dispatcher page all come here. Each change is persisted with its audit entry, history and journal in
//! one transaction and then published on the bus (`alarm_raised`, `alarm_acknowledged`,
//! `alarm_cleared`). The escalation loop (`Escalator`) turns unacknowledged alarms into rows of the
//! `notifications` outbox, with its state in the database so that a restart resumes it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rules::{Action, EventKind};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::names::Channel;
use crate::storage::alarms::{
    self as store, Alarm, AlarmSeverity, AlarmState, NewAlarm, NewNotification, Notification,
};
use crate::storage::refs::Refs;
use crate::storage::{StorageError, audit, events};

/// Longest dedupe key and message accepted.
const MAX_KEY: usize = 200;
const MAX_MESSAGE: usize = 2000;
/// Longest shelving: a week.
pub const MAX_SHELVE_MINUTES: u32 = 7 * 24 * 60;

/// `[alarms]`: how unacknowledged alarms escalate, one policy per severity.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsConfig {
    /// Seconds between two runs of the escalation loop.
    #[serde(default = "default_check_interval_seconds")]
    pub check_interval_seconds: u64,
    /// Channels of the notifications that rules send with `notify_staff`.
    #[serde(default = "default_staff_channels")]
    pub staff_channels: Vec<Channel>,
    /// `[alarms.critical]`
    #[serde(default = "default_critical")]
    pub critical: EscalationPolicy,
    /// `[alarms.major]`
    #[serde(default = "default_major")]
    pub major: EscalationPolicy,
    /// `[alarms.minor]`
    #[serde(default = "default_minor")]
    pub minor: EscalationPolicy,
    /// `[alarms.warning]`
    #[serde(default = "default_warning")]
    pub warning: EscalationPolicy,
}

/// Who is told, and when, about an alarm nobody acknowledges.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationPolicy {
    /// Staff groups notified in turn: the first `after_minutes` after the alarm, each next one
    /// `next_level_minutes` later. Empty: the alarm never escalates.
    #[serde(default = "default_levels")]
    pub levels: Vec<String>,
    /// Minutes an alarm may stay unacknowledged before the first level is notified.
    #[serde(default = "default_after_minutes")]
    pub after_minutes: u32,
    /// Minutes from one level to the next.
    #[serde(default = "default_next_level_minutes")]
    pub next_level_minutes: u32,
    /// After the last level, notify it again every this many minutes until acknowledged; 0: once.
    #[serde(default = "default_repeat_minutes")]
    pub repeat_minutes: u32,
    /// Channels of the notifications, in order of preference.
    #[serde(default = "default_channels")]
    pub channels: Vec<Channel>,
}

fn default_check_interval_seconds() -> u64 {
    30
}
fn default_staff_channels() -> Vec<Channel> {
    vec![Channel::Sms]
}
fn default_levels() -> Vec<String> {
    vec!["on_duty_engineer".into(), "chief_engineer".into()]
}
fn default_after_minutes() -> u32 {
    5
}
fn default_next_level_minutes() -> u32 {
    15
}
fn default_repeat_minutes() -> u32 {
    30
}
fn default_channels() -> Vec<Channel> {
    vec![Channel::Sms, Channel::Voice]
}
fn default_critical() -> EscalationPolicy {
    EscalationPolicy::default()
}
fn default_major() -> EscalationPolicy {
    EscalationPolicy {
        after_minutes: 15,
        next_level_minutes: 30,
        repeat_minutes: 60,
        channels: vec![Channel::Sms],
        ..EscalationPolicy::default()
    }
}
fn default_minor() -> EscalationPolicy {
    EscalationPolicy {
        levels: vec!["on_duty_engineer".into()],
        after_minutes: 60,
        next_level_minutes: 60,
        repeat_minutes: 0,
        channels: vec![Channel::Sms],
    }
}
fn default_warning() -> EscalationPolicy {
    EscalationPolicy {
        levels: Vec::new(),
        ..default_minor()
    }
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        Self {
            levels: default_levels(),
            after_minutes: default_after_minutes(),
            next_level_minutes: default_next_level_minutes(),
            repeat_minutes: default_repeat_minutes(),
            channels: default_channels(),
        }
    }
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        Self {
            check_interval_seconds: default_check_interval_seconds(),
            staff_channels: default_staff_channels(),
            critical: default_critical(),
            major: default_major(),
            minor: default_minor(),
            warning: default_warning(),
        }
    }
}

impl AlarmsConfig {
    pub fn policy(&self, s: AlarmSeverity) -> &EscalationPolicy {
        match s {
            AlarmSeverity::Critical => &self.critical,
            AlarmSeverity::Major => &self.major,
            AlarmSeverity::Minor => &self.minor,
            AlarmSeverity::Warning => &self.warning,
        }
    }
}

fn minutes(m: u32) -> chrono::Duration {
    chrono::Duration::minutes(i64::from(m))
}

impl EscalationPolicy {
    /// How long after notification number `step` (0: the alarm itself) the next one is due; none when
    /// the policy is done.
    pub fn delay(&self, step: i64) -> Option<chrono::Duration> {
        let levels = self.levels.len() as i64;
        if levels == 0 {
            None
        } else if step == 0 {
            Some(minutes(self.after_minutes))
        } else if step < levels {
            Some(minutes(self.next_level_minutes))
        } else if self.repeat_minutes > 0 {
            Some(minutes(self.repeat_minutes))
        } else {
            None
        }
    }

    /// Who notification number `step` (from 0) goes to: the levels in turn, then the last one again.
    pub fn recipient(&self, step: i64) -> Option<&str> {
        let i = usize::try_from(step).unwrap_or(0);
        self.levels
            .get(i)
            .or_else(|| self.levels.last())
            .map(String::as_str)
    }

    fn channel_names(&self) -> Vec<String> {
        self.channels
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    }
}

/// An alarm to raise: the fields of `rules::Action::RaiseAlarm`, also the body of `POST /alarms`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlarmSpec {
    /// Dedupe key: raising the same key again while the alarm is not cleared repeats it.
    pub key: String,
    pub severity: AlarmSeverity,
    pub message: String,
    /// External id of the tenant; else the tenant of the site or sensor.
    #[serde(default)]
    pub tenant: Option<String>,
    /// External id of a sensor.
    #[serde(default)]
    pub sensor: Option<String>,
    /// A site: `{"tenant": "t1", "site": "rc-1"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub site: Option<rules::SiteRef>,
    /// External id of a supply point (of `tenant`).
    #[serde(default)]
    pub supply_point: Option<String>,
}

impl AlarmSpec {
    /// The spec of a `RaiseAlarm` action; none for any other action.
    pub fn from_action(action: &Action) -> Option<AlarmSpec> {
        match action {
            Action::RaiseAlarm {
                key,
                severity,
                message,
                tenant,
                sensor,
                site,
                supply_point,
            } => Some(AlarmSpec {
                key: key.clone(),
                severity: (*severity).into(),
                message: message.clone(),
                tenant: tenant.clone(),
                sensor: sensor.clone(),
                site: site.clone(),
                supply_point: supply_point.clone(),
            }),
            _ => None,
        }
    }
}

/// Which alarm: by id (API, UI) or by dedupe key (rules' `clear_alarm`).
#[derive(Debug, Clone, Copy)]
pub enum AlarmRef<'a> {
    Id(i64),
    Key(&'a str),
}

/// The event payload rules and the UI see.
pub fn info(a: &Alarm, by: Option<&str>) -> rules::AlarmInfo {
    let comment = match a.state {
        AlarmState::Cleared => a.clear_reason.clone(),
        _ => a.ack_comment.clone(),
    };
    rules::AlarmInfo {
        id: a.id,
        key: a.key.clone(),
        severity: a.severity.as_str().to_owned(),
        message: a.message.clone(),
        count: a.count,
        by: by.map(str::to_owned),
        state: a.state.as_str().to_owned(),
        tenant: a.tenant.clone(),
        sensor: a.sensor.clone(),
        site: a.site.clone(),
        supply_point: a.supply_point.clone(),
        inhibited_by: a.inhibited_by,
        shelved_until: a.shelved_until,
        in_maintenance: a.in_maintenance,
        acknowledged_by: a.acknowledged_by.clone(),
        comment,
    }
}

struct Refs3 {
    tenant_id: Option<i64>,
    sensor_id: Option<i64>,
    site_id: Option<i64>,
    supply_point_id: Option<i64>,
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), StorageError> {
    if text.chars().count() > max {
        return Err(StorageError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    Ok(())
}

/// Resolves the external ids of a spec; with `scope`, only that tenant may be named.
async fn resolve(
    conn: &mut AnyConnection,
    scope: Option<i64>,
    spec: &AlarmSpec,
) -> Result<Refs3, StorageError> {
    if spec.key.trim().is_empty() {
        return Err(StorageError::invalid("key", "must not be empty"));
    }
    check_text("key", &spec.key, MAX_KEY)?;
    if spec.message.trim().is_empty() {
        return Err(StorageError::invalid("message", "must not be empty"));
    }
    check_text("message", &spec.message, MAX_MESSAGE)?;
    let mut refs = Refs::scoped(scope);
    let mut tenant_id = match &spec.tenant {
        Some(t) => Some(refs.tenant(conn, t).await?),
        None => None,
    };
    let same_tenant = |field: &str, t: i64, tenant_id: &mut Option<i64>| match *tenant_id {
        Some(own) if own != t => Err(StorageError::invalid(
            field,
            "belongs to another tenant than the alarm",
        )),
        _ => {
            *tenant_id = Some(t);
            Ok(())
        }
    };
    let site_id = match &spec.site {
        Some(s) => {
            let t = refs.tenant(conn, &s.tenant).await?;
            same_tenant("site", t, &mut tenant_id)?;
            Some(refs.site(conn, "site", t, &s.site).await?)
        }
        None => None,
    };
    let sensor_id = match &spec.sensor {
        Some(ext) => {
            let sensor = crate::storage::sensors::by_external(conn, ext)
                .await
                .map_err(|e| match e {
                    StorageError::NotFound { .. } => {
                        StorageError::invalid("sensor", format!("no sensor `{ext}`"))
                    }
                    other => other,
                })?;
            if scope.is_some_and(|s| s != sensor.tenant_id) {
                return Err(StorageError::invalid(
                    "sensor",
                    format!("no sensor `{ext}`"),
                ));
            }
            same_tenant("sensor", sensor.tenant_id, &mut tenant_id)?;
            Some(sensor.id)
        }
        None => None,
    };
    let supply_point_id = match &spec.supply_point {
        Some(ext) => {
            let t = tenant_id.or(scope).ok_or_else(|| {
                StorageError::invalid("tenant", "needed to find the supply point")
            })?;
            Some(refs.supply_point(conn, "supply_point", t, ext).await?)
        }
        None => None,
    };
    Ok(Refs3 {
        tenant_id: tenant_id.or(scope),
        sensor_id,
        site_id,
        supply_point_id,
    })
}

/// Raises an alarm, or repeats the one with the same key that is not cleared yet (its count grows,
/// message and severity are updated, nobody is notified again). Returns the alarm and whether it is new.
pub async fn raise(
    state: &AppState,
    source: &str,
    spec: &AlarmSpec,
) -> Result<(Alarm, bool), StorageError> {
    raise_scoped(state, source, None, spec).await
}

/// `raise` for a tenant-bound user: only their tenant may be named, and a key in use by another
/// tenant's alarm is refused.
pub async fn raise_scoped(
    state: &AppState,
    source: &str,
    scope: Option<i64>,
    spec: &AlarmSpec,
) -> Result<(Alarm, bool), StorageError> {
    let refs = {
        let mut conn = state.db.conn().await?;
        resolve(&mut conn, scope, spec).await?
    };
    let idx = state.network.get(&state.db).await?;
    // Two raises of a new key at once: the loser of the unique index repeats the winner's alarm.
    match raise_once(state, source, scope, spec, &refs, &idx).await {
        Err(StorageError::Conflict { .. }) => {
            raise_once(state, source, scope, spec, &refs, &idx).await
        }
        other => other,
    }
}

async fn raise_once(
    state: &AppState,
    source: &str,
    scope: Option<i64>,
    spec: &AlarmSpec,
    refs: &Refs3,
    idx: &rules::network::NetworkIndex,
) -> Result<(Alarm, bool), StorageError> {
    let now = Utc::now();
    let mut tx = state.db.begin().await?;
    let (alarm, new) = match store::open_by_key(&mut tx, &spec.key).await? {
        Some(open) => {
            if scope.is_some() && open.tenant_id != scope {
                return Err(StorageError::invalid(
                    "key",
                    "in use by an alarm of another tenant",
                ));
            }
            store::repeat(&mut tx, open.id, spec.severity, &spec.message, now).await?;
            (store::get(&mut tx, open.id).await?, false)
        }
        None => {
            let policy = state.config.alarms.policy(spec.severity);
            let id = store::insert(
                &mut tx,
                &NewAlarm {
                    key: &spec.key,
                    tenant_id: refs.tenant_id,
                    severity: spec.severity,
                    message: &spec.message,
                    source,
                    sensor_id: refs.sensor_id,
                    site_id: refs.site_id,
                    supply_point_id: refs.supply_point_id,
                    next_escalation_at: policy.delay(0).map(|d| now + d),
                },
                now,
            )
            .await?;
            store::add_history(&mut tx, id, source, "raised", &spec.message, now).await?;
            reconcile(&mut tx, state, idx, now).await?;
            let alarm = store::get(&mut tx, id).await?;
            audit::record(
                &mut tx,
                source,
                "raise",
                "alarm",
                &id.to_string(),
                serde_json::to_value(&alarm).unwrap_or_default(),
            )
            .await?;
            (alarm, true)
        }
    };
    let event = state
        .bus
        .event(source, EventKind::AlarmRaised(info(&alarm, Some(source))));
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok((alarm, new))
}

async fn open_alarm(
    conn: &mut AnyConnection,
    which: AlarmRef<'_>,
) -> Result<Option<Alarm>, StorageError> {
    match which {
        AlarmRef::Id(id) => Ok(Some(store::get(conn, id).await?)),
        AlarmRef::Key(key) => store::open_by_key(conn, key).await,
    }
}

/// Clears an alarm (the condition went away, or somebody says so) and releases the alarms it inhibited.
/// By key, nothing open with that key is `Ok(None)` (rules clear on every normal reading); by id, an
/// alarm already cleared is a `state` error.
pub async fn clear(
    state: &AppState,
    actor: &str,
    which: AlarmRef<'_>,
    reason: Option<&str>,
) -> Result<Option<Alarm>, StorageError> {
    let reason = reason.unwrap_or("");
    check_text("comment", reason, MAX_MESSAGE)?;
    let idx = state.network.get(&state.db).await?;
    let now = Utc::now();
    let mut tx = state.db.begin().await?;
    let Some(alarm) = open_alarm(&mut tx, which).await? else {
        return Ok(None);
    };
    if !store::clear(&mut tx, alarm.id, actor, reason, now).await? {
        return Err(StorageError::invalid(
            "state",
            format!("alarm {} is already cleared", alarm.id),
        ));
    }
    store::add_history(&mut tx, alarm.id, actor, "cleared", reason, now).await?;
    reconcile(&mut tx, state, &idx, now).await?;
    let alarm = store::get(&mut tx, alarm.id).await?;
    finish(state, tx, actor, "clear", &alarm, EventKind::AlarmCleared).await?;
    Ok(Some(alarm))
}

/// A dispatcher takes an active alarm in hand: who, when and why are kept; escalation stops.
pub async fn acknowledge(
    state: &AppState,
    user: &str,
    id: i64,
    comment: &str,
) -> Result<Alarm, StorageError> {
    check_text("comment", comment, MAX_MESSAGE)?;
    let now = Utc::now();
    let mut tx = state.db.begin().await?;
    let alarm = store::get(&mut tx, id).await?;
    if !store::acknowledge(&mut tx, id, user, comment, now).await? {
        return Err(StorageError::invalid(
            "state",
            format!("alarm {id} is {}, not active", alarm.state),
        ));
    }
    store::add_history(&mut tx, id, user, "acknowledged", comment, now).await?;
    let alarm = store::get(&mut tx, id).await?;
    finish(
        state,
        tx,
        user,
        "acknowledge",
        &alarm,
        EventKind::AlarmAcknowledged,
    )
    .await?;
    Ok(alarm)
}

/// Hides an alarm that is not cleared from the active list until `until`; it does not escalate meanwhile.
pub async fn shelve(
    state: &AppState,
    user: &str,
    id: i64,
    until: DateTime<Utc>,
    comment: &str,
) -> Result<Alarm, StorageError> {
    check_text("comment", comment, MAX_MESSAGE)?;
    let now = Utc::now();
    if until <= now {
        return Err(StorageError::invalid("minutes", "must be in the future"));
    }
    let mut tx = state.db.begin().await?;
    let alarm = store::get(&mut tx, id).await?;
    if !alarm.is_open() {
        return Err(StorageError::invalid(
            "state",
            format!("alarm {id} is cleared"),
        ));
    }
    store::shelve(&mut tx, id, until).await?;
    let details = format!("until {}; {comment}", until.to_rfc3339());
    store::add_history(&mut tx, id, user, "shelved", &details, now).await?;
    let alarm = store::get(&mut tx, id).await?;
    audit::record(
        &mut tx,
        user,
        "shelve",
        "alarm",
        &id.to_string(),
        serde_json::to_value(&alarm).unwrap_or_default(),
    )
    .await?;
    // The bus has no kind for a shelving; the journal still tells what happened.
    store::journal(
        &mut tx,
        now,
        "api",
        "alarm_shelved",
        &serde_json::to_value(info(&alarm, Some(user))).unwrap_or_default(),
    )
    .await?;
    tx.commit().await?;
    Ok(alarm)
}

async fn finish(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    alarm: &Alarm,
    kind: fn(rules::AlarmInfo) -> EventKind,
) -> Result<(), StorageError> {
    audit::record(
        &mut tx,
        actor,
        action,
        "alarm",
        &alarm.id.to_string(),
        serde_json::to_value(alarm).unwrap_or_default(),
    )
    .await?;
    let source = if actor.starts_with("rule:") {
        "rules"
    } else {
        "api"
    };
    let event = state.bus.event(source, kind(info(alarm, Some(actor))));
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok(())
}

/// Queues a message to a group of staff (rules' `notify_staff`): a row of the outbox, journaled.
/// `hub::delivery` sends it by the channels of `[alarms] staff_channels` (SMS, e-mail, messenger).
pub async fn notify_staff(
    state: &AppState,
    tenant: Option<&str>,
    to: &str,
    message: &str,
) -> Result<Notification, StorageError> {
    if to.trim().is_empty() {
        return Err(StorageError::invalid("to", "must not be empty"));
    }
    check_text("message", message, MAX_MESSAGE)?;
    let mut tx = state.db.begin().await?;
    let tenant_id = match tenant {
        Some(t) => Some(Refs::new().tenant(&mut tx, t).await?),
        None => None,
    };
    let channels: Vec<String> = state
        .config
        .alarms
        .staff_channels
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    let n = queue(
        &mut tx,
        &NewNotification {
            tenant_id,
            alarm_id: None,
            recipient: to,
            channels: &channels,
            message,
            step: None,
        },
        Utc::now(),
    )
    .await?;
    tx.commit().await?;
    Ok(n)
}

async fn queue(
    conn: &mut AnyConnection,
    n: &NewNotification<'_>,
    now: DateTime<Utc>,
) -> Result<Notification, StorageError> {
    let row = store::queue_notification(conn, n, now).await?;
    store::journal(
        conn,
        now,
        "alarms",
        "staff_notification",
        &serde_json::to_value(&row).unwrap_or_default(),
    )
    .await?;
    Ok(row)
}

/// The supply point and site an alarm is about: its own, else its sensor's.
fn place(a: &Alarm) -> (Option<i64>, Option<i64>) {
    (
        a.supply_point_id.or(a.sensor_point_id),
        a.site_id.or(a.sensor_site_id),
    )
}

/// Works out again which open alarms are inhibited and which are in maintenance, stores what changed
/// (with history) and pauses or resumes their escalation accordingly.
async fn reconcile(
    conn: &mut AnyConnection,
    state: &AppState,
    idx: &rules::network::NetworkIndex,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let open = store::open_all(conn).await?;
    let maintenance = maintenance_places(conn, idx, now).await?;
    let mut affected: HashMap<i64, (HashSet<i64>, HashSet<i64>)> = HashMap::new();
    let mut downstream = |p: i64| {
        affected
            .entry(p)
            .or_insert_with(|| {
                let a = idx.affected(p);
                (
                    a.supply_points.into_iter().collect(),
                    a.sites.into_iter().collect(),
                )
            })
            .clone()
    };
    let parents: Vec<(i64, i64)> = open
        .iter()
        .filter_map(|a| a.supply_point_id.map(|p| (a.id, p)))
        .collect();
    for a in &open {
        let (point, site) = place(a);
        let mut inhibitor = None;
        for (pid, p) in &parents {
            if *pid == a.id || Some(*p) == point {
                continue;
            }
            let (points, sites) = downstream(*p);
            let fed = point.is_some_and(|x| points.contains(&x))
                || site.is_some_and(|s| sites.contains(&s));
            // Strictly upstream: in a loop of supply points neither hides the other.
            let loop_back = point.is_some_and(|x| downstream(x).0.contains(p));
            if fed && !loop_back && inhibitor.is_none_or(|i| *pid < i) {
                inhibitor = Some(*pid);
            }
        }
        if inhibitor != a.inhibited_by {
            store::set_inhibited(conn, a.id, inhibitor).await?;
            let (action, details) = match inhibitor {
                Some(p) => ("inhibited", format!("by alarm {p}")),
                None => ("released", String::new()),
            };
            store::add_history(conn, a.id, "system", action, &details, now).await?;
            if a.state == AlarmState::Active {
                let next = match inhibitor {
                    Some(_) => None,
                    None => state
                        .config
                        .alarms
                        .policy(a.severity)
                        .delay(a.escalation_step)
                        .map(|d| now + d),
                };
                store::set_escalation(conn, a.id, a.escalation_step, next).await?;
            }
        }
        let in_maintenance = point.is_some_and(|p| maintenance.0.contains(&p))
            || site.is_some_and(|s| maintenance.1.contains(&s));
        if in_maintenance != a.in_maintenance {
            store::set_maintenance(conn, a.id, in_maintenance).await?;
            let action = if in_maintenance {
                "maintenance"
            } else {
                "maintenance_over"
            };
            store::add_history(conn, a.id, "system", action, "", now).await?;
        }
    }
    Ok(())
}

/// Supply points and sites under a planned outage in effect at `now`: maintenance windows.
async fn maintenance_places(
    conn: &mut AnyConnection,
    idx: &rules::network::NetworkIndex,
    now: DateTime<Utc>,
) -> Result<(HashSet<i64>, HashSet<i64>), StorageError> {
    let ms = crate::storage::to_ms(now);
    let ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM outages WHERE kind = 'planned' AND status IN ('planned', 'active')
           AND starts_at <= $1 AND (expected_end IS NULL OR expected_end > $1)",
    )
    .bind(ms)
    .fetch_all(&mut *conn)
    .await?;
    let (mut points, mut sites) = (HashSet::new(), HashSet::new());
    for (id,) in ids {
        let outage = crate::storage::outages::get(conn, id).await?;
        let a = crate::api::outages::affected_by(idx, &outage);
        points.extend(a.supply_points);
        sites.extend(a.sites);
    }
    Ok((points, sites))
}

/// The escalation loop: every `check_interval_seconds`, notifies the next level of each unacknowledged
/// alarm that is due. Its state is in the alarms' rows, so a restarted hub carries on.
pub struct Escalator {
    config: AlarmsConfig,
}

impl Escalator {
    pub fn new(config: AlarmsConfig) -> Self {
        Self { config }
    }

    pub async fn run(
        self,
        state: AppState,
        shutdown: CancellationToken,
    ) -> Result<(), StorageError> {
        let mut every = tokio::time::interval(Duration::from_secs(
            self.config.check_interval_seconds.max(1),
        ));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = every.tick() => {}
            }
            match self.step(&state, Utc::now()).await {
                Ok(sent) if !sent.is_empty() => {
                    tracing::info!(notifications = sent.len(), "alarms escalated");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "alarm escalation failed; retrying next round")
                }
            }
        }
    }

    /// One round at `now`: refreshes inhibition and maintenance marks, then queues the notifications
    /// that are due and returns them. Public so that tests drive time themselves.
    pub async fn step(
        &self,
        state: &AppState,
        now: DateTime<Utc>,
    ) -> Result<Vec<Notification>, StorageError> {
        let idx = state.network.get(&state.db).await?;
        let mut tx = state.db.begin().await?;
        reconcile(&mut tx, state, &idx, now).await?;
        let mut sent = Vec::new();
        for a in store::due(&mut tx, now).await? {
            let policy = self.config.policy(a.severity);
            if a.inhibited_by.is_some() {
                store::set_escalation(&mut tx, a.id, a.escalation_step, None).await?;
                continue;
            }
            if let Some(until) = a.shelved_until.filter(|u| *u > now) {
                // Shelved: the wait for this level starts again when the shelf ends.
                let next = policy.delay(a.escalation_step).map(|d| until + d);
                store::set_escalation(&mut tx, a.id, a.escalation_step, next).await?;
                continue;
            }
            if a.in_maintenance {
                // Stays due: escalates on the first round after the maintenance window.
                continue;
            }
            let Some(recipient) = policy.recipient(a.escalation_step) else {
                store::set_escalation(&mut tx, a.id, a.escalation_step, None).await?;
                continue;
            };
            let message = format!(
                "[{}] {} (alarm {}{}), not acknowledged since {} UTC",
                a.severity,
                a.message,
                a.id,
                a.supply_point
                    .as_deref()
                    .or(a.sensor.as_deref())
                    .or(a.site.as_deref())
                    .map(|w| format!(", {w}"))
                    .unwrap_or_default(),
                a.raised_at.format("%Y-%m-%d %H:%M"),
            );
            let n = queue(
                &mut tx,
                &NewNotification {
                    tenant_id: a.tenant_id,
                    alarm_id: Some(a.id),
                    recipient,
                    channels: &policy.channel_names(),
                    message: &message,
                    step: Some(a.escalation_step + 1),
                },
                now,
            )
            .await?;
            let step = a.escalation_step + 1;
            store::set_escalation(&mut tx, a.id, step, policy.delay(step).map(|d| now + d)).await?;
            store::add_history(&mut tx, a.id, "system", "escalated", recipient, now).await?;
            sent.push(n);
        }
        tx.commit().await?;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::ImportKind;
    use crate::names::Role;

    /// Tenant `t1`: boiler house `bh` feeds heat point `hp`, which feeds complex `rc`; sensor `hp.p`
    /// sits on `hp`. Returns the state and the ids of `bh` and `hp`.
    async fn world() -> (AppState, tempfile::TempDir) {
        crate::api::test_world(
            Role::Dispatcher,
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
                ImportKind::Sensors,
                "tenant,external_id,kind,unit,site,supply_point,offline_after_s\nt1,hp.p,pressure,bar,,hp,300\n",
            ),
            ],
        )
        .await
    }

    fn spec(key: &str, severity: AlarmSeverity) -> AlarmSpec {
        AlarmSpec {
            key: key.into(),
            severity,
            message: format!("{key} is bad"),
            tenant: Some("t1".into()),
            sensor: None,
            site: None,
            supply_point: None,
        }
    }

    fn on_point(key: &str, point: &str) -> AlarmSpec {
        AlarmSpec {
            supply_point: Some(point.into()),
            ..spec(key, AlarmSeverity::Critical)
        }
    }

    async fn reload(state: &AppState, id: i64) -> Alarm {
        store::get(&mut state.db.conn().await.unwrap(), id)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_repeat_counts_and_does_not_notify_again() {
        let (state, _d) = world().await;
        let mut sub = state.bus.subscribe("test");
        let (first, new) = raise(&state, "rule:p", &spec("p:hp", AlarmSeverity::Critical))
            .await
            .unwrap();
        assert!(new);
        let mut again = spec("p:hp", AlarmSeverity::Critical);
        again.message = "still bad".into();
        let (second, new) = raise(&state, "rule:p", &again).await.unwrap();
        assert!(!new);
        assert_eq!(
            (second.id, second.count, second.message.as_str()),
            (first.id, 2, "still bad")
        );
        for count in [1, 2] {
            let e = sub.recv().await.unwrap();
            assert!(
                matches!(&e.kind, EventKind::AlarmRaised(a) if a.count == count && a.tenant.as_deref() == Some("t1"))
            );
        }
        let esc = Escalator::new(state.config.alarms.clone());
        let sent = esc
            .step(&state, first.raised_at + chrono::Duration::minutes(6))
            .await
            .unwrap();
        assert_eq!(sent.len(), 1, "one alarm, one notification: {sent:?}");
        // Cleared, the same key is a new alarm.
        clear(&state, "rule:p", AlarmRef::Key("p:hp"), Some("normal"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            clear(&state, "rule:p", AlarmRef::Key("p:hp"), None)
                .await
                .unwrap()
                .is_none(),
            "clearing what is not raised is a no-op"
        );
        let (third, new) = raise(&state, "rule:p", &spec("p:hp", AlarmSeverity::Critical))
            .await
            .unwrap();
        assert!(new && third.id != first.id && third.count == 1);
    }

    #[tokio::test]
    async fn acknowledge_shelve_and_clear_keep_who_when_and_why() {
        let (state, _d) = world().await;
        let (a, _) = raise(&state, "disp", &spec("k", AlarmSeverity::Major))
            .await
            .unwrap();
        let acked = acknowledge(&state, "ivanova", a.id, "crew sent")
            .await
            .unwrap();
        assert_eq!(acked.state, AlarmState::Acknowledged);
        assert_eq!(acked.acknowledged_by.as_deref(), Some("ivanova"));
        assert_eq!(acked.ack_comment.as_deref(), Some("crew sent"));
        assert!(acked.acknowledged_at.is_some() && acked.next_escalation_at.is_none());
        let twice = acknowledge(&state, "petrov", a.id, "").await.unwrap_err();
        assert_eq!(
            twice.to_string(),
            format!("state: alarm {} is acknowledged, not active", a.id)
        );

        let until = Utc::now() + chrono::Duration::minutes(30);
        let shelved = shelve(&state, "ivanova", a.id, until, "night")
            .await
            .unwrap();
        assert!(shelved.is_shelved(Utc::now()));
        let cleared = clear(&state, "petrov", AlarmRef::Id(a.id), Some("repaired"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cleared.state, AlarmState::Cleared);
        assert_eq!(cleared.cleared_by.as_deref(), Some("petrov"));
        assert_eq!(cleared.clear_reason.as_deref(), Some("repaired"));
        let again = clear(&state, "petrov", AlarmRef::Id(a.id), None)
            .await
            .unwrap_err();
        assert!(again.to_string().contains("already cleared"), "{again}");
        let history = store::history(&mut state.db.conn().await.unwrap(), a.id)
            .await
            .unwrap();
        let actions: Vec<_> = history
            .iter()
            .map(|h| (h.action.as_str(), h.actor.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("raised", "disp"),
                ("acknowledged", "ivanova"),
                ("shelved", "ivanova"),
                ("cleared", "petrov")
            ]
        );
    }

    #[tokio::test]
    async fn escalation_repeats_stops_on_ack_and_resumes_after_a_restart() {
        let (state, _d) = world().await;
        let (a, _) = raise(&state, "rule:p", &spec("k", AlarmSeverity::Critical))
            .await
            .unwrap();
        let at = |m: i64| a.raised_at + chrono::Duration::minutes(m);
        let esc = Escalator::new(state.config.alarms.clone());
        assert!(
            esc.step(&state, at(4)).await.unwrap().is_empty(),
            "5 minutes not up yet"
        );
        let sent = esc.step(&state, at(5)).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].recipient, "on_duty_engineer");
        assert_eq!(sent[0].channels, ["sms", "voice"]);
        assert_eq!(
            (sent[0].alarm_id, sent[0].status.as_str()),
            (Some(a.id), "pending")
        );
        assert!(esc.step(&state, at(19)).await.unwrap().is_empty());

        // A new escalator over the same database: the state was in the rows, not in memory.
        let restarted = Escalator::new(state.config.alarms.clone());
        let sent = restarted.step(&state, at(20)).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].recipient, "chief_engineer");
        assert!(restarted.step(&state, at(49)).await.unwrap().is_empty());
        let sent = restarted.step(&state, at(50)).await.unwrap();
        assert_eq!(
            sent[0].recipient, "chief_engineer",
            "the last level again every 30 min"
        );

        acknowledge(&state, "ivanova", a.id, "on it").await.unwrap();
        assert!(
            restarted.step(&state, at(500)).await.unwrap().is_empty(),
            "ack stops it"
        );
        let outbox = store::notifications(
            &mut state.db.conn().await.unwrap(),
            None,
            Some(a.id),
            crate::storage::PageRequest::default(),
        )
        .await
        .unwrap();
        assert_eq!(outbox.len(), 3);
        let journal = crate::storage::events::recent(&mut state.db.conn().await.unwrap(), 50)
            .await
            .unwrap();
        assert_eq!(
            journal
                .iter()
                .filter(|(k, _)| k == "staff_notification")
                .count(),
            3
        );
    }

    #[tokio::test]
    async fn a_shelved_alarm_waits_for_the_shelf_to_end() {
        let (state, _d) = world().await;
        let (a, _) = raise(&state, "rule:p", &spec("k", AlarmSeverity::Critical))
            .await
            .unwrap();
        let until = Utc::now() + chrono::Duration::minutes(60);
        shelve(&state, "ivanova", a.id, until, "").await.unwrap();
        let esc = Escalator::new(state.config.alarms.clone());
        assert!(
            esc.step(&state, a.raised_at + chrono::Duration::minutes(10))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            esc.step(&state, until + chrono::Duration::minutes(4))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            esc.step(&state, until + chrono::Duration::minutes(5))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn an_upstream_alarm_inhibits_downstream_ones_until_it_clears() {
        let (state, _d) = world().await;
        let (child, _) = raise(&state, "rule:p", &on_point("hp down", "hp"))
            .await
            .unwrap();
        let sensor = AlarmSpec {
            sensor: Some("hp.p".into()),
            tenant: None,
            ..spec("hp.p low", AlarmSeverity::Major)
        };
        let (by_sensor, _) = raise(&state, "rule:p", &sensor).await.unwrap();
        assert_eq!(
            by_sensor.tenant.as_deref(),
            Some("t1"),
            "the sensor's tenant"
        );
        assert_eq!(child.inhibited_by, None);

        let (parent, _) = raise(&state, "rule:p", &on_point("bh down", "bh"))
            .await
            .unwrap();
        assert_eq!(
            parent.inhibited_by, None,
            "nothing is upstream of the boiler house"
        );
        for id in [child.id, by_sensor.id] {
            let a = reload(&state, id).await;
            assert_eq!(a.inhibited_by, Some(parent.id), "{}", a.key);
            assert_eq!(a.next_escalation_at, None);
        }
        let esc = Escalator::new(state.config.alarms.clone());
        let later = Utc::now() + chrono::Duration::minutes(20);
        let sent = esc.step(&state, later).await.unwrap();
        assert_eq!(
            sent.iter().map(|n| n.alarm_id).collect::<Vec<_>>(),
            [Some(parent.id)],
            "only the root cause escalates"
        );

        clear(&state, "ivanova", AlarmRef::Id(parent.id), Some("restored"))
            .await
            .unwrap();
        let released = reload(&state, child.id).await;
        assert_eq!(released.inhibited_by, None);
        let next = released.next_escalation_at.unwrap();
        assert!(
            next > Utc::now() + chrono::Duration::minutes(4),
            "escalates from the release on"
        );
        let sent = esc.step(&state, next).await.unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].alarm_id, Some(child.id));
    }

    #[tokio::test]
    async fn a_planned_outage_suppresses_escalation_without_hiding() {
        let (state, _d) = world().await;
        let (a, _) = raise(&state, "rule:p", &on_point("hp down", "hp"))
            .await
            .unwrap();
        let (elsewhere, _) = raise(&state, "rule:p", &spec("other", AlarmSeverity::Critical))
            .await
            .unwrap();
        let planned: crate::storage::outages::NewOutage =
            serde_json::from_value(serde_json::json!({
                "tenant": "t1", "external_id": "m-1", "kind": "planned", "utility": "heat",
                "supply_point": "bh", "starts_at": Utc::now() - chrono::Duration::minutes(1),
                "expected_end": Utc::now() + chrono::Duration::hours(2),
            }))
            .unwrap();
        let (outage, _) = crate::actions::record_outage(&state, "test", "api", None, &planned)
            .await
            .unwrap();
        let esc = Escalator::new(state.config.alarms.clone());
        let sent = esc
            .step(&state, Utc::now() + chrono::Duration::minutes(10))
            .await
            .unwrap();
        assert_eq!(
            sent.iter().map(|n| n.alarm_id).collect::<Vec<_>>(),
            [Some(elsewhere.id)]
        );
        let held = reload(&state, a.id).await;
        assert!(held.in_maintenance && held.state == AlarmState::Active);
        let open = store::list(
            &mut state.db.conn().await.unwrap(),
            &store::AlarmFilter {
                state: Some(store::StateFilter::Active),
                ..Default::default()
            },
            crate::storage::PageRequest::default(),
            Utc::now(),
        )
        .await
        .unwrap();
        assert!(open.iter().any(|x| x.id == a.id), "still listed as active");

        crate::actions::close_outage(&state, "test", "api", outage.id, None)
            .await
            .unwrap();
        let sent = esc
            .step(&state, Utc::now() + chrono::Duration::minutes(11))
            .await
            .unwrap();
        assert_eq!(
            sent.iter().map(|n| n.alarm_id).collect::<Vec<_>>(),
            [Some(a.id)]
        );
        assert!(!reload(&state, a.id).await.in_maintenance);
    }

    #[tokio::test]
    async fn notify_staff_queues_a_journaled_notification() {
        let (state, _d) = world().await;
        let n = notify_staff(&state, Some("t1"), "on_duty_engineer", "check hp")
            .await
            .unwrap();
        assert_eq!(
            (n.recipient.as_str(), n.channels.as_slice()),
            ("on_duty_engineer", ["sms".to_owned()].as_slice())
        );
        assert!(n.tenant_id.is_some() && n.alarm_id.is_none());
        let e = notify_staff(&state, Some("nope"), "x", "y")
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "tenant: no tenant `nope`");
    }

    #[test]
    fn the_spec_mirrors_the_rules_action() {
        let action = Action::RaiseAlarm {
            key: "k".into(),
            severity: rules::Severity::Minor,
            message: "m".into(),
            tenant: Some("t1".into()),
            sensor: None,
            site: Some(rules::SiteRef {
                tenant: "t1".into(),
                site: "rc".into(),
            }),
            supply_point: Some("hp".into()),
        };
        let s = AlarmSpec::from_action(&action).unwrap();
        assert_eq!(s.severity, AlarmSeverity::Minor);
        assert_eq!(s.site.unwrap().site, "rc");
        assert!(
            AlarmSpec::from_action(&Action::ClearAlarm {
                key: "k".into(),
                reason: None
            })
            .is_none()
        );
    }

    #[test]
    fn policies_walk_the_levels_then_repeat() {
        let p = EscalationPolicy::default();
        assert_eq!(p.delay(0), Some(chrono::Duration::minutes(5)));
        assert_eq!(p.delay(1), Some(chrono::Duration::minutes(15)));
        assert_eq!(p.delay(2), Some(chrono::Duration::minutes(30)));
        assert_eq!(
            (p.recipient(0), p.recipient(5)),
            (Some("on_duty_engineer"), Some("chief_engineer"))
        );
        assert_eq!(
            AlarmsConfig::default().warning.delay(0),
            None,
            "warnings never escalate"
        );
        assert_eq!(AlarmsConfig::default().minor.delay(1), None, "minor: once");
    }
}
