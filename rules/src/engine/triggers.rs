//! What a rule listens to, declared at the top level of its file (`on_reading(...)`, `on_cron(...)`),
//! and how an event is matched against it. Sensor matches are cached per sensor id by `RuleSet`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rhai::{Dynamic, Map};

use crate::event::{AlarmInfo, CallInfo, OutageInfo, TicketInfo};
use crate::world::SensorView;

/// One declared trigger.
#[derive(Debug, Clone)]
pub enum Trigger {
    Reading(SensorFilter),
    SensorStatus(SensorFilter),
    Outage(OutageFilter),
    Alarm(AlarmFilter),
    Cron(CronTrigger),
    Call(CallFilter),
    Ticket(TicketFilter),
}

impl Trigger {
    /// As written in the rule, for listings and traces.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Reading(f) => format!("on_reading({})", f.describe()),
            Trigger::SensorStatus(f) => format!("on_sensor_status({})", f.describe()),
            Trigger::Outage(f) => format!("on_outage({})", f.describe()),
            Trigger::Alarm(f) => format!("on_alarm({})", f.describe()),
            Trigger::Cron(c) => format!("on_cron({:?}, {:?})", c.expr, c.tz.name()),
            Trigger::Call(f) => format!("on_call({})", f.describe()),
            Trigger::Ticket(f) => format!("on_ticket({})", f.describe()),
        }
    }
}

/// Filters on a sensor; every field set must match. Strings are globs (`*`, `?`).
#[derive(Debug, Clone, Default)]
pub struct SensorFilter {
    pub sensor: Option<String>,
    pub kind: Option<String>,
    pub unit: Option<String>,
    pub tenant: Option<String>,
    pub site: Option<String>,
    pub supply_point: Option<String>,
}

impl SensorFilter {
    pub const KEYS: &'static [&'static str] =
        &["sensor", "kind", "unit", "tenant", "site", "supply_point"];

    pub fn from_map(map: &Map) -> Result<Self, String> {
        let mut f = SensorFilter::default();
        for (k, v) in map {
            let v = Some(string_value(k, v)?);
            match k.as_str() {
                "sensor" => f.sensor = v,
                "kind" => f.kind = v,
                "unit" => f.unit = v,
                "tenant" => f.tenant = v,
                "site" => f.site = v,
                "supply_point" => f.supply_point = v,
                other => return Err(unknown_key(other, Self::KEYS)),
            }
        }
        Ok(f)
    }

    /// Whether matching needs more than the sensor id.
    pub fn needs_metadata(&self) -> bool {
        self.kind.is_some()
            || self.unit.is_some()
            || self.tenant.is_some()
            || self.site.is_some()
            || self.supply_point.is_some()
    }

    pub fn matches(&self, id: &str, meta: Option<&SensorView>) -> bool {
        if let Some(p) = &self.sensor
            && !glob_match(p, id)
        {
            return false;
        }
        if !self.needs_metadata() {
            return true;
        }
        let Some(m) = meta else { return false };
        opt_match(&self.kind, Some(&m.kind))
            && opt_match(&self.unit, Some(&m.unit))
            && opt_match(&self.tenant, Some(&m.tenant))
            && opt_match(&self.site, m.site.as_ref().map(|s| &s.site))
            && opt_match(&self.supply_point, m.supply_point.as_ref())
    }

    fn describe(&self) -> String {
        describe_fields(&[
            ("sensor", &self.sensor),
            ("kind", &self.kind),
            ("unit", &self.unit),
            ("tenant", &self.tenant),
            ("site", &self.site),
            ("supply_point", &self.supply_point),
        ])
    }
}

/// Filters on an outage; strings are globs.
#[derive(Debug, Clone, Default)]
pub struct OutageFilter {
    pub tenant: Option<String>,
    pub kind: Option<String>,
    pub utility: Option<String>,
    pub supply_point: Option<String>,
}

impl OutageFilter {
    pub const KEYS: &'static [&'static str] = &["tenant", "kind", "utility", "supply_point"];

    pub fn from_map(map: &Map) -> Result<Self, String> {
        let mut f = OutageFilter::default();
        for (k, v) in map {
            let v = Some(string_value(k, v)?);
            match k.as_str() {
                "tenant" => f.tenant = v,
                "kind" => f.kind = v,
                "utility" => f.utility = v,
                "supply_point" => f.supply_point = v,
                other => return Err(unknown_key(other, Self::KEYS)),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, o: &OutageInfo) -> bool {
        opt_match(&self.tenant, Some(&o.tenant))
            && opt_match(&self.kind, Some(&o.kind))
            && opt_match(&self.utility, Some(&o.utility))
            && opt_match(&self.supply_point, o.supply_point.as_ref())
    }

    fn describe(&self) -> String {
        describe_fields(&[
            ("tenant", &self.tenant),
            ("kind", &self.kind),
            ("utility", &self.utility),
            ("supply_point", &self.supply_point),
        ])
    }
}

/// Filters on an alarm; strings are globs.
#[derive(Debug, Clone, Default)]
pub struct AlarmFilter {
    pub key: Option<String>,
    pub severity: Option<String>,
}

impl AlarmFilter {
    pub const KEYS: &'static [&'static str] = &["key", "severity"];

    pub fn from_map(map: &Map) -> Result<Self, String> {
        let mut f = AlarmFilter::default();
        for (k, v) in map {
            let v = Some(string_value(k, v)?);
            match k.as_str() {
                "key" => f.key = v,
                "severity" => f.severity = v,
                other => return Err(unknown_key(other, Self::KEYS)),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, a: &AlarmInfo) -> bool {
        opt_match(&self.key, Some(&a.key)) && opt_match(&self.severity, Some(&a.severity))
    }

    fn describe(&self) -> String {
        describe_fields(&[("key", &self.key), ("severity", &self.severity)])
    }
}

/// Filters on a call; strings are globs.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub tenant: Option<String>,
    pub direction: Option<String>,
    pub site: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub purpose: Option<String>,
    pub outcome: Option<String>,
}

impl CallFilter {
    pub const KEYS: &'static [&'static str] = &[
        "tenant",
        "direction",
        "site",
        "from",
        "to",
        "purpose",
        "outcome",
    ];

    pub fn from_map(map: &Map) -> Result<Self, String> {
        let mut f = CallFilter::default();
        for (k, v) in map {
            let v = Some(string_value(k, v)?);
            match k.as_str() {
                "tenant" => f.tenant = v,
                "direction" => f.direction = v,
                "site" => f.site = v,
                "from" => f.from = v,
                "to" => f.to = v,
                "purpose" => f.purpose = v,
                "outcome" => f.outcome = v,
                other => return Err(unknown_key(other, Self::KEYS)),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, c: &CallInfo) -> bool {
        opt_match(&self.tenant, c.tenant.as_ref())
            && opt_match(&self.direction, Some(&c.direction))
            && opt_match(&self.site, c.site.as_ref())
            && opt_match(&self.from, Some(&c.from))
            && opt_match(&self.to, Some(&c.to))
            && opt_match(&self.purpose, c.purpose.as_ref())
            && opt_match(&self.outcome, c.outcome.as_ref())
    }

    fn describe(&self) -> String {
        describe_fields(&[
            ("tenant", &self.tenant),
            ("direction", &self.direction),
            ("site", &self.site),
            ("from", &self.from),
            ("to", &self.to),
            ("purpose", &self.purpose),
            ("outcome", &self.outcome),
        ])
    }
}

/// Filters on a ticket; strings are globs.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub tenant: Option<String>,
    pub site: Option<String>,
    pub category: Option<String>,
    pub status: Option<String>,
    pub priority: Option<String>,
}

impl TicketFilter {
    pub const KEYS: &'static [&'static str] = &["tenant", "site", "category", "status", "priority"];

    pub fn from_map(map: &Map) -> Result<Self, String> {
        let mut f = TicketFilter::default();
        for (k, v) in map {
            let v = Some(string_value(k, v)?);
            match k.as_str() {
                "tenant" => f.tenant = v,
                "site" => f.site = v,
                "category" => f.category = v,
                "status" => f.status = v,
                "priority" => f.priority = v,
                other => return Err(unknown_key(other, Self::KEYS)),
            }
        }
        Ok(f)
    }

    pub fn matches(&self, t: &TicketInfo) -> bool {
        opt_match(&self.tenant, Some(&t.tenant))
            && opt_match(&self.site, t.site.as_ref())
            && opt_match(&self.category, Some(&t.category))
            && opt_match(&self.status, Some(&t.status))
            && opt_match(&self.priority, Some(&t.priority))
    }

    fn describe(&self) -> String {
        describe_fields(&[
            ("tenant", &self.tenant),
            ("site", &self.site),
            ("category", &self.category),
            ("status", &self.status),
            ("priority", &self.priority),
        ])
    }
}

/// A cron schedule (6 fields, seconds first) in a time zone.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    pub expr: String,
    pub schedule: cron::Schedule,
    pub tz: Tz,
}

impl CronTrigger {
    pub fn parse(expr: &str, tz: &str) -> Result<Self, String> {
        let schedule = cron::Schedule::from_str(expr)
            .map_err(|e| format!("cron expression {expr:?}: {e} (6 fields, seconds first)"))?;
        let tz = Tz::from_str(tz).map_err(|_| format!("unknown time zone {tz:?}"))?;
        Ok(CronTrigger {
            expr: expr.to_string(),
            schedule,
            tz,
        })
    }

    /// Occurrences in `(from, to]`, at most `limit`.
    pub fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        self.schedule
            .after(&from.with_timezone(&self.tz))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= to)
            .take(limit)
            .collect()
    }

    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.tz))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

fn string_value(key: &str, v: &Dynamic) -> Result<String, String> {
    v.clone()
        .into_string()
        .map_err(|t| format!("trigger key `{key}` must be a string, not {t}"))
}

fn unknown_key(key: &str, known: &[&str]) -> String {
    format!(
        "unknown trigger key `{key}` (expected one of: {})",
        known.join(", ")
    )
}

fn opt_match(pattern: &Option<String>, value: Option<&String>) -> bool {
    match (pattern, value) {
        (None, _) => true,
        (Some(p), Some(v)) => glob_match(p, v),
        (Some(_), None) => false,
    }
}

fn describe_fields(fields: &[(&str, &Option<String>)]) -> String {
    let set: Vec<String> = fields
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}: {v:?}")))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("#{{ {} }}", set.join(", "))
    }
}

/// Glob with `*` (any run, possibly empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("hp-*.p_supply", "hp-3.p_supply"));
        assert!(glob_match("hp-*.p_supply", "hp-.p_supply"));
        assert!(!glob_match("hp-*.p_supply", "hp-3.p_return"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.t_*", "boiler.t_supply"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn cron_in_a_time_zone() {
        let c = CronTrigger::parse("0 0 6 * * *", "Europe/Moscow").unwrap();
        let from = DateTime::parse_from_rfc3339("2025-01-10T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let to = from + chrono::Duration::days(2);
        let got: Vec<String> = c
            .between(from, to, 10)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect();
        assert_eq!(
            got,
            vec!["2025-01-10T03:00:00+00:00", "2025-01-11T03:00:00+00:00"]
        );
        assert!(CronTrigger::parse("0 6 * * *", "UTC").is_err(), "5 fields");
        assert!(CronTrigger::parse("0 0 6 * * *", "Mars/Base").is_err());
    }
}
