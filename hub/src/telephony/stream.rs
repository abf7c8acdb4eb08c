//! Framing of SIP over a byte stream (TCP, RFC 3261 section 18.3): a message is its head up to CRLF
//! CRLF and then exactly `Content-Length` bytes of body (mandatory over streams; absent counts as 0).
//! `Framer` collects what the connection reads and hands out whole messages, however the segments
//! split or join them; CRLF keep-alives between messages are skipped.

use super::sip::SipError;

/// Longest head accepted before the connection is treated as junk and closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, `None` until one is complete; an error means the stream cannot be
    /// framed any more (the connection should be closed).
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, SipError>> {
        let start = self
            .buf
            .iter()
            .position(|b| *b != b'\r' && *b != b'\n')
            .unwrap_or(self.buf.len());
        self.buf.drain(..start);
        if self.buf.is_empty() {
            return None;
        }
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buf.len() > MAX_HEAD {
                return Some(Err(SipError::NoHeaderEnd));
            }
            return None;
        };
        let length = match content_length(&self.buf[..head_end]) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if length > MAX_BODY {
            return Some(Err(SipError::Header {
                name: "Content-Length",
                reason: format!("{length} bytes: too large"),
            }));
        }
        let total = head_end + 4 + length;
        if self.buf.len() < total {
            return None;
        }
        let rest = self.buf.split_off(total);
        Some(Ok(std::mem::replace(&mut self.buf, rest)))
    }
}

fn content_length(head: &[u8]) -> Result<usize, SipError> {
    let text = std::str::from_utf8(head).map_err(|_| SipError::NotUtf8)?;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            return value.trim().parse().map_err(|_| SipError::Header {
                name: "Content-Length",
                reason: format!("`{}`", value.trim()),
            });
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:hub@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1\r\n\
        From: <sip:a@b>;tag=1\r\nTo: <sip:hub@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

    fn info(body: &str) -> Vec<u8> {
        format!(
            "INFO sip:hub@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK2\r\n\
             From: <sip:a@b>;tag=1\r\nTo: <sip:hub@127.0.0.1>;tag=2\r\nCall-ID: x\r\nCSeq: 2 INFO\r\n\
             Content-Type: application/dtmf-relay\r\nl: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn coalesced_messages_come_out_one_by_one() {
        let mut f = Framer::default();
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(OPTIONS);
        all.extend_from_slice(&info("Signal=5\r\nDuration=160\r\n"));
        all.extend_from_slice(OPTIONS);
        f.push(&all);
        assert_eq!(f.next_message().unwrap().unwrap(), OPTIONS);
        let second = f.next_message().unwrap().unwrap();
        assert!(second.ends_with(b"Duration=160\r\n"));
        assert!(crate::telephony::sip::parse(&second).is_ok());
        assert_eq!(f.next_message().unwrap().unwrap(), OPTIONS);
        assert!(f.next_message().is_none());
    }

    #[test]
    fn split_messages_wait_for_their_last_byte() {
        let whole = info("Signal=1\r\n");
        // Every split point, including inside CRLF CRLF and inside the body.
        for cut in 1..whole.len() {
            let mut f = Framer::default();
            f.push(&whole[..cut]);
            assert!(f.next_message().is_none(), "cut at {cut}");
            f.push(&whole[cut..]);
            assert_eq!(f.next_message().unwrap().unwrap(), whole);
            assert!(f.next_message().is_none());
        }
        // Byte by byte.
        let mut f = Framer::default();
        let mut got = Vec::new();
        for b in OPTIONS.iter().chain(OPTIONS) {
            f.push(&[*b]);
            while let Some(m) = f.next_message() {
                got.push(m.unwrap());
            }
        }
        assert_eq!(got, vec![OPTIONS.to_vec(), OPTIONS.to_vec()]);
    }

    #[test]
    fn unframeable_streams_are_errors() {
        let mut f = Framer::default();
        f.push(b"INVITE sip:x SIP/2.0\r\nContent-Length: lots\r\n\r\n");
        assert!(f.next_message().unwrap().is_err());
        let mut f = Framer::default();
        f.push(&vec![b'a'; MAX_HEAD + 1]);
        assert!(f.next_message().unwrap().is_err());
        let mut f = Framer::default();
        f.push(b"INVITE sip:x SIP/2.0\r\nContent-Length: 999999999\r\n\r\n");
        assert!(f.next_message().unwrap().is_err());
    }
}
