//! Notification campaigns (from a rule, the API or the UI). A launch resolves the audience (consumers
//! fed by a supply point, affected by an outage, living at sites, of sites matching a query, or an
//! imported list) into one contact per consumer with its channel plan, life-support residents and
//! social objects first (they go to the operators' call list before the robot), checks the templates
//! against the variables it can fill, schedules it (now, at a time, or relative to an outage's start)
//! and estimates whether it can finish before its deadline. The dispatcher ([`dispatch`]) then sends
//! each contact through its channels as a persisted state machine.

pub mod dispatch;
pub mod policy;
pub mod report;
pub mod templates;
pub mod voice;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::api::AppState;
use crate::names::Channel;
use crate::storage::campaigns::{self, Campaign, NewCampaign, NewContact};
use crate::storage::refs::Refs;
use crate::storage::{StorageError, audit, outages, parse_json_list};
use crate::types::ExternalId;
use policy::{QuietHours, RetryPolicy};
use templates::TemplateSet;

/// `[campaigns]`: the campaign dispatcher.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignsConfig {
    /// Run the campaign dispatcher with `hub serve`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds a contact being sent belongs to the dispatcher. After a stop of the hub, a contact
    /// left mid-send is settled once this lease runs out (docs/campaigns.md, "Durability"); longer
    /// than the slowest send.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Milliseconds between looks for due contacts when there is nothing to send.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Minutes the operators have for the call list (life support, social objects) before the robot
    /// takes the entries they have not marked done. A campaign may set its own `handover_minutes`.
    #[serde(default = "default_handover_minutes")]
    pub handover_minutes: u32,
    /// When calls and SMS are allowed, in each tenant's local time (e-mail and messengers are not
    /// limited).
    #[serde(default)]
    pub quiet_hours: QuietHours,
    /// Quiet hours of one tenant, by its external id: `[campaigns.tenant_quiet_hours.heatco]`.
    #[serde(default)]
    pub tenant_quiet_hours: BTreeMap<String, QuietHours>,
}

fn default_true() -> bool {
    true
}
fn default_lease_seconds() -> u64 {
    120
}
fn default_poll_ms() -> u64 {
    500
}
fn default_handover_minutes() -> u32 {
    30
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            lease_seconds: default_lease_seconds(),
            poll_ms: default_poll_ms(),
            handover_minutes: default_handover_minutes(),
            quiet_hours: QuietHours::default(),
            tenant_quiet_hours: BTreeMap::new(),
        }
    }
}

impl CampaignsConfig {
    /// Checks the quiet hours; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.quiet_hours
            .parse()
            .map_err(|e| format!("campaigns.quiet_hours.{e}"))?;
        for (t, q) in &self.tenant_quiet_hours {
            q.parse()
                .map_err(|e| format!("campaigns.tenant_quiet_hours.{t}.{e}"))?;
        }
        Ok(())
    }

    /// The quiet hours of a tenant (by external id), falling back to the default.
    pub fn quiet_hours_of(&self, tenant: &str) -> (policy::Window, policy::Window) {
        let q = self
            .tenant_quiet_hours
            .get(tenant)
            .unwrap_or(&self.quiet_hours);
        q.parse()
            .or_else(|_| QuietHours::default().parse())
            .unwrap_or_else(|_| unreachable_windows())
    }
}

/// Never used: the default windows always parse (a unit test holds it).
fn unreachable_windows() -> (policy::Window, policy::Window) {
    let w = policy::Window {
        from: chrono::NaiveTime::MIN,
        to: chrono::NaiveTime::MIN,
    };
    (w, w)
}

/// The body of `POST /api/v1/campaigns` and of a rule's `launch_campaign`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub name: String,
    pub tenant: ExternalId,
    pub audience: Audience,
    /// A built-in template set by name (`heat_emergency`, `emergency_outage`, `planned_outage_10d`, `planned_outage_2d`,
    /// `service_restored`, `debt`); `templates` overrides it.
    #[serde(default)]
    pub template: String,
    /// Texts by language (`ru`, `en`) and channel, instead of a named template.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub templates: Option<TemplateSet>,
    /// Values of the templates' `{variables}` (`link`, `starts_at`...); times as RFC 3339 are shown in
    /// the tenant's time zone, null as "to be announced".
    #[serde(default)]
    #[schema(value_type = Object)]
    pub variables: BTreeMap<String, serde_json::Value>,
    /// Channels in the campaign's default order: `voice`, `sms`, `email`, `telegram` (`messenger`).
    #[serde(default)]
    pub channels: Vec<String>,
    /// When to start; now when absent.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Send calls and SMS in quiet hours too (an emergency). Recorded with the campaign.
    #[serde(default)]
    pub override_quiet_hours: bool,
    /// Attempts and waits; the defaults when absent.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// The legal deadline; for an outage audience of a planned outage, its start when absent.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// Minutes the operators have for the call list; `[campaigns] handover_minutes` when absent.
    #[serde(default)]
    pub handover_minutes: Option<u32>,
}

/// When a campaign starts: at a time, or relative to its outage's start (`-10d`, `-2d`, `-3h`).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    /// An offset from the audience outage's start: `-10d`, `-2d`, `-6h`, `-30m`.
    #[serde(default)]
    pub before_outage_start: Option<String>,
}

/// Who is to be told: exactly one of the keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Consumers fed by this supply point (and everything downstream of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supply_point: Option<ExternalId>,
    /// Consumers affected by this outage (by the hub's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<i64>,
    /// Consumers living at these sites (with all their sub-sites).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<ExternalId>,
    /// Consumers of the sites matching a query (saved with the campaign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<SiteQuery>,
    /// A CSV list (header `account`, and any of `phone`, `email`, `amount` and other variables), one
    /// consumer per row matched by personal account; bad rows are reported with their line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<String>,
}

/// Sites by kind and text.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteQuery {
    /// Site kind (`building`, `school`...).
    #[serde(default)]
    pub kind: Option<String>,
    /// A substring of the site's name or address.
    #[serde(default)]
    pub text: Option<String>,
}

/// A launch resolved and checked, not yet persisted (a preview stops here).
pub struct Prepared {
    pub tenant_id: i64,
    pub tenant: String,
    pub tz: chrono_tz::Tz,
    pub channels: Vec<Channel>,
    pub templates: TemplateSet,
    /// Campaign-wide variables, with the outage's when the audience is an outage.
    pub variables: BTreeMap<String, serde_json::Value>,
    pub contacts: Vec<NewContact>,
    pub audience: serde_json::Value,
    pub starts_at: DateTime<Utc>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub retry: RetryPolicy,
}

/// Parses `-10d`, `-2d`, `-6h`, `-30m` (a sign is optional; minus is before).
pub fn parse_offset(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}`: expected an offset such as -10d, -2d, -6h or -30m");
    let t = s.trim();
    let (sign, rest) = match t.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    if rest.len() < 2 {
        return Err(bad());
    }
    let (num, unit) = rest.split_at(rest.len() - 1);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "d" => Duration::days(n),
        "h" => Duration::hours(n),
        "m" => Duration::minutes(n),
        _ => return Err(bad()),
    };
    Ok(d * sign)
}

fn parse_channels(names: &[String]) -> Result<Vec<Channel>, StorageError> {
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let name = if n == "messenger" {
            "telegram"
        } else {
            n.as_str()
        };
        let c: Channel = name
            .parse()
            .map_err(|e: String| StorageError::invalid(format!("channels[{i}]"), e))?;
        if !policy::sendable(c) {
            return Err(StorageError::invalid(
                format!("channels[{i}]"),
                "letters are not sent by the dispatcher: the postal list is GET /campaigns/{id}/letters.csv",
            ));
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(StorageError::invalid(
            "channels",
            "name at least one of voice, sms, email, telegram",
        ));
    }
    Ok(out)
}

/// Contact-level variables every contact has.
const CONTACT_VARIABLES: [&str; 3] = ["name", "address", "account"];

/// Resolves and checks a launch at `now` without writing anything.
pub async fn prepare(
    state: &AppState,
    tenant_scope: Option<i64>,
    req: &CampaignRequest,
    now: DateTime<Utc>,
) -> Result<Prepared, StorageError> {
    if req.name.trim().is_empty() {
        return Err(StorageError::invalid("name", "must not be empty"));
    }
    let channels = parse_channels(&req.channels)?;
    let a = &req.audience;
    let given = usize::from(a.supply_point.is_some())
        + usize::from(a.outage.is_some())
        + usize::from(!a.sites.is_empty())
        + usize::from(a.query.is_some())
        + usize::from(a.imported.is_some());
    if given != 1 {
        return Err(StorageError::invalid(
            "audience",
            "exactly one of supply_point, outage, sites, query or imported",
        ));
    }
    let index = state.network.get(&state.db).await?;
    let mut conn = state.db.conn().await?;
    let mut refs = Refs::scoped(tenant_scope);
    let tenant_id = refs.tenant(&mut conn, req.tenant.as_str()).await?;
    let (tz_name,): (String,) = sqlx::query_as("SELECT time_zone FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .fetch_one(&mut *conn)
        .await?;
    let tz: chrono_tz::Tz = tz_name.parse().unwrap_or(chrono_tz::Europe::Moscow);
    let mut variables = BTreeMap::new();
    let mut outage_start = None;
    let mut deadline_at = req.deadline;
    let mut per_contact: HashMap<i64, BTreeMap<String, String>> = HashMap::new();
    let mut imported_columns: Vec<String> = Vec::new();
    let affected = if let Some(p) = &a.supply_point {
        let id = refs
            .supply_point(&mut conn, "audience.supply_point", tenant_id, p.as_str())
            .await?;
        Some(index.affected(id))
    } else if let Some(o) = a.outage {
        let outage = outages::get(&mut conn, o).await?;
        if outage.tenant_id != tenant_id {
            return Err(StorageError::invalid(
                "audience.outage",
                "belongs to another tenant",
            ));
        }
        variables.insert(
            "starts_at".into(),
            serde_json::json!(outage.starts_at.to_rfc3339()),
        );
        variables.insert(
            "expected_end".into(),
            outage.expected_end.map_or(serde_json::Value::Null, |t| {
                serde_json::json!(t.to_rfc3339())
            }),
        );
        variables.insert("reason".into(), serde_json::json!(outage.reason));
        variables.insert("utility".into(), serde_json::json!(outage.utility.as_str()));
        outage_start = Some(outage.starts_at);
        if deadline_at.is_none() && outage.kind == crate::names::OutageKind::Planned {
            deadline_at = Some(outage.starts_at);
        }
        Some(crate::api::outages::affected_by(&index, &outage))
    } else if !a.sites.is_empty() {
        let mut ids = Vec::with_capacity(a.sites.len());
        for s in &a.sites {
            ids.push(
                refs.site(&mut conn, "audience.sites", tenant_id, s.as_str())
                    .await?,
            );
        }
        Some(index.affected_sites(&ids))
    } else if let Some(q) = &a.query {
        let pattern = q.text.as_ref().map(|t| format!("%{t}%"));
        let ids: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM sites WHERE tenant_id = $1 AND ($2 IS NULL OR kind = $2)
                AND ($3 IS NULL OR name LIKE $3 OR address LIKE $3)",
        )
        .bind(tenant_id)
        .bind(q.kind.as_deref())
        .bind(pattern.as_deref())
        .fetch_all(&mut *conn)
        .await?;
        let ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
        Some(index.affected_sites(&ids))
    } else {
        None
    };
    // Variables set by the launcher win over the outage's.
    for (k, v) in &req.variables {
        variables.insert(k.clone(), v.clone());
    }
    let (consumers, first): (Vec<i64>, HashSet<i64>) = match affected {
        Some(affected) => {
            let first = affected
                .life_support
                .iter()
                .chain(&affected.social_objects)
                .copied()
                .collect();
            let mut consumers = affected.consumers.clone();
            consumers.sort_unstable();
            consumers.dedup();
            (consumers, first)
        }
        None => {
            let csv = a.imported.as_deref().unwrap_or_default();
            let (rows, columns) = import_list(&mut conn, tenant_id, csv).await?;
            imported_columns = columns;
            let mut consumers = Vec::with_capacity(rows.len());
            let mut first = HashSet::new();
            for (consumer, vars, priority_first) in rows {
                consumers.push(consumer);
                if priority_first {
                    first.insert(consumer);
                }
                per_contact.insert(consumer, vars);
            }
            (consumers, first)
        }
    };

    let templates = match &req.templates {
        Some(t) => t.clone(),
        None if req.template.is_empty() => {
            return Err(StorageError::invalid(
                "template",
                "name a template set (heat_emergency, emergency_outage, planned_outage_10d, planned_outage_2d, service_restored, debt) or give `templates`",
            ));
        }
        None => templates::builtin(&req.template).ok_or_else(|| {
            StorageError::invalid(
                "template",
                format!(
                    "`{}` is not a built-in template: use heat_emergency, emergency_outage, planned_outage_10d, planned_outage_2d, service_restored or debt, or give `templates`",
                    req.template
                ),
            )
        })?,
    };
    let mut known: BTreeSet<String> = CONTACT_VARIABLES.iter().map(|s| (*s).to_owned()).collect();
    known.extend(variables.keys().cloned());
    known.extend(imported_columns.iter().cloned());
    templates::check(&templates, &channels, &known)?;

    let starts_at = match &req.schedule {
        None => now,
        Some(Schedule {
            at: Some(at),
            before_outage_start: None,
        }) => *at,
        Some(Schedule {
            at: None,
            before_outage_start: Some(off),
        }) => {
            let off = parse_offset(off)
                .map_err(|e| StorageError::invalid("schedule.before_outage_start", e))?;
            let start = outage_start.ok_or_else(|| {
                StorageError::invalid(
                    "schedule.before_outage_start",
                    "needs an outage audience (audience.outage)",
                )
            })?;
            start + off
        }
        Some(_) => {
            return Err(StorageError::invalid(
                "schedule",
                "exactly one of at or before_outage_start",
            ));
        }
    };

    // Plans: the consumer's preferences the campaign uses, then the campaign's order.
    let reach: HashMap<i64, campaigns::Reachable> = campaigns::reachable(&mut conn, &consumers)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut contacts: Vec<NewContact> = Vec::with_capacity(consumers.len());
    for c in &consumers {
        let Some(r) = reach.get(c) else { continue };
        let vars = per_contact.remove(c);
        let has_phone = !parse_json_list(&r.phones).is_empty()
            || vars.as_ref().is_some_and(|v| v.contains_key("phone"));
        let has_email = r.email.is_some() || vars.as_ref().is_some_and(|v| v.contains_key("email"));
        let preferred: Vec<Channel> = parse_json_list(&r.preferred_channels)
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let opt_out: Vec<Channel> = parse_json_list(&r.opt_out)
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let plan = policy::plan(&preferred, &channels, &opt_out, |ch| match ch {
            Channel::Voice | Channel::Sms => has_phone,
            Channel::Email => has_email,
            Channel::Telegram => r.telegram.is_some(),
            Channel::Letter => false,
        });
        contacts.push(NewContact {
            consumer_id: *c,
            priority: i64::from(!first.contains(c)),
            plan,
            vars: vars.map(|v| serde_json::to_string(&v).unwrap_or_default()),
        });
    }
    // Inserted in calling order, so that the contacts' ids are that order (and keyset paging keeps it).
    contacts.sort_by_key(|c| (c.priority, c.consumer_id));
    let audience = serde_json::to_value(a).unwrap_or_default();
    Ok(Prepared {
        tenant_id,
        tenant: req.tenant.as_str().to_owned(),
        tz,
        channels,
        templates,
        variables,
        contacts,
        audience,
        starts_at,
        deadline_at,
        retry: req.retry.clone().unwrap_or_default(),
    })
}

/// Reads an imported list: per row the consumer (by personal account), its variables, and whether it
/// is a life-support resident or a social object. Every bad row is reported with its line.
async fn import_list(
    conn: &mut sqlx::AnyConnection,
    tenant_id: i64,
    csv_text: &str,
) -> Result<(Vec<(i64, BTreeMap<String, String>, bool)>, Vec<String>), StorageError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(csv_text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| StorageError::invalid("audience.imported", format!("line 1: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    if !headers.iter().any(|h| h == "account") {
        return Err(StorageError::invalid(
            "audience.imported",
            "line 1: the header needs an `account` column",
        ));
    }
    let accounts: Vec<(i64, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT id, account_number, life_support, social_object FROM consumers
          WHERE tenant_id = $1 AND account_number IS NOT NULL",
    )
    .bind(tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    let by_account: HashMap<String, (i64, bool)> = accounts
        .into_iter()
        .filter_map(|(id, a, ls, so)| a.map(|a| (a, (id, ls != 0 || so != 0))))
        .collect();
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut seen: HashMap<i64, u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(format!("line {line}: {e}"));
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let mut vars = BTreeMap::new();
        let mut bad = false;
        for (h, v) in headers.iter().zip(record.iter()) {
            if v.is_empty() {
                errors.push(format!("line {line}: {h}: empty"));
                bad = true;
                continue;
            }
            let value = match h.as_str() {
                "phone" => match crate::types::PhoneNumber::try_from(v.to_owned()) {
                    Ok(p) => p.as_str().to_owned(),
                    Err(e) => {
                        errors.push(format!("line {line}: phone: {e}"));
                        bad = true;
                        continue;
                    }
                },
                "email" if !v.contains('@') => {
                    errors.push(format!(
                        "line {line}: email: `{v}` is not an e-mail address"
                    ));
                    bad = true;
                    continue;
                }
                "amount" if v.replace(',', ".").parse::<f64>().is_err() => {
                    errors.push(format!("line {line}: amount: `{v}` is not a number"));
                    bad = true;
                    continue;
                }
                _ => v.to_owned(),
            };
            vars.insert(h.clone(), value);
        }
        let account = vars.remove("account").unwrap_or_default();
        let Some(&(consumer, first)) = by_account.get(&account) else {
            if !bad {
                errors.push(format!(
                    "line {line}: account: no consumer of this tenant has account `{account}`"
                ));
            }
            continue;
        };
        if let Some(prev) = seen.insert(consumer, line) {
            errors.push(format!(
                "line {line}: account: `{account}` is the same consumer as line {prev}"
            ));
            continue;
        }
        if !bad {
            out.push((consumer, vars, first));
        }
    }
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(50).map(String::as_str).collect();
        let more = errors.len().saturating_sub(shown.len());
        let mut reason = shown.join("; ");
        if more > 0 {
            reason.push_str(&format!("; and {more} more"));
        }
        return Err(StorageError::invalid("audience.imported", reason));
    }
    let columns = headers.into_iter().filter(|h| h != "account").collect();
    Ok((out, columns))
}

/// The campaign's estimated finish: per channel, its first-try contacts at the channel's rate (calls
/// and SMS only in allowed hours unless overridden); the latest channel decides.
fn estimate(state: &AppState, p: &Prepared, override_quiet: bool) -> DateTime<Utc> {
    let mut per_channel: BTreeMap<Channel, u64> = BTreeMap::new();
    for c in &p.contacts {
        if let Some(first) = c.plan.first() {
            *per_channel.entry(*first).or_default() += 1;
        }
    }
    let windows = state.config.campaigns.quiet_hours_of(&p.tenant);
    let mut finish = p.starts_at;
    for (channel, count) in per_channel {
        let (rate, concurrency) = dispatch::configured_limits(&state.config, channel);
        // Without a rate limit, the concurrency bounds the pace: a guess of one second per send.
        let rate = if rate > 0.0 { rate } else { concurrency as f64 };
        let limited =
            (policy::quiet_limited(channel) && !override_quiet).then_some((windows, p.tz));
        finish = finish.max(policy::estimate_finish(p.starts_at, count, rate, limited));
    }
    finish
}

/// Launches a campaign: resolved, checked and persisted with its contacts and an audit entry.
pub async fn launch(
    state: &AppState,
    actor: &str,
    tenant_scope: Option<i64>,
    req: &CampaignRequest,
) -> Result<Campaign, StorageError> {
    let now = Utc::now();
    let p = prepare(state, tenant_scope, req, now).await?;
    let estimated = estimate(state, &p, req.override_quiet_hours);
    let at_risk = p.deadline_at.is_some_and(|d| estimated > d);
    let handover = req
        .handover_minutes
        .unwrap_or(state.config.campaigns.handover_minutes);
    let has_first = p.contacts.iter().any(|c| c.priority == 0);
    let handover_at =
        has_first.then(|| p.starts_at.max(now) + Duration::minutes(i64::from(handover)));
    let templates = serde_json::to_value(&p.templates).unwrap_or_default();
    let variables = serde_json::to_value(&p.variables).unwrap_or_default();
    let retry = serde_json::to_value(&p.retry).unwrap_or_default();
    let mut tx = state.db.pool.begin().await?;
    let campaign = campaigns::create(
        &mut tx,
        &NewCampaign {
            tenant_id: p.tenant_id,
            name: req.name.trim(),
            template: &req.template,
            channels: &p.channels,
            audience: &p.audience,
            templates: &templates,
            variables: &variables,
            retry: &retry,
            status: if p.starts_at > now {
                "scheduled"
            } else {
                "running"
            },
            created_by: actor,
            starts_at: p.starts_at,
            deadline_at: p.deadline_at,
            estimated_finish_at: Some(estimated),
            deadline_at_risk: at_risk,
            override_quiet_hours: req.override_quiet_hours,
            handover_at,
        },
        &p.contacts,
    )
    .await?;
    let first = p.contacts.iter().filter(|c| c.priority == 0).count();
    let unreachable = p.contacts.iter().filter(|c| c.plan.is_empty()).count();
    audit::record(
        &mut tx,
        actor,
        "create",
        "campaign",
        &campaign.id.to_string(),
        serde_json::json!({"name": campaign.name, "audience": p.audience, "contacts": p.contacts.len(),
            "first": first, "unreachable": unreachable, "starts_at": p.starts_at,
            "override_quiet_hours": req.override_quiet_hours, "deadline_at_risk": at_risk}),
    )
    .await?;
    tx.commit().await?;
    if at_risk {
        tracing::warn!(campaign = campaign.id, estimated = %estimated, deadline = ?p.deadline_at,
            "campaign cannot finish before its deadline at the channels' rates");
    }
    tracing::info!(campaign = campaign.id, contacts = p.contacts.len(), first, %actor, "campaign created");
    if first > 0 {
        call_list_tickets(state, actor, &campaign, &p.tenant).await;
    }
    Ok(campaign)
}

/// One ticket per call-list entry, so that operators see the calls to make in their ticket queue
/// (category `callback`, due at the hand-over time, source `campaign`). A ticket that cannot be created
/// is logged: the call list itself stands.
async fn call_list_tickets(state: &AppState, actor: &str, campaign: &Campaign, tenant: &str) {
    let entries = match state.db.conn().await {
        Ok(mut conn) => campaigns::call_list(&mut conn, campaign.id).await,
        Err(e) => Err(e),
    };
    let entries = match entries {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(campaign = campaign.id, error = %e, "call-list tickets not created");
            return;
        }
    };
    for e in entries {
        let why = if e.life_support.0 {
            "жизнеобеспечение"
        } else {
            "социальный объект"
        };
        let body = serde_json::json!({
            "tenant": tenant,
            "category": "callback",
            "description": format!("Кампания «{}» (№{}): позвонить до робота ({why})", campaign.name, campaign.id),
            "consumer": e.external_id,
            "priority": if e.life_support.0 { "urgent" } else { "high" },
            "due_at": campaign.handover_at,
            "source": "campaign",
        });
        let created = match serde_json::from_value::<crate::tickets::NewTicket>(body) {
            Ok(new) => crate::tickets::create(state, actor, &new)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = created {
            tracing::warn!(campaign = campaign.id, consumer = %e.external_id, %error, "call-list ticket not created");
        }
    }
}

/// One contact of a preview: who, by which channels, and each channel's message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PreviewContact {
    pub consumer_id: i64,
    pub name: String,
    pub language: String,
    pub priority: i64,
    pub plan: Vec<Channel>,
    #[schema(value_type = Object)]
    pub messages: BTreeMap<Channel, templates::Rendered>,
}

/// What a launch would do.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub contacts: usize,
    pub first: usize,
    pub unreachable: usize,
    pub starts_at: DateTime<Utc>,
    pub estimated_finish_at: DateTime<Utc>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub deadline_at_risk: bool,
    pub sample: Vec<PreviewContact>,
}

/// Renders the templates for the first `n` contacts, writing nothing.
pub async fn preview(
    state: &AppState,
    tenant_scope: Option<i64>,
    req: &CampaignRequest,
    n: usize,
) -> Result<Preview, StorageError> {
    let now = Utc::now();
    let p = prepare(state, tenant_scope, req, now).await?;
    let estimated = estimate(state, &p, req.override_quiet_hours);
    let mut conn = state.db.conn().await?;
    let mut sample = Vec::new();
    for c in p.contacts.iter().take(n) {
        let consumer = crate::storage::consumers::get(&mut conn, c.consumer_id).await?;
        let sql = format!(
            "SELECT {} FROM consumers c WHERE c.id = $1",
            campaigns::ADDRESS
        );
        let address: Option<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(c.consumer_id)
            .fetch_optional(&mut *conn)
            .await?;
        let contact_vars: BTreeMap<String, String> = c
            .vars
            .as_deref()
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let who = dispatch::Who {
            name: consumer.name.clone(),
            address: address.and_then(|(a,)| a).unwrap_or_default(),
            account: consumer.account_number.clone().unwrap_or_default(),
            language: consumer.language.clone(),
            vars: contact_vars,
        };
        let mut messages = BTreeMap::new();
        for ch in &c.plan {
            let vars = |name: &str| who.var(name, &p.variables, p.tz);
            let rendered = templates::render(&p.templates, &who.language, *ch, &vars)
                .map_err(|e| StorageError::invalid("templates", e))?;
            messages.insert(*ch, rendered);
        }
        sample.push(PreviewContact {
            consumer_id: c.consumer_id,
            name: consumer.name,
            language: who.language.clone(),
            priority: c.priority,
            plan: c.plan.clone(),
            messages,
        });
    }
    Ok(Preview {
        contacts: p.contacts.len(),
        first: p.contacts.iter().filter(|c| c.priority == 0).count(),
        unreachable: p.contacts.iter().filter(|c| c.plan.is_empty()).count(),
        starts_at: p.starts_at,
        estimated_finish_at: estimated,
        deadline_at: p.deadline_at,
        deadline_at_risk: p.deadline_at.is_some_and(|d| estimated > d),
        sample,
    })
}

/// What a dispatcher may do to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
}

/// Pauses, resumes or cancels a campaign, with an audit entry. A change that does not apply to the
/// campaign's status (resuming a finished one) is a 422 naming the status.
pub async fn control(
    state: &AppState,
    actor: &str,
    id: i64,
    what: Control,
) -> Result<Campaign, StorageError> {
    let now = Utc::now();
    let mut tx = state.db.pool.begin().await?;
    let before = campaigns::get(&mut tx, id).await?;
    let (from, to, verb): (&[&str], &str, &str) = match what {
        Control::Pause => (&["running", "scheduled"], "paused", "pause"),
        Control::Resume => (
            &["paused"],
            if before.starts_at.is_some_and(|s| s > now) {
                "scheduled"
            } else {
                "running"
            },
            "resume",
        ),
        Control::Cancel => (&["running", "scheduled", "paused"], "cancelled", "cancel"),
    };
    if !campaigns::set_status(&mut tx, id, from, to, now).await? {
        return Err(StorageError::invalid(
            "status",
            format!("campaign {id} is {}: cannot {verb} it", before.status),
        ));
    }
    audit::record(
        &mut tx,
        actor,
        verb,
        "campaign",
        &id.to_string(),
        serde_json::json!({"from": before.status, "to": to}),
    )
    .await?;
    let after = campaigns::get(&mut tx, id).await?;
    tx.commit().await?;
    tracing::info!(campaign = id, %actor, action = verb, "campaign {verb}d");
    Ok(after)
}

/// An operator marks a call-list entry done; the robot may then send to the contact.
pub async fn operator_done(
    state: &AppState,
    actor: &str,
    campaign_id: i64,
    contact_id: i64,
    result: &str,
) -> Result<(), StorageError> {
    if !["reached", "not_reached"].contains(&result) {
        return Err(StorageError::invalid(
            "result",
            format!("`{result}`: use reached or not_reached"),
        ));
    }
    let mut tx = state.db.pool.begin().await?;
    campaigns::operator_done(&mut tx, campaign_id, contact_id, result, Utc::now()).await?;
    audit::record(
        &mut tx,
        actor,
        "call_list_done",
        "campaign",
        &campaign_id.to_string(),
        serde_json::json!({"contact": contact_id, "result": result}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_default_quiet_hours_parse() {
        assert_eq!(parse_offset("-10d").unwrap(), Duration::days(-10));
        assert_eq!(parse_offset("-6h").unwrap(), Duration::hours(-6));
        assert_eq!(parse_offset("30m").unwrap(), Duration::minutes(30));
        assert!(parse_offset("-2w").is_err());
        assert!(parse_offset("d").is_err());
        CampaignsConfig::default().validate().unwrap();
        assert!(QuietHours::default().parse().is_ok());
        assert!(parse_channels(&["letter".into()]).is_err());
        assert_eq!(
            parse_channels(&["messenger".into(), "sms".into(), "sms".into()]).unwrap(),
            [Channel::Telegram, Channel::Sms]
        );
    }
}
