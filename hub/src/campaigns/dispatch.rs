//! The campaign dispatcher: the worker that sends each contact of the running campaigns through its
//! channels. One lane per kind of channel (voice, sms, email, telegram), each paced by its
//! `[channels.NAME] rate_per_s` and `concurrency`; a lane claims only as many due contacts as it sends
//! at once (status `sending` with a lease), sends them, and writes every outcome with the contact's next
//! state (see [`super::policy::next`]) in one transaction. Calls and SMS wait for the tenant's allowed
//! hours unless the campaign overrides them. Voice goes through a [`Dialer`] (the telephony core's
//! outbound calls); without one, voice contacts fall through to their next channel.
//!
//! Durability: a contact is `sending` only while its send is in flight. After a stop, contacts whose
//! lease ran out are settled by `storage::campaigns::recover_expired`: a cut call is queued again, a
//! message that may have reached the gateway is counted as sent and never sent twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectors::channels::{BoxFuture, DynChannel, OutboundMessage};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::CampaignsConfig;
use super::policy::{self, Next, Position, RetryPolicy, SendOutcome};
use super::templates::{self, TemplateSet};
use crate::api::AppState;
use crate::config::Config;
use crate::names::Channel;
use crate::storage::campaigns::{self, Campaign, Claimed, Recorded};
use crate::storage::{StorageError, parse_json_list};

/// Kinds of channel the dispatcher sends by.
pub const LANES: [Channel; 4] = [
    Channel::Voice,
    Channel::Sms,
    Channel::Email,
    Channel::Telegram,
];
/// Concurrent calls when the dialer does not say.
const DEFAULT_VOICE_LINES: usize = 30;

/// Outbound calls for campaigns: the telephony core implements it (`Telephony::originate`).
pub trait Dialer: Send + Sync {
    /// Calls `to`, speaks `text` in `language` and says how the call went.
    fn call<'a>(
        &'a self,
        to: &'a str,
        text: &'a str,
        language: &'a str,
    ) -> BoxFuture<'a, SendOutcome>;
    /// Calls at once (trunk lines).
    fn lines(&self) -> usize {
        DEFAULT_VOICE_LINES
    }
}

/// How a lane sends.
#[derive(Clone)]
pub enum Sender {
    Message(Arc<dyn DynChannel>),
    Voice(Arc<dyn Dialer>),
}

/// One configured way to send a kind of message, with its pacing.
#[derive(Clone)]
pub struct Route {
    /// `[channels.NAME]`'s name, or `telephony`.
    pub name: String,
    pub sender: Sender,
    /// Messages per second at most; 0: no limit.
    pub rate_per_s: f64,
    /// In flight at once.
    pub concurrency: usize,
}

/// `rate_per_s` and `concurrency` of the first `[channels.NAME]` of a kind.
pub fn configured_limits(config: &Config, kind: Channel) -> (f64, usize) {
    config
        .channels
        .values()
        .find(|c| crate::delivery::kind_of(c) == kind)
        .map_or((0.0, DEFAULT_VOICE_LINES), |c| c.limits())
}

struct Lane {
    kind: Channel,
    route: Option<Route>,
    /// The earliest moment of the next send under the rate limit.
    next_slot: Mutex<tokio::time::Instant>,
}

/// What a campaign needs while it is sent, parsed once per round.
struct Running {
    campaign: Campaign,
    templates: TemplateSet,
    variables: BTreeMap<String, serde_json::Value>,
    retry: RetryPolicy,
    tz: chrono_tz::Tz,
    windows: (policy::Window, policy::Window),
}

/// The contact as a message addresses it.
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub name: String,
    pub address: String,
    pub account: String,
    pub language: String,
    /// The contact's own variables (an imported list's `amount`, `phone`...).
    pub vars: BTreeMap<String, String>,
}

impl Who {
    /// A variable's value for this contact: its own, then the campaign's, then name/address/account.
    pub fn var(
        &self,
        name: &str,
        campaign: &BTreeMap<String, serde_json::Value>,
        tz: chrono_tz::Tz,
    ) -> Option<String> {
        if let Some(v) = self.vars.get(name) {
            return Some(v.clone());
        }
        if let Some(v) = campaign.get(name) {
            return Some(templates::display(v, tz, &self.language));
        }
        match name {
            "name" => Some(self.name.clone()),
            "address" => Some(self.address.clone()),
            "account" => Some(self.account.clone()),
            _ => None,
        }
    }
}

/// What a round did, for tests and the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub recovered: campaigns::Recovered,
    pub finished: Vec<i64>,
}

/// The dispatcher over the database's campaigns.
pub struct Dispatcher {
    config: CampaignsConfig,
    lanes: Vec<Arc<Lane>>,
}

impl Dispatcher {
    /// Routes from `[channels.*]` (the first channel of each kind), voice through `dialer`.
    pub fn from_config(config: &Config, dialer: Option<Arc<dyn Dialer>>) -> Result<Self, String> {
        config.campaigns.validate()?;
        let mut routes = Vec::new();
        for (name, c) in &config.channels {
            let kind = crate::delivery::kind_of(c);
            if routes.iter().any(|r: &(Channel, Route)| r.0 == kind) {
                continue;
            }
            let channel = c.build().map_err(|e| format!("channels.{name}: {e}"))?;
            let (rate_per_s, concurrency) = c.limits();
            routes.push((
                kind,
                Route {
                    name: name.clone(),
                    sender: Sender::Message(channel),
                    rate_per_s,
                    concurrency,
                },
            ));
        }
        if let Some(d) = dialer {
            let lines = d.lines().max(1);
            routes.push((
                Channel::Voice,
                Route {
                    name: "telephony".into(),
                    sender: Sender::Voice(d),
                    rate_per_s: 0.0,
                    concurrency: lines,
                },
            ));
        }
        Ok(Self::new(config.campaigns.clone(), routes))
    }

    /// Over routes built elsewhere (tests' fakes, the benchmark's sink).
    pub fn new(config: CampaignsConfig, routes: Vec<(Channel, Route)>) -> Self {
        let lanes = LANES
            .iter()
            .map(|&kind| {
                Arc::new(Lane {
                    kind,
                    route: routes
                        .iter()
                        .find(|(k, _)| *k == kind)
                        .map(|(_, r)| r.clone()),
                    next_slot: Mutex::new(tokio::time::Instant::now()),
                })
            })
            .collect();
        Self { config, lanes }
    }

    /// Dispatches until `shutdown`: one loop per lane, and one that settles expired leases and
    /// finishes campaigns. A failed round is logged and retried after a pause.
    pub async fn run(self, state: AppState, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let tasks = tokio_util::task::TaskTracker::new();
        for lane in this.lanes.clone() {
            let (this, state, shutdown) = (this.clone(), state.clone(), shutdown.clone());
            tasks.spawn(async move { this.lane_loop(&state, &lane, shutdown).await });
        }
        let poll = Duration::from_millis(this.config.poll_ms.max(10));
        loop {
            if let Err(e) = this.housekeeping(&state, Utc::now()).await {
                tracing::warn!(error = %e, "campaign housekeeping failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
    }

    /// A lane at work: keeps up to `concurrency` sends in flight, claiming more as sends finish (so
    /// that every line or connection stays busy), and writes finished sends in small batches. On
    /// shutdown it claims nothing more and lets the sends in flight finish and be recorded.
    async fn lane_loop(&self, state: &AppState, lane: &Lane, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        let concurrency = lane.route.as_ref().map_or(500, |r| r.concurrency).max(1);
        // Claim when at least this many slots are free (or nothing is in flight).
        // Calls are long: a free line is refilled at once. Messages are short: claims come in batches.
        let refill = match lane.route.as_ref().map(|r| &r.sender) {
            Some(Sender::Voice(_)) => 1,
            _ => (concurrency / 8).max(1),
        };
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut done: Vec<Recorded> = Vec::new();
        let mut running: (
            Option<tokio::time::Instant>,
            HashMap<i64, Arc<Running>>,
            Vec<i64>,
        ) = (None, HashMap::new(), Vec::new());
        let mut idle_until: Option<tokio::time::Instant> = None;
        loop {
            let stopping = shutdown.is_cancelled();
            let free = concurrency.saturating_sub(inflight.len());
            let may_claim = !stopping
                && idle_until.is_none_or(|t| tokio::time::Instant::now() >= t)
                && (free >= refill || (inflight.is_empty() && free > 0));
            if may_claim {
                let now = Utc::now();
                match self.claim_for(state, lane, &mut running, now, free).await {
                    Ok(claimed) if claimed.is_empty() => {
                        idle_until = Some(tokio::time::Instant::now() + poll);
                    }
                    Ok(claimed) => {
                        idle_until = None;
                        for c in claimed {
                            let run = running.1.get(&c.campaign_id).cloned();
                            inflight.push(self.send_one(lane, run, c, now));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(channel = %lane.kind, error = %e, "campaign dispatch failed; retrying");
                        idle_until = Some(tokio::time::Instant::now() + poll);
                    }
                }
            }
            if inflight.is_empty() {
                if stopping {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
                continue;
            }
            tokio::select! {
                Some(rec) = inflight.next() => done.push(rec),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            while let Some(Some(rec)) = futures::FutureExt::now_or_never(inflight.next()) {
                done.push(rec);
            }
            if !done.is_empty() {
                let batch = std::mem::take(&mut done);
                if let Err(e) = self.write(state, &batch).await {
                    // Kept to write again: the contacts are still `sending` under their lease.
                    tracing::warn!(channel = %lane.kind, error = %e, "campaign outcomes not written; retrying");
                    done = batch;
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    async fn write(&self, state: &AppState, rows: &[Recorded]) -> Result<(), StorageError> {
        let mut tx = state.db.pool.begin().await?;
        campaigns::record(&mut tx, rows, Utc::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `free` due contacts for the lane, from campaigns allowed to send now; the list of
    /// running campaigns is reloaded at most every quarter second.
    async fn claim_for(
        &self,
        state: &AppState,
        lane: &Lane,
        running: &mut (
            Option<tokio::time::Instant>,
            HashMap<i64, Arc<Running>>,
            Vec<i64>,
        ),
        now: DateTime<Utc>,
        free: usize,
    ) -> Result<Vec<Claimed>, StorageError> {
        let stale = running
            .0
            .is_none_or(|t| t.elapsed() > Duration::from_millis(250));
        if stale {
            let list = self.running(state, now).await?;
            running.2 = self.allowed(lane, &list, now);
            running.1 = list
                .into_iter()
                .map(|r| (r.campaign.id, Arc::new(r)))
                .collect();
            running.0 = Some(tokio::time::Instant::now());
        }
        if running.2.is_empty() {
            return Ok(Vec::new());
        }
        let limit = match &lane.route {
            Some(r) if r.rate_per_s > 0.0 => free.min(r.rate_per_s.ceil() as usize).max(1),
            _ => free,
        };
        let lease = now
            + chrono::Duration::seconds(i64::try_from(self.config.lease_seconds).unwrap_or(120));
        let mut conn = state.db.conn().await?;
        campaigns::claim(&mut conn, lane.kind, &running.2, now, lease, limit).await
    }

    /// Campaigns the lane may send for now: calls and SMS wait for the allowed hours, unless the
    /// campaign overrides them or nothing would be sent anyway (no route: the contacts fall through).
    fn allowed(&self, lane: &Lane, running: &[Running], now: DateTime<Utc>) -> Vec<i64> {
        running
            .iter()
            .filter(|r| {
                lane.route.is_none()
                    || r.campaign.override_quiet_hours
                    || !policy::quiet_limited(lane.kind)
                    || policy::allowed_at(r.windows, r.tz, now)
            })
            .map(|r| r.campaign.id)
            .collect()
    }

    /// One round of everything at `now`: settle expired leases, one claim-and-send per lane, finish
    /// campaigns with nothing left. Public so that tests drive time themselves.
    pub async fn step(&self, state: &AppState, now: DateTime<Utc>) -> Result<Round, StorageError> {
        let mut round = Round {
            recovered: self.recover(state, now).await?,
            ..Round::default()
        };
        for lane in &self.lanes {
            round.sent += self.lane_round(state, lane, now).await?;
        }
        let mut conn = state.db.conn().await?;
        round.finished = campaigns::finish_done(&mut conn, now).await?;
        Ok(round)
    }

    async fn recover(
        &self,
        state: &AppState,
        now: DateTime<Utc>,
    ) -> Result<campaigns::Recovered, StorageError> {
        let mut conn = state.db.conn().await?;
        let r = campaigns::recover_expired(&mut conn, now).await?;
        if r != campaigns::Recovered::default() {
            tracing::warn!(
                requeued_calls = r.requeued,
                presumed_sent = r.presumed_sent,
                "campaign contacts left mid-send by a stop settled"
            );
        }
        Ok(r)
    }

    async fn housekeeping(&self, state: &AppState, now: DateTime<Utc>) -> Result<(), StorageError> {
        self.recover(state, now).await?;
        let mut conn = state.db.conn().await?;
        for id in campaigns::finish_done(&mut conn, now).await? {
            tracing::info!(campaign = id, "campaign finished");
        }
        Ok(())
    }

    /// The running campaigns, parsed.
    async fn running(
        &self,
        state: &AppState,
        now: DateTime<Utc>,
    ) -> Result<Vec<Running>, StorageError> {
        let mut conn = state.db.conn().await?;
        let list = campaigns::running(&mut conn, now).await?;
        let mut out = Vec::with_capacity(list.len());
        let mut tenants: HashMap<i64, (String, chrono_tz::Tz)> = HashMap::new();
        for campaign in list {
            if let std::collections::hash_map::Entry::Vacant(e) = tenants.entry(campaign.tenant_id)
            {
                let (ext, tz): (String, String) =
                    sqlx::query_as("SELECT external_id, time_zone FROM tenants WHERE id = $1")
                        .bind(campaign.tenant_id)
                        .fetch_one(&mut *conn)
                        .await?;
                e.insert((ext, tz.parse().unwrap_or(chrono_tz::Europe::Moscow)));
            }
            let (ext, tz) = tenants
                .get(&campaign.tenant_id)
                .cloned()
                .unwrap_or_default();
            out.push(Running {
                templates: serde_json::from_value(campaign.templates.clone()).unwrap_or_default(),
                variables: serde_json::from_value(campaign.variables.clone()).unwrap_or_default(),
                retry: serde_json::from_value(campaign.retry.clone()).unwrap_or_default(),
                windows: self.config.quiet_hours_of(&ext),
                tz,
                campaign,
            });
        }
        Ok(out)
    }

    /// Claims what the lane can send at once, sends it and records the outcomes; returns how many.
    async fn lane_round(
        &self,
        state: &AppState,
        lane: &Lane,
        now: DateTime<Utc>,
    ) -> Result<usize, StorageError> {
        let running = self.running(state, now).await?;
        let ids = self.allowed(lane, &running, now);
        if ids.is_empty() {
            return Ok(0);
        }
        let batch = match &lane.route {
            None => 500,
            Some(r) if r.rate_per_s > 0.0 => r.concurrency.min(r.rate_per_s.ceil() as usize).max(1),
            Some(r) => r.concurrency,
        };
        let lease = now
            + chrono::Duration::seconds(i64::try_from(self.config.lease_seconds).unwrap_or(120));
        let claimed = {
            let mut conn = state.db.conn().await?;
            campaigns::claim(&mut conn, lane.kind, &ids, now, lease, batch).await?
        };
        if claimed.is_empty() {
            return Ok(0);
        }
        let by_id: HashMap<i64, Arc<Running>> = running
            .into_iter()
            .map(|r| (r.campaign.id, Arc::new(r)))
            .collect();
        let concurrency = lane.route.as_ref().map_or(batch, |r| r.concurrency).max(1);
        let recorded: Vec<Recorded> = futures::stream::iter(claimed)
            .map(|c| {
                let run = by_id.get(&c.campaign_id).cloned();
                self.send_one(lane, run, c, now)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let n = recorded.len();
        let mut tx = state.db.pool.begin().await?;
        campaigns::record(&mut tx, &recorded, Utc::now().max(now)).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Sends one claimed contact and works out its next state.
    async fn send_one(
        &self,
        lane: &Lane,
        run: Option<Arc<Running>>,
        c: Claimed,
        now: DateTime<Utc>,
    ) -> Recorded {
        let plan: Vec<Channel> = parse_json_list(&c.plan)
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let pos = Position {
            plan,
            step: usize::try_from(c.step).unwrap_or(0),
            channel_attempts: u32::try_from(c.channel_attempts).unwrap_or(0),
        };
        let started = Utc::now().max(now);
        let (route, outcome) = match &run {
            None => (
                String::new(),
                SendOutcome::Failed {
                    reason: "campaign not running".into(),
                    permanent: true,
                },
            ),
            Some(run) => self.deliver(lane, run, &c, &pos).await,
        };
        let retry = run.map(|r| r.retry.clone()).unwrap_or_default();
        // Waits count from the round's time, so that a fall-through is due in the next round.
        let decided_at = now;
        let next = policy::next(&pos, &outcome, &retry, decided_at);
        let mut rec = Recorded {
            contact_id: c.id,
            campaign_id: c.campaign_id,
            status: "failed",
            step: c.step,
            channel: lane.kind,
            channel_attempts: c.channel_attempts,
            next_attempt_at: decided_at,
            reached_via: None,
            reason: None,
            tried: lane.kind,
            route,
            started_at: started,
            outcome: outcome.name(),
            detail: outcome.detail(),
        };
        match next {
            Next::Reached { status, via } => {
                rec.status = status;
                rec.reached_via = Some(via);
            }
            Next::Queued {
                step,
                channel,
                channel_attempts,
                at,
                reason,
            } => {
                rec.status = "queued";
                rec.step = i64::try_from(step).unwrap_or(0);
                rec.channel = channel;
                rec.channel_attempts = i64::from(channel_attempts);
                rec.next_attempt_at = at;
                rec.reason = Some(reason);
            }
            Next::Failed { reason } => {
                rec.reason = Some(reason);
            }
        }
        rec
    }

    /// The send itself: address, text, pacing, the channel.
    async fn deliver(
        &self,
        lane: &Lane,
        run: &Running,
        c: &Claimed,
        pos: &Position,
    ) -> (String, SendOutcome) {
        let Some(route) = &lane.route else {
            let reason = match lane.kind {
                Channel::Voice => "voice channel not available".to_owned(),
                k => format!("no [channels.*] of kind {k} is configured"),
            };
            return (
                String::new(),
                SendOutcome::Failed {
                    reason,
                    permanent: true,
                },
            );
        };
        let who = Who {
            name: c.name.clone(),
            address: c.address.clone().unwrap_or_default(),
            account: c.account_number.clone().unwrap_or_default(),
            language: c.language.clone(),
            vars: c
                .vars
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
        };
        let phones: Vec<String> = match who.vars.get("phone") {
            Some(p) => vec![p.clone()],
            None => parse_json_list(&c.phones),
        };
        let to = match lane.kind {
            // A second number (life support has one) is tried on the next attempt.
            Channel::Voice | Channel::Sms => phones
                .get(pos.channel_attempts as usize % phones.len().max(1))
                .cloned(),
            Channel::Email => who.vars.get("email").cloned().or_else(|| c.email.clone()),
            Channel::Telegram => c.telegram.clone(),
            Channel::Letter => None,
        };
        let Some(to) = to else {
            return (
                route.name.clone(),
                SendOutcome::Failed {
                    reason: "no address on this channel".into(),
                    permanent: true,
                },
            );
        };
        let vars = |name: &str| who.var(name, &run.variables, run.tz);
        let msg = match templates::render(&run.templates, &who.language, lane.kind, &vars) {
            Ok(m) => m,
            Err(e) => {
                return (
                    route.name.clone(),
                    SendOutcome::Failed {
                        reason: format!("template: {e}"),
                        permanent: true,
                    },
                );
            }
        };
        if route.rate_per_s > 0.0 {
            let at = {
                let mut slot = lane.next_slot.lock().await;
                let at = (*slot).max(tokio::time::Instant::now());
                *slot = at + Duration::from_secs_f64(1.0 / route.rate_per_s);
                at
            };
            tokio::time::sleep_until(at).await;
        }
        let outcome = match &route.sender {
            Sender::Message(ch) => {
                let out = OutboundMessage {
                    to,
                    subject: msg.subject,
                    text: msg.text,
                };
                match ch.send(&out).await {
                    Ok(d) => SendOutcome::Sent { receipt: d.receipt },
                    Err(e) => SendOutcome::Failed {
                        reason: format!("[{}] {e}", route.name),
                        permanent: e.is_permanent(),
                    },
                }
            }
            Sender::Voice(d) => d.call(&to, &msg.text, &who.language).await,
        };
        (route.name.clone(), outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use connectors::channels::{Channel as SendChannel, ChannelError, Delivery};

    use super::*;
    use crate::names::Role;

    #[derive(Default)]
    struct Fake {
        sent: StdMutex<Vec<OutboundMessage>>,
        fail: StdMutex<Option<ChannelError>>,
    }

    impl SendChannel for Fake {
        async fn send(&self, msg: &OutboundMessage) -> Result<Delivery, ChannelError> {
            self.sent.lock().unwrap().push(msg.clone());
            match self.fail.lock().unwrap().clone() {
                Some(e) => Err(e),
                None => Ok(Delivery {
                    receipt: "ok".into(),
                    message_ids: Vec::new(),
                }),
            }
        }
        async fn healthcheck(&self) -> Result<(), ChannelError> {
            Ok(())
        }
    }

    struct ScriptedDialer(StdMutex<Vec<SendOutcome>>, StdMutex<Vec<String>>);

    impl Dialer for ScriptedDialer {
        fn call<'a>(
            &'a self,
            to: &'a str,
            _text: &'a str,
            _language: &'a str,
        ) -> BoxFuture<'a, SendOutcome> {
            self.1.lock().unwrap().push(to.to_owned());
            let next = self
                .0
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(SendOutcome::Answered);
            Box::pin(async move { next })
        }
    }

    fn route(name: &str, sender: Sender) -> Route {
        Route {
            name: name.into(),
            sender,
            rate_per_s: 0.0,
            concurrency: 16,
        }
    }

    /// Tenant `t1`: heat point `hp` feeds complex `rc` with building `b1`: `c1` on life support (voice,
    /// sms; two phones), `c2` preferring e-mail, `c3` who opted out of everything but sms, `c4` with two
    /// apartments.
    async fn hub() -> (AppState, tempfile::TempDir) {
        let (_app, state, _token, dir) = crate::api::test_app(Role::Engineer).await;
        let mut c = state.db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t1", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        drop(c);
        let sites = "external_id,tenant,kind,name,parent,address\nrc,t1,residential_complex,RC,,ул. Речная\nb1,t1,building,B1,rc,\"ул. Речная, д. 1\"\na1,t1,apartment,1,b1,\"ул. Речная, д. 1, кв. 1\"\na2,t1,apartment,2,b1,\n";
        let points = "external_id,tenant,kind,name,site,feeds_sites,feeds_points\nhp,t1,heat_point,HP,,rc,\n";
        let consumers = r#"[
          {"tenant":"t1","external_id":"c1","kind":"resident","name":"Иванов","phones":["+79000000001","+79000000002"],"preferred_channels":["voice","sms"],"life_support":true,"sites":["a1"],"account_number":"100"},
          {"tenant":"t1","external_id":"c2","kind":"resident","name":"Smith","phones":["+79000000003"],"email":"s@example.org","preferred_channels":["email"],"language":"en","sites":["a1"],"account_number":"200"},
          {"tenant":"t1","external_id":"c3","kind":"resident","name":"Петров","phones":["+79000000004"],"opt_out":["voice"],"sites":["a2"]},
          {"tenant":"t1","external_id":"c4","kind":"resident","name":"Сидоров","phones":["+79000000005"],"sites":["a1","a2"]}
        ]"#;
        use crate::import::{Format, ImportKind, ImportOptions, run};
        for (kind, format, text) in [
            (ImportKind::Sites, Format::Csv, sites),
            (ImportKind::Network, Format::Csv, points),
            (ImportKind::Consumers, Format::Json, consumers),
        ] {
            let opts = ImportOptions {
                actor: "test".into(),
                ..Default::default()
            };
            let r = run(&state.db, kind, format, "x", text, &opts)
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
            assert!(r.errors.is_empty(), "{kind:?}: {:?}", r.errors);
        }
        (state, dir)
    }

    fn request(v: serde_json::Value) -> super::super::CampaignRequest {
        serde_json::from_value(v).unwrap()
    }

    async fn statuses(state: &AppState, id: i64) -> Vec<(String, String, Option<String>)> {
        sqlx::query_as(
            "SELECT c.external_id, cc.status, cc.reached_via FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
              WHERE cc.campaign_id = $1 ORDER BY cc.id",
        )
        .bind(id)
        .fetch_all(&state.db.pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn every_contact_is_reached_once_by_its_plan_and_voice_falls_through_without_telephony() {
        let (state, _d) = hub().await;
        let sms = Arc::new(Fake::default());
        let mail = Arc::new(Fake::default());
        let d = Dispatcher::new(
            CampaignsConfig {
                handover_minutes: 0,
                ..CampaignsConfig::default()
            },
            vec![
                (Channel::Sms, route("gw", Sender::Message(sms.clone()))),
                (Channel::Email, route("mail", Sender::Message(mail.clone()))),
            ],
        );
        let c = super::super::launch(
            &state,
            "tester",
            None,
            &request(serde_json::json!({
                "name": "Авария", "tenant": "t1", "audience": {"supply_point": "hp"},
                "template": "emergency_outage", "channels": ["voice", "sms", "email"],
                "variables": {"starts_at": "2025-06-02T07:00:00Z", "expected_end": null, "reason": "порыв"},
                "override_quiet_hours": true, "handover_minutes": 0
            })),
        )
        .await
        .unwrap();
        assert_eq!(c.contacts, 4, "c4 with two apartments is one contact");
        let now = Utc::now();
        let mut rounds = 0;
        while rounds < 10 && d.step(&state, now).await.unwrap().finished.is_empty() {
            rounds += 1;
        }
        let got = statuses(&state, c.id).await;
        assert_eq!(
            got,
            [
                (
                    "c1".to_string(),
                    "sent".to_string(),
                    Some("sms".to_string())
                ),
                (
                    "c2".to_string(),
                    "sent".to_string(),
                    Some("email".to_string())
                ),
                (
                    "c3".to_string(),
                    "sent".to_string(),
                    Some("sms".to_string())
                ),
                (
                    "c4".to_string(),
                    "sent".to_string(),
                    Some("sms".to_string())
                ),
            ]
        );
        let to: Vec<String> = sms
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.to.clone())
            .collect();
        assert_eq!(to, ["+79000000001", "+79000000004", "+79000000005"]);
        let m = mail.sent.lock().unwrap()[0].clone();
        assert_eq!(m.to, "s@example.org");
        assert!(
            m.subject.starts_with("Outage: ул. Речная, д. 1, кв. 1"),
            "{}",
            m.subject
        );
        assert!(
            m.text.contains("02.06.2025 10:00") && m.text.contains("to be announced"),
            "{}",
            m.text
        );
        let (reason,): (Option<String>,) = sqlx::query_as(
            "SELECT detail FROM campaign_attempts WHERE channel = 'voice' ORDER BY id LIMIT 1",
        )
        .fetch_one(&state.db.pool)
        .await
        .unwrap();
        assert_eq!(reason.as_deref(), Some("voice channel not available"));
        let status = campaigns::get(&mut state.db.conn().await.unwrap(), c.id)
            .await
            .unwrap()
            .status;
        assert_eq!(status, "finished");
    }

    #[tokio::test]
    async fn voice_outcomes_retry_then_fall_through_and_quiet_hours_hold_sms() {
        let (state, _d) = hub().await;
        let sms = Arc::new(Fake::default());
        // Popped from the end: busy, then no answer for c1 (its two numbers), then confirmed.
        let dialer = Arc::new(ScriptedDialer(
            StdMutex::new(vec![
                SendOutcome::Confirmed,
                SendOutcome::NoAnswer,
                SendOutcome::Busy,
            ]),
            StdMutex::new(Vec::new()),
        ));
        let d = Dispatcher::new(
            CampaignsConfig {
                handover_minutes: 0,
                ..CampaignsConfig::default()
            },
            vec![
                (Channel::Sms, route("gw", Sender::Message(sms.clone()))),
                (
                    Channel::Voice,
                    route("telephony", Sender::Voice(dialer.clone())),
                ),
            ],
        );
        let c = super::super::launch(
            &state,
            "tester",
            None,
            &request(serde_json::json!({
                "name": "x", "tenant": "t1", "audience": {"sites": ["a1"]},
                "template": "service_restored", "channels": ["voice"],
                "retry": {"max_attempts": 3, "busy_minutes": 5, "no_answer_minutes": 30}
            })),
        )
        .await
        .unwrap();
        // Monday 2025-06-02 12:00 MSK.
        let t0 = DateTime::parse_from_rfc3339("2025-06-02T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        sqlx::query("UPDATE campaign_contacts SET next_attempt_at = 0, hold_until = NULL")
            .execute(&state.db.pool)
            .await
            .unwrap();
        d.step(&state, t0).await.unwrap();
        let calls = dialer.1.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "c1, c2, c4 called: {calls:?}");
        // Whoever was busy is called again after 5 minutes, not before.
        assert_eq!(
            d.step(&state, t0 + chrono::Duration::minutes(4))
                .await
                .unwrap()
                .sent,
            0
        );
        assert_eq!(
            d.step(&state, t0 + chrono::Duration::minutes(5))
                .await
                .unwrap()
                .sent,
            1
        );
        // At night nothing is called; the no-answer retry waits for 08:00.
        let night = DateTime::parse_from_rfc3339("2025-06-02T20:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(d.step(&state, night).await.unwrap().sent, 0);
        let morning = DateTime::parse_from_rfc3339("2025-06-03T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(d.step(&state, morning).await.unwrap().sent >= 1);
        let got = statuses(&state, c.id).await;
        assert!(
            got.iter()
                .all(|(_, s, _)| s == "answered" || s == "confirmed"),
            "{got:?}"
        );
        assert!(sms.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stop_mid_send_settles_each_contact_once() {
        let (state, _d) = hub().await;
        let sms = Arc::new(Fake::default());
        let d = Dispatcher::new(
            CampaignsConfig {
                handover_minutes: 0,
                lease_seconds: 60,
                ..CampaignsConfig::default()
            },
            vec![(Channel::Sms, route("gw", Sender::Message(sms.clone())))],
        );
        let c = super::super::launch(&state, "tester", None, &request(serde_json::json!({
            "name": "x", "tenant": "t1", "audience": {"supply_point": "hp"},
            "template": "service_restored", "channels": ["sms"], "override_quiet_hours": true, "handover_minutes": 0
        }))).await.unwrap();
        let now = Utc::now();
        // A dispatcher claimed two contacts and died: one of them mid-send.
        let mut conn = state.db.conn().await.unwrap();
        let lease = now + chrono::Duration::seconds(60);
        let claimed = campaigns::claim(&mut conn, Channel::Sms, &[c.id], now, lease, 2)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        drop(conn);
        let r = d.step(&state, now).await.unwrap();
        assert_eq!(
            r.sent,
            2,
            "the two others are sent; the leased ones wait: {:?}",
            statuses(&state, c.id).await
        );
        let r = d
            .step(&state, now + chrono::Duration::seconds(61))
            .await
            .unwrap();
        assert_eq!(r.recovered.presumed_sent, 2);
        assert_eq!(r.finished, [c.id]);
        assert_eq!(sms.sent.lock().unwrap().len(), 2, "never sent twice");
        let got = statuses(&state, c.id).await;
        assert!(got.iter().all(|(_, s, _)| s == "sent"), "{got:?}");
    }

    #[tokio::test]
    async fn the_call_list_holds_life_support_until_done_or_handover() {
        let (state, _d) = hub().await;
        let sms = Arc::new(Fake::default());
        let d = Dispatcher::new(
            CampaignsConfig::default(),
            vec![(Channel::Sms, route("gw", Sender::Message(sms.clone())))],
        );
        let c = super::super::launch(
            &state,
            "tester",
            None,
            &request(serde_json::json!({
                "name": "x", "tenant": "t1", "audience": {"supply_point": "hp"},
                "template": "service_restored", "channels": ["sms"], "override_quiet_hours": true,
                "handover_minutes": 10
            })),
        )
        .await
        .unwrap();
        let now = Utc::now();
        d.step(&state, now).await.unwrap();
        let list = campaigns::call_list(&mut state.db.conn().await.unwrap(), c.id)
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].external_id.as_str(), list[0].status.as_str()),
            ("c1", "queued")
        );
        assert_eq!(sms.sent.lock().unwrap().len(), 3, "everyone but c1");
        let (tickets,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM tickets WHERE source = 'campaign' AND category = 'callback'",
        )
        .fetch_one(&state.db.pool)
        .await
        .unwrap();
        assert_eq!(tickets, 1, "a ticket per call-list entry");
        super::super::operator_done(&state, "op", c.id, list[0].contact_id, "reached")
            .await
            .unwrap();
        d.step(&state, now).await.unwrap();
        assert_eq!(sms.sent.lock().unwrap().len(), 4);
        assert!(
            super::super::operator_done(&state, "op", c.id, list[0].contact_id, "maybe")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn missing_variables_and_bad_imports_are_named() {
        let (state, _d) = hub().await;
        let err = super::super::launch(
            &state,
            "t",
            None,
            &request(serde_json::json!({
                "name": "x", "tenant": "t1", "audience": {"supply_point": "hp"},
                "template": "debt", "channels": ["sms"]
            })),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, StorageError::Invalid { field, reason } if field == "templates.en.sms" || field == "templates.ru.sms" && reason.contains("{amount}")),
            "{err:?}"
        );
        let err = super::super::launch(&state, "t", None, &request(serde_json::json!({
            "name": "x", "tenant": "t1", "template": "debt", "channels": ["sms"],
            "variables": {"link": "https://pay.example"},
            "audience": {"imported": "account,phone,amount\n100,+79001112233,1520.50\n999,+79001112234,10\n200,nope,x\n"}
        }))).await.unwrap_err();
        let StorageError::Invalid { field, reason } = err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "audience.imported");
        assert!(
            reason.contains("line 3: account: no consumer of this tenant has account `999`"),
            "{reason}"
        );
        assert!(
            reason.contains("line 4: phone:")
                && reason.contains("line 4: amount: `x` is not a number"),
            "{reason}"
        );
        let c = super::super::launch(&state, "t", None, &request(serde_json::json!({
            "name": "x", "tenant": "t1", "template": "debt", "channels": ["sms"],
            "variables": {"link": "https://pay.example"},
            "audience": {"imported": "account,phone,amount\n100,+79001112233,1520.50\n200,+79001112235,10\n"}
        }))).await.unwrap();
        assert_eq!(c.contacts, 2);
        let sms = Arc::new(Fake::default());
        let d = Dispatcher::new(
            CampaignsConfig::default(),
            vec![(Channel::Sms, route("gw", Sender::Message(sms.clone())))],
        );
        sqlx::query("UPDATE campaigns SET override_quiet_hours = 1")
            .execute(&state.db.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE campaign_contacts SET hold_until = NULL")
            .execute(&state.db.pool)
            .await
            .unwrap();
        d.step(&state, Utc::now()).await.unwrap();
        let sent = sms.sent.lock().unwrap().clone();
        assert_eq!(sent[0].to, "+79001112233");
        assert!(
            sent[0].text.contains("100: 1520.50 руб.")
                && sent[0].text.contains("https://pay.example"),
            "{}",
            sent[0].text
        );
        assert!(
            sent[1].text.contains("account 200 is 10 RUB"),
            "{}",
            sent[1].text
        );
    }
}
