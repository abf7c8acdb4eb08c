//! `hub serve --demo`: the demo data set and one user per role, printed at start; loading it again
//! duplicates nothing.

use crate::harness::{Api, Hub, TestEnv};

/// `demo user NAME password P` lines of the banner.
fn demo_users(hub: &Hub) -> Vec<(String, String)> {
    hub.banner
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                ["demo", "user", name, "password", password] => {
                    Some(((*name).to_owned(), (*password).to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

/// What the demo data looks like through the API.
async fn census(api: &Api) -> (usize, usize, usize, i64) {
    let complexes = api
        .get_all("/api/v1/sites?kind=residential_complex")
        .await
        .len();
    let points = api.get_all("/api/v1/supply-points").await;
    let bh1 = points
        .iter()
        .find(|p| p["external_id"] == "bh-1")
        .unwrap_or_else(|| panic!("no supply point bh-1 among {}", points.len()));
    assert_eq!(bh1["kind"], "boiler_house");
    let affected = api
        .get_ok(&format!(
            "/api/v1/supply-points/{}/affected?limit=1",
            bh1["id"]
        ))
        .await;
    let count = affected["consumers_count"].as_i64().expect("count");
    let tenants = api.get_all("/api/v1/tenants").await.len();
    (complexes, points.len(), tenants, count)
}

#[tokio::test]
async fn demo_data_and_users_load_once() {
    let env = TestEnv::new().await;
    let hub = env.start(true).await;
    let users = demo_users(&hub);
    assert!(
        !users.is_empty(),
        "`hub serve --demo` prints `demo user NAME password P` lines; got {:?}",
        hub.banner
    );
    // One user per role; the admin is the one that sees everything.
    let (admin_name, admin_password) = users
        .iter()
        .find(|(n, _)| n == "admin")
        .cloned()
        .unwrap_or_else(|| panic!("no demo user `admin` in {users:?}"));
    // Every printed user can log in.
    for (name, password) in &users {
        hub.login(name, password).await;
    }
    let api = hub.login(&admin_name, &admin_password).await;

    let first = census(&api).await;
    assert_eq!(first.0, 8, "8 residential complexes");
    assert!(
        first.3 > 1000,
        "bh-1 feeds more than 1000 consumers: {first:?}"
    );
    let boilers = api.get_ok("/api/v1/supply-points?kind=boiler_house").await;
    assert!(
        boilers["items"]
            .as_array()
            .is_some_and(|b| b.iter().any(|p| p["external_id"] == "bh-1")),
        "{boilers}"
    );
    drop(api);
    drop(hub);

    // Again on the same database: the same data, not twice.
    let hub = env.start(true).await;
    // The users exist already: if their passwords are printed again, those are the ones that work.
    let again = demo_users(&hub);
    let password = again
        .iter()
        .find(|(n, _)| *n == admin_name)
        .map_or(admin_password, |(_, p)| p.clone());
    let api = hub.login(&admin_name, &password).await;
    assert_eq!(census(&api).await, first, "a second --demo changes nothing");
    let logins = api.get_ok("/api/v1/users").await;
    assert_eq!(
        logins.as_array().map(Vec::len),
        Some(users.len()),
        "no duplicated users: {logins}"
    );
}
