//! The SMPP session: one task that owns the TCP connection to the SMS centre (an actor; the channel
//! talks to it through [`Command`]s). It connects and binds, then in one loop: takes submits while
//! fewer than `window` are unanswered, matches responses to requests by sequence number, times out
//! what is not answered, sends enquire_link when due, answers the centre's own requests, and passes
//! delivery receipts on, answering deliver_sm only once the consumer has acknowledged them. A lost
//! connection fails what was in flight and is re-established, with backoff after failed attempts.
//! Cancelling the token unbinds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pdu::{self, Bind, Body, Pdu, PduError, ShortMessage};
use super::{BindMode, SmppConfig, parse_receipt};
use crate::channels::ChannelError;
use crate::channels::receipt::IncomingReceipt;

/// Wait before the second attempt to connect; it doubles up to [`BACKOFF_MAX`]. The first attempt
/// after a lost connection is made at once.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A session that breaks sooner than this after its bind counts as a failed attempt (backoff), so a
/// centre that accepts binds and then drops the connection is not hammered.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// How long an unbind waits for its response when the channel closes.
const UNBIND_WAIT: Duration = Duration::from_secs(2);
/// deliver_sm_resp status asking the SMS centre to send a receipt again later.
const RETRY_LATER: u32 = 0x64;
/// generic_nack status for a request the hub does not take.
const INVALID_COMMAND: u32 = 0x03;
/// generic_nack status for a request whose body cannot be read.
const INVALID_LENGTH: u32 = 0x02;

/// What the channel asks of its session.
pub(crate) enum Command {
    /// One part of a message; answered with the SMS centre's message id.
    Submit {
        sm: ShortMessage,
        reply: oneshot::Sender<Result<String, ChannelError>>,
    },
    /// An enquire_link round trip (the healthcheck).
    Probe {
        reply: oneshot::Sender<Result<(), ChannelError>>,
    },
}

impl Command {
    fn fail(self, e: ChannelError) {
        // The caller may have gone (it was dropped); then nobody is waiting for the answer.
        match self {
            Command::Submit { reply, .. } => drop(reply.send(Err(e))),
            Command::Probe { reply } => drop(reply.send(Err(e))),
        }
    }
}

/// A request sent and not answered yet.
enum Waiting {
    Submit(oneshot::Sender<Result<String, ChannelError>>),
    Probe(oneshot::Sender<Result<(), ChannelError>>),
    KeepAlive,
}

struct Pending {
    waiting: Waiting,
    deadline: Instant,
}

/// How a bound session ended.
enum End {
    /// The channel closed: unbound (or tried to).
    Stopped,
    /// The connection broke; why.
    Lost(String),
}

/// What came off the wire.
enum Incoming {
    Pdu(Pdu),
    /// A frame of the right size whose body could not be read.
    Bad {
        command_id: u32,
        sequence: u32,
        error: PduError,
    },
}

/// One TCP connection: reads whole frames (cancel-safe: a partial frame stays in `buf`) and writes
/// PDUs within the timeout.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
    sequence: u32,
    timeout: Duration,
}

impl Conn {
    /// Sequence numbers run from 1 to 0x7FFFFFFF and wrap.
    fn next_sequence(&mut self) -> u32 {
        self.sequence = if self.sequence >= 0x7FFF_FFFF {
            1
        } else {
            self.sequence + 1
        };
        self.sequence
    }

    async fn read(&mut self) -> Result<Incoming, String> {
        loop {
            if let Some(len) = pdu::frame_len(&self.buf).map_err(|e| e.to_string())?
                && self.buf.len() >= len
            {
                let frame: Vec<u8> = self.buf.drain(..len).collect();
                return Ok(match Pdu::decode(&frame) {
                    Ok(p) => Incoming::Pdu(p),
                    Err(error) => {
                        let word = |i: usize| {
                            u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]])
                        };
                        Incoming::Bad {
                            command_id: word(4),
                            sequence: word(12),
                            error,
                        }
                    }
                });
            }
            self.buf.reserve(4096);
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) => return Err("the gateway closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn write(&mut self, pdu: &Pdu) -> Result<(), String> {
        let bytes = pdu.encode();
        match tokio::time::timeout(self.timeout, self.wr.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "could not write for {} s",
                self.timeout.as_secs_f64()
            )),
        }
    }

    async fn respond(&mut self, sequence: u32, status: u32, body: Body) -> Result<(), String> {
        self.write(&Pdu {
            status,
            sequence,
            body,
        })
        .await
    }
}

/// The session task and what it shares with its channel.
pub(crate) struct Session {
    config: Arc<SmppConfig>,
    gateway: String,
    timeout: Duration,
    commands: mpsc::Receiver<Command>,
    receipts: mpsc::Sender<IncomingReceipt>,
    receipts_taken: Arc<AtomicBool>,
    stop: CancellationToken,
    finished: watch::Sender<bool>,
}

impl Session {
    pub(crate) fn new(
        config: Arc<SmppConfig>,
        gateway: String,
        commands: mpsc::Receiver<Command>,
        receipts: mpsc::Sender<IncomingReceipt>,
        receipts_taken: Arc<AtomicBool>,
        stop: CancellationToken,
        finished: watch::Sender<bool>,
    ) -> Session {
        Session {
            timeout: crate::channels::timeout_of(config.timeout_seconds),
            config,
            gateway,
            commands,
            receipts,
            receipts_taken,
            stop,
            finished,
        }
    }

    fn unavailable(&self, reason: impl Into<String>) -> ChannelError {
        ChannelError::Unavailable {
            gateway: self.gateway.clone(),
            reason: reason.into(),
        }
    }

    fn timed_out(&self) -> ChannelError {
        ChannelError::Timeout {
            gateway: self.gateway.clone(),
            after: self.timeout,
        }
    }

    /// Runs until the channel closes: connect, serve, reconnect.
    pub(crate) async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut failed_attempts = 0u32;
        'session: loop {
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => break 'session,
                attempt = self.connect() => attempt,
            };
            let error = match attempt {
                Ok(conn) => {
                    let bound_at = Instant::now();
                    match self.serve(conn).await {
                        End::Stopped => break 'session,
                        End::Lost(reason) if bound_at.elapsed() >= STABLE_SESSION => {
                            tracing::warn!(gateway = %self.gateway, %reason, "smpp session lost; reconnecting");
                            // Straight back: the SMS centre may only have restarted.
                            backoff = BACKOFF_FIRST;
                            failed_attempts = 0;
                            continue 'session;
                        }
                        End::Lost(reason) => {
                            self.unavailable(format!("session lost right after the bind: {reason}"))
                        }
                    }
                }
                Err(e) => e,
            };
            failed_attempts += 1;
            tracing::warn!(gateway = %self.gateway, error = %error, attempt = failed_attempts, retry_in_s = backoff.as_secs(), "smpp bind failed");
            // Until the next attempt every request gets the reason at once.
            let retry_at = Instant::now() + backoff;
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => break 'session,
                    _ = tokio::time::sleep_until(retry_at) => break,
                    command = self.commands.recv() => match command {
                        Some(c) => c.fail(error.clone()),
                        None => break 'session,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.commands.close();
        while let Ok(c) = self.commands.try_recv() {
            c.fail(self.unavailable("the channel is closed"));
        }
        // Nobody may be waiting for the end (the channel was dropped without `close`).
        let _ = self.finished.send(true);
    }

    /// Connects and binds; the error says which step failed and why.
    async fn connect(&self) -> Result<Conn, ChannelError> {
        let c = &self.config;
        let stream =
            match tokio::time::timeout(self.timeout, TcpStream::connect((c.host.as_str(), c.port)))
                .await
            {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(e)) => return Err(self.unavailable(e.to_string())),
                Ok(Ok(s)) => s,
            };
        // Small PDUs, each a request someone waits for.
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            rd,
            wr,
            buf: Vec::with_capacity(4096),
            sequence: 0,
            timeout: self.timeout,
        };
        let sequence = conn.next_sequence();
        let bind = Bind {
            system_id: c.system_id.clone(),
            password: c.password.expose().to_owned(),
            system_type: c.system_type.clone(),
            interface_version: pdu::INTERFACE_VERSION,
            address_range: pdu::Address::default(),
        };
        let body = match c.bind_mode {
            BindMode::Transmitter => Body::BindTransmitter(bind),
            BindMode::Transceiver => Body::BindTransceiver(bind),
        };
        let lost = |reason: String| self.unavailable(format!("during bind: {reason}"));
        conn.write(&Pdu {
            status: 0,
            sequence,
            body,
        })
        .await
        .map_err(lost)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let incoming = match tokio::time::timeout_at(deadline, conn.read()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(read) => read.map_err(lost)?,
            };
            let Incoming::Pdu(p) = incoming else {
                continue;
            };
            match p.body {
                Body::BindResp { system_id, .. } if p.sequence == sequence && p.status == 0 => {
                    tracing::info!(gateway = %self.gateway, system_id = %c.system_id, smsc = %system_id, mode = %c.bind_mode, "smpp bound");
                    return Ok(conn);
                }
                Body::BindResp { .. } | Body::GenericNack if p.sequence == sequence => {
                    return Err(self.unavailable(format!(
                        "bind as {} `{}` refused: {}",
                        c.bind_mode,
                        c.system_id,
                        pdu::describe_status(p.status)
                    )));
                }
                Body::EnquireLink => conn
                    .respond(p.sequence, 0, Body::EnquireLinkResp)
                    .await
                    .map_err(lost)?,
                _ => {}
            }
        }
    }

    /// Serves a bound connection until it breaks or the channel closes.
    async fn serve(&mut self, mut conn: Conn) -> End {
        let mut pending: HashMap<u32, Pending> = HashMap::new();
        let mut submits = 0usize;
        let mut acks: FuturesUnordered<BoxFuture<'static, (u32, bool)>> = FuturesUnordered::new();
        let every = Duration::from_secs(self.config.enquire_link_seconds.max(1));
        let mut keepalive = tokio::time::interval_at(Instant::now() + every, every);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let window = self.config.window.max(1);
        let end = loop {
            let next_deadline = pending.values().map(|p| p.deadline).min();
            let step = tokio::select! {
                _ = self.stop.cancelled() => break self.unbind(&mut conn, &mut pending).await,
                read = conn.read() => match read {
                    Ok(incoming) => self.on_incoming(&mut conn, incoming, &mut pending, &mut submits, &mut acks).await,
                    Err(reason) => Err(reason),
                },
                command = self.commands.recv(), if submits < window => match command {
                    Some(c) => self.on_command(&mut conn, c, &mut pending, &mut submits).await,
                    // The channel was dropped.
                    None => break self.unbind(&mut conn, &mut pending).await,
                },
                _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                    self.expire(&mut pending, &mut submits)
                }
                _ = keepalive.tick() => {
                    if pending.values().any(|p| matches!(p.waiting, Waiting::KeepAlive)) {
                        Ok(())
                    } else {
                        let sequence = conn.next_sequence();
                        pending.insert(sequence, Pending { waiting: Waiting::KeepAlive, deadline: Instant::now() + self.timeout });
                        conn.respond(sequence, 0, Body::EnquireLink).await
                    }
                }
                Some((sequence, persisted)) = acks.next(), if !acks.is_empty() => {
                    let status = if persisted { 0 } else { RETRY_LATER };
                    conn.respond(sequence, status, Body::DeliverSmResp { message_id: String::new() }).await
                }
            };
            if let Err(reason) = step {
                break End::Lost(reason);
            }
        };
        let reason = match &end {
            End::Stopped => "the channel is closed".to_owned(),
            End::Lost(why) => format!("connection lost before the answer: {why}"),
        };
        for (_, p) in pending.drain() {
            match p.waiting {
                Waiting::Submit(reply) => drop(reply.send(Err(self.unavailable(reason.clone())))),
                Waiting::Probe(reply) => drop(reply.send(Err(self.unavailable(reason.clone())))),
                Waiting::KeepAlive => {}
            }
        }
        end
    }

    async fn on_command(
        &self,
        conn: &mut Conn,
        command: Command,
        pending: &mut HashMap<u32, Pending>,
        submits: &mut usize,
    ) -> Result<(), String> {
        let sequence = conn.next_sequence();
        let deadline = Instant::now() + self.timeout;
        let (body, waiting) = match command {
            // The caller gave up waiting: nothing to send.
            Command::Submit { reply, .. } if reply.is_closed() => return Ok(()),
            Command::Submit { sm, reply } => {
                *submits += 1;
                (Body::SubmitSm(sm), Waiting::Submit(reply))
            }
            Command::Probe { reply } => (Body::EnquireLink, Waiting::Probe(reply)),
        };
        pending.insert(sequence, Pending { waiting, deadline });
        conn.respond(sequence, 0, body).await
    }

    /// Answers what is past its deadline; an unanswered keep-alive means the link is dead.
    fn expire(
        &self,
        pending: &mut HashMap<u32, Pending>,
        submits: &mut usize,
    ) -> Result<(), String> {
        let now = Instant::now();
        let due: Vec<u32> = pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for sequence in due {
            let Some(p) = pending.remove(&sequence) else {
                continue;
            };
            match p.waiting {
                Waiting::Submit(reply) => {
                    *submits -= 1;
                    drop(reply.send(Err(self.timed_out())));
                }
                Waiting::Probe(reply) => drop(reply.send(Err(self.timed_out()))),
                Waiting::KeepAlive => {
                    return Err(format!(
                        "no answer to enquire_link within {} s",
                        self.timeout.as_secs_f64()
                    ));
                }
            }
        }
        Ok(())
    }

    async fn on_incoming(
        &self,
        conn: &mut Conn,
        incoming: Incoming,
        pending: &mut HashMap<u32, Pending>,
        submits: &mut usize,
        acks: &mut FuturesUnordered<BoxFuture<'static, (u32, bool)>>,
    ) -> Result<(), String> {
        let p = match incoming {
            Incoming::Pdu(p) => p,
            Incoming::Bad {
                command_id,
                sequence,
                error,
            } => {
                tracing::warn!(gateway = %self.gateway, %error, "unreadable pdu from the smpp gateway");
                if command_id & pdu::RESPONSE == 0 {
                    return conn
                        .respond(sequence, INVALID_LENGTH, Body::GenericNack)
                        .await;
                }
                // A response we cannot read: whoever waits for it learns so.
                self.answer(
                    pending,
                    submits,
                    sequence,
                    Err(self.unavailable(format!("unreadable answer: {error}"))),
                );
                return Ok(());
            }
        };
        match p.body {
            Body::SubmitSmResp { message_id } => {
                let result = if p.status == 0 {
                    Ok(message_id)
                } else {
                    Err(self.refused(p.status))
                };
                self.answer(pending, submits, p.sequence, result);
                Ok(())
            }
            Body::GenericNack => {
                self.answer(pending, submits, p.sequence, Err(self.refused(p.status)));
                Ok(())
            }
            Body::EnquireLinkResp => {
                if let Some(Pending { waiting, .. }) = pending.remove(&p.sequence) {
                    match waiting {
                        Waiting::Probe(reply) => drop(reply.send(Ok(()))),
                        Waiting::KeepAlive => {}
                        Waiting::Submit(reply) => {
                            // Not an answer to a submit: put it back.
                            pending.insert(
                                p.sequence,
                                Pending {
                                    waiting: Waiting::Submit(reply),
                                    deadline: Instant::now() + self.timeout,
                                },
                            );
                        }
                    }
                }
                Ok(())
            }
            Body::DeliverSm(sm) => self.on_deliver(conn, p.sequence, &sm, acks).await,
            Body::EnquireLink => conn.respond(p.sequence, 0, Body::EnquireLinkResp).await,
            Body::Unbind => {
                conn.respond(p.sequence, 0, Body::UnbindResp).await.ok();
                Err("the gateway unbound".into())
            }
            other => {
                let id = other.command_id();
                if id & pdu::RESPONSE == 0 {
                    tracing::debug!(gateway = %self.gateway, command = pdu::command_name(id), "smpp request not supported; answered with generic_nack");
                    conn.respond(p.sequence, INVALID_COMMAND, Body::GenericNack)
                        .await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Completes the submit waiting for `sequence` (late answers to timed-out submits are ignored).
    fn answer(
        &self,
        pending: &mut HashMap<u32, Pending>,
        submits: &mut usize,
        sequence: u32,
        result: Result<String, ChannelError>,
    ) {
        match pending.remove(&sequence).map(|p| p.waiting) {
            Some(Waiting::Submit(reply)) => {
                *submits -= 1;
                drop(reply.send(result));
            }
            Some(Waiting::Probe(reply)) => drop(reply.send(result.map(|_| ()))),
            Some(Waiting::KeepAlive) | None => {}
        }
    }

    /// A refusal: transient statuses (throttling, a full queue, a system error) are worth a retry.
    fn refused(&self, status: u32) -> ChannelError {
        let answer = pdu::describe_status(status);
        if pdu::status_is_transient(status) {
            self.unavailable(answer)
        } else {
            ChannelError::Rejected {
                gateway: self.gateway.clone(),
                answer,
            }
        }
    }

    async fn on_deliver(
        &self,
        conn: &mut Conn,
        sequence: u32,
        sm: &ShortMessage,
        acks: &mut FuturesUnordered<BoxFuture<'static, (u32, bool)>>,
    ) -> Result<(), String> {
        let ok = Body::DeliverSmResp {
            message_id: String::new(),
        };
        if !sm.is_receipt() {
            tracing::info!(gateway = %self.gateway, from = %sm.source.addr, "incoming sms ignored (the hub takes only delivery receipts)");
            return conn.respond(sequence, 0, ok).await;
        }
        let Some(receipt) = parse_receipt(sm) else {
            tracing::warn!(gateway = %self.gateway, from = %sm.source.addr, "delivery receipt without a message id ignored");
            return conn.respond(sequence, 0, ok).await;
        };
        if !self.receipts_taken.load(Ordering::SeqCst) {
            tracing::debug!(gateway = %self.gateway, message_id = %receipt.message_id, "delivery receipt not tracked by anyone");
            return conn.respond(sequence, 0, ok).await;
        }
        let (ack, acked) = oneshot::channel();
        let message_id = receipt.message_id.clone();
        match self.receipts.try_send(IncomingReceipt { receipt, ack }) {
            Ok(()) => {
                let wait = self.timeout;
                acks.push(Box::pin(async move {
                    let persisted = matches!(tokio::time::timeout(wait, acked).await, Ok(Ok(())));
                    (sequence, persisted)
                }));
                Ok(())
            }
            Err(e) => {
                let why = match e {
                    TrySendError::Full(_) => "the receipts queue is full",
                    TrySendError::Closed(_) => "nobody takes receipts any more",
                };
                tracing::warn!(gateway = %self.gateway, %message_id, reason = why, "delivery receipt deferred: the gateway will send it again");
                conn.respond(sequence, RETRY_LATER, ok).await
            }
        }
    }

    /// Unbinds politely, still matching answers to submits in flight for a moment.
    async fn unbind(&self, conn: &mut Conn, pending: &mut HashMap<u32, Pending>) -> End {
        let sequence = conn.next_sequence();
        if conn.respond(sequence, 0, Body::Unbind).await.is_err() {
            return End::Stopped;
        }
        let deadline = Instant::now() + UNBIND_WAIT.min(self.timeout);
        let mut submits = 0usize;
        while let Ok(Ok(incoming)) = tokio::time::timeout_at(deadline, conn.read()).await {
            match incoming {
                Incoming::Pdu(Pdu {
                    body: Body::UnbindResp,
                    ..
                }) => {
                    tracing::info!(gateway = %self.gateway, "smpp unbound");
                    break;
                }
                Incoming::Pdu(Pdu {
                    status,
                    sequence,
                    body: Body::SubmitSmResp { message_id },
                }) => {
                    let result = if status == 0 {
                        Ok(message_id)
                    } else {
                        Err(self.refused(status))
                    };
                    // `submits` no longer matters; the count only has to stay consistent.
                    submits += 1;
                    self.answer(pending, &mut submits, sequence, result);
                }
                _ => {}
            }
        }
        conn.wr.shutdown().await.ok();
        End::Stopped
    }
}
