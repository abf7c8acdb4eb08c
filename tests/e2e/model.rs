//! The data model through the API: tenants, the sites tree, the supply network, consumers and sensors.
//! Create (idempotent by external id), list with filters and pages, get, delete.

use serde_json::{Value, json};

use crate::harness::{Api, ids, spawn_hub};

async fn create(api: &Api, path: &str, body: Value) -> i64 {
    api.post_ok(path, &body).await["id"]
        .as_i64()
        .expect("id of created record")
}

#[tokio::test]
async fn model_crud_filters_and_pages() {
    let (_env, _hub, api) = spawn_hub().await;

    let t1 = create(
        &api,
        "/api/v1/tenants",
        json!({"external_id": "t1", "name": "Teplo", "kind": "supplier",
            "time_zone": "Asia/Yekaterinburg", "business_hours": {"sat": "10:00-14:00"}}),
    )
    .await;
    let t2 = create(
        &api,
        "/api/v1/tenants",
        json!({"external_id": "uk-2", "name": "UK Dom", "kind": "management_company"}),
    )
    .await;
    let tenant = api.get_ok(&format!("/api/v1/tenants/{t1}")).await;
    assert_eq!(tenant["time_zone"], "Asia/Yekaterinburg");
    assert_eq!(tenant["business_hours"]["sat"], "10:00-14:00");
    assert_eq!(tenant["business_hours"]["mon"], "08:00-17:00");
    assert_eq!(ids(&api.get_ok("/api/v1/tenants").await), [t1, t2]);

    // Sites: two complexes, buildings, entrances, apartments and a basement.
    let site = |ext: &str, parent: Option<&str>, kind: &str, name: &str| {
        json!({"tenant": "t1", "external_id": ext, "parent": parent, "kind": kind, "name": name,
            "address": format!("Lenina 1, {name}")})
    };
    let rc1 = create(
        &api,
        "/api/v1/sites",
        site("rc-1", None, "residential_complex", "Sunny"),
    )
    .await;
    let rc2 = create(
        &api,
        "/api/v1/sites",
        site("rc-2", None, "residential_complex", "Birch"),
    )
    .await;
    let b1 = create(
        &api,
        "/api/v1/sites",
        site("b-1", Some("rc-1"), "building", "Building 1"),
    )
    .await;
    let b2 = create(
        &api,
        "/api/v1/sites",
        site("b-2", Some("rc-1"), "building", "Building 2"),
    )
    .await;
    let b3 = create(
        &api,
        "/api/v1/sites",
        site("b-3", Some("rc-2"), "building", "Building 3"),
    )
    .await;
    let e1 = create(
        &api,
        "/api/v1/sites",
        site("e-1", Some("b-1"), "entrance", "Entrance 1"),
    )
    .await;
    let a1 = create(
        &api,
        "/api/v1/sites",
        site("a-1", Some("e-1"), "apartment", "Apt 1"),
    )
    .await;
    let a2 = create(
        &api,
        "/api/v1/sites",
        site("a-2", Some("e-1"), "apartment", "Apt 2"),
    )
    .await;
    let base = create(
        &api,
        "/api/v1/sites",
        site("bs-1", Some("b-1"), "basement", "Basement"),
    )
    .await;
    let bike = create(
        &api,
        "/api/v1/sites",
        site("bk-1", Some("b-2"), "bike_storage", "Bikes"),
    )
    .await;

    let got = api.get_ok(&format!("/api/v1/sites/{b1}")).await;
    assert_eq!(got["parent_id"], rc1);
    assert_eq!(got["tenant_id"], t1);
    assert_eq!(got["kind"], "building");
    assert_eq!(got["external_id"], "b-1");

    // Filters.
    assert_eq!(
        ids(&api.get_ok("/api/v1/sites?kind=residential_complex").await),
        [rc1, rc2]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/sites?kind=building").await),
        [b1, b2, b3]
    );
    assert_eq!(
        ids(&api.get_ok(&format!("/api/v1/sites?parent={b1}")).await),
        [e1, base]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/sites?roots=true").await),
        [rc1, rc2]
    );
    assert_eq!(ids(&api.get_ok("/api/v1/sites?q=Apt").await), [a1, a2]);
    assert_eq!(ids(&api.get_ok("/api/v1/sites?q=Birch").await), [rc2]);
    assert_eq!(
        ids(&api.get_ok(&format!("/api/v1/sites?tenant={t2}")).await),
        Vec::<i64>::new()
    );
    assert_eq!(
        ids(&api
            .get_ok(&format!("/api/v1/sites?parent={b1}&kind=basement"))
            .await),
        [base]
    );

    // Pages of 3 walk every site once, in id order, and the last page says so.
    let mut seen = Vec::new();
    let mut path = "/api/v1/sites?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = api.get_ok(&path).await;
        let got = ids(&page);
        assert!(got.len() <= 3, "{page}");
        seen.extend(got);
        pages += 1;
        match page["next_after"].as_i64() {
            Some(next) => path = format!("/api/v1/sites?limit=3&after={next}"),
            None => break,
        }
    }
    let mut all = vec![rc1, rc2, b1, b2, b3, e1, a1, a2, base, bike];
    all.sort_unstable();
    assert_eq!(seen, all);
    assert_eq!(pages, 4);
    let page = api
        .get_ok(&format!("/api/v1/sites?limit=2&after={b1}"))
        .await;
    assert_eq!(ids(&page), [b2, b3]);
    assert_eq!(page["next_after"], b3);

    // Same external id again: an update of the same record.
    let again = api
        .post_ok(
            "/api/v1/sites",
            &site("b-1", Some("rc-1"), "building", "Building One"),
        )
        .await;
    assert_eq!(again["id"], b1);
    assert_eq!(
        api.get_ok(&format!("/api/v1/sites/{b1}")).await["name"],
        "Building One"
    );
    assert_eq!(api.get_all("/api/v1/sites").await.len(), 10);

    // Supply network.
    let point = |ext: &str, kind: &str, feeds_points: &[&str], feeds_sites: &[&str]| {
        json!({"tenant": "t1", "external_id": ext, "kind": kind, "name": ext.to_uppercase(),
            "feeds_points": feeds_points, "feeds_sites": feeds_sites})
    };
    let hp1 = create(
        &api,
        "/api/v1/supply-points",
        point("hp-1", "heat_point", &[], &["rc-1"]),
    )
    .await;
    let hp2 = create(
        &api,
        "/api/v1/supply-points",
        point("hp-2", "heat_point", &[], &["b-3"]),
    )
    .await;
    let bh1 = create(
        &api,
        "/api/v1/supply-points",
        point("bh-1", "boiler_house", &["hp-1", "hp-2"], &[]),
    )
    .await;
    let got = api.get_ok(&format!("/api/v1/supply-points/{bh1}")).await;
    assert_eq!(got["kind"], "boiler_house");
    let mut feeds = crate::harness::id_list(&got["feeds_points"]);
    feeds.sort_unstable();
    assert_eq!(feeds, [hp1, hp2]);
    assert_eq!(
        crate::harness::id_list(
            &api.get_ok(&format!("/api/v1/supply-points/{hp1}")).await["feeds_sites"]
        ),
        [rc1]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/supply-points?kind=heat_point").await),
        [hp1, hp2]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/supply-points?kind=boiler_house").await),
        [bh1]
    );
    let page = api.get_ok("/api/v1/supply-points?limit=2").await;
    assert_eq!(ids(&page), [hp1, hp2]);
    assert_eq!(
        ids(&api
            .get_ok(&format!("/api/v1/supply-points?after={}", hp2))
            .await),
        [bh1]
    );
    // An upsert replaces the links.
    let again = api
        .post_ok(
            "/api/v1/supply-points",
            &point("bh-1", "boiler_house", &["hp-1"], &[]),
        )
        .await;
    assert_eq!(again["id"], bh1);
    assert_eq!(crate::harness::id_list(&again["feeds_points"]), [hp1]);
    // A link to a point that does not exist names the field.
    api.post(
        "/api/v1/supply-points",
        &point("bh-2", "boiler_house", &["hp-9"], &[]),
    )
    .await
    .problem(422);

    // Consumers.
    let c1 = create(
        &api,
        "/api/v1/consumers",
        json!({"tenant": "t1", "external_id": "c-1", "kind": "resident", "name": "Ivanova Anna",
            "phones": ["8 (495) 123-45-67", "+79161234567"], "email": "ivanova@example.ru",
            "preferred_channels": ["sms", "voice"], "account_number": "ACC-1",
            "life_support": true, "sites": ["a-1"]}),
    )
    .await;
    let c2 = create(
        &api,
        "/api/v1/consumers",
        json!({"tenant": "t1", "external_id": "c-2", "kind": "resident", "name": "Petrov Ivan",
            "phones": ["+74950000002"], "sites": ["a-2"]}),
    )
    .await;
    let c3 = create(
        &api,
        "/api/v1/consumers",
        json!({"tenant": "t1", "external_id": "school-5", "kind": "organization",
            "name": "School 5", "social_object": true, "sites": ["b-3"]}),
    )
    .await;
    let got = api.get_ok(&format!("/api/v1/consumers/{c1}")).await;
    assert_eq!(
        got["phones"],
        json!(["+74951234567", "+79161234567"]),
        "normalized to E.164"
    );
    assert_eq!(got["sites"], json!([a1]));
    assert_eq!(got["life_support"], true);
    assert_eq!(got["language"], "ru");
    assert_eq!(
        ids(&api.get_ok("/api/v1/consumers?life_support=true").await),
        [c1]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/consumers?social_object=true").await),
        [c3]
    );
    assert_eq!(
        ids(&api.get_ok(&format!("/api/v1/consumers?site={a2}")).await),
        [c2]
    );
    assert_eq!(ids(&api.get_ok("/api/v1/consumers?q=Petrov").await), [c2]);
    assert_eq!(
        ids(&api.get_ok("/api/v1/consumers?account_number=ACC-1").await),
        [c1]
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/consumers?phone=%2B74951234567").await),
        [c1]
    );
    let page = api.get_ok("/api/v1/consumers?limit=2").await;
    assert_eq!(ids(&page), [c1, c2]);
    assert_eq!(page["next_after"], c2);
    let last = api
        .get_ok(&format!("/api/v1/consumers?limit=2&after={c2}"))
        .await;
    assert_eq!(ids(&last), [c3]);
    assert!(last["next_after"].is_null(), "{last}");
    let again = api
        .post_ok(
            "/api/v1/consumers",
            &json!({"tenant": "t1", "external_id": "c-2", "kind": "resident",
                "name": "Petrov Ivan", "phones": ["+74950000003"], "sites": ["a-2", "a-1"]}),
        )
        .await;
    assert_eq!(again["id"], c2);
    assert_eq!(again["phones"], json!(["+74950000003"]));
    assert_eq!(api.get_all("/api/v1/consumers").await.len(), 3);

    // Sensors, also reachable by their external id.
    let s1 = create(
        &api,
        "/api/v1/sensors",
        json!({"tenant": "t1", "external_id": "hp-1.p_supply", "kind": "pressure", "unit": "bar",
            "supply_point": "hp-1"}),
    )
    .await;
    let s2 = create(
        &api,
        "/api/v1/sensors",
        json!({"tenant": "t1", "external_id": "bs-1.level", "kind": "level", "site": "bs-1"}),
    )
    .await;
    assert_eq!(api.get_ok("/api/v1/sensors/hp-1.p_supply").await["id"], s1);
    assert_eq!(
        api.get_ok(&format!("/api/v1/sensors/{s2}")).await["site_id"],
        base
    );
    assert_eq!(
        ids(&api.get_ok("/api/v1/sensors?kind=pressure").await),
        [s1]
    );
    assert_eq!(
        ids(&api
            .get_ok(&format!("/api/v1/sensors?supply_point={hp1}"))
            .await),
        [s1]
    );
    assert_eq!(
        ids(&api.get_ok(&format!("/api/v1/sensors?site={base}")).await),
        [s2]
    );
    let readings = api.get_ok("/api/v1/sensors/hp-1.p_supply/readings").await;
    assert_eq!(readings, json!([]));

    // Unknown ids: 404 problem documents, everywhere.
    for path in [
        "/api/v1/tenants/999999",
        "/api/v1/sites/999999",
        "/api/v1/supply-points/999999",
        "/api/v1/supply-points/999999/affected",
        "/api/v1/consumers/999999",
        "/api/v1/sensors/999999",
        "/api/v1/sensors/no-such-sensor",
        "/api/v1/outages/999999",
        "/api/v1/outages/999999/affected",
    ] {
        api.get(path).await.problem(404);
    }
    for path in [
        "/api/v1/sites/999999",
        "/api/v1/supply-points/999999",
        "/api/v1/consumers/999999",
        "/api/v1/sensors/999999",
        "/api/v1/tenants/999999",
    ] {
        api.delete(path).await.problem(404);
    }

    // Deletes.
    let res = api.delete(&format!("/api/v1/consumers/{c3}")).await;
    assert_eq!(res.status, 204, "{res}");
    api.get(&format!("/api/v1/consumers/{c3}"))
        .await
        .problem(404);
    let res = api.delete(&format!("/api/v1/sensors/{s2}")).await;
    assert_eq!(res.status, 204, "{res}");
    api.get(&format!("/api/v1/sensors/{s2}")).await.problem(404);
    let res = api.delete(&format!("/api/v1/supply-points/{hp2}")).await;
    assert_eq!(res.status, 204, "{res}");
    api.get(&format!("/api/v1/supply-points/{hp2}"))
        .await
        .problem(404);
    // A site goes with its sub-sites.
    let res = api.delete(&format!("/api/v1/sites/{b2}")).await;
    assert_eq!(res.status, 204, "{res}");
    api.get(&format!("/api/v1/sites/{bike}")).await.problem(404);
    api.delete(&format!("/api/v1/sites/{b2}"))
        .await
        .problem(404);
    // A tenant goes with everything it owns.
    let res = api.delete(&format!("/api/v1/tenants/{t2}")).await;
    assert_eq!(res.status, 204, "{res}");
    assert_eq!(ids(&api.get_ok("/api/v1/tenants").await), [t1]);
}
