//! SMPP 3.4 protocol data units: the bytes on the wire between the hub and an SMS centre. Only what
//! an ESME that submits messages and takes delivery receipts needs is decoded into fields (binds,
//! submit_sm, deliver_sm, enquire_link, unbind, generic_nack and their responses); any other command
//! is kept as its raw body so the session can answer it with `generic_nack`.
//!
//! Decoding never panics and never trusts a length: every read is checked against the frame, and a
//! frame longer than [`MAX_PDU_LEN`] is refused before a byte of it is buffered.

/// Longest PDU accepted from a peer. A submit_sm or deliver_sm is at most about 500 bytes; TLVs such
/// as `message_payload` may be longer, but nothing the hub takes needs more.
pub const MAX_PDU_LEN: u32 = 64 * 1024;
/// The header: command_length, command_id, command_status, sequence_number.
pub const HEADER_LEN: usize = 16;
/// `interface_version` of a bind: SMPP 3.4.
pub const INTERFACE_VERSION: u8 = 0x34;

pub const GENERIC_NACK: u32 = 0x8000_0000;
pub const BIND_RECEIVER: u32 = 0x0000_0001;
pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
pub const SUBMIT_SM: u32 = 0x0000_0004;
pub const DELIVER_SM: u32 = 0x0000_0005;
pub const UNBIND: u32 = 0x0000_0006;
pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
pub const ENQUIRE_LINK: u32 = 0x0000_0015;
/// Set on the command_id of every response.
pub const RESPONSE: u32 = 0x8000_0000;

/// esm_class: the short message starts with a user data header.
pub const ESM_UDHI: u8 = 0x40;
/// esm_class bits 2-5: the message type.
pub const ESM_TYPE_MASK: u8 = 0x3C;
/// esm_class message type of an SMSC delivery receipt.
pub const ESM_DELIVERY_RECEIPT: u8 = 0x04;
/// esm_class message type of an intermediate delivery notification.
pub const ESM_INTERMEDIATE: u8 = 0x20;

/// TLV tags the hub reads.
pub const TLV_RECEIPTED_MESSAGE_ID: u16 = 0x001E;
pub const TLV_MESSAGE_STATE: u16 = 0x0427;
pub const TLV_NETWORK_ERROR_CODE: u16 = 0x0423;

/// Why bytes are not a PDU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("command_length {0} is out of range (16 to {MAX_PDU_LEN})")]
    Length(u32),
    #[error("command_length says {said} bytes but the frame has {got}")]
    FrameSize { said: u32, got: usize },
    #[error("{command}: truncated at `{field}`")]
    Truncated {
        command: &'static str,
        field: &'static str,
    },
    #[error("{command}: `{field}` has no terminating NUL")]
    Unterminated {
        command: &'static str,
        field: &'static str,
    },
}

/// A source or destination address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// Type of number: 0 unknown, 1 international, 3 network specific, 5 alphanumeric.
    pub ton: u8,
    /// Numbering plan indicator: 0 unknown, 1 ISDN (E.164).
    pub npi: u8,
    pub addr: String,
}

/// One optional parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv {
    pub tag: u16,
    pub value: Vec<u8>,
}

/// The body of a bind_transmitter, bind_receiver or bind_transceiver.
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    pub interface_version: u8,
    pub address_range: Address,
}

/// The password is a secret: a bind printed for debugging never shows it.
impl std::fmt::Debug for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bind")
            .field("system_id", &self.system_id)
            .field("password", &"***")
            .field("system_type", &self.system_type)
            .field("interface_version", &self.interface_version)
            .field("address_range", &self.address_range)
            .finish()
    }
}

/// The body of a submit_sm or a deliver_sm (the same fields in the same order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShortMessage {
    pub service_type: String,
    pub source: Address,
    pub dest: Address,
    pub esm_class: u8,
    pub protocol_id: u8,
    pub priority_flag: u8,
    pub schedule_delivery_time: String,
    pub validity_period: String,
    pub registered_delivery: u8,
    pub replace_if_present: u8,
    pub data_coding: u8,
    pub sm_default_msg_id: u8,
    /// At most 254 octets on the wire (sm_length is one octet).
    pub short_message: Vec<u8>,
    pub tlvs: Vec<Tlv>,
}

impl ShortMessage {
    /// The value of an optional parameter.
    pub fn tlv(&self, tag: u16) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.value.as_slice())
    }

    /// True for a delivery receipt or an intermediate notification (not a message from a person).
    pub fn is_receipt(&self) -> bool {
        matches!(
            self.esm_class & ESM_TYPE_MASK,
            ESM_DELIVERY_RECEIPT | ESM_INTERMEDIATE
        )
    }
}

/// What a PDU carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    BindReceiver(Bind),
    BindTransmitter(Bind),
    BindTransceiver(Bind),
    /// A bind response of any of the three kinds (`command_id` tells which); the body is empty when
    /// the bind was refused.
    BindResp {
        command_id: u32,
        system_id: String,
        tlvs: Vec<Tlv>,
    },
    SubmitSm(ShortMessage),
    SubmitSmResp {
        message_id: String,
    },
    DeliverSm(ShortMessage),
    DeliverSmResp {
        message_id: String,
    },
    EnquireLink,
    EnquireLinkResp,
    Unbind,
    UnbindResp,
    GenericNack,
    /// Any other command, body kept as it came.
    Other {
        command_id: u32,
        body: Vec<u8>,
    },
}

impl Body {
    pub fn command_id(&self) -> u32 {
        match self {
            Body::BindReceiver(_) => BIND_RECEIVER,
            Body::BindTransmitter(_) => BIND_TRANSMITTER,
            Body::BindTransceiver(_) => BIND_TRANSCEIVER,
            Body::BindResp { command_id, .. } => *command_id,
            Body::SubmitSm(_) => SUBMIT_SM,
            Body::SubmitSmResp { .. } => SUBMIT_SM | RESPONSE,
            Body::DeliverSm(_) => DELIVER_SM,
            Body::DeliverSmResp { .. } => DELIVER_SM | RESPONSE,
            Body::EnquireLink => ENQUIRE_LINK,
            Body::EnquireLinkResp => ENQUIRE_LINK | RESPONSE,
            Body::Unbind => UNBIND,
            Body::UnbindResp => UNBIND | RESPONSE,
            Body::GenericNack => GENERIC_NACK,
            Body::Other { command_id, .. } => *command_id,
        }
    }
}

/// One PDU: header fields and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub status: u32,
    pub sequence: u32,
    pub body: Body,
}

/// The name of a command, for logs and errors.
pub fn command_name(command_id: u32) -> &'static str {
    match command_id {
        GENERIC_NACK => "generic_nack",
        BIND_RECEIVER => "bind_receiver",
        BIND_TRANSMITTER => "bind_transmitter",
        BIND_TRANSCEIVER => "bind_transceiver",
        0x8000_0001 => "bind_receiver_resp",
        0x8000_0002 => "bind_transmitter_resp",
        0x8000_0009 => "bind_transceiver_resp",
        SUBMIT_SM => "submit_sm",
        0x8000_0004 => "submit_sm_resp",
        DELIVER_SM => "deliver_sm",
        0x8000_0005 => "deliver_sm_resp",
        UNBIND => "unbind",
        0x8000_0006 => "unbind_resp",
        ENQUIRE_LINK => "enquire_link",
        0x8000_0015 => "enquire_link_resp",
        0x0000_0003 => "query_sm",
        0x0000_0008 => "replace_sm",
        0x0000_000B => "outbind",
        0x0000_0021 => "submit_multi",
        0x0000_0102 => "alert_notification",
        0x0000_0103 => "data_sm",
        _ => "unknown command",
    }
}

/// The length of the first PDU in `buf`: `Ok(None)` until its header has arrived. An impossible
/// length is an error: the stream cannot be resynchronised and the connection must be closed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, PduError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if !(HEADER_LEN as u32..=MAX_PDU_LEN).contains(&len) {
        return Err(PduError::Length(len));
    }
    Ok(Some(len as usize))
}

/// Reads fields off a body, every read checked.
struct Reader<'a> {
    command: &'static str,
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.buf.len()
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, PduError> {
        let b = *self.buf.get(self.at).ok_or(PduError::Truncated {
            command: self.command,
            field,
        })?;
        self.at += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], PduError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(PduError::Truncated {
            command: self.command,
            field,
        })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// A C-Octet String: text up to a NUL, which is consumed. Not UTF-8 in theory (ASCII); anything
    /// else is kept readable rather than refused.
    fn cstr(&mut self, field: &'static str) -> Result<String, PduError> {
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(PduError::Unterminated {
                command: self.command,
                field,
            })?;
        let s = String::from_utf8_lossy(&rest[..nul]).into_owned();
        self.at += nul + 1;
        Ok(s)
    }

    /// A C-string that a refused response may leave out altogether.
    fn cstr_or_empty(&mut self, field: &'static str) -> Result<String, PduError> {
        if self.done() {
            Ok(String::new())
        } else {
            self.cstr(field)
        }
    }

    fn address(&mut self, prefix: Field3) -> Result<Address, PduError> {
        Ok(Address {
            ton: self.u8(prefix.0)?,
            npi: self.u8(prefix.1)?,
            addr: self.cstr(prefix.2)?,
        })
    }

    fn tlvs(&mut self) -> Result<Vec<Tlv>, PduError> {
        let mut out = Vec::new();
        while !self.done() {
            let head = self.bytes(4, "tlv header")?;
            let tag = u16::from_be_bytes([head[0], head[1]]);
            let len = u16::from_be_bytes([head[2], head[3]]);
            let value = self.bytes(usize::from(len), "tlv value")?.to_vec();
            out.push(Tlv { tag, value });
        }
        Ok(out)
    }
}

/// Names of the three fields of an address, for errors.
type Field3 = (&'static str, &'static str, &'static str);

const SOURCE: Field3 = ("source_addr_ton", "source_addr_npi", "source_addr");
const DEST: Field3 = ("dest_addr_ton", "dest_addr_npi", "destination_addr");
const RANGE: Field3 = ("addr_ton", "addr_npi", "address_range");

fn decode_bind(r: &mut Reader<'_>) -> Result<Bind, PduError> {
    Ok(Bind {
        system_id: r.cstr("system_id")?,
        password: r.cstr("password")?,
        system_type: r.cstr("system_type")?,
        interface_version: r.u8("interface_version")?,
        address_range: r.address(RANGE)?,
    })
}

fn decode_sm(r: &mut Reader<'_>) -> Result<ShortMessage, PduError> {
    let mut sm = ShortMessage {
        service_type: r.cstr("service_type")?,
        source: r.address(SOURCE)?,
        dest: r.address(DEST)?,
        esm_class: r.u8("esm_class")?,
        protocol_id: r.u8("protocol_id")?,
        priority_flag: r.u8("priority_flag")?,
        schedule_delivery_time: r.cstr("schedule_delivery_time")?,
        validity_period: r.cstr("validity_period")?,
        registered_delivery: r.u8("registered_delivery")?,
        replace_if_present: r.u8("replace_if_present_flag")?,
        data_coding: r.u8("data_coding")?,
        sm_default_msg_id: r.u8("sm_default_msg_id")?,
        ..ShortMessage::default()
    };
    let len = r.u8("sm_length")?;
    sm.short_message = r.bytes(usize::from(len), "short_message")?.to_vec();
    sm.tlvs = r.tlvs()?;
    Ok(sm)
}

impl Pdu {
    /// Decodes one whole frame (as [`frame_len`] cut it).
    pub fn decode(frame: &[u8]) -> Result<Pdu, PduError> {
        let Some(len) = frame_len(frame)? else {
            return Err(PduError::FrameSize {
                said: 0,
                got: frame.len(),
            });
        };
        if frame.len() != len {
            return Err(PduError::FrameSize {
                said: len as u32,
                got: frame.len(),
            });
        }
        let word =
            |i: usize| u32::from_be_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        let (command_id, status, sequence) = (word(4), word(8), word(12));
        let mut r = Reader {
            command: command_name(command_id),
            buf: &frame[HEADER_LEN..],
            at: 0,
        };
        let body = match command_id {
            BIND_RECEIVER => Body::BindReceiver(decode_bind(&mut r)?),
            BIND_TRANSMITTER => Body::BindTransmitter(decode_bind(&mut r)?),
            BIND_TRANSCEIVER => Body::BindTransceiver(decode_bind(&mut r)?),
            0x8000_0001 | 0x8000_0002 | 0x8000_0009 => Body::BindResp {
                command_id,
                system_id: r.cstr_or_empty("system_id")?,
                tlvs: r.tlvs()?,
            },
            SUBMIT_SM => Body::SubmitSm(decode_sm(&mut r)?),
            DELIVER_SM => Body::DeliverSm(decode_sm(&mut r)?),
            0x8000_0004 => Body::SubmitSmResp {
                message_id: r.cstr_or_empty("message_id")?,
            },
            0x8000_0005 => Body::DeliverSmResp {
                message_id: r.cstr_or_empty("message_id")?,
            },
            ENQUIRE_LINK => Body::EnquireLink,
            0x8000_0015 => Body::EnquireLinkResp,
            UNBIND => Body::Unbind,
            0x8000_0006 => Body::UnbindResp,
            GENERIC_NACK => Body::GenericNack,
            _ => Body::Other {
                command_id,
                body: frame[HEADER_LEN..].to_vec(),
            },
        };
        Ok(Pdu {
            status,
            sequence,
            body,
        })
    }

    /// The PDU on the wire. Field lengths are the caller's business (the channel checks them when
    /// it is configured and when it splits a text); here nothing is cut.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.body.command_id().to_be_bytes());
        out.extend_from_slice(&self.status.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        match &self.body {
            Body::BindReceiver(b) | Body::BindTransmitter(b) | Body::BindTransceiver(b) => {
                cstr(&mut out, &b.system_id);
                cstr(&mut out, &b.password);
                cstr(&mut out, &b.system_type);
                out.push(b.interface_version);
                address(&mut out, &b.address_range);
            }
            Body::BindResp {
                system_id, tlvs, ..
            } => {
                cstr(&mut out, system_id);
                write_tlvs(&mut out, tlvs);
            }
            Body::SubmitSm(sm) | Body::DeliverSm(sm) => {
                cstr(&mut out, &sm.service_type);
                address(&mut out, &sm.source);
                address(&mut out, &sm.dest);
                out.push(sm.esm_class);
                out.push(sm.protocol_id);
                out.push(sm.priority_flag);
                cstr(&mut out, &sm.schedule_delivery_time);
                cstr(&mut out, &sm.validity_period);
                out.push(sm.registered_delivery);
                out.push(sm.replace_if_present);
                out.push(sm.data_coding);
                out.push(sm.sm_default_msg_id);
                // sm_length is one octet: a longer text was split before it got here.
                let text = &sm.short_message[..sm.short_message.len().min(255)];
                out.push(text.len() as u8);
                out.extend_from_slice(text);
                write_tlvs(&mut out, &sm.tlvs);
            }
            Body::SubmitSmResp { message_id } | Body::DeliverSmResp { message_id } => {
                cstr(&mut out, message_id);
            }
            Body::EnquireLink
            | Body::EnquireLinkResp
            | Body::Unbind
            | Body::UnbindResp
            | Body::GenericNack => {}
            Body::Other { body, .. } => out.extend_from_slice(body),
        }
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// A C-Octet String: the text, without any NUL it may hold (which would end it early), then a NUL.
fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|b| *b != 0));
    out.push(0);
}

fn address(out: &mut Vec<u8>, a: &Address) {
    out.push(a.ton);
    out.push(a.npi);
    cstr(out, &a.addr);
}

fn write_tlvs(out: &mut Vec<u8>, tlvs: &[Tlv]) {
    for t in tlvs {
        let value = &t.value[..t.value.len().min(usize::from(u16::MAX))];
        out.extend_from_slice(&t.tag.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
}

/// Name and meaning of a command_status, as SMPP 3.4 section 5.1.3 gives them.
pub fn status_text(status: u32) -> (&'static str, &'static str) {
    match status {
        0x00 => ("ESME_ROK", "ok"),
        0x01 => ("ESME_RINVMSGLEN", "message length is invalid"),
        0x02 => ("ESME_RINVCMDLEN", "command length is invalid"),
        0x03 => ("ESME_RINVCMDID", "invalid command id"),
        0x04 => ("ESME_RINVBNDSTS", "incorrect bind status for the command"),
        0x05 => ("ESME_RALYBND", "already bound"),
        0x06 => ("ESME_RINVPRTFLG", "invalid priority flag"),
        0x07 => ("ESME_RINVREGDLVFLG", "invalid registered delivery flag"),
        0x08 => ("ESME_RSYSERR", "system error"),
        0x0A => ("ESME_RINVSRCADR", "invalid source address"),
        0x0B => ("ESME_RINVDSTADR", "invalid destination address"),
        0x0C => ("ESME_RINVMSGID", "message id is invalid"),
        0x0D => ("ESME_RBINDFAIL", "bind failed"),
        0x0E => ("ESME_RINVPASWD", "invalid password"),
        0x0F => ("ESME_RINVSYSID", "invalid system_id"),
        0x11 => ("ESME_RCANCELFAIL", "cancel_sm failed"),
        0x13 => ("ESME_RREPLACEFAIL", "replace_sm failed"),
        0x14 => ("ESME_RMSGQFUL", "message queue full"),
        0x15 => ("ESME_RINVSERTYP", "invalid service type"),
        0x33 => ("ESME_RINVNUMDESTS", "invalid number of destinations"),
        0x34 => ("ESME_RINVDLNAME", "invalid distribution list name"),
        0x40 => ("ESME_RINVDESTFLAG", "invalid destination flag"),
        0x42 => ("ESME_RINVSUBREP", "invalid submit with replace request"),
        0x43 => ("ESME_RINVESMCLASS", "invalid esm_class"),
        0x44 => ("ESME_RCNTSUBDL", "cannot submit to a distribution list"),
        0x45 => ("ESME_RSUBMITFAIL", "submit failed"),
        0x48 => ("ESME_RINVSRCTON", "invalid source address TON"),
        0x49 => ("ESME_RINVSRCNPI", "invalid source address NPI"),
        0x50 => ("ESME_RINVDSTTON", "invalid destination address TON"),
        0x51 => ("ESME_RINVDSTNPI", "invalid destination address NPI"),
        0x53 => ("ESME_RINVSYSTYP", "invalid system_type"),
        0x54 => ("ESME_RINVREPFLAG", "invalid replace_if_present flag"),
        0x55 => ("ESME_RINVNUMMSGS", "invalid number of messages"),
        0x58 => (
            "ESME_RTHROTTLED",
            "throttled: the account's message rate is exceeded",
        ),
        0x61 => ("ESME_RINVSCHED", "invalid scheduled delivery time"),
        0x62 => ("ESME_RINVEXPIRY", "invalid validity period"),
        0x63 => ("ESME_RINVDFTMSGID", "predefined message not found"),
        0x64 => ("ESME_RX_T_APPN", "temporary application error"),
        0x65 => ("ESME_RX_P_APPN", "permanent application error"),
        0x66 => ("ESME_RX_R_APPN", "message rejected by the application"),
        0x67 => ("ESME_RQUERYFAIL", "query_sm failed"),
        0xC0 => ("ESME_RINVOPTPARSTREAM", "error in the optional parameters"),
        0xC1 => ("ESME_ROPTPARNOTALLWD", "optional parameter not allowed"),
        0xC2 => ("ESME_RINVPARLEN", "invalid parameter length"),
        0xC3 => (
            "ESME_RMISSINGOPTPARAM",
            "expected optional parameter missing",
        ),
        0xC4 => ("ESME_RINVOPTPARAMVAL", "invalid optional parameter value"),
        0xFE => ("ESME_RDELIVERYFAILURE", "delivery failure"),
        0xFF => ("ESME_RUNKNOWNERR", "unknown error"),
        0x400..=0x4FF => ("", "SMSC vendor-specific error"),
        _ => ("", "reserved status"),
    }
}

/// `0x0000000B invalid destination address (ESME_RINVDSTADR)`: what an operator reads in a contact's
/// result.
pub fn describe_status(status: u32) -> String {
    let (name, meaning) = status_text(status);
    if name.is_empty() {
        format!("0x{status:08X} {meaning}")
    } else {
        format!("0x{status:08X} {meaning} ({name})")
    }
}

/// True when the SMS centre may take the same PDU later: it is busy, throttling, or broken for now.
pub fn status_is_transient(status: u32) -> bool {
    matches!(status, 0x04 | 0x08 | 0x14 | 0x58 | 0x64 | 0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit() -> Pdu {
        Pdu {
            status: 0,
            sequence: 7,
            body: Body::SubmitSm(ShortMessage {
                source: Address {
                    ton: 5,
                    npi: 0,
                    addr: "TEPLO".into(),
                },
                dest: Address {
                    ton: 1,
                    npi: 1,
                    addr: "79001234567".into(),
                },
                registered_delivery: 1,
                short_message: b"Hello".to_vec(),
                tlvs: vec![Tlv {
                    tag: 0x1404,
                    value: vec![1, 2],
                }],
                ..ShortMessage::default()
            }),
        }
    }

    #[test]
    fn submit_sm_has_the_layout_of_the_spec() {
        let bytes = submit().encode();
        let mut want = Vec::new();
        want.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 7]);
        want.push(0); // service_type ""
        want.extend_from_slice(&[5, 0]);
        want.extend_from_slice(b"TEPLO\0");
        want.extend_from_slice(&[1, 1]);
        want.extend_from_slice(b"79001234567\0");
        want.extend_from_slice(&[0, 0, 0]); // esm_class, protocol_id, priority_flag
        want.extend_from_slice(&[0, 0]); // schedule_delivery_time, validity_period
        want.extend_from_slice(&[1, 0, 0, 0]); // registered_delivery .. sm_default_msg_id
        want.push(5);
        want.extend_from_slice(b"Hello");
        want.extend_from_slice(&[0x14, 0x04, 0, 2, 1, 2]);
        assert_eq!(bytes, want);
        assert_eq!(Pdu::decode(&bytes).unwrap(), submit());
    }

    #[test]
    fn every_body_survives_a_round_trip() {
        let bind = Bind {
            system_id: "hub".into(),
            password: "secret".into(),
            system_type: "".into(),
            interface_version: INTERFACE_VERSION,
            address_range: Address::default(),
        };
        let bodies = vec![
            Body::BindTransceiver(bind.clone()),
            Body::BindTransmitter(bind.clone()),
            Body::BindReceiver(bind),
            Body::BindResp {
                command_id: BIND_TRANSCEIVER | RESPONSE,
                system_id: "smsc".into(),
                tlvs: vec![Tlv {
                    tag: 0x0210,
                    value: vec![0x34],
                }],
            },
            Body::SubmitSmResp {
                message_id: "a1b2".into(),
            },
            Body::DeliverSmResp {
                message_id: String::new(),
            },
            Body::EnquireLink,
            Body::EnquireLinkResp,
            Body::Unbind,
            Body::UnbindResp,
            Body::GenericNack,
            Body::Other {
                command_id: 0x0000_0103,
                body: vec![1, 2, 3],
            },
        ];
        for body in bodies {
            let pdu = Pdu {
                status: 0,
                sequence: 0x7FFF_FFFF,
                body,
            };
            assert_eq!(Pdu::decode(&pdu.encode()).unwrap(), pdu);
        }
    }

    #[test]
    fn a_refused_response_may_have_no_body() {
        let mut bytes = vec![0, 0, 0, 16, 0x80, 0, 0, 4, 0, 0, 0, 0x0B, 0, 0, 0, 3];
        let pdu = Pdu::decode(&bytes).unwrap();
        assert_eq!(pdu.status, 0x0B);
        assert_eq!(
            pdu.body,
            Body::SubmitSmResp {
                message_id: String::new()
            }
        );
        bytes[7] = 9; // bind_transceiver_resp
        assert!(matches!(
            Pdu::decode(&bytes).unwrap().body,
            Body::BindResp { system_id, .. } if system_id.is_empty()
        ));
    }

    #[test]
    fn lengths_are_checked_before_anything_is_read() {
        assert_eq!(frame_len(&[0, 0, 0]), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 15]), Err(PduError::Length(15)));
        assert_eq!(
            frame_len(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(PduError::Length(u32::MAX))
        );
        assert_eq!(frame_len(&[0, 0, 0, 16, 9]), Ok(Some(16)));
        let bytes = submit().encode();
        assert!(matches!(
            Pdu::decode(&bytes[..bytes.len() - 1]),
            Err(PduError::FrameSize { .. })
        ));
    }

    #[test]
    fn a_short_message_longer_than_its_frame_is_an_error() {
        let mut bytes = submit().encode();
        // Cut the TLV and claim a longer text than there is.
        bytes.truncate(bytes.len() - 6);
        let at = bytes.len() - 6;
        bytes[at] = 200;
        let len = bytes.len() as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        let e = Pdu::decode(&bytes).unwrap_err();
        assert_eq!(e.to_string(), "submit_sm: truncated at `short_message`");
    }

    #[test]
    fn statuses_read_as_words() {
        assert_eq!(
            describe_status(0x0B),
            "0x0000000B invalid destination address (ESME_RINVDSTADR)"
        );
        assert_eq!(
            describe_status(0x0E),
            "0x0000000E invalid password (ESME_RINVPASWD)"
        );
        assert_eq!(
            describe_status(0x401),
            "0x00000401 SMSC vendor-specific error"
        );
        assert!(status_is_transient(0x58));
        assert!(!status_is_transient(0x0B));
    }

    #[test]
    fn a_bind_never_prints_its_password() {
        let b = Bind {
            system_id: "hub".into(),
            password: "s3cret".into(),
            system_type: String::new(),
            interface_version: INTERFACE_VERSION,
            address_range: Address::default(),
        };
        let shown = format!("{:?}", Body::BindTransmitter(b));
        assert!(
            shown.contains("hub") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    /// A small deterministic generator, so the test needs no extra crate.
    pub(crate) struct Lcg(pub u64);
    impl Lcg {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn random_truncated_and_mutated_input_never_panics() {
        let mut rng = Lcg(0x5EED);
        let seeds: Vec<Vec<u8>> = vec![
            submit().encode(),
            Pdu {
                status: 0,
                sequence: 1,
                body: Body::DeliverSm(ShortMessage {
                    esm_class: ESM_DELIVERY_RECEIPT,
                    short_message: b"id:1 sub:001 dlvrd:001 submit date:2611231200 done date:2611231201 stat:DELIVRD err:000 text:".to_vec(),
                    tlvs: vec![Tlv { tag: TLV_MESSAGE_STATE, value: vec![2] }],
                    ..ShortMessage::default()
                }),
            }
            .encode(),
            Pdu {
                status: 0,
                sequence: 2,
                body: Body::BindResp {
                    command_id: BIND_TRANSCEIVER | RESPONSE,
                    system_id: "smsc".into(),
                    tlvs: vec![],
                },
            }
            .encode(),
        ];
        for round in 0..20_000u32 {
            let mut bytes = seeds[round as usize % seeds.len()].clone();
            match rng.next() % 4 {
                0 => {
                    let cut = rng.next() as usize % (bytes.len() + 1);
                    bytes.truncate(cut);
                }
                1 => {
                    for _ in 0..=rng.next() % 8 {
                        let i = rng.next() as usize % bytes.len();
                        bytes[i] = rng.next() as u8;
                    }
                }
                2 => {
                    bytes = (0..rng.next() % 300).map(|_| rng.next() as u8).collect();
                }
                _ => {
                    // Mutate the body but keep the length word honest, so decoding goes deep.
                    for _ in 0..=rng.next() % 4 {
                        let i = 16 + rng.next() as usize % (bytes.len() - 16);
                        bytes[i] = rng.next() as u8;
                    }
                    let cut = 16 + rng.next() as usize % (bytes.len() - 15);
                    bytes.truncate(cut);
                    let len = bytes.len() as u32;
                    bytes[..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            let _ = frame_len(&bytes);
            if let Ok(pdu) = Pdu::decode(&bytes) {
                // Whatever decodes encodes into something that decodes to the same.
                assert_eq!(Pdu::decode(&pdu.encode()).as_ref(), Ok(&pdu), "{bytes:?}");
            }
        }
    }
}
