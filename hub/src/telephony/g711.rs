//! G.711 (ITU-T): the media task encodes the 8 kHz 16-bit PCM of prompts to µ-law (PCMU, payload 0) or
//! A-law (PCMA, payload 8) frames just before they are sent, and decodes what callers send.

/// One 20 ms frame at 8 kHz: 160 samples, 160 bytes of G.711.
pub const FRAME_SAMPLES: usize = 160;

/// The two G.711 laws, named after their RTP payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// µ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl Law {
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Pcmu => 0,
            Law::Pcma => 8,
        }
    }
    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Pcmu => ulaw_encode(sample),
            Law::Pcma => alaw_encode(sample),
        }
    }
    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Law::Pcmu => ulaw_decode(byte),
            Law::Pcma => alaw_decode(byte),
        }
    }
    /// The byte of digital silence.
    pub fn silence(self) -> u8 {
        self.encode(0)
    }
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

pub fn ulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(ULAW_CLIP) + ULAW_BIAS;
    // The segment is the position of the highest set bit above bit 7.
    let exponent = (7 - ((s as u32) << 17).leading_zeros().min(7)) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

pub fn ulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0f);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

pub fn alaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample) >> 3; // 13-bit magnitude
    let sign = if s >= 0 {
        0x80
    } else {
        s = -s - 1;
        0
    };
    s = s.min(0x0fff);
    let out = if s < 32 {
        s >> 1
    } else {
        let exponent = 31 - (s as u32).leading_zeros() as i32 - 4; // 1..=7
        (exponent << 4) | ((s >> exponent) & 0x0f)
    };
    ((sign | out) ^ 0x55) as u8
}

pub fn alaw_decode(byte: u8) -> i16 {
    let b = i32::from(byte ^ 0x55);
    let exponent = (b >> 4) & 0x07;
    let mantissa = b & 0x0f;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if b & 0x80 != 0 { magnitude } else { -magnitude }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Silence and full scale, as in the ITU-T tables.
        assert_eq!(ulaw_encode(0), 0xff);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xd5);
        assert_eq!(alaw_encode(i16::MAX), 0xaa);
        assert_eq!(alaw_encode(i16::MIN), 0x2a);
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(alaw_decode(0xd5), 8);
    }

    #[test]
    fn every_code_decodes_and_reencodes_to_itself() {
        for b in 0..=255u8 {
            // µ-law has two zeros (0x7f and 0xff): both decode to 0, which encodes as 0xff.
            if b != 0x7f {
                assert_eq!(ulaw_encode(ulaw_decode(b)), b, "ulaw {b:#x}");
            }
            assert_eq!(alaw_encode(alaw_decode(b)), b, "alaw {b:#x}");
        }
    }

    #[test]
    fn the_error_stays_within_the_segment() {
        for s in (-32768i32..32768).step_by(7) {
            let s = s as i16;
            for law in [Law::Pcmu, Law::Pcma] {
                let back = i32::from(law.decode(law.encode(s)));
                let err = (back - i32::from(s)).abs();
                // Quantization steps double per segment; the largest is 1024 (µ) / 1024 (A).
                let limit = (i32::from(s).abs() / 16).max(16);
                assert!(err <= limit, "{law:?} {s} -> {back}");
            }
        }
    }
}
