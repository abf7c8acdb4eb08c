//! Graceful shutdown: SIGTERM stops the hub promptly with exit code 0, even with a client on the live
//! stream, and what was written before is there after a restart.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{TestEnv, password_of};

#[tokio::test]
async fn sigterm_exits_zero_and_data_survives_a_restart() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(false).await;
    let api = hub.login_as("admin").await;
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    api.post_ok(
        "/api/v1/sites",
        &json!({"tenant": "t1", "external_id": "rc-1", "kind": "residential_complex",
            "name": "Sunny"}),
    )
    .await;
    let outage = api
        .post_ok(
            "/api/v1/outages",
            &json!({"tenant": "t1", "external_id": "ds-7", "kind": "emergency",
                "utility": "heat", "sites": ["rc-1"], "reason": "main broke",
                "starts_at": "2020-02-02T02:00:00Z"}),
        )
        .await;
    let id = outage["id"].as_i64().expect("outage id");

    // A browser watching the live stream must not keep the hub from stopping.
    let stream = api
        .builder(reqwest::Method::GET, "/api/v1/events/stream")
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("open event stream");
    assert_eq!(stream.status(), 200);

    let mut stream = stream;
    let started = Instant::now();
    let status = hub.terminate().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // Stopping takes well under a second on an idle machine; the bound catches a hang (a stream or a
    // task that never ends) without failing when parallel tests starve the CPU and the disk.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?} to stop",
        started.elapsed()
    );
    // The stream was ended by the hub, not cut: what was sent arrives, then the end.
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.chunk()).await {
            Ok(Ok(Some(_keep_alive))) => continue,
            Ok(Ok(None)) => break,
            other => panic!("the event stream did not end cleanly: {other:?}"),
        }
    }

    let hub = env.start(false).await;
    assert!(
        !hub.banner.iter().any(|l| l.contains("created user")),
        "{:?}",
        hub.banner
    );
    let api = hub.login_as("admin").await;
    let got = api.get_ok(&format!("/api/v1/outages/{id}")).await;
    assert_eq!(got["external_id"], "ds-7");
    assert_eq!(got["status"], "active");
    assert_eq!(got["reason"], "main broke");
    // Still idempotent across the restart.
    let again = api
        .post_ok(
            "/api/v1/outages",
            &json!({"tenant": "t1", "external_id": "ds-7", "kind": "emergency",
                "utility": "heat", "sites": ["rc-1"], "reason": "main broke",
                "starts_at": "2020-02-02T02:00:00Z"}),
        )
        .await;
    assert_eq!(again["id"], id);
    assert_eq!(
        api.get_ok("/api/v1/sites?kind=residential_complex").await["items"][0]["external_id"],
        "rc-1"
    );
    let status = hub.terminate().await;
    assert!(status.success(), "{status}");
}
