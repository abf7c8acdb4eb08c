//! The one TOML file that builds the runtime. Strict (unknown keys are errors with their line), every key
//! documented here with `///` and in `docs/configuration.md`; secrets and URLs can be overridden by
//! `HUB_...` environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use connectors::ConnectorConfig;
use serde::{Deserialize, Serialize};

/// Errors loading the configuration; each names the file and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// A `[staff.*]` or `[channels.*]` table; the reason names it.
    #[error("{0}")]
    Delivery(String),
    #[error("{path}:{line}: connectors.{id}: {reason}")]
    Connector {
        path: PathBuf,
        line: usize,
        id: String,
        reason: String,
    },
}

/// The whole configuration of one hub process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where data is kept.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The HTTP API and web UI.
    #[serde(default)]
    pub http: HttpConfig,
    /// The embedded MQTT broker sensors publish to.
    #[serde(default)]
    pub mqtt_broker: MqttBrokerConfig,
    /// Sources of readings and outage records by name: `[connectors.NAME]` with a `type` (`mqtt`,
    /// `modbus`). With none, one `mqtt` connector on the embedded broker takes `sensors/{sensor}` and
    /// `outages/#` (`docs/connectors.md`).
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorConfig>,
    /// The built-in telephony core: SIP, RTP, IVR (`docs/telephony.md`).
    #[serde(default)]
    pub telephony: crate::telephony::TelephonyConfig,
    /// Alarm escalation policies by severity (`docs/alarms.md`).
    #[serde(default)]
    pub alarms: crate::alarms::AlarmsConfig,
    /// Tickets: due times by priority, visit lengths, the overdue check (`docs/tickets.md`).
    #[serde(default)]
    pub tickets: crate::tickets::TicketsConfig,
    /// Rhai rules: where they are and how they are watched.
    #[serde(default)]
    pub rules: crate::automation::RulesConfig,
    /// How to reach groups of staff that alarms escalate to and rules notify: `[staff.GROUP]` with
    /// `phones`, `emails` and `telegram` chat ids.
    #[serde(default)]
    pub staff: BTreeMap<String, crate::delivery::StaffGroup>,
    /// Outbound channels by name: `[channels.NAME]` with a `type` (`smtp`, `http_sms`, `smpp`,
    /// `telegram`), see `docs/connectors.md`.
    #[serde(default)]
    pub channels: BTreeMap<String, connectors::channels::ChannelConfig>,
    /// The campaign dispatcher: leases, quiet hours, the operators' hand-over (`docs/campaigns.md`).
    #[serde(default)]
    pub campaigns: crate::campaigns::CampaignsConfig,
}

/// `[mqtt_broker]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttBrokerConfig {
    /// Run the embedded broker (rumqttd). Turn off when sensors publish to an external broker.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address and port of the embedded broker; port 0 picks a free one (printed at start).
    /// Override: `HUB_MQTT_LISTEN`.
    #[serde(default = "default_mqtt_listen")]
    pub listen: SocketAddr,
    /// Largest message a client may publish; the broker disconnects a client that sends more.
    #[serde(default = "default_mqtt_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most clients connected at once.
    #[serde(default = "default_mqtt_max_connections")]
    pub max_connections: usize,
}

fn default_true() -> bool {
    true
}
fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}
fn default_mqtt_max_payload_bytes() -> usize {
    256 * 1024
}
fn default_mqtt_max_connections() -> usize {
    10_000
}

impl Default for MqttBrokerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_mqtt_listen(),
            max_payload_bytes: default_mqtt_max_payload_bytes(),
            max_connections: default_mqtt_max_connections(),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (the embedded default, created if missing, WAL mode) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`. Override: `HUB_DATABASE_URL`.
    #[serde(default = "default_database_url")]
    pub url: Secret,
    /// Connections in the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Days of reading history kept; older readings are deleted hourly. The last value of each sensor
    /// is always kept.
    #[serde(default = "default_readings_retention_days")]
    pub readings_retention_days: u32,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the API and web UI; port 0 picks a free one (printed at start).
    /// Override: `HUB_HTTP_LISTEN`.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Hours a login session (cookie or bearer token from `/api/v1/auth/login`) stays valid.
    #[serde(default = "default_session_ttl_hours")]
    pub session_ttl_hours: u32,
    /// Set the `Secure` flag on the session cookie (turn on when served over HTTPS behind a proxy).
    #[serde(default)]
    pub secure_cookies: bool,
}

fn default_database_url() -> Secret {
    Secret::new("sqlite://data/hub.db")
}
fn default_max_connections() -> u32 {
    8
}
fn default_readings_retention_days() -> u32 {
    90
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_session_ttl_hours() -> u32 {
    12
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
            readings_retention_days: default_readings_retention_days(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            session_ttl_hours: default_session_ttl_hours(),
            secure_cookies: false,
        }
    }
}

pub use connectors::Secret;

impl Config {
    /// Reads `path` if given, else the embedded defaults, then applies `HUB_...` overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let config = Self::parse(path, &text)?;
                config.validate_connectors(path, &text)?;
                config
            }
            None => Self::default(),
        };
        config.apply_env(|var| std::env::var(var).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Each connector's own checks, reported at the line of its `[connectors.NAME]` table.
    fn validate_connectors(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (id, c) in &self.connectors {
            if let Err(e) = c.validate() {
                let header = format!("[connectors.{id}");
                let line = text
                    .lines()
                    .position(|l| l.trim_start().starts_with(&header))
                    .map_or(1, |i| i + 1);
                return Err(ConfigError::Connector {
                    path: path.to_owned(),
                    line,
                    id: id.clone(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Parses TOML text; errors carry the file, line and column.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(url) = get("HUB_DATABASE_URL") {
            self.database.url = Secret::new(url);
        }
        if let Some(listen) = get("HUB_MQTT_LISTEN") {
            self.mqtt_broker.listen = listen.parse().map_err(|e| ConfigError::Env {
                var: "HUB_MQTT_LISTEN",
                reason: format!("{e}: expected ADDRESS:PORT"),
            })?;
        }
        if let Some(listen) = get("HUB_HTTP_LISTEN") {
            self.http.listen = listen.parse().map_err(|e| ConfigError::Env {
                var: "HUB_HTTP_LISTEN",
                reason: format!("{e}: expected ADDRESS:PORT"),
            })?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                field: "database.url",
                reason: "must start with sqlite: or postgres://".into(),
            });
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid {
                field: "database.max_connections",
                reason: "must be at least 1".into(),
            });
        }
        crate::delivery::validate(self).map_err(ConfigError::Delivery)?;
        self.campaigns.validate().map_err(ConfigError::Delivery)?;
        self.tickets.validate().map_err(ConfigError::Delivery)?;
        if self.http.session_ttl_hours == 0 {
            return Err(ConfigError::Invalid {
                field: "http.session_ttl_hours",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let text =
            "[database]\nurl = \"sqlite://x.db\"\n\n[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n";
        let err = Config::parse(Path::new("hub.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("hub.toml:6:"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn defaults_are_embedded() {
        let c = Config::parse(Path::new("hub.toml"), "").unwrap();
        assert_eq!(c.database.url.expose(), "sqlite://data/hub.db");
        assert_eq!(c.http.listen.port(), 8080);
    }

    #[test]
    fn env_overrides_and_secrets_do_not_print() {
        let mut c = Config::default();
        c.apply_env(|v| (v == "HUB_DATABASE_URL").then(|| "postgres://u:pw@h/db".to_owned()))
            .unwrap();
        assert_eq!(c.database.url.expose(), "postgres://u:pw@h/db");
        assert_eq!(
            format!("{:?}", c.database),
            format!("{:?}", c.database).replace("pw", "")
        );
        assert!(!format!("{c:?}").contains("pw"));
        let bad = c.apply_env(|v| (v == "HUB_HTTP_LISTEN").then(|| "nope".to_owned()));
        assert!(bad.unwrap_err().to_string().contains("HUB_HTTP_LISTEN"));
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}
