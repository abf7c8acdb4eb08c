//! Staff notifications end to end: a critical alarm raised through the API escalates at once (policy
//! `after_minutes = 0`) to the on-duty engineer, who gets an SMS through an HTTP gateway stub, then to
//! the chief engineer, who has only e-mail and gets it from a real SMTP server (aiosmtpd). The outbox
//! shows both `delivered`.

use std::time::Duration;

use connectors::channels::testing::{HttpStub, Smtpd};
use serde_json::json;

use crate::harness::{TestEnv, password_of};

/// Escalation rounds run every second; sending takes well under that.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

const MESSAGE: &str = "Давление на ТП-3 ниже 3 бар";

#[tokio::test]
async fn an_unacknowledged_alarm_reaches_staff_by_sms_and_email() {
    let smtpd = Smtpd::start().await.unwrap_or_else(|e| panic!("{e}"));
    let gateway = HttpStub::start().await.expect("sms stub");
    gateway.reply(200, r#"{"status":"accepted"}"#);
    let env = TestEnv::new().await;
    env.add_config(&format!(
        r#"
[alarms]
check_interval_seconds = 1

[alarms.critical]
levels = ["on_duty_engineer", "chief_engineer"]
after_minutes = 0
next_level_minutes = 0
repeat_minutes = 0
channels = ["voice", "sms", "email"]

[staff.on_duty_engineer]
phones = ["+7 900 111-22-33"]

[staff.chief_engineer]
emails = ["chief@teplo.example"]

[channels.sms]
type = "http_sms"
url = "{sms}/send?login=hub&key=s3cret"
body = '{{"to": "{{phone}}", "text": "{{text}}"}}'
success_contains = "accepted"

[channels.mail]
type = "smtp"
host = "127.0.0.1"
port = {smtp}
tls = "none"
from = "Hub <hub@teplo.example>"
"#,
        sms = gateway.url(),
        smtp = smtpd.port,
    ));
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    admin
        .post_ok(
            "/api/v1/tenants",
            &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
        )
        .await;
    let alarm = admin
        .post_ok(
            "/api/v1/alarms",
            &json!({"key": "tp3.pressure", "severity": "critical", "message": MESSAGE, "tenant": "t1"}),
        )
        .await;
    let alarm_id = alarm["id"].as_i64().unwrap_or_else(|| panic!("{alarm}"));

    // The on-duty engineer: voice is not available, so the SMS gateway carries it.
    let requests = gateway
        .wait_for_requests(1, DELIVERY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].uri, "/send?login=hub&key=s3cret");
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).expect("json body");
    assert_eq!(body["to"], "+79001112233");
    let text = body["text"].as_str().expect("text");
    assert!(
        text.contains(MESSAGE) && text.contains(&format!("alarm {alarm_id}")),
        "{text}"
    );

    // The chief engineer has no phone: it falls through to e-mail.
    let mail = smtpd
        .wait_for("END MESSAGE", DELIVERY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
    assert!(mail.contains(MESSAGE), "{mail}");
    assert!(mail.contains("To: chief@teplo.example"), "{mail}");

    // The outbox says so.
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let notifications = loop {
        let items = admin
            .get_all(&format!("/api/v1/notifications?alarm={alarm_id}"))
            .await;
        if items.len() == 2 && items.iter().all(|n| n["status"] == "delivered") {
            break items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {items:#?}\nhub log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let recipients: Vec<&str> = notifications
        .iter()
        .map(|n| n["recipient"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(recipients, ["on_duty_engineer", "chief_engineer"]);
    assert_eq!(gateway.requests().len(), 1, "sent once");
    assert!(
        !hub.log().contains("s3cret"),
        "the gateway key never reaches the log"
    );
}
