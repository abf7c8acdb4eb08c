//! Logging in and out: bearer tokens, the session cookie, and the admin made on first start.

use serde_json::json;

use crate::harness::{TestEnv, password_of};

/// Every list endpoint (and the others a client reads first).
const PROTECTED: &[&str] = &[
    "/api/v1/auth/me",
    "/api/v1/tenants",
    "/api/v1/sites",
    "/api/v1/supply-points",
    "/api/v1/consumers",
    "/api/v1/sensors",
    "/api/v1/outages",
    "/api/v1/users",
    "/api/v1/audit",
    "/api/v1/events/stream",
];

#[tokio::test]
async fn first_start_creates_an_admin_who_can_log_in() {
    let env = TestEnv::new().await;
    let hub = env.start(false).await;
    let line = hub
        .banner
        .iter()
        .find(|l| l.contains("created user `admin` with password "))
        .unwrap_or_else(|| panic!("no first-start admin line in {:?}", hub.banner));
    let password = line
        .split("with password ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("password after `with password`")
        .to_owned();
    assert!(password.len() >= 10, "{line}");

    let admin = hub.login("admin", &password).await;
    let me = admin.get_ok("/api/v1/auth/me").await;
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");

    // The second start finds a user and creates none.
    drop(hub);
    let hub = env.start(false).await;
    assert!(
        !hub.banner.iter().any(|l| l.contains("created user")),
        "{:?}",
        hub.banner
    );
    hub.login("admin", &password).await;
}

#[tokio::test]
async fn tokens_cookies_and_logout() {
    let env = TestEnv::new().await;
    env.add_user("olga", "operator", &password_of("olga")).await;
    let hub = env.start(false).await;
    assert!(
        !hub.banner.iter().any(|l| l.contains("created user")),
        "no first-start admin when a user exists: {:?}",
        hub.banner
    );
    let anon = hub.anonymous();

    for path in PROTECTED {
        let p = anon.get(path).await.problem(401);
        assert!(p["detail"].is_string(), "{path}: {p}");
    }
    let garbage = anon.with_authorization("Bearer 0123456789abcdef");
    garbage.get("/api/v1/sites").await.problem(401);
    let basic = anon.with_authorization("Basic b2xnYTpvbGdh");
    basic.get("/api/v1/sites").await.problem(401);

    // Wrong password and unknown user look the same.
    for (user, password) in [
        ("olga", "wrong-password-123"),
        ("nobody", "whatever-123456"),
    ] {
        let res = anon
            .post(
                "/api/v1/auth/login",
                &json!({"username": user, "password": password}),
            )
            .await;
        res.problem(401);
        assert!(res.cookie("hub_session").is_none(), "{res}");
    }

    let res = anon
        .post(
            "/api/v1/auth/login",
            &json!({"username": "olga", "password": password_of("olga")}),
        )
        .await;
    assert_eq!(res.status, 200, "{res}");
    let body = res.json();
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(body["user"]["username"], "olga");
    assert_eq!(body["user"]["role"], "operator");
    assert!(body["expires_at"].is_string(), "{body}");
    let cookie = res.cookie("hub_session").expect("session cookie");
    assert_eq!(cookie, token, "the cookie carries the same session");
    let set_cookie = res
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");

    // Bearer.
    let bearer = anon.with_authorization(&format!("Bearer {token}"));
    assert_eq!(bearer.get_ok("/api/v1/auth/me").await["username"], "olga");
    let sites = bearer.get_ok("/api/v1/sites").await;
    assert!(sites["items"].is_array(), "{sites}");

    // Cookie, as the browser sends it (with other cookies around).
    let browser = anon.with_cookie(&format!("theme=dark; hub_session={cookie}"));
    assert_eq!(browser.get_ok("/api/v1/auth/me").await["username"], "olga");

    // A second session is independent of the first.
    let second = hub.login_as("olga").await;
    assert_ne!(second.token(), token);

    // Logout ends the session it was called with, whichever way it was sent, and clears the cookie.
    let res = browser.post_raw("/api/v1/auth/logout", None, "").await;
    assert_eq!(res.status, 204, "{res}");
    assert_eq!(res.cookie("hub_session").as_deref(), Some(""), "{res}");
    browser.get("/api/v1/auth/me").await.problem(401);
    bearer.get("/api/v1/auth/me").await.problem(401);
    second.get_ok("/api/v1/auth/me").await;
    let res = second.post_raw("/api/v1/auth/logout", None, "").await;
    assert_eq!(res.status, 204, "{res}");
    second.get("/api/v1/auth/me").await.problem(401);
    second
        .post_raw("/api/v1/auth/logout", None, "")
        .await
        .problem(401);

    // A long-lived API token works like a session.
    let again = hub.login_as("olga").await;
    let t = again
        .post_ok("/api/v1/auth/tokens", &json!({"days": 30}))
        .await;
    let api = anon.with_authorization(&format!("Bearer {}", t["token"].as_str().expect("token")));
    assert_eq!(api.get_ok("/api/v1/auth/me").await["username"], "olga");
}
