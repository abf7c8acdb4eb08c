//! A text as SMS parts: the GSM 03.38 default alphabet (data_coding 0) when every character is in
//! it, else UCS-2 (data_coding 8, UTF-16BE, so a character beyond the BMP takes two units and is
//! never split). SMPP carries the GSM alphabet unpacked, one octet per septet; the characters of the
//! extension table (`{ } [ ] ~ \ | ^ €` and form feed) take two (escape 0x1B first).
//!
//! A text that does not fit one SMS (160 septets, 70 UCS-2 units) is cut into parts of 153 septets
//! or 67 units, each behind a concatenation header (UDH IEI 0x00: an 8-bit reference, the number of
//! parts and this part's number), never inside an escape sequence or a surrogate pair.

/// data_coding of the GSM 03.38 default alphabet (the SMSC default).
pub const DC_GSM: u8 = 0x00;
/// data_coding of UCS-2.
pub const DC_UCS2: u8 = 0x08;
/// Septets in one SMS, and in one part of a concatenated one (the 6-octet UDH takes 7 septets).
pub const GSM_SINGLE: usize = 160;
pub const GSM_PART: usize = 153;
/// UCS-2 units in one SMS, and in one part of a concatenated one.
pub const UCS2_SINGLE: usize = 70;
pub const UCS2_PART: usize = 67;
/// Parts of one concatenated message at most (the count is one octet).
pub const MAX_PARTS: usize = 255;

const ESCAPE: u8 = 0x1B;

/// The basic table, by code.
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1B}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: character and its code after the escape.
const GSM_EXTENSION: [(char, u8); 10] = [
    ('\u{0C}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

/// The septets of one character in the GSM default alphabet, if it has any.
fn gsm_septets(c: char) -> Option<([u8; 2], usize)> {
    if c != '\u{1B}'
        && let Some(code) = GSM_BASIC.iter().position(|b| *b == c)
    {
        return Some(([code as u8, 0], 1));
    }
    GSM_EXTENSION
        .iter()
        .find(|(e, _)| *e == c)
        .map(|(_, code)| ([ESCAPE, *code], 2))
}

/// True when every character of `text` is in the GSM default alphabet (basic or extension table).
pub fn fits_gsm(text: &str) -> bool {
    text.chars().all(|c| gsm_septets(c).is_some())
}

/// `text` in the GSM alphabet, one octet per septet; characters outside it are left out (callers
/// check [`fits_gsm`] first).
pub fn encode_gsm(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if let Some((septets, n)) = gsm_septets(c) {
            out.extend_from_slice(&septets[..n]);
        }
    }
    out
}

/// The text of unpacked GSM septets (for receipts and tests); an unknown code reads as `?`.
pub fn decode_gsm(octets: &[u8]) -> String {
    let mut out = String::with_capacity(octets.len());
    let mut escaped = false;
    for &o in octets {
        if escaped {
            escaped = false;
            match GSM_EXTENSION.iter().find(|(_, code)| *code == o) {
                Some((c, _)) => out.push(*c),
                None => out.push('?'),
            }
        } else if o == ESCAPE {
            escaped = true;
        } else {
            out.push(GSM_BASIC.get(usize::from(o)).copied().unwrap_or('?'));
        }
    }
    out
}

/// One SMS part on its way to a submit_sm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub data_coding: u8,
    /// True when `payload` starts with a UDH (esm_class UDHI).
    pub udh: bool,
    /// What goes into `short_message`.
    pub payload: Vec<u8>,
}

/// Why a text cannot be sent as SMS.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the text needs {parts} SMS parts, at most {MAX_PARTS} can be joined")]
pub struct TooLong {
    pub parts: usize,
}

/// Cuts `text` into the parts of one message; `reference` identifies the concatenated message
/// (the same for all its parts, different from the last messages to the same phone).
pub fn split(text: &str, reference: u8) -> Result<Vec<Part>, TooLong> {
    let (data_coding, chunks) = if fits_gsm(text) {
        let units: Vec<Vec<u8>> = text
            .chars()
            .filter_map(gsm_septets)
            .map(|(s, n)| s[..n].to_vec())
            .collect();
        (DC_GSM, chunk(units, GSM_SINGLE, GSM_PART))
    } else {
        let units: Vec<Vec<u8>> = text
            .chars()
            .map(|c| {
                let mut buf = [0u16; 2];
                c.encode_utf16(&mut buf)
                    .iter()
                    .flat_map(|u| u.to_be_bytes())
                    .collect()
            })
            .collect();
        // Chunks count octets here: two per UCS-2 unit.
        (DC_UCS2, chunk(units, UCS2_SINGLE * 2, UCS2_PART * 2))
    };
    if chunks.len() > MAX_PARTS {
        return Err(TooLong {
            parts: chunks.len(),
        });
    }
    if chunks.len() == 1 {
        return Ok(chunks
            .into_iter()
            .map(|payload| Part {
                data_coding,
                udh: false,
                payload,
            })
            .collect());
    }
    let total = chunks.len() as u8;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut payload = vec![0x05, 0x00, 0x03, reference, total, i as u8 + 1];
            payload.extend_from_slice(&body);
            Part {
                data_coding,
                udh: true,
                payload,
            }
        })
        .collect())
}

/// Groups the characters' encodings (each kept whole) into one chunk of at most `single` octets,
/// or chunks of at most `part` octets.
fn chunk(units: Vec<Vec<u8>>, single: usize, part: usize) -> Vec<Vec<u8>> {
    let total: usize = units.iter().map(Vec::len).sum();
    if total <= single {
        return vec![units.concat()];
    }
    let mut chunks = Vec::new();
    let mut current: Vec<u8> = Vec::with_capacity(part);
    for u in units {
        if current.len() + u.len() > part {
            chunks.push(std::mem::take(&mut current));
        }
        current.extend_from_slice(&u);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ucs2_text(parts: &[Part]) -> String {
        let units: Vec<u16> = parts
            .iter()
            .flat_map(|p| {
                let body = if p.udh {
                    &p.payload[6..]
                } else {
                    &p.payload[..]
                };
                body.chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>()
            })
            .collect();
        String::from_utf16(&units).unwrap()
    }

    #[test]
    fn gsm_is_one_octet_per_septet_not_packed() {
        let bytes = encode_gsm("Hello @ 100$");
        // Packed 7-bit would be 11 octets for 12 septets; SMPP sends them one per octet.
        assert_eq!(bytes.len(), 12);
        assert_eq!(&bytes[..5], b"Hello");
        assert_eq!(bytes[6], 0x00, "@ is code 0");
        assert_eq!(bytes[11], 0x02, "$ is code 2");
        assert_eq!(decode_gsm(&bytes), "Hello @ 100$");
    }

    #[test]
    fn extension_characters_take_an_escape() {
        assert_eq!(encode_gsm("{€}"), vec![0x1B, 0x28, 0x1B, 0x65, 0x1B, 0x29]);
        assert_eq!(decode_gsm(&encode_gsm("a[b]~^|\\")), "a[b]~^|\\");
        assert!(!fits_gsm("Ünïcode? no"), "ï is not in the alphabet");
        assert!(fits_gsm("Hub: TP-3 pressure 2.1 bar, ΔP=0.4"));
        assert!(!fits_gsm("Давление"));
    }

    #[test]
    fn a_short_gsm_text_is_one_part_without_udh() {
        let parts = split(&"x".repeat(160), 9).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].data_coding, DC_GSM);
        assert!(!parts[0].udh);
        assert_eq!(parts[0].payload.len(), 160);
    }

    #[test]
    fn a_long_gsm_text_is_cut_at_153_septets_behind_a_udh() {
        let parts = split(&"x".repeat(161), 42).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].payload[..6], &[0x05, 0x00, 0x03, 42, 2, 1]);
        assert_eq!(&parts[1].payload[..6], &[0x05, 0x00, 0x03, 42, 2, 2]);
        assert_eq!(parts[0].payload.len(), 6 + 153);
        assert_eq!(parts[1].payload.len(), 6 + 8);
    }

    #[test]
    fn an_escape_sequence_is_never_cut() {
        // 152 plain septets, then `€` (two septets) does not fit in the first part.
        let text = format!("{}€zzzzzzzzzz", "x".repeat(152));
        let parts = split(&text, 1).unwrap();
        assert_eq!(parts[0].payload.len(), 6 + 152);
        assert_eq!(&parts[1].payload[6..9], &[0x1B, 0x65, b'z']);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.payload[6..].to_vec()).collect();
        assert_eq!(decode_gsm(&joined), text);
    }

    #[test]
    fn cyrillic_goes_as_ucs2_in_parts_of_67() {
        let short = "Отключение горячей воды";
        let parts = split(short, 1).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].data_coding, DC_UCS2);
        assert_eq!(parts[0].payload.len(), short.chars().count() * 2);
        assert_eq!(ucs2_text(&parts), short);

        assert_eq!(split(&"я".repeat(70), 1).unwrap().len(), 1);
        let long = "я".repeat(71);
        let parts = split(&long, 7).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].payload.len(), 6 + 67 * 2);
        assert_eq!(parts[1].payload.len(), 6 + 4 * 2);
        assert_eq!(ucs2_text(&parts), long);

        let long = "Плановое отключение горячего водоснабжения по адресу ул. Ленина, 5 с 10:00 до 18:00 12 июля. Приносим извинения.";
        let parts = split(long, 3).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(ucs2_text(&parts), long);
    }

    #[test]
    fn a_surrogate_pair_is_never_cut() {
        let text = format!("{}🔥яяяяя", "я".repeat(66));
        let parts = split(&text, 1).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].payload.len(), 6 + 66 * 2);
        assert_eq!(ucs2_text(&parts), text);
    }

    #[test]
    fn more_than_255_parts_is_refused() {
        assert!(split(&"x".repeat(153 * 255), 1).is_ok());
        let e = split(&"x".repeat(153 * 255 + 1), 1).unwrap_err();
        assert_eq!(e.parts, 256);
        assert_eq!(split("", 1).unwrap()[0].payload, Vec::<u8>::new());
    }
}
