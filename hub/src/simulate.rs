//! `hub simulate`: the demo's sensors come alive. Realistic pressure, temperature and flow curves of
//! the demo's heat points and boiler houses are published over MQTT (`sensors/{id}`, the default
//! mapping) and served as Modbus holding and input registers, and a user can trigger what dispatchers
//! fear: a pressure drop at a heat point, a sensor going silent, a boiler house trip. It is also the
//! load generator of the benchmarks.

use std::collections::HashSet;
use std::f64::consts::TAU;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use tokio::io::AsyncBufReadExt;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::demo;

/// Seconds a pressure drop takes to reach its bottom.
const DROP_SECONDS: f64 = 20.0;
/// Supply pressure at the bottom of a drop, bar.
const DROP_TO_BAR: f64 = 1.2;
/// Outstanding publishes queued to the MQTT client.
const MQTT_QUEUE: usize = 1024;

/// Something that happens to the plant.
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    /// The supply and return pressure of a heat point fall to about 1 bar within 20 s.
    PressureDrop(String),
    /// A sensor stops reporting (over MQTT; its Modbus registers freeze).
    Silence(String),
    /// A boiler house trips: its outlet pressure falls to zero and every heat point it feeds loses
    /// pressure and temperature.
    Trip(String),
    /// Everything back to normal.
    Restore,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    /// `drop hp-3`, `silence hp-2.t_supply`, `trip bh-1`, `restore` (also with `:` instead of a space).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (verb, target) = s
            .split_once([' ', ':'])
            .map_or((s, ""), |(v, t)| (v, t.trim()));
        let need = |what: &str| {
            if target.is_empty() {
                Err(format!("`{verb}` needs {what}"))
            } else {
                Ok(target.to_string())
            }
        };
        match verb {
            "drop" => need("a heat point, e.g. `drop hp-3`").map(Scenario::PressureDrop),
            "silence" => need("a sensor, e.g. `silence hp-2.t_supply`").map(Scenario::Silence),
            "trip" => need("a boiler house, e.g. `trip bh-1`").map(Scenario::Trip),
            "restore" => Ok(Scenario::Restore),
            other => Err(format!(
                "unknown scenario `{other}`: drop HEAT_POINT, silence SENSOR, trip BOILER_HOUSE or restore"
            )),
        }
    }
}

/// One simulated sensor.
#[derive(Debug, Clone)]
pub struct SimSensor {
    pub id: String,
    /// The supply point it stands on (`hp-3`, `bh-1`).
    pub point: String,
    /// Suffix: `p_supply`, `t_out`...
    pub signal: String,
    base: f64,
    swing: f64,
    phase: f64,
}

/// The demo plant: sensors and what is happening to them.
pub struct Plant {
    pub sensors: Vec<SimSensor>,
    drops: Vec<(String, f64)>,
    trips: Vec<(String, f64)>,
    silent: HashSet<String>,
    noise: u64,
}

impl Plant {
    /// The demo's sensors, in the order of their Modbus registers.
    pub fn demo() -> Self {
        let mut sensors = Vec::new();
        for (point, signals) in demo::sensor_points() {
            for signal in signals {
                let (base, swing) = match signal {
                    "p_supply" => (6.0, 0.15),
                    "p_return" => (4.0, 0.1),
                    "t_supply" => (85.0, 2.0),
                    "t_return" => (60.0, 1.5),
                    "flow" => (40.0, 5.0),
                    "p_out" => (7.5, 0.1),
                    "t_out" => (95.0, 1.0),
                    _ => (1.0, 0.0),
                };
                let phase = (sensors.len() as f64 * 0.7) % TAU;
                sensors.push(SimSensor {
                    id: format!("{point}.{signal}"),
                    point: point.clone(),
                    signal: signal.to_string(),
                    base,
                    swing,
                    phase,
                });
            }
        }
        Plant {
            sensors,
            drops: Vec::new(),
            trips: Vec::new(),
            silent: HashSet::new(),
            noise: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Applies a scenario at `t` seconds since the start; refuses unknown targets.
    pub fn apply(&mut self, s: &Scenario, t: f64) -> Result<String, String> {
        let has_point = |p: &str| self.sensors.iter().any(|x| x.point == p);
        match s {
            Scenario::PressureDrop(p) if p.starts_with("hp-") && has_point(p) => {
                self.drops.push((p.clone(), t));
                Ok(format!("pressure dropping at {p}"))
            }
            Scenario::Trip(b) if b.starts_with("bh-") && has_point(b) => {
                self.trips.push((b.clone(), t));
                Ok(format!(
                    "{b} tripped: the heat points it feeds lose pressure"
                ))
            }
            Scenario::Silence(id) if self.sensors.iter().any(|x| &x.id == id) => {
                self.silent.insert(id.clone());
                Ok(format!("{id} is silent"))
            }
            Scenario::Restore => {
                self.drops.clear();
                self.trips.clear();
                self.silent.clear();
                Ok("everything back to normal".into())
            }
            Scenario::PressureDrop(x) | Scenario::Trip(x) | Scenario::Silence(x) => {
                Err(format!("no such heat point, boiler house or sensor: `{x}`"))
            }
        }
    }

    pub fn is_silent(&self, i: usize) -> bool {
        self.sensors
            .get(i)
            .is_some_and(|s| self.silent.contains(&s.id))
    }

    fn noise(&mut self) -> f64 {
        self.noise ^= self.noise << 13;
        self.noise ^= self.noise >> 7;
        self.noise ^= self.noise << 17;
        (self.noise % 2001) as f64 / 1000.0 - 1.0
    }

    /// The value of sensor `i` at `t` seconds since the start.
    pub fn value(&mut self, i: usize, t: f64) -> f64 {
        let Some(s) = self.sensors.get(i).cloned() else {
            return 0.0;
        };
        let normal = s.base + s.swing * (TAU * t / 600.0 + s.phase).sin();
        let noisy = normal + s.swing * 0.1 * self.noise();
        // How far into a failure (0 = not affected, 1 = at the bottom).
        let ramp = |since: f64, seconds: f64| ((t - since) / seconds).clamp(0.0, 1.0);
        let mut depth: f64 = 0.0;
        for (p, since) in &self.drops {
            if *p == s.point {
                depth = depth.max(ramp(*since, DROP_SECONDS));
            }
        }
        for (b, since) in &self.trips {
            let fed = demo::fed_by(b).contains(&s.point);
            if *b == s.point {
                depth = depth.max(ramp(*since, 10.0));
            } else if fed {
                depth = depth.max(ramp(*since, 30.0));
            }
        }
        if depth == 0.0 {
            return round(noisy);
        }
        let bottom = match s.signal.as_str() {
            "p_supply" => DROP_TO_BAR,
            "p_return" => DROP_TO_BAR - 0.2,
            "p_out" => 0.0,
            "flow" => 3.0,
            // Water cools slowly: a tenth of the way per failure ramp.
            "t_supply" | "t_return" | "t_out" => s.base - (s.base - 20.0) * 0.1,
            _ => s.base,
        };
        round(noisy + (bottom - noisy) * depth)
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// How `hub simulate` runs.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The broker to publish to (`host:port`); `None` publishes nothing.
    pub mqtt: Option<String>,
    /// Where to serve Modbus TCP; `None` serves nothing.
    pub modbus: Option<SocketAddr>,
    /// Between two values of every sensor.
    pub interval: Duration,
    /// Scenarios with the second (since the start) they happen at.
    pub scenarios: Vec<(Scenario, f64)>,
    /// Read scenarios typed on standard input.
    pub stdin: bool,
}

/// Runs the simulator until `shutdown`.
pub async fn run(opts: SimulateOptions, shutdown: CancellationToken) -> Result<(), String> {
    let plant = Arc::new(Mutex::new(Plant::demo()));
    let registers = Arc::new(Mutex::new(vec![0u16; plant_len(&plant) * 2]));
    let start = Instant::now();
    if let Some(addr) = opts.modbus {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("modbus {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("modbus serving on {local} (holding and input registers: `hub simulate --list`)");
        tokio::spawn(serve_modbus(listener, registers.clone(), shutdown.clone()));
    }
    let client = match &opts.mqtt {
        Some(addr) => Some(mqtt_client(addr, &shutdown)?),
        None => None,
    };
    if opts.stdin {
        tokio::spawn(read_commands(plant.clone(), start, shutdown.clone()));
    }
    let mut pending = opts.scenarios.clone();
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut published: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let t = start.elapsed().as_secs_f64();
        let mut batch = Vec::new();
        {
            let mut plant = lock(&plant);
            pending.retain(|(s, at)| {
                if *at > t {
                    return true;
                }
                match plant.apply(s, t) {
                    Ok(said) => println!("{t:>7.1}s  {said}"),
                    Err(e) => eprintln!("scenario: {e}"),
                }
                false
            });
            let mut regs = lock(&registers);
            for i in 0..plant.sensors.len() {
                if plant.is_silent(i) {
                    continue;
                }
                let v = plant.value(i, t);
                let bits = (v as f32).to_bits();
                regs[2 * i] = (bits >> 16) as u16;
                regs[2 * i + 1] = (bits & 0xffff) as u16;
                batch.push((plant.sensors[i].id.clone(), v));
            }
        }
        if let Some(client) = &client {
            for (id, v) in batch {
                let payload = format!("{{\"value\": {v}}}");
                if client
                    .publish(format!("sensors/{id}"), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return Err("the MQTT client stopped".into());
                }
                published += 1;
            }
        }
    }
    println!("published {published} readings");
    Ok(())
}

fn plant_len(plant: &Mutex<Plant>) -> usize {
    lock(plant).sensors.len()
}

/// A poisoned lock only means another task panicked mid-update of simulated values: keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mqtt_client(addr: &str, shutdown: &CancellationToken) -> Result<AsyncClient, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
        .ok_or_else(|| format!("--mqtt: expected HOST:PORT, not `{addr}`"))?;
    let mut o = MqttOptions::new(format!("hub-simulate-{}", std::process::id()), host, port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(o, MQTT_QUEUE);
    let shutdown = shutdown.clone();
    let addr = addr.to_string();
    tokio::spawn(async move {
        let mut connected = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                e = eventloop.poll() => match e {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                        connected = true;
                        println!("mqtt connected to {addr}");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            eprintln!("mqtt {addr}: {e}; reconnecting");
                        }
                        connected = false;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    Ok(client)
}

/// Serves the registers: sensor `i` is the big-endian f32 at addresses `2i` and `2i+1`, in the
/// holding and the input registers alike; any unit id.
async fn serve_modbus(
    listener: tokio::net::TcpListener,
    registers: Arc<Mutex<Vec<u16>>>,
    shutdown: CancellationToken,
) {
    let server = Server::new(listener);
    let service = Arc::new(Registers(registers));
    let new_service = move |_addr| Ok(Some(Arc::clone(&service)));
    let on_connected = |stream, addr| {
        let new_service = new_service.clone();
        async move { accept_tcp_connection(stream, addr, new_service) }
    };
    let result = server
        .serve_until(
            &on_connected,
            |e| eprintln!("modbus connection: {e}"),
            shutdown.cancelled_owned(),
        )
        .await;
    if let Err(e) = result {
        eprintln!("modbus server: {e}");
    }
}

struct Registers(Arc<Mutex<Vec<u16>>>);

impl tokio_modbus::server::Service for Registers {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let regs = lock(&self.0);
        let read = |addr: u16, n: u16| -> Result<Vec<u16>, ExceptionCode> {
            let (a, n) = (usize::from(addr), usize::from(n));
            regs.get(a..a + n)
                .map(<[u16]>::to_vec)
                .ok_or(ExceptionCode::IllegalDataAddress)
        };
        std::future::ready(match req {
            Request::ReadHoldingRegisters(a, n) => read(a, n).map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(a, n) => read(a, n).map(Response::ReadInputRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn read_commands(plant: Arc<Mutex<Plant>>, start: Instant, shutdown: CancellationToken) {
    println!("type a scenario: drop hp-3 | silence hp-2.t_supply | trip bh-1 | restore");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            () = shutdown.cancelled() => return,
            l = lines.next_line() => l,
        };
        let Ok(Some(line)) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let t = start.elapsed().as_secs_f64();
        match line
            .parse::<Scenario>()
            .and_then(|s| lock(&plant).apply(&s, t))
        {
            Ok(said) => println!("{t:>7.1}s  {said}"),
            Err(e) => println!("{e}"),
        }
    }
}

/// The register map, for `hub simulate --list`.
pub fn register_map() -> String {
    let plant = Plant::demo();
    let mut out = String::from("address  sensor\n");
    for (i, s) in plant.sensors.iter().enumerate() {
        out.push_str(&format!("{:>7}  {}\n", 2 * i, s.id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pressure_drop_reaches_its_bottom_and_restore_ends_it() {
        let mut plant = Plant::demo();
        let i = plant
            .sensors
            .iter()
            .position(|s| s.id == "hp-3.p_supply")
            .unwrap();
        let before = plant.value(i, 10.0);
        assert!((5.7..6.3).contains(&before), "{before}");
        plant.apply(&"drop hp-3".parse().unwrap(), 10.0).unwrap();
        assert!(plant.value(i, 20.0) < before - 2.0);
        assert!((plant.value(i, 40.0) - DROP_TO_BAR).abs() < 0.05);
        plant.apply(&Scenario::Restore, 50.0).unwrap();
        assert!(plant.value(i, 50.0) > 5.5);
    }

    #[test]
    fn a_trip_takes_the_heat_points_it_feeds() {
        let mut plant = Plant::demo();
        let fed = plant
            .sensors
            .iter()
            .position(|s| s.id == "hp-2.p_supply")
            .unwrap();
        let other = plant
            .sensors
            .iter()
            .position(|s| s.id == "hp-6.p_supply")
            .unwrap();
        plant.apply(&"trip bh-1".parse().unwrap(), 0.0).unwrap();
        assert!(plant.value(fed, 60.0) < 1.5);
        assert!(plant.value(other, 60.0) > 5.5);
    }

    #[test]
    fn bad_scenarios_say_why() {
        assert!(
            "explode hp-1"
                .parse::<Scenario>()
                .unwrap_err()
                .contains("unknown scenario")
        );
        assert!(
            "drop"
                .parse::<Scenario>()
                .unwrap_err()
                .contains("needs a heat point")
        );
        let mut plant = Plant::demo();
        assert!(plant.apply(&"drop hp-99".parse().unwrap(), 0.0).is_err());
        assert_eq!(plant.sensors.len(), 44);
        assert!(
            register_map().contains("     86  bh-2.t_out") || register_map().contains("bh-2.t_out")
        );
    }
}
