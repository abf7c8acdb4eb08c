//! The SIP transport (UDP): reads datagrams, parses them at the edge and hands the messages to the call
//! core. Junk (anything that does not parse) is counted in `hub_sip_junk_total` and logged at most once
//! per `JUNK_LOG_EVERY`, so a flood can neither crash the hub nor fill its log.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::core::CoreMsg;
use super::sip;
use crate::metrics::Metrics;

/// At most one log line about junk datagrams per this interval.
const JUNK_LOG_EVERY: Duration = Duration::from_secs(10);
/// Largest datagram read; SIP over UDP stays well below.
const MAX_DATAGRAM: usize = 65_535;

pub async fn run(
    socket: Arc<UdpSocket>,
    core: mpsc::Sender<CoreMsg>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut junk_since_log: u64 = 0;
    let mut last_log: Option<Instant> = None;
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    // ICMP port unreachable from an earlier send shows up here on some systems.
                    tracing::debug!(error = %e, "sip receive error");
                    continue;
                }
            },
        };
        let data = &buf[..n];
        // RFC 5626 keep-alives: CRLF CRLF (and bare CRLF) are not junk.
        if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
            continue;
        }
        match sip::parse(data) {
            Ok(msg) => {
                metrics.inc("hub_sip_messages_total", &[]);
                if let Err(e) = core.try_send(CoreMsg::Sip {
                    msg: Box::new(msg),
                    from,
                }) {
                    // The sender retransmits: dropping under overload is the UDP way.
                    metrics.inc("hub_sip_dropped_total", &[]);
                    tracing::warn!(%from, error = %e, "sip message dropped: the call core is behind");
                }
            }
            Err(e) => {
                metrics.inc("hub_sip_junk_total", &[]);
                junk_since_log += 1;
                let now = Instant::now();
                if last_log.is_none_or(|t| now - t >= JUNK_LOG_EVERY) {
                    tracing::warn!(%from, error = %e, count = junk_since_log, "junk sip datagrams ignored");
                    junk_since_log = 0;
                    last_log = Some(now);
                }
            }
        }
    }
}

/// Connections accepted at once; more wait in the kernel's backlog.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// Messages queued for one connection's writer before the core drops and counts.
const TCP_WRITE_QUEUE: usize = 64;
/// A connection silent this long is closed (phones keep theirs up with CRLF keep-alives or REGISTER).
const TCP_IDLE: Duration = Duration::from_secs(600);

/// SIP over TCP: one task per connection frames messages by Content-Length (`stream::Framer`) and hands
/// them to the core like datagrams; the core writes responses back through the same connection
/// (`CoreMsg::TcpOpen` gives it the writer). A stream that cannot be framed is closed.
pub async fn run_tcp(
    listener: tokio::net::TcpListener,
    core: mpsc::Sender<CoreMsg>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = listener.accept() => match got {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(error = %e, "sip tcp accept failed");
                    continue;
                }
            },
        };
        let (core, metrics, shutdown) = (core.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            connection(stream, peer, core, metrics, shutdown).await;
            drop(permit);
        });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    core: mpsc::Sender<CoreMsg>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_WRITE_QUEUE);
    if core.send(CoreMsg::TcpOpen { peer, tx }).await.is_err() {
        return;
    }
    tracing::debug!(%peer, "sip tcp connection");
    let mut framer = super::stream::Framer::default();
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            out = rx.recv() => match out {
                Some(bytes) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        tracing::debug!(%peer, error = %e, "sip tcp write failed");
                        break;
                    }
                }
                None => break,
            },
            read = tokio::time::timeout(TCP_IDLE, reader.read(&mut buf)) => {
                let n = match read {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "sip tcp read failed");
                        break;
                    }
                };
                framer.push(&buf[..n]);
                let mut broken = false;
                while let Some(next) = framer.next_message() {
                    let bytes = match next {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            metrics.inc("hub_sip_junk_total", &[]);
                            tracing::warn!(%peer, error = %e, "sip tcp stream cannot be framed: closing it");
                            broken = true;
                            break;
                        }
                    };
                    match sip::parse(&bytes) {
                        Ok(msg) => {
                            metrics.inc("hub_sip_messages_total", &[]);
                            // A stream is flow-controlled: wait for the core rather than drop.
                            if core.send(CoreMsg::Sip { msg: Box::new(msg), from: peer }).await.is_err() {
                                broken = true;
                                break;
                            }
                        }
                        // The framing holds: skip the message, keep the connection.
                        Err(e) => {
                            metrics.inc("hub_sip_junk_total", &[]);
                            tracing::debug!(%peer, error = %e, "junk sip message over tcp ignored");
                        }
                    }
                }
                if broken {
                    break;
                }
            }
        }
    }
    if core.send(CoreMsg::TcpClosed { peer }).await.is_err() {
        tracing::debug!(%peer, "sip tcp: core gone");
    }
}
