//! "Who is affected": a small hand-made network whose answers are known, and the cache behind it
//! following every change made through the API.

use serde_json::{Value, json};

use crate::harness::{Api, id_list, ids, spawn_hub};

/// Ids by external id, for the assertions.
struct Net {
    rc1: i64,
    rc2: i64,
    rc3: i64,
    bh1: i64,
    bh2: i64,
    hp1: i64,
    hp2: i64,
    c: Vec<i64>,
}

async fn id_of(api: &Api, path: &str, body: Value) -> i64 {
    api.post_ok(path, &body).await["id"].as_i64().expect("id")
}

/// bh-1 -> hp-1 -> complex rc-1 (two buildings and a school); bh-1 -> hp-2 -> complex rc-2;
/// bh-2 -> complex rc-3. Consumers c1..c9 (index 0..8), c7 lives in two apartments, c9 nowhere.
async fn build(api: &Api) -> Net {
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    let mut sites = std::collections::HashMap::new();
    for (ext, parent, kind) in [
        ("rc-1", None, "residential_complex"),
        ("b-1", Some("rc-1"), "building"),
        ("a-11", Some("b-1"), "apartment"),
        ("a-12", Some("b-1"), "apartment"),
        ("b-2", Some("rc-1"), "building"),
        ("a-21", Some("b-2"), "apartment"),
        ("sch-1", Some("rc-1"), "school"),
        ("rc-2", None, "residential_complex"),
        ("b-3", Some("rc-2"), "building"),
        ("a-31", Some("b-3"), "apartment"),
        ("a-32", Some("b-3"), "apartment"),
        ("rc-3", None, "residential_complex"),
        ("b-4", Some("rc-3"), "building"),
        ("a-41", Some("b-4"), "apartment"),
    ] {
        let id = id_of(
            api,
            "/api/v1/sites",
            json!({"tenant": "t1", "external_id": ext, "parent": parent, "kind": kind,
                "name": ext}),
        )
        .await;
        sites.insert(ext, id);
    }
    let point = |ext: &str, kind: &str, points: &[&str], sites: &[&str]| {
        json!({"tenant": "t1", "external_id": ext, "kind": kind, "name": ext,
            "feeds_points": points, "feeds_sites": sites})
    };
    let hp1 = id_of(
        api,
        "/api/v1/supply-points",
        point("hp-1", "heat_point", &[], &["rc-1"]),
    )
    .await;
    let hp2 = id_of(
        api,
        "/api/v1/supply-points",
        point("hp-2", "heat_point", &[], &["rc-2"]),
    )
    .await;
    let bh1 = id_of(
        api,
        "/api/v1/supply-points",
        point("bh-1", "boiler_house", &["hp-1", "hp-2"], &[]),
    )
    .await;
    let bh2 = id_of(
        api,
        "/api/v1/supply-points",
        point("bh-2", "boiler_house", &[], &["rc-3"]),
    )
    .await;

    let mut c = Vec::new();
    for (i, (sites, life, social)) in [
        (&["a-11"][..], false, false),
        (&["a-12"], true, false),
        (&["a-21"], false, false),
        (&["sch-1"], false, true),
        (&["a-31"], false, false),
        (&["a-32"], false, false),
        (&["a-31", "a-11"], false, false),
        (&["a-41"], true, false),
        (&[], false, false),
    ]
    .into_iter()
    .enumerate()
    {
        let kind = if social { "organization" } else { "resident" };
        c.push(
            id_of(
                api,
                "/api/v1/consumers",
                json!({"tenant": "t1", "external_id": format!("c{}", i + 1), "kind": kind,
                    "name": format!("Consumer {}", i + 1), "phones": [format!("+7495000000{i}")],
                    "life_support": life, "social_object": social, "sites": sites}),
            )
            .await,
        );
    }
    Net {
        rc1: sites["rc-1"],
        rc2: sites["rc-2"],
        rc3: sites["rc-3"],
        bh1,
        bh2,
        hp1,
        hp2,
        c,
    }
}

async fn affected(api: &Api, point: i64) -> Value {
    api.get_ok(&format!("/api/v1/supply-points/{point}/affected"))
        .await
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

#[tokio::test]
async fn affected_consumers_of_a_small_network() {
    let (_env, _hub, api) = spawn_hub().await;
    let n = build(&api).await;
    let c = &n.c;

    let a = affected(&api, n.bh1).await;
    assert_eq!(a["consumers_count"], 7, "{a}");
    assert_eq!(a["sites_count"], 11, "{a}");
    assert_eq!(
        id_list(&a["supply_points"]),
        sorted(vec![n.bh1, n.hp1, n.hp2])
    );
    assert_eq!(id_list(&a["life_support"]), [c[1]]);
    assert_eq!(id_list(&a["social_objects"]), [c[3]]);
    assert_eq!(id_list(&a["complexes"]), [n.rc1, n.rc2]);
    assert_eq!(ids(&a["consumers"]), c[..7].to_vec());
    assert!(a["consumers"]["next_after"].is_null(), "{a}");
    let first = &a["consumers"]["items"][0];
    assert_eq!(first["external_id"], "c1");
    assert_eq!(first["phones"], json!(["+74950000000"]));

    // One branch.
    let a = affected(&api, n.hp1).await;
    assert_eq!(a["consumers_count"], 5, "{a}");
    assert_eq!(ids(&a["consumers"]), [c[0], c[1], c[2], c[3], c[6]]);
    assert_eq!(id_list(&a["complexes"]), [n.rc1]);
    assert_eq!(id_list(&a["supply_points"]), [n.hp1]);
    let a = affected(&api, n.hp2).await;
    assert_eq!(ids(&a["consumers"]), [c[4], c[5], c[6]]);
    assert_eq!(id_list(&a["life_support"]), Vec::<i64>::new());
    let a = affected(&api, n.bh2).await;
    assert_eq!(a["consumers_count"], 1, "{a}");
    assert_eq!(id_list(&a["life_support"]), [c[7]]);
    assert_eq!(id_list(&a["complexes"]), [n.rc3]);

    // The consumers come in pages.
    let path = format!("/api/v1/supply-points/{}/affected?limit=3", n.bh1);
    let p1 = api.get_ok(&path).await;
    assert_eq!(ids(&p1["consumers"]), c[..3].to_vec());
    assert_eq!(p1["consumers"]["next_after"], c[2]);
    assert_eq!(
        p1["consumers_count"], 7,
        "the count is of all, not of the page"
    );
    let p2 = api.get_ok(&format!("{path}&after={}", c[2])).await;
    assert_eq!(ids(&p2["consumers"]), c[3..6].to_vec());
    let p3 = api.get_ok(&format!("{path}&after={}", c[5])).await;
    assert_eq!(ids(&p3["consumers"]), [c[6]]);
    assert!(p3["consumers"]["next_after"].is_null(), "{p3}");

    // Every change through the API shows at once.
    let c10 = id_of(
        &api,
        "/api/v1/consumers",
        json!({"tenant": "t1", "external_id": "c10", "kind": "resident", "name": "New",
            "life_support": true, "sites": ["a-32"]}),
    )
    .await;
    let a = affected(&api, n.bh1).await;
    assert_eq!(a["consumers_count"], 8, "a new consumer counts: {a}");
    assert_eq!(id_list(&a["life_support"]), [c[1], c10]);
    assert_eq!(affected(&api, n.hp2).await["consumers_count"], 4);

    // c8 moves from rc-3 (bh-2) to rc-1 (bh-1).
    api.post_ok(
        "/api/v1/consumers",
        &json!({"tenant": "t1", "external_id": "c8", "kind": "resident", "name": "Consumer 8",
            "life_support": true, "sites": ["a-21"]}),
    )
    .await;
    assert_eq!(affected(&api, n.bh1).await["consumers_count"], 9);
    assert_eq!(affected(&api, n.bh2).await["consumers_count"], 0);

    let res = api.delete(&format!("/api/v1/consumers/{}", c[0])).await;
    assert_eq!(res.status, 204, "{res}");
    assert_eq!(affected(&api, n.bh1).await["consumers_count"], 8);

    // hp-2 now feeds rc-3 too.
    api.post_ok(
        "/api/v1/supply-points",
        &json!({"tenant": "t1", "external_id": "hp-2", "kind": "heat_point", "name": "hp-2",
            "feeds_sites": ["rc-2", "rc-3"]}),
    )
    .await;
    let a = affected(&api, n.bh1).await;
    assert_eq!(id_list(&a["complexes"]), [n.rc1, n.rc2, n.rc3]);
    assert_eq!(a["sites_count"], 14, "{a}");

    // A deleted site takes its links: school 4 is no longer reached.
    let sch = api.get_ok("/api/v1/sites?q=sch-1").await;
    let res = api.delete(&format!("/api/v1/sites/{}", ids(&sch)[0])).await;
    assert_eq!(res.status, 204, "{res}");
    let a = affected(&api, n.bh1).await;
    assert_eq!(id_list(&a["social_objects"]), Vec::<i64>::new(), "{a}");
    assert_eq!(a["consumers_count"], 7, "{a}");
}
