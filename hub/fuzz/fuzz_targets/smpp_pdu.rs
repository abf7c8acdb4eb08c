//! Fuzz target for the SMPP channel's edge: whatever an SMS centre sends, `frame_len` and
//! `Pdu::decode` return a value or an error, and a PDU that decodes encodes into bytes that decode
//! to the same PDU. A deliver_sm that decodes is also read as a receipt, which must not panic either.
#![no_main]

use connectors::channels::smpp::parse_receipt;
use connectors::channels::smpp::pdu::{self, Body, Pdu};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pdu::frame_len(data);
    let Ok(decoded) = Pdu::decode(data) else {
        return;
    };
    if let Body::DeliverSm(sm) = &decoded.body {
        let _ = parse_receipt(sm);
    }
    let again = Pdu::decode(&decoded.encode())
        .unwrap_or_else(|e| panic!("an encoded PDU does not decode: {e}\n{decoded:?}"));
    assert_eq!(again, decoded);
});
