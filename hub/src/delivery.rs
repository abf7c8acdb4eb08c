//! Delivery of staff notifications: the last step of `notify staff` and of alarm escalation. A worker
//! claims `pending` rows of the `notifications` outbox (status `sending` with a lease, so a hub stopped
//! mid-send retries them after a restart), looks the recipient group up in `[staff.GROUP]`, and sends
//! the message to every address of the first kind in the row's channel list that works, through the
//! `[channels.NAME]` of that kind (`sms` -> `http_sms` or `smpp`, `email` -> `smtp`, `telegram` ->
//! `telegram`).
//! Transient failures are retried with backoff; the row ends `delivered` with its time or `failed`
//! with the reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectors::channels::{ChannelConfig, ChannelError, DynChannel, OutboundMessage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::config::Config;
use crate::names::Channel;
use crate::storage::alarms::journal;
use crate::storage::{StorageError, from_ms, parse_json_list, to_ms};
use crate::telephony::outbound::{OutboundCall, Outcome as CallOutcome, Playback};

/// Sends of one notification before it is given up (the first one included).
pub const MAX_ATTEMPTS: i64 = 5;
/// Wait before the first retry; it doubles with each further attempt, up to [`MAX_BACKOFF_SECONDS`].
pub const FIRST_BACKOFF_SECONDS: i64 = 30;
pub const MAX_BACKOFF_SECONDS: i64 = 30 * 60;
/// How long a claimed row belongs to its worker; after that another round takes it again. Longer
/// than the slowest send (every channel times out well before).
pub const LEASE_SECONDS: i64 = 5 * 60;
/// Rows claimed per round, and how many of them are sent at the same time.
const BATCH: i64 = 32;
const PARALLEL: usize = 4;
/// How often the worker looks at the outbox.
const POLL: Duration = Duration::from_secs(1);
/// Longest e-mail subject, in characters.
const MAX_SUBJECT: usize = 80;

/// `[staff.GROUP]`: how to reach one group of staff (`on_duty_engineer`, `chief_engineer`, ...) that
/// alarms escalate to and rules notify.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaffGroup {
    /// Phone numbers for `sms`, international format (`+79001234567`).
    #[serde(default)]
    pub phones: Vec<String>,
    /// E-mail addresses for `email`.
    #[serde(default)]
    pub emails: Vec<String>,
    /// Telegram chat ids for `telegram` (numbers as strings, or `@name`).
    #[serde(default)]
    pub telegram: Vec<String>,
}

impl StaffGroup {
    fn addresses(&self, kind: Channel) -> &[String] {
        match kind {
            Channel::Sms | Channel::Voice => &self.phones,
            Channel::Email => &self.emails,
            Channel::Telegram => &self.telegram,
            Channel::Letter => &[],
        }
    }

    fn is_empty(&self) -> bool {
        self.phones.is_empty() && self.emails.is_empty() && self.telegram.is_empty()
    }
}

/// The kind of notification channel a configured channel serves.
pub fn kind_of(config: &ChannelConfig) -> Channel {
    match config {
        ChannelConfig::Smtp(_) => Channel::Email,
        ChannelConfig::HttpSms(_) | ChannelConfig::Smpp(_) => Channel::Sms,
        ChannelConfig::Telegram(_) => Channel::Telegram,
    }
}

/// Checks `[staff.*]` and `[channels.*]` without connecting anywhere; errors name the table.
pub fn validate(config: &Config) -> Result<(), String> {
    for (name, c) in &config.channels {
        c.validate().map_err(|e| format!("channels.{name}: {e}"))?;
    }
    for (group, g) in &config.staff {
        for phone in &g.phones {
            connectors::channels::http_sms::normalize_phone(phone)
                .map_err(|e| format!("staff.{group}.phones: {e}"))?;
        }
        for chat in &g.telegram {
            connectors::channels::telegram::check_chat_id(chat)
                .map_err(|e| format!("staff.{group}.telegram: {e}"))?;
        }
        if let Some(bad) = g.emails.iter().find(|e| !e.contains('@')) {
            return Err(format!(
                "staff.{group}.emails: `{bad}` is not an e-mail address"
            ));
        }
    }
    Ok(())
}

/// A configured channel, ready to send.
#[derive(Clone)]
pub struct Route {
    /// The user's name: the key of `[channels.NAME]`.
    pub name: String,
    pub kind: Channel,
    pub channel: Arc<dyn DynChannel>,
}

/// How one round left one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        id: i64,
        /// `KIND (CHANNEL NAME)` of the channels that carried it.
        via: String,
    },
    /// Will be tried again at `at`.
    Retry {
        id: i64,
        reason: String,
        at: DateTime<Utc>,
    },
    Failed {
        id: i64,
        reason: String,
    },
}

/// The delivery state of one outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryState {
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub delivered_via: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One claimed row.
#[derive(Debug, Clone)]
struct Claimed {
    id: i64,
    recipient: String,
    channels: Vec<String>,
    message: String,
    attempts: i64,
    /// The row's own addresses (a field worker's contacts), used instead of a `[staff.GROUP]`.
    addresses: Option<StaffGroup>,
    /// The alarm an escalation is about: pressing 1 on the voice call acknowledges it.
    alarm_id: Option<i64>,
}

/// The delivery worker: staff directory and channels, over the outbox in the database.
pub struct Deliverer {
    staff: BTreeMap<String, StaffGroup>,
    routes: Vec<Route>,
}

impl Deliverer {
    /// Builds every `[channels.NAME]`; an error names the table.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        validate(config)?;
        let mut routes = Vec::new();
        for (name, c) in &config.channels {
            let channel = c.build().map_err(|e| format!("channels.{name}: {e}"))?;
            routes.push(Route {
                name: name.clone(),
                kind: kind_of(c),
                channel,
            });
        }
        Ok(Self::new(config.staff.clone(), routes))
    }

    /// Over channels built elsewhere (tests' fakes). Channels of one kind are tried in this order.
    pub fn new(staff: BTreeMap<String, StaffGroup>, routes: Vec<Route>) -> Self {
        Self { staff, routes }
    }

    /// Delivers until `shutdown`; a failed round is logged and the next one tries again.
    pub async fn run(self, state: AppState, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(POLL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            if let Err(e) = self.step(&state, Utc::now()).await {
                tracing::warn!(error = %e, "notification delivery failed; retrying next round");
            }
        }
        // Sessions with gateways (SMPP) end politely: unbind before the process exits.
        for route in &self.routes {
            route.channel.close().await;
        }
    }

    /// One round at `now`: claims the rows that are due, sends them and records how it went.
    /// Public so that tests drive time themselves.
    pub async fn step(
        &self,
        state: &AppState,
        now: DateTime<Utc>,
    ) -> Result<Vec<Outcome>, StorageError> {
        let claimed = {
            let mut conn = state.db.conn().await?;
            claim(&mut conn, now).await?
        };
        let outcomes: Vec<Outcome> = futures::stream::iter(claimed)
            .map(|row| self.deliver(state, row, now))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut conn = state.db.conn().await?;
        for outcome in &outcomes {
            record(&mut conn, outcome, now).await?;
        }
        Ok(outcomes)
    }

    async fn deliver(&self, state: &AppState, row: Claimed, now: DateTime<Utc>) -> Outcome {
        let attempt = row.attempts + 1;
        let (reason, retryable) = match self.try_channels(state, &row).await {
            Ok(via) => {
                tracing::info!(notification = row.id, recipient = %row.recipient, %via, "staff notification delivered");
                return Outcome::Delivered { id: row.id, via };
            }
            Err(failure) => failure,
        };
        if retryable && attempt < MAX_ATTEMPTS {
            let wait = (FIRST_BACKOFF_SECONDS << (attempt - 1).min(16)).min(MAX_BACKOFF_SECONDS);
            let at = now + chrono::Duration::seconds(wait);
            tracing::warn!(notification = row.id, recipient = %row.recipient, attempt, %reason, retry_at = %at, "staff notification not delivered; will retry");
            Outcome::Retry {
                id: row.id,
                reason,
                at,
            }
        } else {
            tracing::warn!(notification = row.id, recipient = %row.recipient, attempt, %reason, "staff notification failed");
            Outcome::Failed { id: row.id, reason }
        }
    }

    /// Tries the row's channels in order. `Ok(via)` once a kind reached at least one address;
    /// otherwise every reason, and whether trying again later could help.
    async fn try_channels(
        &self,
        state: &AppState,
        row: &Claimed,
    ) -> Result<String, (String, bool)> {
        let group = match &row.addresses {
            Some(own) => Some(own),
            None => self.staff.get(&row.recipient),
        };
        let Some(group) = group else {
            return Err((
                format!(
                    "unknown staff group `{}`: add [staff.{}] to the configuration",
                    row.recipient, row.recipient
                ),
                false,
            ));
        };
        if group.is_empty() {
            return Err((
                format!("staff group `{}` has no address", row.recipient),
                false,
            ));
        }
        let mut reasons = Vec::new();
        let mut retryable = false;
        for name in &row.channels {
            let kind = match name.parse::<Channel>() {
                Ok(kind) => kind,
                Err(e) => {
                    reasons.push(format!("{name}: {e}"));
                    continue;
                }
            };
            match kind {
                Channel::Voice => {
                    match voice(state, group, row).await {
                        Ok(via) => return Ok(via),
                        Err((reason, again)) => {
                            retryable |= again;
                            reasons.push(format!("voice: {reason}"));
                        }
                    }
                    continue;
                }
                Channel::Letter => {
                    reasons.push("letter: the hub does not send letters".to_owned());
                    continue;
                }
                Channel::Sms | Channel::Email | Channel::Telegram => {}
            }
            let addresses = group.addresses(kind);
            if addresses.is_empty() {
                reasons.push(format!(
                    "{kind}: staff group `{}` has no {}",
                    row.recipient,
                    match kind {
                        Channel::Sms => "phones",
                        Channel::Email => "emails",
                        _ => "telegram chat ids",
                    }
                ));
                continue;
            }
            let routes: Vec<&Route> = self.routes.iter().filter(|r| r.kind == kind).collect();
            if routes.is_empty() {
                reasons.push(format!("{kind}: no channel of this kind is configured"));
                continue;
            }
            let mut via = Vec::new();
            let mut errors = Vec::new();
            for address in addresses {
                let msg = OutboundMessage {
                    to: address.clone(),
                    subject: subject(&row.message),
                    text: row.message.clone(),
                };
                for route in &routes {
                    match route.channel.send(&msg).await {
                        Ok(_) => {
                            if !via.contains(&route.name) {
                                via.push(route.name.clone());
                            }
                            break;
                        }
                        Err(e) => {
                            retryable |= !e.is_permanent();
                            errors.push(describe(&route.name, &e));
                        }
                    }
                }
            }
            if !via.is_empty() {
                return Ok(format!("{kind} ({})", via.join(", ")));
            }
            reasons.push(format!("{kind}: {}", errors.join("; ")));
        }
        if reasons.is_empty() {
            reasons.push("the notification names no channel".to_owned());
        }
        Err((reasons.join("; "), retryable))
    }
}

/// Calls the group's phones one after the other until somebody answers. On an escalation, the message
/// ends with "press 1 to acknowledge", and the 1 acknowledges the alarm as `phone:NUMBER`.
async fn voice(
    state: &AppState,
    group: &StaffGroup,
    row: &Claimed,
) -> Result<String, (String, bool)> {
    let Some(phone) = &state.telephony else {
        return Err(("the telephony core is not running".to_owned(), false));
    };
    if group.phones.is_empty() {
        return Err((
            format!("staff group `{}` has no phones", row.recipient),
            false,
        ));
    }
    let mut errors = Vec::new();
    let mut retryable = false;
    for number in &group.phones {
        let number = connectors::channels::http_sms::normalize_phone(number)
            .unwrap_or_else(|_| number.clone());
        let mut text = row.message.clone();
        let mut call = OutboundCall::new(
            number.clone(),
            if row.alarm_id.is_some() {
                "escalation"
            } else {
                "staff"
            },
            Playback::Text(String::new()),
        );
        if row.alarm_id.is_some() {
            text.push_str(". Нажмите 1, чтобы подтвердить тревогу.");
            call.confirm_digits = "1".into();
            call.repeat = 3;
        }
        call.play = Playback::Text(text);
        let result = match phone.originate(call).await {
            Ok(r) => r,
            Err(e) => {
                retryable = true;
                errors.push(format!("{number}: {e}"));
                continue;
            }
        };
        match (&result.outcome, row.alarm_id) {
            (CallOutcome::Confirmed { .. }, Some(alarm)) => {
                let by = format!("phone:{number}");
                let comment = format!("pressed 1 on the escalation call {}", result.id);
                match crate::alarms::acknowledge(state, &by, alarm, &comment).await {
                    Ok(_) => tracing::info!(alarm, %by, "alarm acknowledged by phone"),
                    // Acknowledged by somebody else meanwhile: the call still reached them.
                    Err(e) => {
                        tracing::info!(alarm, %by, error = %e, "alarm not acknowledged by phone")
                    }
                }
                return Ok(format!("voice ({number}, acknowledged)"));
            }
            (CallOutcome::Confirmed { .. } | CallOutcome::Answered, _) => {
                return Ok(format!("voice ({number})"));
            }
            (other, _) => {
                retryable = true;
                errors.push(format!("{number}: {}", describe_outcome(other)));
            }
        }
    }
    Err((errors.join("; "), retryable))
}

fn describe_outcome(o: &CallOutcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.get("outcome").and_then(|x| x.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("{o:?}"))
}

fn describe(route: &str, e: &ChannelError) -> String {
    format!("[{route}] {e}")
}

/// The subject of an e-mail: the message's first line, shortened.
fn subject(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    match first.char_indices().nth(MAX_SUBJECT) {
        Some((cut, _)) => format!("{}...", &first[..cut]),
        None => first.to_owned(),
    }
}

/// id, recipient, channels, message, attempts, addresses, alarm_id
type ClaimedRow = (
    i64,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
);

/// Claims the rows due at `now`: pending ones whose retry time has come, and `sending` ones whose
/// lease ran out. The status test is repeated outside the sub-query so that, on PostgreSQL, a row
/// another worker claimed meanwhile is re-checked and skipped.
async fn claim(conn: &mut AnyConnection, now: DateTime<Utc>) -> Result<Vec<Claimed>, StorageError> {
    const DUE: &str = "((status = 'pending' AND (next_attempt_at IS NULL OR next_attempt_at <= $2))
                        OR (status = 'sending' AND lease_until <= $2))";
    let sql = format!(
        "UPDATE notifications SET status = 'sending', lease_until = $1
          WHERE id IN (SELECT id FROM notifications WHERE {DUE} ORDER BY id LIMIT $3) AND {DUE}
          RETURNING id, recipient, channels, message, attempts, addresses, alarm_id"
    );
    let now_ms = to_ms(now);
    let rows: Vec<ClaimedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now_ms + LEASE_SECONDS * 1000)
        .bind(now_ms)
        .bind(BATCH)
        .fetch_all(&mut *conn)
        .await?;
    let mut claimed: Vec<Claimed> = rows
        .into_iter()
        .map(
            |(id, recipient, channels, message, attempts, addresses, alarm_id)| Claimed {
                id,
                recipient,
                channels: parse_json_list(&channels),
                message,
                attempts,
                addresses: addresses.and_then(|a| serde_json::from_str(&a).ok()),
                alarm_id,
            },
        )
        .collect();
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Writes how a round left a row, with a journal entry.
async fn record(
    conn: &mut AnyConnection,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    let (id, status, error, via, next, kind) = match outcome {
        Outcome::Delivered { id, via } => (
            *id,
            "delivered",
            None,
            Some(via.as_str()),
            None,
            "staff_notification_delivered",
        ),
        Outcome::Retry { id, reason, at } => (
            *id,
            "pending",
            Some(reason.as_str()),
            None,
            Some(to_ms(*at)),
            "staff_notification_retry",
        ),
        Outcome::Failed { id, reason } => (
            *id,
            "failed",
            Some(reason.as_str()),
            None,
            None,
            "staff_notification_failed",
        ),
    };
    let delivered_at = via.map(|_| to_ms(now));
    sqlx::query(
        "UPDATE notifications SET status = $1, attempts = attempts + 1, last_error = $2,
                delivered_at = $3, delivered_via = $4, next_attempt_at = $5, lease_until = NULL
          WHERE id = $6 AND status = 'sending'",
    )
    .bind(status)
    .bind(error)
    .bind(delivered_at)
    .bind(via)
    .bind(next)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    journal(
        conn,
        now,
        "delivery",
        kind,
        &serde_json::json!({"notification": id, "status": status, "via": via, "reason": error}),
    )
    .await
}

/// status, attempts, last_error, delivered_at, delivered_via, next_attempt_at
type StateRow = (
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// The delivery state of one row of the outbox.
pub async fn delivery_state(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<DeliveryState, StorageError> {
    let row: Option<StateRow> = sqlx::query_as(
        "SELECT status, attempts, last_error, delivered_at, delivered_via, next_attempt_at
               FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let (status, attempts, last_error, delivered_at, delivered_via, next_attempt_at) =
        row.ok_or_else(|| StorageError::not_found(format!("notification {id}")))?;
    Ok(DeliveryState {
        status,
        attempts,
        last_error,
        delivered_at: delivered_at.map(from_ms),
        delivered_via,
        next_attempt_at: next_attempt_at.map(from_ms),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use connectors::channels::{Channel as SendChannel, Delivery};

    use super::*;
    use crate::names::Role;
    use crate::storage::alarms::{NewNotification, queue_notification};

    /// A channel that answers from a script (then `Ok`) and remembers what it was asked to send.
    #[derive(Default)]
    struct Fake {
        script: Mutex<VecDeque<Result<(), ChannelError>>>,
        always: Mutex<Option<ChannelError>>,
        sent: Mutex<Vec<OutboundMessage>>,
    }

    impl Fake {
        fn failing(e: ChannelError) -> Arc<Fake> {
            let f = Fake::default();
            *f.always.lock().unwrap() = Some(e);
            Arc::new(f)
        }
        fn sent_to(&self) -> Vec<String> {
            self.sent
                .lock()
                .unwrap()
                .iter()
                .map(|m| m.to.clone())
                .collect()
        }
    }

    impl SendChannel for Fake {
        async fn send(&self, msg: &OutboundMessage) -> Result<Delivery, ChannelError> {
            self.sent.lock().unwrap().push(msg.clone());
            let scripted = self.script.lock().unwrap().pop_front();
            let result = match scripted {
                Some(r) => r,
                None => match self.always.lock().unwrap().clone() {
                    Some(e) => Err(e),
                    None => Ok(()),
                },
            };
            result.map(|()| Delivery {
                receipt: "ok".into(),
                ..Delivery::default()
            })
        }
        async fn healthcheck(&self) -> Result<(), ChannelError> {
            Ok(())
        }
    }

    fn timeout() -> ChannelError {
        ChannelError::Timeout {
            gateway: "sms gateway sms.example".into(),
            after: Duration::from_secs(10),
        }
    }

    fn route(name: &str, kind: Channel, fake: &Arc<Fake>) -> Route {
        Route {
            name: name.into(),
            kind,
            channel: fake.clone(),
        }
    }

    fn staff() -> BTreeMap<String, StaffGroup> {
        let mut staff = BTreeMap::new();
        staff.insert(
            "on_duty_engineer".to_owned(),
            StaffGroup {
                phones: vec!["+79000000001".into(), "+79000000002".into()],
                emails: vec!["duty@teplo.example".into()],
                telegram: Vec::new(),
            },
        );
        staff.insert("nobody".to_owned(), StaffGroup::default());
        staff
    }

    async fn world() -> (AppState, tempfile::TempDir) {
        let (_app, state, _token, dir) = crate::api::test_app(Role::Dispatcher).await;
        (state, dir)
    }

    async fn queue(state: &AppState, to: &str, channels: &[&str], now: DateTime<Utc>) -> i64 {
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let mut conn = state.db.conn().await.unwrap();
        queue_notification(
            &mut conn,
            &NewNotification {
                tenant_id: None,
                alarm_id: None,
                recipient: to,
                channels: &channels,
                message: "[critical] Давление упало (alarm 1)\nвторая строка",
                step: Some(1),
            },
            now,
        )
        .await
        .unwrap()
        .id
    }

    async fn state_of(state: &AppState, id: i64) -> DeliveryState {
        delivery_state(&mut state.db.conn().await.unwrap(), id)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_address_of_the_group_gets_it_and_the_time_is_kept() {
        let (state, _dir) = world().await;
        let now = Utc::now();
        let sms = Arc::new(Fake::default());
        let worker = Deliverer::new(staff(), vec![route("gw", Channel::Sms, &sms)]);
        let id = queue(&state, "on_duty_engineer", &["sms", "voice"], now).await;
        let out = worker.step(&state, now).await.unwrap();
        assert_eq!(
            out,
            vec![Outcome::Delivered {
                id,
                via: "sms (gw)".into()
            }]
        );
        assert_eq!(sms.sent_to(), ["+79000000001", "+79000000002"]);
        assert_eq!(
            sms.sent.lock().unwrap()[0].subject,
            "[critical] Давление упало (alarm 1)"
        );
        let s = state_of(&state, id).await;
        assert_eq!(s.status, "delivered");
        assert_eq!(s.attempts, 1);
        assert_eq!(
            s.delivered_at.map(|t| t.timestamp_millis()),
            Some(now.timestamp_millis())
        );
        assert_eq!(s.delivered_via.as_deref(), Some("sms (gw)"));
        assert!(
            worker.step(&state, now).await.unwrap().is_empty(),
            "sent once"
        );
        let listed = crate::storage::alarms::notifications(
            &mut state.db.conn().await.unwrap(),
            None,
            None,
            crate::storage::PageRequest::default(),
        )
        .await
        .unwrap();
        assert_eq!(listed[0].status, "delivered", "the API shows it");
    }

    #[tokio::test]
    async fn a_failing_channel_falls_through_to_the_next_one() {
        let (state, _dir) = world().await;
        let now = Utc::now();
        let sms = Fake::failing(ChannelError::Rejected {
            gateway: "sms gateway x".into(),
            answer: "402 Payment Required: balance is empty".into(),
        });
        let backup = Arc::new(Fake::default());
        let mail = Arc::new(Fake::default());
        // Two gateways of one kind: the second takes what the first refuses.
        let worker = Deliverer::new(
            staff(),
            vec![
                route("main", Channel::Sms, &sms),
                route("backup", Channel::Sms, &backup),
                route("mail", Channel::Email, &mail),
            ],
        );
        let id = queue(&state, "on_duty_engineer", &["sms", "email"], now).await;
        worker.step(&state, now).await.unwrap();
        assert_eq!(
            state_of(&state, id).await.delivered_via.as_deref(),
            Some("sms (backup)")
        );
        assert!(mail.sent_to().is_empty());

        // No SMS gateway works at all: e-mail carries it.
        let worker = Deliverer::new(
            staff(),
            vec![
                route("main", Channel::Sms, &sms),
                route("mail", Channel::Email, &mail),
            ],
        );
        let id = queue(&state, "on_duty_engineer", &["voice", "sms", "email"], now).await;
        let out = worker.step(&state, now).await.unwrap();
        assert_eq!(
            out,
            vec![Outcome::Delivered {
                id,
                via: "email (mail)".into()
            }]
        );
        assert_eq!(mail.sent_to(), ["duty@teplo.example"]);
    }

    #[tokio::test]
    async fn transient_failures_retry_with_backoff_then_fail_with_the_reason() {
        let (state, _dir) = world().await;
        let t0 = Utc::now();
        let sms = Fake::failing(timeout());
        let worker = Deliverer::new(staff(), vec![route("gw", Channel::Sms, &sms)]);
        let id = queue(&state, "on_duty_engineer", &["sms"], t0).await;

        let out = worker.step(&state, t0).await.unwrap();
        let Outcome::Retry { at, ref reason, .. } = out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(at, t0 + chrono::Duration::seconds(FIRST_BACKOFF_SECONDS));
        assert!(reason.contains("no answer within 10 s"), "{reason}");
        let s = state_of(&state, id).await;
        assert_eq!((s.status.as_str(), s.attempts), ("pending", 1));
        assert!(
            worker
                .step(
                    &state,
                    t0 + chrono::Duration::seconds(FIRST_BACKOFF_SECONDS - 1)
                )
                .await
                .unwrap()
                .is_empty(),
            "not before its time"
        );

        // The waits double: 30 s, 60 s, 120 s, 240 s; the fifth attempt is the last.
        let mut now = t0;
        for attempt in 2..=MAX_ATTEMPTS {
            now += chrono::Duration::seconds(FIRST_BACKOFF_SECONDS << (attempt - 2));
            let out = worker.step(&state, now).await.unwrap();
            assert_eq!(out.len(), 1, "attempt {attempt}: {out:?}");
        }
        let s = state_of(&state, id).await;
        assert_eq!((s.status.as_str(), s.attempts), ("failed", MAX_ATTEMPTS));
        assert_eq!(
            s.last_error.as_deref(),
            Some(
                "sms: [gw] sms gateway sms.example: no answer within 10 s; [gw] sms gateway sms.example: no answer within 10 s"
            )
        );
        assert_eq!(sms.sent_to().len(), 2 * MAX_ATTEMPTS as usize);
        assert!(
            worker
                .step(&state, now + chrono::Duration::days(1))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn what_cannot_be_delivered_fails_at_once_with_why() {
        let (state, _dir) = world().await;
        let now = Utc::now();
        let sms = Arc::new(Fake::default());
        let worker = Deliverer::new(staff(), vec![route("gw", Channel::Sms, &sms)]);
        let cases = [
            (
                "night_shift",
                vec!["sms"],
                "unknown staff group `night_shift`: add [staff.night_shift] to the configuration",
            ),
            ("nobody", vec!["sms"], "staff group `nobody` has no address"),
            (
                "on_duty_engineer",
                vec!["voice"],
                "voice: the telephony core is not running",
            ),
            (
                "on_duty_engineer",
                vec!["telegram"],
                "telegram: staff group `on_duty_engineer` has no telegram chat ids",
            ),
            (
                "on_duty_engineer",
                vec!["email"],
                "email: no channel of this kind is configured",
            ),
        ];
        let mut ids = Vec::new();
        for (to, channels, _) in &cases {
            ids.push(queue(&state, to, channels, now).await);
        }
        worker.step(&state, now).await.unwrap();
        for ((to, channels, reason), id) in cases.iter().zip(ids) {
            let s = state_of(&state, id).await;
            assert_eq!(s.status, "failed", "{to} {channels:?}");
            assert_eq!(s.last_error.as_deref(), Some(*reason), "{to} {channels:?}");
            assert_eq!(s.attempts, 1);
        }
        assert!(sms.sent_to().is_empty());
    }

    #[tokio::test]
    async fn a_restarted_worker_resumes_pending_and_abandoned_rows() {
        let (state, _dir) = world().await;
        let now = Utc::now();
        let pending = queue(&state, "on_duty_engineer", &["email"], now).await;
        let abandoned = queue(&state, "on_duty_engineer", &["email"], now).await;
        // A worker claimed the second row and died before recording anything.
        {
            let mut conn = state.db.conn().await.unwrap();
            sqlx::query(
                "UPDATE notifications SET status = 'sending', lease_until = $1 WHERE id = $2",
            )
            .bind(to_ms(now) + LEASE_SECONDS * 1000)
            .bind(abandoned)
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        let mail = Arc::new(Fake::default());
        let worker = Deliverer::new(staff(), vec![route("mail", Channel::Email, &mail)]);
        let out = worker.step(&state, now).await.unwrap();
        assert_eq!(out.len(), 1, "the leased row waits for its lease: {out:?}");
        assert_eq!(state_of(&state, pending).await.status, "delivered");
        assert_eq!(state_of(&state, abandoned).await.status, "sending");
        let later = now + chrono::Duration::seconds(LEASE_SECONDS);
        let out = worker.step(&state, later).await.unwrap();
        assert_eq!(
            out,
            vec![Outcome::Delivered {
                id: abandoned,
                via: "email (mail)".into()
            }]
        );
        assert_eq!(mail.sent_to().len(), 2);
    }

    #[test]
    fn staff_and_channels_are_checked_with_their_table() {
        let text =
            "[staff.on_duty_engineer]\nphones = [\"+7 900 000-00-01\"]\ntelegram = [\"oops\"]\n";
        let c = Config::parse(std::path::Path::new("hub.toml"), text).unwrap();
        let e = validate(&c).unwrap_err();
        assert!(
            e.starts_with("staff.on_duty_engineer.telegram: bad address `oops`"),
            "{e}"
        );
        let text = "[channels.sms]\ntype = \"http_sms\"\nurl = \"nope\"\n";
        let c = Config::parse(std::path::Path::new("hub.toml"), text).unwrap();
        let e = validate(&c).unwrap_err();
        assert!(e.starts_with("channels.sms: url:"), "{e}");
        assert_eq!(kind_of(&c.channels["sms"]), Channel::Sms);
    }
}
