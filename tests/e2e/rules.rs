//! Rules in the running hub: rule files hot-loaded while readings arrive over MQTT (a broken version
//! shown with its line and column while the previous one keeps acting), rules written through the API
//! and dry-run without side effects, rule state carried over a restart, a runaway rule stopped without
//! stopping the others, and `hub rules check|test` as a rule author runs them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Api, Body, Hub, TestEnv};
use crate::mqtt::publish;

/// How long the hub may take to notice a file or carry out a rule (it looks every 200 ms here).
const WITHIN: Duration = Duration::from_secs(10);

/// A fresh environment whose rules folder is `rules/` of the test's directory, looked at every 200 ms.
async fn env_with_rules(users: &[(&str, &str)]) -> (TestEnv, PathBuf) {
    let env = TestEnv::new().await;
    let dir = env.path("rules");
    std::fs::create_dir_all(&dir).expect("rules dir");
    env.add_config(&format!(
        "[rules]\ndir = \"{}\"\nreload_ms = 200\n",
        dir.display()
    ));
    env.add_users(users).await;
    (env, dir)
}

/// Tenant `t1` and sensor `id` of `kind`, through the API.
async fn sensor(api: &Api, id: &str, kind: &str) {
    let tenants = api.get_ok("/api/v1/tenants").await;
    if !tenants.to_string().contains("\"t1\"") {
        api.post_ok(
            "/api/v1/tenants",
            &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
        )
        .await;
    }
    api.post_ok(
        "/api/v1/sensors",
        &json!({"tenant": "t1", "external_id": id, "kind": kind, "unit": "bar", "offline_after_s": 300}),
    )
    .await;
}

/// Writes a rule file as an editor does (a temporary file renamed over it), so the hub never reads half
/// of it.
fn write_rule(dir: &Path, id: &str, source: &str) {
    let tmp = dir.join(format!(".{id}.tmp"));
    std::fs::write(&tmp, source).expect("write rule");
    std::fs::rename(&tmp, dir.join(format!("{id}.rhai"))).expect("rename rule");
}

async fn reading(hub: &Hub, sensor: &str, value: f64) {
    let at = chrono::Utc::now().timestamp_millis();
    publish(
        &hub.mqtt_addr(),
        &format!("sensors/{sensor}"),
        &format!(r#"{{"value": {value}, "at": {at}}}"#),
        1,
    )
    .await;
}

/// Polls `probe` until it gives `Some`, panicking with `what` and the hub's log after `WITHIN`.
async fn wait_for<T, F: Future<Output = Option<T>>>(
    hub: &Hub,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < WITHIN,
            "{what}: not within {WITHIN:?}\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rule's entry in `GET /api/v1/rules` (`{rule, error, warnings}`).
async fn rule(api: &Api, id: &str) -> Option<Value> {
    let list = api.get_ok("/api/v1/rules").await;
    list.as_array()
        .expect("array")
        .iter()
        .find(|r| r["rule"]["id"] == id)
        .cloned()
}

/// The open alarm with this key.
async fn alarm(api: &Api, key: &str) -> Option<Value> {
    let list = api.get_ok("/api/v1/alarms?state=open").await;
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|a| a["key"] == key)
        .cloned()
}

/// A rule on `s1` raising `key` when the value is below 3.
fn low_rule(key: &str) -> String {
    format!(
        "on_reading(\"s1\");\n\nfn on_event(ev) {{\n    if ev.value < 3.0 {{\n        raise_alarm(#{{ key: \"{key}\", severity: \"major\", message: `low ${{ev.value}}`, tenant: \"t1\" }});\n    }}\n}}\n"
    )
}

/// Line 4 does not parse.
const BROKEN: &str = "on_reading(\"s1\");\n\nfn on_event(ev) {\n    let x = ;\n    raise_alarm(\"x\", \"minor\", \"x\");\n}\n";

async fn put_rule(api: &Api, id: &str, source: &str) -> crate::harness::Res {
    api.request(
        Method::PUT,
        &format!("/api/v1/rules/{id}"),
        Body::Raw(Some("text/plain"), source),
    )
    .await
}

#[tokio::test]
async fn a_rule_file_is_hot_loaded_its_broken_version_shown_and_its_deletion_stops_it() {
    let (env, dir) = env_with_rules(&[("admin", "admin")]).await;
    let hub = env.start(false).await;
    let api = &hub.login_as("admin").await;
    sensor(api, "s1", "pressure").await;
    assert!(rule(api, "low").await.is_none());

    // A new file: loaded and acting on the next reading.
    write_rule(&dir, "low", &low_rule("low:v1"));
    let loaded = wait_for(&hub, "rule `low` loaded", || rule(api, "low")).await;
    assert!(loaded["error"].is_null(), "{loaded}");
    assert_eq!(loaded["rule"]["triggers"].as_array().map(Vec::len), Some(1));
    reading(&hub, "s1", 2.0).await;
    let first = wait_for(&hub, "alarm low:v1", || alarm(api, "low:v1")).await;
    assert_eq!(first["message"], "low 2.0");

    // A broken version: its error with line and column, and the previous version still acts.
    write_rule(&dir, "low", BROKEN);
    let broken = wait_for(&hub, "the error of `low`", || async move {
        rule(api, "low").await.filter(|r| !r["error"].is_null())
    })
    .await;
    let error = &broken["error"];
    assert_eq!(error["line"], 4, "{broken}");
    assert!(error["column"].as_u64().is_some_and(|c| c > 0), "{broken}");
    assert!(
        error["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("low.rhai")),
        "{broken}"
    );
    reading(&hub, "s1", 1.5).await;
    let again = wait_for(&hub, "the previous version acting", || async move {
        alarm(api, "low:v1").await.filter(|a| a["count"] == 2)
    })
    .await;
    assert_eq!(again["message"], "low 1.5");

    // Fixed: the error is gone and the new version acts.
    write_rule(&dir, "low", &low_rule("low:v2"));
    wait_for(&hub, "the error of `low` gone", || async move {
        rule(api, "low").await.filter(|r| r["error"].is_null())
    })
    .await;
    reading(&hub, "s1", 1.0).await;
    wait_for(&hub, "alarm low:v2", || alarm(api, "low:v2")).await;

    // Deleted: the rule is gone and acts no more.
    std::fs::remove_file(dir.join("low.rhai")).expect("remove rule");
    wait_for(&hub, "rule `low` gone", || async move {
        rule(api, "low").await.is_none().then_some(())
    })
    .await;
    reading(&hub, "s1", 0.5).await;
    wait_for(&hub, "the reading stored", || async move {
        let s = api.get_ok("/api/v1/sensors?limit=10").await;
        s.to_string().contains("0.5").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = alarm(api, "low:v2").await.expect("low:v2");
    assert_eq!(v2["count"], 1, "a deleted rule acted: {v2}");

    // Each load, rejection and removal is audited, by `file`.
    let audit = api.get_ok("/api/v1/audit?object_type=rule&limit=100").await;
    let mut actions: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["object_id"] == "low" && e["actor"] == "file")
        .filter_map(|e| e["action"].as_str())
        .collect();
    actions.reverse();
    assert_eq!(actions, ["load", "reject", "load", "delete"], "{audit}");
}

#[tokio::test]
async fn rules_are_written_deleted_and_dry_run_through_the_api() {
    let (env, dir) =
        env_with_rules(&[("admin", "admin"), ("eng", "engineer"), ("view", "viewer")]).await;
    let hub = env.start(false).await;
    let admin = &hub.login_as("admin").await;
    let eng = &hub.login_as("eng").await;
    let view = &hub.login_as("view").await;
    sensor(admin, "s1", "pressure").await;

    // A source that does not compile: 422 naming the line and column, and no file.
    let p = put_rule(eng, "low", BROKEN).await.invalid("source");
    let reason = p["errors"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("low.rhai:4:"), "{p}");
    assert!(!dir.join("low.rhai").exists());
    assert!(rule(eng, "low").await.is_none());

    // A viewer may read the rules but not write them.
    let res = put_rule(view, "low", &low_rule("low:api")).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{res}");
    assert!(!dir.join("low.rhai").exists());
    view.get_ok("/api/v1/rules").await;

    // A good one: written, loaded at once and acting.
    let warnings = put_rule(eng, "low", &low_rule("low:api")).await.ok();
    assert_eq!(warnings, json!([]));
    assert_eq!(
        std::fs::read_to_string(dir.join("low.rhai")).expect("file"),
        low_rule("low:api")
    );
    let shown = rule(eng, "low").await.expect("loaded");
    assert!(shown["error"].is_null(), "{shown}");
    reading(&hub, "s1", 2.0).await;
    wait_for(&hub, "alarm low:api", || alarm(eng, "low:api")).await;
    let trace = eng.get_ok("/api/v1/rules/low/trace").await;
    assert_eq!(trace[0]["actions"][0]["action"], "raise_alarm", "{trace}");

    // Deleted: the file and the rule are gone; a second time it is not found.
    let res = view.delete("/api/v1/rules/low").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{res}");
    let res = eng.delete("/api/v1/rules/low").await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{res}");
    assert!(!dir.join("low.rhai").exists());
    assert!(rule(eng, "low").await.is_none());
    eng.delete("/api/v1/rules/low").await.problem(404);

    // The engineer's load and delete are audited under their name.
    let audit = admin
        .get_ok("/api/v1/audit?object_type=rule&limit=100")
        .await;
    let mut by_eng: Vec<&str> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["actor"] == "user:eng" && e["object_id"] == "low")
        .filter_map(|e| e["action"].as_str())
        .collect();
    by_eng.reverse();
    assert_eq!(by_eng, ["load", "delete"], "{audit}");

    // A dry run answers what the source would do, and does nothing.
    let dry = json!({
        "source": low_rule("low:dry"),
        "events": [
            {"at": "2025-01-15T08:00:00Z", "type": "reading", "sensor": "s1", "value": 4.0},
            {"at": "2025-01-15T08:01:00Z", "type": "reading", "sensor": "s1", "value": 2.5}
        ]
    });
    let res = view.post("/api/v1/rules/dry-run", &dry).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{res}");
    let evals = eng.post_ok("/api/v1/rules/dry-run", &dry).await;
    assert_eq!(evals[0]["runs"][0]["actions"], json!([]), "{evals}");
    let action = &evals[1]["runs"][0]["actions"][0];
    assert_eq!(action["action"], "raise_alarm", "{evals}");
    assert_eq!(action["key"], "low:dry");
    assert_eq!(action["message"], "low 2.5");
    eng.post("/api/v1/rules/dry-run", &json!({"source": BROKEN}))
        .await
        .invalid("source");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alarm(eng, "low:dry").await.is_none(), "a dry run acted");
    assert!(rule(eng, "dry_run").await.is_none());
}

#[tokio::test]
async fn a_rule_s_state_survives_a_restart() {
    let (env, dir) = env_with_rules(&[("admin", "admin")]).await;
    write_rule(
        &dir,
        "count",
        "on_reading(\"s1\");\n\nfn on_event(ev) {\n    this.count = (this.count ?? 0) + 1;\n    raise_alarm(#{ key: \"count:s1\", severity: \"warning\", message: `reading ${this.count}`, tenant: \"t1\" });\n}\n",
    );
    let hub = env.start(false).await;
    let api = &hub.login_as("admin").await;
    sensor(api, "s1", "pressure").await;
    for n in 1..=3 {
        reading(&hub, "s1", f64::from(n)).await;
        let message = &format!("reading {n}");
        wait_for(&hub, message, || async move {
            alarm(api, "count:s1")
                .await
                .filter(|a| a["message"] == message.as_str())
        })
        .await;
    }
    let status = hub.terminate().await;
    assert!(status.success(), "{status}");

    let hub = env.start(false).await;
    let api = &hub.login_as("admin").await;
    reading(&hub, "s1", 4.0).await;
    let a = wait_for(&hub, "the count going on", || async move {
        alarm(api, "count:s1")
            .await
            .filter(|a| a["message"] != "reading 3")
    })
    .await;
    assert_eq!(a["message"], "reading 4", "the rule forgot its count: {a}");
    let trace = api.get_ok("/api/v1/rules/count/trace").await;
    assert_eq!(trace.as_array().map(Vec::len), Some(1), "{trace}");
    assert_eq!(trace[0]["actions"][0]["message"], "reading 4");
}

#[tokio::test]
async fn a_runaway_rule_is_stopped_and_counted_and_the_others_still_act() {
    let (env, dir) = env_with_rules(&[("admin", "admin")]).await;
    write_rule(
        &dir,
        "a_loop",
        "on_reading(\"s1\");\n\nfn on_event(ev) {\n    let n = 0;\n    loop {\n        n += 1;\n    }\n}\n",
    );
    write_rule(&dir, "low", &low_rule("low:s1"));
    let hub = env.start(false).await;
    let api = &hub.login_as("admin").await;
    sensor(api, "s1", "pressure").await;
    reading(&hub, "s1", 2.0).await;
    wait_for(&hub, "the other rule's alarm", || alarm(api, "low:s1")).await;
    reading(&hub, "s1", 2.5).await;
    wait_for(&hub, "the other rule again", || async move {
        alarm(api, "low:s1").await.filter(|a| a["count"] == 2)
    })
    .await;
    let looping = wait_for(&hub, "the loop counted twice", || async move {
        rule(api, "a_loop")
            .await
            .filter(|r| r["rule"]["metrics"]["evaluations"] == 2)
    })
    .await;
    let m = &looping["rule"]["metrics"];
    assert_eq!(
        (&m["errors"], &m["limit_hits"]),
        (&json!(2), &json!(2)),
        "{m}"
    );
    assert_eq!(m["last_error"]["limit"], true, "{m}");
    assert_eq!(m["actions"], 0);
    let low = rule(api, "low").await.expect("low");
    assert_eq!(low["rule"]["metrics"]["errors"], 0, "{low}");
    let metrics = api.get("/metrics").await;
    assert!(
        metrics
            .text
            .contains("hub_rule_errors_total{rule=\"a_loop\"} 2"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn a_sensor_added_while_the_hub_runs_reaches_rules_filtering_on_its_kind() {
    let (env, dir) = env_with_rules(&[("admin", "admin")]).await;
    write_rule(
        &dir,
        "hot",
        "on_reading(#{ kind: \"temperature\" });\n\nfn on_event(ev) {\n    raise_alarm(#{ key: \"hot:\" + ev.sensor, severity: \"minor\", message: `${ev.tenant} ${ev.value}`, tenant: ev.tenant });\n}\n",
    );
    let hub = env.start(false).await;
    let api = &hub.login_as("admin").await;
    // Created after the rules runtime loaded the world, and read at once.
    sensor(api, "t9", "temperature").await;
    reading(&hub, "t9", 90.0).await;
    let a = wait_for(&hub, "alarm hot:t9", || alarm(api, "hot:t9")).await;
    assert_eq!(
        a["message"], "t1 90.0",
        "the rule saw the sensor's metadata: {a}"
    );
    sensor(api, "p9", "pressure").await;
    reading(&hub, "p9", 5.0).await;
    reading(&hub, "t9", 91.0).await;
    wait_for(&hub, "the second reading", || async move {
        alarm(api, "hot:t9").await.filter(|a| a["count"] == 2)
    })
    .await;
    assert!(
        alarm(api, "hot:p9").await.is_none(),
        "a pressure sensor reached a temperature rule"
    );
}

#[tokio::test]
async fn hub_rules_check_and_test_report_good_and_bad_folders() {
    let env = TestEnv::new().await;
    let good = env.path("good");
    std::fs::create_dir_all(&good).expect("dir");
    write_rule(&good, "low", &low_rule("low:s1"));
    let fixture = json!({
        "world": {"sensors": {"s1": {"kind": "pressure", "tenant": "t1"}}},
        "cases": [{"name": "a low value raises the alarm", "steps": [
            {"event": {"at": "2025-01-15T08:00:00Z", "type": "reading", "sensor": "s1", "value": 4.0}, "expect": []},
            {"event": {"at": "2025-01-15T08:01:00Z", "type": "reading", "sensor": "s1", "value": 2.0},
             "expect": [{"action": "raise_alarm", "key": "low:s1", "severity": "major", "message": "low 2.0", "tenant": "t1"}]}
        ]}]
    });
    std::fs::write(good.join("low.test.json"), fixture.to_string()).expect("fixture");

    let out = env.cli(&["rules", "check", "good"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("good: 0 error(s), 0 warning(s)"),
        "{out}"
    );
    let out = env.cli(&["rules", "test", "good"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout
            .contains("ok   good/low.test.json :: a low value raises the alarm"),
        "{out}"
    );
    assert!(
        out.stdout.contains("1 passed, 0 failed, 0 broken fixtures"),
        "{out}"
    );

    // A rule that does not compile, and a fixture that expects what the rule does not do.
    let bad = env.path("bad");
    std::fs::create_dir_all(&bad).expect("dir");
    write_rule(&bad, "broken", BROKEN);
    write_rule(&bad, "low", &low_rule("low:s1"));
    let wrong = fixture.to_string().replace("\"low 2.0\"", "\"low 9.9\"");
    std::fs::write(bad.join("low.test.json"), wrong).expect("fixture");

    let out = env.cli(&["rules", "check", "bad"]).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stdout.contains("bad/broken.rhai:4:"), "{out}");
    assert!(out.stdout.contains(": error: "), "{out}");
    assert!(out.stdout.contains("bad: 1 error(s)"), "{out}");
    let out = env.cli(&["rules", "test", "bad"]).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("FAIL bad/low.test.json :: a low value raises the alarm"),
        "{out}"
    );
    assert!(
        out.stdout.contains("low 9.9") && out.stdout.contains("low 2.0"),
        "{out}"
    );
    assert!(out.stdout.contains("0 passed, 1 failed"), "{out}");

    let out = env.cli(&["rules", "check", "missing"]).await;
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("missing"), "{out}");
}
