//! An in-memory Modbus TCP device (a tokio-modbus server) for tests and benchmarks: the peer the
//! Modbus connector polls, on `127.0.0.1:0`, with registers a test sets and reads back. Not used
//! by the running hub.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};

/// The four tables of a simulated device. An address that is not in its map answers with
/// exception 0x02 (illegal data address), as a real device does for registers it lacks.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub holding: BTreeMap<u16, u16>,
    pub input: BTreeMap<u16, u16>,
    pub coils: BTreeMap<u16, bool>,
    pub discrete: BTreeMap<u16, bool>,
}

/// The state of a simulated device, shared by every server started on it: it outlives a server
/// stopped and started again, as a real device's registers outlive its network link.
#[derive(Debug, Clone, Default)]
pub struct SimDevice {
    inner: Arc<Mutex<SimState>>,
}

#[derive(Debug, Default)]
struct SimState {
    tables: Tables,
    /// Added before every response.
    delay: Duration,
    /// Arrival time and function code of every request.
    log: Vec<(Instant, u8)>,
}

fn lock(m: &Mutex<SimState>) -> MutexGuard<'_, SimState> {
    // A test that panicked while holding the lock has failed already; its data is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimDevice {
    pub fn new(tables: Tables) -> SimDevice {
        SimDevice {
            inner: Arc::new(Mutex::new(SimState {
                tables,
                ..SimState::default()
            })),
        }
    }

    /// Changes the device's registers.
    pub fn update(&self, f: impl FnOnce(&mut Tables)) {
        f(&mut lock(&self.inner).tables);
    }

    /// A copy of the device's registers.
    pub fn tables(&self) -> Tables {
        lock(&self.inner).tables.clone()
    }

    /// Makes every response wait `delay` first (a slow device).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.inner).delay = delay;
    }

    /// Arrival times and function codes of every request so far.
    pub fn requests(&self) -> Vec<(Instant, u8)> {
        lock(&self.inner).log.clone()
    }

    fn answer(&self, req: &Request<'_>) -> Result<Response, ExceptionCode> {
        let mut s = lock(&self.inner);
        s.log.push((Instant::now(), req.function_code().value()));
        let t = &mut s.tables;
        match req {
            Request::ReadHoldingRegisters(a, n) => {
                read(&t.holding, *a, *n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                read(&t.input, *a, *n).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(a, n) => read(&t.coils, *a, *n).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, n) => {
                read(&t.discrete, *a, *n).map(Response::ReadDiscreteInputs)
            }
            Request::WriteSingleRegister(a, w) => {
                write(&mut t.holding, *a, &[*w])?;
                Ok(Response::WriteSingleRegister(*a, *w))
            }
            Request::WriteMultipleRegisters(a, words) => {
                write(&mut t.holding, *a, words)?;
                let n = u16::try_from(words.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
                Ok(Response::WriteMultipleRegisters(*a, n))
            }
            Request::WriteSingleCoil(a, c) => {
                write(&mut t.coils, *a, &[*c])?;
                Ok(Response::WriteSingleCoil(*a, *c))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }
}

fn read<T: Copy>(
    table: &BTreeMap<u16, T>,
    start: u16,
    count: u16,
) -> Result<Vec<T>, ExceptionCode> {
    (u32::from(start)..u32::from(start) + u32::from(count))
        .map(|a| {
            u16::try_from(a)
                .ok()
                .and_then(|a| table.get(&a).copied())
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

/// Writes only to addresses the device has, all or nothing.
fn write<T: Copy>(
    table: &mut BTreeMap<u16, T>,
    start: u16,
    values: &[T],
) -> Result<(), ExceptionCode> {
    let addresses: Vec<u16> = (0..values.len())
        .map(|i| {
            u16::try_from(usize::from(start) + i)
                .ok()
                .filter(|a| table.contains_key(a))
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect::<Result<_, _>>()?;
    for (a, v) in addresses.into_iter().zip(values) {
        table.insert(a, *v);
    }
    Ok(())
}

struct SimService(SimDevice);

impl Service for SimService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let device = self.0.clone();
        Box::pin(async move {
            let delay = lock(&device.inner).delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            device.answer(&req)
        })
    }
}

/// A Modbus TCP server for a [`SimDevice`], running until [`TestServer::stop`] or drop.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Listens on `addr` (`127.0.0.1:0` for any free port, or the port of a stopped server to
    /// bring it back) and serves `device` to every connection.
    pub async fn start(addr: SocketAddr, device: SimDevice) -> io::Result<TestServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let service = Arc::new(SimService(device));
        let task = tokio::spawn(async move {
            let on_connected = |stream, peer| {
                let service = Arc::clone(&service);
                async move {
                    accept_tcp_connection(stream, peer, move |_| Ok(Some(Arc::clone(&service))))
                }
            };
            let on_error = |e: io::Error| tracing::debug!("simulated modbus device: {e}");
            if let Err(e) = Server::new(listener).serve(&on_connected, on_error).await {
                tracing::warn!("simulated modbus device stopped: {e}");
            }
        });
        Ok(TestServer { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every open connection (the server's connections end with it), and
    /// returns once the port is free again.
    pub async fn stop(self) {
        let mut this = self;
        this.task.abort();
        if let Err(e) = (&mut this.task).await
            && !e.is_cancelled()
        {
            tracing::warn!("simulated modbus device: {e}");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
