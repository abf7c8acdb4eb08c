//! Newtypes parsed at the edge (API, import): nothing downstream re-validates them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A phone number in E.164 (`+74951234567`). Common Russian spellings (`8 (495) 123-45-67`) are normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "+74951234567")]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let digits: String = raw.chars().filter(|c| c.is_ascii_digit()).collect();
        let allowed = raw
            .chars()
            .all(|c| c.is_ascii_digit() || " +-()".contains(c));
        if !allowed || raw.chars().skip(1).any(|c| c == '+') {
            return Err(format!(
                "`{raw}` is not a phone number: use E.164, e.g. +74951234567"
            ));
        }
        let e164 = if raw.trim_start().starts_with('+') {
            digits
        } else if digits.len() == 11 && digits.starts_with('8') {
            // The Russian trunk prefix 8 stands for +7.
            format!("7{}", &digits[1..])
        } else {
            return Err(format!(
                "`{raw}` is not in E.164: start with + and the country code"
            ));
        };
        if !(8..=15).contains(&e164.len()) || e164.starts_with('0') {
            return Err(format!(
                "`{raw}` is not a phone number: E.164 has 8 to 15 digits"
            ));
        }
        Ok(PhoneNumber(format!("+{e164}")))
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, checked for the shape `local@domain.tld`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "ivanova@example.ru")]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        let s = raw.trim();
        let valid = match s.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !s.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
                    && !domain.contains('@')
            }
            None => false,
        };
        if valid {
            Ok(Email(s.to_owned()))
        } else {
            Err(format!("`{raw}` is not an e-mail address"))
        }
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

/// An IANA time zone name such as `Europe/Moscow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "Europe/Moscow")]
pub struct TimeZone(String);

impl TimeZone {
    pub fn tz(&self) -> chrono_tz::Tz {
        self.0.parse().unwrap_or(chrono_tz::Europe::Moscow)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone("Europe/Moscow".into())
    }
}

impl TryFrom<String> for TimeZone {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse::<chrono_tz::Tz>()
            .map(|_| TimeZone(raw.clone()))
            .map_err(|_| format!("`{raw}` is not an IANA time zone such as Europe/Moscow"))
    }
}

impl From<TimeZone> for String {
    fn from(t: TimeZone) -> String {
        t.0
    }
}

/// An external id given by the customer's systems: 1-100 printable characters, no spaces at the ends.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "bh-1")]
pub struct ExternalId(String);

impl ExternalId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ExternalId {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        if raw.is_empty()
            || raw.len() > 100
            || raw.trim() != raw
            || raw.chars().any(char::is_control)
        {
            return Err(format!(
                "`{raw}` is not an id: 1-100 characters, no leading or trailing spaces"
            ));
        }
        Ok(ExternalId(raw))
    }
}

impl From<ExternalId> for String {
    fn from(e: ExternalId) -> String {
        e.0
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalize_to_e164() {
        let p = |s: &str| PhoneNumber::try_from(s.to_owned());
        assert_eq!(p("+7 (495) 123-45-67").unwrap().as_str(), "+74951234567");
        assert_eq!(p("8 495 123 45 67").unwrap().as_str(), "+74951234567");
        assert!(p("123").is_err());
        assert!(p("+7 495 12a").is_err());
        assert!(p("4951234567").is_err());
        assert!(p("+7+4951234567").is_err());
    }

    #[test]
    fn emails_and_zones() {
        assert!(Email::try_from("a@b.ru".to_owned()).is_ok());
        assert!(Email::try_from("a@b".to_owned()).is_err());
        assert!(Email::try_from("a b@c.ru".to_owned()).is_err());
        assert!(TimeZone::try_from("Asia/Yekaterinburg".to_owned()).is_ok());
        assert!(TimeZone::try_from("Mars/Base".to_owned()).is_err());
        assert!(ExternalId::try_from(" x".to_owned()).is_err());
    }
}
