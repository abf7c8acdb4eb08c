//! Working hours of field staff and the free slots in them: pure functions over a worker's weekly
//! hours, the days that differ, and the visits already booked. Local times are in the worker's time
//! zone and turned into UTC per day, so a week that crosses a daylight-saving change stays right.

use std::collections::BTreeMap;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::Serialize;
use utoipa::ToSchema;

/// Keys of the weekly hours, Monday first.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Longest range of slots asked for at once.
pub const MAX_RANGE_DAYS: i64 = 62;

/// One span of working time in a day, local: `09:00-13:00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Span {
    /// Parses `HH:MM-HH:MM`; the end must come after the start (`24:00` ends at midnight).
    pub fn parse(s: &str) -> Result<Span, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}`: expected HH:MM-HH:MM"))?;
        let time = |t: &str| {
            let t = t.trim();
            if t == "24:00" {
                return Ok(None);
            }
            NaiveTime::parse_from_str(t, "%H:%M")
                .map(Some)
                .map_err(|_| format!("`{s}`: `{t}` is not a time HH:MM"))
        };
        let start = time(a)?.ok_or_else(|| format!("`{s}`: a span cannot start at 24:00"))?;
        let end = time(b)?;
        match end {
            Some(end) if end <= start => Err(format!("`{s}`: the end must come after the start")),
            Some(end) => Ok(Span { start, end }),
            None => Ok(Span {
                start,
                end: NaiveTime::MIN,
            }),
        }
    }

    /// The span on a given local date, in UTC (an end of `00:00` is the next midnight).
    fn on(&self, tz: Tz, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let start = local(tz, day.and_time(self.start))?;
        let end_day = if self.end == NaiveTime::MIN {
            day.succ_opt()?
        } else {
            day
        };
        let end = local(tz, end_day.and_time(self.end))?;
        (end > start).then_some((start, end))
    }
}

/// A local time to UTC: the earlier of two in a repeated hour, the first valid minute after a gap.
fn local(tz: Tz, t: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&t) {
        LocalResult::Single(d) => Some(d.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, _) => Some(a.with_timezone(&Utc)),
        LocalResult::None => match tz.from_local_datetime(&(t + Duration::hours(1))) {
            LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => Some(d.with_timezone(&Utc)),
            LocalResult::None => None,
        },
    }
}

/// Parses a list of spans, naming the field on error; spans must not overlap.
pub fn parse_spans(field: &str, spans: &[String]) -> Result<Vec<Span>, (String, String)> {
    let mut out = Vec::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        out.push(Span::parse(s).map_err(|e| (format!("{field}[{i}]"), e))?);
    }
    out.sort_by_key(|s| s.start);
    for pair in out.windows(2) {
        let ends = |s: &Span| {
            if s.end == NaiveTime::MIN {
                None
            } else {
                Some(s.end)
            }
        };
        if ends(&pair[0]).is_none_or(|e| e > pair[1].start) {
            return Err((field.to_owned(), "spans overlap".to_owned()));
        }
    }
    Ok(out)
}

/// A worker's working time: weekly hours and the days that differ.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub tz: Tz,
    /// Monday first.
    pub weekly: [Vec<Span>; 7],
    /// Days with other hours; an empty list is a day off.
    pub days: BTreeMap<NaiveDate, Vec<Span>>,
}

impl Schedule {
    /// From the stored form (`{"mon": ["09:00-18:00"]}`); errors name the field.
    pub fn parse(
        tz: Tz,
        hours: &BTreeMap<String, Vec<String>>,
        days: &[(NaiveDate, Vec<String>)],
    ) -> Result<Schedule, (String, String)> {
        let mut weekly: [Vec<Span>; 7] = Default::default();
        for (key, spans) in hours {
            let i = DAYS.iter().position(|d| d == key).ok_or_else(|| {
                (
                    format!("hours.{key}"),
                    format!("not a day; expected one of {}", DAYS.join(", ")),
                )
            })?;
            weekly[i] = parse_spans(&format!("hours.{key}"), spans)?;
        }
        let mut map = BTreeMap::new();
        for (day, spans) in days {
            map.insert(*day, parse_spans(&format!("days.{day}"), spans)?);
        }
        Ok(Schedule {
            tz,
            weekly,
            days: map,
        })
    }

    fn spans(&self, day: NaiveDate) -> &[Span] {
        match self.days.get(&day) {
            Some(spans) => spans,
            None => &self.weekly[weekday_index(day.weekday())],
        }
    }

    /// Working intervals (UTC) that overlap `[from, to)`, in order.
    pub fn intervals(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let mut out = Vec::new();
        // One local day before and after: a zone far from UTC shifts the dates.
        let first = from.with_timezone(&self.tz).date_naive() - Duration::days(1);
        let last = to.with_timezone(&self.tz).date_naive() + Duration::days(1);
        let mut day = first;
        while day <= last {
            for span in self.spans(day) {
                if let Some((a, b)) = span.on(self.tz, day)
                    && a < to
                    && b > from
                {
                    out.push((a, b));
                }
            }
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
        out.sort();
        out
    }

    /// Whether `[start, end)` lies inside one working interval.
    pub fn covers(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.intervals(start, end)
            .iter()
            .any(|(a, b)| *a <= start && end <= *b)
    }
}

fn weekday_index(d: Weekday) -> usize {
    d.num_days_from_monday() as usize
}

/// A free slot of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Slot {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Slots of `len` inside the working intervals within `[from, to)`, each interval cut from its start,
/// leaving out those that overlap a booked visit. A booking at an odd time shifts nothing: the
/// slots it overlaps are simply gone.
pub fn free_slots(
    schedule: &Schedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    len: Duration,
    booked: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Vec<Slot> {
    let mut out = Vec::new();
    if len <= Duration::zero() {
        return out;
    }
    for (a, b) in schedule.intervals(from, to) {
        let mut start = a;
        while start + len <= b {
            let end = start + len;
            let inside = start >= from && end <= to;
            let free = !booked.iter().any(|(s, e)| *s < end && *e > start);
            if inside && free {
                out.push(Slot { start, end });
            }
            start = end;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn weekdays(tz: Tz, spans: &[&str]) -> Schedule {
        let mut hours = BTreeMap::new();
        for d in &DAYS[..5] {
            hours.insert(
                (*d).to_owned(),
                spans.iter().map(|s| (*s).to_owned()).collect(),
            );
        }
        Schedule::parse(tz, &hours, &[]).unwrap()
    }

    #[test]
    fn spans_parse_and_refuse_nonsense() {
        assert_eq!(
            Span::parse("09:00-13:30").unwrap(),
            Span {
                start: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
                end: NaiveTime::from_hms_opt(13, 30, 0).unwrap()
            }
        );
        assert!(Span::parse("13:00-09:00").unwrap_err().contains("after"));
        assert!(Span::parse("9-13").is_err());
        assert!(Span::parse("25:00-26:00").is_err());
        assert!(Span::parse("22:00-24:00").is_ok());
        let e = parse_spans("hours.mon", &["09:00-13:00".into(), "12:00-18:00".into()]);
        assert_eq!(e.unwrap_err().1, "spans overlap");
        let mut bad = BTreeMap::new();
        bad.insert("monday".to_owned(), vec!["09:00-10:00".to_owned()]);
        assert_eq!(
            Schedule::parse(chrono_tz::UTC, &bad, &[]).unwrap_err().0,
            "hours.monday"
        );
    }

    #[test]
    fn slots_follow_the_local_hours_of_the_worker() {
        // Moscow is UTC+3 all year: 09:00-12:00 local is 06:00-09:00 UTC.
        let s = weekdays(chrono_tz::Europe::Moscow, &["09:00-12:00", "13:00-15:00"]);
        // Monday 2026-11-23.
        let slots = free_slots(
            &s,
            at("2026-11-23T00:00:00Z"),
            at("2026-11-24T00:00:00Z"),
            Duration::hours(1),
            &[],
        );
        let starts: Vec<String> = slots
            .iter()
            .map(|s| s.start.format("%H:%M").to_string())
            .collect();
        assert_eq!(starts, ["06:00", "07:00", "08:00", "10:00", "11:00"]);
        // Two-hour slots leave the tail of the morning unused.
        let slots = free_slots(
            &s,
            at("2026-11-23T00:00:00Z"),
            at("2026-11-24T00:00:00Z"),
            Duration::hours(2),
            &[],
        );
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn booked_visits_and_days_off_take_slots_away() {
        let mut s = weekdays(chrono_tz::UTC, &["09:00-12:00"]);
        let booked = [(at("2026-11-23T09:30:00Z"), at("2026-11-23T10:30:00Z"))];
        let slots = free_slots(
            &s,
            at("2026-11-23T00:00:00Z"),
            at("2026-11-24T00:00:00Z"),
            Duration::hours(1),
            &booked,
        );
        assert_eq!(
            slots,
            [Slot {
                start: at("2026-11-23T11:00:00Z"),
                end: at("2026-11-23T12:00:00Z")
            }]
        );
        s.days
            .insert(NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(), Vec::new());
        assert!(
            free_slots(
                &s,
                at("2026-11-23T00:00:00Z"),
                at("2026-11-24T00:00:00Z"),
                Duration::hours(1),
                &[]
            )
            .is_empty()
        );
        // A Saturday has no weekly hours.
        assert!(
            free_slots(
                &s,
                at("2026-11-28T00:00:00Z"),
                at("2026-11-29T00:00:00Z"),
                Duration::hours(1),
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn ranges_across_days_and_zones_far_from_utc() {
        // Vladivostok is UTC+10: Tuesday 09:00 local is Monday 23:00 UTC.
        let s = weekdays(chrono_tz::Asia::Vladivostok, &["09:00-10:00"]);
        let slots = free_slots(
            &s,
            at("2026-11-23T00:00:00Z"),
            at("2026-11-26T00:00:00Z"),
            Duration::hours(1),
            &[],
        );
        let starts: Vec<DateTime<Utc>> = slots.iter().map(|s| s.start).collect();
        assert_eq!(
            starts,
            [
                at("2026-11-23T23:00:00Z"),
                at("2026-11-24T23:00:00Z"),
                at("2026-11-25T23:00:00Z")
            ]
        );
        // Working till midnight and a night shift's evening part.
        let night = weekdays(chrono_tz::UTC, &["22:00-24:00"]);
        assert!(night.covers(at("2026-11-23T23:00:00Z"), at("2026-11-24T00:00:00Z")));
    }

    #[test]
    fn daylight_saving_keeps_local_hours() {
        // Berlin: CET (UTC+1) until 2026-10-25, then... the change is on Sunday 2026-10-25; the
        // Friday before is UTC+2, the Monday after UTC+1.
        let s = weekdays(chrono_tz::Europe::Berlin, &["09:00-10:00"]);
        let slots = free_slots(
            &s,
            at("2026-10-23T00:00:00Z"),
            at("2026-10-27T00:00:00Z"),
            Duration::hours(1),
            &[],
        );
        let starts: Vec<DateTime<Utc>> = slots.iter().map(|s| s.start).collect();
        assert_eq!(
            starts,
            [at("2026-10-23T07:00:00Z"), at("2026-10-26T08:00:00Z")]
        );
    }

    #[test]
    fn covers_needs_one_whole_interval() {
        let s = weekdays(chrono_tz::UTC, &["09:00-12:00", "13:00-15:00"]);
        assert!(s.covers(at("2026-11-23T09:15:00Z"), at("2026-11-23T10:15:00Z")));
        assert!(!s.covers(at("2026-11-23T11:30:00Z"), at("2026-11-23T12:30:00Z")));
        assert!(!s.covers(at("2026-11-23T12:00:00Z"), at("2026-11-23T13:00:00Z")));
        assert!(!s.covers(at("2026-11-22T09:00:00Z"), at("2026-11-22T10:00:00Z")));
    }
}
