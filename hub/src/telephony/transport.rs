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
