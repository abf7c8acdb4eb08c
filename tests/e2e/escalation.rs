//! The escalation call: a critical alarm nobody acknowledges makes the hub phone the on-duty engineer
//! through the SIP trunk (SIPp plays the provider and the engineer's phone: it answers and presses 1,
//! RFC 4733 events from SIPp's pcap), and the 1 acknowledges the alarm in the engineer's name.

use std::time::Duration;

use serde_json::json;

use crate::harness::{TestEnv, password_of};
use crate::telephony_sip::peer;

const TIMEOUT: Duration = Duration::from_secs(40);

#[tokio::test]
async fn pressing_1_on_the_escalation_call_acknowledges_the_alarm() {
    let env = TestEnv::new().await;
    // SIPp plays the provider's trunk and the engineer's phone: it answers and presses 1.
    let phone = peer(&env, "uas_dtmf.xml", &[], None);
    let sip_port = phone.port;

    env.add_config(&format!(
        r#"
[telephony.trunks.provider]
host = "127.0.0.1:{sip_port}"
lines = 2

[alarms]
check_interval_seconds = 1

[alarms.critical]
levels = ["on_duty_engineer"]
after_minutes = 0
repeat_minutes = 0
channels = ["voice"]

[staff.on_duty_engineer]
phones = ["+7 900 111-22-33"]
"#
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
            &json!({"key": "tp3.pressure", "severity": "critical",
                    "message": "Давление на ТП-3 ниже 3 бар", "tenant": "t1"}),
        )
        .await;
    let id = alarm["id"].as_i64().unwrap_or_else(|| panic!("{alarm}"));

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let alarm = loop {
        let a = admin.get_ok(&format!("/api/v1/alarms/{id}")).await;
        if a["state"] == "acknowledged" {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not acknowledged: {a:#}\nhub log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(alarm["acknowledged_by"], "phone:+79001112233", "{alarm:#}");

    // The outbox row says the voice call reached the engineer, and the call record is an escalation.
    let rows = admin
        .get_all(&format!("/api/v1/notifications?alarm={id}"))
        .await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while admin
        .get_all(&format!("/api/v1/notifications?alarm={id}"))
        .await[0]["status"]
        != "delivered"
    {
        assert!(tokio::time::Instant::now() < deadline, "{}", hub.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = admin.get_all("/api/v1/calls").await;
    let call = calls
        .iter()
        .find(|c| c["purpose"] == "escalation")
        .unwrap_or_else(|| panic!("no escalation call: {calls:#?}"));
    assert_eq!(call["direction"], "outbound", "{call:#}");
    assert_eq!(call["to"], "+79001112233", "{call:#}");

    phone.succeeded().await;
}
