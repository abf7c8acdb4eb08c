//! Tickets and field workers of the demo data set (`hub serve --demo`): three workers with weekly
//! hours (one with a day off), and a few tickets in every status, one with a booked visit and one
//! with a call-back reminder, so the tickets page and the API have something to show.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use sqlx::AnyConnection;

use crate::storage::StorageError;
use crate::storage::refs::Refs;
use crate::storage::tickets::{self as store, NewRow, Priority, TicketStatus};
use crate::storage::workers::{self as staff, WorkerRow};

/// Weekday hours with a lunch break, Moscow time.
fn office_hours(saturday: bool) -> BTreeMap<String, Vec<String>> {
    let mut hours: BTreeMap<String, Vec<String>> = super::schedule::DAYS[..5]
        .iter()
        .map(|d| {
            (
                (*d).to_owned(),
                vec!["09:00-13:00".to_owned(), "14:00-18:00".to_owned()],
            )
        })
        .collect();
    if saturday {
        hours.insert("sat".into(), vec!["10:00-15:00".into()]);
    }
    hours
}

/// One demo ticket: site, category, priority, description, contact, status path, worker.
struct Demo {
    site: &'static str,
    category: &'static str,
    priority: Priority,
    description: &'static str,
    phone: &'static str,
    path: &'static [TicketStatus],
    worker: Option<&'static str>,
}

const TICKETS: [Demo; 5] = [
    Demo {
        site: "rc-1-b1-e1-a1",
        category: "heating",
        priority: Priority::Normal,
        description: "Холодные батареи в спальне",
        phone: "+79170000101",
        path: &[],
        worker: None,
    },
    Demo {
        site: "rc-1-basement",
        category: "water",
        priority: Priority::Urgent,
        description: "Течь в техническом подвале, вода на полу",
        phone: "+79170000102",
        path: &[TicketStatus::Assigned],
        worker: Some("plumber-1"),
    },
    Demo {
        site: "rc-2-yard",
        category: "power",
        priority: Priority::High,
        description: "Не горит освещение во дворе",
        phone: "+79170000103",
        path: &[TicketStatus::Assigned, TicketStatus::InProgress],
        worker: Some("electrician-1"),
    },
    Demo {
        site: "rc-1-b2",
        category: "callback",
        priority: Priority::Low,
        description: "Перезвонить по начислению за отопление",
        phone: "+79170000104",
        path: &[],
        worker: None,
    },
    Demo {
        site: "rc-1-parking",
        category: "other",
        priority: Priority::Normal,
        description: "Не открывается шлагбаум паркинга",
        phone: "+79170000105",
        path: &[
            TicketStatus::Assigned,
            TicketStatus::InProgress,
            TicketStatus::Done,
        ],
        worker: Some("fitter-1"),
    },
];

/// Writes the demo workers and tickets of `tenant` (inside the demo's transaction). Returns the
/// number of tickets.
pub async fn seed(
    conn: &mut AnyConnection,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<usize, StorageError> {
    let mut refs = Refs::new();
    let tenant_id = refs.tenant(conn, tenant).await?;
    let no_skills: [String; 0] = [];
    let workers = [
        ("plumber-1", "Сидоров Пётр", "plumber", "+79170000201", true),
        (
            "electrician-1",
            "Кузнецов Иван",
            "electrician",
            "+79170000202",
            false,
        ),
        (
            "fitter-1",
            "Морозов Алексей",
            "fitter",
            "+79170000203",
            false,
        ),
    ];
    let mut ids = BTreeMap::new();
    for (ext, name, trade, phone, saturday) in workers {
        let hours = office_hours(saturday);
        let skills: Vec<String> = match trade {
            "plumber" => vec!["water".into(), "sewage".into(), "heating".into()],
            "electrician" => vec!["power".into()],
            _ => no_skills.to_vec(),
        };
        let w = staff::upsert(
            conn,
            &WorkerRow {
                tenant_id,
                external_id: ext,
                name,
                trade,
                skills: &skills,
                phone: Some(phone),
                email: None,
                telegram: None,
                time_zone: "Europe/Moscow",
                hours: &hours,
                user_id: None,
                active: true,
            },
            now,
        )
        .await?;
        ids.insert(ext, w.id);
    }
    // The electrician is off the day after tomorrow.
    if let Some(id) = ids.get("electrician-1") {
        let day = (now + Duration::days(2)).date_naive();
        staff::set_day(conn, *id, day, &[], "отгул").await?;
    }
    for (i, d) in TICKETS.iter().enumerate() {
        let created = now - Duration::hours(30 - 6 * i as i64);
        let status = d.path.last().copied().unwrap_or(TicketStatus::New);
        let worker_id = d.worker.and_then(|w| ids.get(w).copied());
        let site_id = refs.site(conn, "site", tenant_id, d.site).await?;
        let due = created + crate::tickets::TicketsConfig::default().due_after(d.priority);
        let id = store::insert(
            conn,
            &NewRow {
                tenant_id,
                site_id: Some(site_id),
                category: d.category,
                description: d.description,
                consumer_id: None,
                contact_phone: Some(d.phone),
                status,
                priority: d.priority,
                assignee_id: None,
                worker_id,
                due_at: due,
                source: "demo",
                created_by: "operator",
            },
            created,
        )
        .await?;
        store::add_history(conn, id, "operator", "status", None, Some("new"), created).await?;
        let mut old = TicketStatus::New;
        for (step, s) in d.path.iter().enumerate() {
            let at = created + Duration::minutes(20 * (step as i64 + 1));
            let actor = if *s == TicketStatus::Done {
                d.worker.unwrap_or("operator")
            } else {
                "dispatcher"
            };
            store::add_history(
                conn,
                id,
                actor,
                "status",
                Some(old.as_str()),
                Some(s.as_str()),
                at,
            )
            .await?;
            old = *s;
        }
        if d.category == "callback" {
            store::add_reminder(
                conn,
                id,
                now + Duration::hours(2),
                "Сообщить жильцу результат перерасчёта",
                "operator",
                created,
            )
            .await?;
        }
        if d.category == "water" {
            // A visit tomorrow at 10:00 Moscow time (07:00 UTC).
            let day = (now + Duration::days(1)).date_naive();
            let start = day.and_hms_opt(7, 0, 0).unwrap_or_default().and_utc();
            sqlx::query("UPDATE tickets SET slot_start = $1, slot_end = $2 WHERE id = $3")
                .bind(crate::storage::to_ms(start))
                .bind(crate::storage::to_ms(start + Duration::hours(1)))
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(TICKETS.len())
}
