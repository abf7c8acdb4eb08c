//! The Modbus connector against real Modbus TCP peers on 127.0.0.1: tokio-modbus servers started
//! in the test (`connectors::modbus::testing`) and pymodbus's server in a child process.

// Test helpers outside `#[test]` functions panic on failure too.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connectors::modbus::testing::{SimDevice, Tables, TestServer};
use connectors::modbus::{ModbusConfig, ModbusConnector, ModbusHandle};
use connectors::{Connector, ConnectorContext, ConnectorError, ConnectorStats, Ingest};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const ILLEGAL_ADDRESS: &str = "modbus exception 0x02 illegal data address";

struct Running {
    rx: mpsc::Receiver<Ingest>,
    stats: Arc<ConnectorStats>,
    handle: ModbusHandle,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ConnectorError>>,
}

/// What arrived on the ingest channel, without the connector's stats.
#[derive(Debug)]
enum Got {
    Readings(HashMap<String, f64>),
    Status {
        online: bool,
        sensors: Vec<String>,
        reason: String,
    },
}

fn config(addr: SocketAddr, extra: &str, registers: &str) -> ModbusConfig {
    let text = format!(
        "host = \"{}\"\nport = {}\n{extra}\n{registers}",
        addr.ip(),
        addr.port()
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn start(id: &str, config: ModbusConfig) -> Running {
    let (connector, handle) = ModbusConnector::new(config).unwrap();
    let (tx, rx) = mpsc::channel(connectors::INGEST_CAPACITY);
    let stats = Arc::new(ConnectorStats::new(id, "modbus"));
    let shutdown = CancellationToken::new();
    let ctx = ConnectorContext {
        id: id.to_string(),
        sink: tx,
        stats: Arc::clone(&stats),
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(connector.run(ctx));
    Running {
        rx,
        stats,
        handle,
        shutdown,
        task,
    }
}

impl Running {
    async fn next(&mut self, within: Duration) -> Got {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(Ingest::Readings {
                readings,
                ack: None,
                ..
            })) => Got::Readings(readings.into_iter().map(|r| (r.sensor, r.value)).collect()),
            Ok(Some(Ingest::Status {
                online,
                sensors,
                reason,
                ..
            })) => Got::Status {
                online,
                sensors,
                reason,
            },
            Ok(other) => panic!("unexpected ingest: {other:?}"),
            Err(_) => panic!("nothing from the connector within {within:?}"),
        }
    }

    async fn readings(&mut self, within: Duration) -> HashMap<String, f64> {
        let deadline = Instant::now() + within;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Got::Readings(r) => return r,
                Got::Status { .. } => {}
            }
        }
    }

    /// The next status; readings before it are skipped.
    async fn status(&mut self, within: Duration) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Got::Status {
                online,
                sensors,
                reason,
            } = self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                return (online, sensors, reason);
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the connector stops promptly on shutdown")
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn every_type_device() -> SimDevice {
    let mut t = Tables::default();
    let holding: [u16; 11] = [
        1234,   // 0 u16
        0xFFFB, // 1 i16 -5
        0x0001, 0x86A0, // 2-3 u32 100000
        0xEE90, 0xFFFE, // 4-5 i32 -70000, low word first
        0x41AC, 0x0000, // 6-7 f32 21.5
        0x0000, 0xAC41, // 8-9 f32 21.5, low word first, bytes swapped
        0x3412, // 10 u16 4660, bytes swapped
    ];
    t.holding = holding
        .iter()
        .enumerate()
        .map(|(a, w)| (a as u16, *w))
        .collect();
    t.input.insert(0, 655);
    t.input.insert(1, 0xFF06); // -250
    t.coils.insert(0, true);
    t.coils.insert(1, false);
    t.discrete.insert(3, true);
    SimDevice::new(t)
}

const EVERY_TYPE: &str = r#"
[[registers]]
sensor = "u16"
table = "holding"
address = 0
unit = "count"
[[registers]]
sensor = "i16"
table = "holding"
address = 1
type = "i16"
[[registers]]
sensor = "u32"
table = "holding"
address = 2
type = "u32"
[[registers]]
sensor = "i32_lw"
table = "holding"
address = 4
type = "i32"
word_order = "little"
[[registers]]
sensor = "f32"
table = "holding"
address = 6
type = "f32"
[[registers]]
sensor = "f32_lw_lb"
table = "holding"
address = 8
type = "f32"
word_order = "little"
byte_order = "little"
[[registers]]
sensor = "u16_lb"
table = "holding"
address = 10
byte_order = "little"
[[registers]]
sensor = "temp"
table = "input"
address = 0
scale = 0.1
offset = -40
unit = "degC"
[[registers]]
sensor = "dp"
table = "input"
address = 1
type = "i16"
scale = 0.01
[[registers]]
sensor = "pump_on"
table = "coil"
address = 0
[[registers]]
sensor = "valve_open"
table = "coil"
address = 1
[[registers]]
sensor = "door"
table = "discrete"
address = 3
"#;

#[tokio::test]
async fn readings_of_every_type_arrive_in_one_request_per_table() {
    let device = every_type_device();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), device.clone())
        .await
        .unwrap();
    let mut c = start(
        "every_type",
        config(server.addr(), "poll_interval_ms = 300", EVERY_TYPE),
    );

    let (online, sensors, _) = c.status(Duration::from_secs(2)).await;
    assert!(online);
    assert_eq!(sensors.len(), 12);
    let r = c.readings(Duration::from_secs(1)).await;
    // Four tables, each read in one request.
    assert_eq!(device.requests().len(), 4);
    let expected = [
        ("u16", 1234.0),
        ("i16", -5.0),
        ("u32", 100_000.0),
        ("i32_lw", -70_000.0),
        ("f32", 21.5),
        ("f32_lw_lb", 21.5),
        ("u16_lb", 4660.0),
        ("temp", 25.5),
        ("dp", -2.5),
        ("pump_on", 1.0),
        ("valve_open", 0.0),
        ("door", 1.0),
    ];
    assert_eq!(r.len(), expected.len(), "{r:?}");
    for (sensor, value) in expected {
        assert!(
            close(r[sensor], value),
            "{sensor}: {} != {value}",
            r[sensor]
        );
    }
    // The next poll sees a changed value.
    device.update(|t| {
        t.holding.insert(0, 7);
    });
    let r = c.readings(Duration::from_secs(1)).await;
    assert_eq!(r["u16"], 7.0);
    assert_eq!(c.stats.snapshot().received, 24);
    assert!(c.stats.is_connected());
    c.stop().await;
}

#[tokio::test]
async fn exception_responses_are_counted_per_register_and_neighbours_still_read() {
    let mut t = Tables::default();
    t.holding.insert(39, 1);
    t.holding.insert(41, 3);
    let device = SimDevice::new(t);
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), device.clone())
        .await
        .unwrap();
    let registers = r#"
        [[registers]]
        sensor = "a"
        table = "holding"
        address = 39
        [[registers]]
        sensor = "missing"
        table = "holding"
        address = 40
        [[registers]]
        sensor = "c"
        table = "holding"
        address = 41
        [[registers]]
        sensor = "no_inputs"
        table = "input"
        address = 7
    "#;
    let mut c = start(
        "exceptions",
        config(server.addr(), "poll_interval_ms = 100", registers),
    );
    let (online, _, _) = c.status(Duration::from_secs(2)).await;
    assert!(online, "a device answering with exceptions is online");
    for _ in 0..3 {
        let r = c.readings(Duration::from_secs(1)).await;
        assert_eq!(r, HashMap::from([("a".into(), 1.0), ("c".into(), 3.0)]));
    }
    let snap = c.stats.snapshot();
    let missing = snap.rejects["holding 40"][ILLEGAL_ADDRESS];
    assert!(missing >= 3, "{snap:?}");
    assert!(snap.rejects["input 7"][ILLEGAL_ADDRESS] >= 3, "{snap:?}");
    // Only the failing registers are rejected, and the device stayed online throughout.
    assert_eq!(snap.rejects.len(), 2, "{snap:?}");
    assert!(snap.connected);
    assert_eq!(snap.reconnects, 0);
    // After the first exception the coalesced read is split for good: one request per register.
    let before = device.requests().len();
    c.readings(Duration::from_secs(1)).await;
    assert_eq!(device.requests().len() - before, 4);
    c.stop().await;
}

#[tokio::test]
async fn a_stopped_device_goes_offline_and_comes_back_on_the_same_port() {
    let device = every_type_device();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), device.clone())
        .await
        .unwrap();
    let addr = server.addr();
    let mut c = start(
        "restart",
        config(
            addr,
            "poll_interval_ms = 100\nbackoff_max_ms = 400",
            EVERY_TYPE,
        ),
    );
    assert!(c.status(Duration::from_secs(2)).await.0);
    c.readings(Duration::from_secs(1)).await;

    server.stop().await;
    let (online, sensors, reason) = c.status(Duration::from_secs(2)).await;
    assert!(!online);
    assert_eq!(sensors.len(), 12);
    assert!(sensors.contains(&"door".to_string()));
    assert!(!reason.is_empty());
    let snap = c.stats.snapshot();
    assert!(!snap.connected);
    assert!(snap.last_error.is_some());
    // A write while the device is down fails at once instead of waiting for the backoff.
    let t0 = Instant::now();
    let e = c.handle.write("u16", 5.0).await.unwrap_err();
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        matches!(&e, ConnectorError::WriteFailed(m)
            if m.starts_with(&format!("modbus 127.0.0.1:{} unit 1: write holding 0: the device is offline (", addr.port()))),
        "{e:?}"
    );
    // Still down a while later: no flapping, nothing else was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.rx.try_recv().is_err(), "only one offline status");

    let _server = TestServer::start(addr, device.clone()).await.unwrap();
    let (online, sensors, _) = c.status(Duration::from_secs(2)).await;
    assert!(online);
    assert_eq!(sensors.len(), 12);
    let r = c.readings(Duration::from_secs(1)).await;
    assert_eq!(r["u16"], 1234.0);
    let snap = c.stats.snapshot();
    assert!(snap.connected);
    assert_eq!(snap.reconnects, 1);
    c.stop().await;
}

/// A listener that accepts connections and closes them at once, recording when: a device whose
/// every poll fails.
async fn slamming_listener() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&accepts);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            log.lock().unwrap().push(Instant::now());
            drop(stream);
        }
    });
    (addr, accepts, task)
}

#[tokio::test]
async fn reconnection_backs_off_exponentially_up_to_the_max() {
    let (addr, accepts, _listener) = slamming_listener().await;
    let mut c = start(
        "backoff",
        config(
            addr,
            "poll_interval_ms = 100\nbackoff_max_ms = 800",
            "[[registers]]\nsensor = \"x\"\ntable = \"holding\"\naddress = 0",
        ),
    );
    let (online, sensors, reason) = c.status(Duration::from_secs(2)).await;
    assert!(!online);
    assert_eq!(sensors, ["x"]);
    assert!(reason.starts_with("holding 0:"), "{reason}");
    // Attempts at 0, 100, 300, 700, 1500, 2300, 3100 ms after the first.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let times = accepts.lock().unwrap().clone();
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    let expected = [100, 200, 400, 800, 800, 800];
    assert!(
        (6..=8).contains(&times.len()),
        "{} attempts, gaps {gaps:?} ms",
        times.len()
    );
    for (gap, want) in gaps.iter().zip(expected) {
        assert!(
            *gap + 5 >= want && *gap <= want + 150,
            "gaps {gaps:?} ms, expected about {expected:?}"
        );
    }
    // One offline status for the whole outage.
    assert!(c.rx.try_recv().is_err());
    c.stop().await;
}

/// A device that accepts connections and never answers.
async fn silent_listener() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_silent_device_times_out_without_delaying_another() {
    let (silent_addr, _silent) = silent_listener().await;
    let device = every_type_device();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), device.clone())
        .await
        .unwrap();

    let mut stuck = start(
        "stuck",
        config(
            silent_addr,
            "poll_interval_ms = 100\ntimeout_ms = 300",
            EVERY_TYPE,
        ),
    );
    let mut fine = start(
        "fine",
        config(server.addr(), "poll_interval_ms = 100", EVERY_TYPE),
    );
    let t0 = Instant::now();
    let (online, _, reason) = stuck.status(Duration::from_secs(2)).await;
    assert!(!online);
    assert!(reason.ends_with("timed out after 300 ms"), "{reason}");
    while t0.elapsed() < Duration::from_millis(1500) {
        fine.readings(Duration::from_millis(500)).await;
    }
    // The healthy device was polled every 100 ms all along.
    let times: Vec<Instant> = device
        .requests()
        .iter()
        .map(|(t, _)| *t)
        .step_by(4)
        .collect();
    assert!(times.len() >= 12, "{} polls", times.len());
    let worst = times.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst < Duration::from_millis(190), "worst gap {worst:?}");
    assert!(fine.stats.is_connected());
    stuck.stop().await;
    fine.stop().await;
}

#[tokio::test]
async fn polls_keep_to_the_schedule_when_responses_are_slow() {
    let device = every_type_device();
    device.set_delay(Duration::from_millis(15));
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), device.clone())
        .await
        .unwrap();
    // Four requests of 15 ms each: 60 ms of every 100 ms poll spent waiting.
    let mut c = start(
        "schedule",
        config(server.addr(), "poll_interval_ms = 100", EVERY_TYPE),
    );
    c.readings(Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(1550)).await;
    let polls: Vec<Duration> = {
        let requests = device.requests();
        let first = requests[0].0;
        requests
            .iter()
            .step_by(4)
            .map(|(t, _)| *t - first)
            .collect()
    };
    let slot = Duration::from_millis(100);
    // On schedule: about 16 polls in 1.5 s (a loop that waits the interval after each 60 ms poll
    // makes 10), and each within a few ms of a slot.
    let within = polls.iter().filter(|t| **t <= slot * 15).count();
    assert!(within >= 14, "{within} polls in 1.5 s: {polls:?}");
    let mut off: Vec<Duration> = polls
        .iter()
        .map(|t| {
            let k = (t.as_secs_f64() / slot.as_secs_f64()).round() as u32;
            t.abs_diff(slot * k)
        })
        .collect();
    off.sort();
    let median = off[off.len() / 2];
    assert!(
        median < Duration::from_millis(10),
        "offsets from the slots {off:?}"
    );
    c.stop().await;
}

#[tokio::test]
async fn writes_land_in_the_device_between_polls() {
    let mut t = Tables::default();
    t.holding.extend([(0, 0), (1, 0), (2, 0)]);
    t.coils.insert(5, false);
    t.input.insert(0, 0);
    let device = SimDevice::new(t);
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), device.clone())
        .await
        .unwrap();
    let registers = r#"
        [[registers]]
        sensor = "setpoint"
        table = "holding"
        address = 0
        scale = 0.1
        [[registers]]
        sensor = "flow_limit"
        table = "holding"
        address = 1
        type = "f32"
        word_order = "little"
        [[registers]]
        sensor = "pump"
        table = "coil"
        address = 5
        [[registers]]
        sensor = "level"
        table = "input"
        address = 0
        [[registers]]
        sensor = "gone"
        table = "holding"
        address = 20
    "#;
    let mut c = start(
        "writes",
        config(server.addr(), "poll_interval_ms = 100", registers),
    );
    assert!(c.status(Duration::from_secs(2)).await.0);

    c.handle.write("setpoint", 21.5).await.unwrap();
    c.handle.write("flow_limit", -3.25).await.unwrap();
    c.handle.write("pump", 1.0).await.unwrap();
    let t = device.tables();
    assert_eq!(t.holding[&0], 215);
    // -3.25f32 = 0xC050_0000, low word first.
    assert_eq!((t.holding[&1], t.holding[&2]), (0x0000, 0xC050));
    assert!(t.coils[&5]);
    // The device's refusal comes back to the writer and is not an outage.
    let e = c.handle.write("gone", 1.0).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "modbus 127.0.0.1:{} unit 1: write holding 20: {ILLEGAL_ADDRESS}",
            server.addr().port()
        )
    );
    assert!(matches!(e, ConnectorError::WriteFailed(_)), "{e:?}");
    let e = c.handle.write("level", 1.0).await.unwrap_err();
    assert!(matches!(e, ConnectorError::InvalidWrite(_)), "{e:?}");
    // Polls read the written values back.
    let mut r = c.readings(Duration::from_secs(1)).await;
    while !r.contains_key("pump") || r["pump"] != 1.0 {
        r = c.readings(Duration::from_secs(1)).await;
    }
    assert!(close(r["setpoint"], 21.5), "{r:?}");
    assert_eq!(r["flow_limit"], -3.25);
    assert!(c.stats.is_connected());

    // Writes queue behind a slow transaction; the queue depth shows them waiting.
    device.set_delay(Duration::from_millis(150));
    let writers: Vec<_> = (0..5)
        .map(|i| {
            let h = c.handle.clone();
            tokio::spawn(async move { h.write("setpoint", f64::from(i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let depth = c.handle.queue_depth();
    assert!((3..=5).contains(&depth), "queue depth {depth}");
    for w in writers {
        w.await.unwrap().unwrap();
    }
    assert_eq!(c.handle.queue_depth(), 0);
    c.stop().await;
}

#[tokio::test]
async fn shutdown_is_prompt_in_a_long_backoff_and_in_a_hung_request() {
    // Nobody listens on this port.
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let one = "[[registers]]\nsensor = \"x\"\ntable = \"holding\"\naddress = 0";
    let mut down = start(
        "down",
        config(
            refused,
            "poll_interval_ms = 200\nbackoff_max_ms = 60000",
            one,
        ),
    );
    let (online, _, reason) = down.status(Duration::from_secs(2)).await;
    assert!(!online);
    assert!(
        reason.starts_with(&format!("connect {refused}:")),
        "{reason}"
    );
    // Attempts at 0, 200, 600, 1400 ms; at 1.6 s it waits for the one at 3 s.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let t0 = Instant::now();
    down.stop().await;
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );

    let (silent_addr, _silent) = silent_listener().await;
    let hung = start("hung", config(silent_addr, "timeout_ms = 60000", one));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t0 = Instant::now();
    hung.stop().await;
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
}

/// pymodbus's server (`tests/pymodbus_server.py`) in a child process.
struct Pymodbus {
    child: tokio::process::Child,
    stderr: Arc<Mutex<String>>,
}

const PYMODBUS_HINT: &str = "run scripts/test, which installs python3 and the Python packages \
     in scripts/requirements-test.txt (pymodbus)";

async fn start_pymodbus(port: u16) -> Pymodbus {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pymodbus_server.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start python3 ({e}): {PYMODBUS_HINT}"));
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let sink = Arc::clone(&stderr);
    tokio::spawn(async move {
        let mut buf = String::new();
        if let Err(e) = err.read_to_string(&mut buf).await {
            buf.push_str(&format!("(reading stderr failed: {e})"));
        }
        sink.lock().unwrap().push_str(&buf);
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
    if !matches!(&ready, Ok(Ok(Some(l))) if l == "ready") {
        // Give stderr a moment to be collected.
        tokio::time::sleep(Duration::from_millis(200)).await;
        panic!(
            "pymodbus_server.py did not start ({ready:?}): {PYMODBUS_HINT}\n{}",
            stderr.lock().unwrap()
        );
    }
    Pymodbus { child, stderr }
}

#[tokio::test]
async fn pymodbus_is_read_and_written_and_its_restart_is_noticed() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut py = start_pymodbus(port).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let registers = r#"
        [[registers]]
        sensor = "u16"
        table = "holding"
        address = 0
        [[registers]]
        sensor = "i16"
        table = "holding"
        address = 1
        type = "i16"
        [[registers]]
        sensor = "u32"
        table = "holding"
        address = 2
        type = "u32"
        [[registers]]
        sensor = "f32"
        table = "holding"
        address = 4
        type = "f32"
        [[registers]]
        sensor = "i32_lw"
        table = "holding"
        address = 6
        type = "i32"
        word_order = "little"
        [[registers]]
        sensor = "missing"
        table = "holding"
        address = 100
        [[registers]]
        sensor = "temp"
        table = "input"
        address = 0
        scale = 0.1
        offset = -40
        [[registers]]
        sensor = "c0"
        table = "coil"
        address = 0
        [[registers]]
        sensor = "c1"
        table = "coil"
        address = 1
        [[registers]]
        sensor = "c2"
        table = "coil"
        address = 2
        [[registers]]
        sensor = "d1"
        table = "discrete"
        address = 1
    "#;
    let mut c = start(
        "pymodbus",
        config(
            addr,
            "unit = 1\npoll_interval_ms = 200\nbackoff_max_ms = 400",
            registers,
        ),
    );
    let ctx = || format!("pymodbus stderr:\n{}", py.stderr.lock().unwrap());
    let (online, _, _) = c.status(Duration::from_secs(3)).await;
    assert!(online, "{}", ctx());
    let r = c.readings(Duration::from_secs(2)).await;
    let expected = [
        ("u16", 1234.0),
        ("i16", -5.0),
        ("u32", 100_000.0),
        ("f32", 21.5),
        ("i32_lw", -70_000.0),
        ("temp", 25.5),
        ("c0", 1.0),
        ("c1", 0.0),
        ("c2", 1.0),
        ("d1", 1.0),
    ];
    assert_eq!(r.len(), expected.len(), "{r:?}");
    for (sensor, value) in expected {
        assert!(
            close(r[sensor], value),
            "{sensor}: {} != {value}",
            r[sensor]
        );
    }
    let snap = c.stats.snapshot();
    assert!(
        snap.rejects["holding 100"][ILLEGAL_ADDRESS] >= 1,
        "{snap:?}"
    );

    c.handle.write("u16", 4321.0).await.unwrap();
    c.handle.write("c1", 1.0).await.unwrap();
    let r = c.readings(Duration::from_secs(2)).await;
    assert_eq!((r["u16"], r["c1"]), (4321.0, 1.0));

    py.child.kill().await.unwrap();
    let (online, sensors, _) = c.status(Duration::from_secs(3)).await;
    assert!(!online);
    assert_eq!(sensors.len(), 11);
    assert!(!c.stats.is_connected());

    let py = start_pymodbus(port).await;
    let (online, _, _) = c.status(Duration::from_secs(3)).await;
    assert!(online, "pymodbus stderr:\n{}", py.stderr.lock().unwrap());
    let r = c.readings(Duration::from_secs(2)).await;
    // A fresh process: the values it started with.
    assert_eq!(r["u16"], 1234.0);
    assert_eq!(c.stats.snapshot().reconnects, 1);
    c.stop().await;
}

/// The example in docs/connectors.md is a valid configuration and shows every key.
#[test]
fn the_documented_example_is_valid_and_complete() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/connectors.md"
    ))
    .unwrap();
    let doc = format!("\n{doc}");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Modbus TCP"))
        .expect("a `## Modbus TCP` section");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a toml example");
    let mut file: toml::Table = toml::from_str(example).unwrap();
    let connectors = file.remove("connectors").unwrap();
    let (name, connector) = connectors.as_table().unwrap().iter().next().unwrap();
    let mut connector = connector.as_table().unwrap().clone();
    assert_eq!(
        connector.remove("type").unwrap().as_str(),
        Some("modbus"),
        "{name}"
    );
    let mut keys: Vec<String> = connector.keys().cloned().collect();
    keys.sort();
    let register_keys: Vec<String> = connector["registers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_table().unwrap().keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let config: ModbusConfig = connector.try_into().unwrap();
    config.validate().unwrap();
    ModbusConnector::new(config).unwrap();
    assert_eq!(
        keys,
        [
            "backoff_max_ms",
            "host",
            "poll_interval_ms",
            "port",
            "registers",
            "timeout_ms",
            "unit"
        ]
    );
    assert_eq!(
        register_keys,
        [
            "address",
            "byte_order",
            "offset",
            "scale",
            "sensor",
            "table",
            "type",
            "unit",
            "word_order"
        ]
    );
    // Every key in the example is described in the section's tables.
    for key in keys.iter().chain(&register_keys) {
        assert!(
            section.contains(&format!("| `{key}`")),
            "{key} is not described"
        );
    }
}
