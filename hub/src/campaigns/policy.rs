//! The pure rules of campaign dispatch, with no I/O so they are unit-tested alone: which channels a
//! contact is tried on and in what order, what an outcome of a send does to the contact's state
//! (the state machine), when SMS and calls are allowed (quiet hours in the tenant's time zone), and how
//! long a campaign will take (for the deadline flag).

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone as _, Utc, Weekday};
use serde::{Deserialize, Serialize};

use crate::names::Channel;

/// How a campaign retries: attempts per channel and the wait after each kind of outcome.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts on one channel before falling through to the next.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Minutes before calling again after a busy line.
    #[serde(default = "default_busy_minutes")]
    pub busy_minutes: u32,
    /// Minutes before calling again when nobody answered.
    #[serde(default = "default_no_answer_minutes")]
    pub no_answer_minutes: u32,
    /// Minutes before calling again after an answering machine took the call.
    #[serde(default = "default_answering_machine_minutes")]
    pub answering_machine_minutes: u32,
    /// Minutes before trying again after a gateway failed (timeout, unavailable).
    #[serde(default = "default_failed_minutes")]
    pub failed_minutes: u32,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_busy_minutes() -> u32 {
    5
}
fn default_no_answer_minutes() -> u32 {
    30
}
fn default_answering_machine_minutes() -> u32 {
    60
}
fn default_failed_minutes() -> u32 {
    2
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            busy_minutes: default_busy_minutes(),
            no_answer_minutes: default_no_answer_minutes(),
            answering_machine_minutes: default_answering_machine_minutes(),
            failed_minutes: default_failed_minutes(),
        }
    }
}

/// What one send came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The gateway took the message (SMS, e-mail, messenger).
    Sent {
        receipt: String,
    },
    /// The gateway reported it delivered to the handset or mailbox.
    Delivered,
    /// A person answered the call.
    Answered,
    /// A person answered and confirmed (pressed 1).
    Confirmed,
    Busy,
    NoAnswer,
    AnsweringMachine,
    /// The gateway failed; `permanent` when trying again on this channel cannot help (bad address,
    /// refusal, no such channel).
    Failed {
        reason: String,
        permanent: bool,
    },
}

impl SendOutcome {
    /// The word stored in `campaign_attempts.outcome`.
    pub fn name(&self) -> &'static str {
        match self {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Delivered => "delivered",
            SendOutcome::Answered => "answered",
            SendOutcome::Confirmed => "confirmed",
            SendOutcome::Busy => "busy",
            SendOutcome::NoAnswer => "no_answer",
            SendOutcome::AnsweringMachine => "answering_machine",
            SendOutcome::Failed { .. } => "failed",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            SendOutcome::Sent { receipt } => receipt.clone(),
            SendOutcome::Failed { reason, .. } => reason.clone(),
            _ => String::new(),
        }
    }
}

/// Where a contact stands between sends: its place in the plan and the attempts on that channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub plan: Vec<Channel>,
    pub step: usize,
    pub channel_attempts: u32,
}

/// The state a send leaves a contact in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Terminal: reached (`sent`, `delivered`, `answered`, `confirmed`) by this channel.
    Reached { status: &'static str, via: Channel },
    /// Queued again: the same or the next channel at `at`.
    Queued {
        step: usize,
        channel: Channel,
        channel_attempts: u32,
        at: DateTime<Utc>,
        reason: String,
    },
    /// Terminal: no channel reached the contact; `reason` says what happened on each.
    Failed { reason: String },
}

/// The state machine: what an outcome of the current channel does.
///
/// Reached outcomes end the contact. Busy, no answer, an answering machine and a gateway's transient
/// failure are retried on the same channel after the policy's wait, up to `max_attempts`; then, and
/// at once after a permanent failure, the contact falls through to the next channel of its plan, or
/// fails when there is none.
pub fn next(
    pos: &Position,
    outcome: &SendOutcome,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
) -> Next {
    let Some(&channel) = pos.plan.get(pos.step) else {
        return Next::Failed {
            reason: "no channel left".into(),
        };
    };
    let (wait_minutes, permanent) = match outcome {
        SendOutcome::Sent { .. } => {
            return Next::Reached {
                status: "sent",
                via: channel,
            };
        }
        SendOutcome::Delivered => {
            return Next::Reached {
                status: "delivered",
                via: channel,
            };
        }
        SendOutcome::Answered => {
            return Next::Reached {
                status: "answered",
                via: channel,
            };
        }
        SendOutcome::Confirmed => {
            return Next::Reached {
                status: "confirmed",
                via: channel,
            };
        }
        SendOutcome::Busy => (policy.busy_minutes, false),
        SendOutcome::NoAnswer => (policy.no_answer_minutes, false),
        SendOutcome::AnsweringMachine => (policy.answering_machine_minutes, false),
        SendOutcome::Failed { permanent, .. } => (policy.failed_minutes, *permanent),
    };
    let reason = match outcome {
        SendOutcome::Failed { reason, .. } => format!("{channel}: {reason}"),
        other => format!("{channel}: {}", other.name().replace('_', " ")),
    };
    let attempts = pos.channel_attempts + 1;
    if !permanent && attempts < policy.max_attempts.max(1) {
        return Next::Queued {
            step: pos.step,
            channel,
            channel_attempts: attempts,
            at: now + Duration::minutes(i64::from(wait_minutes)),
            reason,
        };
    }
    fall_through(pos, now, reason)
}

/// The next channel of the plan at once, or failed with `reason`.
pub fn fall_through(pos: &Position, now: DateTime<Utc>, reason: String) -> Next {
    match pos.plan.get(pos.step + 1) {
        Some(&channel) => Next::Queued {
            step: pos.step + 1,
            channel,
            channel_attempts: 0,
            at: now,
            reason,
        },
        None => Next::Failed { reason },
    }
}

/// Channels a campaign can send by (letters are the postal list, not a channel of the dispatcher).
pub fn sendable(c: Channel) -> bool {
    !matches!(c, Channel::Letter)
}

/// The order a contact is tried in: the consumer's preferred channels that the campaign uses, then
/// the campaign's order; without the channels the consumer opted out of or has no address for.
pub fn plan(
    preferred: &[Channel],
    campaign: &[Channel],
    opt_out: &[Channel],
    has_address: impl Fn(Channel) -> bool,
) -> Vec<Channel> {
    let mut out: Vec<Channel> = Vec::with_capacity(campaign.len());
    for &c in preferred
        .iter()
        .filter(|c| campaign.contains(c))
        .chain(campaign)
    {
        if sendable(c) && !out.contains(&c) && !opt_out.contains(&c) && has_address(c) {
            out.push(c);
        }
    }
    out
}

/// When calls and SMS may be sent, in the tenant's local time: `HH:MM-HH:MM` on weekdays and on
/// weekends. E-mail and messengers are not limited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Hours when calls and SMS are allowed Monday to Friday, local time.
    #[serde(default = "default_weekdays")]
    pub weekdays: String,
    /// Hours when calls and SMS are allowed on Saturday and Sunday, local time.
    #[serde(default = "default_weekends")]
    pub weekends: String,
}

fn default_weekdays() -> String {
    "08:00-22:00".into()
}
fn default_weekends() -> String {
    "09:00-20:00".into()
}

impl Default for QuietHours {
    fn default() -> Self {
        Self {
            weekdays: default_weekdays(),
            weekends: default_weekends(),
        }
    }
}

/// A parsed allowed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

fn window(s: &str) -> Result<Window, String> {
    let bad = || format!("`{s}`: expected HH:MM-HH:MM such as 08:00-22:00");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let from = NaiveTime::parse_from_str(a.trim(), "%H:%M").map_err(|_| bad())?;
    let to = NaiveTime::parse_from_str(b.trim(), "%H:%M").map_err(|_| bad())?;
    if from >= to {
        return Err(format!("`{s}`: the window must end after it starts"));
    }
    Ok(Window { from, to })
}

impl QuietHours {
    /// Checks both windows; the error names the key.
    pub fn parse(&self) -> Result<(Window, Window), String> {
        Ok((
            window(&self.weekdays).map_err(|e| format!("weekdays: {e}"))?,
            window(&self.weekends).map_err(|e| format!("weekends: {e}"))?,
        ))
    }
}

/// Whether the channel is limited by quiet hours at all.
pub fn quiet_limited(c: Channel) -> bool {
    matches!(c, Channel::Voice | Channel::Sms)
}

/// Whether `now` lies in the allowed window of its local day.
pub fn allowed_at(windows: (Window, Window), tz: chrono_tz::Tz, now: DateTime<Utc>) -> bool {
    let local = now.with_timezone(&tz);
    let w = if matches!(local.weekday(), Weekday::Sat | Weekday::Sun) {
        windows.1
    } else {
        windows.0
    };
    let t = local.time();
    t >= w.from && t < w.to
}

/// The first moment at or after `now` when the window is open.
pub fn next_allowed(
    windows: (Window, Window),
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    if allowed_at(windows, tz, now) {
        return now;
    }
    let local = now.with_timezone(&tz);
    for day in 0..8 {
        let date = local.date_naive() + Duration::days(day);
        let w = if matches!(date.weekday(), Weekday::Sat | Weekday::Sun) {
            windows.1
        } else {
            windows.0
        };
        if let Some(start) = tz.from_local_datetime(&date.and_time(w.from)).earliest() {
            let start = start.with_timezone(&Utc);
            if start >= now {
                return start;
            }
        }
    }
    now
}

/// When sending `count` messages at `rate` per second, starting at `start`, ends; quiet-limited
/// channels only send inside the windows. An estimate for the deadline flag (it ignores retries).
pub fn estimate_finish(
    start: DateTime<Utc>,
    count: u64,
    rate_per_s: f64,
    limited: Option<((Window, Window), chrono_tz::Tz)>,
) -> DateTime<Utc> {
    let rate = if rate_per_s > 0.0 { rate_per_s } else { 1000.0 };
    let mut left = count as f64 / rate;
    let mut t = start;
    let Some((windows, tz)) = limited else {
        return start + Duration::milliseconds((left * 1000.0) as i64);
    };
    for _ in 0..3660 {
        t = next_allowed(windows, tz, t);
        let local = t.with_timezone(&tz);
        let w = if matches!(local.weekday(), Weekday::Sat | Weekday::Sun) {
            windows.1
        } else {
            windows.0
        };
        let end = tz
            .from_local_datetime(&local.date_naive().and_time(w.to))
            .earliest()
            .map(|e| e.with_timezone(&Utc))
            .unwrap_or(t + Duration::hours(1));
        let open = (end - t).num_milliseconds().max(1) as f64 / 1000.0;
        if left <= open {
            return t + Duration::milliseconds((left * 1000.0) as i64);
        }
        left -= open;
        t = end;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pos(plan: &[Channel], step: usize, attempts: u32) -> Position {
        Position {
            plan: plan.to_vec(),
            step,
            channel_attempts: attempts,
        }
    }

    #[test]
    fn reached_outcomes_end_the_contact() {
        let now = at("2025-06-02T10:00:00Z");
        let p = pos(&[Channel::Voice, Channel::Sms], 0, 0);
        let policy = RetryPolicy::default();
        assert_eq!(
            next(&p, &SendOutcome::Confirmed, &policy, now),
            Next::Reached {
                status: "confirmed",
                via: Channel::Voice
            }
        );
        assert_eq!(
            next(&p, &SendOutcome::Answered, &policy, now),
            Next::Reached {
                status: "answered",
                via: Channel::Voice
            }
        );
        assert_eq!(
            next(
                &pos(&[Channel::Sms], 0, 2),
                &SendOutcome::Sent {
                    receipt: "ok".into()
                },
                &policy,
                now
            ),
            Next::Reached {
                status: "sent",
                via: Channel::Sms
            }
        );
    }

    #[test]
    fn no_answer_is_retried_by_policy_then_falls_through() {
        let now = at("2025-06-02T10:00:00Z");
        let policy = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let p = pos(&[Channel::Voice, Channel::Sms], 0, 0);
        assert_eq!(
            next(&p, &SendOutcome::Busy, &policy, now),
            Next::Queued {
                step: 0,
                channel: Channel::Voice,
                channel_attempts: 1,
                at: now + Duration::minutes(5),
                reason: "voice: busy".into()
            }
        );
        let Next::Queued { at: later, .. } = next(&p, &SendOutcome::AnsweringMachine, &policy, now)
        else {
            panic!()
        };
        assert_eq!(later, now + Duration::minutes(60));
        // The second no answer is the last on voice: SMS at once.
        assert_eq!(
            next(
                &pos(&[Channel::Voice, Channel::Sms], 0, 1),
                &SendOutcome::NoAnswer,
                &policy,
                now
            ),
            Next::Queued {
                step: 1,
                channel: Channel::Sms,
                channel_attempts: 0,
                at: now,
                reason: "voice: no answer".into()
            }
        );
        // A permanent failure on the last channel fails the contact with the reason.
        assert_eq!(
            next(
                &pos(&[Channel::Voice, Channel::Sms], 1, 0),
                &SendOutcome::Failed {
                    reason: "bad address `1`".into(),
                    permanent: true
                },
                &policy,
                now
            ),
            Next::Failed {
                reason: "sms: bad address `1`".into()
            }
        );
    }

    #[test]
    fn the_plan_puts_preferences_first_and_skips_what_cannot_work() {
        let campaign = [Channel::Sms, Channel::Email, Channel::Voice];
        let all = |_: Channel| true;
        assert_eq!(
            plan(&[Channel::Voice, Channel::Telegram], &campaign, &[], all),
            [Channel::Voice, Channel::Sms, Channel::Email]
        );
        assert_eq!(
            plan(&[], &campaign, &[Channel::Sms], |c| c != Channel::Email),
            [Channel::Voice]
        );
        assert!(plan(&[], &[Channel::Letter], &[], all).is_empty());
    }

    #[test]
    fn quiet_hours_follow_the_tenants_zone_and_weekends() {
        let w = QuietHours::default().parse().unwrap();
        let msk = chrono_tz::Europe::Moscow;
        // Monday 2025-06-02: 07:59 MSK is 04:59Z (closed), 08:00 MSK open, 22:00 MSK closed.
        assert!(!allowed_at(w, msk, at("2025-06-02T04:59:00Z")));
        assert!(allowed_at(w, msk, at("2025-06-02T05:00:00Z")));
        assert!(!allowed_at(w, msk, at("2025-06-02T19:00:00Z")));
        // The same instant is 10:00 in Yekaterinburg (+5): open there.
        assert!(allowed_at(
            w,
            chrono_tz::Asia::Yekaterinburg,
            at("2025-06-02T04:59:00Z")
        ));
        // Saturday 2025-06-07: 08:30 MSK closed (weekends from 09:00), 19:59 open, 20:00 closed.
        assert!(!allowed_at(w, msk, at("2025-06-07T05:30:00Z")));
        assert!(allowed_at(w, msk, at("2025-06-07T16:59:00Z")));
        assert!(!allowed_at(w, msk, at("2025-06-07T17:00:00Z")));
        // Friday 23:00 MSK -> Saturday 09:00 MSK.
        assert_eq!(
            next_allowed(w, msk, at("2025-06-06T20:00:00Z")),
            at("2025-06-07T06:00:00Z")
        );
        assert!(
            QuietHours {
                weekdays: "22:00-08:00".into(),
                ..QuietHours::default()
            }
            .parse()
            .is_err()
        );
        assert!(
            QuietHours {
                weekends: "9-20".into(),
                ..QuietHours::default()
            }
            .parse()
            .is_err()
        );
    }

    #[test]
    fn the_estimate_counts_only_open_hours() {
        let w = QuietHours::default().parse().unwrap();
        let msk = chrono_tz::Europe::Moscow;
        let start = at("2025-06-02T18:00:00Z"); // Monday 21:00 MSK: one hour left today
        // 2 hours of SMS at 1/s: one hour on Monday, one from Tuesday 08:00 MSK.
        assert_eq!(
            estimate_finish(start, 7200, 1.0, Some((w, msk))),
            at("2025-06-03T06:00:00Z")
        );
        assert_eq!(
            estimate_finish(start, 7200, 1.0, None),
            at("2025-06-02T20:00:00Z")
        );
    }
}
