//! RFC 3261 section 17 transactions, owned by the call core: a server transaction remembers its last
//! response, resends it when the request is retransmitted, and resends a final INVITE response on
//! timer G until the ACK (giving up at timer H); a client transaction (our BYE) resends its request on
//! timer E until a final response (giving up at timer F). Pure state: the core asks `next_wakeup`
//! and calls `poll` at that time; tests drive it with tokio's paused clock.

use std::time::Duration;

use tokio::time::Instant;

/// Timer base values (RFC 3261 table 4).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// Round-trip estimate, 500 ms.
    pub t1: Duration,
    /// Longest retransmission interval, 4 s.
    pub t2: Duration,
    /// How long a message may stay in the network, 5 s.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Invite,
    NonInvite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No final response yet.
    Proceeding,
    /// Final response sent (INVITE: waiting for ACK).
    Completed,
    /// INVITE: ACK received, absorbing its retransmissions until timer I.
    Confirmed,
    Terminated,
}

/// What `poll` asks the core to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Send these bytes again.
    Resend(Vec<u8>),
    /// An INVITE's final response was never acknowledged (timer H) or a request never answered
    /// (timer F): the transaction is over and the call should end.
    TimedOut,
    /// The transaction is over; forget it.
    Terminated,
}

/// A server transaction.
#[derive(Debug, Clone)]
pub struct ServerTx {
    pub kind: Kind,
    pub state: State,
    timers: Timers,
    last: Option<Vec<u8>>,
    interval: Duration,
    resend_at: Option<Instant>,
    end_at: Option<Instant>,
}

impl ServerTx {
    pub fn new(kind: Kind, timers: Timers) -> Self {
        Self {
            kind,
            state: State::Proceeding,
            timers,
            last: None,
            interval: timers.t1,
            resend_at: None,
            end_at: None,
        }
    }

    /// Records a response that the core sends. Provisional responses keep the transaction proceeding.
    pub fn respond(&mut self, code: u16, bytes: Vec<u8>, now: Instant) {
        self.last = Some(bytes);
        if code < 200 || self.state != State::Proceeding {
            return;
        }
        self.state = State::Completed;
        match self.kind {
            Kind::Invite => {
                // Over UDP a final INVITE response (2xx too, by the TU: RFC 3261 13.3.1.4) is resent
                // until the ACK comes.
                self.interval = self.timers.t1;
                self.resend_at = Some(now + self.interval);
                self.end_at = Some(now + self.timers.t1 * 64);
            }
            Kind::NonInvite => {
                // Timer J: absorb retransmissions of the request for 64*T1.
                self.end_at = Some(now + self.timers.t1 * 64);
            }
        }
    }

    /// The request came again: what to resend (the last response), if anything.
    pub fn retransmission(&self) -> Option<&[u8]> {
        match self.state {
            State::Proceeding | State::Completed => self.last.as_deref(),
            State::Confirmed | State::Terminated => None,
        }
    }

    /// An ACK for the final response. Returns true the first time.
    pub fn ack(&mut self, now: Instant) -> bool {
        if self.kind != Kind::Invite || self.state != State::Completed {
            return false;
        }
        self.state = State::Confirmed;
        self.resend_at = None;
        // Timer I: absorb ACK retransmissions.
        self.end_at = Some(now + self.timers.t4);
        true
    }

    /// The final response code sent, if the transaction completed.
    pub fn completed(&self) -> bool {
        matches!(self.state, State::Completed | State::Confirmed)
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        match (self.resend_at, self.end_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll(&mut self, now: Instant) -> Option<Event> {
        if let Some(end) = self.end_at
            && now >= end
        {
            let timed_out = self.kind == Kind::Invite && self.state == State::Completed;
            self.state = State::Terminated;
            self.resend_at = None;
            self.end_at = None;
            return Some(if timed_out {
                Event::TimedOut
            } else {
                Event::Terminated
            });
        }
        match self.resend_at {
            Some(at) if now >= at => {
                self.interval = (self.interval * 2).min(self.timers.t2);
                self.resend_at = Some(now + self.interval);
                self.last.clone().map(Event::Resend)
            }
            _ => None,
        }
    }
}

/// A client transaction: a non-INVITE one (BYE, CANCEL, REGISTER: timers E and F) or, made with
/// `invite`, an outbound INVITE (timer A until a provisional response, timer B without any).
#[derive(Debug, Clone)]
pub struct ClientTx {
    request: Vec<u8>,
    invite: bool,
    timers: Timers,
    interval: Duration,
    resend_at: Option<Instant>,
    end_at: Option<Instant>,
}

impl ClientTx {
    /// The request has just been sent.
    pub fn new(request: Vec<u8>, timers: Timers, now: Instant) -> Self {
        Self {
            request,
            invite: false,
            timers,
            interval: timers.t1,
            resend_at: Some(now + timers.t1),
            end_at: Some(now + timers.t1 * 64),
        }
    }

    /// An INVITE that has just been sent. Over UDP timer A doubles without the T2 cap
    /// (RFC 3261 17.1.1.2); any provisional response stops it and timer B.
    pub fn invite(request: Vec<u8>, timers: Timers, now: Instant) -> Self {
        Self {
            invite: true,
            ..Self::new(request, timers, now)
        }
    }

    /// A response arrived: a provisional one stretches the interval to T2, a final one ends the
    /// transaction (returns true; timer K, which only absorbs response retransmissions, is not kept).
    pub fn response(&mut self, code: u16, now: Instant) -> bool {
        if code < 200 && self.invite {
            // Proceeding: the callee rings; how long is the caller's business (ring timeout).
            self.resend_at = None;
            self.end_at = None;
            return false;
        }
        if code < 200 {
            self.interval = self.timers.t2;
            self.resend_at = Some(now + self.interval);
            return false;
        }
        self.resend_at = None;
        self.end_at = None;
        true
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        match (self.resend_at, self.end_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll(&mut self, now: Instant) -> Option<Event> {
        if let Some(end) = self.end_at
            && now >= end
        {
            self.resend_at = None;
            self.end_at = None;
            return Some(Event::TimedOut);
        }
        match self.resend_at {
            Some(at) if now >= at => {
                self.interval = if self.invite {
                    self.interval * 2
                } else {
                    (self.interval * 2).min(self.timers.t2)
                };
                self.resend_at = Some(now + self.interval);
                Some(Event::Resend(self.request.clone()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a transaction's timers until `until`, returning the offsets (ms from `start`) of resends
    /// and the final event.
    fn run(tx: &mut ServerTx, start: Instant, until: Duration) -> (Vec<u128>, Option<Event>) {
        let mut resends = Vec::new();
        while let Some(at) = tx.next_wakeup() {
            if at > start + until {
                break;
            }
            match tx.poll(at) {
                Some(Event::Resend(_)) => resends.push((at - start).as_millis()),
                Some(other) => return (resends, Some(other)),
                None => {}
            }
        }
        (resends, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_invite_response_is_resent_until_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(Kind::Invite, Timers::default());
        tx.respond(180, b"180".to_vec(), t0);
        assert_eq!(
            tx.next_wakeup(),
            None,
            "provisional responses are not resent by timers"
        );
        assert_eq!(tx.retransmission(), Some(&b"180"[..]));
        tx.respond(487, b"487".to_vec(), t0);
        tokio::time::advance(Duration::from_millis(3600)).await;
        let (resends, end) = run(&mut tx, t0, Instant::now() - t0);
        // Timer G: T1, then doubling: 500, 1500, 3500 ms.
        assert_eq!(resends, vec![500, 1500, 3500]);
        assert_eq!(end, None);
        assert!(tx.ack(Instant::now()));
        assert!(!tx.ack(Instant::now()), "a retransmitted ACK is absorbed");
        assert_eq!(tx.retransmission(), None);
        // Timer I (T4) ends it quietly.
        let (resends, end) = run(&mut tx, t0, Duration::from_secs(60));
        assert!(resends.is_empty());
        assert_eq!(end, Some(Event::Terminated));
    }

    #[tokio::test(start_paused = true)]
    async fn without_ack_timer_h_gives_up_after_64_t1() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(Kind::Invite, Timers::default());
        tx.respond(200, b"200".to_vec(), t0);
        let (resends, end) = run(&mut tx, t0, Duration::from_secs(60));
        // 0.5, 1.5, 3.5, 7.5, then every T2 = 4 s until 32 s.
        assert_eq!(resends[..5], [500, 1500, 3500, 7500, 11500]);
        assert!(resends.iter().all(|ms| *ms < 32_000));
        assert_eq!(resends.len(), 10);
        assert_eq!(end, Some(Event::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn non_invite_answers_retransmissions_until_timer_j() {
        let t0 = Instant::now();
        let mut tx = ServerTx::new(Kind::NonInvite, Timers::default());
        tx.respond(200, b"200".to_vec(), t0);
        assert_eq!(tx.retransmission(), Some(&b"200"[..]));
        let (resends, end) = run(&mut tx, t0, Duration::from_secs(60));
        assert!(
            resends.is_empty(),
            "non-INVITE finals are only resent on request"
        );
        assert_eq!(end, Some(Event::Terminated));
        assert_eq!(tx.next_wakeup(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_bye_is_resent_until_answered() {
        let t0 = Instant::now();
        let mut tx = ClientTx::new(b"BYE".to_vec(), Timers::default(), t0);
        let mut resends = Vec::new();
        while let Some(at) = tx.next_wakeup() {
            if at - t0 > Duration::from_secs(2) {
                break;
            }
            if let Some(Event::Resend(_)) = tx.poll(at) {
                resends.push((at - t0).as_millis());
            }
        }
        assert_eq!(resends, vec![500, 1500]);
        assert!(tx.response(200, t0 + Duration::from_secs(2)));
        assert_eq!(tx.next_wakeup(), None);
        let mut lost = ClientTx::new(b"BYE".to_vec(), Timers::default(), t0);
        let mut last = None;
        while let Some(at) = lost.next_wakeup() {
            last = lost.poll(at);
        }
        assert_eq!(last, Some(Event::TimedOut));
    }

    #[tokio::test(start_paused = true)]
    async fn an_invite_is_resent_on_timer_a_until_a_provisional_response() {
        let t0 = Instant::now();
        let mut tx = ClientTx::invite(b"INVITE".to_vec(), Timers::default(), t0);
        let mut resends = Vec::new();
        while let Some(at) = tx.next_wakeup() {
            match tx.poll(at) {
                Some(Event::Resend(_)) => resends.push((at - t0).as_millis()),
                Some(other) => {
                    assert_eq!(other, Event::TimedOut);
                    assert_eq!((at - t0).as_millis(), 32_000, "timer B");
                    break;
                }
                None => {}
            }
        }
        // 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s: doubling, not capped at T2.
        assert_eq!(resends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        let mut tx = ClientTx::invite(b"INVITE".to_vec(), Timers::default(), t0);
        assert!(!tx.response(180, t0));
        assert_eq!(tx.next_wakeup(), None, "ringing: no timers");
        assert!(tx.response(200, t0));
    }
}
