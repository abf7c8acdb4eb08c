//! The Modbus TCP connector: polls one device's registers on a fixed schedule, decodes them into
//! [`Reading`]s for the hub's ingest channel, reports the device offline and back, and carries out
//! register writes from a [`ModbusHandle`] in the same task, between polls.
//!
//! One connector is one device, one task and one TCP connection; many devices run as many
//! connectors, so a slow or dead device only ever delays itself.

mod config;
mod decode;
mod plan;
pub mod testing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};

use crate::{Connector, ConnectorContext, ConnectorError, ConnectorStats, Ingest, Reading};

pub use config::{
    MAX_DURATION_MS, ModbusConfig, Order, RegisterConfig, Table, ValueType, default_backoff_max_ms,
    default_offset, default_order, default_poll_interval_ms, default_port, default_scale,
    default_timeout_ms, default_unit,
};
pub use decode::{decode, encode};
pub use plan::{Batch, plan};

/// Most registers one read request may ask for (Modbus application protocol, function 03/04).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Most bits one read request may ask for (function 01/02).
pub const MAX_READ_BITS: u16 = 2000;
/// Writes waiting for the device's task. A full queue makes `ModbusHandle::write` wait: a device
/// only takes one transaction at a time, so queueing more only adds latency.
pub const WRITE_QUEUE_CAPACITY: usize = 16;

/// A Modbus TCP device polled by one task. Build it with [`ModbusConnector::new`] and run it with
/// [`Connector::run`].
#[derive(Debug)]
pub struct ModbusConnector {
    device: Arc<DeviceInfo>,
    writes: mpsc::Receiver<WriteRequest>,
}

/// Writes registers of a running [`ModbusConnector`]. Cheap to clone; every clone feeds the same
/// bounded queue, drained by the connector's task between polls.
#[derive(Debug, Clone)]
pub struct ModbusHandle {
    device: Arc<DeviceInfo>,
    writes: mpsc::Sender<WriteRequest>,
}

/// What both halves know about the device.
#[derive(Debug)]
struct DeviceInfo {
    config: ModbusConfig,
    /// `modbus 10.0.0.5:502 unit 3`: how errors name the device.
    label: String,
    /// Sensor -> index into `config.registers`.
    by_sensor: HashMap<String, usize>,
}

#[derive(Debug)]
struct WriteRequest {
    op: WriteOp,
    /// `holding 40`.
    key: String,
    reply: oneshot::Sender<Result<(), ConnectorError>>,
}

#[derive(Debug, Clone, PartialEq)]
enum WriteOp {
    Registers { address: u16, words: Vec<u16> },
    Coil { address: u16, value: bool },
}

impl ModbusConnector {
    /// Validates `config` and splits the connector into the part that runs and the handle that
    /// writes.
    pub fn new(config: ModbusConfig) -> Result<(ModbusConnector, ModbusHandle), ConnectorError> {
        config.validate()?;
        let by_sensor = config
            .registers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.sensor.clone(), i))
            .collect();
        let device = Arc::new(DeviceInfo {
            label: format!(
                "modbus {}:{} unit {}",
                config.host, config.port, config.unit
            ),
            config,
            by_sensor,
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        Ok((
            ModbusConnector {
                device: Arc::clone(&device),
                writes: rx,
            },
            ModbusHandle { device, writes: tx },
        ))
    }

    pub fn config(&self) -> &ModbusConfig {
        &self.device.config
    }
}

impl ModbusHandle {
    /// Writes `value` (in the sensor's unit) to the holding register(s) or coil of `sensor`:
    /// scale and offset are inverted, the result rounded for integer types. Waits until the
    /// device has answered. [`ConnectorError::InvalidWrite`] when the value or the sensor is
    /// wrong, [`ConnectorError::WriteFailed`] when the device is offline, times out or answers
    /// with an exception.
    pub async fn write(&self, sensor: &str, value: f64) -> Result<(), ConnectorError> {
        let (op, key) = self.prepare(sensor, value)?;
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ConnectorError::WriteFailed(format!(
                "{} {key}: the connector is not running",
                self.device.label
            ))
        };
        self.writes
            .send(WriteRequest {
                op,
                key: key.clone(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Writes waiting for the connector's task (at most [`WRITE_QUEUE_CAPACITY`]).
    pub fn queue_depth(&self) -> usize {
        self.writes.max_capacity() - self.writes.capacity()
    }

    fn prepare(&self, sensor: &str, value: f64) -> Result<(WriteOp, String), ConnectorError> {
        let d = &self.device;
        let invalid =
            |why: String| ConnectorError::InvalidWrite(format!("{} {sensor}: {why}", d.label));
        let r = d
            .by_sensor
            .get(sensor)
            .and_then(|&i| d.config.registers.get(i))
            .ok_or_else(|| invalid("no register is configured for this sensor".to_string()))?;
        if !r.table.is_writable() {
            return Err(invalid(format!(
                "{} is read-only (only holding registers and coils can be written)",
                r.key()
            )));
        }
        let raw = r.unscaled(value);
        let op = match r.word_type() {
            Some(ty) => WriteOp::Registers {
                address: r.address,
                words: encode(raw, ty, r.word_order, r.byte_order)
                    .map_err(|e| invalid(format!("{value} is {raw} raw: {e}")))?,
            },
            None => {
                let bit = raw.round();
                if !(bit == 0.0 || bit == 1.0) || (raw - bit).abs() > 1e-6 {
                    return Err(invalid(format!(
                        "{value} is {raw} raw; a coil takes 0 or 1"
                    )));
                }
                WriteOp::Coil {
                    address: r.address,
                    value: bit == 1.0,
                }
            }
        };
        Ok((op, r.key()))
    }
}

/// Wait before reconnection attempt number `failures` (1-based): the poll interval, doubled after
/// every failure, capped at `max`.
pub fn backoff(interval: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    interval.saturating_mul(1 << doublings).min(max)
}

/// Where in the interval this connector's polls fall: a fixed offset derived from its id (FNV-1a,
/// stable across runs and builds), so that devices configured together do not all poll at once.
pub fn stagger(id: &str, interval: Duration) -> Duration {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let period = interval.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
    Duration::from_micros(hash % period)
}

/// `modbus exception 0x02 illegal data address`: how rejects and errors name an exception.
pub fn exception_reason(code: ExceptionCode) -> String {
    let name = match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address",
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        ExceptionCode::Custom(_) => "unknown",
    };
    format!("modbus exception 0x{:02x} {name}", u8::from(code))
}

/// Why the connection is unusable: the device is then offline until a reconnection succeeds.
#[derive(Debug)]
struct LinkDown(String);

/// What a read request returned.
enum Data {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// How the loop stops early: shutdown, or nobody to hand readings to.
enum Stop {
    Shutdown,
    SinkClosed,
}

/// The poll task's state.
struct Device {
    info: Arc<DeviceInfo>,
    ctx: ConnectorContext,
    plan: Vec<Batch>,
    sensors: Vec<String>,
    interval: Duration,
    timeout: Duration,
    backoff_max: Duration,
    conn: Option<Context>,
    /// What the hub was last told; `None` before the first attempt.
    online: Option<bool>,
    /// Consecutive failed attempts (0 while the device answers).
    failures: u32,
    /// While the device is down: when to try again. Polls wait until then.
    retry_at: Option<Instant>,
    /// Why the last attempt failed, for writes refused while the device is down.
    down_reason: String,
}

impl Connector for ModbusConnector {
    async fn run(self, ctx: ConnectorContext) -> Result<(), ConnectorError> {
        let ModbusConnector {
            device: info,
            mut writes,
        } = self;
        let mut dev = Device::new(info, ctx.clone());
        let start = Instant::now() + stagger(&ctx.id, dev.interval);
        let mut ticker = tokio::time::interval_at(start, dev.interval);
        // Skip keeps polls on start + n x interval: a late poll is dropped, not shifted.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let outcome = tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => return Ok(()),
                () = sleep_until(dev.retry_at), if dev.retry_at.is_some() => {
                    dev.retry_at = None;
                    let r = run_step(&ctx, dev.poll()).await;
                    if dev.retry_at.is_none() {
                        // Back up: the schedule resumes at its next slot, without a catch-up poll.
                        ticker.reset_at(next_slot(start, dev.interval, Instant::now()));
                    }
                    r
                }
                _ = ticker.tick(), if dev.retry_at.is_none() => {
                    match run_step(&ctx, dev.poll()).await {
                        Ok(()) => queued_writes(&ctx, &mut dev, &mut writes).await,
                        stop => stop,
                    }
                }
                Some(req) = writes.recv() => run_step(&ctx, dev.write(req)).await,
            };
            ctx.stats.set_queue_depth(writes.len());
            match outcome {
                Ok(()) | Err(Stop::Shutdown) => {}
                Err(Stop::SinkClosed) => return Err(ConnectorError::SinkClosed),
            }
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Runs one step of the loop unless shutdown comes first: a poll may take up to the timeout per
/// request and a full ingest channel may hold it longer.
async fn run_step(
    ctx: &ConnectorContext,
    step: impl Future<Output = Result<(), Stop>>,
) -> Result<(), Stop> {
    tokio::select! {
        biased;
        () = ctx.shutdown.cancelled() => Err(Stop::Shutdown),
        r = step => r,
    }
}

/// Carries out the writes that queued up during a poll before the next poll starts. A device
/// slower than the interval keeps the ticker always ready, so waiting for an idle moment would
/// starve writes; and a stream of writes cannot starve polls, as at most a queue's worth goes
/// between two polls.
async fn queued_writes(
    ctx: &ConnectorContext,
    dev: &mut Device,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Result<(), Stop> {
    for _ in 0..WRITE_QUEUE_CAPACITY {
        let Ok(req) = writes.try_recv() else {
            break;
        };
        run_step(ctx, dev.write(req)).await?;
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// The first slot of the schedule `start + n x interval` after `now`.
fn next_slot(start: Instant, interval: Duration, now: Instant) -> Instant {
    let elapsed = now.saturating_duration_since(start).as_nanos();
    let period = interval.as_nanos().max(1);
    let n = elapsed / period + 1;
    u64::try_from(n * period)
        .ok()
        .and_then(|offset| start.checked_add(Duration::from_nanos(offset)))
        .unwrap_or(now + interval)
}

impl Device {
    fn new(info: Arc<DeviceInfo>, ctx: ConnectorContext) -> Device {
        let c = &info.config;
        Device {
            plan: plan(&c.registers),
            sensors: c.registers.iter().map(|r| r.sensor.clone()).collect(),
            interval: Duration::from_millis(c.poll_interval_ms),
            timeout: Duration::from_millis(c.timeout_ms),
            backoff_max: Duration::from_millis(c.backoff_max_ms),
            conn: None,
            online: None,
            failures: 0,
            retry_at: None,
            down_reason: String::new(),
            ctx,
            info,
        }
    }

    fn stats(&self) -> Arc<ConnectorStats> {
        Arc::clone(&self.ctx.stats)
    }

    /// Hands `ingest` to the hub, waiting while its channel is full (back-pressure slows polls,
    /// nothing is dropped). Borrows only the sink: the connection in `self` is not `Sync`.
    fn emit(&self, ingest: Ingest) -> impl Future<Output = Result<(), Stop>> + Send + use<> {
        let sink = self.ctx.sink.clone();
        async move { sink.send(ingest).await.map_err(|_| Stop::SinkClosed) }
    }

    /// One poll: connect if needed, read every batch, hand the readings over.
    async fn poll(&mut self) -> Result<(), Stop> {
        match self.read_all().await {
            Ok(readings) => {
                self.answered().await?;
                if !readings.is_empty() {
                    self.ctx.stats.received(readings.len() as u64);
                    self.emit(Ingest::Readings {
                        connector: self.stats(),
                        readings,
                        ack: None,
                    })
                    .await?;
                }
                Ok(())
            }
            Err(LinkDown(reason)) => self.down(reason).await,
        }
    }

    /// Carries out one write between polls. While the device is down (waiting to reconnect) the
    /// write fails at once rather than breaking the backoff.
    async fn write(&mut self, req: WriteRequest) -> Result<(), Stop> {
        let WriteRequest { op, key, reply } = req;
        let info = Arc::clone(&self.info);
        let failed = |why: &str| {
            Err(ConnectorError::WriteFailed(format!(
                "{}: write {key}: {why}",
                info.label
            )))
        };
        if self.retry_at.is_some() {
            let why = format!("the device is offline ({})", self.down_reason);
            answer(reply, failed(&why));
            return Ok(());
        }
        let timeout = self.timeout;
        let result = match self.connection().await {
            Ok(conn) => transact(timeout, &format!("write {key}"), write_op(conn, &op)).await,
            Err(LinkDown(why)) => Err(LinkDown(format!("write {key}: {why}"))),
        };
        match result {
            Ok(Ok(())) => {
                answer(reply, Ok(()));
                self.answered().await
            }
            Ok(Err(code)) => {
                answer(reply, failed(&exception_reason(code)));
                self.answered().await
            }
            Err(LinkDown(reason)) => {
                // `reason` already names the write; the device's status says why it went down.
                answer(
                    reply,
                    Err(ConnectorError::WriteFailed(format!(
                        "{}: {reason}",
                        info.label
                    ))),
                );
                self.down(reason).await
            }
        }
    }

    /// The open connection, or a new one.
    async fn connection(&mut self) -> Result<&mut Context, LinkDown> {
        if self.conn.is_none() {
            let c = &self.info.config;
            let target = format!("{}:{}", c.host, c.port);
            let connect = async {
                let stream = TcpStream::connect(&target).await?;
                // One small request, one small response: never wait for Nagle.
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            };
            let stream = match tokio::time::timeout(self.timeout, connect).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(LinkDown(format!("connect {target}: {e}"))),
                Err(_) => {
                    return Err(LinkDown(format!(
                        "connect {target}: timed out after {} ms",
                        self.timeout.as_millis()
                    )));
                }
            };
            self.conn = Some(tokio_modbus::client::tcp::attach_slave(
                stream,
                Slave(c.unit),
            ));
        }
        match self.conn.as_mut() {
            Some(conn) => Ok(conn),
            // Set just above; kept as an error rather than a panic.
            None => Err(LinkDown("no connection".to_string())),
        }
    }

    /// Reads every batch. An exception response is counted against its register and the poll
    /// goes on; a request that covers several registers is split for good on its first exception,
    /// so one bad address costs only its own reading.
    async fn read_all(&mut self) -> Result<Vec<Reading>, LinkDown> {
        self.connection().await?;
        let stats = self.stats();
        let Device {
            info,
            plan,
            conn,
            timeout,
            ..
        } = self;
        let Some(conn) = conn.as_mut() else {
            return Err(LinkDown("no connection".to_string()));
        };
        let registers = &info.config.registers;
        let mut readings = Vec::with_capacity(registers.len());
        let mut i = 0;
        while let Some(batch) = plan.get(i) {
            let key = batch.key();
            match transact(*timeout, &key, read_batch(conn, batch)).await? {
                Ok(data) => {
                    collect(registers, batch, &data, &stats, &mut readings);
                    i += 1;
                }
                Err(code) => match batch.split(registers) {
                    Some(parts) => {
                        tracing::debug!(%key, "exception on a coalesced read; reading its registers one by one");
                        plan.splice(i..=i, parts);
                    }
                    None => {
                        let reason = exception_reason(code);
                        for &r in &batch.items {
                            if let Some(r) = registers.get(r) {
                                stats.reject(&r.key(), &reason);
                            }
                        }
                        i += 1;
                    }
                },
            }
        }
        Ok(readings)
    }

    /// The device answered: reset the backoff and, on a change, tell the hub.
    async fn answered(&mut self) -> Result<(), Stop> {
        self.failures = 0;
        if self.online != Some(true) {
            self.online = Some(true);
            self.ctx.stats.set_connected(true, None);
            self.emit(Ingest::Status {
                connector: self.stats(),
                sensors: self.sensors.clone(),
                online: true,
                reason: format!("{} answers", self.info.label),
            })
            .await?;
        }
        Ok(())
    }

    /// The device is unreachable: drop the connection, schedule the next attempt and, on a
    /// change, tell the hub.
    async fn down(&mut self, reason: String) -> Result<(), Stop> {
        self.conn = None;
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(self.interval, self.backoff_max, self.failures);
        self.retry_at = Some(Instant::now() + wait);
        self.ctx.stats.set_connected(false, Some(&reason));
        self.down_reason.clone_from(&reason);
        tracing::debug!(connector = %self.ctx.id, failures = self.failures, ?wait, "{}: {reason}", self.info.label);
        if self.online != Some(false) {
            self.online = Some(false);
            self.emit(Ingest::Status {
                connector: self.stats(),
                sensors: self.sensors.clone(),
                online: false,
                reason,
            })
            .await?;
        }
        Ok(())
    }
}

fn answer(reply: oneshot::Sender<Result<(), ConnectorError>>, result: Result<(), ConnectorError>) {
    if reply.send(result).is_err() {
        // The writer gave up waiting (its future was dropped); the write happened or failed anyway.
        tracing::debug!("a modbus write finished after its caller stopped waiting");
    }
}

/// One request/response with a deadline. Any transport trouble, a timeout included, makes the
/// connection unusable: a late response would be taken for the next request's.
async fn transact<T>(
    timeout: Duration,
    key: &str,
    request: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<Result<T, ExceptionCode>, LinkDown> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(LinkDown(format!("{key}: {e}"))),
        Err(_) => Err(LinkDown(format!(
            "{key}: timed out after {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn read_batch(conn: &mut Context, b: &Batch) -> tokio_modbus::Result<Data> {
    let words = |r: tokio_modbus::Result<Vec<u16>>| r.map(|r| r.map(Data::Words));
    let bits = |r: tokio_modbus::Result<Vec<bool>>| r.map(|r| r.map(Data::Bits));
    match b.table {
        Table::Holding => words(conn.read_holding_registers(b.start, b.count).await),
        Table::Input => words(conn.read_input_registers(b.start, b.count).await),
        Table::Coil => bits(conn.read_coils(b.start, b.count).await),
        Table::Discrete => bits(conn.read_discrete_inputs(b.start, b.count).await),
    }
}

async fn write_op(conn: &mut Context, op: &WriteOp) -> tokio_modbus::Result<()> {
    match op {
        WriteOp::Registers { address, words } => match words.as_slice() {
            [w] => conn.write_single_register(*address, *w).await,
            // Several words in one request, so the device never holds half a 32-bit value.
            _ => conn.write_multiple_registers(*address, words).await,
        },
        WriteOp::Coil { address, value } => conn.write_single_coil(*address, *value).await,
    }
}

/// Decodes the registers of one batch into readings. A short response or a value that is not a
/// finite number is counted against its register.
fn collect(
    registers: &[RegisterConfig],
    batch: &Batch,
    data: &Data,
    stats: &ConnectorStats,
    out: &mut Vec<Reading>,
) {
    for &i in &batch.items {
        let Some(r) = registers.get(i) else { continue };
        let Some(at) = r.address.checked_sub(batch.start).map(usize::from) else {
            continue;
        };
        let raw = match (data, r.word_type()) {
            (Data::Words(w), Some(ty)) => w
                .get(at..at + usize::from(ty.words()))
                .and_then(|w| decode(w, ty, r.word_order, r.byte_order)),
            (Data::Bits(b), None) => b.get(at).map(|&b| if b { 1.0 } else { 0.0 }),
            // The plan never mixes tables; kept as a reject rather than a panic.
            _ => None,
        };
        match raw {
            Some(raw) if raw.is_finite() => out.push(Reading {
                sensor: r.sensor.clone(),
                value: r.scaled(raw),
                at: None,
            }),
            Some(raw) => stats.reject(&r.key(), &format!("{raw} is not a finite number")),
            None => stats.reject(&r.key(), "short response"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModbusConfig {
        toml::from_str(
            r#"
            host = "127.0.0.1"
            [[registers]]
            sensor = "supply_temp"
            table = "holding"
            address = 0
            scale = 0.1
            offset = -40
            [[registers]]
            sensor = "flow"
            table = "holding"
            address = 1
            type = "f32"
            word_order = "little"
            [[registers]]
            sensor = "pump"
            table = "coil"
            address = 5
            [[registers]]
            sensor = "pressure"
            table = "input"
            address = 1
            "#,
        )
        .unwrap()
    }

    #[test]
    fn backoff_doubles_from_the_interval_up_to_the_max() {
        let s = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=9)
            .map(|f| backoff(s, Duration::from_secs(60), f).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(
            backoff(s, Duration::from_secs(60), u32::MAX),
            Duration::from_secs(60)
        );
        assert_eq!(backoff(s, Duration::from_secs(60), 0), s);
    }

    #[test]
    fn the_stagger_is_stable_and_within_the_interval() {
        let i = Duration::from_secs(1);
        assert_eq!(stagger("boiler_3", i), stagger("boiler_3", i));
        assert_ne!(stagger("boiler_3", i), stagger("boiler_4", i));
        let offsets: Vec<Duration> = (0..100).map(|n| stagger(&format!("dev{n}"), i)).collect();
        assert!(offsets.iter().all(|o| *o < i));
        // Spread over the interval, not bunched: every quarter gets some.
        for q in 0..4 {
            let lo = i / 4 * q;
            let hi = i / 4 * (q + 1);
            assert!(offsets.iter().any(|o| *o >= lo && *o < hi), "quarter {q}");
        }
    }

    #[test]
    fn next_slot_stays_on_the_schedule() {
        let start = Instant::now();
        let i = Duration::from_millis(100);
        assert_eq!(next_slot(start, i, start), start + i);
        assert_eq!(
            next_slot(start, i, start + Duration::from_millis(250)),
            start + i * 3
        );
        assert_eq!(
            next_slot(start, i, start + Duration::from_millis(300)),
            start + i * 4
        );
    }

    #[test]
    fn exceptions_are_named_with_their_code() {
        assert_eq!(
            exception_reason(ExceptionCode::IllegalDataAddress),
            "modbus exception 0x02 illegal data address"
        );
        assert_eq!(
            exception_reason(ExceptionCode::GatewayTargetDevice),
            "modbus exception 0x0b gateway target device failed to respond"
        );
        assert_eq!(
            exception_reason(ExceptionCode::Custom(0x42)),
            "modbus exception 0x42 unknown"
        );
    }

    #[test]
    fn writes_invert_scale_and_offset() {
        let (_c, h) = ModbusConnector::new(config()).unwrap();
        // 21.5 degC = raw 615 with scale 0.1 and offset -40.
        assert_eq!(
            h.prepare("supply_temp", 21.5).unwrap(),
            (
                WriteOp::Registers {
                    address: 0,
                    words: vec![615]
                },
                "holding 0".to_string()
            )
        );
        assert_eq!(
            h.prepare("flow", 21.5).unwrap().0,
            WriteOp::Registers {
                address: 1,
                words: vec![0x0000, 0x41AC]
            }
        );
        assert_eq!(
            h.prepare("pump", 1.0).unwrap().0,
            WriteOp::Coil {
                address: 5,
                value: true
            }
        );
        assert_eq!(
            h.prepare("pump", 0.0).unwrap().0,
            WriteOp::Coil {
                address: 5,
                value: false
            }
        );
    }

    #[test]
    fn bad_writes_are_refused_before_reaching_the_device() {
        let (_c, h) = ModbusConnector::new(config()).unwrap();
        let err = |s: &str, v: f64| match h.prepare(s, v) {
            Err(ConnectorError::InvalidWrite(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err("nope", 1.0),
            "modbus 127.0.0.1:502 unit 1 nope: no register is configured for this sensor"
        );
        assert_eq!(
            err("pressure", 1.0),
            "modbus 127.0.0.1:502 unit 1 pressure: input 1 is read-only (only holding registers and coils can be written)"
        );
        assert!(err("supply_temp", 10_000.0).contains("does not fit u16"));
        assert!(err("supply_temp", -50.0).contains("does not fit u16"));
        assert!(err("pump", 0.5).contains("a coil takes 0 or 1"));
        assert!(err("pump", 2.0).contains("a coil takes 0 or 1"));
        assert!(err("flow", f64::NAN).contains("not a finite number"));
        assert_eq!(h.queue_depth(), 0);
    }

    #[test]
    fn an_invalid_config_does_not_build() {
        let mut c = config();
        c.registers[2].value_type = Some(ValueType::F32);
        match ModbusConnector::new(c) {
            Err(ConnectorError::Config(e)) => assert_eq!(
                e,
                "registers[2].type: f32 is not valid for a coil (it reads as 0 or 1; leave type out)"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_short_response_and_a_nan_are_rejected_not_read() {
        let c = config();
        let stats = ConnectorStats::new("m", "modbus");
        let batches = plan(&c.registers);
        let holding = &batches[0];
        assert_eq!((holding.start, holding.count), (0, 3));
        let mut out = Vec::new();
        // f32 NaN in the little-word-order pair at 1..3; 655 at 0 -> 65.5 - 40.
        collect(
            &c.registers,
            holding,
            &Data::Words(vec![655, 0, 0x7FC0]),
            &stats,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert!((out[0].value - 25.5).abs() < 1e-9, "{out:?}");
        collect(
            &c.registers,
            holding,
            &Data::Words(vec![655]),
            &stats,
            &mut out,
        );
        let snap = stats.snapshot();
        assert_eq!(snap.rejects["holding 1"]["NaN is not a finite number"], 1);
        assert_eq!(snap.rejects["holding 1"]["short response"], 1);
    }
}
