//! RTP (RFC 3550) for the media task: packets out (prompt frames, 20 ms apart, sequence +1, timestamp
//! +160, marker on the first) and in (RFC 4733 telephone events turned into DTMF digits).

/// A parsed incoming RTP packet (only what the media task needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Why a datagram on the media port is not RTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("rtp: packet of {0} bytes is too short")]
    Short(usize),
    #[error("rtp: version {0} is not 2")]
    Version(u8),
    #[error("rtp: header extends past the packet")]
    Header,
}

pub fn parse(data: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if data.len() < 12 {
        return Err(RtpError::Short(data.len()));
    }
    let version = data[0] >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = data[0] & 0x20 != 0;
    let extension = data[0] & 0x10 != 0;
    let csrc = usize::from(data[0] & 0x0f);
    let mut start = 12 + 4 * csrc;
    if extension {
        let ext = data.get(start + 2..start + 4).ok_or(RtpError::Header)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = data.len();
    if padding {
        let pad = usize::from(*data.last().ok_or(RtpError::Header)?);
        end = end.checked_sub(pad).ok_or(RtpError::Header)?;
    }
    if start > end {
        return Err(RtpError::Header);
    }
    Ok(RtpPacket {
        payload_type: data[1] & 0x7f,
        marker: data[1] & 0x80 != 0,
        sequence: u16::from_be_bytes([data[2], data[3]]),
        timestamp: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        payload: &data[start..end],
    })
}

/// Numbers outgoing packets of one stream.
#[derive(Debug, Clone)]
pub struct Packetizer {
    payload_type: u8,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    first: bool,
}

impl Packetizer {
    /// Random initial sequence number and timestamp (RFC 3550 5.1) come from the caller.
    pub fn new(payload_type: u8, ssrc: u32, sequence: u16, timestamp: u32) -> Self {
        Self {
            payload_type,
            ssrc,
            sequence,
            timestamp,
            first: true,
        }
    }

    /// The next packet for `payload` covering `samples` samples (160 for 20 ms at 8 kHz).
    pub fn packet(&mut self, payload: &[u8], samples: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + payload.len());
        out.push(0x80);
        out.push(self.payload_type | if self.first { 0x80 } else { 0 });
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
        self.first = false;
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        out
    }
}

/// RFC 4733 events 0-15 as DTMF characters.
pub fn event_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// Turns a stream of telephone-event packets into digits: one digit per event (its RTP timestamp),
/// however many times its packets and its three end packets arrive.
#[derive(Debug, Default)]
pub struct DtmfDetector {
    /// Timestamp and digit of the event in progress, not yet reported.
    current: Option<(u32, char)>,
    /// Timestamp of the last event reported.
    reported: Option<u32>,
}

impl DtmfDetector {
    /// Feeds one telephone-event payload with its RTP timestamp; returns the digits completed.
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Vec<char> {
        let mut out = Vec::new();
        let [event, flags, ..] = *payload else {
            return out;
        };
        if payload.len() < 4 || self.reported == Some(timestamp) {
            return out;
        }
        let Some(digit) = event_digit(event) else {
            return out;
        };
        // A new event while the previous one never ended (its end packets lost): report that one.
        if let Some((ts, d)) = self.current
            && ts != timestamp
        {
            out.push(d);
            self.reported = Some(ts);
            self.current = None;
        }
        if flags & 0x80 != 0 {
            out.push(digit);
            self.reported = Some(timestamp);
            self.current = None;
        } else {
            self.current = Some((timestamp, digit));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_numbered_and_marked() {
        let mut p = Packetizer::new(8, 0xdead_beef, 65535, 1000);
        let a = p.packet(&[0xd5; 160], 160);
        let b = p.packet(&[0xd5; 160], 160);
        let (a, b) = (parse(&a).unwrap(), parse(&b).unwrap());
        assert!(a.marker && !b.marker);
        assert_eq!((a.payload_type, b.payload_type), (8, 8));
        assert_eq!((a.sequence, b.sequence), (65535, 0));
        assert_eq!(b.timestamp - a.timestamp, 160);
        assert_eq!((a.ssrc, a.payload.len()), (0xdead_beef, 160));
    }

    #[test]
    fn bad_packets_are_errors() {
        assert_eq!(parse(&[0x80; 5]), Err(RtpError::Short(5)));
        assert_eq!(parse(&[0x40; 12]), Err(RtpError::Version(1)));
        // CSRC count larger than the packet.
        let mut p = vec![0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse(&p), Err(RtpError::Header));
        // Padding larger than the packet.
        p[0] = 0xa0;
        p.push(200);
        assert_eq!(parse(&p), Err(RtpError::Header));
    }

    #[test]
    fn dtmf_is_reported_once_per_event() {
        let mut d = DtmfDetector::default();
        let mut got = Vec::new();
        // Digit 1: three progress packets then three end packets, all with one timestamp.
        for (ts, flags) in [
            (100, 0),
            (100, 0),
            (100, 0),
            (100, 0x80),
            (100, 0x80),
            (100, 0x80),
        ] {
            got.extend(d.push(ts, &[1, flags, 0, 160]));
        }
        // Digit # whose end packets are lost, then digit 0.
        got.extend(d.push(900, &[11, 0, 0, 160]));
        got.extend(d.push(1800, &[0, 0, 0, 160]));
        got.extend(d.push(1800, &[0, 0x80, 1, 64]));
        got.extend(d.push(1800, &[0, 0x80, 1, 64]));
        assert_eq!(got, vec!['1', '#', '0']);
        assert!(d.push(5, &[1]).is_empty(), "a short payload is ignored");
    }
}
