//! Message templates of a campaign: per language (`ru`, `en`) a text per channel (SMS, e-mail subject
//! and body, messenger, voice), with `{variable}` slots filled per contact at send time. A launch
//! checks every slot against what the campaign and its audience can fill, so that a missing variable
//! is an error at launch (field and reason), never a broken message at 3 a.m.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::names::Channel;
use crate::storage::StorageError;

/// Languages every template set covers.
pub const LANGUAGES: [&str; 2] = ["ru", "en"];

/// The texts of one language.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Texts {
    #[serde(default)]
    pub sms: String,
    #[serde(default)]
    pub email_subject: String,
    #[serde(default)]
    pub email_body: String,
    /// Telegram and other messengers.
    #[serde(default)]
    pub messenger: String,
    /// Spoken by the robot call.
    #[serde(default)]
    pub voice: String,
}

/// Texts by language (`ru`, `en`).
pub type TemplateSet = BTreeMap<String, Texts>;

/// What one channel sends: subject (e-mail only) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
}

impl Texts {
    /// The templates a channel uses: (field name, subject template, text template).
    fn for_channel(&self, channel: Channel) -> (&'static str, &str, &str) {
        match channel {
            Channel::Sms => ("sms", "", &self.sms),
            Channel::Email => ("email_body", &self.email_subject, &self.email_body),
            Channel::Telegram => ("messenger", "", &self.messenger),
            Channel::Voice => ("voice", "", &self.voice),
            Channel::Letter => ("email_body", &self.email_subject, &self.email_body),
        }
    }
}

fn t(sms: &str, subject: &str, body: &str, messenger: &str, voice: &str) -> Texts {
    Texts {
        sms: sms.into(),
        email_subject: subject.into(),
        email_body: body.into(),
        messenger: messenger.into(),
        voice: voice.into(),
    }
}

/// The built-in library by name: the templates the example rules use, and a debt reminder.
pub fn builtin(name: &str) -> Option<TemplateSet> {
    let (ru, en) = match name {
        "heat_emergency" => (
            t(
                "{name}, авария: по адресу {address} нарушено теплоснабжение. Аварийная бригада уже работает.",
                "Авария: {address}",
                "Уважаемый(ая) {name}!\n\nПо адресу {address} нарушено теплоснабжение. Аварийная бригада уже работает.\n\nПриносим извинения за неудобства.",
                "{name}, авария: по адресу {address} нарушено теплоснабжение. Аварийная бригада уже работает.",
                "Здравствуйте, {name}. По адресу {address} произошла авария, теплоснабжение нарушено. Аварийная бригада уже работает. Нажмите 1, чтобы подтвердить получение.",
            ),
            t(
                "{name}: heating outage at {address}. A repair crew is at work.",
                "Outage: {address}",
                "Dear {name},\n\nThe heating at {address} is interrupted. A repair crew is at work.\n\nWe apologise for the inconvenience.",
                "{name}: heating outage at {address}. A repair crew is at work.",
                "Hello, {name}. There is a heating outage at {address}. A repair crew is at work. Press 1 to confirm you heard this message.",
            ),
        ),
        "emergency_outage" => (
            t(
                "{name}, авария: по адресу {address} отключение с {starts_at}. Бригада работает, ожидаемое восстановление: {expected_end}.",
                "Авария: {address}",
                "Уважаемый(ая) {name}!\n\nПо адресу {address} с {starts_at} аварийное отключение ({reason}). Аварийная бригада уже работает. Ожидаемое восстановление: {expected_end}.\n\nПриносим извинения за неудобства.",
                "{name}, авария: по адресу {address} отключение с {starts_at}. Ожидаемое восстановление: {expected_end}.",
                "Здравствуйте, {name}. По адресу {address} произошла авария, подача прекращена. Аварийная бригада уже работает. Ожидаемое восстановление: {expected_end}. Нажмите 1, чтобы подтвердить получение.",
            ),
            t(
                "{name}: emergency outage at {address} since {starts_at}. A crew is working; expected restoration: {expected_end}.",
                "Outage: {address}",
                "Dear {name},\n\nThere is an emergency outage at {address} since {starts_at} ({reason}). A repair crew is at work. Expected restoration: {expected_end}.\n\nWe apologise for the inconvenience.",
                "{name}: emergency outage at {address} since {starts_at}. Expected restoration: {expected_end}.",
                "Hello, {name}. There is an emergency outage at {address}. A repair crew is at work. Expected restoration: {expected_end}. Press 1 to confirm you heard this message.",
            ),
        ),
        "planned_outage_10d" | "planned_outage_2d" | "planned_outage" => (
            t(
                "{name}, плановое отключение по адресу {address}: с {starts_at} до {expected_end}.",
                "Плановое отключение: {address}",
                "Уважаемый(ая) {name}!\n\nПо адресу {address} запланировано отключение с {starts_at} до {expected_end}.\n\nСпасибо за понимание.",
                "{name}, плановое отключение по адресу {address}: с {starts_at} до {expected_end}.",
                "Здравствуйте, {name}. По адресу {address} запланировано отключение с {starts_at} до {expected_end}. Нажмите 1, чтобы подтвердить получение.",
            ),
            t(
                "{name}: planned outage at {address} from {starts_at} to {expected_end}.",
                "Planned outage: {address}",
                "Dear {name},\n\nA planned outage at {address} is scheduled from {starts_at} to {expected_end}.\n\nThank you for your understanding.",
                "{name}: planned outage at {address} from {starts_at} to {expected_end}.",
                "Hello, {name}. A planned outage at {address} is scheduled from {starts_at} to {expected_end}. Press 1 to confirm you heard this message.",
            ),
        ),
        "service_restored" => (
            t(
                "{name}, подача по адресу {address} восстановлена.",
                "Подача восстановлена: {address}",
                "Уважаемый(ая) {name}!\n\nПодача по адресу {address} восстановлена. Спасибо за терпение.",
                "{name}, подача по адресу {address} восстановлена.",
                "Здравствуйте, {name}. Подача по адресу {address} восстановлена. Спасибо за терпение.",
            ),
            t(
                "{name}: supply at {address} is restored.",
                "Supply restored: {address}",
                "Dear {name},\n\nThe supply at {address} is restored. Thank you for your patience.",
                "{name}: supply at {address} is restored.",
                "Hello, {name}. The supply at {address} is restored. Thank you for your patience.",
            ),
        ),
        "debt" => (
            t(
                "{name}, задолженность по лицевому счёту {account}: {amount} руб. Оплатить: {link}",
                "Задолженность по счёту {account}",
                "Уважаемый(ая) {name}!\n\nПо лицевому счёту {account} задолженность {amount} руб. Оплатить можно по ссылке: {link}",
                "{name}, задолженность по лицевому счёту {account}: {amount} руб. Оплатить: {link}",
                "Здравствуйте, {name}. По лицевому счёту {account} задолженность {amount} рублей. Пожалуйста, оплатите её.",
            ),
            t(
                "{name}: account {account} is {amount} RUB in arrears. Pay: {link}",
                "Arrears on account {account}",
                "Dear {name},\n\nAccount {account} is {amount} RUB in arrears. Pay here: {link}",
                "{name}: account {account} is {amount} RUB in arrears. Pay: {link}",
                "Hello, {name}. Account {account} is {amount} roubles in arrears. Please pay it.",
            ),
        ),
        _ => return None,
    };
    Some(BTreeMap::from([
        ("ru".to_owned(), ru),
        ("en".to_owned(), en),
    ]))
}

/// The `{name}` slots of a template, in order; an unclosed brace is an error.
pub fn slots(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| {
            format!(
                "`{{` at byte {} is never closed",
                template.len() - rest.len() + open
            )
        })?;
        let name = &after[..close];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "`{{{name}}}` is not a variable: use lowercase names such as {{address}}"
            ));
        }
        out.push(name.to_owned());
        rest = &after[close + 1..];
    }
    Ok(out)
}

/// Fills the slots; every slot must have a value (checked at launch by [`check`]).
pub fn fill(template: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err("unclosed `{`".into());
        };
        let name = &after[..close];
        match vars(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("variable {{{name}}} has no value")),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks a template set for the channels of a campaign: every language has a text for every channel,
/// and every slot is one of `known`. Errors name the field (`templates.ru.sms`).
pub fn check(
    set: &TemplateSet,
    channels: &[Channel],
    known: &BTreeSet<String>,
) -> Result<(), StorageError> {
    for lang in LANGUAGES {
        let Some(texts) = set.get(lang) else {
            return Err(StorageError::invalid(
                format!("templates.{lang}"),
                "missing: give texts in Russian (ru) and English (en)",
            ));
        };
        for &channel in channels {
            let (field, subject, text) = texts.for_channel(channel);
            let mut parts = vec![(field, text)];
            if channel == Channel::Email {
                parts.push(("email_subject", subject));
            }
            for (field, tpl) in parts {
                if tpl.trim().is_empty() {
                    return Err(StorageError::invalid(
                        format!("templates.{lang}.{field}"),
                        format!("empty, but the campaign sends by {channel}"),
                    ));
                }
                let names = slots(tpl)
                    .map_err(|e| StorageError::invalid(format!("templates.{lang}.{field}"), e))?;
                if let Some(missing) = names.iter().find(|n| !known.contains(*n)) {
                    let have: Vec<&str> = known.iter().map(String::as_str).collect();
                    return Err(StorageError::invalid(
                        format!("templates.{lang}.{field}"),
                        format!(
                            "variable {{{missing}}} is not given: add it to `variables` (known here: {})",
                            have.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    for lang in set.keys() {
        if !LANGUAGES.contains(&lang.as_str()) {
            return Err(StorageError::invalid(
                format!("templates.{lang}"),
                "unknown language: use ru or en",
            ));
        }
    }
    Ok(())
}

/// Renders the message of one channel in one language (`en` for English speakers, `ru` otherwise).
pub fn render(
    set: &TemplateSet,
    language: &str,
    channel: Channel,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Rendered, String> {
    let texts = set
        .get(language)
        .or_else(|| set.get("ru"))
        .ok_or_else(|| format!("no texts in {language}"))?;
    let (_, subject, text) = texts.for_channel(channel);
    Ok(Rendered {
        subject: fill(subject, vars)?,
        text: fill(text, vars)?,
    })
}

/// A variable's value as a message shows it: times (RFC 3339) in the tenant's zone as
/// `20.06.2025 09:00`, a null as "to be announced" in the reader's language, numbers and text as
/// they are.
pub fn display(value: &serde_json::Value, tz: chrono_tz::Tz, language: &str) -> String {
    match value {
        serde_json::Value::Null => if language == "en" {
            "to be announced"
        } else {
            "уточняется"
        }
        .into(),
        serde_json::Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => format_time(t.with_timezone(&Utc), tz),
            Err(_) => s.clone(),
        },
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

/// A time in the tenant's zone: `20.06.2025 09:00`.
pub fn format_time(t: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    t.with_timezone(&tz).format("%d.%m.%Y %H:%M").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn slots_are_filled_and_bad_ones_named() {
        assert_eq!(slots("a {x} b {y_2}").unwrap(), ["x", "y_2"]);
        assert!(slots("a {x").unwrap_err().contains("never closed"));
        assert!(slots("{Bad}").unwrap_err().contains("lowercase"));
        let vars = |n: &str| (n == "x").then(|| "икс".to_owned());
        assert_eq!(fill("a {x}!", &vars).unwrap(), "a икс!");
        assert_eq!(fill("{y}", &vars).unwrap_err(), "variable {y} has no value");
    }

    #[test]
    fn a_missing_variable_is_named_with_its_field() {
        let set = builtin("debt").unwrap();
        let err = check(
            &set,
            &[Channel::Sms],
            &known(&["name", "account", "amount"]),
        )
        .unwrap_err();
        let StorageError::Invalid { field, reason } = err else {
            panic!("{err:?}")
        };
        assert_eq!(field, "templates.ru.sms");
        assert!(
            reason.starts_with("variable {link} is not given"),
            "{reason}"
        );
        check(
            &set,
            &[Channel::Sms, Channel::Email, Channel::Voice],
            &known(&["name", "account", "amount", "link"]),
        )
        .unwrap();
        let mut partial = set.clone();
        partial.remove("en");
        assert!(matches!(
            check(&partial, &[Channel::Sms], &known(&["name", "account", "amount", "link"])),
            Err(StorageError::Invalid { field, .. }) if field == "templates.en"
        ));
        let mut empty = set;
        empty.get_mut("ru").unwrap().voice.clear();
        assert!(matches!(
            check(&empty, &[Channel::Voice], &known(&["name", "account", "amount", "link"])),
            Err(StorageError::Invalid { field, .. }) if field == "templates.ru.voice"
        ));
    }

    #[test]
    fn times_show_in_the_tenants_zone_and_language_picks_the_text() {
        let v = serde_json::json!("2025-06-20T06:00:00Z");
        assert_eq!(
            display(&v, chrono_tz::Europe::Moscow, "ru"),
            "20.06.2025 09:00"
        );
        assert_eq!(
            display(&v, chrono_tz::Asia::Yekaterinburg, "ru"),
            "20.06.2025 11:00"
        );
        assert_eq!(
            display(&serde_json::Value::Null, chrono_tz::UTC, "en"),
            "to be announced"
        );
        assert_eq!(
            display(&serde_json::json!(1520.5), chrono_tz::UTC, "ru"),
            "1520.5"
        );
        let set = builtin("service_restored").unwrap();
        let vars = |n: &str| match n {
            "name" => Some("Ivanov".to_owned()),
            "address" => Some("ул. Речная, 5".to_owned()),
            _ => None,
        };
        let en = render(&set, "en", Channel::Email, &vars).unwrap();
        assert_eq!(en.subject, "Supply restored: ул. Речная, 5");
        let ru = render(&set, "ru", Channel::Sms, &vars).unwrap();
        assert_eq!(
            ru.text,
            "Ivanov, подача по адресу ул. Речная, 5 восстановлена."
        );
    }
}
