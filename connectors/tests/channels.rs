//! The outbound channels against real peers on `127.0.0.1`: aiosmtpd (from PyPI, started as a child
//! process; a missing one fails the test) for `smtp`, and a recording HTTP stub for `http_sms` and
//! `telegram`, including refusals and gateways that never answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use connectors::Secret;
use connectors::channels::http_sms::{HttpMethod, HttpSmsChannel, HttpSmsConfig};
use connectors::channels::smtp::{SmtpChannel, SmtpConfig, SmtpTls};
use connectors::channels::telegram::{TelegramChannel, TelegramConfig};
use connectors::channels::testing::{HttpStub, Smtpd};
use connectors::channels::{Channel, ChannelError, OutboundMessage};

const TEXT: &str = "Давление на ТП-3 упало до 2,1 бар (авария 17)";

fn message(to: &str) -> OutboundMessage {
    OutboundMessage {
        to: to.into(),
        subject: "[critical] ТП-3".into(),
        text: TEXT.into(),
    }
}

fn smtp(port: u16) -> SmtpChannel {
    SmtpChannel::new(SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        tls: SmtpTls::None,
        username: None,
        password: None,
        from: "Hub <hub@teplo.example>".into(),
        timeout_seconds: 5,
        rate_per_s: 0.0,
        concurrency: 1,
    })
    .unwrap()
}

#[tokio::test]
async fn smtp_delivers_russian_text_to_a_real_server() {
    let smtpd = Smtpd::start().await.unwrap_or_else(|e| panic!("{e}"));
    let channel = smtp(smtpd.port);
    channel.healthcheck().await.unwrap();
    let delivery = channel
        .send(&message("engineer@teplo.example"))
        .await
        .unwrap();
    assert!(delivery.receipt.starts_with("250"), "{delivery:?}");
    let out = smtpd
        .wait_for("END MESSAGE", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains(TEXT), "the text arrives as written:\n{out}");
    assert!(out.contains("To: engineer@teplo.example"), "{out}");
    assert!(out.contains("From: Hub <hub@teplo.example>"), "{out}");
    assert!(out.contains("charset=utf-8"), "{out}");
}

#[tokio::test]
async fn smtp_without_a_server_is_unavailable_and_keeps_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let channel = SmtpChannel::new(SmtpConfig {
        username: Some("hub".into()),
        password: Some(Secret::new("hunter2")),
        ..SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(port),
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "hub@teplo.example".into(),
            timeout_seconds: 2,
            rate_per_s: 0.0,
            concurrency: 1,
        }
    })
    .unwrap();
    let e = channel.send(&message("a@teplo.example")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Unavailable { .. }), "{e:?}");
    assert!(!e.is_permanent());
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let e = channel.send(&message("not-an-address")).await.unwrap_err();
    assert!(matches!(e, ChannelError::BadAddress { .. }), "{e:?}");
}

fn sms(stub: &HttpStub, timeout_seconds: u64) -> HttpSmsChannel {
    HttpSmsChannel::new(HttpSmsConfig {
        url: Secret::new(format!("{}/send?key=s3cret&to={{phone}}", stub.url())),
        method: HttpMethod::Post,
        headers: vec![Secret::new("Authorization: Bearer t0ken")],
        body: r#"{"phone": "{phone}", "text": "{text}"}"#.into(),
        content_type: "application/json".into(),
        success_contains: "accepted".into(),
        timeout_seconds,
        rate_per_s: 0.0,
        concurrency: 1,
    })
    .unwrap()
}

#[tokio::test]
async fn http_sms_fills_the_templates_and_reads_the_answer() {
    let stub = HttpStub::start().await.unwrap();
    stub.reply(200, r#"{"status":"accepted","id":"m-1"}"#);
    let channel = sms(&stub, 5);
    let delivery = channel.send(&message("+7 (900) 123-45-67")).await.unwrap();
    assert!(delivery.receipt.contains("m-1"), "{delivery:?}");
    let requests = stub.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/send?key=s3cret&to=%2B79001234567");
    assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"phone": "+79001234567", "text": TEXT})
    );

    // A 2xx without the success text is not a sent message.
    stub.reply(200, r#"{"status":"queue full"}"#);
    let e = channel.send(&message("+79001234567")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("queue full"), "{e}");
}

#[tokio::test]
async fn http_sms_refusal_carries_the_gateway_answer_and_no_secret() {
    let stub = HttpStub::start().await.unwrap();
    stub.reply(400, r#"{"error":"sender name not registered"}"#);
    let channel = sms(&stub, 5);
    let e = channel.send(&message("+79001234567")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Rejected { .. }), "{e:?}");
    assert!(e.is_permanent());
    let text = e.to_string();
    assert!(
        text.starts_with("sms gateway 127.0.0.1 rejected the message: 400 Bad Request"),
        "{text}"
    );
    assert!(text.contains("sender name not registered"), "{text}");
    assert!(
        !text.contains("s3cret") && !text.contains("t0ken"),
        "{text}"
    );

    stub.reply(503, "maintenance");
    let e = channel.send(&message("+79001234567")).await.unwrap_err();
    assert!(
        matches!(e, ChannelError::Unavailable { .. }) && !e.is_permanent(),
        "{e:?}"
    );

    let e = channel.send(&message("dispatcher")).await.unwrap_err();
    assert!(matches!(e, ChannelError::BadAddress { .. }), "{e:?}");
    assert_eq!(stub.requests().len(), 2, "a bad number is not sent");
}

#[tokio::test]
async fn http_sms_gateway_that_does_not_answer_times_out() {
    let stub = HttpStub::start().await.unwrap();
    stub.delay(Duration::from_secs(5));
    let channel = sms(&stub, 1);
    let started = std::time::Instant::now();
    let e = channel.send(&message("+79001234567")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Timeout { .. }), "{e:?}");
    assert!(!e.is_permanent());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert_eq!(text, "sms gateway 127.0.0.1: no answer within 1 s");
}

fn telegram(stub: &HttpStub, timeout_seconds: u64) -> TelegramChannel {
    TelegramChannel::new(TelegramConfig {
        base_url: format!("{}/", stub.url()),
        token: Secret::new("123456:SECRET-token"),
        timeout_seconds,
        rate_per_s: 0.0,
        concurrency: 1,
    })
    .unwrap()
}

#[tokio::test]
async fn telegram_sends_to_the_chat_through_the_bot_api() {
    let stub = HttpStub::start().await.unwrap();
    stub.reply(
        200,
        r#"{"ok":true,"result":{"message_id":42,"chat":{"id":-100500}}}"#,
    );
    let channel = telegram(&stub, 5);
    let delivery = channel.send(&message("-100500")).await.unwrap();
    assert_eq!(delivery.receipt, "message_id 42");
    channel.healthcheck().await.unwrap();
    let requests = stub.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].uri, "/bot123456:SECRET-token/sendMessage");
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"chat_id": "-100500", "text": TEXT})
    );
    assert_eq!(
        (requests[1].method.as_str(), requests[1].uri.as_str()),
        ("GET", "/bot123456:SECRET-token/getMe")
    );
}

#[tokio::test]
async fn telegram_refusal_and_timeout_never_show_the_token() {
    let stub = HttpStub::start().await.unwrap();
    stub.reply(
        400,
        r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
    );
    let channel = telegram(&stub, 1);
    let e = channel.send(&message("777")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Rejected { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("chat not found"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");

    stub.reply(
        401,
        r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#,
    );
    let e = channel.healthcheck().await.unwrap_err();
    assert!(e.to_string().contains("Unauthorized"), "{e}");

    stub.delay(Duration::from_secs(5));
    let e = channel.send(&message("777")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Timeout { .. }), "{e:?}");
    assert!(!format!("{e} {e:?}").contains("SECRET"), "{e:?}");

    let e = channel.send(&message("Иванов")).await.unwrap_err();
    assert!(matches!(e, ChannelError::BadAddress { .. }), "{e:?}");
}

#[tokio::test]
async fn channel_tables_parse_by_type() {
    let c: std::collections::BTreeMap<String, connectors::channels::ChannelConfig> =
        toml::from_str(
            r#"
            [mail]
            type = "smtp"
            host = "mail.teplo.example"
            from = "hub@teplo.example"

            [sms]
            type = "http_sms"
            url = "https://sms.example/send?to={phone}&text={text}"
            method = "GET"

            [tg]
            type = "telegram"
            token = "1:x"
            "#,
        )
        .unwrap();
    let kinds: Vec<&str> = c.values().map(|c| c.kind()).collect();
    assert_eq!(kinds, ["smtp", "http_sms", "telegram"]);
    for config in c.values() {
        config.validate().unwrap();
        config.build().unwrap();
    }
    let bad = toml::from_str::<connectors::channels::ChannelConfig>(
        "type = \"smtp\"\nhost = \"h\"\nfrom = \"a@b.c\"\nprot = 1\n",
    );
    assert!(bad.unwrap_err().to_string().contains("prot"));
}
