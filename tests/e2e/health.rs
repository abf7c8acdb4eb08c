//! Health checks, metrics and the OpenAPI document: reachable without logging in.

use crate::harness::TestEnv;

#[tokio::test]
async fn health_metrics_and_openapi_need_no_login() {
    let env = TestEnv::new().await;
    let hub = env.start(false).await;
    let anon = hub.anonymous();

    let res = anon.get("/healthz").await;
    assert_eq!(res.status, 200, "{res}");
    let res = anon.get("/readyz").await;
    assert_eq!(res.status, 200, "{res}");

    let res = anon.get("/metrics").await;
    assert_eq!(res.status, 200, "{res}");
    assert!(res.content_type().starts_with("text/plain"), "{res}");
    assert!(res.text.contains("hub_http_responses_total"), "{res}");
    assert!(
        res.text
            .lines()
            .any(|l| l.starts_with("hub_http_responses_total") && l.contains("2xx")),
        "the health checks above are counted: {res}"
    );

    let doc = anon.get_ok("/api/v1/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/outages",
        "/api/v1/outages/{id}",
        "/api/v1/supply-points/{id}/affected",
        "/api/v1/sites",
        "/api/v1/consumers",
        "/api/v1/auth/login",
        "/api/v1/import/{kind}",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // The web UI is served at the root.
    let res = anon.get("/").await;
    assert_eq!(res.status, 200, "{res}");
    assert!(res.content_type().starts_with("text/html"), "{res}");

    // An unknown endpoint is a problem document, not an empty page.
    anon.get("/api/v1/nothing-here").await.problem(404);
}
