//! The heart of the product, end to end: with the demo running and its example rules loaded, a falling
//! supply pressure published over MQTT on one heat point makes, within a second and with nobody
//! touching anything, a critical alarm that a dispatcher sees live in the browser, the IVR of every
//! complex fed by that heat point set to emergency, and a campaign for exactly the consumers it feeds,
//! life support first. Acknowledging the alarm in the browser stops its escalation.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::harness::{Api, TestEnv, password_of};
use crate::mqtt::publish;

const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Alarm, IVR and campaign, as far as they are there yet.
async fn reaction(api: &Api) -> (Option<Value>, Vec<Value>, Option<Value>) {
    let alarms = api.get_ok("/api/v1/alarms?state=open").await;
    let alarm = alarms["items"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["key"] == "pressure_drop:hp-3").cloned());
    let ivr = api.get_ok("/api/v1/ivr/overrides").await;
    let ivr = ivr.as_array().cloned().unwrap_or_default();
    let campaigns = api.get_ok("/api/v1/campaigns").await;
    let campaign = campaigns["items"]
        .as_array()
        .and_then(|a| a.first().cloned());
    (alarm, ivr, campaign)
}

#[tokio::test]
async fn a_pressure_drop_raises_an_alarm_switches_the_ivr_and_launches_a_campaign() {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(chromium.exists(), "no Chromium: run scripts/test");
    assert!(
        repo("tests/browser/node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/test"
    );
    let env = TestEnv::new().await;
    env.add_users(&[("admin", "admin"), ("disp", "dispatcher")])
        .await;
    env.add_config(&format!(
        "[rules]\ndir = \"{}\"\n",
        repo("rules/examples").display()
    ));
    let hub = env.start(true).await;
    let admin = hub.login_as("admin").await;
    let rules = admin.get_ok("/api/v1/rules").await;
    assert!(rules.to_string().contains("pressure_drop"), "{rules}");

    // Expected audience: the consumers fed by hp-3.
    let points = admin.get_all("/api/v1/supply-points").await;
    let hp3 = points
        .iter()
        .find(|p| p["external_id"] == "hp-3")
        .expect("hp-3");
    let affected = admin
        .get_ok(&format!(
            "/api/v1/supply-points/{}/affected?limit=1",
            hp3["id"]
        ))
        .await;
    let consumers = affected["consumers_count"].as_i64().expect("count");
    assert!(consumers > 1000, "{affected}");

    // The dispatcher's page is open and live before anything happens.
    let mut browser = Command::new("node")
        .arg(repo("tests/browser/alarms.mjs"))
        .args([hub.base.as_str(), "disp", &password_of("disp")])
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut stdin = browser.stdin.take().expect("stdin");
    let mut out = BufReader::new(browser.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(BROWSER_TIMEOUT, out.next_line()).await;
    assert!(
        matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
        "browser: {ready:?}"
    );

    // The pressure falls: below 3 bar for longer than the rule's 60 s, as the sensor's own times say.
    let mqtt = hub.mqtt_addr();
    let now = chrono::Utc::now().timestamp_millis();
    for (ago_s, bar) in [(120, 5.9), (90, 2.6), (50, 2.1)] {
        let at = now - ago_s * 1000;
        publish(
            &mqtt,
            "sensors/hp-3.p_supply",
            &format!(r#"{{"value": {bar}, "at": {at}}}"#),
            1,
        )
        .await;
    }
    let (alarm, ivr, campaign) = reaction(&admin).await;
    assert!(
        alarm.is_none() && ivr.is_empty() && campaign.is_none(),
        "too early: {alarm:?} {ivr:?}"
    );
    let started = Instant::now();
    publish(
        &mqtt,
        "sensors/hp-3.p_supply",
        &format!(r#"{{"value": 1.6, "at": {now}}}"#),
        1,
    )
    .await;
    let (alarm, ivr, campaign) = loop {
        let r = reaction(&admin).await;
        if r.0.is_some() && !r.1.is_empty() && r.2.is_some() {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no reaction: {r:?}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "the reaction took {took:?}");
    let alarm = alarm.expect("alarm");
    assert_eq!(alarm["severity"], "critical");
    assert!(
        alarm["next_escalation_at"].is_string(),
        "escalation pending: {alarm}"
    );

    // The IVR: every complex (root site) fed by hp-3, here rc-3 and its kindergarten, and only those.
    let mut sites: Vec<i64> = ivr.iter().filter_map(|o| o["site_id"].as_i64()).collect();
    sites.sort_unstable();
    let mut complexes: Vec<i64> = affected["complexes"]
        .as_array()
        .expect("complexes")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    complexes.sort_unstable();
    assert_eq!(sites, complexes, "{ivr:?}");
    assert!(ivr.iter().any(|o| o["site"] == "rc-3"), "{ivr:?}");
    for o in &ivr {
        assert_eq!(o["mode"], "emergency");
        assert!(
            o["announcement"].as_str().unwrap_or("").contains("авария"),
            "{ivr:?}"
        );
    }

    // The campaign: exactly the consumers hp-3 feeds, life support and social objects first.
    let campaign = campaign.expect("campaign");
    assert_eq!(campaign["contacts"].as_i64(), Some(consumers), "{campaign}");
    let first = admin
        .get_ok(&format!(
            "/api/v1/campaigns/{}/contacts?limit=5",
            campaign["id"]
        ))
        .await;
    let life_support = affected["life_support"].as_array().map_or(0, Vec::len)
        + affected["social_objects"].as_array().map_or(0, Vec::len);
    if life_support > 0 {
        assert_eq!(first["items"][0]["priority"], 0, "{first}");
    }

    // The dispatcher acknowledges it in the browser: the escalation stops.
    stdin
        .write_all(b"pressure_drop:hp-3\n")
        .await
        .expect("key to the browser");
    let acked = tokio::time::timeout(BROWSER_TIMEOUT, out.next_line()).await;
    assert!(
        matches!(&acked, Ok(Ok(Some(l))) if l.starts_with("acknowledged")),
        "browser: {acked:?}"
    );
    let shown = admin
        .get_ok(&format!("/api/v1/alarms/{}", alarm["id"]))
        .await;
    assert_eq!(shown["state"], "acknowledged", "{shown}");
    assert_eq!(shown["acknowledged_by"], "disp");
    assert!(
        shown["next_escalation_at"].is_null(),
        "escalation stopped: {shown}"
    );
    let _ = browser.wait().await;
    println!("reading -> alarm, IVR and campaign: {took:?}");
}
