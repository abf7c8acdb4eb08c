//! Outbound calls (the hub as a SIP UAC): what a caller of `Telephony::originate` asks for
//! (`OutboundCall`), what it gets back (`OutboundResult`, `Outcome`), the progress it may watch while
//! the call runs (`CallProgress`), and the SIP requests the core sends for it (INVITE with our SDP
//! offer, ACK, CANCEL, BYE). The call's state machine lives in the core with the other calls.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};

use super::sip::{
    BRANCH_COOKIE, CSeq, Common, Header, Method, NameAddr, OutRequest, Params, Uri, Via,
};

/// What to say on an outbound call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Playback {
    /// Text spoken by the speech program in the call's language (cached like the IVR's prompts).
    Text(String),
    /// A WAV file (any rate; converted).
    Wav(PathBuf),
}

/// A call for the hub to place.
#[derive(Debug, Clone)]
pub struct OutboundCall {
    /// A phone number (sent through a trunk), `sip:user@host[:port]` (dialled directly), or
    /// `account:NAME` (the phone registered with the hub under that SIP account).
    pub to: String,
    /// The trunk for a phone number; `None`: `[telephony] default_trunk`, else the first trunk by name.
    pub trunk: Option<String>,
    /// Why the call is made: `campaign`, `escalation`, `callback`, ... (recorded, published on the bus).
    pub purpose: String,
    /// External id of the tenant the call is made for, if any.
    pub tenant: Option<String>,
    /// `ru` or `en`: the voice of `Playback::Text`.
    pub language: String,
    pub play: Playback,
    /// Times the message is played (at least 1).
    pub repeat: u32,
    /// Digits that confirm (e.g. `"1"`): the first one pressed ends the call as `Confirmed`. Empty: none.
    pub confirm_digits: String,
    /// Ringing longer than this: CANCEL, `NoAnswer`.
    pub ring_timeout: Duration,
    /// An answered call is ended by the hub after this long.
    pub max_duration: Duration,
    /// How long to wait for a free line of the trunk; zero: fail at once when all are busy.
    pub line_wait: Duration,
}

impl OutboundCall {
    /// A call with the usual timings: 30 s of ringing, 2 minutes at most, played twice.
    pub fn new(to: impl Into<String>, purpose: impl Into<String>, play: Playback) -> Self {
        Self {
            to: to.into(),
            trunk: None,
            purpose: purpose.into(),
            tenant: None,
            language: "ru".into(),
            play,
            repeat: 2,
            confirm_digits: String::new(),
            ring_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(120),
            line_wait: Duration::ZERO,
        }
    }
}

/// How an outbound call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Answered, and one of `confirm_digits` was pressed.
    Confirmed { digit: char },
    /// Answered by a person (as far as the heuristic tells), no confirming digit.
    Answered,
    /// Answered, and the answer sounded like a recorded greeting (see `amd`).
    AnsweringMachine,
    /// 486 Busy Here or 600 Busy Everywhere.
    Busy,
    /// Rang for `ring_timeout` without an answer: cancelled.
    NoAnswer,
    /// Another 4xx-6xx final response.
    Rejected { code: u16 },
    /// No response (timer B), a transport error, no usable SDP, the hub stopping, ...
    Failed { reason: String },
}

impl Outcome {
    /// The `calls.outcome` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Confirmed { .. } => "confirmed",
            Outcome::Answered => "answered",
            Outcome::AnsweringMachine => "answering_machine",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed { .. } => "failed",
        }
    }

    /// The `calls.detail` value: the digit, the SIP code or the reason.
    pub fn detail(&self) -> Option<String> {
        match self {
            Outcome::Confirmed { digit } => Some(format!("digit {digit}")),
            Outcome::Rejected { code } => Some(format!("sip {code}")),
            Outcome::Failed { reason } => Some(reason.clone()),
            _ => None,
        }
    }
}

/// The end of an outbound call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OutboundResult {
    /// The call record (`GET /api/v1/calls/{id}`).
    pub id: i64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Where an outbound call is, as `PlacedCall::progress` shows it while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Dialing,
    Ringing,
    Answered,
    Ended,
}

/// The latest state, and the first confirming digit as soon as it is pressed (before the call ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallProgress {
    pub state: CallState,
    pub digit: Option<char>,
}

/// A call the core is placing: its record id at once, its progress while it runs, its result at the end.
#[derive(Debug)]
pub struct PlacedCall {
    pub id: i64,
    pub progress: watch::Receiver<CallProgress>,
    pub(super) result: oneshot::Receiver<Outcome>,
}

impl PlacedCall {
    /// Waits for the end of the call.
    pub async fn finish(self) -> OutboundResult {
        let outcome = self.result.await.unwrap_or_else(|_| Outcome::Failed {
            reason: "the telephony core stopped".into(),
        });
        OutboundResult {
            id: self.id,
            outcome,
        }
    }
}

/// Where the core sends an outbound INVITE.
#[derive(Debug, Clone)]
pub enum Target {
    /// A resolved address with the request URI (a trunk or a `sip:` URI).
    Addr {
        dest: SocketAddr,
        uri: Uri,
        /// The trunk's name, for credentials and the From user.
        trunk: Option<String>,
    },
    /// A phone registered with the hub: the core knows its contact.
    Account(String),
}

/// What the handle gives the core for a new outbound call.
#[derive(Debug)]
pub struct Dial {
    pub record_id: i64,
    /// The SIP Call-ID (already in the call record).
    pub call_id: String,
    pub call: OutboundCall,
    pub target: Target,
    pub progress: watch::Sender<CallProgress>,
    pub done: oneshot::Sender<Outcome>,
    /// The trunk line held for the length of the call.
    pub line: Option<OwnedSemaphorePermit>,
}

/// Our SDP offer: PCMU, PCMA and telephone-event 101 on `port`.
pub fn offer(local: IpAddr, port: u16, session_id: u64) -> String {
    let ip = match local {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    format!(
        "v=0\r\no=hub {session_id} {session_id} IN {ip} {local}\r\ns=hub\r\nc=IN {ip} {local}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// A fresh RFC 3261 branch.
pub fn branch(token: &str) -> String {
    format!("{BRANCH_COOKIE}{token}")
}

/// The parts of a dialog a request from our side is built from.
#[derive(Debug, Clone)]
pub struct DialogSide {
    pub call_id: String,
    pub from: NameAddr,
    pub to: NameAddr,
    /// Our Via sent-by.
    pub via_host: String,
    pub via_port: u16,
    pub transport: &'static str,
}

/// A request in (or creating) a dialog, with a new Via branch unless `branch` is given.
pub fn request(
    side: &DialogSide,
    method: Method,
    uri: &str,
    seq: u32,
    branch_id: String,
    headers: Vec<Header>,
) -> OutRequest {
    let mut params = Params::default();
    params.set("branch", Some(branch_id));
    params.set("rport", None);
    OutRequest {
        method: method.clone(),
        uri: uri.to_owned(),
        common: Common {
            via: vec![Via {
                transport: side.transport.into(),
                host: side.via_host.clone(),
                port: Some(side.via_port),
                params,
            }],
            from: side.from.clone(),
            to: side.to.clone(),
            call_id: side.call_id.clone(),
            cseq: CSeq { seq, method },
            max_forwards: Some(70),
            contact: None,
            content_type: None,
        },
        headers,
        body: Vec::new(),
    }
}

/// `sip:user@host:port` as a URI, for To and the request line; `None` if the parts do not make one.
pub fn sip_uri(user: Option<&str>, host: &str, port: Option<u16>) -> Option<Uri> {
    let mut text = String::from("sip:");
    if let Some(u) = user {
        text.push_str(u);
        text.push('@');
    }
    text.push_str(host);
    if let Some(p) = port {
        text.push_str(&format!(":{p}"));
    }
    Uri::parse(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::sdp;

    #[test]
    fn our_offer_parses_as_pcmu_with_events() {
        let o = sdp::parse_offer(offer("10.0.0.1".parse().unwrap(), 20002, 1).as_bytes()).unwrap();
        assert_eq!(o.remote, "10.0.0.1:20002".parse().unwrap());
        assert_eq!(o.dtmf_pt, Some(101));
    }

    #[test]
    fn outcomes_have_record_names() {
        assert_eq!(Outcome::Confirmed { digit: '1' }.as_str(), "confirmed");
        assert_eq!(
            Outcome::Rejected { code: 404 }.detail().as_deref(),
            Some("sip 404")
        );
        let r = OutboundResult {
            id: 3,
            outcome: Outcome::Confirmed { digit: '1' },
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"id": 3, "outcome": "confirmed", "digit": "1"})
        );
    }
}
