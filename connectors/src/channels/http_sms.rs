//! The `http_sms` channel: SMS through any HTTP gateway (SMSC, SMS.ru, a carrier's API, an in-house
//! relay), described by a URL and a body template with `{phone}` and `{text}` placeholders. A message
//! is sent when the gateway answers 2xx and, if asked, its answer contains a given substring.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Channel, ChannelError, Delivery, OutboundMessage, default_timeout_seconds, shorten};
use crate::Secret;

/// The HTTP method of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    #[default]
    Post,
    Put,
}

/// `[channels.NAME] type = "http_sms"`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSmsConfig {
    /// The gateway's URL; `{phone}` and `{text}` in it are replaced, percent-encoded. Never logged
    /// (it often holds an API key).
    pub url: Secret,
    /// `GET`, `POST` or `PUT`.
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers, `"Name: value"` each; values are never logged.
    #[serde(default)]
    pub headers: Vec<Secret>,
    /// The request body with `{phone}` and `{text}` replaced; empty: no body.
    #[serde(default)]
    pub body: String,
    /// `Content-Type` of the body; placeholders are escaped for it (JSON strings, form encoding,
    /// else as is).
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// If not empty, a 2xx answer must also contain this text to count as sent.
    #[serde(default)]
    pub success_contains: String,
    /// Seconds to wait for the gateway's answer.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Campaign messages per second through this channel at most; 0: no limit.
    #[serde(default)]
    pub rate_per_s: f64,
    /// Campaign messages in flight at once through this channel.
    #[serde(default = "super::default_concurrency")]
    pub concurrency: usize,
}

pub fn default_content_type() -> String {
    "application/json".into()
}

impl HttpSmsConfig {
    pub fn validate(&self) -> Result<(), ChannelError> {
        self.parsed_url("+70000000000", "x")?;
        self.header_pairs()?;
        Ok(())
    }

    fn parsed_url(&self, phone: &str, text: &str) -> Result<reqwest::Url, ChannelError> {
        let filled = fill(self.url.expose(), phone, text, Escape::Url);
        let url = reqwest::Url::parse(&filled)
            .map_err(|e| ChannelError::Config(format!("url: not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ChannelError::Config(
                "url: must be an http:// or https:// URL with a host".into(),
            ));
        }
        Ok(url)
    }

    fn header_pairs(&self) -> Result<Vec<(String, String)>, ChannelError> {
        self.headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (name, value) = h.expose().split_once(':').ok_or_else(|| {
                    ChannelError::Config(format!("headers[{i}]: expected `Name: value`"))
                })?;
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    // The name is not echoed: a malformed line may be a secret.
                    return Err(ChannelError::Config(format!(
                        "headers[{i}]: the part before `:` is not a header name"
                    )));
                }
                Ok((name.to_owned(), value.trim().to_owned()))
            })
            .collect()
    }
}

/// How a placeholder's value is written into its template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Url,
    Json,
    Form,
    Raw,
}

impl Escape {
    fn for_content_type(content_type: &str) -> Escape {
        let ct = content_type.to_ascii_lowercase();
        if ct.contains("json") {
            Escape::Json
        } else if ct.contains("x-www-form-urlencoded") {
            Escape::Form
        } else {
            Escape::Raw
        }
    }

    fn apply(self, value: &str) -> String {
        match self {
            Escape::Url | Escape::Form => {
                form_urlencoded::byte_serialize(value.as_bytes()).collect()
            }
            Escape::Json => {
                let quoted = serde_json::Value::String(value.to_owned()).to_string();
                quoted[1..quoted.len() - 1].to_owned()
            }
            Escape::Raw => value.to_owned(),
        }
    }
}

/// Replaces `{phone}` and `{text}` in one pass, so a text that contains `{phone}` stays as it is.
fn fill(template: &str, phone: &str, text: &str, escape: Escape) -> String {
    let mut out = String::with_capacity(template.len() + text.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{phone}") {
            out.push_str(&escape.apply(phone));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{text}") {
            out.push_str(&escape.apply(text));
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A phone number as gateways want it: digits with an optional leading `+`; spaces, dashes and
/// brackets are dropped.
pub fn normalize_phone(raw: &str) -> Result<String, ChannelError> {
    let phone: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    let digits = phone.strip_prefix('+').unwrap_or(&phone);
    if (5..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(phone)
    } else {
        Err(ChannelError::BadAddress {
            address: raw.to_owned(),
            reason: "not a phone number (5 to 15 digits, optionally after +)".into(),
        })
    }
}

/// Sends SMS through one HTTP gateway.
pub struct HttpSmsChannel {
    config: HttpSmsConfig,
    headers: Vec<(String, String)>,
    client: reqwest::Client,
    gateway: String,
    timeout: Duration,
}

impl HttpSmsChannel {
    pub fn new(config: HttpSmsConfig) -> Result<Self, ChannelError> {
        config.validate()?;
        let headers = config.header_pairs()?;
        let host = config
            .parsed_url("+70000000000", "x")?
            .host_str()
            .unwrap_or_default()
            .to_owned();
        let timeout = super::timeout_of(config.timeout_seconds);
        Ok(Self {
            client: super::http_client(timeout)?,
            gateway: format!("sms gateway {host}"),
            headers,
            config,
            timeout,
        })
    }
}

impl Channel for HttpSmsChannel {
    async fn send(&self, msg: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let phone = normalize_phone(&msg.to)?;
        let url = self.config.parsed_url(&phone, &msg.text)?;
        let method = match self.config.method {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        };
        let mut request = self.client.request(method, url);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if !self.config.body.is_empty() {
            let escape = Escape::for_content_type(&self.config.content_type);
            request = request
                .header(reqwest::header::CONTENT_TYPE, &self.config.content_type)
                .body(fill(&self.config.body, &phone, &msg.text, escape));
        }
        let timed_out = |e| super::http_error(&self.gateway, self.timeout, e);
        let response = request.send().await.map_err(timed_out)?;
        let status = response.status();
        let body = response.text().await.map_err(timed_out)?;
        if !status.is_success() {
            return Err(super::refusal(&self.gateway, status, &body));
        }
        let wanted = &self.config.success_contains;
        if !wanted.is_empty() && !body.contains(wanted.as_str()) {
            return Err(ChannelError::Rejected {
                gateway: self.gateway.clone(),
                answer: format!("{status} without `{wanted}`: {}", shorten(&body)),
            });
        }
        Ok(Delivery {
            receipt: shorten(&format!("{status} {body}")),
            ..Delivery::default()
        })
    }

    /// A gateway has no standard "are you there": a connection to its host is what can be checked.
    async fn healthcheck(&self) -> Result<(), ChannelError> {
        let url = self.config.parsed_url("+70000000000", "")?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => Err(ChannelError::Timeout {
                gateway: self.gateway.clone(),
                after: self.timeout,
            }),
            Ok(Err(e)) => Err(ChannelError::Unavailable {
                gateway: self.gateway.clone(),
                reason: e.to_string(),
            }),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_escaped_for_where_they_go() {
        let text = "Давление \"низкое\" {phone} & 5%";
        assert_eq!(
            fill(
                "{\"to\":\"{phone}\",\"text\":\"{text}\"}",
                "+7900",
                text,
                Escape::Json
            ),
            "{\"to\":\"+7900\",\"text\":\"Давление \\\"низкое\\\" {phone} & 5%\"}"
        );
        assert_eq!(
            fill("to={phone}&msg={text}", "+7900", "a b&c", Escape::Form),
            "to=%2B7900&msg=a+b%26c"
        );
        assert_eq!(fill("{x}{text", "p", "t", Escape::Raw), "{x}{text");
    }

    #[test]
    fn phones_are_normalized_or_refused() {
        assert_eq!(
            normalize_phone("+7 (900) 123-45-67").unwrap(),
            "+79001234567"
        );
        let e = normalize_phone("ivanov").unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().starts_with("bad address `ivanov`"), "{e}");
    }

    #[test]
    fn bad_config_names_the_key_and_never_the_url() {
        let c: HttpSmsConfig = toml::from_str("url = \"ftp://sms.example/?key=s3cret\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("url:") && !e.contains("s3cret"), "{e}");
        let c: HttpSmsConfig = toml::from_str(
            "url = \"https://sms.example/\"\nheaders = [\"Authorization s3cret\"]\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("headers[0]") && !e.contains("s3cret"), "{e}");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
