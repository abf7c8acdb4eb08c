//! Outbound channels: the last hop of the flow, where a staff notification or a campaign message leaves
//! the hub as an e-mail ([`smtp`]), an SMS through an HTTP gateway ([`http_sms`]) or an SMS centre
//! ([`smpp`]), or a Telegram message ([`telegram`]). One trait ([`Channel`]), one module per protocol, and one serde enum tagged by `type`
//! ([`ChannelConfig`], the `[channels.NAME]` tables of `hub.toml`) that builds them.
//!
//! Errors say what went wrong in words an operator can act on, and never carry a secret: passwords,
//! tokens and gateway URLs (which often hold an API key) are left out of every message.

pub mod http_sms;
pub mod receipt;
pub mod smpp;
pub mod smtp;
pub mod telegram;
pub mod testing;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use receipt::{IncomingReceipt, Receipt, ReceiptState, Receipts};

/// Longest part of a gateway's answer kept in an error or a receipt.
pub const MAX_ANSWER_CHARS: usize = 300;

/// One message to one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Where it goes, in the channel's terms: an e-mail address, a phone number, a chat id.
    pub to: String,
    /// Subject line; only e-mail uses it.
    pub subject: String,
    /// The text, plain UTF-8.
    pub text: String,
}

/// A message the gateway accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// What the gateway answered (an SMTP reply, a message id, a status line), shortened.
    pub receipt: String,
    /// The ids under which the gateway reports on the message later, one per SMS part (SMPP); the
    /// [`Receipt`]s from [`Channel::take_receipts`] name them. Empty for channels without receipts.
    pub message_ids: Vec<String>,
}

/// Why a message was not sent. [`ChannelError::is_permanent`] tells whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The address cannot be sent to on this channel (not an e-mail address, not a phone number).
    #[error("bad address `{address}`: {reason}")]
    BadAddress { address: String, reason: String },
    /// The gateway answered and refused the message; `answer` is what it said.
    #[error("{gateway} rejected the message: {answer}")]
    Rejected { gateway: String, answer: String },
    /// The gateway did not answer in time.
    #[error("{gateway}: no answer within {} s", after.as_secs_f64())]
    Timeout { gateway: String, after: Duration },
    /// The gateway cannot be reached, or asked to come back later (`answer` says why).
    #[error("{gateway} unavailable: {reason}")]
    Unavailable { gateway: String, reason: String },
    /// The channel's configuration is wrong (found when it is built).
    #[error("{0}")]
    Config(String),
}

impl ChannelError {
    /// True when sending the same message again cannot succeed: a bad address, a refusal, a bad
    /// configuration. Timeouts and unavailable gateways are worth a retry.
    pub fn is_permanent(&self) -> bool {
        match self {
            ChannelError::BadAddress { .. }
            | ChannelError::Rejected { .. }
            | ChannelError::Config(_) => true,
            ChannelError::Timeout { .. } | ChannelError::Unavailable { .. } => false,
        }
    }
}

/// One kind of outbound channel.
pub trait Channel: Send + Sync {
    /// Sends one message; resolves once the gateway accepted or refused it.
    fn send(
        &self,
        msg: &OutboundMessage,
    ) -> impl Future<Output = Result<Delivery, ChannelError>> + Send;
    /// Checks that the gateway answers and accepts the credentials, without sending anything.
    fn healthcheck(&self) -> impl Future<Output = Result<(), ChannelError>> + Send;
    /// The delivery receipts of what this channel sends, for the one component that tracks final
    /// states: the first call takes them, later calls and channels without receipts get `None`.
    /// Until they are taken, receipts are acknowledged to the gateway and dropped.
    fn take_receipts(&self) -> Option<Receipts> {
        None
    }
    /// Ends the channel's session with its gateway politely (SMPP unbind), waiting a few seconds at
    /// most. Channels without a session have nothing to do.
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A boxed future of a [`DynChannel`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Channel`] behind a pointer, for code that holds channels of several kinds (the delivery worker,
/// and its tests' fakes). Every `Channel` is one.
pub trait DynChannel: Send + Sync {
    fn send<'a>(
        &'a self,
        msg: &'a OutboundMessage,
    ) -> BoxFuture<'a, Result<Delivery, ChannelError>>;
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), ChannelError>>;
    fn take_receipts(&self) -> Option<Receipts>;
    fn close(&self) -> BoxFuture<'_, ()>;
}

impl<T: Channel> DynChannel for T {
    fn send<'a>(
        &'a self,
        msg: &'a OutboundMessage,
    ) -> BoxFuture<'a, Result<Delivery, ChannelError>> {
        Box::pin(Channel::send(self, msg))
    }
    fn healthcheck(&self) -> BoxFuture<'_, Result<(), ChannelError>> {
        Box::pin(Channel::healthcheck(self))
    }
    fn take_receipts(&self) -> Option<Receipts> {
        Channel::take_receipts(self)
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Channel::close(self))
    }
}

/// `[channels.NAME]`: one configured outbound channel, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelConfig {
    /// E-mail through an SMTP server.
    Smtp(smtp::SmtpConfig),
    /// SMS through an HTTP gateway.
    HttpSms(http_sms::HttpSmsConfig),
    /// SMS through an SMS centre over SMPP 3.4.
    Smpp(smpp::SmppConfig),
    /// Telegram Bot API `sendMessage`.
    Telegram(telegram::TelegramConfig),
}

impl ChannelConfig {
    /// The `type` of the table.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Smtp(_) => "smtp",
            ChannelConfig::HttpSms(_) => "http_sms",
            ChannelConfig::Smpp(_) => "smpp",
            ChannelConfig::Telegram(_) => "telegram",
        }
    }

    /// Checks what can be checked without connecting; errors name the key.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let (rate, concurrency) = match self {
            ChannelConfig::Smtp(c) => (c.rate_per_s, c.concurrency),
            ChannelConfig::HttpSms(c) => (c.rate_per_s, c.concurrency),
            // `window` is checked, under its own name, by the channel's validate below.
            ChannelConfig::Smpp(c) => (c.rate_per_s, c.window.max(1)),
            ChannelConfig::Telegram(c) => (c.rate_per_s, c.concurrency),
        };
        if !rate.is_finite() || rate < 0.0 {
            return Err(ChannelError::Config(
                "rate_per_s: a number of messages per second, 0 for no limit".into(),
            ));
        }
        if concurrency == 0 {
            return Err(ChannelError::Config("concurrency: at least 1".into()));
        }
        match self {
            ChannelConfig::Smtp(c) => c.validate(),
            ChannelConfig::HttpSms(c) => c.validate(),
            ChannelConfig::Smpp(c) => c.validate(),
            ChannelConfig::Telegram(c) => c.validate(),
        }
    }

    /// Campaign pacing of the channel: messages per second at most (0: no limit) and messages in
    /// flight at once (at least 1).
    pub fn limits(&self) -> (f64, usize) {
        let (rate, concurrency) = match self {
            ChannelConfig::Smtp(c) => (c.rate_per_s, c.concurrency),
            ChannelConfig::HttpSms(c) => (c.rate_per_s, c.concurrency),
            ChannelConfig::Smpp(c) => (c.rate_per_s, c.window),
            ChannelConfig::Telegram(c) => (c.rate_per_s, c.concurrency),
        };
        (rate.max(0.0), concurrency.max(1))
    }

    /// Builds the channel (no connection is made until the first message).
    pub fn build(&self) -> Result<Arc<dyn DynChannel>, ChannelError> {
        Ok(match self {
            ChannelConfig::Smtp(c) => Arc::new(smtp::SmtpChannel::new(c.clone())?),
            ChannelConfig::HttpSms(c) => Arc::new(http_sms::HttpSmsChannel::new(c.clone())?),
            ChannelConfig::Smpp(c) => Arc::new(smpp::SmppChannel::new(c.clone())?),
            ChannelConfig::Telegram(c) => Arc::new(telegram::TelegramChannel::new(c.clone())?),
        })
    }
}

/// Default of every channel's `concurrency`.
pub fn default_concurrency() -> usize {
    8
}

/// Default of every channel's `timeout_seconds`.
pub fn default_timeout_seconds() -> u64 {
    15
}

/// `timeout_seconds` as a duration, at least one second.
fn timeout_of(seconds: u64) -> Duration {
    Duration::from_secs(seconds.max(1))
}

/// A gateway's answer cut to [`MAX_ANSWER_CHARS`], on one line.
pub(crate) fn shorten(answer: &str) -> String {
    let one_line: String = answer
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(MAX_ANSWER_CHARS) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// Maps a reqwest failure to a channel error. The URL is dropped first: gateway URLs carry keys
/// (Telegram's token is part of the path).
pub(crate) fn http_error(gateway: &str, after: Duration, e: reqwest::Error) -> ChannelError {
    let e = e.without_url();
    if e.is_timeout() {
        return ChannelError::Timeout {
            gateway: gateway.to_owned(),
            after,
        };
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    ChannelError::Unavailable {
        gateway: gateway.to_owned(),
        reason,
    }
}

/// An HTTP client with the channel's timeout.
pub(crate) fn http_client(after: Duration) -> Result<reqwest::Client, ChannelError> {
    reqwest::Client::builder()
        .timeout(after)
        .connect_timeout(after)
        .build()
        .map_err(|e| ChannelError::Config(format!("http client: {}", e.without_url())))
}

/// Turns an HTTP answer that is not a success into an error: 429 and 5xx mean "later", any other
/// status is a refusal.
pub(crate) fn refusal(gateway: &str, status: reqwest::StatusCode, body: &str) -> ChannelError {
    let answer = if body.trim().is_empty() {
        status.to_string()
    } else {
        format!("{status}: {}", shorten(body))
    };
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        ChannelError::Unavailable {
            gateway: gateway.to_owned(),
            reason: answer,
        }
    } else {
        ChannelError::Rejected {
            gateway: gateway.to_owned(),
            answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_shortened_to_one_line() {
        assert_eq!(shorten(" a\nb "), "a b");
        let long = "я".repeat(MAX_ANSWER_CHARS + 10);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_ANSWER_CHARS + 3);
    }

    #[test]
    fn only_retryable_errors_are_not_permanent() {
        let t = ChannelError::Timeout {
            gateway: "g".into(),
            after: Duration::from_secs(2),
        };
        assert!(!t.is_permanent());
        assert_eq!(t.to_string(), "g: no answer within 2 s");
        assert!(
            refusal("g", reqwest::StatusCode::BAD_REQUEST, "no").is_permanent(),
            "a 400 is a refusal"
        );
        assert!(!refusal("g", reqwest::StatusCode::TOO_MANY_REQUESTS, "").is_permanent());
        assert!(!refusal("g", reqwest::StatusCode::BAD_GATEWAY, "").is_permanent());
    }
}
