//! The `smpp` channel: SMS straight to an operator's SMS centre over SMPP 3.4, with a client of our
//! own ([`pdu`] is the codec, [`session`] the connection). One session per channel, bound as a
//! transmitter or a transceiver, kept alive with enquire_link and re-established with backoff; up to
//! `window` submit_sm in flight, matched to their responses by sequence number; at most `rate_per_s`
//! of them a second. Texts go as GSM 03.38 or UCS-2, cut into concatenated parts when long
//! ([`text`]). `send` resolves once every part is accepted, with the SMS centre's message ids; the
//! delivery receipts that follow come out of [`Channel::take_receipts`].

pub mod pdu;
pub(crate) mod session;
pub mod testing;
pub mod text;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::receipt::{RECEIPTS_CAPACITY, Receipt, ReceiptState, Receipts};
use super::{Channel, ChannelError, Delivery, OutboundMessage, default_timeout_seconds, shorten};
use crate::Secret;
use pdu::{Address, ShortMessage};
use session::{Command, Session};

/// Requests from the channel to its session that may wait for it; callers beyond that wait their turn.
const COMMANDS_CAPACITY: usize = 256;

/// How the hub binds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// Submit only: the SMS centre sends no delivery receipts on this session.
    Transmitter,
    /// Submit and receive delivery receipts on one session.
    #[default]
    Transceiver,
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::Transmitter => "transmitter",
            BindMode::Transceiver => "transceiver",
        })
    }
}

pub fn default_port() -> u16 {
    2775
}

pub fn default_window() -> usize {
    10
}

pub fn default_enquire_link_seconds() -> u64 {
    30
}

/// `[channels.NAME] type = "smpp"`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmppConfig {
    /// The SMS centre's host name or address.
    pub host: String,
    /// Its SMPP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// `transmitter` (submit only) or `transceiver` (submit and receive delivery receipts).
    #[serde(default)]
    pub bind_mode: BindMode,
    /// The account's system_id (at most 15 characters).
    pub system_id: String,
    /// The account's password (at most 8 characters); never logged.
    pub password: Secret,
    /// system_type of the bind, if the SMS centre wants one (at most 12 characters).
    #[serde(default)]
    pub system_type: String,
    /// The sender: a registered name (`TEPLO`, at most 11 characters), a short code or `+7...`;
    /// empty: the SMS centre fills it in.
    #[serde(default)]
    pub source_addr: String,
    /// TON of `source_addr`; by default 5 (alphanumeric) for a name, 1 (international) for `+...`,
    /// 0 (unknown) for other digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addr_ton: Option<u8>,
    /// NPI of `source_addr`; by default 0 for a name, 1 (ISDN) for digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_addr_npi: Option<u8>,
    /// submit_sm sent and not yet answered, at most.
    #[serde(default = "default_window")]
    pub window: usize,
    /// submit_sm per second at most (each part of a long text is one); 0: no limit.
    #[serde(default)]
    pub rate_per_s: f64,
    /// Seconds between enquire_link keep-alives.
    #[serde(default = "default_enquire_link_seconds")]
    pub enquire_link_seconds: u64,
    /// Seconds to wait for the connection and for each answer (bind, submit_sm, enquire_link).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

impl SmppConfig {
    /// A configuration with every optional key at its default.
    pub fn new(host: &str, port: u16, system_id: &str, password: &str) -> SmppConfig {
        SmppConfig {
            host: host.into(),
            port,
            bind_mode: BindMode::default(),
            system_id: system_id.into(),
            password: Secret::new(password),
            system_type: String::new(),
            source_addr: String::new(),
            source_addr_ton: None,
            source_addr_npi: None,
            window: default_window(),
            rate_per_s: 0.0,
            enquire_link_seconds: default_enquire_link_seconds(),
            timeout_seconds: default_timeout_seconds(),
        }
    }

    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |key: &str, reason: &str| Err(ChannelError::Config(format!("{key}: {reason}")));
        let printable = |s: &str| s.chars().all(|c| c.is_ascii_graphic() || c == ' ');
        if self.host.trim().is_empty() {
            return bad("host", "must not be empty");
        }
        if self.system_id.is_empty() || self.system_id.len() > 15 || !printable(&self.system_id) {
            return bad("system_id", "1 to 15 ASCII characters");
        }
        // The value is not echoed: it is a secret.
        let password = self.password.expose();
        if password.len() > 8 || !printable(password) {
            return bad("password", "at most 8 ASCII characters in SMPP 3.4");
        }
        if self.system_type.len() > 12 || !printable(&self.system_type) {
            return bad("system_type", "at most 12 ASCII characters");
        }
        let source = self.source_address();
        let longest = if source.ton == 5 { 11 } else { 20 };
        if source.addr.chars().count() > longest || !printable(&source.addr) {
            return bad(
                "source_addr",
                "a name of at most 11 ASCII characters, or up to 20 digits",
            );
        }
        if !(1..=1000).contains(&self.window) {
            return bad("window", "1 to 1000 submit_sm in flight");
        }
        if !self.rate_per_s.is_finite() || self.rate_per_s < 0.0 {
            return bad("rate_per_s", "submit_sm per second, 0 for no limit");
        }
        if self.enquire_link_seconds == 0 {
            return bad("enquire_link_seconds", "at least 1");
        }
        Ok(())
    }

    /// `source_addr` with its TON and NPI, given or guessed from its form.
    pub fn source_address(&self) -> Address {
        let given = self.source_addr.trim();
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (ton, npi, addr) = match given.strip_prefix('+') {
            _ if given.is_empty() => (0, 0, given),
            Some(d) if digits(d) => (1, 1, d),
            _ if digits(given) => (0, 1, given),
            _ => (5, 0, given),
        };
        Address {
            ton: self.source_addr_ton.unwrap_or(ton),
            npi: self.source_addr_npi.unwrap_or(npi),
            addr: addr.to_owned(),
        }
    }
}

/// A phone number as a destination address: `+7900...` is international E.164, other digits are
/// left to the SMS centre (TON unknown).
pub fn dest_address(phone: &str) -> Address {
    match phone.strip_prefix('+') {
        Some(digits) => Address {
            ton: 1,
            npi: 1,
            addr: digits.to_owned(),
        },
        None => Address {
            ton: 0,
            npi: 1,
            addr: phone.to_owned(),
        },
    }
}

/// Spaces submit_sm `1 / rate` apart (no bursts): the SMS centre counts PDUs, not messages.
struct Pace {
    every: Option<Duration>,
    next: Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(rate_per_s: f64) -> Pace {
        let every = (rate_per_s > 0.0).then(|| Duration::from_secs_f64(1.0 / rate_per_s));
        Pace {
            every,
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(every) = self.every else {
            return;
        };
        let at = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + every;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Sends SMS through one SMS centre. The session starts with the first use (a send, a healthcheck or
/// taking the receipts) and ends with [`Channel::close`] or when the channel is dropped.
pub struct SmppChannel {
    gateway: String,
    source: Address,
    commands: mpsc::Sender<Command>,
    /// The session until it is started.
    session: Mutex<Option<Session>>,
    receipts: Mutex<Option<Receipts>>,
    receipts_taken: Arc<AtomicBool>,
    stop: CancellationToken,
    finished: watch::Receiver<bool>,
    pace: Pace,
    reference: AtomicU8,
    timeout: Duration,
}

impl SmppChannel {
    pub fn new(config: SmppConfig) -> Result<Self, ChannelError> {
        config.validate()?;
        let gateway = format!("smpp gateway {}:{}", config.host, config.port);
        let (commands, commands_rx) = mpsc::channel(COMMANDS_CAPACITY);
        let (receipts_tx, receipts_rx) = mpsc::channel(RECEIPTS_CAPACITY);
        let (finished_tx, finished) = watch::channel(false);
        let receipts_taken = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let timeout = super::timeout_of(config.timeout_seconds);
        // Concatenation references differ from one start to the next, so that a phone does not join
        // parts of two messages sent just before and after a restart.
        let reference = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u8)
            .unwrap_or_default();
        Ok(Self {
            source: config.source_address(),
            pace: Pace::new(config.rate_per_s),
            session: Mutex::new(Some(Session::new(
                Arc::new(config),
                gateway.clone(),
                commands_rx,
                receipts_tx,
                receipts_taken.clone(),
                stop.clone(),
                finished_tx,
            ))),
            receipts: Mutex::new(Some(receipts_rx)),
            gateway,
            commands,
            receipts_taken,
            stop,
            finished,
            reference: AtomicU8::new(reference),
            timeout,
        })
    }

    /// Starts the session task if it is not running yet (and there is a runtime to run it on).
    fn start(&self) {
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        if session.is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && let Some(s) = session.take()
        {
            runtime.spawn(s.run());
        }
    }

    fn closed(&self) -> ChannelError {
        ChannelError::Unavailable {
            gateway: self.gateway.clone(),
            reason: "the channel is closed".into(),
        }
    }

    /// Submits the parts of one message; their message ids in order.
    async fn submit(&self, dest: Address, text: &str) -> Result<Vec<String>, ChannelError> {
        let reference = self.reference.fetch_add(1, Ordering::Relaxed);
        let parts = text::split(text, reference).map_err(|e| ChannelError::Rejected {
            gateway: self.gateway.clone(),
            answer: format!("not submitted: {e}"),
        })?;
        self.start();
        let total = parts.len();
        let mut replies = Vec::with_capacity(total);
        for part in parts {
            self.pace.wait().await;
            let (reply, answer) = oneshot::channel();
            let sm = ShortMessage {
                source: self.source.clone(),
                dest: dest.clone(),
                esm_class: if part.udh { pdu::ESM_UDHI } else { 0 },
                registered_delivery: 1,
                data_coding: part.data_coding,
                short_message: part.payload,
                ..ShortMessage::default()
            };
            self.commands
                .send(Command::Submit { sm, reply })
                .await
                .map_err(|_| self.closed())?;
            replies.push(answer);
        }
        let mut ids = Vec::with_capacity(total);
        for (i, answer) in replies.into_iter().enumerate() {
            match answer.await {
                Ok(Ok(id)) => ids.push(id),
                Ok(Err(e)) if total > 1 => return Err(in_part(e, i + 1, total)),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.closed()),
            }
        }
        Ok(ids)
    }
}

/// Names the part of a long message that failed.
fn in_part(e: ChannelError, part: usize, total: usize) -> ChannelError {
    let which = format!("part {part} of {total}");
    match e {
        ChannelError::Rejected { gateway, answer } => ChannelError::Rejected {
            gateway,
            answer: format!("{which}: {answer}"),
        },
        ChannelError::Unavailable { gateway, reason } => ChannelError::Unavailable {
            gateway,
            reason: format!("{which}: {reason}"),
        },
        other => other,
    }
}

impl Drop for SmppChannel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Channel for SmppChannel {
    async fn send(&self, msg: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let phone = super::http_sms::normalize_phone(&msg.to)?;
        let ids = self.submit(dest_address(&phone), &msg.text).await?;
        let receipt = match ids.as_slice() {
            [one] => format!("message id {one}"),
            many => format!("{} parts, message ids {}", many.len(), many.join(", ")),
        };
        Ok(Delivery {
            receipt: shorten(&receipt),
            message_ids: ids,
        })
    }

    /// Binds (if not bound yet) and exchanges an enquire_link.
    async fn healthcheck(&self) -> Result<(), ChannelError> {
        self.start();
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Probe { reply })
            .await
            .map_err(|_| self.closed())?;
        answer.await.map_err(|_| self.closed())?
    }

    fn take_receipts(&self) -> Option<Receipts> {
        let taken = self
            .receipts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        self.receipts_taken.store(true, Ordering::SeqCst);
        // Receipts waiting at the SMS centre come only once the hub is bound.
        self.start();
        Some(taken)
    }

    /// Unbinds and waits (up to the timeout) for the session to end.
    async fn close(&self) {
        self.stop.cancel();
        let started = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if !started {
            return;
        }
        let mut finished = self.finished.clone();
        let wait = finished.wait_for(|done| *done);
        if tokio::time::timeout(self.timeout + Duration::from_secs(1), wait)
            .await
            .is_err()
        {
            tracing::warn!(gateway = %self.gateway, "smpp session did not end in time");
        }
    }
}

/// The receipt in a deliver_sm, if it is one: the TLVs `receipted_message_id` and `message_state`
/// when the SMS centre sends them, else the text (`id:... sub:... dlvrd:... submit date:... done
/// date:... stat:DELIVRD err:000 text:...`, the appendix B format every SMS centre imitates).
pub fn parse_receipt(sm: &ShortMessage) -> Option<Receipt> {
    if !sm.is_receipt() {
        return None;
    }
    let mut body = sm.short_message.as_slice();
    if sm.esm_class & pdu::ESM_UDHI != 0 {
        let udh_len = usize::from(*body.first()?) + 1;
        body = body.get(udh_len..)?;
    }
    let text: String = if sm.data_coding == text::DC_UCS2 {
        let units: Vec<u16> = body
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        // ASCII in practice; anything else read as Latin-1 rather than refused.
        body.iter().map(|b| char::from(*b)).collect()
    };
    let tlv_text = |tag| {
        sm.tlv(tag).map(|v| {
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            String::from_utf8_lossy(&v[..end]).trim().to_owned()
        })
    };
    let message_id = tlv_text(pdu::TLV_RECEIPTED_MESSAGE_ID)
        .filter(|id| !id.is_empty())
        .or_else(|| field(&text, "id").map(str::to_owned))?;
    let stat = field(&text, "stat").map(str::to_ascii_uppercase);
    let state = match sm.tlv(pdu::TLV_MESSAGE_STATE).and_then(|v| v.first()) {
        Some(2) => ReceiptState::Delivered,
        Some(1 | 6) => ReceiptState::Pending,
        Some(_) => ReceiptState::Failed,
        None => match stat.as_deref() {
            Some("DELIVRD") => ReceiptState::Delivered,
            Some("ENROUTE" | "ACCEPTD") | None => ReceiptState::Pending,
            Some(_) => ReceiptState::Failed,
        },
    };
    let mut detail = Vec::new();
    if let Some(stat) = &stat {
        detail.push(format!("stat:{stat}"));
    }
    if let Some(err) = field(&text, "err") {
        detail.push(format!("err:{err}"));
    }
    if let Some(&[network, hi, lo]) = sm.tlv(pdu::TLV_NETWORK_ERROR_CODE) {
        let kind = match network {
            1 => "ANSI-136",
            2 => "IS-95",
            3 => "GSM",
            _ => "network",
        };
        detail.push(format!("{kind} error {}", u16::from_be_bytes([hi, lo])));
    }
    if detail.is_empty() {
        detail.push(text.clone());
    }
    Some(Receipt {
        message_id,
        state,
        detail: shorten(&detail.join(" ")),
        to: sm.source.addr.clone(),
    })
}

/// The value after `key:` in a receipt's text, up to the next space; the key is matched without
/// regard to case and only at the start of a word (`id:` is not the end of `msgid:`).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let lower = text.to_ascii_lowercase();
    let needle = format!("{key}:");
    let mut from = 0;
    while let Some(found) = lower[from..].find(&needle) {
        let at = from + found;
        if at == 0 || lower[..at].ends_with(char::is_whitespace) {
            let rest = &text[at + needle.len()..];
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let value = &rest[..end];
            return (!value.is_empty()).then_some(value);
        }
        from = at + needle.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use pdu::{ESM_DELIVERY_RECEIPT, Tlv};

    fn receipt_sm(text: &str) -> ShortMessage {
        ShortMessage {
            source: Address {
                ton: 1,
                npi: 1,
                addr: "79001112233".into(),
            },
            esm_class: ESM_DELIVERY_RECEIPT,
            short_message: text.as_bytes().to_vec(),
            ..ShortMessage::default()
        }
    }

    #[test]
    fn a_receipt_text_is_read() {
        let r = parse_receipt(&receipt_sm(
            "id:0A1B2C sub:001 dlvrd:001 submit date:2611231200 done date:2611231201 stat:DELIVRD err:000 text:Давление",
        ))
        .unwrap();
        assert_eq!(r.message_id, "0A1B2C");
        assert_eq!(r.state, ReceiptState::Delivered);
        assert_eq!(r.detail, "stat:DELIVRD err:000");
        assert_eq!(r.to, "79001112233");

        let r = parse_receipt(&receipt_sm(
            "id:77 sub:001 dlvrd:000 submit date:2611231200 done date:2611231300 stat:UNDELIV err:001 Text:x",
        ))
        .unwrap();
        assert_eq!(
            (r.message_id.as_str(), r.state),
            ("77", ReceiptState::Failed)
        );
        assert_eq!(r.detail, "stat:UNDELIV err:001");
        for (stat, state) in [
            ("EXPIRED", ReceiptState::Failed),
            ("REJECTD", ReceiptState::Failed),
            ("DELETED", ReceiptState::Failed),
            ("UNKNOWN", ReceiptState::Failed),
            ("ENROUTE", ReceiptState::Pending),
            ("ACCEPTD", ReceiptState::Pending),
        ] {
            let r = parse_receipt(&receipt_sm(&format!("id:1 stat:{stat} err:000"))).unwrap();
            assert_eq!(r.state, state, "{stat}");
        }
    }

    #[test]
    fn receipt_tlvs_win_over_the_text() {
        let mut sm = receipt_sm("id:999 stat:DELIVRD err:000");
        sm.tlvs = vec![
            Tlv {
                tag: pdu::TLV_RECEIPTED_MESSAGE_ID,
                value: b"3E7\0".to_vec(),
            },
            Tlv {
                tag: pdu::TLV_MESSAGE_STATE,
                value: vec![5],
            },
            Tlv {
                tag: pdu::TLV_NETWORK_ERROR_CODE,
                value: vec![3, 0, 27],
            },
        ];
        let r = parse_receipt(&sm).unwrap();
        assert_eq!(r.message_id, "3E7");
        assert_eq!(r.state, ReceiptState::Failed);
        assert_eq!(r.detail, "stat:DELIVRD err:000 GSM error 27");
    }

    #[test]
    fn what_is_not_a_receipt_is_not_read_as_one() {
        let mut sm = receipt_sm("id:1 stat:DELIVRD");
        sm.esm_class = 0;
        assert_eq!(parse_receipt(&sm), None, "a message from a person");
        assert_eq!(
            parse_receipt(&receipt_sm("msgid:1 stat:DELIVRD")),
            None,
            "no id"
        );
        assert_eq!(field("a id:", "id"), None);
        assert_eq!(field("ID:AbC stat:x", "id"), Some("AbC"));
    }

    #[test]
    fn addresses_get_their_ton_and_npi() {
        let mut c = SmppConfig::new("smsc", 2775, "hub", "pw");
        assert_eq!(c.source_address(), Address::default());
        c.source_addr = "TEPLO".into();
        assert_eq!((c.source_address().ton, c.source_address().npi), (5, 0));
        c.source_addr = "+79001234567".into();
        assert_eq!(
            c.source_address(),
            Address {
                ton: 1,
                npi: 1,
                addr: "79001234567".into()
            }
        );
        c.source_addr = "4444".into();
        c.source_addr_ton = Some(3);
        assert_eq!((c.source_address().ton, c.source_address().npi), (3, 1));
        assert_eq!(dest_address("+79001234567").ton, 1);
        assert_eq!(dest_address("89001234567").ton, 0);
    }

    #[test]
    fn bad_config_names_the_key_and_never_the_password() {
        let parse = |extra: &str| -> SmppConfig {
            toml::from_str(&format!(
                "host = \"smsc\"\nsystem_id = \"hub\"\npassword = \"s3cretpw\"\n{extra}"
            ))
            .unwrap()
        };
        let c = parse("");
        assert_eq!(c.port, 2775);
        assert_eq!(c.bind_mode, BindMode::Transceiver);
        assert_eq!(c.window, 10);
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("s3cretpw"));
        for (extra, key) in [
            ("window = 0", "window:"),
            ("rate_per_s = -1.0", "rate_per_s:"),
            ("source_addr = \"TOO-LONG-NAME\"", "source_addr:"),
            ("system_type = \"xxxxxxxxxxxxx\"", "system_type:"),
            ("enquire_link_seconds = 0", "enquire_link_seconds:"),
        ] {
            let e = parse(extra).validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{extra}: {e}");
        }
        let mut c = parse("");
        c.password = Secret::new("far-too-long-secret");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("password:") && !e.contains("far-too"), "{e}");
        assert!(
            toml::from_str::<SmppConfig>(
                "host = \"x\"\nsystem_id = \"a\"\npassword = \"b\"\nbind = 1"
            )
            .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn submit_sm_are_spaced_by_the_rate() {
        let pace = Pace::new(4.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pace.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let unlimited = Pace::new(0.0);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            unlimited.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
