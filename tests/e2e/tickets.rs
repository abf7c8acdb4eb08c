//! Tickets end to end: an operator opens a ticket through the API, books a plumber's visit into a
//! free slot (the plumber gets an SMS through the HTTP gateway stub), the plumber logs in and reports
//! the work done, the operator closes it; history, CSV export and the report show it. Bad input gets
//! the field and the reason, a viewer cannot create. A rule opens a ticket from a critical alarm, and
//! a ticket that fell due while the hub was stopped is raised overdue once after the restart. The
//! tickets page in headless Chromium (tests/browser/tickets.mjs) shows a ticket live, opens and cancels one.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use connectors::channels::testing::HttpStub;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::harness::{Api, Body, TestEnv, password_of};

/// Delivery and the overdue check run every second here.
const WITHIN: Duration = Duration::from_secs(30);

async fn patch(api: &Api, path: &str, body: &Value) -> crate::harness::Res {
    api.request(Method::PATCH, path, Body::Json(body)).await
}

/// Tenant `t1` (UTC) with complex `rc` > building `b1` > apartment `a1`.
async fn model(admin: &Api) {
    admin
        .post_ok(
            "/api/v1/tenants",
            &json!({"external_id": "t1", "name": "Vodokanal", "kind": "supplier", "time_zone": "UTC"}),
        )
        .await;
    for (id, parent, kind) in [
        ("rc", None, "residential_complex"),
        ("b1", Some("rc"), "building"),
        ("a1", Some("b1"), "apartment"),
    ] {
        admin
            .post_ok(
                "/api/v1/sites",
                &json!({"tenant": "t1", "external_id": id, "parent": parent, "kind": kind,
                        "name": id.to_uppercase(), "address": "Lenina 1"}),
            )
            .await;
    }
}

/// Tomorrow at `hour`:00 UTC.
fn tomorrow_at(hour: u32) -> DateTime<Utc> {
    let d = Utc::now().date_naive() + chrono::Duration::days(1);
    d.and_hms_opt(hour, 0, 0).unwrap_or_default().and_utc()
}

#[tokio::test]
async fn a_ticket_is_booked_completed_closed_and_exported() {
    let gateway = HttpStub::start().await.expect("sms stub");
    gateway.reply(200, r#"{"status":"accepted"}"#);
    let env = TestEnv::new().await;
    env.add_config(&format!(
        r#"
[tickets]
check_interval_seconds = 1

[channels.sms]
type = "http_sms"
url = "{sms}/send"
body = '{{"to": "{{phone}}", "text": "{{text}}"}}'
success_contains = "accepted"
"#,
        sms = gateway.url(),
    ));
    env.add_users(&[
        ("admin", "admin"),
        ("op", "operator"),
        ("view", "viewer"),
        ("fitter", "operator"),
    ])
    .await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    let op = hub.login_as("op").await;
    let view = hub.login_as("view").await;
    model(&admin).await;

    let worker = op
        .post_ok(
            "/api/v1/workers",
            &json!({"tenant": "t1", "external_id": "plumber-1", "name": "Sidorov", "trade": "plumber",
                    "skills": ["water"], "phone": "+7 900 111-22-33", "time_zone": "UTC",
                    "hours": {"mon": ["08:00-20:00"], "tue": ["08:00-20:00"], "wed": ["08:00-20:00"],
                              "thu": ["08:00-20:00"], "fri": ["08:00-20:00"], "sat": ["08:00-20:00"],
                              "sun": ["08:00-20:00"]},
                    "user": "fitter"}),
        )
        .await;
    let worker_id = worker["id"].as_i64().expect("worker id");

    // A viewer reads but cannot create.
    let body = json!({"tenant": "t1", "site": "a1", "category": "water",
                      "description": "Течёт кран на кухне", "contact_phone": "+7 900 555-00-11"});
    view.post("/api/v1/tickets", &body).await.problem(403);
    let ticket = op.post_ok("/api/v1/tickets", &body).await;
    let id = ticket["id"].as_i64().expect("ticket id");
    assert_eq!(ticket["status"], "new");
    assert_eq!(ticket["contact_phone"], "+79005550011");
    assert!(view.get_ok("/api/v1/tickets").await["items"][0]["id"] == id);

    // Bad input: the field and the reason, never a 500.
    let mut bad = body.clone();
    bad["site"] = json!("nowhere");
    let p = op.post("/api/v1/tickets", &bad).await.invalid("site");
    assert!(
        p["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("nowhere")
    );
    let mut bad = body.clone();
    bad["priority"] = json!("asap");
    op.post("/api/v1/tickets", &bad).await.invalid("priority");
    let mut bad = body.clone();
    bad["category"] = json!("Water Leak!");
    op.post("/api/v1/tickets", &bad).await.invalid("category");
    let p = patch(
        &op,
        &format!("/api/v1/tickets/{id}"),
        &json!({"status": "done"}),
    )
    .await
    .problem(409);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("cannot go from new to done"),
        "{p}"
    );
    patch(&op, "/api/v1/tickets/99999", &json!({"status": "done"}))
        .await
        .problem(404);

    // Free slots, then the resident's choice: tomorrow 10:00.
    let from = tomorrow_at(0);
    let to = tomorrow_at(23);
    let slots_url = format!(
        "/api/v1/workers/{worker_id}/slots?category=water&from={}&to={}",
        from.to_rfc3339().replace('+', "%2B"),
        to.to_rfc3339().replace('+', "%2B")
    );
    let slots = op.get_ok(&slots_url).await;
    let start = tomorrow_at(10);
    let starts: Vec<DateTime<Utc>> = slots
        .as_array()
        .expect("slots")
        .iter()
        .filter_map(|s| s["start"].as_str()?.parse().ok())
        .collect();
    assert_eq!(starts.len(), 12, "{slots}");
    assert!(starts.contains(&start), "{slots}");
    let booked = op
        .post_ok(
            &format!("/api/v1/tickets/{id}/booking"),
            &json!({"worker": "plumber-1", "start": start}),
        )
        .await;
    assert_eq!(booked["status"], "assigned");
    assert_eq!(booked["worker"], "plumber-1");

    // The plumber gets the SMS.
    let requests = gateway
        .wait_for_requests(1, WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
    let sms: Value = serde_json::from_str(&requests[0].body).expect("json body");
    assert_eq!(sms["to"], "+79001112233");
    let text = sms["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("Ticket #{id}")) && text.contains("Течёт кран"),
        "{text}"
    );

    // The same time for another ticket is taken; outside the hours is refused.
    let other = op.post_ok("/api/v1/tickets", &body).await;
    let other_id = other["id"].as_i64().expect("id");
    let p = op
        .post(
            &format!("/api/v1/tickets/{other_id}/booking"),
            &json!({"worker": "plumber-1", "start": start}),
        )
        .await
        .problem(409);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("by ticket {id}")),
        "{p}"
    );
    let p = op
        .post(
            &format!("/api/v1/tickets/{other_id}/booking"),
            &json!({"worker": "plumber-1", "start": tomorrow_at(21)}),
        )
        .await
        .problem(409);
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("outside the working hours"),
        "{p}"
    );
    let slots = op.get_ok(&slots_url).await;
    assert_eq!(slots.as_array().map(Vec::len), Some(11), "{slots}");
    // A day off takes the day away; clearing it brings the weekly hours back.
    let day = format!("/api/v1/workers/{worker_id}/days/{}", start.date_naive());
    let off = op
        .request(
            Method::PUT,
            &day,
            Body::Json(&json!({"hours": [], "note": "отгул"})),
        )
        .await
        .ok();
    assert_eq!(off["days"][0]["note"], "отгул", "{off}");
    assert_eq!(op.get_ok(&slots_url).await, json!([]));
    op.request(
        Method::PUT,
        &day,
        Body::Json(&json!({"hours": ["25:00-26:00"]})),
    )
    .await
    .invalid("hours[0]");
    op.request(Method::PUT, &day, Body::Json(&json!({"hours": null})))
        .await
        .ok();
    assert_eq!(
        op.get_ok(&slots_url).await.as_array().map(Vec::len),
        Some(11)
    );

    // The plumber reports it done; not someone else's ticket.
    let fitter = hub.login_as("fitter").await;
    let p = fitter
        .post(
            &format!("/api/v1/tickets/{other_id}/complete"),
            &json!({"note": "-"}),
        )
        .await
        .problem(403);
    assert_eq!(
        p["detail"],
        format!("ticket {other_id} is not assigned to worker `plumber-1`")
    );
    let done = fitter
        .post_ok(
            &format!("/api/v1/tickets/{id}/complete"),
            &json!({"note": "Заменена прокладка"}),
        )
        .await;
    assert_eq!(done["status"], "done");
    let closed = patch(
        &op,
        &format!("/api/v1/tickets/{id}"),
        &json!({"status": "closed", "comment": "Жилец подтвердил"}),
    )
    .await
    .ok();
    assert_eq!(closed["status"], "closed");
    op.post_ok(
        &format!("/api/v1/tickets/{id}/comments"),
        &json!({"text": "Спасибо от жильца"}),
    )
    .await;

    let history = op.get_ok(&format!("/api/v1/tickets/{id}/history")).await;
    let statuses: Vec<(&str, &str)> = history
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["field"] == "status")
        .map(|h| {
            (
                h["actor"].as_str().unwrap_or_default(),
                h["new"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("op", "new"),
            ("op", "assigned"),
            ("fitter", "done"),
            ("op", "closed")
        ]
    );
    assert!(history.to_string().contains("Спасибо от жильца"));

    // CSV with the times from the history.
    let res = op.get("/api/v1/tickets.csv?tenant=1").await;
    assert_eq!(res.status, StatusCode::OK, "{res}");
    assert!(res.content_type().starts_with("text/csv"), "{res}");
    let mut rows = csv::Reader::from_reader(res.text.as_bytes());
    let headers = rows.headers().expect("header").clone();
    let col = |name: &str| headers.iter().position(|h| h == name).expect(name);
    let records: Vec<csv::StringRecord> = rows.records().map(|r| r.expect("row")).collect();
    assert_eq!(records.len(), 2);
    let row = &records[0];
    assert_eq!(&row[col("id")], id.to_string());
    assert_eq!(&row[col("status")], "closed");
    assert_eq!(&row[col("worker")], "plumber-1");
    assert!(!row[col("assigned_at")].is_empty() && !row[col("done_at")].is_empty());
    assert!(!row[col("closed_at")].is_empty());
    assert_eq!(&row[col("overdue")], "false");
    assert_eq!(&row[col("completion_note")], "Заменена прокладка");
    let same = op.get("/api/v1/tickets?format=csv&tenant=1").await;
    assert_eq!(same.text, res.text);

    // The report of the period.
    let report = op.get_ok("/api/v1/reports/tickets").await;
    assert_eq!(report["total"]["tickets"], 2, "{report}");
    assert_eq!(report["total"]["resolved"], 1, "{report}");
    assert_eq!(report["by_category"][0]["key"], "water", "{report}");
    assert_eq!(report["top_requests"][0]["tickets"], 2, "{report}");
    assert_eq!(report["by_site"][0]["key"], "t1/a1", "{report}");
    assert!(
        report["total"]["avg_hours_to_close"].is_number(),
        "{report}"
    );
}

#[tokio::test]
async fn a_rule_opens_tickets_and_overdue_survives_a_restart() {
    let env = TestEnv::new().await;
    let rules = env.path("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::write(
        rules.join("leak.rhai"),
        r#"
on_alarm(#{ severity: "critical" });

fn on_event(ev) {
    if ev.type == "alarm_raised" {
        create_ticket(#{ tenant: "t1", site: "b1", category: "power", priority: "urgent",
                         description: ev.message });
    }
}
"#,
    )
    .expect("write rule");
    env.add_config(&format!(
        "[rules]\ndir = \"{}\"\nreload_ms = 200\n\n[tickets]\ncheck_interval_seconds = 1\n",
        rules.display()
    ));
    env.add_users(&[("admin", "admin"), ("op", "operator")])
        .await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    let op = hub.login_as("op").await;
    model(&admin).await;

    admin
        .post_ok(
            "/api/v1/alarms",
            &json!({"key": "b1.power", "severity": "critical", "message": "Нет напряжения в Б1", "tenant": "t1"}),
        )
        .await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    let from_rule = loop {
        let items = op.get_all("/api/v1/tickets?category=power").await;
        if let Some(t) = items.first() {
            break t.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ticket from the rule\nhub log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(from_rule["source"], "rules");
    assert_eq!(from_rule["created_by"], "rule:leak");
    assert_eq!(from_rule["priority"], "urgent");
    assert_eq!(from_rule["site"], "b1");
    assert_eq!(from_rule["description"], "Нет напряжения в Б1");
    // The site filter takes the whole subtree: the complex holds the building.
    let rc_id = admin.get_ok("/api/v1/sites?limit=1").await["items"][0]["id"]
        .as_i64()
        .expect("site id");
    assert_eq!(
        op.get_all(&format!("/api/v1/tickets?site={rc_id}"))
            .await
            .len(),
        1
    );

    // Due in two seconds; the hub is stopped before that and started after.
    let due = Utc::now() + chrono::Duration::seconds(2);
    let t = op
        .post_ok(
            "/api/v1/tickets",
            &json!({"tenant": "t1", "site": "a1", "category": "callback", "due_at": due}),
        )
        .await;
    let id = t["id"].as_i64().expect("id");
    hub.terminate().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let overdue_rows = |h: &Value| {
        h.as_array()
            .map(|a| a.iter().filter(|e| e["field"] == "overdue").count())
            .unwrap_or(0)
    };
    let hub = env.start(false).await;
    let op = hub.login_as("op").await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let h = op.get_ok(&format!("/api/v1/tickets/{id}/history")).await;
        if overdue_rows(&h) == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not raised overdue: {h}\nhub log:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let overdue = op.get_all("/api/v1/tickets?overdue=true").await;
    assert_eq!(
        overdue.iter().map(|t| t["id"].as_i64()).collect::<Vec<_>>(),
        [Some(id)]
    );
    assert!(overdue[0]["overdue_at"].is_string());

    // A call-back reminder already due shows until it is done, and is raised once.
    let reminder = op
        .post_ok(
            &format!("/api/v1/tickets/{id}/reminders"),
            &json!({"remind_at": Utc::now() - chrono::Duration::minutes(1), "note": "сообщить срок"}),
        )
        .await;
    let due = op.get_ok("/api/v1/reminders?due=true").await;
    assert_eq!(due[0]["id"], reminder["id"], "{due}");
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let h = op.get_ok(&format!("/api/v1/tickets/{id}/history")).await;
        if h.to_string().contains("reminder_due") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reminder not raised: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    op.post_ok(
        &format!("/api/v1/reminders/{}/done", reminder["id"]),
        &json!({}),
    )
    .await;
    assert_eq!(op.get_ok("/api/v1/reminders?due=true").await, json!([]));

    // Another restart does not raise it again.
    hub.terminate().await;
    let hub = env.start(false).await;
    let op = hub.login_as("op").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = op.get_ok(&format!("/api/v1/tickets/{id}/history")).await;
    assert_eq!(overdue_rows(&h), 1, "{h}");
}

/// How long the browser may take to start, log in and open the live stream (a cold Chromium is slow).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

#[tokio::test]
async fn an_operator_works_tickets_on_the_page() {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists() && browser_dir().join("node_modules/playwright-core").exists(),
        "chromium or tests/browser/node_modules missing: run scripts/test"
    );
    let env = TestEnv::new().await;
    env.add_users(&[("admin", "admin"), ("op", "operator")])
        .await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    model(&admin).await;

    let mut browser = Command::new("node")
        .arg(browser_dir().join("tickets.mjs"))
        .args([hub.base.as_str(), "op", &password_of("op")])
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
    let Ok(Ok(Some(ready))) = ready else {
        let _ = browser.start_kill();
        panic!(
            "the page did not log in and go live; stderr:\n{}",
            stderr.await.unwrap_or_default()
        )
    };
    assert_eq!(ready, "ready");

    // Opened only now, with the page open: it can only arrive over the live stream.
    let live = admin
        .post_ok(
            "/api/v1/tickets",
            &json!({"tenant": "t1", "site": "b1", "category": "heating", "description": "Холодно в подъезде"}),
        )
        .await;
    let live_id = live["id"].as_i64().expect("id");
    stdin
        .write_all(format!("{live_id}\n").as_bytes())
        .await
        .expect("send the id to the browser");
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
    assert_eq!(lines.len(), 4, "{lines:?}\n{stderr}");
    assert_eq!(lines[0], format!("live {live_id}"));
    let created: i64 = lines[1]
        .strip_prefix("created ")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(lines[2].starts_with("refused site: "), "{lines:?}");
    assert_eq!(lines[3], format!("cancelled {created}"));

    let t = admin.get_ok(&format!("/api/v1/tickets/{created}")).await;
    assert_eq!(t["status"], "cancelled", "{t}");
    assert_eq!(t["priority"], "urgent", "{t}");
    assert_eq!(t["contact_phone"], "+79005550022", "{t}");
    assert_eq!(t["created_by"], "op", "{t}");
    assert_eq!(t["comments"][0]["text"], "дубль / duplicate", "{t}");
}
