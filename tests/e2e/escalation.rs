//! The escalation call: a critical alarm nobody acknowledges makes the hub phone the on-duty engineer
//! through the SIP trunk (SIPp plays the provider and the engineer's phone: it answers and presses 1,
//! RFC 4733 events from SIPp's pcap), and the 1 acknowledges the alarm in the engineer's name.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::harness::{TestEnv, password_of};

const TIMEOUT: Duration = Duration::from_secs(40);

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

#[tokio::test]
async fn pressing_1_on_the_escalation_call_acknowledges_the_alarm() {
    let env = TestEnv::new().await;
    // SIPp's `play_pcap_audio` finds its pcaps as `pcap/...` relative to the working directory.
    let pcap = env.path("pcap");
    if !pcap.exists() {
        std::os::unix::fs::symlink("/usr/share/sip-tester", &pcap).expect("link pcap");
    }
    let (sip_port, media_port) = (free_udp_port(), free_udp_port());
    let errors = env.path("uas_dtmf.errors.log");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sipp/uas_dtmf.xml");
    let phone = tokio::process::Command::new("sipp")
        .current_dir(env.dir.path())
        .arg("-sf")
        .arg(&scenario)
        .args(["-m", "1", "-nostdin", "-timeout", "60", "-trace_err"])
        .arg("-error_file")
        .arg(&errors)
        .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sipp ({e}): install the Debian package sip-tester"));

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
            "not acknowledged: {a:#}\nhub log:\n{}\nsipp errors:\n{}",
            hub.log(),
            std::fs::read_to_string(&errors).unwrap_or_default()
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

    let out = tokio::time::timeout(TIMEOUT, phone.wait_with_output())
        .await
        .expect("sipp ends")
        .expect("sipp output");
    assert!(
        out.status.success(),
        "sipp: {}\n{}",
        out.status,
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
}
