//! The IVR's services against SIPp: the meter-readings robot (RFC 4733 keys from SIPp's pcaps, or SIP
//! INFO when the test itself is the caller's RTP endpoint), the readings then in the API; and the
//! done-when scenario of issue 6: a resident of a complex in an outage hears the announcement, then
//! gives a reading; and "tell me when it is over" (9), answered by an SMS once the outage is closed.

use std::time::{Duration, Instant};

use connectors::channels::testing::HttpStub;
use serde_json::{Value, json};
use tokio::net::UdpSocket;

use crate::harness::{Api, TestEnv, password_of, spawn_hub};
use crate::telephony::{KNOWN_CALLER, collect_rtp, last_call, seed, sipp};

/// The account of the seeded consumer c1: no digit repeats the one before it, because SIPp replays
/// one pcap per digit with that pcap's RTP timestamp, and a repeat would look like a retransmission.
const ACCOUNT: &str = "7102";

/// How a caller presses keys.
#[derive(Clone, Copy)]
enum Keys {
    /// RFC 4733 events from SIPp's media port.
    Rtp,
    /// SIP INFO `application/dtmf-relay`.
    Info,
}

/// `tests/e2e/sipp/keys.xml` with the keys put in: `wait_ms` after the answer, then each `(key,
/// pause in ms after it)`. With `rtp_port`, the SDP offers the test's socket instead of SIPp's media
/// port.
fn keys_scenario(
    env: &TestEnv,
    name: &str,
    wait_ms: u64,
    keys: &[(char, u64)],
    how: Keys,
    rtp_port: Option<u16>,
) -> String {
    let template = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/sipp/keys.xml"),
    )
    .expect("keys.xml");
    let mut blocks = format!("<pause milliseconds=\"{wait_ms}\"/>\n");
    for (i, (key, pause)) in keys.iter().enumerate() {
        match how {
            Keys::Rtp => {
                let file = match key {
                    '#' => "dtmf_2833_pound".to_owned(),
                    '*' => "dtmf_2833_star".to_owned(),
                    // Not a key: about 7 s of speech (A-law).
                    'a' => "g711a".to_owned(),
                    d => format!("dtmf_2833_{d}"),
                };
                blocks.push_str(&format!(
                    "<nop><action><exec play_pcap_audio=\"pcap/{file}.pcap\"/></action></nop>\n"
                ));
            }
            Keys::Info => blocks.push_str(&format!(
                "<send><![CDATA[\n\
                 INFO sip:ivr@[remote_ip]:[remote_port] SIP/2.0\n\
                 Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n\
                 From: <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n\
                 To: <sip:ivr@[remote_ip]:[remote_port]>[peer_tag_param]\n\
                 Call-ID: [call_id]\n\
                 CSeq: {} INFO\n\
                 Max-Forwards: 70\n\
                 Content-Type: application/dtmf-relay\n\
                 Content-Length: [len]\n\
                 \n\
                 Signal={key}\n\
                 Duration=160\n\
                 ]]></send>\n\
                 <recv response=\"200\"/>\n",
                i + 2
            )),
        }
        blocks.push_str(&format!("<pause milliseconds=\"{pause}\"/>\n"));
    }
    let mut xml = template.replace("<!-- KEYS -->", &blocks);
    if let Some(port) = rtp_port {
        xml = xml.replace("m=audio [media_port]", &format!("m=audio {port}"));
    }
    let path = env.path(name);
    std::fs::write(&path, xml).expect("write scenario");
    path.to_string_lossy().into_owned()
}

/// `(key, pause)` for each key of `keys`, `pause` ms apart.
fn typed(keys: &str, pause: u64) -> Vec<(char, u64)> {
    keys.chars().map(|k| (k, pause)).collect()
}

/// Gives c1 (of `seed`) the account and a cold-water meter last read at 320.
async fn add_meter(api: &Api) -> i64 {
    api.post_ok(
        "/api/v1/consumers",
        &json!({"tenant": "t1", "external_id": "c1", "kind": "resident", "name": "Ivanova",
            "phones": [KNOWN_CALLER], "sites": ["a-1"], "account_number": ACCOUNT}),
    )
    .await;
    let meter = api
        .post_ok(
            "/api/v1/meters",
            &json!({"tenant": "t1", "consumer": "c1", "kind": "cold_water", "serial": "CW-00417",
                "last_value": 320, "monthly_increase": 6}),
        )
        .await;
    meter["id"].as_i64().expect("meter id")
}

/// The readings of the account once `n` are there.
async fn readings(api: &Api, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = api
            .get_all(&format!("/api/v1/meter-readings?account={ACCOUNT}"))
            .await;
        if items.len() >= n {
            return items;
        }
        assert!(Instant::now() < deadline, "readings: {items:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn no_outage_seed(api: &Api) {
    api.post_ok(
        "/api/v1/tenants",
        &json!({"external_id": "t1", "name": "Teplo", "kind": "supplier"}),
    )
    .await;
    for site in [
        json!({"tenant": "t1", "external_id": "rc-1", "kind": "residential_complex", "name": "RC 1"}),
        json!({"tenant": "t1", "external_id": "a-1", "parent": "rc-1", "kind": "apartment", "name": "A 1"}),
    ] {
        api.post_ok("/api/v1/sites", &site).await;
    }
}

#[tokio::test]
async fn a_known_caller_gives_a_meter_reading_by_rfc4733_and_it_shows_in_the_api() {
    let (env, hub, admin) = spawn_hub().await;
    no_outage_seed(&admin).await;
    let meter = add_meter(&admin).await;
    // Menu: 5. "Your account is 7 1 0 2": 1. The reading 324.5 and #. "You entered ...": 1.
    let mut keys = vec![('5', 1500), ('1', 1500)];
    keys.extend(typed("324*5", 400));
    keys.push(('#', 1500));
    keys.push(('1', 500));
    let scenario = keys_scenario(&env, "robot.xml", 1500, &keys, Keys::Rtp, None);
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", KNOWN_CALLER],
    )
    .await;

    let call = last_call(&admin).await;
    assert_eq!(call["digits"], "51324*5#1", "{call}");
    assert_eq!(call["outcome"], "completed", "the robot hung up: {call}");
    let items = readings(&admin, 1).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let r = &items[0];
    assert_eq!(r["value"], 324.5, "{r}");
    assert_eq!(r["meter_id"], meter, "{r}");
    assert_eq!(r["source"], "ivr", "{r}");
    assert_eq!(r["questioned"], false, "{r}");
    assert_eq!(r["call_id"], call["id"], "linked to the call: {r}");
    let by_call = admin
        .get_ok(&format!("/api/v1/meter-readings?call={}", call["id"]))
        .await;
    assert_eq!(by_call["items"].as_array().map(Vec::len), Some(1));
    let m = admin
        .get_ok(&format!("/api/v1/meters?account={ACCOUNT}"))
        .await;
    assert_eq!(m["items"][0]["last_value"], 324.5, "{m}");
    let viewer = {
        env.add_user("viewer", "viewer", &password_of("viewer"))
            .await;
        hub.login_as("viewer").await
    };
    viewer
        .get_ok(&format!("/api/v1/meter-readings?meter={meter}"))
        .await;
}

#[tokio::test]
async fn an_implausible_reading_is_questioned_and_only_the_confirmed_one_is_stored() {
    let (env, hub, admin) = spawn_hub().await;
    no_outage_seed(&admin).await;
    add_meter(&admin).await;
    // An unknown number: the account is typed. 290 is below 320: questioned; 2 re-enters 324.5.
    let mut keys = vec![('5', 1500)];
    keys.extend(typed("7102", 400));
    keys.push(('#', 1500));
    keys.extend(typed("290", 400));
    keys.push(('#', 1500));
    keys.push(('2', 1500));
    keys.extend(typed("324*5", 400));
    keys.push(('#', 1500));
    keys.push(('1', 500));
    let scenario = keys_scenario(&env, "doubt.xml", 1500, &keys, Keys::Rtp, None);
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", "unknown"],
    )
    .await;

    let call = last_call(&admin).await;
    assert!(call["consumer_id"].is_null(), "{call}");
    let items = readings(&admin, 1).await;
    let values: Vec<&Value> = items.iter().map(|r| &r["value"]).collect();
    assert_eq!(values, [&json!(324.5)], "290 was never stored");
    let log = hub.log();
    assert!(
        log.contains("meter reading questioned") && log.contains("290"),
        "the robot questioned 290:\n{log}"
    );
}

#[tokio::test]
async fn a_resident_in_an_outage_hears_the_announcement_then_gives_a_reading() {
    let (env, hub, admin) = spawn_hub().await;
    seed(&admin).await;
    add_meter(&admin).await;
    let media = UdpSocket::bind("127.0.0.1:0").await.expect("media socket");
    let rtp_port = media.local_addr().expect("media addr").port();
    let listener = tokio::spawn(collect_rtp(media));
    // The announcement (about 9 s, not interruptible), then the menu: 5, 1 (the offered account),
    // the reading, 1. Keys by SIP INFO: the test's socket is the caller's RTP endpoint.
    let mut keys = vec![('5', 1500), ('1', 1500)];
    keys.extend(typed("324*5", 300));
    keys.push(('#', 1500));
    keys.push(('1', 500));
    let scenario = keys_scenario(
        &env,
        "outage.xml",
        11_000,
        &keys,
        Keys::Info,
        Some(rtp_port),
    );
    let started = Instant::now();
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", KNOWN_CALLER],
    )
    .await;

    let seen = listener.await.expect("rtp listener");
    let announcement: Vec<_> = seen
        .iter()
        .filter(|s| s.0.duration_since(started) < Duration::from_secs(9))
        .collect();
    assert!(
        announcement.len() > 300,
        "the first 9 s are paced audio: {} packets",
        announcement.len()
    );
    let audible = announcement.iter().filter(|s| s.5).count();
    assert!(
        audible > 200,
        "the announcement is heard: {audible} audible frames"
    );
    let span = seen[seen.len() - 1].0 - seen[0].0;
    let mean = span.as_secs_f64() * 1000.0 / (seen.len() - 1) as f64;
    assert!(
        (18.0..=22.0).contains(&mean),
        "20 ms pacing: mean {mean:.2} ms"
    );
    for w in seen.windows(2) {
        assert_eq!(
            w[1].3,
            w[0].3.wrapping_add(1),
            "consecutive sequence numbers"
        );
    }

    let call = last_call(&admin).await;
    assert!(!call["site_id"].is_null(), "{call}");
    let items = readings(&admin, 1).await;
    assert_eq!(items[0]["value"], 324.5, "{items:?}");
    assert_eq!(items[0]["call_id"], call["id"]);
}

#[tokio::test]
async fn key_9_after_the_announcement_brings_an_sms_when_the_outage_is_closed() {
    let gateway = HttpStub::start().await.expect("sms stub");
    gateway.reply(200, r#"{"status":"accepted"}"#);
    let env = TestEnv::new().await;
    env.add_config(&format!(
        r#"
[channels.sms]
type = "http_sms"
url = "{sms}/send"
body = '{{"to": "{{phone}}", "text": "{{text}}"}}'
success_contains = "accepted"
"#,
        sms = gateway.url(),
    ));
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    seed(&admin).await;
    // The announcement ends with the offer; 9 during the menu that follows, then 0 (the dispatcher:
    // the hub says so and hangs up).
    let keys = [('9', 6000), ('0', 500)];
    let scenario = keys_scenario(&env, "notify.xml", 11_000, &keys, Keys::Rtp, None);
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", KNOWN_CALLER],
    )
    .await;
    let call = last_call(&admin).await;
    assert_eq!(call["digits"], "90", "{call}");
    assert_eq!(call["queue"], "dispatcher", "{call}");
    assert!(
        hub.log()
            .contains("caller subscribed to the end of the outage"),
        "{}",
        hub.log()
    );
    assert!(
        gateway.requests().is_empty(),
        "nothing before the outage is over"
    );

    let outages = admin.get_ok("/api/v1/outages").await;
    let outage = outages["items"][0]["id"].as_i64().expect("outage id");
    admin
        .post_ok(&format!("/api/v1/outages/{outage}/close"), &json!({}))
        .await;
    let requests = gateway
        .wait_for_requests(1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\nhub log:\n{}", hub.log()));
    let body: Value = serde_json::from_str(&requests[0].body).expect("json body");
    assert_eq!(body["to"], KNOWN_CALLER, "{body}");
    let text = body["text"].as_str().expect("text");
    assert!(text.contains("подача восстановлена"), "{text}");
    // Closing once more (or a restart's sweep) sends nothing again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gateway.requests().len(), 1, "one SMS");
}

/// A hub with `extra` in its `[telephony]` table (the harness's config ends with it) and an admin.
async fn hub_with(extra: &str) -> (TestEnv, crate::harness::Hub, Api) {
    let env = TestEnv::new().await;
    let mut toml = std::fs::read_to_string(&env.config).expect("hub.toml");
    assert!(toml.trim_end().lines().any(|l| l == "[telephony]"));
    toml.push_str(extra);
    std::fs::write(&env.config, toml).expect("hub.toml");
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    (env, hub, admin)
}

/// Root mean square of every other sample from `first` (0: left, 1: right) in `range` seconds.
fn rms(samples: &[i16], first: usize, range: std::ops::Range<f64>) -> f64 {
    let (from, to) = (
        (range.start * 8000.0) as usize,
        (range.end * 8000.0) as usize,
    );
    let picked: Vec<f64> = samples
        .iter()
        .skip(first)
        .step_by(2)
        .skip(from)
        .take(to - from)
        .map(|s| f64::from(*s))
        .collect();
    (picked.iter().map(|s| s * s).sum::<f64>() / picked.len().max(1) as f64).sqrt()
}

#[tokio::test]
async fn a_recorded_call_has_the_caller_left_and_the_prompt_right() {
    let (env, hub, admin) = hub_with("record = true\nrecordings_dir = \"recordings\"\n").await;
    // SIPp speaks (7 s of A-law from its pcap) over the menu, then 0: the hub hangs up.
    let keys = [('a', 8000), ('0', 500)];
    let scenario = keys_scenario(&env, "speech.xml", 500, &keys, Keys::Rtp, None);
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", "unknown"],
    )
    .await;
    let call = last_call(&admin).await;
    assert_eq!(call["digits"], "0", "{call}");
    let path = format!("/api/v1/calls/{}/recording", call["id"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let wav = loop {
        let res = admin
            .builder(reqwest::Method::GET, &path)
            .send()
            .await
            .expect("get recording");
        if res.status() == 200 {
            let kind = res.headers()["content-type"]
                .to_str()
                .unwrap_or_default()
                .to_owned();
            assert_eq!(kind, "audio/wav");
            break res.bytes().await.expect("wav bytes").to_vec();
        }
        assert!(Instant::now() < deadline, "no recording: {}", res.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).expect("a WAV file");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample"))
        .collect();
    let seconds = samples.len() as f64 / 2.0 / 8000.0;
    assert!(seconds > 8.0, "the whole call: {seconds:.1} s");
    let caller = rms(&samples, 0, 1.0..7.0);
    let hub_side = rms(&samples, 1, 0.5..6.5);
    assert!(
        caller > 300.0,
        "the caller's speech on the left: rms {caller:.0}"
    );
    assert!(
        hub_side > 300.0,
        "the menu prompt on the right: rms {hub_side:.0}"
    );
    let quiet = rms(&samples, 0, seconds - 0.8..seconds - 0.1);
    assert!(
        quiet < caller / 4.0,
        "silence after the caller stopped: {quiet:.0}"
    );
    let viewer = {
        env.add_user("viewer", "viewer", &password_of("viewer"))
            .await;
        hub.login_as("viewer").await
    };
    assert_eq!(viewer.get(&path).await.status.as_u16(), 403);
}

#[tokio::test]
async fn rtp_from_a_wrong_address_is_ignored_and_counted() {
    // One RTP port for the hub's calls, so the test knows where to send.
    let port = loop {
        let p = crate::telephony::free_udp_port();
        if p.is_multiple_of(2) && p < 65000 {
            break p;
        }
    };
    let (env, hub, admin) =
        hub_with(&format!("rtp_port_min = {port}\nrtp_port_max = {port}\n")).await;
    let intruder = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    let hub_rtp = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let send = tokio::spawn(async move {
        // Key 1 (accounting) as RFC 4733 end packets, from an address the caller did not offer.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for seq in 0u16..20 {
            let mut p = vec![0x80, 101, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 7];
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[5] = (seq / 4) as u8;
            p.extend_from_slice(&[1, 0x8a, 0x03, 0x20]);
            intruder.send_to(&p, hub_rtp).await.expect("send");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // The caller presses 3 (connection) later, from its own address.
    let keys = [('3', 500)];
    let scenario = keys_scenario(&env, "foreign.xml", 3000, &keys, Keys::Rtp, None);
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", "unknown"],
    )
    .await;
    send.await.expect("intruder");
    let call = last_call(&admin).await;
    assert_eq!(
        call["digits"], "3",
        "the intruder's keys are not taken: {call}"
    );
    assert_eq!(call["queue"], "connection", "{call}");
    let metrics = hub.anonymous().get("/metrics").await.text;
    let foreign: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hub_rtp_foreign_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no foreign rtp counter in\n{metrics}"));
    assert!(foreign >= 15, "counted: {foreign}");
    assert!(hub.log().contains("rtp from a wrong address ignored"));
}

#[tokio::test]
async fn a_peer_that_vanishes_is_ended_after_the_rtp_timeout() {
    let (env, hub, admin) = hub_with("rtp_timeout_s = 3\n").await;
    // No keys, no RTP, no BYE from the caller: the hub ends the call and SIPp answers its BYE.
    let started = Instant::now();
    let scenario = keys_scenario(&env, "vanish.xml", 0, &[], Keys::Rtp, None);
    sipp(
        &env,
        hub.sip_addr(),
        &scenario,
        &["-key", "caller", "unknown"],
    )
    .await;
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(8)).contains(&took),
        "ended after about 3 s: {took:?}"
    );
    let call = last_call(&admin).await;
    assert_eq!(call["outcome"], "media_timeout", "{call}");
}
