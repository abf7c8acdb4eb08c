//! The telephony core's second slice against real SIP peers (SIPp): outbound calls placed through
//! `POST /api/v1/calls` to SIPp playing the callee (answered with DTMF 1, busy, ringing until the
//! CANCEL, a trunk that challenges with 407), call events on the live stream, the registrar with digest
//! authentication (a registered phone then called as `account:NAME`, a wrong password refused), SIP
//! over TCP, and the inbound filter of `allow_unregistered = false`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Api, TestEnv, password_of, spawn_hub};
use crate::outages::next_event;
use crate::telephony::{free_udp_port, scenario, sipp};

/// A SIPp UAS (or a UAC that is called later) running `name` on a fresh port; the handle ends with the
/// scenario and panics with SIPp's errors if it failed.
pub(crate) struct Peer {
    pub(crate) port: u16,
    task: tokio::task::JoinHandle<(bool, String)>,
}

pub(crate) fn peer(env: &TestEnv, name: &str, extra: &[&str], remote: Option<SocketAddr>) -> Peer {
    let pcap = env.path("pcap");
    if !pcap.exists() {
        std::os::unix::fs::symlink("/usr/share/sip-tester", &pcap).expect("link pcap");
    }
    let (port, media_port) = (free_udp_port(), free_udp_port());
    let errors = env.path(&format!("{name}.{port}.errors.log"));
    let mut cmd = tokio::process::Command::new("sipp");
    cmd.current_dir(env.dir.path())
        .arg("-sf")
        .arg(scenario(name))
        .args(["-m", "1", "-nostdin", "-timeout", "40", "-trace_err"])
        .arg("-error_file")
        .arg(&errors)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mp", &media_port.to_string()])
        .args(extra)
        .kill_on_drop(true);
    if let Some(r) = remote {
        cmd.arg(r.to_string());
    }
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        let out = cmd.output().await.unwrap_or_else(|e| {
            panic!("cannot run sipp ({e}): install the Debian package sip-tester")
        });
        let report = format!(
            "sipp {name} ({}):\n{}\nerrors:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        (out.status.success(), report)
    });
    Peer { port, task }
}

impl Peer {
    fn uri(&self, user: &str) -> String {
        format!("sip:{user}@127.0.0.1:{}", self.port)
    }

    pub(crate) async fn succeeded(self) {
        let (ok, report) = self.task.await.expect("sipp task");
        assert!(ok, "{report}");
    }
}

/// The call record once it has ended.
async fn ended_call(api: &Api, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let call = api.get_ok(&format!("/api/v1/calls/{id}")).await;
        if !call["ended_at"].is_null() {
            return call;
        }
        assert!(Instant::now() < deadline, "call {id} did not end: {call}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn place(api: &Api, body: &Value) -> i64 {
    let res = api.post("/api/v1/calls", body).await;
    assert_eq!(res.status, 202, "{}", res.text);
    res.json()["id"].as_i64().expect("call id")
}

#[tokio::test]
async fn an_outbound_call_answered_with_1_is_confirmed_and_published() {
    let (env, _hub, admin) = spawn_hub().await;
    let mut stream = admin
        .builder(reqwest::Method::GET, "/api/v1/events/stream")
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("open event stream");
    let mut buf = String::new();
    let callee = peer(&env, "uas_dtmf.xml", &[], None);
    let id = place(
        &admin,
        &json!({"to": callee.uri("callee"), "text": "Авария на объекте. Нажмите 1, чтобы подтвердить.",
            "confirm_digits": "1", "purpose": "escalation", "repeat": 3}),
    )
    .await;
    let started = next_event(&mut stream, &mut buf, "call_started").await;
    assert_eq!(started["kind"]["id"], id, "{started}");
    assert_eq!(started["kind"]["direction"], "outbound", "{started}");
    assert_eq!(started["kind"]["purpose"], "escalation", "{started}");
    callee.succeeded().await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["direction"], "outbound", "{call}");
    assert_eq!(call["outcome"], "confirmed", "{call}");
    assert_eq!(call["detail"], "digit 1", "{call}");
    assert_eq!(call["digits"], "1", "{call}");
    assert_eq!(call["purpose"], "escalation", "{call}");
    assert!(!call["answered_at"].is_null(), "{call}");
    let ended = next_event(&mut stream, &mut buf, "call_ended").await;
    assert_eq!(ended["kind"]["id"], id, "{ended}");
    assert_eq!(ended["kind"]["outcome"], "confirmed", "{ended}");
    assert!(
        ended["kind"]["duration_s"].as_f64().expect("duration") > 0.5,
        "{ended}"
    );
}

#[tokio::test]
async fn a_busy_callee_is_busy_and_a_ringing_one_is_cancelled() {
    let (env, hub, admin) = spawn_hub().await;
    let busy = peer(&env, "uas_busy.xml", &[], None);
    let id = place(&admin, &json!({"to": busy.uri("b"), "text": "hello"})).await;
    busy.succeeded().await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["outcome"], "busy", "{call}");
    assert!(call["answered_at"].is_null(), "{call}");

    let ringing = peer(&env, "uas_ring.xml", &[], None);
    let t0 = Instant::now();
    let id = place(
        &admin,
        &json!({"to": ringing.uri("r"), "text": "hello", "ring_timeout_s": 5}),
    )
    .await;
    // The scenario itself checks the CANCEL, the 487 and our ACK.
    ringing.succeeded().await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["outcome"], "no_answer", "{call}");
    assert!(
        t0.elapsed() >= Duration::from_secs(5),
        "rang for the ring timeout"
    );
    assert!(hub.log().contains("cancelling"), "{}", hub.log());

    // Bad input: a clear 422 naming the field, no call.
    let res = admin
        .post("/api/v1/calls", &json!({"to": "not a number", "text": "x"}))
        .await;
    res.invalid("to");
    let res = admin
        .post("/api/v1/calls", &json!({"to": "+79160000001", "text": "x"}))
        .await;
    res.invalid("to");
    let res = admin
        .post(
            "/api/v1/calls",
            &json!({"to": busy_uri(), "text": "x", "confirm_digits": "x"}),
        )
        .await;
    res.invalid("confirm_digits");
}

fn busy_uri() -> String {
    "sip:nobody@127.0.0.1:9".into()
}

#[tokio::test]
async fn a_trunk_with_digest_authentication_and_one_line() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    env.add_user("disp", "dispatcher", &password_of("disp"))
        .await;
    env.add_user("eng", "engineer", &password_of("eng")).await;
    let trunk = peer(
        &env,
        "uas_auth.xml",
        &["-key", "password", "s3cret-trunk"],
        None,
    );
    env.add_config(&format!(
        "[telephony.trunks.provider]\nhost = \"127.0.0.1:{}\"\nusername = \"hub\"\npassword = \"s3cret-trunk\"\nfrom_user = \"74950000000\"\nlines = 1\n",
        trunk.port
    ));
    let hub = env.start(false).await;
    let disp = hub.login_as("disp").await;
    let id = place(
        &disp,
        &json!({"to": "8 (916) 123-45-67", "text": "Please press 1", "confirm_digits": "1", "language": "en"}),
    )
    .await;
    // One line: a second call meanwhile is refused clearly.
    let res = disp
        .post("/api/v1/calls", &json!({"to": "+79161234568", "text": "x"}))
        .await;
    assert_eq!(res.status, 409, "{}", res.text);
    assert!(res.text.contains("lines busy"), "{}", res.text);
    trunk.succeeded().await;
    let call = ended_call(&disp, id).await;
    assert_eq!(call["outcome"], "confirmed", "{call}");
    assert_eq!(call["to"], "8 (916) 123-45-67", "{call}");
    assert_eq!(call["from"], "74950000000", "{call}");
    assert!(
        !hub.log().contains("s3cret-trunk"),
        "the password is never logged"
    );
    let trunks = disp.get_ok("/api/v1/sip/trunks").await;
    assert_eq!(trunks[0]["name"], "provider", "{trunks}");
    assert_eq!(
        trunks[0]["lines_busy"], 0,
        "the line is free again: {trunks}"
    );
    // Engineers may not place calls.
    let eng = hub.login_as("eng").await;
    let res = eng
        .post("/api/v1/calls", &json!({"to": "+79161234568", "text": "x"}))
        .await;
    assert_eq!(res.status, 403, "{}", res.text);
}

#[tokio::test]
async fn a_phone_registers_with_digest_and_is_called_by_account_name() {
    let (env, hub, admin) = spawn_hub().await;
    env.add_user("olga", "operator", &password_of("olga")).await;
    let res = admin
        .post(
            "/api/v1/sip/accounts",
            &json!({"username": "op1", "password": "phone-pass-1", "user": "olga"}),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text);
    let res = admin
        .post(
            "/api/v1/sip/accounts",
            &json!({"username": "op2", "password": "phone-pass-2", "user": "admin"}),
        )
        .await;
    res.invalid("user");
    let accounts = admin.get_ok("/api/v1/sip/accounts").await;
    assert_eq!(accounts[0]["username"], "op1", "{accounts}");
    assert!(!accounts.to_string().contains("ha1"), "{accounts}");

    // A wrong password: 401, then 403; counted, and no registration.
    let bad = peer(
        &env,
        "register_bad.xml",
        &["-key", "user", "op1", "-au", "op1", "-ap", "wrong-pass"],
        Some(hub.sip_addr()),
    );
    bad.succeeded().await;
    assert_eq!(admin.get_ok("/api/v1/sip/registrations").await, json!([]));
    let metrics = hub.anonymous().get("/metrics").await.text;
    assert!(
        metrics.contains("hub_sip_auth_failures_total{reason=\"wrong_password\"} 1"),
        "{metrics}"
    );

    // The phone: one SIPp takes the call on the Contact's port, another registers it.
    let ringing_side = peer(&env, "uas_dtmf.xml", &[], None);
    let contact_port = ringing_side.port.to_string();
    let registering = peer(
        &env,
        "register.xml",
        &[
            "-key",
            "user",
            "op1",
            "-key",
            "contact_port",
            &contact_port,
            "-au",
            "op1",
            "-ap",
            "phone-pass-1",
        ],
        Some(hub.sip_addr()),
    );
    registering.succeeded().await;
    let regs = admin.get_ok("/api/v1/sip/registrations").await;
    assert_eq!(regs[0]["username"], "op1", "{regs}");
    assert_eq!(regs[0]["transport"], "udp", "{regs}");
    assert_eq!(regs[0]["user_agent"], "SIPp", "{regs}");
    assert_eq!(
        regs[0]["contact"],
        format!("sip:op1@127.0.0.1:{contact_port}"),
        "{regs}"
    );
    let id = place(
        &admin,
        &json!({"to": "account:op1", "text": "Вам звонок из очереди", "confirm_digits": "1"}),
    )
    .await;
    ringing_side.succeeded().await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["outcome"], "confirmed", "{call}");
    // Registrations survive a restart until they expire.
    let status = hub.terminate().await;
    assert!(status.success(), "{status}");
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    let regs = admin.get_ok("/api/v1/sip/registrations").await;
    assert_eq!(
        regs[0]["username"], "op1",
        "kept across the restart: {regs}"
    );
    // Unknown accounts fail clearly.
    let id = place(&admin, &json!({"to": "account:nobody", "text": "x"})).await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["outcome"], "failed", "{call}");
    assert_eq!(call["detail"], "account nobody is not registered", "{call}");
}

#[tokio::test]
async fn a_call_over_tcp_is_answered() {
    let (env, hub, admin) = spawn_hub().await;
    // Same port as UDP; SIPp connects over TCP and frames by Content-Length.
    sipp(
        &env,
        hub.sip_addr(),
        "call.xml",
        &[
            "-t",
            "t1",
            "-key",
            "caller",
            "+79160000001",
            "-key",
            "rtp_port",
            &free_udp_port().to_string(),
            "-d",
            "1500",
        ],
    )
    .await;
    let calls = admin.get_ok("/api/v1/calls").await;
    let call = &calls["items"][0];
    assert_eq!(call["direction"], "inbound", "{call}");
    assert!(!call["answered_at"].is_null(), "{call}");
}

#[tokio::test]
async fn an_unknown_address_is_refused_when_only_trunks_may_call() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    // The harness's hub.toml ends with `[telephony]`.
    env.add_config(
        "allow_unregistered = false\n\n[telephony.trunks.provider]\nhost = \"192.0.2.10:5060\"\ninbound_from = [\"192.0.2.0/24\"]\n",
    );
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    sipp(&env, hub.sip_addr(), "refused.xml", &[]).await;
    let calls = admin.get_ok("/api/v1/calls").await;
    assert_eq!(calls["items"], json!([]), "no call: {calls}");
    let metrics = hub.anonymous().get("/metrics").await.text;
    assert!(
        metrics.contains("hub_sip_refused_total{reason=\"source\"}"),
        "{metrics}"
    );
}

/// The next request of `method` that reaches `sock` (retransmissions of earlier ones are skipped by
/// CSeq).
async fn next_request(
    sock: &tokio::net::UdpSocket,
    method: hub::telephony::sip::Method,
    min_cseq: u32,
) -> (hub::telephony::sip::Request, SocketAddr) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(20), sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {method} within 20 s"))
            .expect("recv");
        if let Ok(hub::telephony::sip::Message::Request(r)) = hub::telephony::sip::parse(&buf[..n])
            && r.method == method
            && r.common.cseq.seq >= min_cseq
        {
            return (r, from);
        }
    }
}

#[tokio::test]
async fn a_proxy_challenge_407_is_answered_with_proxy_authorization() {
    use hub::telephony::digest::{Credentials, ha1};
    use hub::telephony::sip::{Method, Response};
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    // A tiny trunk played by the test: 407, then it checks the credentials and says busy.
    let trunk = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("trunk socket");
    env.add_config(&format!(
        "[telephony.trunks.provider]\nhost = \"127.0.0.1:{}\"\ndomain = \"trunk.test\"\nusername = \"hub\"\npassword = \"pr0xy-pass\"\n",
        trunk.local_addr().expect("addr").port()
    ));
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    let id = place(&admin, &json!({"to": "+79161234567", "text": "hello"})).await;

    let (invite, from) = next_request(&trunk, Method::Invite, 1).await;
    assert_eq!(invite.uri.to_string(), "sip:+79161234567@trunk.test");
    assert!(invite.header("Proxy-Authorization").is_none());
    let challenge = Response::to_request(&invite, 407, "Proxy Authentication Required", Some("t1"))
        .with_header(
            "Proxy-Authenticate",
            "Digest realm=\"trunk.test\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5",
        );
    trunk
        .send_to(&challenge.to_bytes(), from)
        .await
        .expect("send 407");
    let (ack, _) = next_request(&trunk, Method::Ack, 1).await;
    assert_eq!(
        ack.common.via[0].branch(),
        invite.common.via[0].branch(),
        "ACK in the INVITE's transaction"
    );
    let (again, from) = next_request(&trunk, Method::Invite, 2).await;
    let creds = again
        .header("Proxy-Authorization")
        .and_then(Credentials::parse)
        .expect("Proxy-Authorization with digest credentials");
    assert_eq!(
        (creds.username.as_str(), creds.nonce.as_str()),
        ("hub", "abc123")
    );
    assert!(
        creds.verify(&ha1("hub", "trunk.test", "pr0xy-pass"), "INVITE"),
        "the response matches the password"
    );
    let busy = Response::to_request(&again, 486, "Busy Here", Some("t2"));
    trunk
        .send_to(&busy.to_bytes(), from)
        .await
        .expect("send 486");
    next_request(&trunk, Method::Ack, 2).await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["outcome"], "busy", "{call}");
}

#[tokio::test]
async fn a_trunk_with_register_registers_with_digest_credentials() {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    let registrar = peer(
        &env,
        "uas_registrar.xml",
        &["-key", "password", "reg-s3cret"],
        None,
    );
    env.add_config(&format!(
        "[telephony.trunks.provider]\nhost = \"127.0.0.1:{}\"\nusername = \"hub\"\npassword = \"reg-s3cret\"\nregister = true\nregister_expires = 300\n",
        registrar.port
    ));
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    registrar.succeeded().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let trunk = loop {
        let trunks = admin.get_ok("/api/v1/sip/trunks").await;
        if trunks[0]["registration"] == "registered" {
            break trunks[0].clone();
        }
        assert!(Instant::now() < deadline, "not registered: {trunks}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(trunk["register"], true, "{trunk}");
    assert!(!trunk["registered_until"].is_null(), "{trunk}");
    assert!(
        hub.log().contains("registered with the trunk"),
        "{}",
        hub.log()
    );
    assert!(
        !hub.log().contains("reg-s3cret"),
        "the password is never logged"
    );
}

#[tokio::test]
async fn a_greeting_that_talks_on_is_an_answering_machine() {
    let (env, _hub, admin) = spawn_hub().await;
    let voicemail = peer(&env, "uas_machine.xml", &[], None);
    let id = place(
        &admin,
        &json!({"to": voicemail.uri("vm"), "text": "Здравствуйте. Это сообщение об отключении горячей воды по вашему адресу.", "repeat": 2, "language": "ru"}),
    )
    .await;
    voicemail.succeeded().await;
    let call = ended_call(&admin, id).await;
    assert_eq!(call["outcome"], "answering_machine", "{call}");
}
