//! Fuzz target for the SIP transport's edge: `sip::parse` must return a message or an error for any
//! datagram, and whatever parses must serialize into something that parses again to the same headers.
#![no_main]

use hub::telephony::sip::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = sip::parse(data) else {
        return;
    };
    let (bytes, common) = match &msg {
        Message::Request(r) => (r.to_bytes(), r.common.clone()),
        Message::Response(r) => (r.to_bytes(), r.common.clone()),
    };
    let again = match sip::parse(&bytes) {
        Ok(Message::Request(r)) => r.common,
        Ok(Message::Response(r)) => r.common,
        Err(e) => panic!("serialized message does not parse: {e}\n{}", String::from_utf8_lossy(&bytes)),
    };
    assert_eq!(again.call_id, common.call_id);
    assert_eq!(again.cseq, common.cseq);
    assert_eq!(again.via.len(), common.via.len());
});
