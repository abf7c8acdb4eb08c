//! Bad input, on every endpoint family: malformed JSON and missing Content-Type are 400, values of the
//! wrong type or shape are 422 naming the field, bad query parameters are 422 naming the parameter,
//! and nothing is ever a 500 (the harness checks every answer for that).

use serde_json::{Value, json};

use crate::harness::{Api, spawn_hub};

/// A valid body for each POST endpoint (after `seed`), and fields to break in it.
fn valid_bodies(user_id: i64, outage_id: i64) -> Vec<(String, Value)> {
    vec![
        (
            "/api/v1/tenants".into(),
            json!({"external_id": "t2", "name": "T2", "kind": "supplier"}),
        ),
        (
            "/api/v1/sites".into(),
            json!({"tenant": "t1", "external_id": "s2", "kind": "building", "name": "S2"}),
        ),
        (
            "/api/v1/supply-points".into(),
            json!({"tenant": "t1", "external_id": "p2", "kind": "heat_point", "name": "P2"}),
        ),
        (
            "/api/v1/consumers".into(),
            json!({"tenant": "t1", "external_id": "c2", "kind": "resident", "name": "C2"}),
        ),
        (
            "/api/v1/sensors".into(),
            json!({"tenant": "t1", "external_id": "x2", "kind": "pressure"}),
        ),
        (
            "/api/v1/outages".into(),
            json!({"tenant": "t1", "kind": "planned", "utility": "heat",
                "starts_at": "2031-01-01T00:00:00Z", "sites": ["s1"]}),
        ),
        (format!("/api/v1/outages/{outage_id}/close"), json!({})),
        (
            "/api/v1/users".into(),
            json!({"username": "u2", "role": "viewer", "password": "long-enough-password"}),
        ),
        (
            format!("/api/v1/users/{user_id}"),
            json!({"role": "viewer"}),
        ),
        ("/api/v1/auth/tokens".into(), json!({"days": 1})),
        (
            "/api/v1/auth/login".into(),
            json!({"username": "nobody", "password": "nothing-at-all"}),
        ),
    ]
}

/// PATCH for `/users/{id}`, POST for the rest.
fn method_of(path: &str) -> reqwest::Method {
    if path.starts_with("/api/v1/users/") {
        reqwest::Method::PATCH
    } else {
        reqwest::Method::POST
    }
}

async fn send(
    api: &Api,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> crate::harness::Res {
    api.request(
        method_of(path),
        path,
        crate::harness::Body::Raw(content_type, body),
    )
    .await
}

async fn seed(api: &Api) -> (i64, i64) {
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "T1", "kind": "supplier"}),
    )
    .await;
    api.post_ok(
        "/api/v1/sites",
        &json!({"tenant": "t1", "external_id": "s1", "kind": "building", "name": "S1"}),
    )
    .await;
    let user = api
        .post_ok(
            "/api/v1/users",
            &json!({"username": "u1", "role": "viewer", "password": "long-enough-password"}),
        )
        .await;
    let outage = api
        .post_ok(
            "/api/v1/outages",
            &json!({"tenant": "t1", "kind": "emergency", "utility": "heat", "sites": ["s1"],
                "starts_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    (
        user["user"]["id"].as_i64().expect("user id"),
        outage["id"].as_i64().expect("outage id"),
    )
}

#[tokio::test]
async fn malformed_untyped_and_unknown_bodies() {
    let (_env, _hub, api) = spawn_hub().await;
    let (user_id, outage_id) = seed(&api).await;

    for (path, body) in valid_bodies(user_id, outage_id) {
        let text = body.to_string();
        // Malformed JSON, an empty body, a truncated one.
        for bad in ["{", "", "{\"", "not json", "{1: 2}", "{,}", "\u{feff}{}"] {
            let p = send(&api, &path, Some("application/json"), bad)
                .await
                .problem(400);
            assert!(p["detail"].is_string(), "{path}: {p}");
        }
        // The right JSON without, or with a wrong, Content-Type.
        let p = send(&api, &path, None, &text).await.problem(400);
        assert!(
            p["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Content-Type")),
            "{path}: {p}"
        );
        send(&api, &path, Some("text/plain"), &text)
            .await
            .problem(400);
        send(
            &api,
            &path,
            Some("application/x-www-form-urlencoded"),
            "a=1",
        )
        .await
        .problem(400);
        // An unknown field.
        let mut extra = body.clone();
        extra["colour"] = json!("red");
        let p = send(&api, &path, Some("application/json"), &extra.to_string())
            .await
            .problem(422);
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains("colour")),
            "{path}: {p}"
        );
        // Not an object at all.
        send(&api, &path, Some("application/json"), "[1, 2]")
            .await
            .problem(422);
        send(&api, &path, Some("application/json"), "[\"a\"]")
            .await
            .problem(422);
        send(&api, &path, Some("application/json"), "42")
            .await
            .problem(422);
    }

    // Wrong types and values: (path, body, the field named in errors[0].field).
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/api/v1/tenants",
            json!({"external_id": "t3", "name": "T", "kind": "bank"}),
            "kind",
        ),
        // A number where a name is expected is a wrong type too, not malformed JSON.
        (
            "/api/v1/tenants",
            json!({"external_id": "t3", "name": "T", "kind": 5}),
            "kind",
        ),
        (
            "/api/v1/users",
            json!({"username": "u3", "role": 1}),
            "role",
        ),
        (
            "/api/v1/tenants",
            json!({"external_id": "t3", "name": "T", "kind": "supplier", "time_zone": "Mars/Base"}),
            "time_zone",
        ),
        (
            "/api/v1/tenants",
            json!({"external_id": "t3", "name": "T", "kind": "supplier",
                "business_hours": {"mon": "18:00-08:00"}}),
            "business_hours",
        ),
        (
            "/api/v1/tenants",
            json!({"external_id": "t3", "kind": "supplier"}),
            "name",
        ),
        (
            "/api/v1/tenants",
            json!({"external_id": " t3", "name": "T", "kind": "supplier"}),
            "external_id",
        ),
        (
            "/api/v1/sites",
            json!({"tenant": "t1", "external_id": "s3", "kind": 5, "name": "S"}),
            "kind",
        ),
        (
            "/api/v1/sites",
            json!({"tenant": "t1", "external_id": "s3", "kind": "Big House", "name": "S"}),
            "kind",
        ),
        (
            "/api/v1/sites",
            json!({"tenant": "t1", "external_id": "s3", "kind": "building", "name": ["S"]}),
            "name",
        ),
        (
            "/api/v1/supply-points",
            json!({"tenant": "t1", "external_id": "p3", "kind": "volcano", "name": "P"}),
            "kind",
        ),
        (
            "/api/v1/supply-points",
            json!({"tenant": "t1", "external_id": "p3", "kind": "pump", "name": "P",
                "feeds_sites": "s1"}),
            "feeds_sites",
        ),
        (
            "/api/v1/consumers",
            json!({"tenant": "t1", "external_id": "c3", "kind": "resident", "name": "C",
                "phones": ["12"]}),
            "phones[0]",
        ),
        (
            "/api/v1/consumers",
            json!({"tenant": "t1", "external_id": "c3", "kind": "resident", "name": "C",
                "phones": ["+74951234567", 74951234567_i64]}),
            "phones[1]",
        ),
        (
            "/api/v1/consumers",
            json!({"tenant": "t1", "external_id": "c3", "kind": "resident", "name": "C",
                "email": "not-an-address"}),
            "email",
        ),
        (
            "/api/v1/consumers",
            json!({"tenant": "t1", "external_id": "c3", "kind": "resident", "name": "C",
                "preferred_channels": ["sms", "pigeon"]}),
            "preferred_channels[1]",
        ),
        (
            "/api/v1/consumers",
            json!({"tenant": "t1", "external_id": "c3", "kind": "resident", "name": "C",
                "life_support": "yes"}),
            "life_support",
        ),
        (
            "/api/v1/sensors",
            json!({"tenant": "t1", "external_id": "x3", "kind": "humidity"}),
            "kind",
        ),
        (
            "/api/v1/sensors",
            json!({"tenant": "t1", "external_id": "x3", "kind": "flow", "offline_after_s": "soon"}),
            "offline_after_s",
        ),
        (
            "/api/v1/outages",
            json!({"tenant": "t1", "kind": "planned", "utility": "heat", "starts_at": "yesterday"}),
            "starts_at",
        ),
        (
            "/api/v1/outages",
            json!({"tenant": "t1", "kind": "planned", "utility": "steam",
                "starts_at": "2031-01-01T00:00:00Z"}),
            "utility",
        ),
        (
            "/api/v1/outages",
            json!({"tenant": "t1", "kind": "planned", "utility": "heat"}),
            "starts_at",
        ),
        (
            "/api/v1/users",
            json!({"username": "u3", "role": "root"}),
            "role",
        ),
        (
            "/api/v1/users",
            json!({"username": "u3", "role": "viewer", "password": "short"}),
            "password",
        ),
        (
            "/api/v1/auth/login",
            json!({"username": 5, "password": "x"}),
            "username",
        ),
        (
            "/api/v1/auth/login",
            json!({"username": "admin"}),
            "password",
        ),
        ("/api/v1/auth/tokens", json!({"days": "many"}), "days"),
        ("/api/v1/auth/tokens", json!({"days": 0}), "days"),
    ];
    for (path, body, field) in &cases {
        let p = api.post(path, body).await.invalid(field);
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains(field)),
            "{path}: {p}"
        );
    }
    let close = format!("/api/v1/outages/{outage_id}/close");
    api.post(&close, &json!({"actual_end": "now"}))
        .await
        .invalid("actual_end");
    let patch = format!("/api/v1/users/{user_id}");
    send(
        &api,
        &patch,
        Some("application/json"),
        r#"{"disabled": "yes"}"#,
    )
    .await
    .invalid("disabled");
    send(
        &api,
        &patch,
        Some("application/json"),
        r#"{"role": "root"}"#,
    )
    .await
    .invalid("role");

    // References to records that do not exist are the client's error too.
    api.post(
        "/api/v1/sites",
        &json!({"tenant": "nope", "external_id": "s4", "kind": "building", "name": "S"}),
    )
    .await
    .problem(422);
    api.post(
        "/api/v1/consumers",
        &json!({"tenant": "t1", "external_id": "c4", "kind": "resident", "name": "C",
            "sites": ["s1", "missing"]}),
    )
    .await
    .invalid("sites[1]");

    // Nothing of the above was written.
    let tenants = api.get_ok("/api/v1/tenants").await;
    assert_eq!(
        tenants["items"].as_array().map(Vec::len),
        Some(1),
        "{tenants}"
    );
    let consumers = api.get_ok("/api/v1/consumers").await;
    assert_eq!(consumers["items"], json!([]), "{consumers}");
}

#[tokio::test]
async fn bad_query_parameters_and_paths() {
    let (_env, _hub, api) = spawn_hub().await;
    let (_user_id, outage_id) = seed(&api).await;
    let point = api
        .post_ok(
            "/api/v1/supply-points",
            &json!({"tenant": "t1", "external_id": "p1", "kind": "pump", "name": "P"}),
        )
        .await["id"]
        .as_i64()
        .expect("id");
    api.post_ok(
        "/api/v1/sensors",
        &json!({"tenant": "t1", "external_id": "x1", "kind": "flow"}),
    )
    .await;

    let lists = [
        "/api/v1/tenants".to_owned(),
        "/api/v1/sites".to_owned(),
        "/api/v1/supply-points".to_owned(),
        "/api/v1/consumers".to_owned(),
        "/api/v1/sensors".to_owned(),
        "/api/v1/outages".to_owned(),
        "/api/v1/audit".to_owned(),
        format!("/api/v1/supply-points/{point}/affected"),
        format!("/api/v1/outages/{outage_id}/affected"),
    ];
    for list in &lists {
        for query in [
            "limit=abc",
            "limit=0",
            "limit=1001",
            "limit=-5",
            "limit=1.5",
            "limit=",
        ] {
            api.get(&format!("{list}?{query}")).await.invalid("limit");
        }
        api.get(&format!("{list}?after=x")).await.invalid("after");
        api.get(&format!("{list}?after=-1")).await.invalid("after");
        api.get_ok(&format!("{list}?limit=1000")).await;
        api.get_ok(&format!("{list}?limit=1&after=0")).await;
    }

    // Lists with filters refuse parameters they do not know (a typo must not widen a query).
    for list in [
        "/api/v1/sites",
        "/api/v1/supply-points",
        "/api/v1/consumers",
        "/api/v1/sensors",
        "/api/v1/outages",
        "/api/v1/audit",
    ] {
        let p = api
            .get(&format!("{list}?limit=10&kinds=building"))
            .await
            .problem(422);
        assert!(
            p["detail"].as_str().is_some_and(|d| d.contains("kinds")),
            "{p}"
        );
    }

    for (path, field) in [
        ("/api/v1/sites?parent=top", "parent"),
        ("/api/v1/sites?roots=maybe", "roots"),
        ("/api/v1/sites?tenant=t1", "tenant"),
        ("/api/v1/supply-points?kind=volcano", "kind"),
        ("/api/v1/consumers?life_support=maybe", "life_support"),
        ("/api/v1/consumers?site=a", "site"),
        ("/api/v1/sensors?kind=humidity", "kind"),
        ("/api/v1/outages?status=open", "status"),
        ("/api/v1/outages?kind=sudden", "kind"),
        ("/api/v1/sensors/x1/readings?from=yesterday", "from"),
        ("/api/v1/sensors/x1/readings?limit=0", "limit"),
        (
            "/api/v1/sensors/x1/readings?from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z",
            "from",
        ),
        ("/api/v1/audit?limit=many", "limit"),
    ] {
        api.get(path).await.invalid(field);
    }

    // A path id that is not a number is a client error, never a server one.
    for path in [
        "/api/v1/sites/abc",
        "/api/v1/supply-points/abc/affected",
        "/api/v1/consumers/1.5",
        "/api/v1/outages/abc",
        "/api/v1/tenants/99999999999999999999999",
    ] {
        let p = api.get(path).await.problem(400);
        assert!(p["detail"].is_string(), "{p}");
    }
    // A method an endpoint does not have.
    api.request(
        reqwest::Method::PUT,
        "/api/v1/sites",
        crate::harness::Body::None,
    )
    .await
    .problem(405);
    api.request(
        reqwest::Method::PATCH,
        "/api/v1/outages/1",
        crate::harness::Body::None,
    )
    .await
    .problem(405);

    // Imports: an unknown kind, a bad flag, a file that is not UTF-8.
    api.post_raw("/api/v1/import/bananas", Some("text/csv"), "a,b\n")
        .await
        .invalid("kind");
    api.post_raw(
        "/api/v1/import/sites?skip_invalid=perhaps",
        Some("text/csv"),
        "a,b\n",
    )
    .await
    .invalid("skip_invalid");
    let res = api
        .builder(reqwest::Method::POST, "/api/v1/import/sites")
        .header("content-type", "text/csv")
        .body(vec![0xff_u8, 0xfe, 0x00, b'\n'])
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    // A file that is not CSV of sites at all.
    let res = api
        .post_raw("/api/v1/import/sites", Some("application/json"), "{\"a\":")
        .await;
    res.problem(422);

    // No answer above was a server error; the metrics agree.
    let metrics = api.get("/metrics").await.text;
    assert!(!metrics.contains("5xx"), "{metrics}");
}
