//! What a rule remembers between evaluations besides its `this` map: `held_for` and `hysteresis`
//! memories and pending timers. All of it is exported as JSON so the hub persists it across restarts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Engine-kept memory of one rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMemory {
    /// `held_for` key -> since when the condition has held.
    #[serde(default)]
    pub held: BTreeMap<String, DateTime<Utc>>,
    /// `hysteresis` key -> whether the value is in the high state.
    #[serde(default)]
    pub hysteresis: BTreeMap<String, bool>,
    /// Pending timers, one per name.
    #[serde(default)]
    pub timers: Vec<Timer>,
}

/// A timer set by `after` or `at`; it delivers `#{ type: "timer", name, data }` to `on_event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timer {
    pub name: String,
    pub due: DateTime<Utc>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl RuleMemory {
    /// Sets a timer, replacing one of the same name.
    pub fn set_timer(&mut self, timer: Timer) {
        self.timers.retain(|t| t.name != timer.name);
        self.timers.push(timer);
    }

    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.timers.iter().map(|t| t.due).min()
    }
}

/// The whole persisted state of one rule, as `RuleSet::export_state` returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateExport {
    /// The rule's `this` map.
    #[serde(default)]
    pub vars: serde_json::Value,
    #[serde(flatten)]
    pub memory: RuleMemory,
}
