//! Call queues and operators as a pure state machine: the telephony core feeds it what happened
//! (a caller joined, an operator answered, a caller hung up, time passed) and carries out what it
//! decides (`Decision`s: ring this operator, announce the position, create a callback). No sockets,
//! no database, no clock of its own: every input carries `now`, so it is tested on explicit
//! `Instant`s and runs inside the core's task like the IVR.
//!
//! Who is served next: the entry waiting longest, across the queues an available operator belongs to.
//! A callback (for a caller who gave up) keeps the place in line its caller had, so callbacks neither
//! jump ahead of people on the line nor flood the operators: each waits for a free operator like a
//! caller does, and is then dialled operator first, resident second.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The core's key of a call (one leg).
pub type CallId = u64;

/// `[telephony.queues.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// External id of the tenant whose calls the queue takes; empty: any.
    #[serde(default)]
    pub tenant: String,
    /// How the operator is chosen among the free ones.
    #[serde(default)]
    pub strategy: Strategy,
    /// SIP account names of the operators who answer this queue.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Seconds an operator's phone rings before the call goes to the next one.
    #[serde(default = "default_ring_s")]
    pub ring_timeout_s: u64,
    /// Seconds after a call during which the operator gets no new call (notes, the ticket).
    #[serde(default = "default_wrap_up_s")]
    pub wrap_up_s: u64,
    /// Pause an operator whose phone rang out unanswered (reason `no answer`) until they resume.
    #[serde(default = "default_true")]
    pub pause_on_no_answer: bool,
    /// Seconds between announcements of the position and expected wait; 0: none.
    #[serde(default = "default_announce_s")]
    pub announce_every_s: u64,
    /// Seconds a caller may wait before `on_max_wait`; 0: no limit.
    #[serde(default = "default_max_wait_s")]
    pub max_wait_s: u64,
    /// What happens at the maximum wait: `callback` (the caller is told they will be called back,
    /// and is) or `voicemail`.
    #[serde(default)]
    pub on_max_wait: MaxWaitAction,
    /// Seconds between attempts to reach a resident on a callback.
    #[serde(default = "default_callback_retry_s")]
    pub callback_retry_s: u64,
    /// Attempts to reach a resident on a callback before the ticket records that nobody answered.
    #[serde(default = "default_callback_attempts")]
    pub callback_attempts: u32,
}

fn default_ring_s() -> u64 {
    20
}
fn default_wrap_up_s() -> u64 {
    15
}
fn default_true() -> bool {
    true
}
fn default_announce_s() -> u64 {
    30
}
fn default_max_wait_s() -> u64 {
    240
}
fn default_callback_retry_s() -> u64 {
    120
}
fn default_callback_attempts() -> u32 {
    3
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            tenant: String::new(),
            strategy: Strategy::default(),
            operators: Vec::new(),
            ring_timeout_s: default_ring_s(),
            wrap_up_s: default_wrap_up_s(),
            pause_on_no_answer: default_true(),
            announce_every_s: default_announce_s(),
            max_wait_s: default_max_wait_s(),
            on_max_wait: MaxWaitAction::default(),
            callback_retry_s: default_callback_retry_s(),
            callback_attempts: default_callback_attempts(),
        }
    }
}

/// How a free operator is chosen.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The one free for the longest time.
    #[default]
    LongestIdle,
    /// Each in turn, in the order of `operators`.
    RoundRobin,
    /// Every free operator at once; the first to answer takes the call.
    RingAll,
    /// The one who answered the fewest calls since the hub started (ties: longest idle).
    FewestCalls,
}

/// What a caller who waited too long gets.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MaxWaitAction {
    #[default]
    Callback,
    Voicemail,
}

/// An operator's state, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OperatorState {
    LoggedOut,
    Available,
    Ringing { entry: u64 },
    OnCall { entry: u64 },
    WrapUp,
    Paused { reason: String },
}

/// Who waits in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiter {
    /// A caller on the line.
    Caller { call: CallId },
    /// A caller who gave up, to be called back (ticket `ticket`).
    Callback { ticket: i64, attempt: u32 },
}

/// What the core must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Ring the operator's phone for a caller on the line.
    Ring { operator: String, call: CallId },
    /// Stop ringing the operator for that caller (someone else answered, the caller left, the ring
    /// timed out).
    CancelRing { operator: String, call: CallId },
    /// Bridge the caller with the operator who answered.
    Bridge {
        operator: String,
        call: CallId,
        waited: Duration,
    },
    /// Tell the caller their position and the expected wait.
    Announce {
        call: CallId,
        position: usize,
        expected_wait: Duration,
    },
    /// The caller waited `max_wait_s`: take them out of the queue with this action.
    MaxWait { call: CallId, action: MaxWaitAction },
    /// A caller hung up while waiting: create a callback ticket, then `add_callback` with this `since`
    /// (their place in line).
    CreateCallback {
        queue: String,
        caller: String,
        since: Instant,
        waited: Duration,
    },
    /// Call the operator for a callback; when they answer (`answered`), dial the resident.
    DialCallback {
        operator: String,
        ticket: i64,
        number: String,
        attempt: u32,
    },
    /// Stop calling the operator for a callback (the ring timed out).
    CancelCallback { operator: String, ticket: i64 },
    /// Every attempt at a callback failed: the ticket records it.
    CallbackExhausted { ticket: i64, attempts: u32 },
    /// An operator's state changed (for the API, the log and the audit).
    OperatorChanged {
        operator: String,
        state: OperatorState,
    },
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("no operator `{0}` in any queue")]
    UnknownOperator(String),
    #[error("no queue `{0}`")]
    UnknownQueue(String),
    #[error("operator `{0}` is on a call: log out after it ends")]
    Busy(String),
}

#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    waiter: Waiter,
    /// The calling number (for callbacks: the number to call back).
    number: String,
    /// Place in line: when the caller first joined.
    since: Instant,
    /// Not offered to operators before then (a callback's next attempt).
    not_before: Option<Instant>,
    /// Operators whose phones ring for it now, and until when.
    ringing: Vec<String>,
    ring_until: Option<Instant>,
    next_announce: Option<Instant>,
    max_wait_at: Option<Instant>,
}

#[derive(Debug)]
struct Queue {
    config: QueueConfig,
    entries: VecDeque<Entry>,
    /// Round robin: the index in `operators` to start from next time.
    cursor: usize,
}

#[derive(Debug)]
struct Operator {
    state: OperatorState,
    /// Free since (longest idle); wrap-up end.
    idle_since: Instant,
    wrap_up_until: Option<Instant>,
    answered: u64,
}

/// Every queue and operator of the hub.
#[derive(Debug)]
pub struct Queues {
    queues: BTreeMap<String, Queue>,
    operators: BTreeMap<String, Operator>,
    next_entry: u64,
    /// Mean time an operator spends per call (talk plus wrap-up), for the expected wait.
    handle_time: Duration,
}

/// The first guess of the time an operator spends per call, before any call was measured.
const INITIAL_HANDLE_TIME: Duration = Duration::from_secs(180);

impl Queues {
    /// Queues from the configuration; operators start logged out.
    pub fn new(config: &BTreeMap<String, QueueConfig>, now: Instant) -> Self {
        let mut operators = BTreeMap::new();
        for q in config.values() {
            for op in &q.operators {
                operators.entry(op.clone()).or_insert(Operator {
                    state: OperatorState::LoggedOut,
                    idle_since: now,
                    wrap_up_until: None,
                    answered: 0,
                });
            }
        }
        Queues {
            queues: config
                .iter()
                .map(|(name, c)| {
                    (
                        name.clone(),
                        Queue {
                            config: c.clone(),
                            entries: VecDeque::new(),
                            cursor: 0,
                        },
                    )
                })
                .collect(),
            operators,
            next_entry: 1,
            handle_time: INITIAL_HANDLE_TIME,
        }
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
    }

    /// Operators and their states.
    pub fn operators(&self) -> Vec<(String, OperatorState)> {
        self.operators
            .iter()
            .map(|(n, o)| (n.clone(), o.state.clone()))
            .collect()
    }

    /// Waiting entries per queue, in order: (number, waiting since, a callback).
    pub fn waiting(&self, queue: &str) -> Vec<(String, Instant, bool)> {
        self.queues
            .get(queue)
            .map(|q| {
                q.entries
                    .iter()
                    .map(|e| {
                        (
                            e.number.clone(),
                            e.since,
                            matches!(e.waiter, Waiter::Callback { .. }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- operators -----

    pub fn login(&mut self, op: &str, now: Instant) -> Result<Vec<Decision>, QueueError> {
        let o = self.operator(op)?;
        if o.state == OperatorState::LoggedOut {
            o.idle_since = now;
        }
        let mut out = Vec::new();
        if matches!(
            o.state,
            OperatorState::LoggedOut | OperatorState::Paused { .. }
        ) {
            self.set(op, OperatorState::Available, &mut out);
        }
        self.assign(now, &mut out);
        Ok(out)
    }

    pub fn logout(&mut self, op: &str, now: Instant) -> Result<Vec<Decision>, QueueError> {
        let state = self.operator(op)?.state.clone();
        let mut out = Vec::new();
        match state {
            OperatorState::OnCall { .. } => return Err(QueueError::Busy(op.into())),
            OperatorState::Ringing { entry } => self.unring(entry, op, &mut out),
            _ => {}
        }
        self.set(op, OperatorState::LoggedOut, &mut out);
        self.assign(now, &mut out);
        Ok(out)
    }

    pub fn pause(
        &mut self,
        op: &str,
        reason: &str,
        now: Instant,
    ) -> Result<Vec<Decision>, QueueError> {
        let state = self.operator(op)?.state.clone();
        let mut out = Vec::new();
        match state {
            OperatorState::OnCall { .. } => return Err(QueueError::Busy(op.into())),
            OperatorState::Ringing { entry } => self.unring(entry, op, &mut out),
            _ => {}
        }
        let reason = if reason.trim().is_empty() {
            "paused".to_owned()
        } else {
            reason.trim().to_owned()
        };
        self.set(op, OperatorState::Paused { reason }, &mut out);
        self.assign(now, &mut out);
        Ok(out)
    }

    /// Back from a pause (or from wrap-up early).
    pub fn resume(&mut self, op: &str, now: Instant) -> Result<Vec<Decision>, QueueError> {
        let o = self.operator(op)?;
        let mut out = Vec::new();
        if matches!(
            o.state,
            OperatorState::Paused { .. } | OperatorState::WrapUp
        ) {
            o.idle_since = now;
            o.wrap_up_until = None;
            self.set(op, OperatorState::Available, &mut out);
        }
        self.assign(now, &mut out);
        Ok(out)
    }

    // ----- callers -----

    /// A caller joins a queue.
    pub fn join(
        &mut self,
        queue: &str,
        call: CallId,
        number: &str,
        now: Instant,
    ) -> Result<Vec<Decision>, QueueError> {
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::UnknownQueue(queue.into()))?;
        let c = &q.config;
        let entry = Entry {
            id: self.next_entry,
            waiter: Waiter::Caller { call },
            number: number.to_owned(),
            since: now,
            not_before: None,
            ringing: Vec::new(),
            ring_until: None,
            next_announce: (c.announce_every_s > 0)
                .then(|| now + Duration::from_secs(c.announce_every_s)),
            max_wait_at: (c.max_wait_s > 0).then(|| now + Duration::from_secs(c.max_wait_s)),
        };
        self.next_entry += 1;
        insert_in_line(&mut q.entries, entry);
        let mut out = Vec::new();
        self.assign(now, &mut out);
        Ok(out)
    }

    /// A caller's leg ended (they hung up) while waiting or ringing an operator. A caller who was
    /// waiting gets a callback; `false` for `callback`: they left by choice (voicemail, the menu).
    pub fn left(&mut self, call: CallId, callback: bool, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some((queue, entry)) = self.take_entry(|e| e.waiter == Waiter::Caller { call }) else {
            return out;
        };
        for op in &entry.ringing {
            out.push(Decision::CancelRing {
                operator: op.clone(),
                call,
            });
            self.free(op, now, &mut out);
        }
        if callback {
            out.push(Decision::CreateCallback {
                queue,
                caller: entry.number.clone(),
                since: entry.since,
                waited: now.saturating_duration_since(entry.since),
            });
        }
        self.assign(now, &mut out);
        out
    }

    /// A callback ticket to serve in `queue` at the caller's old place in line.
    pub fn add_callback(
        &mut self,
        queue: &str,
        ticket: i64,
        number: &str,
        since: Instant,
        now: Instant,
    ) -> Result<Vec<Decision>, QueueError> {
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::UnknownQueue(queue.into()))?;
        let entry = Entry {
            id: self.next_entry,
            waiter: Waiter::Callback { ticket, attempt: 1 },
            number: number.to_owned(),
            since,
            not_before: None,
            ringing: Vec::new(),
            ring_until: None,
            next_announce: None,
            max_wait_at: None,
        };
        self.next_entry += 1;
        insert_in_line(&mut q.entries, entry);
        let mut out = Vec::new();
        self.assign(now, &mut out);
        Ok(out)
    }

    /// The operator answered the phone that rang for a caller (bridge them) or for a callback (dial
    /// the resident now).
    pub fn answered(&mut self, op: &str, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(OperatorState::Ringing { entry: id }) =
            self.operators.get(op).map(|o| o.state.clone())
        else {
            return out;
        };
        let Some((_, entry)) = self.take_entry(|e| e.id == id) else {
            return out;
        };
        for other in entry.ringing.iter().filter(|o| *o != op) {
            if let Waiter::Caller { call } = entry.waiter {
                out.push(Decision::CancelRing {
                    operator: other.clone(),
                    call,
                });
            }
            self.free(other, now, &mut out);
        }
        if let Some(o) = self.operators.get_mut(op) {
            o.answered += 1;
        }
        self.set(op, OperatorState::OnCall { entry: id }, &mut out);
        if let Waiter::Caller { call } = entry.waiter {
            out.push(Decision::Bridge {
                operator: op.to_owned(),
                call,
                waited: now.saturating_duration_since(entry.since),
            });
        }
        self.assign(now, &mut out);
        out
    }

    /// The operator's phone refused or stopped ringing by itself (busy, rejected, unreachable): as a
    /// ring that timed out.
    pub fn not_answered(&mut self, op: &str, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        if let Some(OperatorState::Ringing { entry }) =
            self.operators.get(op).map(|o| o.state.clone())
        {
            self.ring_out(entry, op, now, &mut out);
        }
        self.assign(now, &mut out);
        out
    }

    /// The operator's call ended (either side hung up): wrap-up, then free.
    pub fn hung_up(&mut self, op: &str, talk: Duration, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(o) = self.operators.get(op) else {
            return out;
        };
        if !matches!(o.state, OperatorState::OnCall { .. }) {
            return out;
        }
        let wrap = self.wrap_up(op);
        // A moving average over about 20 calls.
        let spent = talk + wrap;
        self.handle_time = (self.handle_time * 19 + spent) / 20;
        if wrap.is_zero() {
            self.free(op, now, &mut out);
        } else {
            if let Some(o) = self.operators.get_mut(op) {
                o.wrap_up_until = Some(now + wrap);
            }
            self.set(op, OperatorState::WrapUp, &mut out);
        }
        self.assign(now, &mut out);
        out
    }

    /// The resident of a callback was not reached (busy, no answer): try again later, or give up.
    pub fn callback_failed(
        &mut self,
        queue: &str,
        ticket: i64,
        number: &str,
        since: Instant,
        attempt: u32,
        now: Instant,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(q) = self.queues.get_mut(queue) else {
            return out;
        };
        if attempt >= q.config.callback_attempts {
            out.push(Decision::CallbackExhausted {
                ticket,
                attempts: attempt,
            });
            return out;
        }
        let entry = Entry {
            id: self.next_entry,
            waiter: Waiter::Callback {
                ticket,
                attempt: attempt + 1,
            },
            number: number.to_owned(),
            since,
            not_before: Some(now + Duration::from_secs(q.config.callback_retry_s)),
            ringing: Vec::new(),
            ring_until: None,
            next_announce: None,
            max_wait_at: None,
        };
        self.next_entry += 1;
        insert_in_line(&mut q.entries, entry);
        self.assign(now, &mut out);
        out
    }

    // ----- time -----

    /// When `tick` has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let entries = self.queues.values().flat_map(|q| q.entries.iter());
        // While an operator's phone rings, the ring's end is what matters: the maximum wait is
        // looked at again if nobody answers.
        let per_entry = entries.flat_map(|e| {
            let waiting = e.ringing.is_empty();
            [
                e.ring_until,
                e.next_announce,
                e.max_wait_at.filter(|_| waiting),
                e.not_before,
            ]
            .into_iter()
            .flatten()
        });
        let wrap = self.operators.values().filter_map(|o| o.wrap_up_until);
        per_entry.chain(wrap).min()
    }

    /// Rings that timed out, wrap-ups that ended, announcements and maximum waits that are due.
    pub fn tick(&mut self, now: Instant) -> Vec<Decision> {
        let mut out = Vec::new();
        let done: Vec<String> = self
            .operators
            .iter()
            .filter(|(_, o)| o.wrap_up_until.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for op in done {
            if let Some(o) = self.operators.get_mut(&op) {
                o.wrap_up_until = None;
            }
            if self.operators.get(&op).map(|o| &o.state) == Some(&OperatorState::WrapUp) {
                self.free(&op, now, &mut out);
            }
        }
        let rang_out: Vec<(u64, Vec<String>)> = self
            .queues
            .values()
            .flat_map(|q| q.entries.iter())
            .filter(|e| e.ring_until.is_some_and(|t| t <= now))
            .map(|e| (e.id, e.ringing.clone()))
            .collect();
        for (entry, ops) in rang_out {
            for op in ops {
                self.ring_out(entry, &op, now, &mut out);
            }
        }
        for e in self.queues.values_mut().flat_map(|q| q.entries.iter_mut()) {
            if e.not_before.is_some_and(|t| t <= now) {
                e.not_before = None;
            }
        }
        let handle = self.handle_time;
        let free_ops = |q: &QueueConfig| {
            q.operators
                .iter()
                .filter(|o| {
                    self.operators.get(*o).is_some_and(|o| {
                        !matches!(
                            o.state,
                            OperatorState::LoggedOut | OperatorState::Paused { .. }
                        )
                    })
                })
                .count()
                .max(1) as u32
        };
        let mut expired = Vec::new();
        for (name, q) in &mut self.queues {
            let staff = free_ops(&q.config);
            let mut position = 0;
            for e in q.entries.iter_mut() {
                let Waiter::Caller { call } = e.waiter else {
                    position += 1;
                    continue;
                };
                position += 1;
                if e.max_wait_at.is_some_and(|t| t <= now) && e.ringing.is_empty() {
                    expired.push((name.clone(), call, q.config.on_max_wait));
                    continue;
                }
                if let Some(t) = e.next_announce
                    && t <= now
                {
                    e.next_announce = Some(now + Duration::from_secs(q.config.announce_every_s));
                    if e.ringing.is_empty() {
                        out.push(Decision::Announce {
                            call,
                            position,
                            expected_wait: handle * position as u32 / staff,
                        });
                    }
                }
            }
        }
        for (_, call, action) in expired {
            self.take_entry(|e| e.waiter == Waiter::Caller { call });
            out.push(Decision::MaxWait { call, action });
        }
        self.assign(now, &mut out);
        out
    }

    // ----- inside -----

    fn operator(&mut self, op: &str) -> Result<&mut Operator, QueueError> {
        self.operators
            .get_mut(op)
            .ok_or_else(|| QueueError::UnknownOperator(op.into()))
    }

    fn set(&mut self, op: &str, state: OperatorState, out: &mut Vec<Decision>) {
        if let Some(o) = self.operators.get_mut(op)
            && o.state != state
        {
            o.state = state.clone();
            out.push(Decision::OperatorChanged {
                operator: op.to_owned(),
                state,
            });
        }
    }

    fn free(&mut self, op: &str, now: Instant, out: &mut Vec<Decision>) {
        if let Some(o) = self.operators.get_mut(op) {
            o.idle_since = now;
        }
        self.set(op, OperatorState::Available, out);
    }

    fn wrap_up(&self, op: &str) -> Duration {
        // An operator in several queues wraps up for the longest of them.
        let s = self
            .queues
            .values()
            .filter(|q| q.config.operators.iter().any(|o| o == op))
            .map(|q| q.config.wrap_up_s)
            .max()
            .unwrap_or(0);
        Duration::from_secs(s)
    }

    fn take_entry(&mut self, pred: impl Fn(&Entry) -> bool) -> Option<(String, Entry)> {
        for (name, q) in &mut self.queues {
            if let Some(i) = q.entries.iter().position(&pred) {
                return q.entries.remove(i).map(|e| (name.clone(), e));
            }
        }
        None
    }

    fn entry_mut(&mut self, id: u64) -> Option<(&QueueConfig, &mut Entry)> {
        self.queues.values_mut().find_map(|q| {
            let c = &q.config;
            q.entries.iter_mut().find(|e| e.id == id).map(|e| (c, e))
        })
    }

    /// Stops ringing `op` for `entry` without blaming them (they logged out or paused).
    fn unring(&mut self, entry: u64, op: &str, out: &mut Vec<Decision>) {
        if let Some((_, e)) = self.entry_mut(entry) {
            e.ringing.retain(|o| o != op);
            if e.ringing.is_empty() {
                e.ring_until = None;
            }
            match e.waiter {
                Waiter::Caller { call } => out.push(Decision::CancelRing {
                    operator: op.to_owned(),
                    call,
                }),
                Waiter::Callback { ticket, .. } => out.push(Decision::CancelCallback {
                    operator: op.to_owned(),
                    ticket,
                }),
            }
        }
    }

    /// `op` did not answer for `entry`: the entry waits for the next operator; `op` is paused
    /// (or freed, by configuration).
    fn ring_out(&mut self, entry: u64, op: &str, now: Instant, out: &mut Vec<Decision>) {
        let pause = self
            .entry_mut(entry)
            .map(|(c, _)| c.pause_on_no_answer)
            .unwrap_or(true);
        self.unring(entry, op, out);
        if pause {
            self.set(
                op,
                OperatorState::Paused {
                    reason: "no answer".into(),
                },
                out,
            );
        } else {
            self.free(op, now, out);
        }
    }

    fn available(&self, op: &str) -> bool {
        self.operators
            .get(op)
            .is_some_and(|o| o.state == OperatorState::Available)
    }

    /// Offers waiting entries to free operators, longest-waiting first, until either runs out.
    fn assign(&mut self, now: Instant, out: &mut Vec<Decision>) {
        loop {
            // The longest-waiting entry, across queues, that is not ringing and has a free operator.
            let mut best: Option<(&String, usize, Instant)> = None;
            for (name, q) in &self.queues {
                let free = q.config.operators.iter().any(|o| self.available(o));
                if !free {
                    continue;
                }
                if let Some((i, e)) =
                    q.entries.iter().enumerate().find(|(_, e)| {
                        e.ringing.is_empty() && e.not_before.is_none_or(|t| t <= now)
                    })
                    && best.is_none_or(|(_, _, since)| e.since < since)
                {
                    best = Some((name, i, e.since));
                }
            }
            let Some((name, i, _)) = best else { return };
            let name = name.clone();
            let chosen = self.choose(&name);
            let Some(q) = self.queues.get_mut(&name) else {
                return;
            };
            let ring_until = now + Duration::from_secs(q.config.ring_timeout_s.max(1));
            let Some(e) = q.entries.get_mut(i) else {
                return;
            };
            e.ringing = chosen.clone();
            e.ring_until = Some(ring_until);
            let (id, waiter, number) = (e.id, e.waiter.clone(), e.number.clone());
            for op in chosen {
                match waiter {
                    Waiter::Caller { call } => out.push(Decision::Ring {
                        operator: op.clone(),
                        call,
                    }),
                    Waiter::Callback { ticket, attempt } => out.push(Decision::DialCallback {
                        operator: op.clone(),
                        ticket,
                        number: number.clone(),
                        attempt,
                    }),
                }
                self.set(&op, OperatorState::Ringing { entry: id }, out);
            }
        }
    }

    /// The operators of `queue` to ring, by its strategy (at least one is free: checked by `assign`).
    fn choose(&mut self, queue: &str) -> Vec<String> {
        let Some(q) = self.queues.get(queue) else {
            return Vec::new();
        };
        let free: Vec<&String> = q
            .config
            .operators
            .iter()
            .filter(|o| self.available(o))
            .collect();
        let idle = |o: &str| self.operators.get(o).map(|x| x.idle_since);
        let pick = match q.config.strategy {
            Strategy::RingAll => return free.into_iter().cloned().collect(),
            Strategy::LongestIdle => free.iter().min_by_key(|o| idle(o)).copied(),
            Strategy::FewestCalls => free
                .iter()
                .min_by_key(|o| (self.operators.get(o.as_str()).map(|x| x.answered), idle(o)))
                .copied(),
            Strategy::RoundRobin => {
                let n = q.config.operators.len();
                (0..n)
                    .map(|k| &q.config.operators[(q.cursor + k) % n])
                    .find(|o| self.available(o))
            }
        };
        let Some(pick) = pick.cloned() else {
            return Vec::new();
        };
        if let Some(q) = self.queues.get_mut(queue)
            && let Some(i) = q.config.operators.iter().position(|o| *o == pick)
        {
            q.cursor = i + 1;
        }
        vec![pick]
    }
}

/// Keeps a queue ordered by place in line (`since`), ties in arrival order.
fn insert_in_line(entries: &mut VecDeque<Entry>, entry: Entry) {
    let at = entries
        .iter()
        .position(|e| e.since > entry.since)
        .unwrap_or(entries.len());
    entries.insert(at, entry);
}

/// Set-like view used by the API: which queues an operator answers.
pub fn queues_of(config: &BTreeMap<String, QueueConfig>, op: &str) -> BTreeSet<String> {
    config
        .iter()
        .filter(|(_, q)| q.operators.iter().any(|o| o == op))
        .map(|(n, _)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn queues(strategy: Strategy, ops: &[&str]) -> (Queues, Instant) {
        let t0 = Instant::now();
        let config = BTreeMap::from([(
            "technical".to_string(),
            QueueConfig {
                strategy,
                operators: ops.iter().map(|s| s.to_string()).collect(),
                ..QueueConfig::default()
            },
        )]);
        let mut q = Queues::new(&config, t0);
        for (k, op) in ops.iter().enumerate() {
            // Logged in one second apart: the first is the longest idle.
            q.login(op, t0 + secs(k as u64)).unwrap();
        }
        (q, t0 + secs(10))
    }

    fn rings(ds: &[Decision]) -> Vec<(String, CallId)> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Ring { operator, call } => Some((operator.clone(), *call)),
                _ => None,
            })
            .collect()
    }

    fn ring(op: &str, call: CallId) -> (String, CallId) {
        (op.to_string(), call)
    }

    #[test]
    fn longest_idle_operator_gets_the_longest_waiting_caller() {
        let (mut q, t) = queues(Strategy::LongestIdle, &["a", "b"]);
        assert_eq!(
            rings(&q.join("technical", 1, "+7001", t).unwrap()),
            [ring("a", 1)]
        );
        assert_eq!(
            rings(&q.join("technical", 2, "+7002", t).unwrap()),
            [ring("b", 2)]
        );
        // Nobody free: the third waits.
        assert!(rings(&q.join("technical", 3, "+7003", t).unwrap()).is_empty());
        let d = q.answered("a", t + secs(2));
        assert!(d.contains(&Decision::Bridge {
            operator: "a".into(),
            call: 1,
            waited: secs(2)
        }));
        // a hangs up after 60 s: wrap-up 15 s, then the waiting caller rings a.
        let d = q.hung_up("a", secs(60), t + secs(62));
        assert!(rings(&d).is_empty());
        assert_eq!(
            q.next_wakeup(),
            Some(t + secs(20)),
            "b's ring times out first"
        );
        q.answered("b", t + secs(3));
        assert_eq!(
            q.next_wakeup(),
            Some(t + secs(30)),
            "the announcement for 3"
        );
        let d = q.tick(t + secs(77));
        assert_eq!(rings(&d), [ring("a", 3)]);
    }

    #[test]
    fn an_operator_who_does_not_answer_is_paused_and_the_call_goes_to_the_next() {
        let (mut q, t) = queues(Strategy::LongestIdle, &["a", "b"]);
        q.answered("b", t); // not ringing: ignored
        let d = q.join("technical", 1, "+7001", t).unwrap();
        assert_eq!(rings(&d), [ring("a", 1)]);
        let d = q.tick(t + secs(20));
        assert!(d.contains(&Decision::CancelRing {
            operator: "a".into(),
            call: 1
        }));
        assert!(d.contains(&Decision::OperatorChanged {
            operator: "a".into(),
            state: OperatorState::Paused {
                reason: "no answer".into()
            }
        }));
        assert_eq!(rings(&d), [ring("b", 1)]);
        // A busy phone is a ring-out too.
        let d = q.not_answered("b", t + secs(21));
        assert!(rings(&d).is_empty(), "nobody left");
        let d = q.resume("a", t + secs(30)).unwrap();
        assert_eq!(rings(&d), [ring("a", 1)]);
    }

    #[test]
    fn ring_all_rings_everyone_and_the_first_answer_cancels_the_others() {
        let (mut q, t) = queues(Strategy::RingAll, &["a", "b", "c"]);
        let d = q.join("technical", 1, "+7001", t).unwrap();
        assert_eq!(rings(&d), [ring("a", 1), ring("b", 1), ring("c", 1)]);
        let d = q.answered("b", t + secs(1));
        assert!(d.contains(&Decision::CancelRing {
            operator: "a".into(),
            call: 1
        }));
        assert!(d.contains(&Decision::CancelRing {
            operator: "c".into(),
            call: 1
        }));
        assert_eq!(q.operators()[0].1, OperatorState::Available);
    }

    #[test]
    fn round_robin_and_fewest_calls() {
        let (mut q, mut t) = queues(Strategy::RoundRobin, &["a", "b", "c"]);
        let mut order = Vec::new();
        for call in 1..=4 {
            let d = q.join("technical", call, "+7", t).unwrap();
            let (op, _) = rings(&d)[0].clone();
            q.answered(&op, t);
            q.hung_up(&op, secs(1), t);
            t += secs(100);
            q.tick(t);
            order.push(op);
        }
        assert_eq!(order, ["a", "b", "c", "a"]);

        let (mut q, t) = queues(Strategy::FewestCalls, &["a", "b"]);
        q.join("technical", 1, "+7", t).unwrap();
        q.answered("a", t);
        q.hung_up("a", secs(1), t);
        let t = t + secs(100);
        q.tick(t);
        // a was idle longer than b? No: a just finished; b has fewer calls anyway.
        assert_eq!(
            rings(&q.join("technical", 2, "+7", t).unwrap()),
            [ring("b", 2)]
        );
    }

    #[test]
    fn a_caller_who_hangs_up_gets_a_callback_that_keeps_their_place() {
        let (mut q, t) = queues(Strategy::LongestIdle, &["a"]);
        q.join("technical", 1, "+7001", t).unwrap(); // rings a
        q.answered("a", t);
        q.join("technical", 2, "+7002", t + secs(5)).unwrap();
        q.join("technical", 3, "+7003", t + secs(6)).unwrap();
        // 2 gives up after 40 s.
        let d = q.left(2, true, t + secs(45));
        assert_eq!(
            d,
            [Decision::CreateCallback {
                queue: "technical".into(),
                caller: "+7002".into(),
                since: t + secs(5),
                waited: secs(40)
            }]
        );
        q.add_callback("technical", 77, "+7002", t + secs(5), t + secs(45))
            .unwrap();
        assert_eq!(
            q.waiting("technical")
                .iter()
                .map(|w| (w.0.as_str(), w.2))
                .collect::<Vec<_>>(),
            [("+7002", true), ("+7003", false)],
            "the callback is ahead of the caller who came later"
        );
        // a frees up: the callback comes first, operator first.
        let d = q.hung_up("a", secs(50), t + secs(50));
        assert!(rings(&d).is_empty());
        let d = q.tick(t + secs(65));
        assert_eq!(
            d.iter()
                .filter(|d| matches!(d, Decision::DialCallback { .. }))
                .collect::<Vec<_>>(),
            [&Decision::DialCallback {
                operator: "a".into(),
                ticket: 77,
                number: "+7002".into(),
                attempt: 1
            }]
        );
        let d = q.answered("a", t + secs(66));
        assert!(!d.iter().any(|d| matches!(d, Decision::Bridge { .. })));
        // The resident does not answer: retried later, at the same place in line.
        let d = q.callback_failed("technical", 77, "+7002", t + secs(5), 1, t + secs(90));
        assert!(d.is_empty());
        q.hung_up("a", secs(24), t + secs(90));
        let d = q.tick(t + secs(105));
        assert_eq!(
            rings(&d),
            [ring("a", 3)],
            "the retry waits 120 s; 3 goes first"
        );
        let d = q.callback_failed("technical", 77, "+7002", t + secs(5), 3, t + secs(300));
        assert_eq!(
            d,
            [Decision::CallbackExhausted {
                ticket: 77,
                attempts: 3
            }]
        );
    }

    #[test]
    fn announcements_and_the_maximum_wait() {
        let (mut q, t) = queues(Strategy::LongestIdle, &["a"]);
        q.join("technical", 1, "+7001", t).unwrap();
        q.answered("a", t);
        q.join("technical", 2, "+7002", t).unwrap();
        q.join("technical", 3, "+7003", t).unwrap();
        let d = q.tick(t + secs(30));
        assert_eq!(
            d,
            [
                Decision::Announce {
                    call: 2,
                    position: 1,
                    expected_wait: secs(180)
                },
                Decision::Announce {
                    call: 3,
                    position: 2,
                    expected_wait: secs(360)
                }
            ]
        );
        let d = q.tick(t + secs(240));
        assert!(d.contains(&Decision::MaxWait {
            call: 2,
            action: MaxWaitAction::Callback
        }));
        assert!(q.waiting("technical").is_empty());
        // Leaving after the maximum wait was handled is a no-op.
        assert!(q.left(2, true, t + secs(241)).is_empty());
    }

    #[test]
    fn a_caller_who_leaves_while_ringing_frees_the_operator_and_pausing_is_refused_on_a_call() {
        let (mut q, t) = queues(Strategy::LongestIdle, &["a"]);
        q.join("technical", 1, "+7001", t).unwrap();
        let d = q.left(1, true, t + secs(3));
        assert!(d.contains(&Decision::CancelRing {
            operator: "a".into(),
            call: 1
        }));
        assert_eq!(q.operators()[0].1, OperatorState::Available);
        q.join("technical", 2, "+7002", t).unwrap();
        q.answered("a", t);
        assert_eq!(q.pause("a", "lunch", t), Err(QueueError::Busy("a".into())));
        assert_eq!(
            q.login("zz", t),
            Err(QueueError::UnknownOperator("zz".into()))
        );
        assert_eq!(
            q.join("nope", 5, "+7", t),
            Err(QueueError::UnknownQueue("nope".into()))
        );
    }
}
