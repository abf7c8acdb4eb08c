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
