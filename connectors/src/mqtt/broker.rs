//! The embedded MQTT broker (rumqttd) that `hub serve` starts by default, so sensors can publish to
//! the hub with no other software. The hub's own MQTT connector subscribes to it over loopback like
//! any client: one code path for embedded and external brokers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::ConnectorError;

/// How long `start` waits for the broker to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the broker on its own threads and returns the address it listens on once it accepts
/// connections. Port 0 picks a free port. The broker lives as long as the process.
pub fn start(
    listen: SocketAddr,
    max_payload_bytes: usize,
    max_connections: usize,
) -> Result<SocketAddr, ConnectorError> {
    // With port 0 the port is found free here, then bound by rumqttd a moment later: another process
    // may take it in between (parallel tests). Then the broker never answers, and another port is tried.
    let attempts = if listen.port() == 0 { 3 } else { 1 };
    let mut result = start_once(listen, max_payload_bytes, max_connections);
    for _ in 1..attempts {
        if result.is_ok() {
            break;
        }
        tracing::warn!("embedded mqtt broker did not start on a free port; trying another");
        result = start_once(listen, max_payload_bytes, max_connections);
    }
    result
}

fn start_once(
    listen: SocketAddr,
    max_payload_bytes: usize,
    max_connections: usize,
) -> Result<SocketAddr, ConnectorError> {
    // rumqttd cannot report the port it bound nor a failure to bind (its server thread just logs),
    // so the address is checked, and port 0 resolved, here first.
    let addr = TcpListener::bind(listen)
        .and_then(|l| l.local_addr())
        .map_err(|e| {
            ConnectorError::Config(format!("mqtt broker: cannot listen on {listen}: {e}"))
        })?;
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_payload_bytes,
        // QoS 1 messages in flight per client: the hub's subscription acknowledges in batches, so the
        // window must be wide enough to keep it busy.
        max_inflight_count: 4096,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "hub".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 4096,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("hub".to_string(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded mqtt broker stopped: {e}");
            }
        })
        .map_err(|e| ConnectorError::Config(format!("mqtt broker: cannot start a thread: {e}")))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !answers_mqtt(addr) {
        if Instant::now() > deadline {
            return Err(ConnectorError::Config(format!(
                "mqtt broker: not accepting connections on {addr} after {READY_TIMEOUT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(addr)
}

/// Whether the broker completes an MQTT handshake (a bare TCP probe would make it log an error).
fn answers_mqtt(addr: SocketAddr) -> bool {
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id `hub-probe`; then DISCONNECT.
    const CONNECT: [u8; 23] = [
        0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 9, b'h', b'u', b'b', b'-', b'p',
        b'r', b'o', b'b', b'e',
    ];
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut connack = [0u8; 4];
    let ok = s.write_all(&CONNECT).is_ok()
        && s.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20
        && connack[3] == 0;
    let _ = s.write_all(&[0xE0, 0]);
    ok
}
