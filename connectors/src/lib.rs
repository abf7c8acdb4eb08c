//! Hub's edge. Sources (MQTT, Modbus TCP) turn what devices and dispatch systems send into [`Ingest`]
//! messages on one bounded channel; the hub persists them, acknowledges them and publishes them as
//! `rules::Event`s on its bus. Outbound channels (SMTP, SMS over HTTP, Telegram) are in [`channels`].
//!
//! Every connector is a config (a serde enum tagged by `type`, see [`ConnectorConfig`]) that runs as one
//! long-lived task: `run(self, ctx)` until `ctx.shutdown` is cancelled. A connector never dies of bad
//! input: junk is counted in its [`ConnectorStats`] and logged at a limited rate.

pub mod channels;
pub mod modbus;
pub mod mqtt;
pub mod secret;
pub mod stats;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use secret::Secret;
pub use stats::{ConnectorStats, RateLimitedLog, StatsSnapshot};

/// Capacity of the channel from all connectors to the hub's ingest task. A full channel makes
/// connectors wait (back-pressure to the broker or the poll loop), it never drops.
pub const INGEST_CAPACITY: usize = 1024;

/// One value of one sensor, already scaled to the sensor's unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The sensor's external id (what the hub's `sensors` table calls `external_id`).
    pub sensor: String,
    pub value: f64,
    /// When the device measured it, if it said; otherwise the hub stamps the time of arrival.
    pub at: Option<DateTime<Utc>>,
}

/// Completed by the hub once what it carries is persisted, so the connector may acknowledge it to
/// its peer (an MQTT PUBACK). Dropping it unanswered means "not persisted": the peer redelivers.
pub type Ack = oneshot::Sender<()>;

/// What a connector hands to the hub.
#[derive(Debug)]
pub enum Ingest {
    /// A batch of readings from one connector.
    Readings {
        connector: Arc<ConnectorStats>,
        readings: Vec<Reading>,
        ack: Option<Ack>,
    },
    /// An outage record in the webhook format (`docs/connectors.md`), parsed and validated by the hub.
    Outage {
        connector: Arc<ConnectorStats>,
        /// Where it came from, for error counts (an MQTT topic).
        origin: String,
        record: serde_json::Value,
        ack: Option<Ack>,
    },
    /// The connector knows these sensors cannot be read (a Modbus device is down) or can again.
    Status {
        connector: Arc<ConnectorStats>,
        sensors: Vec<String>,
        online: bool,
        reason: String,
    },
}

/// Sender side of the ingest channel, cloned into every connector.
pub type IngestSender = mpsc::Sender<Ingest>;

/// What a running connector is given.
#[derive(Clone)]
pub struct ConnectorContext {
    /// The user's name for the connector: the key in `[connectors.NAME]`.
    pub id: String,
    pub sink: IngestSender,
    pub stats: Arc<ConnectorStats>,
    pub shutdown: CancellationToken,
}

/// Errors that stop a connector (bad config found at start). Transient trouble (a broker that went
/// away, a device that times out) is retried inside the connector and only counted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{0}")]
    Config(String),
    #[error("the hub stopped accepting input")]
    SinkClosed,
    /// A write asked for something the connector cannot do: an unknown sensor, a read-only
    /// register, a value that does not fit.
    #[error("{0}")]
    InvalidWrite(String),
    /// The device did not carry out a write: offline, timed out, or refused it.
    #[error("{0}")]
    WriteFailed(String),
}

/// One kind of component that feeds the hub.
pub trait Connector {
    fn run(
        self,
        ctx: ConnectorContext,
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send;
}

/// `[connectors.NAME]`: one configured source, tagged by `type`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectorConfig {
    /// An MQTT subscription (`docs/connectors.md`).
    Mqtt(mqtt::MqttConfig),
    /// One Modbus TCP device polled (`docs/connectors.md`).
    Modbus(modbus::ModbusConfig),
}

impl ConnectorConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectorConfig::Mqtt(_) => "mqtt",
            ConnectorConfig::Modbus(_) => "modbus",
        }
    }

    /// Checks what can be checked without connecting; errors name the key.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        match self {
            ConnectorConfig::Mqtt(c) => c.validate(),
            ConnectorConfig::Modbus(c) => c.validate(),
        }
    }
}
