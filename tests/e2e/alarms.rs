//! Alarms end to end: the real hub, an alarm raised through the API, and the dispatcher page in a real
//! headless Chromium (tests/browser/alarms.mjs) that sees it appear live and acknowledges it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::harness::{TestEnv, password_of};

/// How long the browser may take to start, log in and open the live stream (a cold Chromium is slow).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Chromium, node and playwright-core must be there: a missing one fails the test, it is not skipped.
fn check_browser_tools() -> PathBuf {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "{} not found: run scripts/test (it installs the Debian package `chromium`)",
        chromium.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node not found: run scripts/test (it installs the Debian packages `nodejs` and `npm`)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules is missing: run scripts/test (or `npm ci --prefix tests/browser`)"
    );
    chromium
}

#[tokio::test]
async fn a_dispatcher_sees_an_alarm_live_and_acknowledges_it_in_the_browser() {
    let chromium = check_browser_tools();
    let env = TestEnv::new().await;
    env.add_users(&[("admin", "admin"), ("disp", "dispatcher")])
        .await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    admin
        .post_ok(
            "/api/v1/tenants",
            &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
        )
        .await;

    let mut browser = Command::new("node")
        .arg(browser_dir().join("alarms.mjs"))
        .args([hub.base.as_str(), "disp", &password_of("disp")])
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stdin = browser.stdin.take().expect("piped stdin");
    let mut out = BufReader::new(browser.stdout.take().expect("piped stdout")).lines();
    let mut err = browser.stderr.take().expect("piped stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut text).await;
        text
    });

    let ready = tokio::time::timeout(BROWSER_TIMEOUT, out.next_line()).await;
    let ready = match ready {
        Ok(Ok(Some(line))) => line,
        other => {
            let _ = browser.start_kill();
            panic!(
                "the page did not log in and go live ({other:?}); stderr:\n{}",
                stderr.await.unwrap_or_default()
            )
        }
    };
    assert_eq!(ready, "ready");

    // Raised only now, with the page open: it can only arrive over the live stream.
    let key = "e2e:pressure:hp-1";
    let alarm = admin
        .post_ok(
            "/api/v1/alarms",
            &json!({"key": key, "severity": "critical", "message": "Давление ниже 3 бар / pressure below 3 bar", "tenant": "t1"}),
        )
        .await;
    let id = alarm["id"].as_i64().expect("alarm id");
    stdin
        .write_all(format!("{key}\n").as_bytes())
        .await
        .expect("send the key to the browser");

    let done = tokio::time::timeout(BROWSER_TIMEOUT, async {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = out.next_line().await {
            lines.push(line);
        }
        (lines, browser.wait().await)
    })
    .await;
    let (lines, status) = done.unwrap_or_else(|_| panic!("the browser did not finish"));
    let stderr = stderr.await.unwrap_or_default();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "browser: {status:?}\nstdout: {lines:?}\nstderr:\n{stderr}"
    );
    let comment = "бригада выехала / crew on the way";
    assert_eq!(lines, [format!("acknowledged {id} {comment}")], "{stderr}");

    let shown = admin.get_ok(&format!("/api/v1/alarms/{id}")).await;
    assert_eq!(shown["state"], "acknowledged", "{shown}");
    assert_eq!(shown["acknowledged_by"], "disp", "{shown}");
    assert_eq!(shown["ack_comment"], comment, "{shown}");
    let acks: Vec<_> = shown["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["action"] == "acknowledged")
        .collect();
    assert_eq!(acks.len(), 1, "{shown}");
    assert_eq!(acks[0]["actor"], "disp");
}

#[tokio::test]
async fn alarms_are_listed_per_tenant_and_the_incident_log_exports_csv() {
    let env = TestEnv::new().await;
    env.add_users(&[("admin", "admin")]).await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    for t in ["t1", "t2"] {
        admin
            .post_ok(
                "/api/v1/tenants",
                &json!({"external_id": t, "name": t, "kind": "supplier"}),
            )
            .await;
    }
    let out = env
        .cli_with_stdin(
            &[
                "user",
                "add",
                "d2",
                "--role",
                "dispatcher",
                "--tenant",
                "t2",
                "--password-stdin",
            ],
            Some(&format!("{}\n", password_of("d2"))),
        )
        .await;
    assert!(out.status.success(), "{out}");
    let d2 = hub.login_as("d2").await;
    for (key, t) in [("a:1", "t1"), ("a:2", "t2")] {
        admin
            .post_ok(
                "/api/v1/alarms",
                &json!({"key": key, "severity": "minor", "message": key, "tenant": t}),
            )
            .await;
    }
    let keys = |list: Vec<serde_json::Value>| -> Vec<String> {
        list.iter()
            .map(|a| a["key"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        keys(admin.get_all("/api/v1/alarms?state=open").await),
        ["a:1", "a:2"]
    );
    assert_eq!(keys(d2.get_all("/api/v1/alarms").await), ["a:2"]);
    let other = admin.get_all("/api/v1/alarms").await[0]["id"]
        .as_i64()
        .unwrap();
    d2.post(&format!("/api/v1/alarms/{other}/acknowledge"), &json!({}))
        .await
        .problem(404);
    d2.post(
        "/api/v1/alarms",
        &json!({"key": "a:3", "severity": "minor", "message": "x", "tenant": "t1"}),
    )
    .await
    .invalid("tenant");

    let res = d2.get("/api/v1/incidents?format=csv").await;
    assert_eq!(res.status, 200, "{res}");
    assert!(res.content_type().starts_with("text/csv"), "{res}");
    let rows: Vec<&str> = res.text.lines().collect();
    assert_eq!(rows.len(), 2, "header and t2's alarm only: {res}");
    assert!(
        rows[1].starts_with("alarm,") && rows[1].contains(",t2,minor,a:2,"),
        "{res}"
    );
}
