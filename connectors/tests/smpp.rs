//! The `smpp` channel against a real SMPP peer: the npm `smpp` package as an SMS centre
//! (`tests/smpp/server.js`, in a child process on a free port). What it decoded and logged is what
//! an operator's centre would see. Plus one in-process peer of our own that answers out of order,
//! for the matching of responses by sequence number.
//!
//! Skipped, with a message, only when there is no `node` at all; a missing npm package fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use connectors::channels::smpp::pdu::{self, Body, Pdu};
use connectors::channels::smpp::testing::{SmppServer, node_missing};
use connectors::channels::smpp::{BindMode, SmppChannel, SmppConfig};
use connectors::channels::{Channel, ChannelError, OutboundMessage, ReceiptState};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

const CYRILLIC: &str = "Плановое отключение горячего водоснабжения: ул. Ленина, 5 и 7, ул. Мира, 12. \
     С 10:00 до 18:00 12 июля. Приносим извинения за неудобства. Справки: 8 800 100-20-30.";

macro_rules! peer {
    ($($arg:expr),*) => {{
        if let Some(why) = node_missing() {
            eprintln!("skipped: {why}");
            return;
        }
        SmppServer::start(&[$($arg),*]).await.unwrap_or_else(|e| panic!("{e}"))
    }};
}

fn config(port: u16) -> SmppConfig {
    let mut c = SmppConfig::new("127.0.0.1", port, "hub", "secret");
    c.source_addr = "TEPLO".into();
    c.timeout_seconds = 3;
    c
}

fn sms(to: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        to: to.into(),
        subject: String::new(),
        text: text.into(),
    }
}

fn text_of(v: &Value) -> &str {
    v["text"].as_str().unwrap_or_else(|| panic!("no text: {v}"))
}

#[tokio::test]
async fn a_long_cyrillic_text_arrives_as_ucs2_parts_that_join_to_the_original() {
    let server = peer!();
    let channel = SmppChannel::new(config(server.port)).unwrap();
    let sent = channel
        .send(&sms("+7 900 111-22-33", CYRILLIC))
        .await
        .unwrap();
    let submits = server.wait_for("submit_sm", 3, WAIT).await.unwrap();
    assert_eq!(
        CYRILLIC.chars().count().div_ceil(67),
        3,
        "the text is meant to need three parts"
    );
    assert_eq!(submits.len(), 3);
    let ids: Vec<&str> = submits
        .iter()
        .map(|s| s["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(sent.message_ids, ids);
    let reference = &submits[0]["udh"]["ref"];
    let mut joined = String::new();
    for (i, s) in submits.iter().enumerate() {
        assert_eq!(s["data_coding"], 8, "{s}");
        assert_eq!(s["esm_class"].as_u64().unwrap() & 0x40, 0x40, "UDHI: {s}");
        assert_eq!(s["registered_delivery"], 1);
        assert_eq!(s["udh"]["ref"], *reference);
        assert_eq!(s["udh"]["total"], 3);
        assert_eq!(s["udh"]["seq"], i + 1);
        assert_eq!(s["destination_addr"], "79001112233");
        assert_eq!(
            (&s["dest_addr_ton"], &s["dest_addr_npi"]),
            (&1.into(), &1.into())
        );
        assert_eq!(s["source_addr"], "TEPLO");
        assert_eq!(
            (&s["source_addr_ton"], &s["source_addr_npi"]),
            (&5.into(), &0.into())
        );
        joined.push_str(text_of(s));
    }
    assert_eq!(text_of(&submits[0]).chars().count(), 67);
    assert_eq!(joined, CYRILLIC);
}

#[tokio::test]
async fn a_gsm_text_goes_as_data_coding_0_one_octet_per_character() {
    let server = peer!();
    let channel = SmppChannel::new(config(server.port)).unwrap();
    let text = "Hub: TP-3 pressure 2.1 bar [limit 3] @ 10:15, cost 5€";
    let sent = channel.send(&sms("+79001112233", text)).await.unwrap();
    assert_eq!(sent.message_ids.len(), 1);
    let s = &server.wait_for("submit_sm", 1, WAIT).await.unwrap()[0];
    assert_eq!(s["data_coding"], 0, "{s}");
    assert_eq!(s["udh"], Value::Null);
    assert_eq!(s["esm_class"], 0);
    assert_eq!(text_of(s), text);
    // Unpacked: one octet per septet, two for each of `[`, `]` and `€`.
    assert_eq!(s["sm_length"], text.chars().count() + 3);
    assert_eq!(sent.receipt, format!("message id {}", sent.message_ids[0]));
    // Nobody took the receipts: the centre's deliver_sm is answered at once, with ESME_ROK.
    let answers = server.wait_for("deliver_sm_resp", 1, WAIT).await.unwrap();
    assert_eq!(answers[0]["status"], 0, "{answers:?}");
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_bind_error_without_the_password() {
    let server = peer!("--password", "right");
    let mut c = config(server.port);
    c.password = connectors::Secret::new("wrong1");
    let channel = SmppChannel::new(c).unwrap();
    let e = channel
        .send(&sms("+79001112233", "test"))
        .await
        .unwrap_err();
    let shown = e.to_string();
    assert_eq!(
        shown,
        format!(
            "smpp gateway 127.0.0.1:{} unavailable: bind as transceiver `hub` refused: 0x0000000E invalid password (ESME_RINVPASWD)",
            server.port
        )
    );
    assert!(!shown.contains("wrong1"));
    let e = channel.healthcheck().await.unwrap_err();
    assert!(e.to_string().contains("invalid password"), "{e}");
    assert!(server.events_named("submit_sm").is_empty());
}

#[tokio::test]
async fn a_rejected_destination_is_a_clear_permanent_error() {
    let server = peer!("--reject", "7999=11");
    let channel = SmppChannel::new(config(server.port)).unwrap();
    let e = channel
        .send(&sms("+79990001122", "test"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        ChannelError::Rejected {
            gateway: format!("smpp gateway 127.0.0.1:{}", server.port),
            answer: "0x0000000B invalid destination address (ESME_RINVDSTADR)".into(),
        }
    );
    assert!(e.is_permanent());
    // The session is fine: the next message goes.
    channel.send(&sms("+79001112233", "ok")).await.unwrap();
    // A bad phone never reaches the centre.
    let e = channel.send(&sms("ivanov", "x")).await.unwrap_err();
    assert!(matches!(e, ChannelError::BadAddress { .. }), "{e}");
}

#[tokio::test]
async fn delivery_receipts_come_back_as_delivered_or_failed() {
    let server = peer!("--undeliverable", "7888");
    let channel = SmppChannel::new(config(server.port)).unwrap();
    let mut receipts = channel.take_receipts().expect("receipts");
    assert!(channel.take_receipts().is_none(), "taken once");
    let ok = channel.send(&sms("+79001112233", "one")).await.unwrap();
    let bad = channel.send(&sms("+78880001122", "two")).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, receipts.recv())
            .await
            .expect("a receipt in time")
            .expect("the stream is open");
        r.ack.send(()).unwrap();
        got.push(r.receipt);
    }
    got.sort_by_key(|r| r.message_id != ok.message_ids[0]);
    assert_eq!(got[0].message_id, ok.message_ids[0]);
    assert_eq!(got[0].state, ReceiptState::Delivered);
    assert_eq!(got[0].to, "79001112233");
    assert_eq!(got[1].message_id, bad.message_ids[0]);
    assert_eq!(got[1].state, ReceiptState::Failed);
    assert_eq!(got[1].detail, "stat:UNDELIV err:001");
    // Answered only after the ack, with ESME_ROK.
    let answers = server.wait_for("deliver_sm_resp", 2, WAIT).await.unwrap();
    assert!(answers.iter().all(|a| a["status"] == 0), "{answers:?}");

    // A receipt that is not acknowledged is asked for again (ESME_RX_T_APPN), not lost.
    channel.send(&sms("+79001112233", "three")).await.unwrap();
    let r = tokio::time::timeout(WAIT, receipts.recv())
        .await
        .unwrap()
        .unwrap();
    drop(r.ack);
    let answers = server.wait_for("deliver_sm_resp", 3, WAIT).await.unwrap();
    assert_eq!(answers[2]["status"], 0x64, "{answers:?}");
}

#[tokio::test]
async fn the_channel_reconnects_after_the_centre_restarts() {
    let mut server = peer!();
    let port = server.port;
    let channel = SmppChannel::new(config(port)).unwrap();
    channel.send(&sms("+79001112233", "before")).await.unwrap();
    server.kill().await;
    drop(server);
    // While it is down a message fails with a retryable error, quickly.
    let e = channel
        .send(&sms("+79001112233", "down"))
        .await
        .unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    let server = SmppServer::start_on(port, &[]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match channel.send(&sms("+79001112233", "after")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no reconnect within 20 s: {e}"
                );
                assert!(!e.is_permanent(), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let submits = server.wait_for("submit_sm", 1, WAIT).await.unwrap();
    assert_eq!(text_of(&submits[0]), "after");
    assert_eq!(server.events_named("bind").len(), 1);
}

#[tokio::test]
async fn a_slow_centre_times_out_and_the_window_caps_what_is_in_flight() {
    let server = peer!("--delay-ms", "300");
    let mut c = config(server.port);
    c.window = 2;
    c.timeout_seconds = 1;
    let channel = std::sync::Arc::new(SmppChannel::new(c).unwrap());
    let sends: Vec<_> = (0..6)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move { channel.send(&sms("+79001112233", &format!("m{i}"))).await })
        })
        .collect();
    for s in sends {
        s.await.unwrap().unwrap();
    }
    // Never more than two submit_sm unanswered at the centre.
    let mut outstanding = 0i32;
    let mut most = 0;
    for e in server.events() {
        match e["event"].as_str() {
            Some("submit_sm") => outstanding += 1,
            Some("submit_sm_resp") => outstanding -= 1,
            _ => {}
        }
        most = most.max(outstanding);
    }
    assert_eq!(most, 2);
    drop(channel);

    let slow = peer!("--delay-ms", "2500");
    let mut c = config(slow.port);
    c.timeout_seconds = 1;
    let channel = SmppChannel::new(c).unwrap();
    let e = channel
        .send(&sms("+79001112233", "late"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("smpp gateway 127.0.0.1:{}: no answer within 1 s", slow.port)
    );
    assert!(!e.is_permanent());
}

#[tokio::test]
async fn keep_alive_then_close_unbinds_and_a_transmitter_gets_no_receipts() {
    let server = peer!();
    let mut c = config(server.port);
    c.bind_mode = BindMode::Transmitter;
    c.enquire_link_seconds = 1;
    let channel = SmppChannel::new(c).unwrap();
    channel.healthcheck().await.unwrap();
    channel.send(&sms("+79001112233", "x")).await.unwrap();
    // The healthcheck's enquire_link, then a keep-alive.
    server.wait_for("enquire_link", 2, WAIT).await.unwrap();
    channel.close().await;
    let binds = server.wait_for("unbind", 1, WAIT).await.unwrap();
    assert_eq!(binds.len(), 1);
    assert_eq!(
        server.events_named("bind")[0]["command"],
        "bind_transmitter"
    );
    assert!(server.events_named("deliver_sm_resp").is_empty());
    let e = channel.send(&sms("+79001112233", "y")).await.unwrap_err();
    assert!(e.to_string().contains("closed"), "{e}");
}

/// An SMS centre of our own that binds anybody and answers every two submit_sm in reverse order,
/// with ids made of the text, so a mismatch shows.
async fn reversing_centre() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut held: Vec<(u32, String)> = Vec::new();
        loop {
            let pdu = loop {
                if let Some(len) = pdu::frame_len(&buf).unwrap()
                    && buf.len() >= len
                {
                    let frame: Vec<u8> = buf.drain(..len).collect();
                    break Pdu::decode(&frame).unwrap();
                }
                if sock.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
            };
            let reply = |body| Pdu {
                status: 0,
                sequence: pdu.sequence,
                body,
            };
            let out: Vec<Pdu> = match &pdu.body {
                Body::BindTransceiver(_) => vec![reply(Body::BindResp {
                    command_id: pdu::BIND_TRANSCEIVER | pdu::RESPONSE,
                    system_id: "rev".into(),
                    tlvs: vec![],
                })],
                Body::SubmitSm(sm) => {
                    held.push((
                        pdu.sequence,
                        String::from_utf8_lossy(&sm.short_message).into_owned(),
                    ));
                    if held.len() < 2 {
                        vec![]
                    } else {
                        held.drain(..)
                            .rev()
                            .map(|(sequence, text)| Pdu {
                                status: 0,
                                sequence,
                                body: Body::SubmitSmResp {
                                    message_id: format!("id-{text}"),
                                },
                            })
                            .collect()
                    }
                }
                Body::Unbind => vec![reply(Body::UnbindResp)],
                Body::EnquireLink => vec![reply(Body::EnquireLinkResp)],
                _ => vec![],
            };
            for p in out {
                sock.write_all(&p.encode()).await.unwrap();
            }
        }
    });
    port
}

#[tokio::test]
async fn answers_are_matched_to_submits_by_sequence_number() {
    let port = reversing_centre().await;
    let channel = std::sync::Arc::new(SmppChannel::new(config(port)).unwrap());
    let sends: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|t| {
            let channel = channel.clone();
            tokio::spawn(async move { (t, channel.send(&sms("+79001112233", t)).await) })
        })
        .collect();
    for s in sends {
        let (text, result) = s.await.unwrap();
        assert_eq!(result.unwrap().message_ids, vec![format!("id-{text}")]);
    }
}
