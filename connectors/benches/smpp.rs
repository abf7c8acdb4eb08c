//! Benchmark of the SMPP channel (`cargo bench -p connectors --bench smpp`): submit_sm throughput and
//! latency against the npm `smpp` server of the tests (`tests/smpp/server.js`, one node process on
//! 127.0.0.1), for several windows, for two-part Cyrillic texts, with `rate_per_s` set, and with
//! delivery receipts taken and acknowledged. Each run checks that the server logged every submit.
//!
//! Environment: HUB_BENCH_SMPP_MESSAGES (default 5000 per run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connectors::channels::smpp::testing::{SmppServer, node_missing};
use connectors::channels::smpp::{SmppChannel, SmppConfig};
use connectors::channels::{Channel, OutboundMessage};

const GSM_TEXT: &str =
    "Hub: TP-3 supply pressure 2.1 bar, below 3 bar since 10:15. Check pump P-2.";
/// 120 Cyrillic characters: two UCS-2 parts.
const CYRILLIC_TEXT: &str = "Плановое отключение горячей воды по ул. Ленина, 5 с 10:00 до 18:00 12 июля. \
     Приносим извинения. Справки: 8 800 100-20-30.";

struct Run {
    name: String,
    messages: usize,
    parts: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `messages` texts from `senders` tasks at once; latencies of each send.
async fn blast(
    channel: Arc<SmppChannel>,
    messages: usize,
    senders: usize,
    text: &'static str,
) -> (Duration, Vec<Duration>) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (channel, next) = (channel.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < messages {
                    let msg = OutboundMessage {
                        to: "+79001112233".into(),
                        subject: String::new(),
                        text: text.into(),
                    };
                    let t = Instant::now();
                    channel.send(&msg).await.expect("send");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(messages);
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    (start.elapsed(), all)
}

async fn run(
    name: &str,
    messages: usize,
    window: usize,
    rate: f64,
    text: &'static str,
    receipts: bool,
) -> Run {
    let args: &[&str] = if receipts { &[] } else { &["--no-receipts"] };
    let server = SmppServer::start(args).await.expect("smpp server");
    let mut config = SmppConfig::new("127.0.0.1", server.port, "hub", "secret");
    config.window = window;
    config.rate_per_s = rate;
    let channel = Arc::new(SmppChannel::new(config).expect("channel"));
    // Receipts are taken and acknowledged as they come, by a task of their own.
    let parts = if text == GSM_TEXT { 1 } else { 2 };
    let taken = if receipts {
        channel.take_receipts()
    } else {
        None
    };
    let acker = taken.map(|mut stream| {
        tokio::spawn(async move {
            for _ in 0..messages * parts {
                let r = tokio::time::timeout(Duration::from_secs(60), stream.recv())
                    .await
                    .expect("receipts keep coming")
                    .expect("receipt stream open");
                r.ack.send(()).expect("the session waits for the ack");
            }
        })
    });
    // Bind outside the measurement.
    channel.healthcheck().await.expect("bind");
    let start = Instant::now();
    let (mut elapsed, latencies) = blast(channel.clone(), messages, window * 2, text).await;
    if let Some(acker) = acker {
        acker.await.expect("receipts");
        // Until the last receipt is acknowledged.
        elapsed = start.elapsed();
    }
    server
        .wait_for("submit_sm", messages * parts, Duration::from_secs(30))
        .await
        .expect("the server logged every submit");
    if receipts {
        server
            .wait_for("deliver_sm_resp", messages * parts, Duration::from_secs(30))
            .await
            .expect("every receipt answered");
    }
    channel.close().await;
    Run {
        name: name.into(),
        messages,
        parts,
        elapsed,
        latencies,
    }
}

fn main() {
    if let Some(why) = node_missing() {
        println!("skipped: {why}");
        return;
    }
    let messages: usize = std::env::var("HUB_BENCH_SMPP_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let runs = runtime.block_on(async {
        let rate_messages = messages.min(1000);
        vec![
            run("GSM, window 1", messages / 5, 1, 0.0, GSM_TEXT, false).await,
            run("GSM, window 10", messages, 10, 0.0, GSM_TEXT, false).await,
            run("GSM, window 50", messages, 50, 0.0, GSM_TEXT, false).await,
            run(
                "Cyrillic 2 parts, window 10",
                messages,
                10,
                0.0,
                CYRILLIC_TEXT,
                false,
            )
            .await,
            run(
                "GSM, window 10, receipts acked",
                messages,
                10,
                0.0,
                GSM_TEXT,
                true,
            )
            .await,
            run(
                "GSM, window 10, rate_per_s 200",
                rate_messages,
                10,
                200.0,
                GSM_TEXT,
                false,
            )
            .await,
        ]
    });
    println!(
        "{:<34} {:>8} {:>9} {:>10} {:>11} {:>9} {:>9}",
        "run", "messages", "seconds", "msgs/s", "submit/s", "p50 ms", "p99 ms"
    );
    for mut r in runs {
        r.latencies.sort_unstable();
        let secs = r.elapsed.as_secs_f64();
        println!(
            "{:<34} {:>8} {:>9.2} {:>10.0} {:>11.0} {:>9.2} {:>9.2}",
            r.name,
            r.messages,
            secs,
            r.messages as f64 / secs,
            (r.messages * r.parts) as f64 / secs,
            percentile(&r.latencies, 50.0).as_secs_f64() * 1000.0,
            percentile(&r.latencies, 99.0).as_secs_f64() * 1000.0,
        );
    }
}
