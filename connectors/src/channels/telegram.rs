//! The `telegram` channel: the Bot API's `sendMessage` to a chat id (a person who started the bot, or a
//! group it is in). `base_url` points it at a Bot API server of your own or a test stub.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Channel, ChannelError, Delivery, OutboundMessage, default_timeout_seconds, shorten};
use crate::Secret;

pub fn default_base_url() -> String {
    "https://api.telegram.org".into()
}

/// `[channels.NAME] type = "telegram"`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The Bot API server.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The bot's token from @BotFather; never logged.
    pub token: Secret,
    /// Seconds to wait for the answer.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Campaign messages per second through this channel at most; 0: no limit.
    #[serde(default)]
    pub rate_per_s: f64,
    /// Campaign messages in flight at once through this channel.
    #[serde(default = "super::default_concurrency")]
    pub concurrency: usize,
}

impl TelegramConfig {
    pub fn validate(&self) -> Result<(), ChannelError> {
        let url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| ChannelError::Config(format!("base_url: not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChannelError::Config(
                "base_url: must be an http:// or https:// URL".into(),
            ));
        }
        if self.token.expose().trim().is_empty() || self.token.expose().contains('/') {
            return Err(ChannelError::Config(
                "token: expected the bot token from @BotFather".into(),
            ));
        }
        Ok(())
    }
}

/// A chat id: a number (negative for groups) or a public `@channel` name.
pub fn check_chat_id(raw: &str) -> Result<String, ChannelError> {
    let id = raw.trim();
    let numeric = id.strip_prefix('-').unwrap_or(id);
    let ok = (!numeric.is_empty() && numeric.bytes().all(|b| b.is_ascii_digit()))
        || id.strip_prefix('@').is_some_and(|name| {
            name.len() >= 4 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if ok {
        Ok(id.to_owned())
    } else {
        Err(ChannelError::BadAddress {
            address: raw.to_owned(),
            reason: "not a Telegram chat id (a number, or @name)".into(),
        })
    }
}

/// The Bot API's envelope: `{"ok": true, "result": ...}` or `{"ok": false, "description": ...}`.
#[derive(Debug, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    description: String,
    #[serde(default)]
    result: serde_json::Value,
}

/// Sends through one bot.
pub struct TelegramChannel {
    config: TelegramConfig,
    client: reqwest::Client,
    gateway: String,
    timeout: Duration,
}

impl TelegramChannel {
    pub fn new(config: TelegramConfig) -> Result<Self, ChannelError> {
        config.validate()?;
        let timeout = super::timeout_of(config.timeout_seconds);
        Ok(Self {
            client: super::http_client(timeout)?,
            gateway: "telegram bot api".into(),
            config,
            timeout,
        })
    }

    /// The method's URL. It holds the token: it never goes into an error or a log.
    fn method_url(&self, method: &str) -> String {
        format!(
            "{}/bot{}/{method}",
            self.config.base_url.trim_end_matches('/'),
            self.config.token.expose()
        )
    }

    async fn call(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, ChannelError> {
        let failed = |e| super::http_error(&self.gateway, self.timeout, e);
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let body = response.text().await.map_err(failed)?;
        let answer: Option<Answer> = serde_json::from_str(&body).ok();
        match answer {
            Some(a) if status.is_success() && a.ok => Ok(a.result),
            Some(a) if !a.description.is_empty() => Err(super::refusal(
                &self.gateway,
                if status.is_success() {
                    reqwest::StatusCode::BAD_REQUEST
                } else {
                    status
                },
                &a.description,
            )),
            _ if status.is_success() => Err(ChannelError::Unavailable {
                gateway: self.gateway.clone(),
                reason: format!("not a Bot API answer: {}", shorten(&body)),
            }),
            _ => Err(super::refusal(&self.gateway, status, &body)),
        }
    }
}

impl Channel for TelegramChannel {
    async fn send(&self, msg: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let chat_id = check_chat_id(&msg.to)?;
        let request = self
            .client
            .post(self.method_url("sendMessage"))
            .json(&serde_json::json!({"chat_id": chat_id, "text": msg.text}));
        let result = self.call(request).await?;
        Ok(Delivery {
            receipt: match result.get("message_id") {
                Some(id) => format!("message_id {id}"),
                None => "sent".into(),
            },
            ..Delivery::default()
        })
    }

    /// `getMe`: the server answers and the token is valid.
    async fn healthcheck(&self) -> Result<(), ChannelError> {
        self.call(self.client.get(self.method_url("getMe")))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_are_numbers_or_names() {
        assert_eq!(check_chat_id(" -100123 ").unwrap(), "-100123");
        assert_eq!(check_chat_id("@duty_room").unwrap(), "@duty_room");
        assert!(check_chat_id("ivanov").unwrap_err().is_permanent());
        assert!(check_chat_id("-").is_err());
    }

    #[test]
    fn the_token_never_prints() {
        let c: TelegramConfig = toml::from_str("token = \"123:ABC\"\n").unwrap();
        assert_eq!(c.base_url, "https://api.telegram.org");
        assert!(!format!("{c:?}").contains("ABC"));
        assert!(TelegramChannel::new(c).is_ok());
    }
}
