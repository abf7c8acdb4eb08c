//! What a rule can read while it runs: the `World` the hub implements from its memory (sensors, their
//! recent readings, the supply network), and `StaticWorld`, a JSON-loadable one for tests and fixtures.
//! Reads must be fast and must not do I/O: rules call them synchronously.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::action::SiteRef;
use crate::event::{Event, EventKind, OutageInfo};

/// A sensor as a rule sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorView {
    /// Filled in from the key when loaded from a `StaticWorld`.
    #[serde(default)]
    pub id: String,
    /// `pressure`, `temperature`, `flow`, ...
    pub kind: String,
    #[serde(default)]
    pub unit: String,
    pub tenant: String,
    #[serde(default)]
    pub site: Option<SiteRef>,
    /// External id of the supply point the sensor sits on.
    #[serde(default)]
    pub supply_point: Option<String>,
    /// Last value and its time.
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

/// Everything downstream of a supply point, by external ids and counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffectedView {
    pub tenant: String,
    pub supply_point: String,
    /// The point itself and every point it feeds.
    #[serde(default)]
    pub supply_points: Vec<String>,
    /// Residential complexes and standalone objects (roots of the site tree) with a fed site.
    #[serde(default)]
    pub complexes: Vec<SiteRef>,
    #[serde(default)]
    pub sites: u64,
    #[serde(default)]
    pub consumers: u64,
    #[serde(default)]
    pub life_support: u64,
    #[serde(default)]
    pub social_objects: u64,
}

/// The hub's in-memory view, read by rules. Implementations must not block or do I/O.
pub trait World: Send + Sync {
    fn sensor(&self, id: &str) -> Option<SensorView>;
    /// Readings of `id` at or after `since`, oldest first (the hub keeps a bounded window).
    fn history(&self, id: &str, since: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)>;
    fn affected(&self, tenant: &str, supply_point: &str) -> Option<AffectedView>;
    /// Outages not yet closed, of one tenant.
    fn active_outages(&self, _tenant: &str) -> Vec<OutageInfo> {
        Vec::new()
    }
}

/// A world written down as data: fixtures, `dry_run`, benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticWorld {
    /// By sensor id.
    #[serde(default)]
    pub sensors: BTreeMap<String, SensorView>,
    /// Readings by sensor id, oldest first.
    #[serde(default)]
    pub history: BTreeMap<String, Vec<(DateTime<Utc>, f64)>>,
    #[serde(default)]
    pub affected: Vec<AffectedView>,
    #[serde(default)]
    pub outages: Vec<OutageInfo>,
    /// Lookup for `affected`, built on first use.
    #[serde(skip)]
    affected_index: HashMap<(String, String), usize>,
}

/// How many readings per sensor `StaticWorld::apply` keeps.
const STATIC_HISTORY_LIMIT: usize = 10_000;

impl StaticWorld {
    /// Fills the sensor ids from the keys and indexes `affected`; call after building by hand.
    pub fn prepared(mut self) -> Self {
        for (id, s) in &mut self.sensors {
            s.id.clone_from(id);
        }
        self.affected_index = self
            .affected
            .iter()
            .enumerate()
            .map(|(i, a)| ((a.tenant.clone(), a.supply_point.clone()), i))
            .collect();
        self
    }

    /// Updates last values, history and outages the way the hub does before it evaluates an event.
    pub fn apply(&mut self, event: &Event) {
        match &event.kind {
            EventKind::Reading { sensor, value } => {
                if let Some(s) = self.sensors.get_mut(sensor) {
                    s.value = Some(*value);
                    s.at = Some(event.at);
                }
                let h = self.history.entry(sensor.clone()).or_default();
                h.push((event.at, *value));
                if h.len() > STATIC_HISTORY_LIMIT {
                    h.remove(0);
                }
            }
            EventKind::OutageOpened(o) | EventKind::OutageUpdated(o) => {
                self.outages.retain(|x| x.id != o.id);
                self.outages.push(o.clone());
            }
            EventKind::OutageClosed(o) => self.outages.retain(|x| x.id != o.id),
            EventKind::SensorOffline { .. }
            | EventKind::SensorOnline { .. }
            | EventKind::AlarmRaised(_)
            | EventKind::AlarmAcknowledged(_)
            | EventKind::AlarmCleared(_)
            | EventKind::CallStarted(_)
            | EventKind::CallEnded(_)
            | EventKind::TicketChanged(_)
            | EventKind::TicketOverdue(_)
            | EventKind::Tick { .. } => {}
        }
    }
}

impl World for StaticWorld {
    fn sensor(&self, id: &str) -> Option<SensorView> {
        self.sensors.get(id).map(|s| SensorView {
            id: id.to_string(),
            ..s.clone()
        })
    }

    fn history(&self, id: &str, since: DateTime<Utc>) -> Vec<(DateTime<Utc>, f64)> {
        self.history
            .get(id)
            .map(|h| h.iter().filter(|(t, _)| *t >= since).copied().collect())
            .unwrap_or_default()
    }

    fn affected(&self, tenant: &str, supply_point: &str) -> Option<AffectedView> {
        if self.affected_index.len() == self.affected.len() {
            self.affected_index
                .get(&(tenant.to_string(), supply_point.to_string()))
                .and_then(|i| self.affected.get(*i))
                .cloned()
        } else {
            self.affected
                .iter()
                .find(|a| a.tenant == tenant && a.supply_point == supply_point)
                .cloned()
        }
    }

    fn active_outages(&self, tenant: &str) -> Vec<OutageInfo> {
        self.outages
            .iter()
            .filter(|o| o.tenant == tenant)
            .cloned()
            .collect()
    }
}
