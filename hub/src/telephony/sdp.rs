//! SDP offer/answer (RFC 3264) for the core: an INVITE's offer names where the caller wants audio; the
//! answer picks PCMU or PCMA (in the caller's order) and telephone-event, and names our RTP port.

use std::net::{IpAddr, SocketAddr};

use super::g711::Law;
use super::sip::SipError;

/// What the caller offered, reduced to the audio stream we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Where to send RTP.
    pub remote: SocketAddr,
    pub law: Law,
    /// The payload type the caller gave telephone-event, if any.
    pub dtmf_pt: Option<u8>,
}

/// Parses an offer and chooses the codec. An offer without a usable audio stream is an error (488).
pub fn parse_offer(body: &[u8]) -> Result<Offer, SipError> {
    let text = std::str::from_utf8(body).map_err(|_| SipError::Sdp("not UTF-8".into()))?;
    let mut session_addr: Option<IpAddr> = None;
    let mut media_addr: Option<IpAddr> = None;
    let mut in_audio = false;
    let mut seen_audio = false;
    let mut port: Option<u16> = None;
    let mut formats: Vec<u8> = Vec::new();
    let mut dtmf_pt = None;
    for line in text.lines().map(str::trim_end) {
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        match kind {
            "m" => {
                let mut f = value.split_whitespace();
                let media = f.next().unwrap_or("");
                // Only the first audio stream is used.
                in_audio = media == "audio" && !seen_audio;
                if in_audio {
                    seen_audio = true;
                    port = f.next().and_then(|p| p.split('/').next()?.parse().ok());
                    let _proto = f.next();
                    formats = f.filter_map(|x| x.parse().ok()).collect();
                }
            }
            "c" => {
                let addr = value
                    .split_whitespace()
                    .nth(2)
                    .and_then(|a| a.split('/').next()?.parse().ok());
                if !seen_audio {
                    session_addr = addr;
                } else if in_audio {
                    media_addr = addr;
                }
            }
            "a" if in_audio => {
                if let Some(map) = value.strip_prefix("rtpmap:") {
                    let mut p = map.split_whitespace();
                    let pt = p.next().and_then(|x| x.parse::<u8>().ok());
                    let name = p.next().unwrap_or("").to_ascii_lowercase();
                    if name.starts_with("telephone-event/8000") {
                        dtmf_pt = pt;
                    }
                }
            }
            _ => {}
        }
    }
    let port = port
        .filter(|p| *p != 0)
        .ok_or_else(|| SipError::Sdp("no audio stream".into()))?;
    let addr = media_addr
        .or(session_addr)
        .ok_or_else(|| SipError::Sdp("no connection address".into()))?;
    let law = formats
        .iter()
        .find_map(|f| match f {
            0 => Some(Law::Pcmu),
            8 => Some(Law::Pcma),
            _ => None,
        })
        .ok_or_else(|| SipError::Sdp("neither PCMU nor PCMA offered".into()))?;
    Ok(Offer {
        remote: SocketAddr::new(addr, port),
        law,
        dtmf_pt: dtmf_pt.filter(|pt| formats.contains(pt)),
    })
}

/// The answer: our address and port, the chosen law and telephone-event with the caller's payload type.
pub fn answer(local: IpAddr, port: u16, offer: &Offer, session_id: u64) -> String {
    let ip = match local {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let pt = offer.law.payload_type();
    let name = match offer.law {
        Law::Pcmu => "PCMU",
        Law::Pcma => "PCMA",
    };
    let mut formats = pt.to_string();
    let mut attrs = format!("a=rtpmap:{pt} {name}/8000\r\n");
    if let Some(ev) = offer.dtmf_pt {
        formats.push_str(&format!(" {ev}"));
        attrs.push_str(&format!(
            "a=rtpmap:{ev} telephone-event/8000\r\na=fmtp:{ev} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\no=hub {session_id} {session_id} IN {ip} {local}\r\ns=hub\r\nc=IN {ip} {local}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {formats}\r\n{attrs}a=ptime:20\r\na=sendrecv\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
        t=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-11,16\r\n";

    #[test]
    fn sipps_offer_is_answered_with_pcma_and_events() {
        let o = parse_offer(SIPP.as_bytes()).unwrap();
        assert_eq!(o.remote, "127.0.0.1:6000".parse().unwrap());
        assert_eq!((o.law, o.dtmf_pt), (Law::Pcma, Some(101)));
        let a = answer("127.0.0.1".parse().unwrap(), 20000, &o, 7);
        assert!(a.contains("m=audio 20000 RTP/AVP 8 101\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:101 telephone-event/8000"), "{a}");
        let back = parse_offer(a.as_bytes()).unwrap();
        assert_eq!(back.remote, "127.0.0.1:20000".parse().unwrap());
    }

    #[test]
    fn the_callers_order_wins_and_media_level_address_too() {
        let sdp =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 18 0 8\r\nc=IN IP4 10.0.0.2\r\n";
        let o = parse_offer(sdp.as_bytes()).unwrap();
        assert_eq!((o.law, o.dtmf_pt), (Law::Pcmu, None));
        assert_eq!(o.remote, "10.0.0.2:4000".parse().unwrap());
    }

    #[test]
    fn unusable_offers_are_errors() {
        for sdp in [
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 18\r\n",
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 4000 RTP/AVP 0\r\n",
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n",
            "\u{0}\u{1}",
        ] {
            assert!(parse_offer(sdp.as_bytes()).is_err(), "{sdp}");
        }
    }
}
