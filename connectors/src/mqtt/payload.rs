//! Payloads of sensor messages: a plain number (`4.25`), or JSON with the value and an optional
//! timestamp at configured paths (`{"p": 4.25, "ts": 1763900000}`). Parsing never panics; every
//! failure is a short reason that ends up in the connector's reject counts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How a mapping's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A plain number, or else a JSON object read with `value` and `timestamp`.
    #[default]
    Auto,
    /// A plain number as text (`4.25`).
    Number,
    /// A JSON document with the value (and optionally the time) at the configured paths.
    Json,
    /// An outage record in the webhook format of `POST /api/v1/outages`.
    Outage,
}

/// A dotted path into a JSON document: `data.p` or `values.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    pub fn parse(path: &str) -> Self {
        JsonPath(path.split('.').map(str::to_string).collect())
    }

    fn get<'v>(&self, mut v: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        for key in &self.0 {
            v = match v {
                serde_json::Value::Object(m) => m.get(key)?,
                serde_json::Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(v)
    }

    fn display(&self) -> String {
        self.0.join(".")
    }
}

/// A value and, when the payload said, the time it was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub value: f64,
    pub at: Option<DateTime<Utc>>,
}

/// Parses a sensor payload; `format` must not be `Outage`.
pub fn parse_reading(
    payload: &[u8],
    format: PayloadFormat,
    value_path: &JsonPath,
    time_path: Option<&JsonPath>,
) -> Result<Parsed, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8 text".to_string())?;
    let trimmed = text.trim();
    match format {
        PayloadFormat::Number => number(trimmed).map(|value| Parsed { value, at: None }),
        PayloadFormat::Json => json(trimmed, value_path, time_path),
        PayloadFormat::Auto => match number(trimmed) {
            Ok(value) => Ok(Parsed { value, at: None }),
            Err(_) if trimmed.starts_with('{') || trimmed.starts_with('[') => {
                json(trimmed, value_path, time_path)
            }
            Err(e) => Err(e),
        },
        PayloadFormat::Outage => Err("an outage mapping carries no reading".into()),
    }
}

fn number(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("not a number: `{}`", excerpt(text)))?;
    finite(v)
}

fn finite(v: f64) -> Result<f64, String> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("not a finite number: {v}"))
    }
}

fn json(text: &str, value_path: &JsonPath, time_path: Option<&JsonPath>) -> Result<Parsed, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let raw = value_path
        .get(&doc)
        .ok_or_else(|| format!("no value at `{}`", value_path.display()))?;
    let value = match raw {
        serde_json::Value::Number(n) => n.as_f64().ok_or("not a number")?,
        serde_json::Value::String(s) => number(s.trim())?,
        serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
        _ => {
            return Err(format!(
                "the value at `{}` is not a number",
                value_path.display()
            ));
        }
    };
    let value = finite(value)?;
    let at = match time_path.and_then(|p| p.get(&doc).map(|v| (p, v))) {
        None => None,
        Some((_, serde_json::Value::Null)) => None,
        Some((p, v)) => Some(timestamp(v).map_err(|e| format!("`{}`: {e}", p.display()))?),
    };
    Ok(Parsed { value, at })
}

/// Unix seconds, unix milliseconds (numbers above 10^11) or RFC 3339 text.
fn timestamp(v: &serde_json::Value) -> Result<DateTime<Utc>, String> {
    match v {
        serde_json::Value::Number(n) => {
            let f = n.as_f64().ok_or("not a time")?;
            let ms = if f.abs() >= 1e11 { f } else { f * 1000.0 };
            if !ms.is_finite() || ms.abs() > 1e15 {
                return Err("time out of range".into());
            }
            // The bound above makes the cast exact enough and in range.
            #[allow(clippy::cast_possible_truncation)]
            DateTime::from_timestamp_millis(ms as i64).ok_or_else(|| "time out of range".into())
        }
        serde_json::Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("not an RFC 3339 time: {e}")),
        _ => Err("not a time".into()),
    }
}

/// The first characters of junk, safe to log.
pub fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(32).filter(|c| !c.is_control()).collect();
    if text.chars().count() > 32 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(payload: &str, format: PayloadFormat) -> Result<Parsed, String> {
        parse_reading(
            payload.as_bytes(),
            format,
            &JsonPath::parse("value"),
            Some(&JsonPath::parse("at")),
        )
    }

    #[test]
    fn numbers_and_json() {
        assert_eq!(parse(" 4.25\n", PayloadFormat::Auto).unwrap().value, 4.25);
        let p = parse(r#"{"value": "5.5", "at": 1763900000}"#, PayloadFormat::Auto).unwrap();
        assert_eq!(p.value, 5.5);
        assert_eq!(p.at.unwrap().timestamp(), 1_763_900_000);
        let p = parse(r#"{"value": 1, "at": 1763900000123}"#, PayloadFormat::Json).unwrap();
        assert_eq!(p.at.unwrap().timestamp_millis(), 1_763_900_000_123);
        let p = parse(
            r#"{"value": 1, "at": "2026-11-23T10:00:00+03:00"}"#,
            PayloadFormat::Json,
        )
        .unwrap();
        assert_eq!(p.at.unwrap().to_rfc3339(), "2026-11-23T07:00:00+00:00");
        let nested = parse_reading(
            br#"{"d": {"vals": [1, 2.5]}}"#,
            PayloadFormat::Json,
            &JsonPath::parse("d.vals.1"),
            None,
        )
        .unwrap();
        assert_eq!(nested.value, 2.5);
    }

    #[test]
    fn junk_is_a_reason_not_a_panic() {
        for (payload, format, why) in [
            ("abc", PayloadFormat::Number, "not a number"),
            ("NaN", PayloadFormat::Number, "not a finite"),
            ("inf", PayloadFormat::Auto, "not a finite"),
            ("{", PayloadFormat::Auto, "not JSON"),
            (r#"{"v": 1}"#, PayloadFormat::Json, "no value at `value`"),
            (r#"{"value": [1]}"#, PayloadFormat::Json, "is not a number"),
            (
                r#"{"value": 1, "at": "noon"}"#,
                PayloadFormat::Json,
                "`at`: not an RFC 3339",
            ),
            (
                r#"{"value": 1, "at": 1e300}"#,
                PayloadFormat::Json,
                "out of range",
            ),
        ] {
            let e = parse(payload, format).unwrap_err();
            assert!(e.contains(why), "{payload}: {e}");
        }
        assert!(
            parse_reading(
                &[0xff, 0xfe],
                PayloadFormat::Auto,
                &JsonPath::parse("value"),
                None
            )
            .unwrap_err()
            .contains("UTF-8")
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Mostly printable JSON-ish characters so the JSON path is exercised too.
                    b"{}[]\":,.0123456789-eE atvlu"[(x % 27) as usize]
                })
                .collect();
            let _ = parse_reading(
                &bytes,
                PayloadFormat::Auto,
                &JsonPath::parse("value"),
                Some(&JsonPath::parse("at")),
            );
        }
    }
}
