//! `hub simulate` makes the demo alive: it publishes every demo sensor to the hub's embedded broker,
//! and a scenario (a pressure drop at a heat point) shows in the readings.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{HUB, TestEnv, password_of};

#[tokio::test]
async fn the_simulator_feeds_every_demo_sensor_and_plays_a_pressure_drop() {
    let env = TestEnv::new().await;
    env.add_users(&[("admin", "admin")]).await;
    let hub = env.start(true).await;
    let admin = hub.login("admin", &password_of("admin")).await;
    let mut sim = tokio::process::Command::new(HUB)
        .args([
            "simulate",
            "--no-modbus",
            "--interval-ms",
            "200",
            "--scenario",
            "drop hp-3@0",
            "--mqtt",
        ])
        .arg(hub.mqtt_addr())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("hub simulate");
    let start = Instant::now();
    loop {
        let sensors = admin.get_all("/api/v1/sensors").await;
        let fed = sensors
            .iter()
            .filter(|s| s["last_value"].is_number())
            .count();
        let hp3 = sensors
            .iter()
            .find(|s| s["external_id"] == "hp-3.p_supply")
            .and_then(|s| s["last_value"].as_f64());
        let hp1 = sensors
            .iter()
            .find(|s| s["external_id"] == "hp-1.p_supply")
            .and_then(|s| s["last_value"].as_f64());
        if fed == 44 && hp3.is_some_and(|v| v < 5.0) {
            assert!(
                hp1.is_some_and(|v| (5.5..6.5).contains(&v)),
                "hp-1 is normal: {hp1:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{fed} of 44 sensors fed, hp-3.p_supply = {hp3:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.kill().await.expect("stop the simulator");
}
