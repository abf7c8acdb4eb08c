//! Telephony benchmark: SIPp places many concurrent calls on the telephony core (started in-process on
//! a fresh SQLite database, as `hub serve` starts it); every call's RTP goes to one socket of this
//! program, which measures what callers would hear: packets received against expected, and the gaps
//! between consecutive packets of each stream (20 ms is perfect pacing). Also: peak calls in the core,
//! SIPp's verdict, and the CPU time of this process (the core, media tasks and the RTP sink).
//!
//! `cargo bench -p hub --bench telephony`. Needs `sipp` (Debian `sip-tester`) and `espeak-ng`.
//! Environment: `HUB_BENCH_CALLS` (default 500), `HUB_BENCH_CALL_SECONDS` (default 10),
//! `HUB_BENCH_RATE` (new calls per second, default 100). `HUB_BENCH_LOAD=rate` is the issue's second
//! load: 50 new calls per second for a minute (3,000 calls of 5 s unless the variables say otherwise).
//! Reported besides: failed calls (SIPp's count), the pacing jitter (|gap - 20 ms|) and the memory per
//! call (the growth of this process's resident memory at the peak, divided by the calls up then).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hub::telephony::TelephonyConfig;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

fn env_size(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .parse()
            .with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

/// CPU seconds (user + system) of this process so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Sink {
    packets: u64,
    streams: usize,
    gaps_ms: Vec<f64>,
}

/// Counts RTP per SSRC until `stop`, keeping the gap between consecutive packets of each stream.
async fn sink(socket: UdpSocket, mut gaps_ms: Vec<f64>, stop: CancellationToken) -> Sink {
    let mut last: HashMap<u32, Instant> = HashMap::new();
    let mut packets = 0u64;
    let mut buf = [0u8; 2048];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            got = socket.recv(&mut buf) => match got { Ok(n) => n, Err(_) => continue },
        };
        if n < 12 {
            continue;
        }
        let now = Instant::now();
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        packets += 1;
        if let Some(prev) = last.insert(ssrc, now) {
            gaps_ms.push((now - prev).as_secs_f64() * 1000.0);
        }
    }
    Sink {
        packets,
        streams: last.len(),
        gaps_ms,
    }
}

/// Resident memory of this process in bytes, from /proc/self/status.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// SIPp's cumulative count on the line starting with `row` of its final statistics screen.
fn sipp_count(stdout: &str, row: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(row))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.trim().parse().ok())
}

fn main() -> anyhow::Result<()> {
    let rate_load = std::env::var("HUB_BENCH_LOAD").is_ok_and(|v| v == "rate");
    let (d_calls, d_seconds, d_rate) = if rate_load {
        (3000, 5, 50)
    } else {
        (500, 10, 100)
    };
    let calls = env_size("HUB_BENCH_CALLS", d_calls)?.max(1);
    let seconds = env_size("HUB_BENCH_CALL_SECONDS", d_seconds)?.max(1);
    let rate = env_size("HUB_BENCH_RATE", d_rate)?.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(calls, seconds, rate))
}

async fn run(calls: usize, seconds: usize, rate: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = hub::testing::fresh_database_url(dir.path()).await;
    let db = hub::storage::Db::connect(&url, 8).await?;
    db.migrate().await?;
    let config = TelephonyConfig {
        listen: "127.0.0.1:0".parse()?,
        rtp_port_min: 30000,
        rtp_port_max: 30000 + 2 * (calls as u16).saturating_add(50),
        max_calls: calls + 10,
        max_call_seconds: 0,
        prompts_dir: dir.path().join("prompts"),
        ..TelephonyConfig::default()
    };
    let shutdown = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let metrics = Arc::new(hub::metrics::Metrics::default());
    let phone = hub::telephony::start(
        &config,
        db.clone(),
        hub::network::NetworkCache::default(),
        metrics.clone(),
        None,
        &tasks,
        shutdown.clone(),
    )
    .await?;
    // Let the menu's prompts render first, as they do at a real start.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let media = UdpSocket::bind("127.0.0.1:0").await?;
    let media_port = media.local_addr()?.port();
    let stop_sink = CancellationToken::new();
    // Room for every gap, touched now, so that the sink's memory is in the baseline of the
    // memory per call.
    let mut gaps = vec![0.0f64; calls * seconds * 55 + 10_000];
    gaps.clear();
    let sink_task = tokio::spawn(sink(media, gaps, stop_sink.clone()));

    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let rss_base = rss_bytes();
    // The resident memory when the most calls were up, and how many.
    let rss_peak = Arc::new(std::sync::Mutex::new((rss_base, 0usize)));
    let sampler = {
        let (phone, peak, stop, rss_peak) = (
            phone.clone(),
            peak.clone(),
            stop_sink.clone(),
            rss_peak.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(active) = phone.active_calls().await {
                    peak.fetch_max(active.len(), std::sync::atomic::Ordering::Relaxed);
                    let rss = rss_bytes();
                    if let Ok(mut p) = rss_peak.lock()
                        && (active.len(), rss) > (p.1, p.0)
                    {
                        *p = (rss, active.len());
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sipp/call.xml");
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let out = tokio::process::Command::new("sipp")
        .current_dir(dir.path())
        .arg("-sf")
        .arg(&scenario)
        .args(["-key", "caller", "+79990000000"])
        .args(["-key", "rtp_port", &media_port.to_string()])
        .args(["-d", &(seconds * 1000).to_string()])
        .args(["-m", &calls.to_string(), "-l", &calls.to_string()])
        .args(["-r", &rate.to_string()])
        .args([
            "-nostdin",
            "-timeout",
            &(seconds * 4 + calls / rate + 30).to_string(),
        ])
        .args(["-i", "127.0.0.1", "-trace_err"])
        .arg(phone.sip_addr().to_string())
        .kill_on_drop(true)
        .output()
        .await
        .context("run sipp (Debian package sip-tester)")?;
    let wall = started.elapsed();
    // The last packets are already in flight when the last BYE is answered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = cpu_seconds() - cpu0;
    stop_sink.cancel();
    let s = sink_task.await?;
    sampler.await?;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;

    let mut gaps = s.gaps_ms;
    gaps.sort_by(f64::total_cmp);
    let expected = (calls * seconds * 50) as f64;
    let late = gaps.iter().filter(|g| **g > 40.0).count();
    let mut jitter: Vec<f64> = gaps.iter().map(|g| (g - 20.0).abs()).collect();
    jitter.sort_by(f64::total_cmp);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rss_max, calls_at_max) = rss_peak.lock().map(|p| *p).unwrap_or((rss_base, 0));
    let answered = metrics.get("hub_telephony_calls_answered_total", &[]);
    println!("telephony: {calls} calls of {seconds} s, {rate} new calls/s, SIPp on loopback");
    println!(
        "{:<38} {:>12}",
        "wall time (s)",
        format!("{:.1}", wall.as_secs_f64())
    );
    println!("{:<38} {:>12}", "calls answered", answered);
    println!(
        "{:<38} {:>12}",
        "calls successful / failed (SIPp)",
        format!(
            "{} / {}",
            sipp_count(&stdout, "Successful call").map_or("?".into(), |n| n.to_string()),
            sipp_count(&stdout, "Failed call").map_or("?".into(), |n| n.to_string())
        )
    );
    println!(
        "{:<38} {:>12}",
        "peak calls in the core",
        peak.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("{:<38} {:>12}", "RTP streams seen", s.streams);
    println!(
        "{:<38} {:>12}",
        "RTP packets received / expected",
        format!("{} / {:.0}", s.packets, expected)
    );
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)] {
        println!(
            "{:<38} {:>12.2}",
            format!("gap between packets {name} (ms)"),
            percentile(&gaps, p)
        );
    }
    println!(
        "{:<38} {:>12.2}",
        "gap between packets max (ms)",
        gaps.last().copied().unwrap_or(0.0)
    );
    println!("{:<38} {:>12}", "gaps over 40 ms", late);
    for (name, p) in [("p50", 50.0), ("p99", 99.0)] {
        println!(
            "{:<38} {:>12.2}",
            format!("pacing jitter |gap - 20| {name} (ms)"),
            percentile(&jitter, p)
        );
    }
    println!(
        "{:<38} {:>12}",
        "resident memory at start / most calls (MB)",
        format!(
            "{:.1} / {:.1}",
            rss_base as f64 / 1048576.0,
            rss_max as f64 / 1048576.0
        )
    );
    if calls_at_max > 0 {
        println!(
            "{:<38} {:>12}",
            "memory per call (KB)",
            format!(
                "{:.0} ({} calls up)",
                rss_max.saturating_sub(rss_base) as f64 / 1024.0 / calls_at_max as f64,
                calls_at_max
            )
        );
    }
    println!(
        "{:<38} {:>12}",
        "CPU of the hub process (% of one core)",
        format!("{:.0}", cpu / wall.as_secs_f64() * 100.0)
    );
    if !out.status.success() {
        bail!(
            "sipp: {} (not every call succeeded)\n{}",
            out.status,
            stdout.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }
    if answered < calls as u64 || s.streams < calls {
        bail!(
            "{answered} calls answered, {} streams, of {calls}",
            s.streams
        );
    }
    Ok(())
}
