//! The built-in telephony core (SIP and RTP, no external PBX): a caller's SIP call -> `transport`
//! (UDP, parse at the edge) -> `core` (one task owning transactions, calls and IVR walks) -> `media`
//! (one RTP task per call: prompts out, DTMF in) and `recorder` (the `calls` table). The rest of the hub
//! reaches it through the cloneable `Telephony` handle (rules: `set_ivr_mode`).

pub mod accounts;
pub mod amd;
pub mod answer_times;
pub mod asks;
pub mod caller;
pub mod core;
pub mod digest;
pub mod events;
pub mod g711;
pub mod ivr;
pub mod media;
pub mod meters;
pub mod outbound;
pub mod prompts;
pub mod queue;
pub mod recorder;
pub mod recording;
pub mod restored;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod store;
pub mod stream;
pub mod transaction;
pub mod transport;
pub mod trunk;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::accounts::{AccountInfo, Registration};
pub use self::core::{ActiveCall, TrunkStatus};
pub use self::ivr::IvrConfig;
pub use self::outbound::{
    CallProgress, CallState, OutboundCall, OutboundResult, Outcome, PlacedCall, Playback,
};
pub use self::sip::SipError;
pub use self::store::IvrMode;
pub use self::trunk::TrunkConfig;
use crate::bus::Bus;
use crate::metrics::Metrics;
use crate::network::NetworkCache;
use crate::storage::{Db, StorageError};

/// `[telephony]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelephonyConfig {
    /// Run the telephony core with `hub serve`.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// UDP address and port for SIP; port 0 picks a free one (printed at start).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address callers reach us at, written into SDP and Contact. Empty: the listen address (or
    /// 127.0.0.1 when listening on every address).
    #[serde(default)]
    pub public_address: String,
    /// Lowest UDP port for RTP (one even port per call).
    #[serde(default = "default_rtp_port_min")]
    pub rtp_port_min: u16,
    /// Highest UDP port for RTP.
    #[serde(default = "default_rtp_port_max")]
    pub rtp_port_max: u16,
    /// Send RTP to where the caller's RTP comes from when that differs from its SDP (callers behind NAT).
    #[serde(default)]
    pub symmetric_rtp: bool,
    /// Milliseconds of ringing (180) before the call is answered.
    #[serde(default)]
    pub answer_delay_ms: u64,
    /// Calls at once; more get 486 Busy Here.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Seconds after which an answered call is ended by the hub; 0: no limit.
    #[serde(default = "default_max_call_seconds")]
    pub max_call_seconds: u64,
    /// Language of callers who are not recognized (`ru` or `en`).
    #[serde(default = "default_language")]
    pub language: String,
    /// Folder where spoken prompts are cached as 8 kHz WAV files, named by a hash of voice and text.
    #[serde(default = "default_prompts_dir")]
    pub prompts_dir: PathBuf,
    /// Text-to-speech program, called as `PROGRAM -v VOICE -w FILE -- TEXT` (espeak-ng's options).
    #[serde(default = "default_tts_command")]
    pub tts_command: String,
    /// Seconds without RTP from the peer after which a call is ended (`media_timeout`); 0: never.
    #[serde(default = "default_rtp_timeout_s")]
    pub rtp_timeout_s: u64,
    /// Record calls to WAV (stereo, 8 kHz 16-bit: caller left, hub right) under `recordings_dir`.
    #[serde(default)]
    pub record: bool,
    /// Folder of call recordings, one sub-folder per day.
    #[serde(default = "default_recordings_dir")]
    pub recordings_dir: PathBuf,
    /// The IVR menus.
    #[serde(default)]
    pub ivr: IvrConfig,
    /// Also serve SIP over TCP on the `listen` address and port (RFC 3261 section 18).
    #[serde(default = "default_enabled")]
    pub listen_tcp: bool,
    /// Take requests from any address. `false`: only from trunks (`inbound_from` and their `host`) and
    /// from phones registered with the hub; others get 403 (REGISTER is always answered).
    #[serde(default = "default_enabled")]
    pub allow_unregistered: bool,
    /// The digest realm of the hub's registrar (phones' SIP accounts are created in it).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The trunk phone numbers are dialled through when a call names none. Empty: the first by name.
    #[serde(default)]
    pub default_trunk: String,
    /// SIP trunks to providers, by name.
    #[serde(default)]
    pub trunks: BTreeMap<String, TrunkConfig>,
}

fn default_enabled() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5060))
}
fn default_rtp_port_min() -> u16 {
    20000
}
fn default_rtp_port_max() -> u16 {
    20999
}
fn default_max_calls() -> usize {
    200
}
fn default_max_call_seconds() -> u64 {
    600
}
fn default_language() -> String {
    "ru".into()
}
fn default_prompts_dir() -> PathBuf {
    PathBuf::from("data/prompts")
}
fn default_tts_command() -> String {
    "espeak-ng".into()
}
fn default_rtp_timeout_s() -> u64 {
    30
}
fn default_recordings_dir() -> PathBuf {
    PathBuf::from("data/recordings")
}
fn default_realm() -> String {
    "hub".into()
}

impl Default for TelephonyConfig {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            listen: default_listen(),
            public_address: String::new(),
            rtp_port_min: default_rtp_port_min(),
            rtp_port_max: default_rtp_port_max(),
            symmetric_rtp: false,
            answer_delay_ms: 0,
            max_calls: default_max_calls(),
            max_call_seconds: default_max_call_seconds(),
            language: default_language(),
            prompts_dir: default_prompts_dir(),
            tts_command: default_tts_command(),
            rtp_timeout_s: default_rtp_timeout_s(),
            record: false,
            recordings_dir: default_recordings_dir(),
            ivr: IvrConfig::default(),
            listen_tcp: true,
            allow_unregistered: true,
            realm: default_realm(),
            default_trunk: String::new(),
            trunks: BTreeMap::new(),
        }
    }
}

impl TelephonyConfig {
    /// Checks that need no network: port range, language, IVR node names.
    pub fn check(&self) -> Result<(), TelephonyError> {
        let bad = |field: &'static str, reason: String| TelephonyError::Config { field, reason };
        if self.rtp_port_min == 0 || self.rtp_port_min > self.rtp_port_max {
            return Err(bad(
                "telephony.rtp_port_min",
                "must be at least 1 and not above rtp_port_max".into(),
            ));
        }
        if !["ru", "en"].contains(&self.language.as_str()) {
            return Err(bad(
                "telephony.language",
                format!("`{}`: use ru or en", self.language),
            ));
        }
        if !self.public_address.is_empty() && self.public_address.parse::<IpAddr>().is_err() {
            return Err(bad(
                "telephony.public_address",
                format!("`{}` is not an IP address", self.public_address),
            ));
        }
        if self.realm.is_empty() || self.realm.contains(['"', '\\']) {
            return Err(bad(
                "telephony.realm",
                "must be non-empty, without quotes".into(),
            ));
        }
        if !self.default_trunk.is_empty() && !self.trunks.contains_key(&self.default_trunk) {
            return Err(bad(
                "telephony.default_trunk",
                format!("no trunk `{}`", self.default_trunk),
            ));
        }
        for (name, t) in &self.trunks {
            if let Err((field, reason)) = t.check(name) {
                return Err(TelephonyError::Config {
                    field: "telephony.trunks",
                    reason: format!("{field}: {reason}"),
                });
            }
        }
        self.ivr
            .check()
            .map_err(|reason| bad("telephony.ivr", reason))
    }

    /// The address written into SDP and Contact.
    pub fn media_ip(&self, bound: IpAddr) -> IpAddr {
        match self.public_address.parse() {
            Ok(ip) => ip,
            Err(_) if bound.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            Err(_) => bound,
        }
    }
}

/// Failures of the telephony core and its handle.
#[derive(Debug, thiserror::Error)]
pub enum TelephonyError {
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("sip udp {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("sip tcp {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the telephony core is not running")]
    Stopped,
    /// A call or account that cannot be made as asked (bad number, unknown trunk, ...).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// Every line of the trunk stayed busy for the call's `line_wait`.
    #[error("trunk {trunk}: all {lines} lines busy")]
    LinesBusy { trunk: String, lines: usize },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TelephonyError {
    TelephonyError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The cloneable handle the rest of the hub talks to the core with.
#[derive(Clone)]
pub struct Telephony {
    core: mpsc::Sender<core::CoreMsg>,
    db: Db,
    sip_addr: SocketAddr,
    config: Arc<TelephonyConfig>,
    trunks: Arc<Vec<trunk::Trunk>>,
    /// One semaphore per trunk, `lines` permits.
    lines: Arc<HashMap<String, Arc<Semaphore>>>,
    media_ip: IpAddr,
}

impl Telephony {
    /// The UDP address SIP is served on.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip_addr
    }

    /// Overrides the IVR mode of a site and everything under it (a complex, a building), with an
    /// announcement played before the menu; `None` returns the site to business hours. Persisted
    /// (survives restarts), audited under `actor` (`rule:NAME`, a user name). Applies to calls that
    /// start afterwards.
    pub async fn set_ivr_mode(
        &self,
        site_id: i64,
        mode: Option<IvrMode>,
        announcement: Option<&str>,
        actor: &str,
    ) -> Result<(), TelephonyError> {
        set_ivr_mode(&self.db, site_id, mode, announcement, actor).await
    }

    /// The calls up right now.
    pub async fn active_calls(&self) -> Result<Vec<ActiveCall>, TelephonyError> {
        self.ask(|reply| core::CoreMsg::ActiveCalls { reply }).await
    }

    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<T>) -> core::CoreMsg,
    ) -> Result<T, TelephonyError> {
        let (reply, answer) = oneshot::channel();
        self.core
            .send(msg(reply))
            .await
            .map_err(|_| TelephonyError::Stopped)?;
        answer.await.map_err(|_| TelephonyError::Stopped)
    }

    /// Places an outbound call and waits for its end. See `place` for the errors.
    pub async fn originate(&self, call: OutboundCall) -> Result<OutboundResult, TelephonyError> {
        Ok(self.place(call).await?.finish().await)
    }

    /// Places an outbound call: checks it, takes a line of its trunk (waiting up to `line_wait`),
    /// writes its call record and hands it to the core. Returns at once with the record id, a watch
    /// of its progress (the confirming digit shows there as soon as it is pressed) and the result
    /// to await. Errors: `Invalid` (bad number, unknown trunk or tenant, no trunk configured for a
    /// phone number), `LinesBusy`, `Stopped`; a call that was dialled ends with an `Outcome` instead.
    pub async fn place(&self, call: OutboundCall) -> Result<PlacedCall, TelephonyError> {
        if !["ru", "en"].contains(&call.language.as_str()) {
            return Err(invalid(
                "language",
                format!("`{}`: use ru or en", call.language),
            ));
        }
        if let Some(d) = call
            .confirm_digits
            .chars()
            .find(|d| !"0123456789*#".contains(*d))
        {
            return Err(invalid(
                "confirm_digits",
                format!("`{d}` is not a DTMF digit"),
            ));
        }
        if call.ring_timeout.is_zero() || call.max_duration.is_zero() {
            return Err(invalid(
                "ring_timeout",
                "ring_timeout and max_duration must be above zero",
            ));
        }
        if let Playback::Text(t) = &call.play
            && t.trim().is_empty()
        {
            return Err(invalid("text", "nothing to say"));
        }
        let (target, trunk) = self.target(&call.to, call.trunk.as_deref()).await?;
        let line = match &trunk {
            Some(name) => Some(self.take_line(name, call.line_wait).await?),
            None => None,
        };
        let mut conn = self.db.conn().await?;
        let tenant_id = match &call.tenant {
            Some(ext) => Some(
                crate::storage::tenants::by_external(&mut conn, ext)
                    .await?
                    .id,
            ),
            None => None,
        };
        let call_id = format!("{:016x}@{}", media::rand_u64(), self.media_ip);
        let from = trunk
            .as_ref()
            .and_then(|t| self.trunks.iter().find(|x| &x.name == t))
            .map(|t| t.config.from_user().to_owned())
            .unwrap_or_else(|| "hub".into());
        let id = store::insert_outbound(
            &mut conn,
            &call_id,
            &from,
            &call.to,
            &call.purpose,
            tenant_id,
            crate::storage::now_ms(),
        )
        .await?;
        drop(conn);
        let (progress, watch_rx) = watch::channel(CallProgress {
            state: CallState::Dialing,
            digit: None,
        });
        let (done, result) = oneshot::channel();
        let dial = outbound::Dial {
            record_id: id,
            call_id,
            call,
            target,
            progress,
            done,
            line,
        };
        if self
            .core
            .send(core::CoreMsg::Dial(Box::new(dial)))
            .await
            .is_err()
        {
            let mut conn = self.db.conn().await?;
            store::ended(&mut conn, id, crate::storage::now_ms(), "failed", "", None).await?;
            return Err(TelephonyError::Stopped);
        }
        Ok(PlacedCall {
            id,
            progress: watch_rx,
            result,
        })
    }

    /// Where `to` goes: a `sip:` URI directly, `account:NAME` to a registered phone, a phone number
    /// through a trunk.
    async fn target(
        &self,
        to: &str,
        trunk: Option<&str>,
    ) -> Result<(outbound::Target, Option<String>), TelephonyError> {
        let to = to.trim();
        if let Some(name) = to.strip_prefix("account:") {
            if name.is_empty() {
                return Err(invalid("to", "account: needs a SIP account name"));
            }
            return Ok((outbound::Target::Account(name.to_owned()), None));
        }
        if to.to_ascii_lowercase().starts_with("sip:") {
            let uri = sip::Uri::parse(to)
                .ok()
                .filter(|u| u.scheme == "sip" && !u.host.is_empty())
                .ok_or_else(|| invalid("to", format!("`{to}` is not a sip: URI")))?;
            let hostport = format!(
                "{}:{}",
                uri.host.trim_start_matches('[').trim_end_matches(']'),
                uri.port.unwrap_or(5060)
            );
            let dest = tokio::net::lookup_host(hostport.as_str())
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| invalid("to", format!("cannot resolve `{hostport}`")))?;
            return Ok((
                outbound::Target::Addr {
                    dest,
                    uri,
                    trunk: None,
                },
                None,
            ));
        }
        let number = caller::normalize(to).ok_or_else(|| {
            invalid(
                "to",
                format!("`{to}` is not a phone number, sip: URI or account:"),
            )
        })?;
        let name = match trunk {
            Some(t) => t.to_owned(),
            None if !self.config.default_trunk.is_empty() => self.config.default_trunk.clone(),
            None => self.trunks.first().map(|t| t.name.clone()).ok_or_else(|| {
                invalid(
                    "to",
                    "no [telephony.trunks] configured to dial phone numbers through",
                )
            })?,
        };
        let t = self
            .trunks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| invalid("trunk", format!("no trunk `{name}`")))?;
        let uri = outbound::sip_uri(Some(&number), &t.config.domain(), None)
            .ok_or_else(|| invalid("to", format!("`{to}` does not make a SIP URI")))?;
        Ok((
            outbound::Target::Addr {
                dest: t.addr,
                uri,
                trunk: Some(name.clone()),
            },
            Some(name),
        ))
    }

    async fn take_line(
        &self,
        trunk: &str,
        wait: std::time::Duration,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, TelephonyError> {
        let busy = || TelephonyError::LinesBusy {
            trunk: trunk.to_owned(),
            lines: self
                .trunks
                .iter()
                .find(|t| t.name == trunk)
                .map_or(0, |t| t.config.lines),
        };
        let sem = self.lines.get(trunk).cloned().ok_or_else(busy)?;
        if wait.is_zero() {
            return sem.try_acquire_owned().map_err(|_| busy());
        }
        match tokio::time::timeout(wait, sem.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(busy()),
        }
    }

    /// Trunks with their lines in use and registration state.
    pub async fn trunks(&self) -> Result<Vec<TrunkStatus>, TelephonyError> {
        let regs = self
            .ask(|reply| core::CoreMsg::TrunkRegistrations { reply })
            .await?;
        Ok(self
            .trunks
            .iter()
            .map(|t| {
                let reg = regs.iter().find(|r| r.0 == t.name);
                let free = self.lines.get(&t.name).map_or(0, |s| s.available_permits());
                TrunkStatus {
                    name: t.name.clone(),
                    address: t.addr.to_string(),
                    lines: t.config.lines,
                    lines_busy: t.config.lines.saturating_sub(free),
                    register: t.config.register,
                    registration: reg.map(|r| r.1.clone()),
                    registered_until: reg.and_then(|r| r.2),
                }
            })
            .collect())
    }

    /// Phones registered with the hub right now.
    pub async fn registrations(&self) -> Result<Vec<Registration>, TelephonyError> {
        self.ask(|reply| core::CoreMsg::Registrations { reply })
            .await
    }

    /// Creates a SIP account for an operator's phone: `user` must be a hub user with role operator.
    /// Only HA1 is stored. Audited under `actor`.
    pub async fn create_account(
        &self,
        username: &str,
        password: &str,
        user: &str,
        actor: &str,
    ) -> Result<AccountInfo, TelephonyError> {
        let account = create_account(
            &self.db,
            &self.config.realm,
            username,
            password,
            user,
            actor,
        )
        .await?;
        let info = AccountInfo {
            username: account.username.clone(),
            realm: account.realm.clone(),
            user: user.to_owned(),
            created_at: chrono::Utc::now(),
        };
        self.core
            .send(core::CoreMsg::AccountChanged {
                upsert: Some(account),
                remove: None,
            })
            .await
            .map_err(|_| TelephonyError::Stopped)?;
        Ok(info)
    }

    /// Deletes a SIP account and its registrations. Audited under `actor`.
    pub async fn delete_account(&self, username: &str, actor: &str) -> Result<(), TelephonyError> {
        let mut tx = self.db.begin().await.map_err(StorageError::from)?;
        if !accounts::delete(&mut tx, username).await? {
            return Err(StorageError::not_found(format!("sip account {username}")).into());
        }
        crate::storage::audit::record(
            &mut tx,
            actor,
            "delete_sip_account",
            "sip_account",
            username,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await.map_err(StorageError::from)?;
        self.core
            .send(core::CoreMsg::AccountChanged {
                upsert: None,
                remove: Some(username.to_owned()),
            })
            .await
            .map_err(|_| TelephonyError::Stopped)
    }
}

/// Writes a SIP account (HA1 in `realm`) with its audit entry; the core learns of it from the handle.
pub async fn create_account(
    db: &Db,
    realm: &str,
    username: &str,
    password: &str,
    user: &str,
    actor: &str,
) -> Result<accounts::Account, TelephonyError> {
    if username.is_empty()
        || username.len() > 64
        || !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid("username", "1-64 letters, digits, `.`, `_` or `-`"));
    }
    if password.chars().count() < 8 {
        return Err(invalid("password", "at least 8 characters"));
    }
    let mut tx = db.begin().await.map_err(StorageError::from)?;
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT id, role FROM users WHERE username = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StorageError::from)?;
    let Some((user_id, role)) = row else {
        return Err(invalid("user", format!("no user `{user}`")));
    };
    if role != "operator" {
        return Err(invalid(
            "user",
            format!("`{user}` is a {role}: SIP accounts are for operators"),
        ));
    }
    let account = accounts::Account {
        username: username.to_owned(),
        realm: realm.to_owned(),
        ha1: digest::ha1(username, realm, password),
        user_id,
    };
    accounts::insert(&mut tx, &account).await?;
    crate::storage::audit::record(
        &mut tx,
        actor,
        "create_sip_account",
        "sip_account",
        username,
        serde_json::json!({"user": user, "realm": realm}),
    )
    .await?;
    tx.commit().await.map_err(StorageError::from)?;
    Ok(account)
}

/// `set_ivr_mode` without a running core (the override lives in the database): for the CLI and tests.
pub async fn set_ivr_mode(
    db: &Db,
    site_id: i64,
    mode: Option<IvrMode>,
    announcement: Option<&str>,
    actor: &str,
) -> Result<(), TelephonyError> {
    let mut tx = db.begin().await.map_err(StorageError::from)?;
    crate::storage::sites::get(&mut tx, site_id).await?;
    store::set_override(&mut tx, site_id, mode, announcement, actor).await?;
    crate::storage::audit::record(
        &mut tx,
        actor,
        "set_ivr_mode",
        "site",
        &site_id.to_string(),
        serde_json::json!({"mode": mode, "announcement": announcement}),
    )
    .await?;
    tx.commit().await.map_err(StorageError::from)?;
    Ok(())
}

/// Attempts at a port free for both UDP and TCP when `listen` asks for any port (0).
const ANY_PORT_ATTEMPTS: usize = 20;

/// The SIP UDP socket and, with `listen_tcp`, the TCP listener on the same port. With port 0 the
/// system picks a free UDP port, which another process may hold for TCP: then another port is tried.
async fn bind_sip(
    config: &TelephonyConfig,
) -> Result<(UdpSocket, Option<TcpListener>), TelephonyError> {
    let attempts = if config.listen.port() == 0 {
        ANY_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let socket =
            UdpSocket::bind(config.listen)
                .await
                .map_err(|source| TelephonyError::Bind {
                    addr: config.listen,
                    source,
                })?;
        if !config.listen_tcp {
            return Ok((socket, None));
        }
        let port = socket
            .local_addr()
            .map_err(|source| TelephonyError::Bind {
                addr: config.listen,
                source,
            })?
            .port();
        let addr = SocketAddr::new(config.listen.ip(), port);
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok((socket, Some(listener))),
            Err(source) => last = Some(TelephonyError::BindTcp { addr, source }),
        }
    }
    Err(last.unwrap_or(TelephonyError::Stopped))
}

/// Binds the SIP sockets (UDP, and TCP with `listen_tcp`), resolves the trunks, loads the SIP accounts
/// and live registrations, and starts the transports, the core, the recorder (which publishes call
/// events on `bus`) and the registration writer on `tasks`.
pub async fn start(
    config: &TelephonyConfig,
    db: Db,
    network: NetworkCache,
    metrics: Arc<Metrics>,
    bus: Option<Bus>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Telephony, TelephonyError> {
    config.check()?;
    let mut trunks = Vec::new();
    for (name, t) in &config.trunks {
        let trunk =
            trunk::Trunk::resolve(name, t)
                .await
                .map_err(|reason| TelephonyError::Config {
                    field: "telephony.trunks",
                    reason,
                })?;
        trunks.push(trunk);
    }
    let trunks = Arc::new(trunks);
    let lines = Arc::new(
        trunks
            .iter()
            .map(|t| (t.name.clone(), Arc::new(Semaphore::new(t.config.lines))))
            .collect::<HashMap<_, _>>(),
    );
    let (account_list, registrations) = {
        let mut conn = db.conn().await?;
        (
            accounts::load(&mut conn).await?,
            accounts::live_registrations(&mut conn, crate::storage::now_ms()).await?,
        )
    };
    let (socket, tcp) = bind_sip(config).await?;
    let sip_addr = socket.local_addr().map_err(|source| TelephonyError::Bind {
        addr: config.listen,
        source,
    })?;
    let socket = Arc::new(socket);
    let (core_tx, core_rx) = mpsc::channel(core::CORE_CHANNEL);
    let (bind_tx, bind_rx) = mpsc::channel(accounts::PERSIST_CHANNEL);
    tasks.spawn(accounts::persist(db.clone(), bind_rx, shutdown.clone()));
    if let Some(listener) = tcp {
        tasks.spawn(transport::run_tcp(
            listener,
            core_tx.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let (rec_tx, rec_rx) = mpsc::channel(recorder::RECORDER_CHANNEL);
    let prompts = Arc::new(prompts::Prompts::new(
        config.prompts_dir.clone(),
        config.tts_command.clone(),
    ));
    // Render the menu's prompts now, so the first caller does not wait for speech synthesis.
    tasks.spawn(warm_up(config.ivr.nodes(), prompts.clone()));
    tasks.spawn(recorder::run(db.clone(), bus, rec_rx, shutdown.clone()));
    tasks.spawn(transport::run(
        socket.clone(),
        core_tx.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let config = Arc::new(config.clone());
    let media_ip = config.media_ip(sip_addr.ip());
    let setup = core::CoreSetup {
        config: config.clone(),
        socket,
        prompts,
        db: db.clone(),
        network,
        metrics,
        recorder: rec_tx,
        inbox: core_tx.clone(),
        trunks: trunks.clone(),
        accounts: account_list,
        registrations,
        bindings: bind_tx,
    };
    tasks.spawn(core::run(setup, core_rx, shutdown));
    Ok(Telephony {
        core: core_tx,
        db,
        sip_addr,
        config,
        trunks,
        lines,
        media_ip,
    })
}

async fn warm_up(
    nodes: std::collections::BTreeMap<String, ivr::Node>,
    prompts: Arc<prompts::Prompts>,
) {
    use ivr::Node;
    for node in nodes.values() {
        let list: Vec<&ivr::Prompt> = match node {
            Node::Play { prompt, .. }
            | Node::Collect { prompt, .. }
            | Node::Transfer { prompt, .. } => {
                vec![prompt]
            }
            Node::Menu {
                prompt, invalid, ..
            } => std::iter::once(prompt).chain(invalid).collect(),
            Node::Hangup { prompt } => prompt.iter().collect(),
            Node::MeterReadings { .. } => Vec::new(),
        };
        for p in list {
            for lang in ["ru", "en"] {
                if let Some(src) = p.source(lang) {
                    prompts.get(&src).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_check_and_bad_values_name_the_key() {
        TelephonyConfig::default().check().unwrap();
        let c: TelephonyConfig =
            toml::from_str("rtp_port_min = 30000\nrtp_port_max = 20000").unwrap();
        assert!(
            c.check()
                .unwrap_err()
                .to_string()
                .starts_with("telephony.rtp_port_min")
        );
        assert!(toml::from_str::<TelephonyConfig>("lisen = 1").is_err());
        let menu = r#"
            [ivr]
            day = "start"
            [ivr.nodes.start]
            kind = "menu"
            prompt = { ru = "Нажмите 1", en = "Press 1" }
            options = { "1" = "bye" }
            [ivr.nodes.bye]
            kind = "hangup"
        "#;
        let c: TelephonyConfig = toml::from_str(menu).unwrap();
        assert!(c.ivr.check().unwrap_err().contains("telephony.ivr.night"));
    }

    #[test]
    fn media_ip_prefers_the_public_address() {
        let mut c = TelephonyConfig::default();
        assert_eq!(
            c.media_ip("0.0.0.0".parse().unwrap()),
            IpAddr::from([127, 0, 0, 1])
        );
        assert_eq!(
            c.media_ip("10.0.0.5".parse().unwrap()),
            IpAddr::from([10, 0, 0, 5])
        );
        c.public_address = "203.0.113.7".into();
        assert_eq!(
            c.media_ip("0.0.0.0".parse().unwrap()),
            IpAddr::from([203, 0, 113, 7])
        );
    }

    #[tokio::test]
    async fn set_ivr_mode_persists_and_audits() {
        let (db, _d) = crate::storage::test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        let t = crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        let site: crate::storage::sites::NewSite = serde_json::from_value(serde_json::json!({
            "tenant": "t", "external_id": "rc", "kind": "residential_complex", "name": "RC"
        }))
        .unwrap();
        let site =
            crate::storage::sites::upsert(&mut c, &mut crate::storage::refs::Refs::new(), &site)
                .await
                .unwrap();
        let _ = t;
        set_ivr_mode(
            &db,
            site.id,
            Some(IvrMode::Emergency),
            Some("Авария"),
            "rule:flood",
        )
        .await
        .unwrap();
        let o = store::nearest_override(&mut c, &[site.id])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.mode, o.announcement.as_deref(), o.set_by.as_str()),
            (IvrMode::Emergency, Some("Авария"), "rule:flood")
        );
        let audit =
            crate::storage::audit::list(&mut c, Some("rule:flood"), None, Default::default())
                .await
                .unwrap();
        assert_eq!(audit[0].action, "set_ivr_mode");
        set_ivr_mode(&db, site.id, None, None, "rule:flood")
            .await
            .unwrap();
        assert_eq!(
            store::nearest_override(&mut c, &[site.id]).await.unwrap(),
            None
        );
        let err = set_ivr_mode(&db, 9999, Some(IvrMode::Day), None, "x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
    }
}
