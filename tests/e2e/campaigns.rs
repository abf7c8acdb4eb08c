//! Campaigns end to end on the demo data: an emergency outage opened on boiler house bh-1 makes the
//! demo rule (`rules/examples/emergency_outage.rhai`) launch a campaign that reaches every affected
//! consumer by their preferred channel, seen at a real SMTP server (aiosmtpd) and at HTTP stubs
//! standing in for the SMS gateway and the Telegram Bot API; life-support residents and social objects
//! head the operators' call list, and the report adds up. A second test kills the hub with SIGKILL
//! mid-campaign and restarts it: every contact ends with exactly one message at the gateway.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use connectors::channels::testing::{HttpStub, Smtpd};
use serde_json::{Value, json};

use crate::harness::{Api, Hub, TestEnv, password_of};

/// A whole boiler house (about 11,000 consumers) through debug builds of the hub and aiosmtpd.
const CAMPAIGN_TIMEOUT: Duration = Duration::from_secs(300);

fn channels_config(sms: &HttpStub, tg: &HttpStub, smtp_port: u16, sms_extra: &str) -> String {
    format!(
        r#"
[campaigns]
poll_ms = 50
handover_minutes = 0
lease_seconds = 3

[channels.sms]
type = "http_sms"
url = "{sms}/send"
body = '{{"to": "{{phone}}", "text": "{{text}}"}}'
success_contains = "accepted"
{sms_extra}

[channels.mail]
type = "smtp"
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Hub <hub@teplo.example>"
concurrency = 8

[channels.tg]
type = "telegram"
base_url = "{tg}/"
token = "123456:TEST-token"
concurrency = 32
"#,
        sms = sms.url(),
        tg = tg.url(),
    )
}

async fn wait_finished(api: &Api, hub: &Hub, id: i64, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let c = api.get_ok(&format!("/api/v1/campaigns/{id}")).await;
        if c["status"] == "finished" {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "campaign {id} not finished: {c}\nreport: {}\nhub log:\n{}",
            api.get_ok(&format!("/api/v1/campaigns/{id}/report")).await,
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_owned).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

async fn get_text(api: &Api, path: &str) -> String {
    let res = api
        .builder(reqwest::Method::GET, path)
        .send()
        .await
        .expect("request");
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.text().await.expect("body")
}

#[tokio::test]
async fn an_emergency_outage_on_a_boiler_house_reaches_everyone_by_their_channel() {
    let smtpd = Smtpd::start().await.unwrap_or_else(|e| panic!("{e}"));
    let sms = HttpStub::start().await.expect("sms stub");
    sms.reply(200, r#"{"status":"accepted"}"#);
    let tg = HttpStub::start().await.expect("telegram stub");
    let env = TestEnv::new().await;
    env.add_config(&channels_config(&sms, &tg, smtpd.port, "concurrency = 32"));
    env.add_config(&format!(
        "[rules]\ndir = \"{}\"\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../rules/examples")
            .display()
    ));
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(true).await;
    let admin = hub.login_as("admin").await;

    // A bad launch is refused with the field and the reason, and launches nothing.
    let bad = admin
        .post(
            "/api/v1/campaigns",
            &json!({"name": "x", "tenant": "teplo", "audience": {"supply_point": "bh-1"},
                    "template": "debt", "channels": ["sms"]}),
        )
        .await;
    let problem = bad.invalid("templates.ru.sms");
    assert!(problem.to_string().contains("{amount}"), "{problem}");

    // The preview renders the first contacts' messages before anything is sent.
    let preview = admin
        .post_ok(
            "/api/v1/campaigns/preview?n=3",
            &json!({"name": "x", "tenant": "teplo", "audience": {"supply_point": "bh-1"},
                    "template": "heat_emergency", "channels": ["sms", "email"]}),
        )
        .await;
    assert_eq!(
        preview["sample"].as_array().map(Vec::len),
        Some(3),
        "{preview}"
    );
    assert!(
        preview["contacts"].as_i64().unwrap_or(0) > 1000,
        "{preview}"
    );
    assert!(
        admin.get_all("/api/v1/campaigns").await.is_empty(),
        "a preview launches nothing"
    );

    admin
        .post_ok(
            "/api/v1/outages",
            &json!({"tenant": "teplo", "external_id": "avaria-1", "kind": "emergency", "utility": "heat",
                    "supply_point": "bh-1", "reason": "порыв магистрали",
                    "starts_at": chrono::Utc::now().to_rfc3339()}),
        )
        .await;
    // The rule launches the campaign.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let campaign = loop {
        let list = admin.get_all("/api/v1/campaigns").await;
        if let Some(c) = list.first() {
            break c.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no campaign launched\nhub log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let id = campaign["id"].as_i64().expect("id");
    assert_eq!(campaign["created_by"], "rule:emergency_outage");
    assert_eq!(campaign["override_quiet_hours"], true);

    // Life support and social objects head the call list and the contacts.
    let call_list = admin
        .get_ok(&format!("/api/v1/campaigns/{id}/call-list"))
        .await;
    let call_list = call_list.as_array().expect("list").clone();
    assert!(!call_list.is_empty());
    assert!(
        call_list
            .iter()
            .all(|e| e["life_support"] == true || e["social_object"] == true),
        "{call_list:?}"
    );
    assert!(call_list.iter().any(|e| e["life_support"] == true));
    let first = admin
        .get_ok(&format!(
            "/api/v1/campaigns/{id}/contacts?limit={}",
            call_list.len()
        ))
        .await;
    let first_ids: HashSet<i64> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| c["consumer_id"].as_i64().unwrap_or_default())
        .collect();
    let listed: HashSet<i64> = call_list
        .iter()
        .map(|e| e["consumer_id"].as_i64().unwrap_or_default())
        .collect();
    assert_eq!(first_ids, listed, "the call list comes first");

    let campaign = wait_finished(&admin, &hub, id, CAMPAIGN_TIMEOUT).await;
    let total = campaign["contacts"].as_i64().expect("contacts");

    // Every contact reached once, by the first channel of its preference that works here (voice has
    // no telephony trunk in this test, so it falls through).
    let contacts =
        csv_rows(&get_text(&admin, &format!("/api/v1/campaigns/{id}/contacts.csv")).await);
    assert_eq!(contacts.len() as i64, total);
    let consumers: HashMap<String, Value> = admin
        .get_all(&format!(
            "/api/v1/consumers?tenant={}",
            campaign["tenant_id"]
        ))
        .await
        .into_iter()
        .map(|c| (c["external_id"].as_str().unwrap_or_default().to_owned(), c))
        .collect();
    let mut via: HashMap<String, usize> = HashMap::new();
    for c in &contacts {
        assert_eq!(c["status"], "sent", "{c:?}");
        let consumer = &consumers[&c["consumer"]];
        let preferred: Vec<&str> = consumer["preferred_channels"]
            .as_array()
            .expect("preferred")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let has = |ch: &str| match ch {
            "sms" => consumer["phones"].as_array().is_some_and(|p| !p.is_empty()),
            "email" => consumer["email"].is_string(),
            "telegram" => consumer["telegram"].is_string(),
            _ => false,
        };
        let expected = preferred
            .iter()
            .copied()
            .find(|ch| has(ch))
            .unwrap_or(if has("sms") { "sms" } else { "email" });
        assert_eq!(c["reached_via"], expected, "{c:?} {consumer}");
        *via.entry(expected.to_owned()).or_default() += 1;
    }

    // What the peers got: one message per contact of their channel.
    let sms_requests = sms.requests();
    assert_eq!(sms_requests.len(), via["sms"], "SMS at the gateway");
    let phones: HashSet<String> = sms_requests
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).expect("json");
            body["to"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(phones.len(), sms_requests.len(), "no phone messaged twice");
    let body: Value = serde_json::from_str(&sms_requests[0].body).expect("json");
    assert!(
        body["text"].as_str().unwrap_or_default().contains("авария")
            || body["text"].as_str().unwrap_or_default().contains("outage"),
        "{body}"
    );
    assert_eq!(
        tg.requests().len(),
        via.get("telegram").copied().unwrap_or(0)
    );
    let mails = via.get("email").copied().unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = smtpd.output().matches("END MESSAGE").count();
        if seen >= mails {
            assert_eq!(seen, mails, "e-mails at aiosmtpd");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{seen} of {mails} e-mails"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The report adds up.
    let report = admin
        .get_ok(&format!("/api/v1/campaigns/{id}/report"))
        .await;
    assert_eq!(report["contacts"], total);
    assert_eq!(report["reached"], total);
    let by_channel: i64 = report["by_channel"]
        .as_array()
        .expect("by_channel")
        .iter()
        .map(|c| c["count"].as_i64().unwrap_or_default())
        .sum();
    assert_eq!(by_channel, total);
    assert!(report["seconds_to_100"].as_f64().is_some(), "{report}");
    let csv = get_text(&admin, &format!("/api/v1/campaigns/{id}/report.csv")).await;
    assert!(csv.starts_with("section,channel,outcome,count"), "{csv}");
    let letters = get_text(&admin, &format!("/api/v1/campaigns/{id}/letters.csv")).await;
    assert_eq!(
        letters.lines().count(),
        1,
        "everyone reached: no letters\n{letters}"
    );
}

#[tokio::test]
async fn a_hub_killed_mid_campaign_messages_every_contact_exactly_once() {
    let smtpd = Smtpd::start().await.unwrap_or_else(|e| panic!("{e}"));
    let sms = HttpStub::start().await.expect("sms stub");
    sms.reply(200, r#"{"status":"accepted"}"#);
    // A slow gateway: each SMS takes 400 ms, four at a time.
    sms.delay(Duration::from_millis(400));
    let tg = HttpStub::start().await.expect("telegram stub");
    let env = TestEnv::new().await;
    env.add_config(&channels_config(&sms, &tg, smtpd.port, "concurrency = 4"));
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(true).await;
    let admin = hub.login_as("admin").await;
    let building = admin.get_ok("/api/v1/sites?kind=building&limit=1").await;
    let building = building["items"][0]["external_id"]
        .as_str()
        .expect("a demo building")
        .to_owned();
    let campaign = admin
        .post_ok(
            "/api/v1/campaigns",
            &json!({"name": "kill test", "tenant": "teplo", "audience": {"sites": [building]},
                    "template": "service_restored", "channels": ["sms"],
                    "override_quiet_hours": true, "handover_minutes": 0}),
        )
        .await;
    let id = campaign["id"].as_i64().expect("id");
    let total = campaign["contacts"].as_i64().expect("contacts") as usize;
    assert!(
        total >= 30,
        "a building of the demo has dozens of residents: {total}"
    );

    // Kill it while SMS are in flight.
    sms.wait_for_requests(10, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &hub.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_restart = sms.requests().len();
    assert!(
        before_restart < total,
        "killed mid-campaign: {before_restart} of {total}"
    );
    drop(hub);

    let hub = env.start(true).await;
    let admin = hub.login_as("admin").await;
    wait_finished(&admin, &hub, id, Duration::from_secs(120)).await;

    let mut per_phone: HashMap<String, usize> = HashMap::new();
    for r in sms.requests() {
        let body: Value = serde_json::from_str(&r.body).expect("json");
        *per_phone
            .entry(body["to"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_phone.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "messaged twice: {twice:?}");
    assert_eq!(per_phone.len(), total, "every contact messaged");
    let contacts =
        csv_rows(&get_text(&admin, &format!("/api/v1/campaigns/{id}/contacts.csv")).await);
    assert!(
        contacts.iter().all(|c| c["status"] == "sent"),
        "{contacts:?}"
    );
    let interrupted = contacts
        .iter()
        .filter(|c| c["reason"].starts_with("interrupted"))
        .count();
    assert!(
        (1..=4).contains(&interrupted),
        "the sends in flight at the kill (at most the concurrency) are settled as sent: {interrupted}"
    );
}

/// Voice through the telephony core: SIPp plays the provider's trunk and the residents' phones (it
/// answers and presses 1), so both contacts end `confirmed` by voice and no SMS is sent.
#[tokio::test]
async fn a_voice_campaign_calls_through_the_trunk_and_1_confirms() {
    let env = TestEnv::new().await;
    let pcap = env.path("pcap");
    if !pcap.exists() {
        std::os::unix::fs::symlink("/usr/share/sip-tester", &pcap).expect("link pcap");
    }
    let (sip_port, media_port) = (
        crate::telephony::free_udp_port(),
        crate::telephony::free_udp_port(),
    );
    let errors = env.path("uas_dtmf.errors.log");
    let scenario =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sipp/uas_dtmf.xml");
    let _phone = tokio::process::Command::new("sipp")
        .current_dir(env.dir.path())
        .arg("-sf")
        .arg(&scenario)
        .args(["-m", "2", "-nostdin", "-timeout", "90", "-trace_err"])
        .arg("-error_file")
        .arg(&errors)
        .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run sipp ({e}): install the Debian package sip-tester"));
    let sms = HttpStub::start().await.expect("sms stub");
    sms.reply(200, r#"{"status":"accepted"}"#);
    env.add_config(&format!(
        r#"
[telephony.trunks.provider]
host = "127.0.0.1:{sip_port}"
lines = 1

[campaigns]
poll_ms = 50

[channels.sms]
type = "http_sms"
url = "{}/send"
body = '{{"to": "{{phone}}", "text": "{{text}}"}}'
success_contains = "accepted"
"#,
        sms.url()
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
    for (kind, csv) in [
        (
            "sites",
            "tenant,external_id,parent,kind,name,address\nt1,b1,,building,B1,\"ул. Речная, д. 1\"\n",
        ),
        (
            "consumers",
            "tenant,external_id,kind,name,phones,preferred_channels,sites\nt1,c1,resident,Иванов Иван,+79001110001,voice,b1\nt1,c2,resident,Петрова Анна,+79001110002,voice,b1\n",
        ),
    ] {
        admin
            .post_raw(&format!("/api/v1/import/{kind}"), Some("text/csv"), csv)
            .await
            .ok();
    }
    let campaign = admin
        .post_ok(
            "/api/v1/campaigns",
            &json!({"name": "voice", "tenant": "t1", "audience": {"sites": ["b1"]},
                    "template": "service_restored", "channels": ["voice", "sms"],
                    "override_quiet_hours": true}),
        )
        .await;
    let id = campaign["id"].as_i64().expect("id");
    assert_eq!(campaign["contacts"], 2);
    wait_finished(&admin, &hub, id, Duration::from_secs(90)).await;
    let contacts = admin
        .get_ok(&format!("/api/v1/campaigns/{id}/contacts"))
        .await;
    for c in contacts["items"].as_array().expect("items") {
        assert_eq!(
            (c["status"].as_str(), c["reached_via"].as_str()),
            (Some("confirmed"), Some("voice")),
            "{c}\nsipp errors:\n{}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
    }
    assert!(sms.requests().is_empty(), "no SMS after a confirmed call");
    let report = admin
        .get_ok(&format!("/api/v1/campaigns/{id}/report"))
        .await;
    assert_eq!(report["by_status"]["confirmed"], 2, "{report}");
}
