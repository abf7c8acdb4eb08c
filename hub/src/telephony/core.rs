//! The call core: one task that owns every transaction, call and IVR walk. The SIP transport sends it
//! parsed messages, media tasks send digits and "prompt finished", caller look-ups send who is calling,
//! the handle sends API requests, all over one bounded channel; the core answers over the SIP socket,
//! commands media tasks, and reports call records to the recorder task. It never awaits the database.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TelephonyConfig;
use super::accounts::{Account, BindingOp, Registration};
use super::amd::Verdict;
use super::asks::{self, Answer, AskContext};
use super::caller::{self, CallerInfo};
use super::digest::Nonces;
use super::ivr::{IvrRun, Node, Step};
use super::media::{self, MEDIA_CHANNEL, MediaCmd, MediaSetup};
use super::outbound::Dial;
use super::prompts::{PromptSource, Prompts};
use super::recorder::RecordOp;
use super::sdp::{self, Offer};
use super::sip::{
    self, BRANCH_COOKIE, CSeq, Common, Message, Method, NameAddr, OutRequest, Params, Request,
    Response, Via,
};
use super::transaction::{ClientTx, Event, Kind, ServerTx, Timers};
use super::trunk::Trunk;
use crate::metrics::Metrics;
use crate::network::NetworkCache;
use crate::storage::Db;

mod registrar;
mod uac;

pub use registrar::TrunkStatus;

/// Messages the core's channel holds before senders wait (media) or drop and count (transport).
pub const CORE_CHANNEL: usize = 1024;
/// How long the core waits for a caller look-up before greeting the caller as unknown.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Methods we know but do not serve (405); anything else unknown is 501.
const KNOWN_METHODS: [&str; 7] = [
    "PRACK",
    "UPDATE",
    "SUBSCRIBE",
    "NOTIFY",
    "MESSAGE",
    "REFER",
    "PUBLISH",
];
const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER";

/// The core's name for a call (SIP Call-IDs are the caller's and may repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallKey(pub u64);

#[derive(Debug)]
pub enum MediaEvent {
    Dtmf(char),
    PlayDone(u64),
    /// The answering-machine detector's verdict (outbound calls).
    Voice(Verdict),
    /// No RTP from the peer for `rtp_timeout_s`: it vanished without a BYE.
    Timeout,
}

/// A call in progress, as `active_calls` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ActiveCall {
    pub sip_call_id: String,
    pub from: String,
    /// `ringing` or `answered`.
    pub state: String,
    pub digits: String,
}

#[derive(Debug)]
pub enum CoreMsg {
    Sip {
        msg: Box<Message>,
        from: SocketAddr,
    },
    Media {
        key: CallKey,
        event: MediaEvent,
    },
    Caller {
        key: CallKey,
        info: CallerInfo,
    },
    ActiveCalls {
        reply: oneshot::Sender<Vec<ActiveCall>>,
    },
    /// Place an outbound call.
    Dial(Box<Dial>),
    /// A SIP account was created (`upsert`) or deleted (`remove`).
    AccountChanged {
        upsert: Option<Account>,
        remove: Option<String>,
    },
    Registrations {
        reply: oneshot::Sender<Vec<Registration>>,
    },
    /// Trunk registration states, by trunk name.
    TrunkRegistrations {
        reply: oneshot::Sender<Vec<registrar::RegState>>,
    },
    /// A SIP TCP connection opened: responses and requests to `peer` go through `tx`.
    TcpOpen {
        peer: SocketAddr,
        tx: mpsc::Sender<Vec<u8>>,
    },
    TcpClosed {
        peer: SocketAddr,
    },
    /// The database's answer to an IVR walk's question.
    Answer {
        key: CallKey,
        answer: Answer,
    },
}

/// What the core is given at start.
pub struct CoreSetup {
    pub config: Arc<TelephonyConfig>,
    pub socket: Arc<UdpSocket>,
    pub prompts: Arc<Prompts>,
    pub db: Db,
    pub network: NetworkCache,
    pub metrics: Arc<Metrics>,
    pub recorder: mpsc::Sender<RecordOp>,
    /// The core's own sender, handed to media tasks and look-ups.
    pub inbox: mpsc::Sender<CoreMsg>,
    /// Trunks with their addresses resolved.
    pub trunks: Arc<Vec<Trunk>>,
    /// SIP accounts and live registrations, loaded at start.
    pub accounts: Vec<Account>,
    pub registrations: Vec<Registration>,
    /// Where accepted registrations are written.
    pub bindings: mpsc::Sender<BindingOp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// INVITE received, 180 sent, not answered yet.
    Ringing,
    /// 200 sent (and maybe acknowledged): media and IVR running.
    Answered,
}

struct Call {
    key: CallKey,
    invite: Request,
    invite_tx: String,
    source: SocketAddr,
    local_tag: String,
    from_number: String,
    offer: Offer,
    rtp: Option<UdpSocket>,
    rtp_port: u16,
    answer_sdp: String,
    phase: Phase,
    answer_at: Instant,
    caller: Option<CallerInfo>,
    media: Option<mpsc::Sender<MediaCmd>>,
    media_stop: CancellationToken,
    ivr: Option<IvrRun>,
    digits: String,
    queue: Option<String>,
    hangup_at: Option<Instant>,
}

struct Core {
    setup: CoreSetup,
    timers: Timers,
    nodes: BTreeMap<String, Node>,
    media_ip: IpAddr,
    sip_addr: SocketAddr,
    server_txs: HashMap<String, ServerTx>,
    client_txs: HashMap<String, ClientTx>,
    calls: HashMap<CallKey, Call>,
    by_call_id: HashMap<String, CallKey>,
    next_key: u64,
    next_rtp_port: u16,
    out_calls: HashMap<CallKey, uac::OutCall>,
    out_by_call_id: HashMap<String, CallKey>,
    trunk_regs: Vec<registrar::TrunkReg>,
    accounts: HashMap<String, Account>,
    bindings: Vec<Registration>,
    bindings_tx: mpsc::Sender<BindingOp>,
    nonces: Nonces,
    auth_failures: u64,
    auth_logged_at: Option<Instant>,
    tcp: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
}

/// Runs the core until `shutdown`; calls still up then get a BYE.
pub async fn run(
    setup: CoreSetup,
    mut inbox: mpsc::Receiver<CoreMsg>,
    shutdown: CancellationToken,
) {
    let sip_addr = setup
        .socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let media_ip = setup.config.media_ip(sip_addr.ip());
    let start = Instant::now();
    let trunk_regs = setup
        .trunks
        .iter()
        .filter(|t| t.config.register)
        .map(|t| registrar::TrunkReg::new(&t.name, start))
        .collect();
    let accounts = setup
        .accounts
        .iter()
        .map(|a| (a.username.clone(), a.clone()))
        .collect();
    let mut core = Core {
        out_calls: HashMap::new(),
        out_by_call_id: HashMap::new(),
        trunk_regs,
        accounts,
        bindings: setup.registrations.clone(),
        bindings_tx: setup.bindings.clone(),
        // A key per start: nonces of an earlier run are refused (phones simply register again).
        nonces: Nonces::new(random_token()),
        auth_failures: 0,
        auth_logged_at: None,
        tcp: HashMap::new(),
        timers: Timers::default(),
        nodes: setup.config.ivr.nodes(),
        media_ip,
        sip_addr,
        next_rtp_port: setup.config.rtp_port_min,
        setup,
        server_txs: HashMap::new(),
        client_txs: HashMap::new(),
        calls: HashMap::new(),
        by_call_id: HashMap::new(),
        next_key: 1,
    };
    loop {
        let wake = core.next_wakeup();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = inbox.recv() => match msg {
                Some(msg) => core.handle(msg).await,
                None => break,
            },
            _ = sleep_until(wake) => core.tick(Instant::now()).await,
        }
    }
    let keys: Vec<CallKey> = core.calls.keys().copied().collect();
    for key in keys {
        core.hang_up(key, "failed").await;
    }
    let keys: Vec<CallKey> = core.out_calls.keys().copied().collect();
    for key in keys {
        core.out_abort(key, "the hub stopped").await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn random_token() -> String {
    format!("{:016x}", media::rand_u64())
}

impl Core {
    fn next_wakeup(&self) -> Option<Instant> {
        let txs = self.server_txs.values().filter_map(ServerTx::next_wakeup);
        let clients = self.client_txs.values().filter_map(ClientTx::next_wakeup);
        let calls = self.calls.values().flat_map(|c| {
            let answer = (c.phase == Phase::Ringing && c.caller.is_some()).then_some(c.answer_at);
            [
                answer,
                c.ivr.as_ref().and_then(IvrRun::next_wakeup),
                c.hangup_at,
            ]
        });
        txs.chain(clients)
            .chain(calls.flatten())
            .chain(self.out_wakeups())
            .chain(self.reg_wakeups())
            .min()
    }

    /// `TCP` when a connection to `to` is open, else `UDP` (for our Via).
    fn transport_to(&self, to: SocketAddr) -> &'static str {
        if self.tcp.contains_key(&to) {
            "TCP"
        } else {
            "UDP"
        }
    }

    /// Sends over the TCP connection of `to` if one is open (responses reuse the request's
    /// connection, RFC 3261 18.2.2), else as a UDP datagram.
    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if let Some(conn) = self.tcp.get(&to) {
            if conn.try_send(bytes.to_vec()).is_err() {
                tracing::warn!(%to, "sip tcp connection not keeping up: message dropped");
            }
            return;
        }
        if let Err(e) = self.setup.socket.send_to(bytes, to).await {
            tracing::warn!(%to, error = %e, "sip send failed");
        }
    }

    fn record(&self, op: RecordOp) {
        if let Err(e) = self.setup.recorder.try_send(op) {
            self.setup
                .metrics
                .inc("hub_telephony_records_dropped_total", &[]);
            tracing::warn!(error = %e, "call record dropped: the recorder is behind");
        }
    }

    async fn handle(&mut self, msg: CoreMsg) {
        let now = Instant::now();
        match msg {
            CoreMsg::Sip { msg, from } => match *msg {
                Message::Request(req) => self.on_request(req, from, now).await,
                Message::Response(res) => self.on_response(&res, now).await,
            },
            CoreMsg::Dial(d) => self.dial(*d, now).await,
            CoreMsg::AccountChanged { upsert, remove } => self.account_changed(upsert, remove),
            CoreMsg::Registrations { reply } => {
                let _ = reply.send(self.live_registrations());
            }
            CoreMsg::TrunkRegistrations { reply } => {
                let list = self
                    .trunk_regs
                    .iter()
                    .map(|r| (r.trunk.clone(), r.status.clone(), r.registered_until))
                    .collect();
                let _ = reply.send(list);
            }
            CoreMsg::TcpOpen { peer, tx } => {
                self.tcp.insert(peer, tx);
            }
            CoreMsg::TcpClosed { peer } => {
                self.tcp.remove(&peer);
            }
            CoreMsg::Media { key, event } => match event {
                MediaEvent::Timeout => {
                    tracing::info!(call = key.0, "no media from the peer: hanging up");
                    if self.out_calls.contains_key(&key) {
                        self.out_abort(key, "media_timeout").await;
                    } else {
                        self.hang_up(key, "media_timeout").await;
                    }
                }
                MediaEvent::Voice(v) => {
                    self.out_voice(key, v);
                }
                MediaEvent::Dtmf(d) => {
                    if !self.out_digit(key, d).await {
                        self.on_digit(key, d, now).await;
                    }
                }
                MediaEvent::PlayDone(_) if self.out_played(key, now).await => {}
                MediaEvent::PlayDone(id) => {
                    let steps = match self.calls.get_mut(&key).and_then(|c| c.ivr.as_mut()) {
                        Some(ivr) => ivr.played(id, now),
                        None => return,
                    };
                    self.apply(key, steps).await;
                }
            },
            CoreMsg::Caller { key, info } => {
                if let Some(call) = self.calls.get_mut(&key) {
                    self.setup.metrics.inc(
                        "hub_telephony_callers_total",
                        &[(
                            "known",
                            if info.consumer_id.is_some() {
                                "yes"
                            } else {
                                "no"
                            },
                        )],
                    );
                    call.caller = Some(info.clone());
                    self.record(RecordOp::Caller { key, info });
                }
            }
            CoreMsg::ActiveCalls { reply } => {
                let calls = self
                    .calls
                    .values()
                    .map(|c| ActiveCall {
                        sip_call_id: c.invite.common.call_id.clone(),
                        from: c.from_number.clone(),
                        state: match c.phase {
                            Phase::Ringing => "ringing".into(),
                            Phase::Answered => "answered".into(),
                        },
                        digits: c.digits.clone(),
                    })
                    .chain(self.out_calls.values().map(|c| ActiveCall {
                        sip_call_id: String::new(),
                        from: c.from_number.clone(),
                        state: match c.phase {
                            uac::OutPhase::Answered => "answered".into(),
                            _ => "ringing".into(),
                        },
                        digits: c.digits.clone(),
                    }))
                    .collect();
                let _ = reply.send(calls);
            }
            CoreMsg::Answer { key, answer } => {
                let steps = match self.calls.get_mut(&key).and_then(|c| c.ivr.as_mut()) {
                    Some(ivr) => ivr.answer(answer, now),
                    None => return,
                };
                self.apply(key, steps).await;
            }
        }
    }

    async fn tick(&mut self, now: Instant) {
        let due: Vec<String> = self
            .server_txs
            .iter()
            .filter(|(_, t)| t.next_wakeup().is_some_and(|w| w <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(tx) = self.server_txs.get_mut(&key) else {
                continue;
            };
            match tx.poll(now) {
                Some(Event::Resend(bytes)) => {
                    // Reliable transports are not retransmitted over (RFC 3261 17.2.1).
                    if let Some(dest) = self.tx_dest(&key)
                        && !self.tcp.contains_key(&dest)
                    {
                        self.send(&bytes, dest).await;
                    }
                }
                Some(Event::TimedOut) => {
                    self.server_txs.remove(&key);
                    if let Some(k) = self.call_of_tx(&key) {
                        tracing::warn!(
                            call = k.0,
                            "no ACK for the final response (timer H): hanging up"
                        );
                        self.hang_up(k, "failed").await;
                    }
                }
                Some(Event::Terminated) => {
                    self.server_txs.remove(&key);
                }
                None => {}
            }
        }
        let due: Vec<String> = self
            .client_txs
            .iter()
            .filter(|(_, t)| t.next_wakeup().is_some_and(|w| w <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(tx) = self.client_txs.get_mut(&key) else {
                continue;
            };
            match tx.poll(now) {
                Some(Event::Resend(bytes)) => {
                    // Client transactions are keyed `BRANCH|DESTINATION[|cancel]`.
                    if let Some(dest) = key
                        .split('|')
                        .nth(1)
                        .and_then(|d| d.parse::<SocketAddr>().ok())
                        && !self.tcp.contains_key(&dest)
                    {
                        self.send(&bytes, dest).await;
                    }
                }
                Some(event) => {
                    self.client_txs.remove(&key);
                    if event == Event::TimedOut {
                        self.out_timed_out(&key);
                        self.reg_timed_out(&key, now);
                    }
                }
                None => {}
            }
        }
        self.out_tick(now).await;
        self.reg_tick(now).await;
        let keys: Vec<CallKey> = self.calls.keys().copied().collect();
        for key in keys {
            let Some(call) = self.calls.get_mut(&key) else {
                continue;
            };
            if call.hangup_at.is_some_and(|t| t <= now) {
                tracing::info!(call = key.0, "longest call duration reached: hanging up");
                self.hang_up(key, "completed").await;
                continue;
            }
            if call.phase == Phase::Ringing && call.caller.is_some() && call.answer_at <= now {
                self.answer(key, now).await;
                continue;
            }
            let steps = match call.ivr.as_mut() {
                Some(ivr) => ivr.tick(now),
                None => continue,
            };
            self.apply(key, steps).await;
        }
    }

    /// Where a server transaction's responses go: the source of its request.
    fn tx_dest(&self, tx_key: &str) -> Option<SocketAddr> {
        tx_key.rsplit('|').next().and_then(|d| d.parse().ok())
    }

    fn call_of_tx(&self, tx_key: &str) -> Option<CallKey> {
        self.calls
            .values()
            .find(|c| c.invite_tx == tx_key)
            .map(|c| c.key)
    }

    /// Sends a response within server transaction `tx_key` and remembers it for retransmissions.
    async fn respond(&mut self, tx_key: &str, res: &Response, to: SocketAddr, now: Instant) {
        let bytes = res.to_bytes();
        self.send(&bytes, to).await;
        if let Some(tx) = self.server_txs.get_mut(tx_key) {
            tx.respond(res.code, bytes, now);
        }
    }

    async fn on_request(&mut self, req: Request, from: SocketAddr, now: Instant) {
        let branch = req.branch_key();
        match req.method {
            Method::Ack => {
                let invite_tx = format!("{branch}|INVITE|{from}");
                let acked = match self.server_txs.get_mut(&invite_tx) {
                    Some(tx) => tx.ack(now),
                    // The ACK of a 2xx is a transaction of its own: matched by dialog.
                    None => match self
                        .by_call_id
                        .get(&req.common.call_id)
                        .and_then(|k| self.calls.get(k))
                    {
                        Some(call) => {
                            let key = call.invite_tx.clone();
                            self.server_txs.get_mut(&key).is_some_and(|tx| tx.ack(now))
                        }
                        None => {
                            let key = self
                                .out_by_call_id
                                .get(&req.common.call_id)
                                .and_then(|k| self.out_calls.get(k))
                                .and_then(|c| c.reinvite_tx.clone());
                            key.and_then(|k| self.server_txs.get_mut(&k))
                                .is_some_and(|tx| tx.ack(now))
                        }
                    },
                };
                tracing::debug!(call_id = %req.common.call_id, acked, "ack");
                return;
            }
            Method::Cancel => {
                self.on_cancel(req, &branch, from, now).await;
                return;
            }
            _ => {}
        }
        let tx_key = format!("{branch}|{}|{from}", req.method);
        if !self.server_txs.contains_key(&tx_key)
            && req.method != Method::Register
            && !self.out_by_call_id.contains_key(&req.common.call_id)
            && !self.by_call_id.contains_key(&req.common.call_id)
            && !self.source_allowed(from.ip())
        {
            self.setup
                .metrics
                .inc("hub_sip_refused_total", &[("reason", "source")]);
            tracing::info!(%from, method = %req.method, "request from an address that is neither a trunk nor a registered phone: 403");
            self.server_txs
                .insert(tx_key.clone(), ServerTx::new(Kind::NonInvite, self.timers));
            let res = Response::to_request(&req, 403, "Forbidden", Some(&random_token()));
            self.respond(&tx_key, &res, from, now).await;
            return;
        }
        if let Some(tx) = self.server_txs.get(&tx_key) {
            // A retransmission: answer with what we answered, or stay quiet until we do.
            if let Some(bytes) = tx.retransmission().map(<[u8]>::to_vec) {
                self.send(&bytes, from).await;
            }
            return;
        }
        let kind = if req.method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        self.server_txs
            .insert(tx_key.clone(), ServerTx::new(kind, self.timers));
        match &req.method {
            Method::Invite => self.on_invite(req, tx_key, from, now).await,
            Method::Bye => self.on_bye(req, &tx_key, from, now).await,
            Method::Options => {
                let res = Response::to_request(&req, 200, "OK", Some(&random_token()))
                    .with_header("Allow", ALLOW)
                    .with_header("Accept", "application/sdp")
                    .with_header("Server", "hub");
                self.respond(&tx_key, &res, from, now).await;
            }
            Method::Info => self.on_info(req, &tx_key, from, now).await,
            Method::Register => self.on_register(req, &tx_key, from, now).await,
            Method::Other(m) => {
                let (code, reason) = if KNOWN_METHODS.contains(&m.as_str()) {
                    (405, "Method Not Allowed")
                } else {
                    (501, "Not Implemented")
                };
                let res = Response::to_request(&req, code, reason, Some(&random_token()))
                    .with_header("Allow", ALLOW);
                self.respond(&tx_key, &res, from, now).await;
            }
            Method::Ack | Method::Cancel => {}
        }
    }

    async fn on_invite(&mut self, req: Request, tx_key: String, from: SocketAddr, now: Instant) {
        // A re-INVITE in an existing dialog: keep the media as it is and answer with the same SDP.
        if req.common.to.tag().is_some() {
            if let Some(key) = self.out_by_call_id.get(&req.common.call_id).copied() {
                let res = match self.out_answer_sdp(key) {
                    Some((tag, sdp)) => self
                        .ok_with_contact(&req, &tag)
                        .with_body("application/sdp", sdp.into_bytes()),
                    None => Response::to_request(&req, 491, "Request Pending", None),
                };
                if let Some(c) = self.out_calls.get_mut(&key) {
                    c.reinvite_tx = Some(tx_key.clone());
                }
                self.respond(&tx_key, &res, from, now).await;
                return;
            }
            let existing = self
                .by_call_id
                .get(&req.common.call_id)
                .and_then(|k| self.calls.get(k));
            let res = match existing {
                Some(call) if call.phase == Phase::Answered => {
                    let tag = call.local_tag.clone();
                    let sdp = call.answer_sdp.clone().into_bytes();
                    self.ok_with_contact(&req, &tag)
                        .with_body("application/sdp", sdp)
                }
                _ => Response::to_request(&req, 481, "Call/Transaction Does Not Exist", None),
            };
            self.respond(&tx_key, &res, from, now).await;
            return;
        }
        self.respond(
            &tx_key,
            &Response::to_request(&req, 100, "Trying", None),
            from,
            now,
        )
        .await;
        let local_tag = random_token();
        let reject =
            |code: u16, reason: &str| Response::to_request(&req, code, reason, Some(&local_tag));
        if self.calls.len() >= self.setup.config.max_calls {
            self.setup
                .metrics
                .inc("hub_telephony_calls_total", &[("outcome", "rejected")]);
            let res = reject(486, "Busy Here");
            self.respond(&tx_key, &res, from, now).await;
            return;
        }
        let offer = match req.common.content_type.as_deref() {
            Some("application/sdp") => sdp::parse_offer(&req.body),
            _ => Err(sip::SipError::Sdp("an INVITE without an SDP offer".into())),
        };
        let offer = match offer {
            Ok(o) => o,
            Err(e) => {
                tracing::info!(call_id = %req.common.call_id, error = %e, "invite rejected: 488");
                self.setup
                    .metrics
                    .inc("hub_telephony_calls_total", &[("outcome", "rejected")]);
                let warning = e.to_string().replace('"', "'");
                let res = reject(488, "Not Acceptable Here")
                    .with_header("Warning", format!("399 hub \"{warning}\""));
                self.respond(&tx_key, &res, from, now).await;
                return;
            }
        };
        let (rtp, rtp_port) = match self.bind_rtp() {
            Some(r) => r,
            None => {
                tracing::warn!("no free RTP port in the configured range: 503");
                self.setup
                    .metrics
                    .inc("hub_telephony_calls_total", &[("outcome", "rejected")]);
                let res = reject(503, "Service Unavailable").with_header("Retry-After", "5");
                self.respond(&tx_key, &res, from, now).await;
                return;
            }
        };
        let key = CallKey(self.next_key);
        self.next_key += 1;
        let user = req.common.from.uri.user.clone().unwrap_or_default();
        let number = caller::normalize(&user);
        let from_number = number
            .clone()
            .unwrap_or_else(|| req.common.from.uri.to_string());
        let to_number = req.uri.user.clone().unwrap_or_else(|| req.uri.to_string());
        let answer_sdp = sdp::answer(self.media_ip, rtp_port, &offer, media::rand_u64() >> 12);
        tracing::info!(call = key.0, call_id = %req.common.call_id, from = %from_number, to = %to_number, "incoming call");
        self.record(RecordOp::Start {
            key,
            sip_call_id: req.common.call_id.clone(),
            from: from_number.clone(),
            to: to_number,
            at: crate::storage::now_ms(),
        });
        let ringing = reject(180, "Ringing").with_header("Contact", self.contact());
        self.respond(&tx_key, &ringing, from, now).await;

        // Who is calling: looked up aside, the answer comes back as a message.
        let inbox = self.setup.inbox.clone();
        let (db, network) = (self.setup.db.clone(), self.setup.network.clone());
        let language = self.setup.config.language.clone();
        tokio::spawn(async move {
            let found = tokio::time::timeout(
                LOOKUP_TIMEOUT,
                caller::lookup(
                    &db,
                    &network,
                    number.as_deref(),
                    &language,
                    chrono::Utc::now(),
                ),
            )
            .await;
            let info = match found {
                Ok(Ok(info)) => info,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "caller look-up failed: greeting as unknown");
                    CallerInfo::unknown(&language)
                }
                Err(_) => {
                    tracing::warn!("caller look-up timed out: greeting as unknown");
                    CallerInfo::unknown(&language)
                }
            };
            if inbox.send(CoreMsg::Caller { key, info }).await.is_err() {
                tracing::debug!("caller look-up: core gone");
            }
        });

        self.by_call_id.insert(req.common.call_id.clone(), key);
        self.calls.insert(
            key,
            Call {
                key,
                invite_tx: tx_key,
                source: from,
                local_tag,
                from_number,
                offer,
                rtp: Some(rtp),
                rtp_port,
                answer_sdp,
                phase: Phase::Ringing,
                answer_at: now + Duration::from_millis(self.setup.config.answer_delay_ms),
                caller: None,
                media: None,
                media_stop: CancellationToken::new(),
                ivr: None,
                digits: String::new(),
                queue: None,
                hangup_at: None,
                invite: req,
            },
        );
    }

    fn contact(&self) -> String {
        format!(
            "<sip:hub@{}>",
            SocketAddr::new(self.media_ip, self.sip_addr.port())
        )
    }

    fn ok_with_contact(&self, req: &Request, tag: &str) -> Response {
        Response::to_request(req, 200, "OK", Some(tag))
            .with_header("Contact", self.contact())
            .with_header("Allow", ALLOW)
    }

    /// An even port of the range, starting after the last one handed out.
    fn bind_rtp(&mut self) -> Option<(UdpSocket, u16)> {
        let (min, max) = (
            self.setup.config.rtp_port_min,
            self.setup.config.rtp_port_max,
        );
        let count = u32::from(max.saturating_sub(min)) / 2 + 1;
        let bind_ip = self.sip_addr.ip();
        for _ in 0..count {
            let port = self.next_rtp_port;
            self.next_rtp_port = if port.saturating_add(2) > max {
                min
            } else {
                port + 2
            };
            if let Ok(s) = std::net::UdpSocket::bind(SocketAddr::new(bind_ip, port))
                && s.set_nonblocking(true).is_ok()
                && let Ok(s) = UdpSocket::from_std(s)
            {
                return Some((s, port));
            }
        }
        None
    }

    async fn answer(&mut self, key: CallKey, now: Instant) {
        let watch = match self.calls.get(&key) {
            Some(c) if c.rtp.is_some() => self.media_watch(&c.invite.common.call_id),
            _ => return,
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(socket) = call.rtp.take() else {
            return;
        };
        call.phase = Phase::Answered;
        let info = call
            .caller
            .clone()
            .unwrap_or_else(|| CallerInfo::unknown(&self.setup.config.language));
        let (cmd_tx, cmd_rx) = mpsc::channel(MEDIA_CHANNEL);
        call.media = Some(cmd_tx);
        if self.setup.config.max_call_seconds > 0 {
            call.hangup_at = Some(now + Duration::from_secs(self.setup.config.max_call_seconds));
        }
        let setup = MediaSetup {
            key,
            socket,
            remote: call.offer.remote,
            law: call.offer.law,
            dtmf_pt: call.offer.dtmf_pt,
            latch: self.setup.config.symmetric_rtp,
            prompts: self.setup.prompts.clone(),
            core: self.setup.inbox.clone(),
            amd: false,
            watch,
        };
        tokio::spawn(media::run(setup, cmd_rx, call.media_stop.clone()));
        let announcement = info.announcement.as_ref().map(|text| PromptSource::Text {
            voice: info.language.clone(),
            text: text.clone(),
        });
        let (ivr, steps) = IvrRun::start(
            &self.setup.config.ivr,
            self.nodes.clone(),
            info.mode,
            announcement,
            &info.language,
        );
        let mut ivr = ivr;
        ivr.offer_notify_when_over(info.outage_id);
        call.ivr = Some(ivr);
        let res = Response::to_request(&call.invite, 200, "OK", Some(&call.local_tag))
            .with_header(
                "Contact",
                format!(
                    "<sip:hub@{}>",
                    SocketAddr::new(self.media_ip, self.sip_addr.port())
                ),
            )
            .with_header("Allow", ALLOW)
            .with_body("application/sdp", call.answer_sdp.clone().into_bytes());
        let (tx_key, source) = (call.invite_tx.clone(), call.source);
        tracing::info!(call = key.0, mode = info.mode.as_str(), rtp = call.rtp_port, remote = %call.offer.remote, "answered");
        self.respond(&tx_key, &res, source, now).await;
        self.record(RecordOp::Answered {
            key,
            at: crate::storage::now_ms(),
        });
        self.setup
            .metrics
            .inc("hub_telephony_calls_answered_total", &[]);
        self.apply(key, steps).await;
    }

    async fn on_cancel(&mut self, req: Request, branch: &str, from: SocketAddr, now: Instant) {
        let cancel_tx = format!("{branch}|CANCEL|{from}");
        if let Some(tx) = self.server_txs.get(&cancel_tx) {
            if let Some(bytes) = tx.retransmission().map(<[u8]>::to_vec) {
                self.send(&bytes, from).await;
            }
            return;
        }
        self.server_txs.insert(
            cancel_tx.clone(),
            ServerTx::new(Kind::NonInvite, self.timers),
        );
        let invite_tx = format!("{branch}|INVITE|{from}");
        let Some(tx) = self.server_txs.get(&invite_tx) else {
            let res = Response::to_request(
                &req,
                481,
                "Call/Transaction Does Not Exist",
                Some(&random_token()),
            );
            self.respond(&cancel_tx, &res, from, now).await;
            return;
        };
        let ringing = !tx.completed();
        let call = self.call_of_tx(&invite_tx);
        let tag = call
            .and_then(|k| self.calls.get(&k))
            .map(|c| c.local_tag.clone());
        let ok = Response::to_request(&req, 200, "OK", tag.as_deref());
        self.respond(&cancel_tx, &ok, from, now).await;
        if !ringing {
            return;
        }
        if let Some(key) = call
            && let Some(c) = self.calls.get(&key)
        {
            let res =
                Response::to_request(&c.invite, 487, "Request Terminated", Some(&c.local_tag));
            self.respond(&invite_tx, &res, from, now).await;
            tracing::info!(call = key.0, "cancelled while ringing");
            self.finish(key, "cancelled");
        }
    }

    async fn on_bye(&mut self, req: Request, tx_key: &str, from: SocketAddr, now: Instant) {
        if let Some(key) = self.out_by_call_id.get(&req.common.call_id).copied() {
            let res = Response::to_request(&req, 200, "OK", None);
            self.respond(tx_key, &res, from, now).await;
            self.out_remote_bye(key);
            return;
        }
        let Some(key) = self.by_call_id.get(&req.common.call_id).copied() else {
            let res = Response::to_request(
                &req,
                481,
                "Call/Transaction Does Not Exist",
                Some(&random_token()),
            );
            self.respond(tx_key, &res, from, now).await;
            return;
        };
        let res = Response::to_request(&req, 200, "OK", None);
        self.respond(tx_key, &res, from, now).await;
        // A BYE before the answer (not allowed, but seen): the INVITE still needs its final response.
        if let Some(c) = self.calls.get(&key)
            && c.phase == Phase::Ringing
        {
            let res =
                Response::to_request(&c.invite, 487, "Request Terminated", Some(&c.local_tag));
            let (invite_tx, source) = (c.invite_tx.clone(), c.source);
            self.respond(&invite_tx, &res, source, now).await;
        }
        let outcome = match self.calls.get(&key).map(|c| (c.phase, c.queue.is_some())) {
            Some((Phase::Answered, true)) => "transferred",
            Some((Phase::Answered, false)) => "answered",
            _ => "cancelled",
        };
        tracing::info!(call = key.0, "caller hung up");
        self.finish(key, outcome);
    }

    async fn on_info(&mut self, req: Request, tx_key: &str, from: SocketAddr, now: Instant) {
        let key = self
            .by_call_id
            .get(&req.common.call_id)
            .or_else(|| self.out_by_call_id.get(&req.common.call_id))
            .copied();
        let res = match key {
            Some(_) => Response::to_request(&req, 200, "OK", None),
            None => Response::to_request(
                &req,
                481,
                "Call/Transaction Does Not Exist",
                Some(&random_token()),
            ),
        };
        self.respond(tx_key, &res, from, now).await;
        if let Some(key) = key
            && let Some(d) = info_digit(req.common.content_type.as_deref(), &req.body)
            && !self.out_digit(key, d).await
        {
            self.on_digit(key, d, now).await;
        }
    }

    async fn on_response(&mut self, res: &Response, now: Instant) {
        let Some(branch) = res.common.via.first().and_then(Via::branch) else {
            return;
        };
        let prefix = format!("{branch}|");
        // A CANCEL shares its INVITE's branch; its transaction is keyed with `|cancel`.
        let cancel = res.common.cseq.method == Method::Cancel;
        let key = self
            .client_txs
            .keys()
            .find(|k| k.starts_with(&prefix) && k.ends_with("|cancel") == cancel)
            .cloned();
        if let Some(key) = key
            && self
                .client_txs
                .get_mut(&key)
                .is_some_and(|tx| tx.response(res.code, now))
        {
            self.client_txs.remove(&key);
        }
        if let Some(key) = self.out_by_call_id.get(&res.common.call_id).copied() {
            self.out_response(key, res, now).await;
        } else {
            self.reg_response(res, now).await;
        }
    }

    async fn on_digit(&mut self, key: CallKey, d: char, now: Instant) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.digits.push(d);
        tracing::info!(call = key.0, digit = %d, "dtmf");
        let steps = match call.ivr.as_mut() {
            Some(ivr) => ivr.digit(d, now),
            None => return,
        };
        self.apply(key, steps).await;
    }

    async fn apply(&mut self, key: CallKey, steps: Vec<Step>) {
        for step in steps {
            let Some(call) = self.calls.get_mut(&key) else {
                return;
            };
            let cmd = match step {
                Step::Play { id, prompts } => MediaCmd::Play { id, prompts },
                Step::Stop => MediaCmd::Stop,
                Step::Queue(q) => {
                    tracing::info!(call = key.0, queue = %q, "caller chose a queue");
                    call.queue = Some(q);
                    continue;
                }
                Step::Ask(ask) => {
                    self.ask(key, ask);
                    continue;
                }
                Step::Hangup => {
                    let outcome = if call.queue.is_some() {
                        "transferred"
                    } else {
                        "completed"
                    };
                    self.hang_up(key, outcome).await;
                    return;
                }
            };
            if let Some(media) = &call.media
                && media.try_send(cmd).is_err()
            {
                tracing::warn!(call = key.0, "media task not keeping up: command dropped");
            }
        }
    }

    /// The media timeout, the recording (`record`) and the counters of a call's media task.
    fn media_watch(&self, sip_call_id: &str) -> media::MediaWatch {
        let config = &self.setup.config;
        media::MediaWatch {
            rtp_timeout: (config.rtp_timeout_s > 0)
                .then(|| Duration::from_secs(config.rtp_timeout_s)),
            recording: config.record.then(|| {
                super::recording::CallRecording::start(
                    super::recording::path_for(
                        &config.recordings_dir,
                        sip_call_id,
                        chrono::Utc::now(),
                    ),
                    self.setup.db.clone(),
                    sip_call_id.to_owned(),
                    self.setup.metrics.clone(),
                )
            }),
            metrics: Some(self.setup.metrics.clone()),
        }
    }

    /// Has the IVR's question answered aside; the answer comes back as `CoreMsg::Answer`.
    fn ask(&self, key: CallKey, ask: asks::Ask) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let info = call.caller.as_ref();
        let ctx = AskContext {
            sip_call_id: call.invite.common.call_id.clone(),
            from_number: call
                .from_number
                .starts_with('+')
                .then(|| call.from_number.clone()),
            tenant_id: info.and_then(|i| i.tenant_id),
            consumer_id: info.and_then(|i| i.consumer_id),
            language: info
                .map(|i| i.language.clone())
                .unwrap_or_else(|| self.setup.config.language.clone()),
        };
        tracing::info!(call = key.0, ?ask, "ivr asks");
        let (db, inbox) = (self.setup.db.clone(), self.setup.inbox.clone());
        tokio::spawn(async move {
            let answer = asks::serve(&db, ask, &ctx).await;
            if inbox.send(CoreMsg::Answer { key, answer }).await.is_err() {
                tracing::debug!("ivr answer: core gone");
            }
        });
    }

    /// Ends a call from our side: BYE if answered (487 is the caller's business while ringing).
    async fn hang_up(&mut self, key: CallKey, outcome: &str) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.phase == Phase::Ringing {
            let res = Response::to_request(
                &call.invite,
                480,
                "Temporarily Unavailable",
                Some(&call.local_tag),
            );
            let (tx, src) = (call.invite_tx.clone(), call.source);
            self.respond(&tx, &res, src, Instant::now()).await;
            self.finish(key, "failed");
            return;
        }
        let bye = self.bye(call);
        let dest = call.source;
        let bytes = bye.to_bytes();
        self.send(&bytes, dest).await;
        let branch = bye.common.via[0].branch().unwrap_or_default().to_owned();
        self.client_txs.insert(
            format!("{branch}|{dest}"),
            ClientTx::new(bytes, self.timers, Instant::now()),
        );
        tracing::info!(call = key.0, outcome, "hub hung up");
        self.finish(key, outcome);
    }

    fn bye(&self, call: &Call) -> OutRequest {
        let inv = &call.invite.common;
        let mut from = inv.to.clone();
        from.params.set("tag", Some(call.local_tag.clone()));
        let target = inv
            .contact
            .as_ref()
            .map(|c| c.uri.to_string())
            .unwrap_or_else(|| inv.from.uri.to_string());
        let mut params = Params::default();
        params.set("branch", Some(format!("{BRANCH_COOKIE}{}", random_token())));
        params.set("rport", None);
        OutRequest {
            method: Method::Bye,
            uri: target,
            common: Common {
                via: vec![Via {
                    transport: self.transport_to(call.source).into(),
                    host: self.media_ip.to_string(),
                    port: Some(self.sip_addr.port()),
                    params,
                }],
                from,
                to: NameAddr {
                    display: inv.from.display.clone(),
                    uri: inv.from.uri.clone(),
                    params: inv.from.params.clone(),
                },
                call_id: inv.call_id.clone(),
                cseq: CSeq {
                    seq: 1,
                    method: Method::Bye,
                },
                max_forwards: Some(70),
                contact: None,
                content_type: None,
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Forgets a call: media stopped, record closed.
    fn finish(&mut self, key: CallKey, outcome: &str) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        call.media_stop.cancel();
        if self.by_call_id.get(&call.invite.common.call_id) == Some(&key) {
            self.by_call_id.remove(&call.invite.common.call_id);
        }
        self.setup
            .metrics
            .inc("hub_telephony_calls_total", &[("outcome", outcome)]);
        self.record(RecordOp::End {
            key,
            at: crate::storage::now_ms(),
            outcome: outcome.to_owned(),
            digits: call.digits,
            queue: call.queue,
        });
    }
}

/// The digit of a SIP INFO: `application/dtmf-relay` (`Signal=5`) or `application/dtmf` (`5`).
pub fn info_digit(content_type: Option<&str>, body: &[u8]) -> Option<char> {
    let text = std::str::from_utf8(body).ok()?;
    let value = match content_type? {
        "application/dtmf-relay" => text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.trim().eq_ignore_ascii_case("signal").then(|| v.trim())
        })?,
        "application/dtmf" => text.trim(),
        _ => return None,
    };
    let mut chars = value.chars();
    let d = chars.next()?.to_ascii_uppercase();
    (chars.next().is_none() && "0123456789*#ABCD".contains(d)).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_bodies_give_digits() {
        assert_eq!(
            info_digit(
                Some("application/dtmf-relay"),
                b"Signal=5\r\nDuration=160\r\n"
            ),
            Some('5')
        );
        assert_eq!(
            info_digit(Some("application/dtmf-relay"), b"signal = #\r\n"),
            Some('#')
        );
        assert_eq!(info_digit(Some("application/dtmf"), b"7"), Some('7'));
        assert_eq!(
            info_digit(Some("application/dtmf-relay"), b"Signal=55"),
            None
        );
        assert_eq!(info_digit(Some("text/plain"), b"5"), None);
        assert_eq!(info_digit(None, b"5"), None);
    }
}
