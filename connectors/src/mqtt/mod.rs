//! The MQTT source: subscribes to the embedded broker or an external one (mosquitto, EMQX; TLS and
//! credentials), maps topics to sensors, parses payloads and hands batches of readings (and outage
//! records) to the hub. QoS 1 messages are acknowledged to the broker only after the hub has persisted
//! them; with a persistent session the broker keeps what was not acknowledged while the hub is down.
//!
//! Three loops: the driver polls rumqttc's event loop (which must never block for long), the processor
//! parses what arrives in batches, and the acker sends PUBACKs once the hub says a batch is stored.

pub mod broker;
pub mod payload;
pub mod topic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{Connector, ConnectorContext, ConnectorError, Ingest, Reading, Secret};
pub use payload::PayloadFormat;
use payload::{JsonPath, excerpt};
use topic::{Template, TopicPattern};

/// Messages between the driver and the processor. Full means the hub is behind: the driver waits,
/// TCP pushes back on the broker.
pub const PUBLISH_QUEUE: usize = 4096;
/// Batches waiting for the hub to persist them before their PUBACKs go out.
pub const ACK_QUEUE: usize = 256;
/// Messages parsed into one batch at most.
pub const BATCH_MAX: usize = 2048;
/// Requests (subscribe, ack) queued to rumqttc's event loop.
const REQUEST_QUEUE: usize = 8192;
/// The largest packet the client accepts from the broker. Bigger payloads than `max_payload_bytes`
/// are rejected (and acknowledged) by the connector, not by the client, which would drop the
/// connection and have the broker redeliver the same message forever.
const CLIENT_MAX_PACKET: usize = 16 * 1024 * 1024;

/// `[connectors.NAME]` with `type = "mqtt"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker: `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (TLS). Empty: the embedded broker.
    #[serde(default)]
    pub url: String,
    /// Client id at the broker. With `persistent_session` the broker keeps this client's
    /// unacknowledged QoS 1 messages while the hub is down: keep it stable and unique per hub.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// User name at the broker, if it asks for one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password at the broker. Never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file with the CA certificate(s) that signed the broker's certificate (`mqtts://` only);
    /// when absent the system's trusted roots are used.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Ask the broker to keep the session (subscriptions and unacknowledged messages) across
    /// reconnects and restarts (MQTT clean session off).
    #[serde(default = "default_true")]
    pub persistent_session: bool,
    /// QoS of the subscriptions: 1 (at least once, acknowledged after persisting) or 0.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Seconds between keep-alive pings.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Larger messages are rejected and counted.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Reconnect backoff starts at one second and doubles up to this many seconds.
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: u64,
    /// Topic mappings, tried in order; the first whose topic matches takes the message.
    #[serde(default = "default_topics")]
    pub topics: Vec<TopicMapping>,
}

/// `[[connectors.NAME.topics]]`: which topics carry what.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMapping {
    /// Topic pattern: levels separated by `/`; `{name}` captures one level, `+` matches one level,
    /// a final `#` matches the rest.
    pub topic: String,
    /// `auto` (a number, else JSON), `number`, `json`, or `outage` (an outage record, see
    /// `docs/connectors.md`).
    #[serde(default)]
    pub format: PayloadFormat,
    /// The sensor id, with `{name}` filled from the topic's captures.
    #[serde(default = "default_sensor")]
    pub sensor: String,
    /// JSON payloads: dotted path of the value (`data.p`, `values.0`).
    #[serde(default = "default_value_path")]
    pub value: String,
    /// JSON payloads: dotted path of the measurement time (unix seconds or milliseconds, or RFC 3339);
    /// when absent from a message the time of arrival is used.
    #[serde(default = "default_timestamp_path")]
    pub timestamp: Option<String>,
    /// The stored value is `raw * scale + offset` (e.g. kPa to bar: `scale = 0.01`).
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling (e.g. a sensor's calibration offset).
    #[serde(default)]
    pub offset: f64,
}

fn default_client_id() -> String {
    "hub".into()
}
fn default_true() -> bool {
    true
}
fn default_qos() -> u8 {
    1
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_max_payload_bytes() -> usize {
    64 * 1024
}
fn default_reconnect_max_s() -> u64 {
    30
}
fn default_sensor() -> String {
    "{sensor}".into()
}
fn default_value_path() -> String {
    "value".into()
}
fn default_timestamp_path() -> Option<String> {
    Some("at".into())
}
fn default_scale() -> f64 {
    1.0
}

/// The mappings of the default connector on the embedded broker: `sensors/{sensor}` carries readings
/// (a number or `{"value": .., "at": ..}`), `outages/#` carries outage records.
pub fn default_topics() -> Vec<TopicMapping> {
    vec![
        TopicMapping::reading("sensors/{sensor}"),
        TopicMapping {
            format: PayloadFormat::Outage,
            ..TopicMapping::reading("outages/#")
        },
    ]
}

impl TopicMapping {
    /// A mapping of readings with every other key at its default.
    pub fn reading(topic: &str) -> Self {
        TopicMapping {
            topic: topic.into(),
            format: PayloadFormat::Auto,
            sensor: default_sensor(),
            value: default_value_path(),
            timestamp: default_timestamp_path(),
            scale: default_scale(),
            offset: 0.0,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: String::new(),
            client_id: default_client_id(),
            username: None,
            password: None,
            ca_file: None,
            persistent_session: true,
            qos: default_qos(),
            keep_alive_s: default_keep_alive_s(),
            max_payload_bytes: default_max_payload_bytes(),
            reconnect_max_s: default_reconnect_max_s(),
            topics: default_topics(),
        }
    }
}

/// A mapping ready to match: the pattern parsed, the template checked against it.
#[derive(Debug, Clone)]
struct Route {
    pattern: TopicPattern,
    format: PayloadFormat,
    sensor: Option<Template>,
    value: JsonPath,
    timestamp: Option<JsonPath>,
    scale: f64,
    offset: f64,
}

impl MqttConfig {
    /// Checks everything that can be checked before connecting; errors name the key.
    pub fn validate(&self) -> Result<(), ConnectorError> {
        self.routes().map(|_| ())?;
        self.broker(None).map(|_| ())
    }

    fn routes(&self) -> Result<Vec<Route>, ConnectorError> {
        if self.qos > 1 {
            return Err(ConnectorError::Config(format!(
                "qos: 0 or 1, not {}",
                self.qos
            )));
        }
        if self.topics.is_empty() {
            return Err(ConnectorError::Config(
                "topics: at least one mapping".into(),
            ));
        }
        self.topics
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let err = |field: &str, e: &dyn std::fmt::Display| {
                    ConnectorError::Config(format!("topics[{i}].{field}: {e}"))
                };
                let pattern = TopicPattern::parse(&t.topic).map_err(|e| err("topic", &e))?;
                let sensor = match t.format {
                    PayloadFormat::Outage => None,
                    _ => Some(Template::parse(&t.sensor, &pattern).map_err(|e| err("sensor", &e))?),
                };
                if !t.scale.is_finite() || !t.offset.is_finite() {
                    return Err(err("scale", &"scale and offset must be finite numbers"));
                }
                Ok(Route {
                    pattern,
                    format: t.format,
                    sensor,
                    value: JsonPath::parse(&t.value),
                    timestamp: t.timestamp.as_deref().map(JsonPath::parse),
                    scale: t.scale,
                    offset: t.offset,
                })
            })
            .collect()
    }

    /// Host, port and TLS of the broker; `embedded` stands in for an empty `url`.
    fn broker(&self, embedded: Option<SocketAddr>) -> Result<(String, u16, bool), ConnectorError> {
        if self.url.is_empty() {
            return Ok(match embedded {
                Some(a) => (a.ip().to_string(), a.port(), false),
                None => ("127.0.0.1".into(), 1883, false),
            });
        }
        let bad = |why: &str| ConnectorError::Config(format!("url: `{}`: {why}", self.url));
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("must start with mqtt:// or mqtts://"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains(['/', '@']) {
            return Err(bad(
                "expected HOST:PORT (credentials go in username and password)",
            ));
        }
        Ok((host.trim_matches(['[', ']']).to_string(), port, tls))
    }
}

/// A configured MQTT source, ready to run.
pub struct MqttConnector {
    config: MqttConfig,
    routes: Vec<Route>,
    host: String,
    port: u16,
    tls: bool,
}

impl MqttConnector {
    /// `embedded`: where the embedded broker listens, used when `url` is empty.
    pub fn new(config: MqttConfig, embedded: Option<SocketAddr>) -> Result<Self, ConnectorError> {
        let routes = config.routes()?;
        let (host, port, tls) = config.broker(embedded)?;
        Ok(MqttConnector {
            config,
            routes,
            host,
            port,
            tls,
        })
    }

    fn options(&self, id: &str) -> Result<MqttOptions, ConnectorError> {
        let c = &self.config;
        let mut o = MqttOptions::new(c.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(c.keep_alive_s.max(5)))
            .set_clean_session(!c.persistent_session)
            .set_manual_acks(true)
            .set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET)
            .set_request_channel_capacity(REQUEST_QUEUE)
            .set_inflight(100);
        if let Some(user) = &c.username {
            let pass = c.password.as_ref().map(|p| p.expose().to_string());
            o.set_credentials(user.clone(), pass.unwrap_or_default());
        }
        if self.tls {
            let transport = match &c.ca_file {
                Some(path) => {
                    let ca = std::fs::read(path).map_err(|e| {
                        ConnectorError::Config(format!(
                            "connectors.{id}.ca_file: {}: {e}",
                            path.display()
                        ))
                    })?;
                    Transport::tls(ca, None, None)
                }
                None => Transport::tls_with_default_config(),
            };
            o.set_transport(transport);
        }
        Ok(o)
    }
}

/// What the processor makes of one message.
enum Routed {
    Reading(Reading),
    Outage(serde_json::Value),
}

impl MqttConnector {
    fn route(&self, p: &Publish) -> Result<Routed, (String, String)> {
        let topic = &p.topic;
        let fail = |why: String| (topic.to_string(), why);
        if p.payload.len() > self.config.max_payload_bytes {
            return Err(fail(format!(
                "too large: {} bytes (max_payload_bytes is {})",
                p.payload.len(),
                self.config.max_payload_bytes
            )));
        }
        let Some((route, caps)) = self
            .routes
            .iter()
            .find_map(|r| r.pattern.matches(topic).map(|c| (r, c)))
        else {
            return Err(fail("no topic mapping matches".into()));
        };
        match (route.format, &route.sensor) {
            (PayloadFormat::Outage, _) | (_, None) => {
                let doc: serde_json::Value = serde_json::from_slice(&p.payload)
                    .map_err(|e| fail(format!("outage record: not JSON: {e}")))?;
                if !doc.is_object() {
                    return Err(fail("outage record: not a JSON object".into()));
                }
                Ok(Routed::Outage(doc))
            }
            (format, Some(template)) => {
                let parsed = payload::parse_reading(
                    &p.payload,
                    format,
                    &route.value,
                    route.timestamp.as_ref(),
                )
                .map_err(fail)?;
                let sensor = template.render(&caps);
                if sensor.is_empty() {
                    return Err(fail("the sensor id is empty".into()));
                }
                let value = parsed.value * route.scale + route.offset;
                if !value.is_finite() {
                    return Err(fail(format!(
                        "scaled value is not finite: {}",
                        excerpt(&value.to_string())
                    )));
                }
                Ok(Routed::Reading(Reading {
                    sensor,
                    value,
                    at: Some(parsed.at.unwrap_or_else(Utc::now)),
                }))
            }
        }
    }
}

/// A batch whose PUBACKs wait for the hub: `None` receivers are acknowledged at once (rejected junk).
type AckWork = (Option<oneshot::Receiver<()>>, Vec<Publish>);

impl Connector for MqttConnector {
    async fn run(self, ctx: ConnectorContext) -> Result<(), ConnectorError> {
        let options = self.options(&ctx.id)?;
        let filters: Vec<String> = self.routes.iter().map(|r| r.pattern.filter()).collect();
        let qos = if self.config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let (pub_tx, mut pub_rx) = mpsc::channel::<Publish>(PUBLISH_QUEUE);
        let (ack_tx, mut ack_rx) = mpsc::channel::<AckWork>(ACK_QUEUE);
        let max_backoff = Duration::from_secs(self.config.reconnect_max_s.max(1));
        tracing::info!(connector = %ctx.id, broker = %format!("{}:{}", self.host, self.port), tls = self.tls, "mqtt connecting");

        let driver = {
            let ctx = ctx.clone();
            let client = client.clone();
            async move {
                let mut backoff = Duration::from_secs(1);
                loop {
                    let event = tokio::select! {
                        () = ctx.shutdown.cancelled() => break,
                        e = eventloop.poll() => e,
                    };
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            ctx.stats.set_connected(true, None);
                            backoff = Duration::from_secs(1);
                            let subs = filters
                                .iter()
                                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos));
                            if let Err(e) = client.try_subscribe_many(subs) {
                                ctx.stats
                                    .set_connected(false, Some(&format!("subscribe: {e}")));
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if pub_tx.send(p).await.is_err() {
                                break;
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            ctx.stats.set_ready();
                            let refused = ack
                                .return_codes
                                .iter()
                                .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                                .count();
                            if refused > 0 {
                                ctx.stats.set_connected(
                                    true,
                                    Some(&format!("the broker refused {refused} subscription(s)")),
                                );
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            ctx.stats.set_connected(false, Some(&e.to_string()));
                            tokio::select! {
                                () = ctx.shutdown.cancelled() => break,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(max_backoff);
                        }
                    }
                }
            }
        };

        let acker = {
            let client = client.clone();
            let stats = ctx.stats.clone();
            async move {
                while let Some((done, publishes)) = ack_rx.recv().await {
                    if let Some(done) = done
                        && done.await.is_err()
                    {
                        // Not persisted (the hub is stopping): no PUBACK, the broker redelivers.
                        continue;
                    }
                    for p in publishes {
                        if let Err(e) = client.ack(&p).await {
                            stats.set_connected(false, Some(&format!("ack: {e}")));
                            return;
                        }
                    }
                }
            }
        };

        let processor = {
            let ctx = ctx.clone();
            async move {
                let mut batch = Vec::with_capacity(BATCH_MAX);
                while pub_rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
                    ctx.stats.set_queue_depth(pub_rx.len());
                    if self
                        .process(&ctx, &ack_tx, std::mem::take(&mut batch))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        };

        tokio::join!(driver, processor, acker);
        let _ = client
            .try_disconnect()
            .inspect_err(|e| tracing::debug!("mqtt disconnect: {e}"));
        Ok(())
    }
}

impl MqttConnector {
    /// Parses one batch, hands readings and outage records to the hub and queues the PUBACKs.
    async fn process(
        &self,
        ctx: &ConnectorContext,
        acks: &mpsc::Sender<AckWork>,
        batch: Vec<Publish>,
    ) -> Result<(), ConnectorError> {
        ctx.stats.received(batch.len() as u64);
        let mut readings = Vec::with_capacity(batch.len());
        let mut with_readings = Vec::new();
        let mut junk = Vec::new();
        for p in batch {
            match self.route(&p) {
                Ok(Routed::Reading(r)) => {
                    readings.push(r);
                    with_readings.push(p);
                }
                Ok(Routed::Outage(record)) => {
                    let (tx, rx) = oneshot::channel();
                    let origin = p.topic.clone();
                    send(
                        ctx,
                        Ingest::Outage {
                            connector: Arc::clone(&ctx.stats),
                            origin,
                            record,
                            ack: Some(tx),
                        },
                    )
                    .await?;
                    queue(acks, (Some(rx), vec![p])).await?;
                }
                Err((topic, why)) => {
                    ctx.stats.reject(&topic, &why);
                    junk.push(p);
                }
            }
        }
        if !readings.is_empty() {
            let (tx, rx) = oneshot::channel();
            send(
                ctx,
                Ingest::Readings {
                    connector: Arc::clone(&ctx.stats),
                    readings,
                    ack: Some(tx),
                },
            )
            .await?;
            queue(acks, (Some(rx), with_readings)).await?;
        }
        if !junk.is_empty() {
            // Junk is acknowledged too: redelivering it would only count it again.
            queue(acks, (None, junk)).await?;
        }
        Ok(())
    }
}

async fn send(ctx: &ConnectorContext, ingest: Ingest) -> Result<(), ConnectorError> {
    ctx.sink
        .send(ingest)
        .await
        .map_err(|_| ConnectorError::SinkClosed)
}

async fn queue(acks: &mpsc::Sender<AckWork>, work: AckWork) -> Result<(), ConnectorError> {
    acks.send(work)
        .await
        .map_err(|_| ConnectorError::SinkClosed)
}
