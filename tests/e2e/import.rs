//! Imports, as an operator runs them: `hub import KIND FILE` on the hub's database, and the API
//! upload. A bad row stops the whole file unless `--skip-invalid`; re-importing changes nothing.

use serde_json::json;

use crate::harness::{Api, TestEnv, spawn_hub};

const SITES: &str = "\
tenant,external_id,parent,kind,name,address
t1,rc-1,,residential_complex,Sunny,Lenina 1
t1,b-1,rc-1,building,Building 1,Lenina 1 b1
t1,a-1,b-1,apartment,Apt 1,
t1,a-2,b-1,apartment,Apt 2,
t1,a-3,b-1,apartment,Apt 3,
";

const GOOD_CONSUMERS: &str = "\
tenant,external_id,kind,name,phones,email,life_support,social_object,sites
t1,c-1,resident,Ivanova Anna,+74951234567;8 916 123-45-67,anna@example.ru,yes,no,a-1
t1,c-2,resident,Petrov Ivan,+74950000002,,no,no,a-2
t1,c-3,resident,Sidorova Olga,+74950000003,,no,no,a-3;a-1
t1,c-4,organization,School 5,+74950000004,school5@example.ru,no,yes,b-1
";

/// Lines 3, 4, 5, 6, 7 and 9 are bad; lines 2 and 8 are good.
const BAD_CONSUMERS: &str = "\
tenant,external_id,kind,name,phones,life_support,sites
t1,c-1,resident,Ivanova Anna,+74951234567,no,a-1
t1,c-2,resident,Petrov Ivan,12345,no,a-2
t1,c-3,martian,Sidorov,,no,a-1
t1,c-4,resident,Kuznetsov,,maybe,a-1
t1,c-5,resident,Orlov,,no,a-9
t1,c-1,resident,Again,,no,a-1
t1,c-6,resident,Volkova,+74950000006,no,a-3
t1,c-7,resident
";

const NETWORK_JSON: &str = r#"[
  {"tenant": "t1", "external_id": "hp-1", "kind": "heat_point", "name": "HP 1", "feeds_sites": ["rc-1"]},
  {"tenant": "t1", "external_id": "bh-1", "kind": "boiler_house", "name": "BH 1",
   "feeds_points": ["hp-1"], "colour": "red"},
  {"tenant": "t1", "external_id": "bh-2", "kind": "volcano", "name": "BH 2"}
]
"#;

async fn consumers_count(api: &Api) -> usize {
    api.get_all("/api/v1/consumers").await.len()
}

/// A hub with tenant `t1` and its sites imported from the command line.
async fn with_sites() -> (TestEnv, crate::harness::Hub, Api) {
    let (env, hub, api) = spawn_hub().await;
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    std::fs::write(env.path("sites.csv"), SITES).expect("write sites.csv");
    let out = env.cli(&["import", "sites", "sites.csv"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("sites.csv: 5 rows, 5 imported, 0 bad"),
        "{out}"
    );
    (env, hub, api)
}

#[tokio::test]
async fn cli_import_reports_every_bad_row_and_changes_nothing() {
    let (env, _hub, api) = with_sites().await;
    std::fs::write(env.path("bad.csv"), BAD_CONSUMERS).expect("write bad.csv");

    let out = env.cli(&["import", "consumers", "bad.csv"]).await;
    assert!(!out.status.success(), "{out}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("bad.csv:"))
        .collect();
    let expected = [
        "bad.csv:3: phones[0]: ",
        "bad.csv:4: kind: ",
        "bad.csv:5: life_support: ",
        "bad.csv:6: sites[0]: ",
        "bad.csv:7: external_id: ",
        "bad.csv:9: row: ",
    ];
    assert_eq!(errors.len(), expected.len(), "{out}");
    for (line, prefix) in errors.iter().zip(expected) {
        assert!(
            line.starts_with(prefix),
            "{line:?} should start with {prefix:?}\n{out}"
        );
        assert!(line.len() > prefix.len(), "a reason follows: {line:?}");
    }
    assert!(out.stderr.contains("nothing was imported"), "{out}");
    assert!(out.stdout.contains("8 rows, 0 imported, 6 bad"), "{out}");
    assert_eq!(consumers_count(&api).await, 0, "a bad file changes nothing");

    // --skip-invalid imports the two good rows and still lists the bad ones.
    let out = env
        .cli(&["import", "consumers", "bad.csv", "--skip-invalid"])
        .await;
    assert!(out.stdout.contains("8 rows, 2 imported, 6 bad"), "{out}");
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.starts_with("bad.csv:"))
            .count(),
        6,
        "{out}"
    );
    let imported = api.get_all("/api/v1/consumers").await;
    let names: Vec<&str> = imported
        .iter()
        .filter_map(|c| c["external_id"].as_str())
        .collect();
    assert_eq!(names, ["c-1", "c-6"]);

    // A JSON file: errors carry the line where the bad object starts.
    std::fs::write(env.path("network.json"), NETWORK_JSON).expect("write network.json");
    let out = env.cli(&["import", "network", "network.json"]).await;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("network.json:3: ") && out.stderr.contains("colour"),
        "{out}"
    );
    assert!(out.stderr.contains("network.json:5: kind: "), "{out}");
    let points = api.get_ok("/api/v1/supply-points").await;
    assert_eq!(points["items"], json!([]), "{points}");
    let fixed = NETWORK_JSON
        .replace(", \"colour\": \"red\"", "")
        .replace("volcano", "boiler_house");
    std::fs::write(env.path("network.json"), fixed).expect("write network.json");
    let out = env.cli(&["import", "network", "network.json"]).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("3 rows, 3 imported, 0 bad"), "{out}");

    // A missing file, an unknown kind: clear errors, non-zero exit.
    let out = env.cli(&["import", "consumers", "missing.csv"]).await;
    assert!(!out.status.success(), "{out}");
    assert!(out.stderr.contains("missing.csv"), "{out}");
    let out = env.cli(&["import", "bananas", "bad.csv"]).await;
    assert!(!out.status.success(), "{out}");
}

#[tokio::test]
async fn cli_reimport_is_idempotent() {
    let (env, _hub, api) = with_sites().await;
    std::fs::write(env.path("consumers.csv"), GOOD_CONSUMERS).expect("write consumers.csv");
    let mut snapshots = Vec::new();
    for _ in 0..2 {
        let out = env.cli(&["import", "consumers", "consumers.csv"]).await;
        assert!(out.status.success(), "{out}");
        assert!(
            out.stdout
                .contains("consumers.csv: 4 rows, 4 imported, 0 bad"),
            "{out}"
        );
        assert_eq!(
            out.stderr
                .lines()
                .filter(|l| l.contains("consumers.csv:"))
                .count(),
            0
        );
        snapshots.push(api.get_all("/api/v1/consumers").await);
        let sites = api.get_all("/api/v1/sites").await;
        assert_eq!(sites.len(), 5);
    }
    assert_eq!(snapshots[0].len(), 4);
    assert_eq!(
        snapshots[0], snapshots[1],
        "the second import changed nothing"
    );
    let anna = &snapshots[0][0];
    assert_eq!(anna["phones"], json!(["+74951234567", "+79161234567"]));
    assert_eq!(anna["life_support"], true);
    assert_eq!(anna["sites"].as_array().map(Vec::len), Some(1));
    let school = &snapshots[0][3];
    assert_eq!(school["social_object"], true);
    assert_eq!(school["kind"], "organization");

    // The running hub sees what another process imported into its database: `affected` answers
    // with the network and consumers that `hub import` wrote.
    let network = NETWORK_JSON
        .replace(", \"colour\": \"red\"", "")
        .replace("volcano", "boiler_house");
    std::fs::write(env.path("network.json"), network).expect("write network.json");
    let out = env.cli(&["import", "network", "network.json"]).await;
    assert!(out.status.success(), "{out}");
    let points = api.get_all("/api/v1/supply-points").await;
    let bh1 = points
        .iter()
        .find(|p| p["external_id"] == "bh-1")
        .and_then(|p| p["id"].as_i64())
        .expect("bh-1 imported");
    let a = api
        .get_ok(&format!("/api/v1/supply-points/{bh1}/affected"))
        .await;
    assert_eq!(a["consumers_count"], 4, "{a}");
    assert_eq!(a["life_support"].as_array().map(Vec::len), Some(1), "{a}");
    assert_eq!(a["social_objects"].as_array().map(Vec::len), Some(1), "{a}");
    std::fs::write(
        env.path("more.csv"),
        "tenant,external_id,kind,name,sites\nt1,c-5,resident,Orlov,a-2\n",
    )
    .expect("write more.csv");
    let out = env.cli(&["import", "consumers", "more.csv"]).await;
    assert!(out.status.success(), "{out}");
    let a = api
        .get_ok(&format!("/api/v1/supply-points/{bh1}/affected"))
        .await;
    assert_eq!(
        a["consumers_count"], 5,
        "a consumer imported after the last answer: {a}"
    );

    // The audit log names the command line as the actor.
    let audit = api.get_ok("/api/v1/audit?actor=cli").await;
    let imports = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "import")
        .count();
    assert_eq!(
        imports, 5,
        "sites, consumers twice, network, more consumers: {audit}"
    );
}

#[tokio::test]
async fn api_import_lists_bad_lines() {
    let (_env, hub, admin) = spawn_hub().await;
    admin
        .post_ok(
            "/api/v1/tenants",
            &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
        )
        .await;
    let report = admin
        .post_raw("/api/v1/import/sites", Some("text/csv"), SITES)
        .await
        .ok();
    assert_eq!(report["rows"], 5);
    assert_eq!(report["imported"], 5);
    assert_eq!(report["errors"], json!([]));

    let res = admin
        .post_raw(
            "/api/v1/import/consumers",
            Some("text/csv; charset=utf-8"),
            BAD_CONSUMERS,
        )
        .await;
    let p = res.problem(422);
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "line 3: phones[0]",
            "line 4: kind",
            "line 5: life_support",
            "line 6: sites[0]",
            "line 7: external_id",
            "line 9: row",
        ],
        "{p}"
    );
    assert_eq!(consumers_count(&admin).await, 0);

    let report = admin
        .post_raw(
            "/api/v1/import/consumers?skip_invalid=true",
            Some("text/csv"),
            BAD_CONSUMERS,
        )
        .await
        .ok();
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(6),
        "{report}"
    );
    assert_eq!(report["errors"][0]["line"], 3, "{report}");
    assert_eq!(consumers_count(&admin).await, 2);

    // JSON through the API, and the network it builds answers `affected` at once.
    let fixed = NETWORK_JSON
        .replace(", \"colour\": \"red\"", "")
        .replace("volcano", "boiler_house");
    let report = admin
        .post_raw("/api/v1/import/network", Some("application/json"), &fixed)
        .await
        .ok();
    assert_eq!(report["imported"], 3, "{report}");
    let points = admin
        .get_ok("/api/v1/supply-points?kind=boiler_house")
        .await;
    let bh1 = points["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["external_id"] == "bh-1")
        .and_then(|p| p["id"].as_i64())
        .expect("bh-1");
    let a = admin
        .get_ok(&format!("/api/v1/supply-points/{bh1}/affected"))
        .await;
    assert_eq!(a["consumers_count"], 2, "{a}");

    // Only roles that manage the model import.
    let res = hub
        .anonymous()
        .post_raw("/api/v1/import/sites", Some("text/csv"), SITES)
        .await;
    res.problem(401);
}
