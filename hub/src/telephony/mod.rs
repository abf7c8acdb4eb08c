//! The built-in telephony core (SIP and RTP, no external PBX): a caller's SIP call -> `transport`
//! (UDP, parse at the edge) -> `core` (one task owning transactions, calls and IVR walks) -> `media`
//! (one RTP task per call: prompts out, DTMF in) and `recorder` (the `calls` table). The rest of the hub
//! reaches it through the cloneable `Telephony` handle (rules: `set_ivr_mode`).

pub mod asks;
pub mod answer_times;
pub mod caller;
pub mod core;
pub mod g711;
pub mod ivr;
pub mod media;
pub mod meters;
pub mod prompts;
pub mod queue;
pub mod recorder;
pub mod recording;
pub mod restored;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod store;
pub mod transaction;
pub mod transport;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::core::ActiveCall;
pub use self::ivr::IvrConfig;
pub use self::sip::SipError;
pub use self::store::IvrMode;
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
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the telephony core is not running")]
    Stopped,
}

/// The cloneable handle the rest of the hub talks to the core with.
#[derive(Clone)]
pub struct Telephony {
    core: mpsc::Sender<core::CoreMsg>,
    db: Db,
    sip_addr: SocketAddr,
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
        let (reply, answer) = oneshot::channel();
        self.core
            .send(core::CoreMsg::ActiveCalls { reply })
            .await
            .map_err(|_| TelephonyError::Stopped)?;
        answer.await.map_err(|_| TelephonyError::Stopped)
    }
}

/// `set_ivr_mode` without a running core (the override lives in the database): for the CLI and tests.
pub async fn set_ivr_mode(
    db: &Db,
    site_id: i64,
    mode: Option<IvrMode>,
    announcement: Option<&str>,
    actor: &str,
) -> Result<(), TelephonyError> {
    let mut tx = db.pool.begin().await.map_err(StorageError::from)?;
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

/// Binds the SIP socket and starts the transport, the core and the recorder on `tasks`.
pub async fn start(
    config: &TelephonyConfig,
    db: Db,
    network: NetworkCache,
    metrics: Arc<Metrics>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Telephony, TelephonyError> {
    config.check()?;
    let socket = UdpSocket::bind(config.listen)
        .await
        .map_err(|source| TelephonyError::Bind {
            addr: config.listen,
            source,
        })?;
    let sip_addr = socket.local_addr().map_err(|source| TelephonyError::Bind {
        addr: config.listen,
        source,
    })?;
    let socket = Arc::new(socket);
    let (core_tx, core_rx) = mpsc::channel(core::CORE_CHANNEL);
    let (rec_tx, rec_rx) = mpsc::channel(recorder::RECORDER_CHANNEL);
    let prompts = Arc::new(prompts::Prompts::new(
        config.prompts_dir.clone(),
        config.tts_command.clone(),
    ));
    // Render the menu's prompts now, so the first caller does not wait for speech synthesis.
    tasks.spawn(warm_up(config.ivr.nodes(), prompts.clone()));
    tasks.spawn(recorder::run(db.clone(), rec_rx, shutdown.clone()));
    tasks.spawn(transport::run(
        socket.clone(),
        core_tx.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let setup = core::CoreSetup {
        config: Arc::new(config.clone()),
        socket,
        prompts,
        db: db.clone(),
        network,
        metrics,
        recorder: rec_tx,
        inbox: core_tx.clone(),
    };
    tasks.spawn(core::run(setup, core_rx, shutdown));
    Ok(Telephony {
        core: core_tx,
        db,
        sip_addr,
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
