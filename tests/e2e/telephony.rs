//! The telephony core against a real SIP peer: SIPp (Debian package `sip-tester`) calls the real hub,
//! with the scenarios in `tests/e2e/sipp/`; the test itself plays the caller's RTP endpoint where it
//! needs to count what the hub sends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::UdpSocket;

use crate::harness::{Api, Hub, TestEnv, password_of, spawn_hub};

/// A caller whose number belongs to a consumer of the seeded data.
pub(crate) const KNOWN_CALLER: &str = "+79161234567";
/// Longest a SIPp scenario may run.
const SIPP_TIMEOUT_S: &str = "40";

pub(crate) fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/sipp")
        .join(name)
}

pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// Runs one SIPp call of `scenario` against the hub in the test's directory; panics with SIPp's error
/// log unless every call succeeded.
pub(crate) async fn sipp(env: &TestEnv, hub: SocketAddr, name: &str, extra: &[&str]) {
    // SIPp's `play_pcap_audio` finds its pcaps as `pcap/...` relative to the working directory.
    let pcap = env.path("pcap");
    if !pcap.exists() {
        std::os::unix::fs::symlink("/usr/share/sip-tester", &pcap).expect("link pcap");
    }
    let errors = env.path(&format!("{name}.errors.log"));
    let (sip_port, media_port) = (free_udp_port(), free_udp_port());
    let mut cmd = tokio::process::Command::new("sipp");
    cmd.current_dir(env.dir.path())
        .arg("-sf")
        .arg(scenario(name))
        .args([
            "-m",
            "1",
            "-nostdin",
            "-timeout",
            SIPP_TIMEOUT_S,
            "-trace_err",
        ])
        .arg("-error_file")
        .arg(&errors)
        .args(["-i", "127.0.0.1", "-p", &sip_port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(extra)
        .arg(hub.to_string())
        .kill_on_drop(true);
    let out = match cmd.output().await {
        Ok(out) => out,
        Err(e) => panic!("cannot run sipp ({e}): install the Debian package sip-tester"),
    };
    assert!(
        out.status.success(),
        "sipp {name} failed ({}):\n{}\nerrors:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
}

/// The newest call record once it has ended (the recorder writes a moment after the call).
pub(crate) async fn last_call(api: &Api) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = api.get_ok("/api/v1/calls").await;
        if let Some(call) = list["items"].get(0)
            && !call["ended_at"].is_null()
        {
            return call.clone();
        }
        assert!(Instant::now() < deadline, "no ended call recorded: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tenant, complex rc-1 with apartment a-1, consumer c1 (calling from `KNOWN_CALLER`) living there,
/// and an active emergency outage on the complex. Returns the ids of c1 and rc-1.
pub(crate) async fn seed(api: &Api) -> (i64, i64) {
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    let rc = api
        .post_ok(
            "/api/v1/sites",
            &json!({"tenant": "t1", "external_id": "rc-1", "kind": "residential_complex", "name": "RC 1"}),
        )
        .await;
    api.post_ok(
        "/api/v1/sites",
        &json!({"tenant": "t1", "external_id": "a-1", "parent": "rc-1", "kind": "apartment", "name": "A 1"}),
    )
    .await;
    let c1 = api
        .post_ok(
            "/api/v1/consumers",
            &json!({"tenant": "t1", "external_id": "c1", "kind": "resident", "name": "Ivanova",
                "phones": [KNOWN_CALLER], "sites": ["a-1"]}),
        )
        .await;
    api.post_ok(
        "/api/v1/outages",
        &json!({"tenant": "t1", "kind": "emergency", "utility": "heat", "sites": ["rc-1"],
            "reason": "pipe burst", "starts_at": "2020-01-15T08:00:00Z",
            "expected_end": "2030-01-15T15:00:00Z"}),
    )
    .await;
    (
        c1["id"].as_i64().expect("consumer id"),
        rc["id"].as_i64().expect("site id"),
    )
}

/// One received RTP packet: arrival, payload type, marker, sequence, timestamp, audible.
pub(crate) type Seen = (Instant, u8, bool, u16, u32, bool);

/// Collects the RTP arriving on `socket` until it has been quiet for a second.
pub(crate) async fn collect_rtp(socket: UdpSocket) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Ok(n)) = tokio::time::timeout(
        Duration::from_secs(if seen.is_empty() { 20 } else { 1 }),
        socket.recv(&mut buf),
    )
    .await
    {
        let p = &buf[..n];
        if n < 12 || p[0] >> 6 != 2 {
            continue;
        }
        seen.push((
            Instant::now(),
            p[1] & 0x7f,
            p[1] & 0x80 != 0,
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            // µ-law silence is 0xff (and 0x7f): anything else is sound.
            p[12..].iter().any(|b| *b != 0xff && *b != 0x7f),
        ));
    }
    seen
}

#[tokio::test]
async fn a_known_caller_is_answered_hears_paced_audio_and_the_call_is_recorded() {
    let (env, hub, admin) = spawn_hub().await;
    let (consumer, complex) = seed(&admin).await;
    let media = UdpSocket::bind("127.0.0.1:0").await.expect("media socket");
    let rtp_port = media.local_addr().expect("media addr").port().to_string();
    let listener = tokio::spawn(collect_rtp(media));

    sipp(
        &env,
        hub.sip_addr(),
        "call.xml",
        &[
            "-key",
            "caller",
            KNOWN_CALLER,
            "-key",
            "rtp_port",
            &rtp_port,
            "-d",
            "3000",
        ],
    )
    .await;

    let seen = listener.await.expect("rtp listener");
    assert!(
        seen.len() >= 120,
        "about 150 packets in 3 s: got {}",
        seen.len()
    );
    assert!(
        seen.iter().all(|s| s.1 == 0),
        "PCMU, the caller's first choice"
    );
    assert!(
        seen[0].2 && seen[1..].iter().all(|s| !s.2),
        "marker on the first packet only"
    );
    for w in seen.windows(2) {
        assert_eq!(
            w[1].3,
            w[0].3.wrapping_add(1),
            "consecutive sequence numbers"
        );
        assert_eq!(w[1].4, w[0].4.wrapping_add(160), "timestamps 160 apart");
    }
    let span = seen[seen.len() - 1].0 - seen[0].0;
    let mean = span.as_secs_f64() * 1000.0 / (seen.len() - 1) as f64;
    assert!(
        (18.0..=22.0).contains(&mean),
        "20 ms pacing: mean {mean:.2} ms"
    );
    let audible = seen.iter().filter(|s| s.5).count();
    assert!(
        audible > 50,
        "the announcement and menu are heard: {audible} audible frames"
    );

    let call = last_call(&admin).await;
    assert_eq!(call["from"], KNOWN_CALLER, "{call}");
    assert_eq!(call["to"], "ivr", "{call}");
    assert_eq!(call["direction"], "inbound", "{call}");
    assert_eq!(call["outcome"], "answered", "{call}");
    assert_eq!(call["consumer_id"], consumer, "{call}");
    assert_eq!(call["site_id"], complex, "the consumer's complex: {call}");
    assert!(call["mode"] == "day" || call["mode"] == "night", "{call}");
    assert!(!call["answered_at"].is_null(), "{call}");
    let one = admin.get_ok(&format!("/api/v1/calls/{}", call["id"])).await;
    assert_eq!(one["sip_call_id"], call["sip_call_id"]);
    assert!(
        hub.log().contains("answered"),
        "the hub logs the call:\n{}",
        hub.log()
    );
}

#[tokio::test]
async fn rfc4733_dtmf_selects_a_menu_branch_and_the_hub_hangs_up() {
    let (env, hub, admin) = spawn_hub().await;
    sipp(
        &env,
        hub.sip_addr(),
        "dtmf.xml",
        &["-key", "caller", "unknown"],
    )
    .await;
    let call = last_call(&admin).await;
    assert_eq!(call["digits"], "1", "{call}");
    assert_eq!(call["queue"], "accounting", "{call}");
    assert_eq!(call["outcome"], "transferred", "{call}");
    assert!(call["consumer_id"].is_null(), "{call}");
}

#[tokio::test]
async fn cancel_while_ringing_gets_487_and_is_recorded_as_cancelled() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    // The harness's hub.toml ends with `[telephony]`: ring for a while before answering.
    let mut toml = std::fs::read_to_string(&env.config).expect("hub.toml");
    assert!(toml.trim_end().lines().any(|l| l == "[telephony]"));
    toml.push_str("answer_delay_ms = 10000\n");
    std::fs::write(&env.config, toml).expect("hub.toml");
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    sipp(
        &env,
        hub.sip_addr(),
        "cancel.xml",
        &["-key", "caller", KNOWN_CALLER],
    )
    .await;
    let call = last_call(&admin).await;
    assert_eq!(call["outcome"], "cancelled", "{call}");
    assert!(call["answered_at"].is_null(), "{call}");
}

#[tokio::test]
async fn junk_and_malformed_invites_do_not_hurt_the_hub() {
    let (env, hub, admin) = spawn_hub().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    let target = hub.sip_addr();
    let mut junk: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        vec![0xff; 1400],
        vec![0; 60_000],
        b"INVITE sip:ivr@127.0.0.1 SIP/2.0\r\n\r\n".to_vec(),
        b"INVITE sip:ivr@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:ivr@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 999\r\n\r\nv=0\r\n".to_vec(),
        b"INVITE <sip:ivr@127.0.0.1> SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n".to_vec(),
        b"SIP/2.0 99999 huh\r\n\r\n".to_vec(),
    ];
    let mut seed: u32 = 12345;
    for _ in 0..200 {
        let len = 1 + (seed % 900) as usize;
        junk.push(
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8
                })
                .collect(),
        );
    }
    for (i, d) in junk.iter().enumerate() {
        sock.send_to(d, target).await.expect("send junk");
        // Loopback drops what the receive buffer cannot hold: let the hub read.
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // A CRLF keep-alive is not junk.
    sock.send_to(b"\r\n\r\n", target)
        .await
        .expect("send keep-alive");

    sipp(&env, target, "options.xml", &[]).await;
    let metrics = hub.anonymous().get("/metrics").await.text;
    let junk_count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hub_sip_junk_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no junk counter in\n{metrics}"));
    assert!(junk_count >= 200, "junk is counted: {junk_count}");
    assert!(
        hub.log().matches("junk sip datagrams ignored").count() <= 2,
        "junk is logged at a limited rate:\n{}",
        hub.log()
    );
    // Nothing was taken for a call.
    let calls = admin.get_ok("/api/v1/calls").await;
    assert_eq!(calls["items"], json!([]), "{calls}");
    stop(hub).await;
}

async fn stop(hub: Hub) {
    let status = hub.terminate().await;
    assert!(status.success(), "the hub stops cleanly: {status}");
}
