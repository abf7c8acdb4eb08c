//! Outages: recorded idempotently by the dispatch system's id, updated, closed, their affected
//! consumers, and the live event stream the UI listens to.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Api, ids, spawn_hub};

/// Reads an SSE response until an event named `name` arrives; returns its `data:` JSON.
pub(crate) async fn next_event(
    res: &mut reqwest::Response,
    buf: &mut String,
    name: &str,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Complete events end with a blank line.
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let field = |key: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim_start().to_owned())
            };
            if field("event:").as_deref() == Some(name) {
                let data = field("data:").expect("data line");
                return serde_json::from_str(&data).expect("event data is JSON");
            }
        }
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{name}` event within 10 s; got so far: {buf}"))
            .expect("read event stream")
            .unwrap_or_else(|| panic!("event stream ended before `{name}`"));
        buf.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
    }
}

async fn seed(api: &Api) {
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    for (ext, parent, kind) in [
        ("rc-1", None, "residential_complex"),
        ("a-1", Some("rc-1"), "apartment"),
        ("rc-2", None, "residential_complex"),
        ("a-2", Some("rc-2"), "apartment"),
    ] {
        api.post_ok(
            "/api/v1/sites",
            &json!({"tenant": "t1", "external_id": ext, "parent": parent, "kind": kind,
                "name": ext}),
        )
        .await;
    }
    api.post_ok(
        "/api/v1/supply-points",
        &json!({"tenant": "t1", "external_id": "hp-1", "kind": "heat_point", "name": "HP 1",
            "feeds_sites": ["rc-1"]}),
    )
    .await;
    for (ext, site) in [("c1", "a-1"), ("c2", "a-1"), ("c3", "a-2")] {
        api.post_ok(
            "/api/v1/consumers",
            &json!({"tenant": "t1", "external_id": ext, "kind": "resident", "name": ext,
                "sites": [site]}),
        )
        .await;
    }
}

#[tokio::test]
async fn outages_are_idempotent_updated_closed_and_streamed() {
    let (env, hub, admin) = spawn_hub().await;
    env.add_user("dima", "dispatcher", &crate::harness::password_of("dima"))
        .await;
    let api = hub.login_as("dima").await;
    seed(&admin).await;

    // The live stream, opened before anything happens.
    let mut stream = api
        .builder(reqwest::Method::GET, "/api/v1/events/stream")
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("open event stream");
    assert_eq!(stream.status(), 200);
    let ct = stream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut buf = String::new();

    let body = json!({"tenant": "t1", "external_id": "ds-100", "kind": "emergency",
        "utility": "hot_water", "supply_point": "hp-1", "reason": "pipe burst",
        "starts_at": "2020-01-15T08:00:00Z", "expected_end": "2030-01-15T18:00:00Z"});
    let o = api.post_ok("/api/v1/outages", &body).await;
    let id = o["id"].as_i64().expect("outage id");
    assert_eq!(
        o["status"], "active",
        "an emergency that has started is active: {o}"
    );
    assert_eq!(o["external_id"], "ds-100");
    assert_eq!(o["utility"], "hot_water");
    assert_eq!(o["expected_end"], "2030-01-15T18:00:00Z");

    let event = next_event(&mut stream, &mut buf, "outage_opened").await;
    assert_eq!(event["source"], "api", "{event}");
    assert_eq!(event["kind"]["type"], "outage_opened", "{event}");
    assert_eq!(event["kind"]["id"], id, "{event}");
    assert_eq!(event["kind"]["tenant"], "t1", "{event}");
    assert_eq!(event["kind"]["external_id"], "ds-100", "{event}");
    assert_eq!(event["kind"]["supply_point"], "hp-1", "{event}");

    // The same body again: the same outage, and no event (the next one read below is the update's).
    let again = api.post_ok("/api/v1/outages", &body).await;
    assert_eq!(again["id"], id);
    assert_eq!(again["expected_end"], o["expected_end"]);
    assert_eq!(again["status"], "active");
    let listed = api.get_ok("/api/v1/outages").await;
    assert_eq!(ids(&listed), [id]);

    // An update of the expected end.
    let mut later = body.clone();
    later["expected_end"] = json!("2030-01-16T12:00:00Z");
    let updated = api.post_ok("/api/v1/outages", &later).await;
    assert_eq!(updated["id"], id);
    assert_eq!(updated["expected_end"], "2030-01-16T12:00:00Z");
    let got = api.get_ok(&format!("/api/v1/outages/{id}")).await;
    assert_eq!(got["expected_end"], "2030-01-16T12:00:00Z");
    let event = next_event(&mut stream, &mut buf, "outage_updated").await;
    assert_eq!(event["kind"]["id"], id, "{event}");
    assert_eq!(
        event["kind"]["expected_end"], "2030-01-16T12:00:00Z",
        "{event}"
    );

    // Who it affects: everything hp-1 feeds.
    let a = api.get_ok(&format!("/api/v1/outages/{id}/affected")).await;
    assert_eq!(a["consumers_count"], 2, "{a}");
    assert_eq!(a["consumers"]["items"][0]["external_id"], "c1");
    let page = api
        .get_ok(&format!("/api/v1/outages/{id}/affected?limit=1"))
        .await;
    assert_eq!(page["consumers"]["items"].as_array().map(Vec::len), Some(1));
    assert!(page["consumers"]["next_after"].is_i64(), "{page}");

    // A planned outage on named sites, without a dispatch id: each POST is a new one.
    let planned = json!({"tenant": "t1", "kind": "planned", "utility": "cold_water",
        "sites": ["rc-2"], "starts_at": "2031-06-01T06:00:00Z"});
    let p1 = api.post_ok("/api/v1/outages", &planned).await;
    assert_eq!(p1["status"], "planned");
    let pa = api
        .get_ok(&format!("/api/v1/outages/{}/affected", p1["id"]))
        .await;
    assert_eq!(pa["consumers_count"], 1, "{pa}");
    assert_eq!(pa["consumers"]["items"][0]["external_id"], "c3");
    assert_eq!(
        ids(&api.get_ok("/api/v1/outages?status=planned").await),
        [p1["id"].as_i64().expect("id")]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/outages?kind=emergency").await),
        [id]
    );

    // Closing.
    let closed = api
        .post_ok(&format!("/api/v1/outages/{id}/close"), &json!({}))
        .await;
    assert_eq!(closed["status"], "closed");
    assert!(closed["actual_end"].is_string(), "{closed}");
    let event = next_event(&mut stream, &mut buf, "outage_closed").await;
    assert_eq!(event["kind"]["id"], id, "{event}");
    assert_eq!(event["kind"]["status"], "closed", "{event}");
    let got = api.get_ok(&format!("/api/v1/outages/{id}")).await;
    assert_eq!(got["status"], "closed");
    assert_eq!(
        ids(&api.get_ok("/api/v1/outages?status=closed").await),
        [id]
    );
    api.post(&format!("/api/v1/outages/{}/close", 999_999), &json!({}))
        .await
        .problem(404);
}

/// The CSV feed of a dispatch system: every row an outage, announced on the bus; a bad row names its
/// line and field and imports nothing; a resend changes nothing.
#[tokio::test]
async fn outages_import_from_csv_with_line_errors_and_events() {
    let (_env, hub, admin) = spawn_hub().await;
    seed(&admin).await;
    let mut stream = admin
        .builder(reqwest::Method::GET, "/api/v1/events/stream")
        .send()
        .await
        .expect("event stream");
    let mut buf = String::new();
    let bad = "tenant,external_id,kind,utility,supply_point,sites,reason,starts_at,expected_end\n\
               t1,p-1,planned,hot_water,,rc-1;rc-2,Опрессовка,2026-12-01T08:00:00Z,2026-12-01T18:00:00Z\n\
               t1,p-2,sometimes,heat,hp-1,,,2026-12-02T08:00:00Z,\n";
    let res = admin
        .post_raw("/api/v1/import/outages", Some("text/csv"), bad)
        .await;
    let problem = res.problem(422);
    assert!(problem.to_string().contains("line 3: kind"), "{problem}");
    assert!(
        admin.get_ok("/api/v1/outages").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let good = bad.replace("sometimes", "emergency");
    let report = admin
        .post_raw("/api/v1/import/outages", Some("text/csv"), &good)
        .await
        .ok();
    assert_eq!(report["imported"], 2, "{report}");
    let opened = next_event(&mut stream, &mut buf, "outage_opened").await;
    assert_eq!(opened["kind"]["external_id"], "p-1");
    let list = admin.get_ok("/api/v1/outages").await;
    assert_eq!(ids(&list).len(), 2, "{list}");
    let p1 = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["external_id"] == "p-1")
        .unwrap();
    let affected = admin
        .get_ok(&format!("/api/v1/outages/{}/affected", p1["id"]))
        .await;
    assert_eq!(affected["consumers_count"], 3, "both complexes: {affected}");
    drop(hub);
}
