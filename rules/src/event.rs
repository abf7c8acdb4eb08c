//! The one envelope that flows through the hub's bus: connectors parse at the edge into an `Event`,
//! storage persists what must not be lost, rules evaluate it, the UI streams it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an event came from: a connector id (`mqtt`, `modbus.boiler_3`), `api`, `import`, `scheduler`.
pub type Source = String;

/// An event on the bus. `id` is unique within one run of the hub and increases with time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub at: DateTime<Utc>,
    pub source: Source,
    pub kind: EventKind,
}

/// Everything that can happen. A closed enum: adding a kind makes the compiler list every place that
/// must handle it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A sensor produced a value (already scaled to its unit).
    Reading { sensor: String, value: f64 },
    /// A sensor fell silent for longer than its interval.
    SensorOffline { sensor: String },
    /// A silent sensor spoke again.
    SensorOnline { sensor: String },
    /// An outage was recorded (planned or emergency).
    OutageOpened(OutageInfo),
    /// An outage's times, reason or status changed.
    OutageUpdated(OutageInfo),
    /// An outage ended (supply restored) or was cancelled.
    OutageClosed(OutageInfo),
    /// An alarm became active (or repeated: `count` grows).
    AlarmRaised(AlarmInfo),
    /// Somebody acknowledged an alarm.
    AlarmAcknowledged(AlarmInfo),
    /// An alarm's condition went away, or somebody cleared it.
    AlarmCleared(AlarmInfo),
    /// A cron schedule of a rule fired.
    Tick { schedule: String },
    /// A call began: a resident called in, or the hub placed a call (callback, campaign, escalation).
    CallStarted(CallInfo),
    /// A call ended; `outcome` says how.
    CallEnded(CallInfo),
    /// A ticket was created or changed (status, assignee, due time, ...).
    TicketChanged(TicketInfo),
    /// A ticket passed its due time and is not done.
    TicketOverdue(TicketInfo),
}

impl EventKind {
    /// A short stable name, used in metrics labels and the UI.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Reading { .. } => "reading",
            EventKind::SensorOffline { .. } => "sensor_offline",
            EventKind::SensorOnline { .. } => "sensor_online",
            EventKind::OutageOpened(_) => "outage_opened",
            EventKind::OutageUpdated(_) => "outage_updated",
            EventKind::OutageClosed(_) => "outage_closed",
            EventKind::AlarmRaised(_) => "alarm_raised",
            EventKind::AlarmAcknowledged(_) => "alarm_acknowledged",
            EventKind::AlarmCleared(_) => "alarm_cleared",
            EventKind::Tick { .. } => "tick",
            EventKind::CallStarted(_) => "call_started",
            EventKind::CallEnded(_) => "call_ended",
            EventKind::TicketChanged(_) => "ticket_changed",
            EventKind::TicketOverdue(_) => "ticket_overdue",
        }
    }
}

/// What rules and the UI need to know of an outage, without a database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageInfo {
    pub id: i64,
    pub tenant: String,
    pub external_id: Option<String>,
    /// `planned` or `emergency`.
    pub kind: String,
    /// `heat`, `hot_water`, `cold_water`, `power`, ...
    pub utility: String,
    /// External id of the supply point, if the outage is on one.
    pub supply_point: Option<String>,
    pub status: String,
    pub reason: String,
    pub starts_at: DateTime<Utc>,
    pub expected_end: Option<DateTime<Utc>>,
    pub actual_end: Option<DateTime<Utc>>,
}

/// What rules and the UI need to know of an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmInfo {
    pub id: i64,
    pub key: String,
    pub severity: String,
    pub message: String,
    pub count: i64,
    pub by: Option<String>,
    /// `active`, `acknowledged` or `cleared`.
    #[serde(default)]
    pub state: String,
    /// External id of the tenant, if the alarm has one.
    #[serde(default)]
    pub tenant: Option<String>,
    /// External ids of what the alarm is about.
    #[serde(default)]
    pub sensor: Option<String>,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub supply_point: Option<String>,
    /// The upstream alarm that explains this one (it is not escalated meanwhile).
    #[serde(default)]
    pub inhibited_by: Option<i64>,
    /// Shelved (hidden from the active list, not escalated) until then.
    #[serde(default)]
    pub shelved_until: Option<DateTime<Utc>>,
    /// A planned outage covers it: shown, not escalated.
    #[serde(default)]
    pub in_maintenance: bool,
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    /// The acknowledgement's comment or the reason it was cleared.
    #[serde(default)]
    pub comment: Option<String>,
}

/// What rules and the UI need to know of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallInfo {
    /// The call record's id (`calls.id`).
    pub id: i64,
    /// External id of the tenant, when known.
    #[serde(default)]
    pub tenant: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The caller's number (inbound) or ours (outbound).
    pub from: String,
    /// The number dialled.
    pub to: String,
    /// External id of the caller's (or callee's) site, when the number belongs to a known consumer.
    #[serde(default)]
    pub site: Option<String>,
    /// The consumer's account, when known.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Why the call exists for outbound calls: `callback`, `campaign`, `escalation`, ...
    #[serde(default)]
    pub purpose: Option<String>,
    /// On `call_ended`: `answered`, `abandoned`, `busy`, `no_answer`, `rejected`, `failed`, ...
    #[serde(default)]
    pub outcome: Option<String>,
    /// On `call_ended`: seconds from start to end.
    #[serde(default)]
    pub duration_s: Option<f64>,
}

/// What rules and the UI need to know of a ticket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketInfo {
    pub id: i64,
    pub tenant: String,
    /// External id of the site it is about.
    #[serde(default)]
    pub site: Option<String>,
    pub category: String,
    /// `new`, `assigned`, `in_progress`, `done`, `closed` or `cancelled`.
    pub status: String,
    /// `low`, `normal`, `high` or `urgent`.
    pub priority: String,
    #[serde(default)]
    pub assignee: Option<String>,
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_with_a_type_tag() {
        let e = Event {
            id: 7,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            source: "mqtt".into(),
            kind: EventKind::Reading {
                sensor: "hp1.p_supply".into(),
                value: 5.5,
            },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"]["type"], "reading");
        assert_eq!(json["kind"]["sensor"], "hp1.p_supply");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }
}
