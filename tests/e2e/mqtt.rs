//! MQTT with real peers: sensors publish with `mosquitto_pub` to the hub's embedded broker and to an
//! external mosquitto; the hub's API then shows the readings, the junk it rejected, sensors going
//! offline and back, and outage records. A broker that disappears and a hub that restarts lose nothing.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::harness::{Api, TestEnv, password_of, spawn_hub};

/// A tenant and sensors `s1`, `s2` (offline after 300 s) and `fast` (offline after 1 s).
async fn sensors(api: &Api) {
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    for (id, after) in [("s1", 300), ("s2", 300), ("fast", 1)] {
        api.post_ok(
            "/api/v1/sensors",
            &json!({"tenant": "t1", "external_id": id, "kind": "pressure", "unit": "bar", "offline_after_s": after}),
        )
        .await;
    }
}

/// `mosquitto_pub` to `addr` (`host:port`).
pub async fn publish(addr: &str, topic: &str, payload: &str, qos: u8) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-t",
            topic,
            "-m",
            payload,
            "-q",
            &qos.to_string(),
        ])
        .output()
        .await
        .expect("mosquitto_pub (Debian package mosquitto-clients; scripts/test installs it)");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn sensor(api: &Api, id: &str) -> Value {
    let list = api.get_ok("/api/v1/sensors?limit=100").await;
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|s| s["external_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("sensor {id} in {list}"))
}

/// Polls until `check` holds for the sensor, panicking with the last state after `within`.
async fn wait_sensor(
    api: &Api,
    id: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = sensor(api, id).await;
        if check(&s) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "sensor {id} after {within:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connectors(api: &Api) -> Value {
    api.get_ok("/api/v1/connectors").await
}

fn history_values(v: &Value) -> Vec<f64> {
    v["items"]
        .as_array()
        .or_else(|| v.as_array())
        .expect("readings")
        .iter()
        .map(|r| r["value"].as_f64().expect("value"))
        .collect()
}

#[tokio::test]
async fn a_reading_published_to_the_embedded_broker_is_in_the_api_within_a_second() {
    let (_env, hub, admin) = spawn_hub().await;
    sensors(&admin).await;
    let mqtt = hub.mqtt_addr();

    publish(&mqtt, "sensors/s1", "4.25", 1).await;
    // Stored, and the sensor counted as reporting (its status is written right after the readings).
    let took = wait_sensor(&admin, "s1", Duration::from_secs(5), |s| {
        s["last_value"] == 4.25 && s["online"] == true
    })
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // JSON with the device's own time.
    publish(
        &mqtt,
        "sensors/s2",
        r#"{"value": 3.5, "at": "2026-11-23T07:00:00Z"}"#,
        0,
    )
    .await;
    wait_sensor(&admin, "s2", Duration::from_secs(5), |s| {
        s["last_value"] == 3.5
    })
    .await;
    assert_eq!(
        sensor(&admin, "s2").await["last_at"],
        "2026-11-23T07:00:00Z"
    );

    // Junk: counted per topic with a reason, never fatal.
    publish(&mqtt, "sensors/s1", "abc", 1).await;
    publish(&mqtt, "sensors/s1", r#"{"value": "x"}"#, 1).await;
    publish(&mqtt, "sensors/nope", "1.0", 1).await;
    publish(&mqtt, "sensors/s1", &"9".repeat(70_000), 1).await;
    publish(&mqtt, "outages/t1", "{not json", 1).await;
    publish(
        &mqtt,
        "outages/t1",
        r#"{"tenant": "t1", "kind": "sometimes"}"#,
        1,
    )
    .await;
    // The hub still takes good readings after all that.
    publish(&mqtt, "sensors/s1", "4.5", 1).await;
    wait_sensor(&admin, "s1", Duration::from_secs(5), |s| {
        s["last_value"] == 4.5
    })
    .await;

    let report = connectors(&admin).await;
    let c = &report["connectors"][0];
    assert_eq!(c["id"], "mqtt", "{report}");
    assert_eq!(c["connected"], true);
    let rejects = &c["rejects"];
    let reasons = |key: &str| -> String { rejects[key].to_string() };
    assert!(
        reasons("sensors/s1").contains("not a number: `abc`"),
        "{rejects}"
    );
    assert!(
        reasons("sensors/s1").contains("too large: 70000 bytes"),
        "{rejects}"
    );
    assert!(reasons("nope").contains("unknown sensor"), "{rejects}");
    assert!(reasons("outages/t1").contains("not JSON"), "{rejects}");
    assert!(
        reasons("outages/t1").contains("outage record: kind"),
        "{rejects}"
    );
    assert_eq!(c["rejected"], 6, "{report}");
}

#[tokio::test]
async fn a_sensor_that_falls_silent_goes_offline_and_comes_back() {
    let (_env, hub, admin) = spawn_hub().await;
    sensors(&admin).await;
    let mqtt = hub.mqtt_addr();
    publish(&mqtt, "sensors/fast", "1", 0).await;
    wait_sensor(&admin, "fast", Duration::from_secs(5), |s| {
        s["online"] == true
    })
    .await;
    wait_sensor(&admin, "fast", Duration::from_secs(5), |s| {
        s["online"] == false
    })
    .await;
    publish(&mqtt, "sensors/fast", "2", 0).await;
    wait_sensor(&admin, "fast", Duration::from_secs(5), |s| {
        s["online"] == true && s["last_value"] == 2.0
    })
    .await;
    let log = hub.log();
    assert!(
        log.contains("sensor status") && log.contains("silent"),
        "{log}"
    );
}

#[tokio::test]
async fn an_outage_record_published_over_mqtt_becomes_an_outage() {
    let (_env, hub, admin) = spawn_hub().await;
    sensors(&admin).await;
    admin
        .post_ok(
            "/api/v1/sites",
            &json!({"tenant": "t1", "external_id": "rc-1", "kind": "residential_complex", "name": "RC 1"}),
        )
        .await;
    let record = json!({
        "tenant": "t1", "external_id": "disp-42", "kind": "emergency", "utility": "heat",
        "sites": ["rc-1"], "reason": "pipe burst", "starts_at": "2026-11-23T06:00:00Z",
        "expected_end": "2026-11-23T18:00:00Z"
    });
    publish(&hub.mqtt_addr(), "outages/t1", &record.to_string(), 1).await;
    let start = Instant::now();
    loop {
        let list = admin.get_ok("/api/v1/outages").await;
        if let Some(o) = list["items"].as_array().and_then(|a| a.first()) {
            assert_eq!(o["external_id"], "disp-42");
            assert_eq!(o["reason"], "pipe burst");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no outage: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = admin.get_ok("/api/v1/audit").await;
    assert!(audit.to_string().contains("connector:mqtt"), "{audit}");
}

/// mosquitto with config file `conf`, once it accepts connections on `port`; killed on drop.
async fn spawn_mosquitto(conf: &std::path::Path, port: u16) -> Child {
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto (Debian package mosquitto; scripts/test installs it)");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "mosquitto did not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

/// A mosquitto broker with a persistent store, on a free port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Mosquitto {
    async fn start(dir: &std::path::Path, port: u16) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n",
                dir.display()
            ),
        )
        .expect("write mosquitto.conf");
        let child = spawn_mosquitto(&conf, port).await;
        Mosquitto {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM (mosquitto saves its store) and wait.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    async fn restart(self) -> Mosquitto {
        let (dir, port) = (self.dir.clone(), self.port);
        self.stop().await;
        Mosquitto::start(&dir, port).await
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test]
async fn an_external_broker_keeps_what_arrives_while_the_hub_is_down_and_may_come_and_go() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    let broker = Mosquitto::start(env.dir.path(), free_port()).await;
    env.add_config(&format!(
        "[connectors.plant]\ntype = \"mqtt\"\nurl = \"mqtt://{}\"\nclient_id = \"hub-e2e\"\nreconnect_max_s = 1\n\n[[connectors.plant.topics]]\ntopic = \"plant/{{sensor}}/value\"\nformat = \"json\"\nvalue = \"v\"\nscale = 0.01\n",
        broker.addr()
    ));
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    sensors(&admin).await;
    publish(&broker.addr(), "plant/s1/value", r#"{"v": 425}"#, 1).await;
    wait_sensor(&admin, "s1", Duration::from_secs(5), |s| {
        s["last_value"] == 4.25
    })
    .await;

    // The hub stops; the broker keeps its persistent session's QoS 1 messages until it is back.
    hub.terminate().await;
    for i in 1..=20 {
        publish(
            &broker.addr(),
            "plant/s2/value",
            &format!(r#"{{"v": {i}00}}"#),
            1,
        )
        .await;
    }
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    wait_sensor(&admin, "s2", Duration::from_secs(10), |s| {
        s["last_value"] == 20.0
    })
    .await;
    let history = admin.get_ok("/api/v1/sensors/s2/readings").await;
    let values = history_values(&history);
    for i in 1..=20 {
        assert!(
            values.contains(&f64::from(i)),
            "reading {i} lost: {values:?}"
        );
    }

    // The broker goes away and returns: the hub reconnects by itself.
    let broker = broker.restart().await;
    let start = Instant::now();
    loop {
        publish(&broker.addr(), "plant/s1/value", r#"{"v": 777}"#, 1).await;
        if sensor(&admin, "s1").await["last_value"] == 7.77 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no reconnect: {}",
            connectors(&admin).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = connectors(&admin).await;
    let plant = &report["connectors"][0];
    assert_eq!(plant["id"], "plant");
    assert_eq!(plant["connected"], true);
    assert!(plant["reconnects"].as_u64().unwrap() >= 1, "{report}");
    broker.stop().await;
}

/// Runs a command, panicking with its output if it fails.
async fn run(cmd: &str, args: &[&str], dir: &std::path::Path) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`.
async fn certificates(dir: &std::path::Path) {
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=hub-test-ca",
        ],
        dir,
    )
    .await;
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    )
    .await;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    )
    .await;
}

#[tokio::test]
async fn an_external_broker_over_tls_with_a_password() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    let dir = env.dir.path().join("broker");
    std::fs::create_dir_all(&dir).expect("broker dir");
    certificates(&dir).await;
    run(
        "mosquitto_passwd",
        &["-b", "-c", "passwd", "hub", "s3cret-Pass"],
        &dir,
    )
    .await;
    let port = free_port();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            "user root\nlistener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\nallow_anonymous false\npassword_file {d}/passwd\n",
            d = dir.display()
        ),
    )
    .expect("mosquitto.conf");
    let _broker = spawn_mosquitto(&dir.join("mosquitto.conf"), port).await;
    env.add_config(&format!(
        "[connectors.scada]\ntype = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{port}\"\nclient_id = \"hub-tls\"\nusername = \"hub\"\npassword = \"s3cret-Pass\"\nca_file = \"{}/ca.crt\"\n\n[connectors.intruder]\ntype = \"mqtt\"\nurl = \"mqtts://127.0.0.1:{port}\"\nclient_id = \"hub-bad\"\nusername = \"hub\"\npassword = \"wrong-Pass\"\nca_file = \"{}/ca.crt\"\nreconnect_max_s = 1\n",
        dir.display(),
        dir.display()
    ));
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    sensors(&admin).await;
    let ca = dir.join("ca.crt");
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(&ca)
        .args([
            "-u",
            "hub",
            "-P",
            "s3cret-Pass",
            "-t",
            "sensors/s1",
            "-m",
            "6.5",
            "-q",
            "1",
        ])
        .output()
        .await
        .expect("mosquitto_pub");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_sensor(&admin, "s1", Duration::from_secs(10), |s| {
        s["last_value"] == 6.5
    })
    .await;

    let report = connectors(&admin).await;
    let by_id = |id: &str| {
        report["connectors"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == id).cloned())
            .unwrap_or_else(|| panic!("{id} in {report}"))
    };
    assert_eq!(by_id("scada")["connected"], true, "{report}");
    let intruder = by_id("intruder");
    assert_eq!(intruder["connected"], false, "{report}");
    assert!(
        intruder["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{report}"
    );
    let log = hub.log();
    assert!(
        !log.contains("s3cret-Pass") && !log.contains("wrong-Pass"),
        "a password in the log:\n{log}"
    );
}
