//! The core's outbound calls (the hub as UAC): INVITE with our SDP offer (resent on timer A), ringing
//! and early media (183) accepted, a trunk's 401/407 answered once with digest credentials, ACK for
//! every final response (a new transaction for 2xx, resent for each retransmitted 2xx), CANCEL at the
//! ring timeout, then the message played `repeat` times while the media task listens for DTMF and for
//! an answering machine, BYE at the end. The caller of `Telephony::place` watches `CallProgress` and
//! gets the `Outcome` when the call is over.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CallKey, Core, random_token};
use crate::telephony::amd::Verdict;
use crate::telephony::digest::Challenge;
use crate::telephony::media::{self, MEDIA_CHANNEL, MediaCmd, MediaSetup};
use crate::telephony::outbound::{
    self, CallProgress, CallState, Dial, DialogSide, OutboundCall, Outcome, Playback, Target,
};
use crate::telephony::prompts::PromptSource;
use crate::telephony::recorder::RecordOp;
use crate::telephony::sdp;
use crate::telephony::sip::{self, Header, Method, NameAddr, OutRequest, Params, Response, Uri};
use crate::telephony::transaction::ClientTx;

/// After the message, how long a call with `confirm_digits` waits for a digit before hanging up.
pub(super) const CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// The playback id of an outbound message (one per call).
const MESSAGE: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutPhase {
    /// INVITE sent, no provisional response yet.
    Calling,
    /// 1xx received.
    Ringing,
    /// CANCEL sent at the ring timeout; waiting for the 487.
    Cancelling,
    /// 2xx received and acknowledged: media running.
    Answered,
}

pub(super) struct OutCall {
    key: CallKey,
    call: OutboundCall,
    side: DialogSide,
    dest: SocketAddr,
    uri: String,
    trunk: Option<String>,
    cseq: u32,
    invite_branch: String,
    invite_tx: String,
    offer_sdp: String,
    rtp: Option<UdpSocket>,
    rtp_port: u16,
    pub(super) phase: OutPhase,
    ring_deadline: Instant,
    hangup_at: Option<Instant>,
    wait_digit_until: Option<Instant>,
    auth_tried: bool,
    remote_target: String,
    route: Vec<String>,
    ack: Option<Vec<u8>>,
    answer_sdp: String,
    media: Option<mpsc::Sender<MediaCmd>>,
    media_stop: CancellationToken,
    pub(super) digits: String,
    digit: Option<char>,
    machine: bool,
    progress: watch::Sender<CallProgress>,
    done: Option<oneshot::Sender<Outcome>>,
    /// Held for the length of the call: dropping it frees the trunk's line.
    _line: Option<OwnedSemaphorePermit>,
    pub(super) reinvite_tx: Option<String>,
    pub(super) from_number: String,
}

impl OutCall {
    fn set_state(&self, state: CallState) {
        self.progress.send_modify(|p| p.state = state);
    }

    fn route_headers(&self) -> Vec<Header> {
        self.route
            .iter()
            .map(|r| Header {
                name: "Route".into(),
                value: r.clone(),
            })
            .collect()
    }
}

impl Core {
    pub(super) fn out_wakeups(&self) -> impl Iterator<Item = Instant> + '_ {
        self.out_calls.values().flat_map(|c| {
            let ring = (c.phase != OutPhase::Answered).then_some(c.ring_deadline);
            [ring, c.hangup_at, c.wait_digit_until]
                .into_iter()
                .flatten()
        })
    }

    /// Starts an outbound call: resolves an account's contact, binds RTP, sends the INVITE.
    pub(super) async fn dial(&mut self, d: Dial, now: Instant) {
        let Dial {
            record_id,
            call_id,
            call,
            target,
            progress,
            done,
            line,
        } = d;
        let key = CallKey(self.next_key);
        self.next_key += 1;
        let resolved = match target {
            Target::Addr { dest, uri, trunk } => Ok((dest, uri, trunk)),
            Target::Account(name) => self
                .contact_of(&name)
                .map(|(dest, uri)| (dest, uri, None))
                .ok_or_else(|| format!("account {name} is not registered")),
        };
        let ready = resolved.and_then(|r| {
            self.bind_rtp()
                .map(|rtp| (r, rtp))
                .ok_or_else(|| "no free RTP port".to_owned())
        });
        let ((dest, uri, trunk), (rtp, rtp_port)) = match ready {
            Ok(r) => r,
            Err(reason) => {
                let outcome = Outcome::Failed { reason };
                progress.send_modify(|p| p.state = CallState::Ended);
                self.out_record_failed(key, record_id, &call, &call_id, outcome.clone());
                if done.send(outcome).is_err() {
                    tracing::debug!(
                        id = record_id,
                        "nobody waits for the outbound call's result"
                    );
                }
                return;
            }
        };
        let trunk_cfg = trunk
            .as_ref()
            .and_then(|t| self.setup.trunks.iter().find(|x| &x.name == t));
        let (from_user, from_host) = match trunk_cfg {
            Some(t) => (t.config.from_user().to_owned(), t.config.domain()),
            None => ("hub".to_owned(), self.media_ip.to_string()),
        };
        let from_uri = outbound::sip_uri(Some(&from_user), &from_host, None)
            .or_else(|| outbound::sip_uri(Some("hub"), &self.media_ip.to_string(), None));
        let Some(from_uri) = from_uri else {
            // Unreachable in practice: `hub@` and an IP always make a URI.
            tracing::warn!(id = record_id, "no caller id URI: call not placed");
            return;
        };
        let mut from = NameAddr {
            display: None,
            uri: from_uri,
            params: Params::default(),
        };
        from.params.set("tag", Some(random_token()));
        let side = DialogSide {
            call_id: call_id.clone(),
            from,
            to: NameAddr {
                display: None,
                uri: uri.clone(),
                params: Params::default(),
            },
            via_host: self.media_ip.to_string(),
            via_port: self.sip_addr.port(),
            transport: self.transport_to(dest),
        };
        let offer_sdp = outbound::offer(self.media_ip, rtp_port, media::rand_u64() >> 12);
        let info = rules::CallInfo {
            id: record_id,
            tenant: call.tenant.clone(),
            direction: "outbound".into(),
            from: from_user.clone(),
            to: call.to.clone(),
            site: None,
            consumer: None,
            purpose: Some(call.purpose.clone()),
            outcome: None,
            duration_s: None,
        };
        self.record(RecordOp::Outbound {
            key,
            id: record_id,
            info: Box::new(info),
            at: crate::storage::now_ms(),
        });
        let ring_deadline = now + call.ring_timeout;
        let mut c = OutCall {
            key,
            call,
            side,
            dest,
            uri: uri.to_string(),
            trunk,
            cseq: 1,
            invite_branch: String::new(),
            invite_tx: String::new(),
            offer_sdp,
            rtp: Some(rtp),
            rtp_port,
            phase: OutPhase::Calling,
            ring_deadline,
            hangup_at: None,
            wait_digit_until: None,
            auth_tried: false,
            remote_target: uri.to_string(),
            route: Vec::new(),
            ack: None,
            answer_sdp: String::new(),
            media: None,
            media_stop: CancellationToken::new(),
            digits: String::new(),
            digit: None,
            machine: false,
            progress,
            done: Some(done),
            _line: line,
            reinvite_tx: None,
            from_number: from_user,
        };
        tracing::info!(call = key.0, id = record_id, to = %c.uri, dest = %dest, purpose = %c.call.purpose, "outbound call");
        self.send_invite(&mut c, None, now).await;
        self.out_by_call_id.insert(call_id, key);
        self.out_calls.insert(key, c);
    }

    /// Records a call that failed before its INVITE (the row exists already).
    fn out_record_failed(
        &self,
        key: CallKey,
        id: i64,
        call: &OutboundCall,
        call_id: &str,
        outcome: Outcome,
    ) {
        tracing::warn!(id, call_id, to = %call.to, outcome = ?outcome, "outbound call failed");
        let info = rules::CallInfo {
            id,
            tenant: call.tenant.clone(),
            direction: "outbound".into(),
            from: "hub".into(),
            to: call.to.clone(),
            site: None,
            consumer: None,
            purpose: Some(call.purpose.clone()),
            outcome: None,
            duration_s: None,
        };
        let at = crate::storage::now_ms();
        self.record(RecordOp::Outbound {
            key,
            id,
            info: Box::new(info),
            at,
        });
        self.out_record_end(key, &outcome, String::new());
    }

    fn out_record_end(&self, key: CallKey, outcome: &Outcome, digits: String) {
        self.setup.metrics.inc(
            "hub_telephony_outbound_total",
            &[("outcome", outcome.as_str())],
        );
        if let Some(detail) = outcome.detail() {
            self.record(RecordOp::Detail { key, detail });
        }
        self.record(RecordOp::End {
            key,
            at: crate::storage::now_ms(),
            outcome: outcome.as_str().to_owned(),
            digits,
            queue: None,
        });
    }

    /// Sends (or, after a challenge, re-sends with credentials) the INVITE in a new client transaction.
    async fn send_invite(&mut self, c: &mut OutCall, auth: Option<Header>, now: Instant) {
        c.invite_branch = outbound::branch(&random_token());
        let mut headers = vec![
            Header {
                name: "Allow".into(),
                value: super::ALLOW.into(),
            },
            Header {
                name: "User-Agent".into(),
                value: "hub".into(),
            },
        ];
        headers.extend(auth);
        let mut req = outbound::request(
            &c.side,
            Method::Invite,
            &c.uri,
            c.cseq,
            c.invite_branch.clone(),
            headers,
        );
        req.common.contact = self.our_contact();
        req.common.content_type = Some("application/sdp".into());
        req.body = c.offer_sdp.clone().into_bytes();
        let bytes = req.to_bytes();
        self.send(&bytes, c.dest).await;
        c.invite_tx = format!("{}|{}", c.invite_branch, c.dest);
        self.client_txs.insert(
            c.invite_tx.clone(),
            ClientTx::invite(bytes, self.timers, now),
        );
    }

    fn our_contact(&self) -> Option<NameAddr> {
        let uri = Uri::parse(&format!(
            "sip:hub@{}",
            SocketAddr::new(self.media_ip, self.sip_addr.port())
        ))
        .ok()?;
        Some(NameAddr {
            display: None,
            uri,
            params: Params::default(),
        })
    }

    /// A response in an outbound call's dialog.
    pub(super) async fn out_response(&mut self, key: CallKey, res: &Response, now: Instant) {
        let Some(mut c) = self.out_calls.remove(&key) else {
            return;
        };
        let keep = match res.common.cseq.method {
            Method::Invite => self.out_invite_response(&mut c, res, now).await,
            // BYE and CANCEL answers only end their transactions.
            _ => Keep::Yes,
        };
        match keep {
            Keep::Yes => {
                self.out_calls.insert(key, c);
            }
            Keep::End(outcome) => self.out_finish(c, outcome),
        }
    }

    async fn out_invite_response(&mut self, c: &mut OutCall, res: &Response, now: Instant) -> Keep {
        let code = res.code;
        match code {
            100 => Keep::Yes,
            101..=199 => {
                if c.phase == OutPhase::Calling {
                    c.phase = OutPhase::Ringing;
                    c.set_state(CallState::Ringing);
                    tracing::info!(
                        call = c.key.0,
                        code,
                        early_media = !res.body.is_empty(),
                        "ringing"
                    );
                }
                Keep::Yes
            }
            200..=299 => self.out_answered(c, res, now).await,
            _ => {
                // Every non-2xx final response is acknowledged in its transaction (same branch).
                let mut side = c.side.clone();
                side.to = res.common.to.clone();
                let ack = outbound::request(
                    &side,
                    Method::Ack,
                    &c.uri,
                    c.cseq,
                    c.invite_branch.clone(),
                    Vec::new(),
                );
                self.send(&ack.to_bytes(), c.dest).await;
                if c.phase == OutPhase::Answered {
                    // A late retransmission after the answer: nothing more to do.
                    return Keep::Yes;
                }
                if (code == 401 || code == 407) && !c.auth_tried {
                    let (challenge_name, answer_name) = if code == 401 {
                        ("WWW-Authenticate", "Authorization")
                    } else {
                        ("Proxy-Authenticate", "Proxy-Authorization")
                    };
                    let creds = c
                        .trunk
                        .as_ref()
                        .and_then(|t| self.setup.trunks.iter().find(|x| &x.name == t))
                        .and_then(|t| {
                            t.config
                                .credentials()
                                .map(|(u, p)| (u.to_owned(), p.to_owned()))
                        });
                    let challenge = res.header(challenge_name).and_then(Challenge::parse);
                    if let (Some((user, pass)), Some(ch)) = (creds, challenge) {
                        c.auth_tried = true;
                        c.cseq += 1;
                        let value = ch.answer(&user, &pass, "INVITE", &c.uri, &random_token());
                        tracing::info!(
                            call = c.key.0,
                            code,
                            "trunk challenged the INVITE: answering"
                        );
                        let header = Header {
                            name: answer_name.into(),
                            value,
                        };
                        self.send_invite(c, Some(header), now).await;
                        return Keep::Yes;
                    }
                }
                let outcome = match code {
                    486 | 600 => Outcome::Busy,
                    487 if c.phase == OutPhase::Cancelling => Outcome::NoAnswer,
                    _ => Outcome::Rejected { code },
                };
                tracing::info!(call = c.key.0, code, reason = %res.reason, "outbound call not answered");
                Keep::End(outcome)
            }
        }
    }

    async fn out_answered(&mut self, c: &mut OutCall, res: &Response, now: Instant) -> Keep {
        if c.phase == OutPhase::Answered {
            // The 2xx again: our ACK was lost.
            if let Some(ack) = c.ack.clone() {
                self.send(&ack, c.dest).await;
            }
            return Keep::Yes;
        }
        c.side.to = res.common.to.clone();
        if let Some(contact) = &res.common.contact {
            c.remote_target = contact.uri.to_string();
        }
        c.route = sip::header_values(&res.headers, "Record-Route")
            .into_iter()
            .rev()
            .map(str::to_owned)
            .collect();
        let ack = outbound::request(
            &c.side,
            Method::Ack,
            &c.remote_target,
            c.cseq,
            outbound::branch(&random_token()),
            c.route_headers(),
        )
        .to_bytes();
        self.send(&ack, c.dest).await;
        c.ack = Some(ack);
        c.phase = if c.phase == OutPhase::Cancelling {
            // The answer crossed our CANCEL: the call is up, and is ended at once.
            self.out_bye(c).await;
            return Keep::End(Outcome::NoAnswer);
        } else {
            OutPhase::Answered
        };
        let answer = match sdp::parse_offer(&res.body) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(call = c.key.0, error = %e, "answer without usable SDP: hanging up");
                self.out_bye(c).await;
                return Keep::End(Outcome::Failed {
                    reason: format!("answer without usable SDP: {e}"),
                });
            }
        };
        c.answer_sdp = sdp::answer(self.media_ip, c.rtp_port, &answer, media::rand_u64() >> 12);
        let Some(socket) = c.rtp.take() else {
            return Keep::Yes;
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(MEDIA_CHANNEL);
        let setup = MediaSetup {
            key: c.key,
            socket,
            remote: answer.remote,
            law: answer.law,
            dtmf_pt: answer.dtmf_pt,
            latch: self.setup.config.symmetric_rtp,
            prompts: self.setup.prompts.clone(),
            core: self.setup.inbox.clone(),
            amd: true,
            watch: self.media_watch(&c.side.call_id),
        };
        tokio::spawn(media::run(setup, cmd_rx, c.media_stop.clone()));
        let source = match &c.call.play {
            Playback::Text(text) => PromptSource::Text {
                voice: c.call.language.clone(),
                text: text.clone(),
            },
            Playback::Wav(path) => PromptSource::File(path.clone()),
        };
        let prompts = vec![source; c.call.repeat.max(1) as usize];
        if cmd_tx
            .try_send(MediaCmd::Play {
                id: MESSAGE,
                prompts,
            })
            .is_err()
        {
            tracing::warn!(
                call = c.key.0,
                "media task not keeping up: message not played"
            );
        }
        c.media = Some(cmd_tx);
        c.hangup_at = Some(now + c.call.max_duration);
        c.set_state(CallState::Answered);
        tracing::info!(call = c.key.0, remote = %answer.remote, "outbound call answered");
        self.record(RecordOp::Answered {
            key: c.key,
            at: crate::storage::now_ms(),
        });
        Keep::Yes
    }

    /// BYE in the dialog (the transaction resends it until answered).
    async fn out_bye(&mut self, c: &mut OutCall) {
        c.cseq += 1;
        let branch = outbound::branch(&random_token());
        let bye = outbound::request(
            &c.side,
            Method::Bye,
            &c.remote_target,
            c.cseq,
            branch.clone(),
            c.route_headers(),
        );
        let bytes = bye.to_bytes();
        self.send(&bytes, c.dest).await;
        self.client_txs.insert(
            format!("{branch}|{}", c.dest),
            ClientTx::new(bytes, self.timers, Instant::now()),
        );
    }

    /// CANCEL of the INVITE (same branch, same CSeq number).
    async fn out_cancel(&mut self, c: &mut OutCall, now: Instant) {
        let mut side = c.side.clone();
        side.to.params = Params::default();
        let cancel: OutRequest = outbound::request(
            &side,
            Method::Cancel,
            &c.uri,
            c.cseq,
            c.invite_branch.clone(),
            Vec::new(),
        );
        let bytes = cancel.to_bytes();
        self.send(&bytes, c.dest).await;
        self.client_txs.insert(
            format!("{}|{}|cancel", c.invite_branch, c.dest),
            ClientTx::new(bytes, self.timers, now),
        );
    }

    /// The outcome of an answered call that ends without a confirming digit.
    fn answered_outcome(c: &OutCall) -> Outcome {
        match c.digit {
            Some(digit) => Outcome::Confirmed { digit },
            None if c.machine => Outcome::AnsweringMachine,
            None => Outcome::Answered,
        }
    }

    pub(super) async fn out_tick(&mut self, now: Instant) {
        let keys: Vec<CallKey> = self.out_calls.keys().copied().collect();
        for key in keys {
            let Some(mut c) = self.out_calls.remove(&key) else {
                continue;
            };
            let end = match c.phase {
                OutPhase::Calling | OutPhase::Ringing if c.ring_deadline <= now => {
                    tracing::info!(
                        call = key.0,
                        "no answer within the ring timeout: cancelling"
                    );
                    self.out_cancel(&mut c, now).await;
                    c.phase = OutPhase::Cancelling;
                    // The 487 should follow; give up waiting after 64*T1.
                    c.ring_deadline = now + self.timers.t1 * 64;
                    None
                }
                OutPhase::Cancelling if c.ring_deadline <= now => Some(Outcome::NoAnswer),
                OutPhase::Answered
                    if c.hangup_at.is_some_and(|t| t <= now)
                        || c.wait_digit_until.is_some_and(|t| t <= now) =>
                {
                    self.out_bye(&mut c).await;
                    Some(Self::answered_outcome(&c))
                }
                _ => None,
            };
            match end {
                Some(outcome) => self.out_finish(c, outcome),
                None => {
                    self.out_calls.insert(key, c);
                }
            }
        }
    }

    /// A client transaction of an outbound call timed out (timer B of its INVITE: no response at all).
    pub(super) fn out_timed_out(&mut self, tx_key: &str) {
        let Some(key) = self
            .out_calls
            .values()
            .find(|c| c.invite_tx == tx_key && c.phase == OutPhase::Calling)
            .map(|c| c.key)
        else {
            return;
        };
        if let Some(c) = self.out_calls.remove(&key) {
            let reason = format!("no response from {} (timer B)", c.dest);
            self.out_finish(c, Outcome::Failed { reason });
        }
    }

    /// A digit from the callee (RFC 4733 or INFO). True when the call was an outbound one.
    pub(super) async fn out_digit(&mut self, key: CallKey, d: char) -> bool {
        let Some(mut c) = self.out_calls.remove(&key) else {
            return false;
        };
        c.digits.push(d);
        tracing::info!(call = key.0, digit = %d, "dtmf");
        if c.digit.is_none() && c.call.confirm_digits.contains(d) {
            c.digit = Some(d);
            c.progress.send_modify(|p| p.digit = Some(d));
            if let Some(m) = &c.media
                && m.try_send(MediaCmd::Stop).is_err()
            {
                tracing::debug!(call = key.0, "media gone");
            }
            self.out_bye(&mut c).await;
            self.out_finish(c, Outcome::Confirmed { digit: d });
            return true;
        }
        self.out_calls.insert(key, c);
        true
    }

    /// The message has been played `repeat` times.
    pub(super) async fn out_played(&mut self, key: CallKey, now: Instant) -> bool {
        let Some(mut c) = self.out_calls.remove(&key) else {
            return false;
        };
        if c.call.confirm_digits.is_empty() {
            self.out_bye(&mut c).await;
            let outcome = Self::answered_outcome(&c);
            self.out_finish(c, outcome);
        } else {
            c.wait_digit_until = Some(now + CONFIRM_WAIT);
            self.out_calls.insert(key, c);
        }
        true
    }

    pub(super) fn out_voice(&mut self, key: CallKey, verdict: Verdict) -> bool {
        let Some(c) = self.out_calls.get_mut(&key) else {
            return false;
        };
        tracing::info!(call = key.0, ?verdict, "answer detection");
        c.machine = verdict == Verdict::Machine;
        true
    }

    /// The callee hung up (BYE, answered 200 by the caller of this).
    pub(super) fn out_remote_bye(&mut self, key: CallKey) {
        if let Some(c) = self.out_calls.remove(&key) {
            tracing::info!(call = key.0, "callee hung up");
            let outcome = Self::answered_outcome(&c);
            self.out_finish(c, outcome);
        }
    }

    /// Ends a call from our side (the hub stopping): BYE if answered, CANCEL if ringing.
    pub(super) async fn out_abort(&mut self, key: CallKey, reason: &str) {
        let Some(mut c) = self.out_calls.remove(&key) else {
            return;
        };
        match c.phase {
            OutPhase::Answered => self.out_bye(&mut c).await,
            OutPhase::Calling | OutPhase::Ringing => self.out_cancel(&mut c, Instant::now()).await,
            OutPhase::Cancelling => {}
        }
        self.out_finish(
            c,
            Outcome::Failed {
                reason: reason.to_owned(),
            },
        );
    }

    /// Forgets an outbound call: media stopped, record closed, the waiting caller told.
    fn out_finish(&mut self, mut c: OutCall, outcome: Outcome) {
        c.media_stop.cancel();
        self.out_by_call_id.remove(&c.side.call_id);
        if c.phase != OutPhase::Answered {
            self.client_txs.remove(&c.invite_tx);
        }
        tracing::info!(call = c.key.0, outcome = ?outcome, "outbound call ended");
        self.out_record_end(c.key, &outcome, std::mem::take(&mut c.digits));
        c.set_state(CallState::Ended);
        if let Some(done) = c.done.take()
            && done.send(outcome).is_err()
        {
            tracing::debug!(
                call = c.key.0,
                "nobody waits for the outbound call's result"
            );
        }
    }

    /// Our SDP as the answer to a re-INVITE of an outbound call.
    pub(super) fn out_answer_sdp(&self, key: CallKey) -> Option<(String, String)> {
        self.out_calls
            .get(&key)
            .filter(|c| c.phase == OutPhase::Answered)
            .map(|c| {
                (
                    c.side.from.tag().unwrap_or_default().to_owned(),
                    c.answer_sdp.clone(),
                )
            })
    }
}

enum Keep {
    Yes,
    End(Outcome),
}
