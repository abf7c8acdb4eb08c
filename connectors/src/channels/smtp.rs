//! The `smtp` channel: plain-text UTF-8 e-mail through an SMTP server (lettre), with no TLS, STARTTLS
//! or implicit TLS, and optional login. The message goes out as 8-bit UTF-8 so Cyrillic stays legible
//! in any mail client and log.

use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::{Channel, ChannelError, Delivery, OutboundMessage, default_timeout_seconds, shorten};
use crate::Secret;

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or network). Default port 25.
    None,
    /// Upgrade with STARTTLS, refusing a server that cannot. Default port 587.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS). Default port 465.
    Tls,
}

/// `[channels.NAME] type = "smtp"`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The server's host name (also the name its TLS certificate must carry).
    pub host: String,
    /// The server's port; by default 25, 587 or 465 after `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Login name, if the server wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password of `username`; never logged.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The sender: `hub@teplo.example` or `Hub <hub@teplo.example>`.
    pub from: String,
    /// Seconds to wait for the server at each step.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Campaign messages per second through this channel at most; 0: no limit.
    #[serde(default)]
    pub rate_per_s: f64,
    /// Campaign messages in flight at once through this channel.
    #[serde(default = "super::default_concurrency")]
    pub concurrency: usize,
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        })
    }

    pub fn validate(&self) -> Result<(), ChannelError> {
        if self.host.trim().is_empty() {
            return Err(ChannelError::Config("host: must not be empty".into()));
        }
        self.from.parse::<Mailbox>().map_err(|e| {
            ChannelError::Config(format!(
                "from: `{}` is not an e-mail address: {e}",
                self.from
            ))
        })?;
        if self.password.is_some() && self.username.is_none() {
            return Err(ChannelError::Config(
                "password: set `username` too (or remove the password)".into(),
            ));
        }
        Ok(())
    }
}

/// Sends e-mail through one SMTP server; a connection per message (staff notifications are few).
pub struct SmtpChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    gateway: String,
    timeout: Duration,
}

impl SmtpChannel {
    pub fn new(config: SmtpConfig) -> Result<Self, ChannelError> {
        config.validate()?;
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|e| ChannelError::Config(format!("from: {e}")))?;
        let timeout = super::timeout_of(config.timeout_seconds);
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(tls_parameters(&config.host)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(&config.host)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port())
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(user) = &config.username {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            gateway: format!("smtp server {}:{}", config.host, config.port()),
            timeout,
        })
    }

    fn error(&self, e: lettre::transport::smtp::Error) -> ChannelError {
        let gateway = self.gateway.clone();
        if e.is_timeout() {
            ChannelError::Timeout {
                gateway,
                after: self.timeout,
            }
        } else if e.is_permanent() {
            ChannelError::Rejected {
                gateway,
                answer: shorten(&e.to_string()),
            }
        } else {
            // Transient replies (4xx), refused connections, TLS failures: worth another try later.
            ChannelError::Unavailable {
                gateway,
                reason: shorten(&e.to_string()),
            }
        }
    }

    fn message(&self, msg: &OutboundMessage) -> Result<Message, ChannelError> {
        let to = msg
            .to
            .parse::<Mailbox>()
            .map_err(|e| ChannelError::BadAddress {
                address: msg.to.clone(),
                reason: format!("not an e-mail address: {e}"),
            })?;
        // 8-bit keeps the text readable on the wire (lines wrapped to fit it); a word too long for a
        // line falls back to lettre's own choice (quoted-printable or base64).
        let body = Body::new_with_encoding(wrap(&msg.text), ContentTransferEncoding::EightBit)
            .unwrap_or_else(Body::new);
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(msg.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| ChannelError::BadAddress {
                address: msg.to.clone(),
                reason: e.to_string(),
            })
    }
}

/// Longest line of an 8-bit body, in bytes (lettre wants fewer than 76).
const MAX_LINE_BYTES: usize = 75;

/// Wraps each line at spaces to at most [`MAX_LINE_BYTES`] bytes, as mail clients do for plain text.
fn wrap(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut width = 0;
        for (j, word) in line.split(' ').enumerate() {
            if j > 0 {
                if width > 0 && width + 1 + word.len() > MAX_LINE_BYTES {
                    out.push('\n');
                    width = 0;
                } else {
                    out.push(' ');
                    width += 1;
                }
            }
            out.push_str(word);
            width += word.len();
        }
    }
    out
}

fn tls_parameters(host: &str) -> Result<TlsParameters, ChannelError> {
    TlsParameters::new(host.to_owned())
        .map_err(|e| ChannelError::Config(format!("tls for {host}: {e}")))
}

impl Channel for SmtpChannel {
    async fn send(&self, msg: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let message = self.message(msg)?;
        // lettre's timeout is per socket operation; this bounds the whole conversation.
        let sent = tokio::time::timeout(self.timeout * 4, self.transport.send(message)).await;
        match sent {
            Err(_) => Err(ChannelError::Timeout {
                gateway: self.gateway.clone(),
                after: self.timeout * 4,
            }),
            Ok(Err(e)) => Err(self.error(e)),
            Ok(Ok(response)) => Ok(Delivery {
                receipt: shorten(&format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )),
                ..Delivery::default()
            }),
        }
    }

    async fn healthcheck(&self) -> Result<(), ChannelError> {
        match tokio::time::timeout(self.timeout * 4, self.transport.test_connection()).await {
            Err(_) => Err(ChannelError::Timeout {
                gateway: self.gateway.clone(),
                after: self.timeout * 4,
            }),
            Ok(Err(e)) => Err(self.error(e)),
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(ChannelError::Unavailable {
                gateway: self.gateway.clone(),
                reason: "the server did not answer NOOP".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> SmtpConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn ports_follow_tls_and_secrets_do_not_print() {
        let c = config(
            "host = \"mx\"\nfrom = \"hub@x.example\"\nusername = \"u\"\npassword = \"hunter2\"\n",
        );
        assert_eq!((c.tls, c.port()), (SmtpTls::Starttls, 587));
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = config("host = \"mx\"\nfrom = \"hub@x.example\"\ntls = \"tls\"\n");
        assert_eq!(c.port(), 465);
        // Building TLS parameters must not need anything from the system (no OpenSSL).
        assert!(SmtpChannel::new(c).is_ok());
    }

    #[test]
    fn long_lines_are_wrapped_at_spaces() {
        let text = format!("{}\nкоротко", "Давление упало ".repeat(8).trim_end());
        let wrapped = wrap(&text);
        assert!(
            wrapped.lines().all(|l| l.len() <= MAX_LINE_BYTES),
            "{wrapped}"
        );
        assert_eq!(
            wrapped.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert!(wrapped.ends_with("\nкоротко"));
        assert_eq!(wrap("a  b"), "a  b");
    }

    #[test]
    fn bad_sender_and_bad_address_are_told_apart() {
        let c = config("host = \"mx\"\nfrom = \"not an address\"\ntls = \"none\"\n");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("from: `not an address`"), "{e}");
        let ch = SmtpChannel::new(config(
            "host = \"mx\"\nfrom = \"hub@x.example\"\ntls = \"none\"\n",
        ))
        .unwrap();
        let e = ch
            .message(&OutboundMessage {
                to: "ivanov".into(),
                subject: "s".into(),
                text: "t".into(),
            })
            .unwrap_err();
        assert!(matches!(e, ChannelError::BadAddress { .. }), "{e}");
        assert!(e.is_permanent());
    }
}
