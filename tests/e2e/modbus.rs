//! Modbus TCP through the hub: a real device simulator not written here (pymodbus's TCP server) is
//! polled by a `type = "modbus"` connector of the running hub; the readings are in the API, the device
//! switched off makes its sensors go offline at once, switched on again they come back. A rule's
//! register write, and `hub simulate`'s Modbus registers, are read the same way.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::{Api, TestEnv, password_of};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// pymodbus's server on `port`, ready to answer.
async fn device(port: u16) -> Child {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../connectors/tests/pymodbus_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 (scripts/test installs pymodbus)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    assert!(
        matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
        "pymodbus did not start ({ready:?}): run scripts/test, it installs pymodbus"
    );
    child
}

async fn sensor(api: &Api, id: &str) -> Value {
    api.get_ok(&format!("/api/v1/sensors/{id}")).await
}

async fn wait(api: &Api, id: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let s = sensor(api, id).await;
        if check(&s) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{id}: {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_modbus_device_is_polled_goes_offline_when_switched_off_and_comes_back() {
    let port = free_port();
    let mut pymodbus = device(port).await;
    let env = TestEnv::new().await;
    env.add_users(&[("admin", "admin")]).await;
    env.add_config(&format!(
        r#"[connectors.boiler]
type = "modbus"
host = "127.0.0.1"
port = {port}
poll_interval_ms = 200
timeout_ms = 500
backoff_max_ms = 1000

[[connectors.boiler.registers]]
sensor = "bh.count"
table = "holding"
address = 0

[[connectors.boiler.registers]]
sensor = "bh.t_out"
table = "holding"
address = 4
type = "f32"

[[connectors.boiler.registers]]
sensor = "bh.t_air"
table = "input"
address = 0
scale = 0.1
offset = -40
"#
    ));
    let hub = env.start(false).await;
    let admin = hub.login("admin", &password_of("admin")).await;
    admin
        .post_ok(
            "/api/v1/tenants",
            &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
        )
        .await;
    for (id, kind) in [
        ("bh.count", "other"),
        ("bh.t_out", "temperature"),
        ("bh.t_air", "temperature"),
    ] {
        admin
            .post_ok(
                "/api/v1/sensors",
                &json!({"tenant": "t1", "external_id": id, "kind": kind}),
            )
            .await;
    }
    wait(&admin, "bh.count", "1234 from holding 0", |s| {
        s["last_value"] == 1234.0
    })
    .await;
    wait(&admin, "bh.t_out", "21.5 as f32", |s| {
        s["last_value"] == 21.5
    })
    .await;
    wait(&admin, "bh.t_air", "655 * 0.1 - 40", |s| {
        s["last_value"]
            .as_f64()
            .is_some_and(|v| (v - 25.5).abs() < 1e-9)
    })
    .await;
    wait(&admin, "bh.t_out", "online", |s| s["online"] == true).await;

    // The device is switched off: its sensors go offline without waiting for their silence interval.
    pymodbus.kill().await.expect("kill pymodbus");
    wait(&admin, "bh.t_out", "offline", |s| s["online"] == false).await;
    let report = admin.get_ok("/api/v1/connectors").await;
    let boiler = report["connectors"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "boiler").cloned())
        .expect("boiler connector");
    assert_eq!(boiler["connected"], false, "{report}");

    // And on again, on the same port.
    let _pymodbus = device(port).await;
    wait(&admin, "bh.t_out", "online again", |s| s["online"] == true).await;
    let report = admin.get_ok("/api/v1/connectors").await;
    assert!(report.to_string().contains("\"reconnects\":1"), "{report}");
}
