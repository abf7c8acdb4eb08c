//! Who is calling: run aside from the call core for each new call (it reads the database), the result
//! goes back to the core as a message. Number -> consumer -> their complex -> IVR mode (the site's
//! override, else the tenant's business hours) and the emergency announcement of an active outage there.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::store::{self, IvrMode};
use crate::names::OutageStatus;
use crate::network::NetworkCache;
use crate::storage::consumers::{self, ConsumerFilter};
use crate::storage::outages::{self, OutageFilter};
use crate::storage::{Db, PageRequest, StorageError, sites, tenants};

/// What the core needs to greet a caller.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerInfo {
    pub tenant_id: Option<i64>,
    pub consumer_id: Option<i64>,
    /// The consumer's complex (top-level site).
    pub site_id: Option<i64>,
    /// `ru` or `en`.
    pub language: String,
    pub mode: IvrMode,
    /// Text to play before the menu: an override's announcement or an active outage's.
    pub announcement: Option<String>,
    /// The active outage on the caller's complex, which the caller may ask to be told the end of.
    pub outage_id: Option<i64>,
}

impl CallerInfo {
    pub fn unknown(language: &str) -> Self {
        Self {
            tenant_id: None,
            consumer_id: None,
            site_id: None,
            language: language.to_owned(),
            mode: IvrMode::Day,
            announcement: None,
            outage_id: None,
        }
    }
}

/// The E.164 form of a calling number (`+7...`), as consumers' phones are stored; `None` for
/// anything that is not a phone number (`sipp`, `anonymous`).
pub fn normalize(user: &str) -> Option<String> {
    let raw: String = user.chars().filter(|c| !" -().".contains(*c)).collect();
    let (plus, digits) = match raw.strip_prefix('+') {
        Some(d) => (true, d),
        None => (false, raw.as_str()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let e164 = if plus {
        digits.to_owned()
    } else if digits.len() == 11 && (digits.starts_with('8') || digits.starts_with('7')) {
        format!("7{}", &digits[1..])
    } else if digits.len() == 10 && digits.starts_with('9') {
        // A Russian mobile number without the country code.
        format!("7{digits}")
    } else {
        digits.to_owned()
    };
    (8..=15).contains(&e164.len()).then(|| format!("+{e164}"))
}

/// Looks the caller up. Errors are the database's; the core then greets the caller as unknown.
pub async fn lookup(
    db: &Db,
    network: &NetworkCache,
    number: Option<&str>,
    default_language: &str,
    now: DateTime<Utc>,
) -> Result<CallerInfo, StorageError> {
    let mut info = CallerInfo::unknown(default_language);
    let Some(number) = number else {
        return Ok(info);
    };
    let mut conn = db.conn().await?;
    let filter = ConsumerFilter {
        phone: Some(number.to_owned()),
        ..ConsumerFilter::default()
    };
    let page = PageRequest { after: 0, limit: 1 };
    let Some(consumer) = consumers::list(&mut conn, &filter, page)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(info);
    };
    info.consumer_id = Some(consumer.id);
    info.tenant_id = Some(consumer.tenant_id);
    info.language = consumer.language.clone();
    let tenant = tenants::get(&mut conn, consumer.tenant_id).await?;
    let tz: chrono_tz::Tz = tenant
        .time_zone
        .parse()
        .unwrap_or(chrono_tz::Europe::Moscow);
    let local = now.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let open = tenant
        .business_hours
        .span(local.weekday().num_days_from_monday() as usize)
        .is_some_and(|(a, b)| (a..b).contains(&minute));
    info.mode = if open { IvrMode::Day } else { IvrMode::Night };

    // The consumer's sites with their ancestors, nearest first; the complex is the last ancestor.
    let mut chain = Vec::new();
    for s in &consumer.sites {
        let up = sites::ancestors(&mut conn, *s).await?;
        if info.site_id.is_none() {
            info.site_id = up.last().copied();
        }
        chain.extend(up);
    }
    if let Some(o) = store::nearest_override(&mut conn, &chain).await? {
        info.mode = o.mode;
        info.announcement = o.announcement;
    }
    if info.announcement.is_none() {
        let filter = OutageFilter {
            tenant_id: Some(consumer.tenant_id),
            status: Some(OutageStatus::Active),
            ..OutageFilter::default()
        };
        let active = outages::list(
            &mut conn,
            &filter,
            PageRequest {
                after: 0,
                limit: 100,
            },
        )
        .await?;
        drop(conn);
        if !active.is_empty() {
            let idx = network.get(db).await?;
            let roots: Vec<i64> = info.site_id.into_iter().collect();
            let hit = active.iter().find(|o| {
                let a = crate::api::outages::affected_by(&idx, o);
                a.consumers.binary_search(&consumer.id).is_ok()
                    || roots.iter().any(|r| a.roots.binary_search(r).is_ok())
            });
            if let Some(o) = hit {
                let end = o
                    .expected_end
                    .map(|e| e.with_timezone(&tz).format("%H:%M").to_string());
                let text = announcement(&info.language, end.as_deref());
                info.announcement = Some(format!("{text} {}", notify_offer(&info.language)));
                info.outage_id = Some(o.id);
            }
        }
    }
    Ok(info)
}

/// "На вашем объекте аварийные работы, ожидаемое окончание 18:00" and its English twin.
pub fn announcement(language: &str, end: Option<&str>) -> String {
    match (language, end) {
        ("en", Some(t)) => format!("Emergency works at your site, expected to end at {t}."),
        ("en", None) => "Emergency works at your site; the end time is being clarified.".to_owned(),
        (_, Some(t)) => format!("На вашем объекте аварийные работы, ожидаемое окончание {t}."),
        (_, None) => "На вашем объекте аварийные работы, время окончания уточняется.".to_owned(),
    }
}

/// The offer after an outage's announcement (key `ivr::NOTIFY_KEY`).
pub fn notify_offer(language: &str) -> &'static str {
    if language == "en" {
        "To get an SMS when it is over, press 9."
    } else {
        "Чтобы получить SMS, когда работы закончатся, нажмите 9."
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{Format, ImportKind, ImportOptions, run};

    #[test]
    fn numbers_are_normalized_to_e164() {
        assert_eq!(normalize("+79161234567").as_deref(), Some("+79161234567"));
        assert_eq!(normalize("89161234567").as_deref(), Some("+79161234567"));
        assert_eq!(normalize("9161234567").as_deref(), Some("+79161234567"));
        assert_eq!(normalize("sipp"), None);
        assert_eq!(normalize("123"), None);
    }

    async fn setup() -> (Db, tempfile::TempDir) {
        let (db, dir) = crate::storage::test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        // Open around the clock in UTC: the mode is day unless overridden.
        let t = serde_json::from_value(serde_json::json!({
            "external_id": "t", "name": "T", "kind": "supplier", "time_zone": "UTC",
            "business_hours": {"mon": "00:00-24:00", "tue": "00:00-24:00", "wed": "00:00-24:00",
              "thu": "00:00-24:00", "fri": "00:00-24:00", "sat": "00:00-24:00", "sun": "00:00-24:00"}
        }))
        .unwrap();
        tenants::upsert(&mut c, &t).await.unwrap();
        let opts = ImportOptions {
            actor: "test".into(),
            ..Default::default()
        };
        let sites = "tenant,external_id,parent,kind,name\nt,rc,,residential_complex,RC\nt,b1,rc,building,B1\nt,a1,b1,apartment,A1\n";
        run(&db, ImportKind::Sites, Format::Csv, "s.csv", sites, &opts)
            .await
            .unwrap();
        let consumers = "tenant,external_id,kind,name,phones,language,sites\nt,c1,resident,Ivanov,+79161234567,en,a1\n";
        run(
            &db,
            ImportKind::Consumers,
            Format::Csv,
            "c.csv",
            consumers,
            &opts,
        )
        .await
        .unwrap();
        (db, dir)
    }

    #[tokio::test]
    async fn a_known_caller_in_an_outage_hears_the_announcement() {
        let (db, _d) = setup().await;
        let net = NetworkCache::default();
        let now = Utc::now();
        let unknown = lookup(&db, &net, Some("+70000000000"), "ru", now)
            .await
            .unwrap();
        assert_eq!(unknown, CallerInfo::unknown("ru"));

        let known = lookup(&db, &net, Some("+79161234567"), "ru", now)
            .await
            .unwrap();
        assert!(known.consumer_id.is_some());
        assert_eq!(known.language, "en");
        assert_eq!(known.mode, IvrMode::Day);
        assert_eq!(known.announcement, None);
        let mut c = db.conn().await.unwrap();
        let rc = crate::storage::id_by_external(&mut c, "sites", known.tenant_id.unwrap(), "rc")
            .await
            .unwrap();
        assert_eq!(known.site_id, rc);

        let outage: outages::NewOutage = serde_json::from_value(serde_json::json!({
            "tenant": "t", "kind": "emergency", "utility": "heat", "sites": ["b1"],
            "starts_at": (now - chrono::Duration::hours(1)).to_rfc3339(),
            "expected_end": "2030-01-01T18:00:00Z"
        }))
        .unwrap();
        outages::upsert(&mut c, &mut crate::storage::refs::Refs::new(), &outage)
            .await
            .unwrap();
        let hit = lookup(&db, &net, Some("+79161234567"), "ru", now)
            .await
            .unwrap();
        assert_eq!(
            hit.announcement.as_deref(),
            Some(
                "Emergency works at your site, expected to end at 18:00. To get an SMS when it \
                 is over, press 9."
            )
        );
        assert!(hit.outage_id.is_some());

        // A site override wins over business hours and carries its own announcement.
        store::set_override(
            &mut c,
            rc.unwrap(),
            Some(IvrMode::Night),
            Some("Closed today"),
            "test",
        )
        .await
        .unwrap();
        let over = lookup(&db, &net, Some("+79161234567"), "ru", now)
            .await
            .unwrap();
        assert_eq!(
            (over.mode, over.announcement.as_deref()),
            (IvrMode::Night, Some("Closed today"))
        );
    }
}
