//! The `ev` map a rule's `on_event(ev)` receives: built once per event and shared by every rule that
//! matches it. Times are RFC 3339 strings (`at`) plus unix seconds (`ts`).

use chrono::{DateTime, Utc};
use rhai::{Dynamic, Map};

use crate::action::SiteRef;
use crate::event::{AlarmInfo, CallInfo, Event, EventKind, OutageInfo, TicketInfo};
use crate::world::{SensorView, World};

fn put(m: &mut Map, k: &str, v: impl Into<Dynamic>) {
    m.insert(k.into(), v.into());
}

fn opt_str(v: &Option<String>) -> Dynamic {
    v.as_ref()
        .map(|s| Dynamic::from(s.clone()))
        .unwrap_or(Dynamic::UNIT)
}

fn opt_time(v: &Option<DateTime<Utc>>) -> Dynamic {
    v.map(|t| Dynamic::from(t.to_rfc3339()))
        .unwrap_or(Dynamic::UNIT)
}

pub(crate) fn site_map(s: &SiteRef) -> Dynamic {
    let mut m = Map::new();
    put(&mut m, "tenant", s.tenant.clone());
    put(&mut m, "site", s.site.clone());
    Dynamic::from_map(m)
}

/// `type`, `at`, `ts` and `source`: common to every event map.
pub(crate) fn envelope(kind: &str, at: DateTime<Utc>, source: &str) -> Map {
    let mut m = Map::new();
    envelope_into(&mut m, kind, at, source);
    m
}

fn envelope_into(m: &mut Map, kind: &str, at: DateTime<Utc>, source: &str) {
    put(m, "type", kind.to_string());
    put(m, "at", at.to_rfc3339());
    put(m, "ts", at.timestamp());
    put(m, "source", source.to_string());
}

/// Sensor fields plus what the world knows of the sensor (kind, unit, tenant, site, supply point).
pub(crate) fn sensor_fields(sensor: &str, meta: Option<&SensorView>) -> Map {
    let mut m = Map::new();
    put(&mut m, "sensor", sensor.to_string());
    let (kind, unit, tenant, site, point) = match meta {
        Some(s) => (
            Dynamic::from(s.kind.clone()),
            Dynamic::from(s.unit.clone()),
            Dynamic::from(s.tenant.clone()),
            s.site.as_ref().map(site_map).unwrap_or(Dynamic::UNIT),
            opt_str(&s.supply_point),
        ),
        None => (
            Dynamic::UNIT,
            Dynamic::UNIT,
            Dynamic::UNIT,
            Dynamic::UNIT,
            Dynamic::UNIT,
        ),
    };
    put(&mut m, "kind", kind);
    put(&mut m, "unit", unit);
    put(&mut m, "tenant", tenant);
    put(&mut m, "site", site);
    put(&mut m, "supply_point", point);
    m
}

fn outage_fields(m: &mut Map, o: &OutageInfo) {
    put(m, "id", o.id);
    put(m, "tenant", o.tenant.clone());
    put(m, "external_id", opt_str(&o.external_id));
    put(m, "kind", o.kind.clone());
    put(m, "utility", o.utility.clone());
    put(m, "supply_point", opt_str(&o.supply_point));
    put(m, "status", o.status.clone());
    put(m, "reason", o.reason.clone());
    put(m, "starts_at", o.starts_at.to_rfc3339());
    put(m, "expected_end", opt_time(&o.expected_end));
    put(m, "actual_end", opt_time(&o.actual_end));
}

fn alarm_fields(m: &mut Map, a: &AlarmInfo) {
    put(m, "id", a.id);
    put(m, "key", a.key.clone());
    put(m, "severity", a.severity.clone());
    put(m, "message", a.message.clone());
    put(m, "count", a.count);
    put(m, "by", opt_str(&a.by));
}

fn call_fields(m: &mut Map, c: &CallInfo) {
    put(m, "id", c.id);
    put(m, "tenant", opt_str(&c.tenant));
    put(m, "direction", c.direction.clone());
    put(m, "from", c.from.clone());
    put(m, "to", c.to.clone());
    put(m, "site", opt_str(&c.site));
    put(m, "consumer", opt_str(&c.consumer));
    put(m, "purpose", opt_str(&c.purpose));
    put(m, "outcome", opt_str(&c.outcome));
    put(
        m,
        "duration_s",
        c.duration_s.map(Dynamic::from).unwrap_or(Dynamic::UNIT),
    );
}

fn ticket_fields(m: &mut Map, t: &TicketInfo) {
    put(m, "id", t.id);
    put(m, "tenant", t.tenant.clone());
    put(m, "site", opt_str(&t.site));
    put(m, "category", t.category.clone());
    put(m, "status", t.status.clone());
    put(m, "priority", t.priority.clone());
    put(m, "assignee", opt_str(&t.assignee));
    put(m, "due_at", opt_time(&t.due_at));
}

/// The `ev` map of an event. `fields`: the sensor's part, when the caller has it cached.
pub(crate) fn event_map(event: &Event, world: &dyn World, fields: Option<&Map>) -> Dynamic {
    let sensor_part = |sensor: &str| match fields {
        Some(f) => f.clone(),
        None => sensor_fields(sensor, world.sensor(sensor).as_ref()),
    };
    let mut m = match &event.kind {
        EventKind::Reading { sensor, .. }
        | EventKind::SensorOffline { sensor }
        | EventKind::SensorOnline { sensor } => sensor_part(sensor),
        _ => Map::new(),
    };
    envelope_into(&mut m, event.kind.name(), event.at, &event.source);
    put(&mut m, "event_id", event.id as i64);
    match &event.kind {
        EventKind::Reading { value, .. } => put(&mut m, "value", *value),
        EventKind::SensorOffline { .. } => put(&mut m, "online", false),
        EventKind::SensorOnline { .. } => put(&mut m, "online", true),
        EventKind::OutageOpened(o) | EventKind::OutageUpdated(o) | EventKind::OutageClosed(o) => {
            outage_fields(&mut m, o)
        }
        EventKind::AlarmRaised(a)
        | EventKind::AlarmAcknowledged(a)
        | EventKind::AlarmCleared(a) => alarm_fields(&mut m, a),
        EventKind::Tick { schedule } => put(&mut m, "schedule", schedule.clone()),
        EventKind::CallStarted(c) | EventKind::CallEnded(c) => call_fields(&mut m, c),
        EventKind::TicketChanged(t) | EventKind::TicketOverdue(t) => ticket_fields(&mut m, t),
    }
    Dynamic::from_map(m)
}

/// One line describing an event, for traces.
pub(crate) fn summary(event: &Event) -> String {
    match &event.kind {
        EventKind::Reading { sensor, value } => format!("reading {sensor}={value}"),
        EventKind::SensorOffline { sensor } => format!("sensor_offline {sensor}"),
        EventKind::SensorOnline { sensor } => format!("sensor_online {sensor}"),
        EventKind::OutageOpened(o) | EventKind::OutageUpdated(o) | EventKind::OutageClosed(o) => {
            format!("{} {} ({})", event.kind.name(), o.id, o.tenant)
        }
        EventKind::AlarmRaised(a)
        | EventKind::AlarmAcknowledged(a)
        | EventKind::AlarmCleared(a) => {
            format!("{} {}", event.kind.name(), a.key)
        }
        EventKind::Tick { schedule } => format!("tick {schedule}"),
        EventKind::CallStarted(c) | EventKind::CallEnded(c) => {
            format!("{} {} {} -> {}", event.kind.name(), c.id, c.from, c.to)
        }
        EventKind::TicketChanged(t) | EventKind::TicketOverdue(t) => {
            format!("{} {} ({})", event.kind.name(), t.id, t.status)
        }
    }
}
