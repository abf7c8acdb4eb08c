//! Register words to numbers and back for the Modbus connector: the pure part between the wire
//! (`Vec<u16>` from a read) and a `Reading` (or, for writes, from a value to the words to send).

use super::config::{Order, ValueType};

/// The raw number (before scale and offset) that `words` encode. `None` when the number of words
/// does not match the type. An `f32` may decode to NaN or an infinity; the caller decides.
pub fn decode(words: &[u16], ty: ValueType, word_order: Order, byte_order: Order) -> Option<f64> {
    let fix = |w: u16| match byte_order {
        Order::Big => w,
        Order::Little => w.swap_bytes(),
    };
    match (ty, words) {
        (ValueType::U16, [w]) => Some(f64::from(fix(*w))),
        (ValueType::I16, [w]) => Some(f64::from(fix(*w) as i16)),
        (ValueType::U32 | ValueType::I32 | ValueType::F32, [a, b]) => {
            let (hi, lo) = match word_order {
                Order::Big => (fix(*a), fix(*b)),
                Order::Little => (fix(*b), fix(*a)),
            };
            let bits = (u32::from(hi) << 16) | u32::from(lo);
            Some(match ty {
                ValueType::I32 => f64::from(bits as i32),
                ValueType::F32 => f64::from(f32::from_bits(bits)),
                ValueType::U16 | ValueType::I16 | ValueType::U32 => f64::from(bits),
            })
        }
        _ => None,
    }
}

/// The words that make [`decode`] return `raw` (rounded to the nearest integer for integer types).
/// The error says why `raw` does not fit the type.
pub fn encode(
    raw: f64,
    ty: ValueType,
    word_order: Order,
    byte_order: Order,
) -> Result<Vec<u16>, String> {
    if !raw.is_finite() {
        return Err(format!("{raw} is not a finite number"));
    }
    let fix = |w: u16| match byte_order {
        Order::Big => w,
        Order::Little => w.swap_bytes(),
    };
    let in_range = |min: f64, max: f64| {
        let r = raw.round();
        if r < min || r > max {
            Err(format!("{raw} does not fit {ty} ({min} to {max})"))
        } else {
            Ok(r)
        }
    };
    let bits: u32 = match ty {
        ValueType::U16 => return Ok(vec![fix(in_range(0.0, 65535.0)? as u16)]),
        ValueType::I16 => {
            let v = in_range(f64::from(i16::MIN), f64::from(i16::MAX))? as i16;
            return Ok(vec![fix(v as u16)]);
        }
        ValueType::U32 => in_range(0.0, f64::from(u32::MAX))? as u32,
        ValueType::I32 => in_range(f64::from(i32::MIN), f64::from(i32::MAX))? as i32 as u32,
        ValueType::F32 => {
            if raw.abs() > f64::from(f32::MAX) {
                return Err(format!("{raw} does not fit f32"));
            }
            (raw as f32).to_bits()
        }
    };
    let hi = fix((bits >> 16) as u16);
    let lo = fix(bits as u16);
    Ok(match word_order {
        Order::Big => vec![hi, lo],
        Order::Little => vec![lo, hi],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Order::{Big, Little};
    use ValueType::*;

    #[test]
    fn sixteen_bit_types_in_both_byte_orders() {
        assert_eq!(decode(&[0x1234], U16, Big, Big), Some(4660.0));
        assert_eq!(decode(&[0x3412], U16, Big, Little), Some(4660.0));
        // Word order means nothing for one word.
        assert_eq!(decode(&[0x1234], U16, Little, Big), Some(4660.0));
        assert_eq!(decode(&[0xFFFF], U16, Big, Big), Some(65535.0));
        assert_eq!(decode(&[0xFFFB], I16, Big, Big), Some(-5.0));
        assert_eq!(decode(&[0xFBFF], I16, Big, Little), Some(-5.0));
        assert_eq!(decode(&[0x8000], I16, Big, Big), Some(-32768.0));
        assert_eq!(decode(&[0x7FFF], I16, Big, Big), Some(32767.0));
    }

    #[test]
    fn thirty_two_bit_types_in_all_four_orders() {
        // 0x0001_86A0 = 100000; bytes on the wire for each (word order, byte order).
        let cases = [
            (Big, Big, [0x0001, 0x86A0]),
            (Little, Big, [0x86A0, 0x0001]),
            (Big, Little, [0x0100, 0xA086]),
            (Little, Little, [0xA086, 0x0100]),
        ];
        for (wo, bo, words) in cases {
            assert_eq!(
                decode(&words, U32, wo, bo),
                Some(100_000.0),
                "{wo:?} {bo:?}"
            );
            assert_eq!(encode(100_000.0, U32, wo, bo).unwrap(), words);
        }
        // -70000 = 0xFFFE_EE90
        let cases = [
            (Big, Big, [0xFFFE, 0xEE90]),
            (Little, Big, [0xEE90, 0xFFFE]),
            (Big, Little, [0xFEFF, 0x90EE]),
            (Little, Little, [0x90EE, 0xFEFF]),
        ];
        for (wo, bo, words) in cases {
            assert_eq!(
                decode(&words, I32, wo, bo),
                Some(-70_000.0),
                "{wo:?} {bo:?}"
            );
            assert_eq!(encode(-70_000.0, I32, wo, bo).unwrap(), words);
        }
        // 21.5f32 = 0x41AC_0000
        let cases = [
            (Big, Big, [0x41AC, 0x0000]),
            (Little, Big, [0x0000, 0x41AC]),
            (Big, Little, [0xAC41, 0x0000]),
            (Little, Little, [0x0000, 0xAC41]),
        ];
        for (wo, bo, words) in cases {
            assert_eq!(decode(&words, F32, wo, bo), Some(21.5), "{wo:?} {bo:?}");
            assert_eq!(encode(21.5, F32, wo, bo).unwrap(), words);
        }
        assert_eq!(
            decode(&[0xFFFF, 0xFFFF], U32, Big, Big),
            Some(4_294_967_295.0)
        );
        assert_eq!(
            decode(&[0x8000, 0x0000], I32, Big, Big),
            Some(-2_147_483_648.0)
        );
        assert!(decode(&[0x7FC0, 0x0000], F32, Big, Big).unwrap().is_nan());
        assert_eq!(
            decode(&[0x7F80, 0x0000], F32, Big, Big),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn the_wrong_number_of_words_is_none() {
        assert_eq!(decode(&[], U16, Big, Big), None);
        assert_eq!(decode(&[1, 2], I16, Big, Big), None);
        assert_eq!(decode(&[1], F32, Big, Big), None);
        assert_eq!(decode(&[1, 2, 3], U32, Big, Big), None);
    }

    #[test]
    fn encoding_rounds_and_checks_the_range() {
        assert_eq!(encode(214.6, U16, Big, Big).unwrap(), [215]);
        assert_eq!(encode(-1.0, I16, Big, Big).unwrap(), [0xFFFF]);
        assert_eq!(encode(0x1234 as f64, U16, Big, Little).unwrap(), [0x3412]);
        assert_eq!(
            encode(65536.0, U16, Big, Big).unwrap_err(),
            "65536 does not fit u16 (0 to 65535)"
        );
        assert!(encode(-0.6, U16, Big, Big).is_err());
        assert!(encode(-0.4, U16, Big, Big).is_ok());
        assert!(encode(32768.0, I16, Big, Big).is_err());
        assert!(encode(-1.0, U32, Big, Big).is_err());
        assert!(encode(2_147_483_648.0, I32, Big, Big).is_err());
        assert!(encode(1e39, F32, Big, Big).is_err());
        assert!(encode(f64::NAN, F32, Big, Big).is_err());
        assert!(encode(f64::INFINITY, U16, Big, Big).is_err());
    }

    #[test]
    fn random_words_never_panic_and_integers_round_trip() {
        // xorshift64*: deterministic, no dependency.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let types = [U16, I16, U32, I32, F32];
        let orders = [Big, Little];
        for _ in 0..20_000 {
            let r = next();
            let len = (r % 4) as usize;
            let words: Vec<u16> = (0..len).map(|i| (r >> (16 + 16 * i)) as u16).collect();
            let ty = types[(r >> 2) as usize % types.len()];
            let wo = orders[(r >> 5) as usize % 2];
            let bo = orders[(r >> 6) as usize % 2];
            let Some(raw) = decode(&words, ty, wo, bo) else {
                assert_ne!(words.len(), usize::from(ty.words()));
                continue;
            };
            // Every integer and every finite float comes back as the same words.
            if raw.is_finite() {
                assert_eq!(
                    encode(raw, ty, wo, bo).unwrap(),
                    words,
                    "{ty} {wo:?} {bo:?}"
                );
            }
            // Random values never panic the encoder either, and what it accepts has the right size.
            if let Ok(w) = encode(f64::from_bits(next()), ty, wo, bo) {
                assert_eq!(w.len(), usize::from(ty.words()));
            }
        }
    }
}
