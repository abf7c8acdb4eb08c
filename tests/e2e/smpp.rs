//! A staff notification as an SMS over SMPP end to end: a critical alarm escalates at once to the
//! on-duty engineer, whose `sms` channel is `type = "smpp"`; the SMS centre (the npm `smpp` package,
//! `tests/smpp/server.js`) receives the Russian text as concatenated UCS-2 parts that join to the
//! message, the outbox says `delivered`, and a stopping hub unbinds.

use std::time::Duration;

use connectors::channels::smpp::testing::{SmppServer, node_missing};
use serde_json::{Value, json};

use crate::harness::{TestEnv, password_of};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "k7Pq9xZ";
const MESSAGE: &str = "Давление на ТП-3 ниже 3 бар: проверьте подпиточный насос и задвижку на обратке, \
     котельная №2 переходит на резервную схему";

#[tokio::test]
async fn an_alarm_reaches_the_on_duty_engineer_as_sms_over_smpp() {
    if let Some(why) = node_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let smsc = SmppServer::start(&["--password", PASSWORD])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let env = TestEnv::new().await;
    env.add_config(&format!(
        r#"
[alarms]
check_interval_seconds = 1

[alarms.critical]
levels = ["on_duty_engineer"]
after_minutes = 0
next_level_minutes = 0
repeat_minutes = 0
channels = ["sms"]

[staff.on_duty_engineer]
phones = ["+7 900 111-22-33"]

[channels.sms]
type = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "hub"
password = "{PASSWORD}"
source_addr = "TEPLO"
timeout_seconds = 5
"#,
        port = smsc.port,
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

    // The first part says how many there are; wait for all of them.
    let first = smsc
        .wait_for("submit_sm", 1, DELIVERY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
    let total = first[0]["udh"]["total"].as_u64().unwrap_or(1) as usize;
    assert!(total >= 2, "a long Russian text is concatenated: {first:?}");
    let parts = smsc
        .wait_for("submit_sm", total, DELIVERY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    for (i, p) in parts.iter().take(total).enumerate() {
        assert_eq!(p["data_coding"], 8, "UCS-2: {p}");
        assert_eq!(p["udh"]["seq"], i + 1, "{p}");
        assert_eq!(p["destination_addr"], "79001112233");
        assert_eq!(p["source_addr"], "TEPLO");
        text.push_str(p["text"].as_str().unwrap_or_default());
    }
    assert!(
        text.contains(MESSAGE) && text.contains(&format!("alarm {alarm_id}")),
        "{text}"
    );
    assert_eq!(smsc.events_named("bind")[0]["command"], "bind_transceiver");

    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    let notification: Value = loop {
        let items = admin
            .get_all(&format!("/api/v1/notifications?alarm={alarm_id}"))
            .await;
        if let Some(n) = items.iter().find(|n| n["status"] == "delivered") {
            break n.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {items:#?}\nhub log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(notification["recipient"], "on_duty_engineer");
    assert_eq!(smsc.events_named("submit_sm").len(), total, "sent once");

    let log = hub.log();
    assert!(
        !log.contains(PASSWORD),
        "the password never reaches the log"
    );
    // A stopping hub ends its session politely.
    hub.terminate().await;
    smsc.wait_for("unbind", 1, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
