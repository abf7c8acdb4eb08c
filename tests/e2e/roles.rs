//! Roles: who may change what, and the audit log that records who did.

use serde_json::json;

use crate::harness::TestEnv;

#[tokio::test]
async fn each_role_may_do_only_its_part_and_the_audit_log_names_them() {
    let env = TestEnv::new().await;
    env.add_users(&[
        ("alice", "admin"),
        ("vera", "viewer"),
        ("dima", "dispatcher"),
        ("egor", "engineer"),
    ])
    .await;
    let hub = env.start(false).await;
    let (admin, viewer, dispatcher, engineer) = futures::join!(
        hub.login_as("alice"),
        hub.login_as("vera"),
        hub.login_as("dima"),
        hub.login_as("egor"),
    );

    let tenant = json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"});
    for who in [&viewer, &dispatcher, &engineer] {
        who.post("/api/v1/tenants", &tenant).await.problem(403);
    }
    admin.post_ok("/api/v1/tenants", &tenant).await;

    let site = json!({"tenant": "t1", "external_id": "rc-1", "kind": "residential_complex",
        "name": "Complex 1"});
    viewer.post("/api/v1/sites", &site).await.problem(403);
    dispatcher.post("/api/v1/sites", &site).await.problem(403);
    let created = engineer.post_ok("/api/v1/sites", &site).await;
    let site_id = created["id"].as_i64().expect("site id");
    viewer
        .delete(&format!("/api/v1/sites/{site_id}"))
        .await
        .problem(403);
    dispatcher
        .delete(&format!("/api/v1/sites/{site_id}"))
        .await
        .problem(403);

    // Engineers import; dispatchers do not.
    let csv = "tenant,external_id,parent,kind,name\nt1,b-1,rc-1,building,Building 1\n";
    dispatcher
        .post_raw("/api/v1/import/sites", Some("text/csv"), csv)
        .await
        .problem(403);
    let report = engineer
        .post_raw("/api/v1/import/sites", Some("text/csv"), csv)
        .await
        .ok();
    assert_eq!(
        (report["rows"].as_i64(), report["imported"].as_i64()),
        (Some(1), Some(1))
    );

    let outage = json!({"tenant": "t1", "external_id": "ds-1", "kind": "emergency",
        "utility": "heat", "sites": ["rc-1"], "starts_at": "2030-01-15T08:00:00Z"});
    let p = viewer.post("/api/v1/outages", &outage).await.problem(403);
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("role")),
        "{p}"
    );
    let opened = dispatcher.post_ok("/api/v1/outages", &outage).await;
    let outage_id = opened["id"].as_i64().expect("outage id");
    viewer
        .post(&format!("/api/v1/outages/{outage_id}/close"), &json!({}))
        .await
        .problem(403);

    // Everyone reads.
    for who in [&viewer, &dispatcher, &engineer, &admin] {
        let sites = who.get_ok("/api/v1/sites").await;
        assert_eq!(sites["items"].as_array().map(Vec::len), Some(2), "{sites}");
        who.get_ok(&format!("/api/v1/outages/{outage_id}")).await;
    }

    // Users and the audit log are for admins only.
    for who in [&viewer, &dispatcher, &engineer] {
        who.get("/api/v1/users").await.problem(403);
        who.get("/api/v1/audit").await.problem(403);
        who.post("/api/v1/users", &json!({"username": "x", "role": "admin"}))
            .await
            .problem(403);
    }
    let users = admin.get_ok("/api/v1/users").await;
    let mut names: Vec<&str> = users
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "dima", "egor", "vera"]);

    // An admin makes a user through the API; the generated password is returned once and works.
    let made = admin
        .post_ok(
            "/api/v1/users",
            &json!({"username": "oleg", "role": "operator"}),
        )
        .await;
    let password = made["password"].as_str().expect("generated password");
    let oleg = hub.login("oleg", password).await;
    oleg.post("/api/v1/outages", &outage).await.problem(403);
    admin
        .post(
            "/api/v1/users",
            &json!({"username": "oleg", "role": "viewer"}),
        )
        .await
        .problem(409);

    // Disabling a user ends their sessions.
    let oleg_id = made["user"]["id"].as_i64().expect("user id");
    let res = admin
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/users/{oleg_id}"),
            crate::harness::Body::Json(&json!({"disabled": true})),
        )
        .await;
    assert_eq!(res.status, 200, "{res}");
    oleg.get("/api/v1/auth/me").await.problem(401);

    let audit = admin.get_ok("/api/v1/audit?limit=1000").await;
    let entries = audit["items"].as_array().expect("audit items");
    let has = |actor: &str, action: &str, object_type: &str| {
        entries.iter().any(|e| {
            e["actor"] == actor && e["action"] == action && e["object_type"] == object_type
        })
    };
    assert!(has("alice", "upsert", "tenant"), "{audit}");
    assert!(has("egor", "upsert", "site"), "{audit}");
    assert!(has("egor", "import", "sites"), "{audit}");
    assert!(has("dima", "create", "outage"), "{audit}");
    assert!(has("alice", "create", "user"), "{audit}");
    assert!(has("alice", "update", "user"), "{audit}");
    assert!(
        has("cli", "create", "user"),
        "users added with `hub user add`: {audit}"
    );
    let outage_entry = entries
        .iter()
        .find(|e| e["object_type"] == "outage")
        .expect("outage entry");
    assert_eq!(outage_entry["object_id"], outage_id.to_string());
    // Refused attempts change nothing and so leave no entry.
    assert!(!has("vera", "create", "outage") && !has("vera", "upsert", "site"));
    // Newest first.
    let ids: Vec<i64> = entries.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let only = admin.get_ok("/api/v1/audit?actor=egor").await;
    assert!(
        only["items"]
            .as_array()
            .is_some_and(|i| !i.is_empty() && i.iter().all(|e| e["actor"] == "egor")),
        "{only}"
    );
}
