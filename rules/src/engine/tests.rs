//! Unit tests of the engine: routing, sandbox, state, timers, cron, reloads.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::action::{IvrMode, Severity, SiteRef};
use crate::event::OutageInfo;
use crate::world::{AffectedView, SensorView, StaticWorld};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn t0() -> DateTime<Utc> {
    t("2025-01-10T08:00:00Z")
}

fn world() -> Arc<dyn World> {
    Arc::new(static_world())
}

fn static_world() -> StaticWorld {
    let mut w = StaticWorld::default();
    w.sensors.insert(
        "hp-3.p_supply".into(),
        SensorView {
            kind: "pressure".into(),
            unit: "bar".into(),
            tenant: "t1".into(),
            supply_point: Some("hp-3".into()),
            ..SensorView::default()
        },
    );
    w.sensors.insert(
        "hp-3.t_supply".into(),
        SensorView {
            kind: "temperature".into(),
            unit: "C".into(),
            tenant: "t1".into(),
            supply_point: Some("hp-3".into()),
            value: Some(71.5),
            ..SensorView::default()
        },
    );
    w.affected.push(AffectedView {
        tenant: "t1".into(),
        supply_point: "hp-3".into(),
        supply_points: vec!["hp-3".into()],
        complexes: vec![SiteRef {
            tenant: "t1".into(),
            site: "c-1".into(),
        }],
        sites: 4,
        consumers: 120,
        life_support: 1,
        social_objects: 0,
    });
    w.prepared()
}

fn reading(sensor: &str, value: f64, at: DateTime<Utc>) -> Event {
    Event {
        id: 1,
        at,
        source: "test".into(),
        kind: EventKind::Reading {
            sensor: sensor.into(),
            value,
        },
    }
}

fn load(set: &mut RuleSet, id: &str, src: &str) {
    let file = format!("{id}.rhai");
    if let Err(e) = set.load_source(id, src, Path::new(&file)) {
        panic!("{e}");
    }
}

#[test]
fn routes_readings_by_glob_and_by_kind() {
    let mut set = RuleSet::default();
    load(
        &mut set,
        "by_glob",
        r#"on_reading("hp-*.p_supply");
           fn on_event(ev) { if ev.value < 3.0 { raise_alarm("low:" + ev.sensor, "critical", "low " + ev.value); } }"#,
    );
    load(
        &mut set,
        "by_kind",
        r#"on_reading(#{ kind: "temperature", supply_point: "hp-*" });
           fn on_event(ev) { write_register("hp-3.valve", 42); }"#,
    );
    let w = world();
    let e = set.evaluate(&reading("hp-3.p_supply", 2.0, t0()), &w);
    assert_eq!(e.runs.len(), 1);
    assert_eq!(e.runs[0].rule, "by_glob");
    assert!(
        matches!(&e.runs[0].actions[..], [Action::RaiseAlarm { key, severity: Severity::Critical, .. }] if key == "low:hp-3.p_supply")
    );
    let e = set.evaluate(&reading("hp-3.t_supply", 70.0, t0()), &w);
    assert_eq!(
        e.into_actions(),
        vec![Action::WriteRegister {
            sensor: "hp-3.valve".into(),
            value: 42.0
        }]
    );
    assert!(
        set.evaluate(&reading("other", 1.0, t0()), &w)
            .runs
            .is_empty()
    );
}

#[test]
fn an_infinite_loop_is_stopped_and_others_still_act() {
    let mut set = RuleSet::default();
    load(
        &mut set,
        "a_loop",
        r#"on_reading("*"); fn on_event(ev) { raise_alarm("x", "minor", "m"); after(10, "t"); held_for("h", true, 1); loop { } }"#,
    );
    load(
        &mut set,
        "b_fine",
        r#"on_reading("*"); fn on_event(ev) { clear_alarm("k"); }"#,
    );
    load(
        &mut set,
        "c_recursion",
        r#"on_reading("*"); fn deep(n) { deep(n + 1) } fn on_event(ev) { deep(0) }"#,
    );
    let e = set.evaluate(&reading("s", 1.0, t0()), &world());
    assert_eq!(e.runs.len(), 3);
    let looped = &e.runs[0];
    assert!(looped.actions.is_empty(), "a failed run has no effect");
    let err = looped.error.as_ref().unwrap();
    assert!(err.limit, "{err:?}");
    assert_eq!(
        e.runs[1].actions,
        vec![Action::ClearAlarm {
            key: "k".into(),
            reason: None
        }]
    );
    assert!(e.runs[2].error.as_ref().unwrap().limit);
    assert_eq!(
        set.next_timer_due(),
        None,
        "timers of a failed run are dropped"
    );
    assert_eq!(
        set.export_state("a_loop").unwrap()["held"],
        serde_json::json!({})
    );
    let m = set.metrics("a_loop").unwrap();
    assert_eq!((m.evaluations, m.errors, m.limit_hits), (1, 1, 1));
    assert!(set.trace().any(|t| t.rule == "a_loop" && t.error.is_some()));
}

#[test]
fn the_time_budget_stops_a_slow_rule() {
    let mut set = RuleSet::new(Limits {
        max_operations: 0, // unlimited: only the clock stops it
        time_budget: std::time::Duration::from_millis(20),
        ..Limits::default()
    });
    load(
        &mut set,
        "slow",
        r#"on_reading("*"); fn on_event(ev) { let x = 0; loop { x += 1; } }"#,
    );
    let started = std::time::Instant::now();
    let e = set.evaluate(&reading("s", 1.0, t0()), &world());
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let err = e.runs[0].error.as_ref().unwrap();
    assert!(err.limit && err.message.contains("time budget"), "{err:?}");
}

#[test]
fn sandbox_refuses_eval_import_and_huge_data() {
    let mut set = RuleSet::default();
    let eval = set.load_source(
        "e",
        r#"on_reading("*"); fn on_event(ev) { eval("1") }"#,
        Path::new("e.rhai"),
    );
    assert!(eval.is_err(), "eval is disabled: {eval:?}");
    let import = set.load_source(
        "i",
        r#"import "x" as y; fn on_event(ev) {}"#,
        Path::new("i.rhai"),
    );
    assert!(import.is_err(), "no modules: {import:?}");
    load(
        &mut set,
        "big",
        r#"on_reading("*"); fn on_event(ev) { let s = "x"; loop { s += s; } }"#,
    );
    let e = set.evaluate(&reading("s", 1.0, t0()), &world());
    assert!(e.runs[0].error.as_ref().unwrap().limit);
    load(
        &mut set,
        "many",
        r#"on_reading("*"); fn on_event(ev) { for i in 0..1000 { clear_alarm("k" + i); } }"#,
    );
    let e = set.evaluate(&reading("s", 1.0, t0()), &world());
    let err = e
        .runs
        .iter()
        .find(|r| r.rule == "many")
        .unwrap()
        .error
        .as_ref()
        .unwrap();
    assert!(err.limit && err.message.contains("actions"), "{err:?}");
}

#[test]
fn a_broken_version_keeps_the_previous_one_and_says_where() {
    let mut set = RuleSet::default();
    load(
        &mut set,
        "r",
        r#"on_reading("*"); fn on_event(ev) { clear_alarm("v1"); }"#,
    );
    let err = set
        .load_source(
            "r",
            "on_reading(\"*\");\nfn on_event(ev) {\n  let x = ;\n}",
            Path::new("r.rhai"),
        )
        .unwrap_err();
    let RuleError::Compile(d) = err else {
        panic!("{err}")
    };
    assert_eq!((d.line, d.column), (Some(3), Some(11)), "{d}");
    assert_eq!(d.file, Path::new("r.rhai"));
    let e = set.evaluate(&reading("s", 1.0, t0()), &world());
    assert_eq!(
        e.into_actions(),
        vec![Action::ClearAlarm {
            key: "v1".into(),
            reason: None
        }]
    );

    let bad_key = set.load_source(
        "k",
        "on_reading(#{ sensr: \"x\" });\nfn on_event(ev) {}",
        Path::new("k.rhai"),
    );
    let msg = bad_key.unwrap_err().to_string();
    assert!(
        msg.contains("unknown trigger key `sensr`") && msg.contains("k.rhai:1"),
        "{msg}"
    );
    let no_handler = set.load_source("n", "on_reading(\"*\");", Path::new("n.rhai"));
    assert!(no_handler.unwrap_err().to_string().contains("on_event"));
    let action_at_top = set.load_source(
        "a",
        "raise_alarm(\"k\", \"minor\", \"m\");\nfn on_event(ev) {}",
        Path::new("a.rhai"),
    );
    assert!(
        action_at_top
            .unwrap_err()
            .to_string()
            .contains("only declare triggers")
    );
    let cron = set.load_source(
        "c",
        "on_cron(\"0 6 * * *\");\nfn on_event(ev) {}",
        Path::new("c.rhai"),
    );
    assert!(cron.unwrap_err().to_string().contains("cron"));
    let undefined = set.load_source(
        "u",
        "on_reading(\"*\");\nfn on_event(ev) { clear_alarm(nope); }",
        Path::new("u.rhai"),
    );
    assert!(undefined.is_err(), "strict variables");
    assert_eq!(set.rule_ids(), vec!["r"]);
    assert!(set.remove("r"));
    assert!(
        set.evaluate(&reading("s", 1.0, t0()), &world())
            .runs
            .is_empty()
    );
}

#[test]
fn held_for_hysteresis_and_state_survive_export_and_import() {
    let src = r#"
        on_reading("hp-3.p_supply");
        fn on_event(ev) {
            this.seen = (this.seen ?? 0) + 1;
            let low = held_for("low", ev.value < 3.0, 60);
            let high = hysteresis("h", ev.value, 2.0, 4.0);
            if low && !(this.active ?? false) {
                this.active = true;
                raise_alarm("p", "critical", "low");
            }
            if high && (this.active ?? false) {
                this.active = false;
                clear_alarm("p");
            }
        }"#;
    let w = world();
    let mut set = RuleSet::default();
    load(&mut set, "p", src);
    let run = |set: &mut RuleSet, v: f64, secs: i64| {
        set.evaluate(
            &reading("hp-3.p_supply", v, t0() + Duration::seconds(secs)),
            &w,
        )
        .into_actions()
    };
    assert!(run(&mut set, 2.5, 0).is_empty());
    assert!(run(&mut set, 2.4, 30).is_empty());
    assert!(set.take_dirty().contains(&"p".to_string()));
    assert!(set.take_dirty().is_empty());
    let state = set.export_state("p").unwrap();
    assert_eq!(state["vars"]["seen"], 2);
    assert_eq!(state["held"]["low"], "2025-01-10T08:00:00Z");

    // A restart: a fresh set, state imported before the rule is loaded.
    let mut set = RuleSet::default();
    set.import_state("p", state).unwrap();
    load(&mut set, "p", src);
    assert_eq!(
        run(&mut set, 2.6, 61).len(),
        1,
        "held for 61 s across the restart"
    );
    assert!(run(&mut set, 2.6, 90).is_empty(), "raised once");
    assert!(
        run(&mut set, 3.5, 100).is_empty(),
        "between low and high: no change"
    );
    assert_eq!(
        run(&mut set, 4.1, 110),
        vec![Action::ClearAlarm {
            key: "p".into(),
            reason: None
        }]
    );
}

#[test]
fn timers_fire_in_order_with_their_data_and_persist() {
    let src = r#"
        on_outage(#{ kind: "planned" });
        fn on_event(ev) {
            if ev.type == "outage_opened" {
                at(unix(ev.starts_at) - 86400, "day_before", #{ id: ev.id });
                after(60, "soon");
                at("06:00", "Europe/Moscow", "morning", ());
            } else if ev.type == "timer" {
                notify_staff("on_duty_engineer", ev.name + " " + ev.at + " " + (ev.data?.id ?? "-"));
            }
        }"#;
    let mut set = RuleSet::default();
    load(&mut set, "n", src);
    let w = world();
    let outage = OutageInfo {
        id: 12,
        tenant: "t1".into(),
        external_id: Some("o-12".into()),
        kind: "planned".into(),
        utility: "heat".into(),
        supply_point: Some("hp-3".into()),
        status: "planned".into(),
        reason: "repair".into(),
        starts_at: t("2025-01-12T09:00:00Z"),
        expected_end: None,
        actual_end: None,
    };
    let opened = Event {
        id: 5,
        at: t0(),
        source: "api".into(),
        kind: EventKind::OutageOpened(outage.clone()),
    };
    assert!(set.evaluate(&opened, &w).runs[0].error.is_none());
    let emergency = Event {
        kind: EventKind::OutageOpened(OutageInfo {
            kind: "emergency".into(),
            ..outage
        }),
        ..opened
    };
    assert!(set.evaluate(&emergency, &w).runs.is_empty());
    assert_eq!(set.next_timer_due(), Some(t0() + Duration::seconds(60)));
    let state = set.export_state("n").unwrap();
    let mut set = RuleSet::default();
    load(&mut set, "n", src);
    set.import_state("n", state).unwrap();
    let msgs = |e: Evaluation| -> Vec<String> {
        e.into_actions()
            .into_iter()
            .map(|a| match a {
                Action::NotifyStaff { message, .. } => message,
                other => format!("{other:?}"),
            })
            .collect()
    };
    assert!(
        set.fire_due(t0() + Duration::seconds(59), &w)
            .runs
            .is_empty()
    );
    assert_eq!(
        msgs(set.fire_due(t("2025-01-11T04:00:00Z"), &w)),
        vec![
            "soon 2025-01-10T08:01:00+00:00 -",
            "morning 2025-01-11T03:00:00+00:00 -",
        ]
    );
    assert_eq!(
        msgs(set.fire_due(t("2025-01-13T00:00:00Z"), &w)),
        vec!["day_before 2025-01-11T09:00:00+00:00 12"]
    );
    assert_eq!(set.next_timer_due(), None);
}

#[test]
fn cron_runs_each_occurrence_once_in_its_time_zone() {
    let mut set = RuleSet::default();
    load(
        &mut set,
        "morning",
        r#"on_cron("0 0 6 * * *", "Europe/Moscow");
           fn on_event(ev) { let l = local(ev.ts, "Europe/Moscow"); notify_staff("dispatcher", ev.type + " " + l.time); }"#,
    );
    let w = world();
    let from = t("2025-01-10T00:00:00Z");
    assert_eq!(set.next_cron_due(from), Some(t("2025-01-10T03:00:00Z")));
    let e = set.run_cron(from, from + Duration::days(2), &w);
    let actions = e.into_actions();
    assert_eq!(actions.len(), 2);
    assert_eq!(
        actions[0],
        Action::NotifyStaff {
            tenant: None,
            to: "dispatcher".into(),
            message: "cron 06:00".into()
        }
    );
    assert!(
        set.run_cron(
            from + Duration::days(2),
            from + Duration::days(2) + Duration::hours(1),
            &w
        )
        .runs
        .is_empty()
    );
}

#[test]
fn reads_the_world_and_builds_every_action() {
    let mut w = StaticWorld::default();
    let base = t0();
    for i in 0..10 {
        w.history
            .entry("hp-3.p_supply".into())
            .or_default()
            .push((base + Duration::seconds(i * 10), 5.0 - i as f64 * 0.1));
    }
    let src = r#"
        on_reading("*");
        fn on_event(ev) {
            let a = affected("t1", "hp-3");
            let none = affected("t1", "nope");
            log("consumers " + a.consumers + " none " + none);
            let rate = rate_of_change(ev.sensor, 90);
            let avg = moving_average(ev.sensor, 30);
            log(`rate ${(rate * 1000.0).round()} avg ${avg} min ${min_over(ev.sensor, 90)} max ${max_over(ev.sensor, 90)}`);
            raise_alarm(#{ key: "k", severity: "major", message: "m", tenant: "t1",
                           site: a.complexes[0], supply_point: "hp-3" });
            set_ivr_mode(a.complexes, "emergency", "Уважаемые жители!");
            revert_ivr_mode(a.complexes[0]);
            record_outage(#{ tenant: "t1", external_id: "x", kind: "emergency" });
            close_outage("t1", "x");
            launch_campaign(#{ name: "n", tenant: "t1", audience: #{ supply_point: "hp-3" } });
            create_ticket(#{ tenant: "t1", site: "c-1", category: "leak" });
            notify_staff(#{ to: "on_duty_engineer", message: "m" });
            write_register("hp-3.valve", 1.5);
            if last("nope") == () { log("no last"); }
            log(interpolate([[-30, 95], [0, 60], [10, 40]], -15));
        }"#;
    let mut set = RuleSet::default();
    load(&mut set, "all", src);
    let mut full = static_world();
    full.history = w.history;
    let full: Arc<dyn World> = Arc::new(full.prepared());
    let e = set.evaluate(
        &reading("hp-3.p_supply", 4.1, base + Duration::seconds(90)),
        &full,
    );
    let run = &e.runs[0];
    assert!(run.error.is_none(), "{:?}", run.error);
    let names: Vec<&str> = run.actions.iter().map(Action::name).collect();
    assert_eq!(
        names,
        vec![
            "raise_alarm",
            "set_ivr_mode",
            "revert_ivr_mode",
            "record_outage",
            "close_outage",
            "launch_campaign",
            "create_ticket",
            "notify_staff",
            "write_register"
        ]
    );
    assert!(
        matches!(&run.actions[1], Action::SetIvrMode { mode: IvrMode::Emergency, announcement: Some(a), sites } if a.starts_with("Уважаемые") && sites.len() == 1)
    );
    assert_eq!(run.logs[0], "consumers 120 none ");
    assert_eq!(run.logs[1], "rate -10.0 avg 4.25 min 4.1 max 5.0");
    assert_eq!(run.logs[2], "no last");
    assert_eq!(run.logs[3], "77.5");
}

#[test]
fn bad_action_arguments_fail_the_run_with_a_message() {
    let mut set = RuleSet::default();
    load(
        &mut set,
        "bad",
        r#"on_reading("*"); fn on_event(ev) { raise_alarm("k", "catastrophic", "m"); }"#,
    );
    load(
        &mut set,
        "bad2",
        r#"on_reading("*"); fn on_event(ev) { raise_alarm(#{ key: "k", severity: "minor", mesage: "m" }); }"#,
    );
    let e = set.evaluate(&reading("s", 1.0, t0()), &world());
    let msgs: Vec<String> = e.errors().map(|(_, e)| e.to_string()).collect();
    assert!(msgs[0].contains("catastrophic"), "{msgs:?}");
    assert!(msgs[1].contains("mesage"), "{msgs:?}");
    assert!(!e.runs[0].error.as_ref().unwrap().limit);
}

#[test]
fn dry_run_compiles_without_installing() {
    let events = vec![
        reading("a", 1.0, t0()),
        reading("a", 5.0, t0() + Duration::seconds(1)),
    ];
    let out = dry_run(
        r#"on_reading("a"); fn on_event(ev) { if ev.value > 2 { clear_alarm("a"); } }"#,
        &events,
        &StaticWorld::default(),
    )
    .unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].actions().count(), 0);
    assert_eq!(out[1].actions().count(), 1);
    assert!(dry_run("fn x(", &events, &StaticWorld::default()).is_err());
}

#[test]
fn calls_and_tickets_reach_rules_that_filter_on_them() {
    use crate::event::{CallInfo, TicketInfo};
    let mut set = RuleSet::default();
    load(
        &mut set,
        "surge",
        r#"on_call(#{ direction: "inbound", site: "c-*" });
           fn on_event(ev) {
               let n = (this[ev.site] ?? 0) + 1;
               this[ev.site] = n;
               if n == 3 { notify_staff("dispatcher", "calls surge at " + ev.site + " from " + ev.from); }
           }"#,
    );
    load(
        &mut set,
        "overdue",
        r#"on_ticket(#{ priority: "urgent" });
           fn on_event(ev) { if ev.type == "ticket_overdue" { notify_staff("chief", "ticket " + ev.id + " " + ev.category); } }"#,
    );
    let w = world();
    let call = |n: u64, site: &str, direction: &str| Event {
        id: n,
        at: t0(),
        source: "telephony".into(),
        kind: EventKind::CallStarted(CallInfo {
            id: n as i64,
            tenant: Some("t1".into()),
            direction: direction.into(),
            from: format!("+7916000000{n}"),
            to: "ivr".into(),
            site: Some(site.into()),
            consumer: None,
            purpose: None,
            outcome: None,
            duration_s: None,
        }),
    };
    let mut actions = Vec::new();
    for (n, site, dir) in [
        (1, "c-1", "inbound"),
        (2, "c-1", "outbound"),
        (3, "x-1", "inbound"),
        (4, "c-1", "inbound"),
        (5, "c-1", "inbound"),
    ] {
        actions.extend(set.evaluate(&call(n, site, dir), &w).into_actions());
    }
    assert_eq!(
        actions,
        vec![Action::NotifyStaff {
            tenant: None,
            to: "dispatcher".into(),
            message: "calls surge at c-1 from +79160000005".into()
        }]
    );
    let ticket = |kind: fn(TicketInfo) -> EventKind, priority: &str| Event {
        id: 9,
        at: t0(),
        source: "tickets".into(),
        kind: kind(TicketInfo {
            id: 7,
            tenant: "t1".into(),
            site: None,
            category: "heating".into(),
            status: "new".into(),
            priority: priority.into(),
            assignee: None,
            due_at: None,
        }),
    };
    let w2 = world();
    assert!(
        set.evaluate(&ticket(EventKind::TicketChanged, "urgent"), &w2)
            .into_actions()
            .is_empty()
    );
    assert!(
        set.evaluate(&ticket(EventKind::TicketOverdue, "low"), &w2)
            .runs
            .is_empty()
    );
    assert_eq!(
        set.evaluate(&ticket(EventKind::TicketOverdue, "urgent"), &w2)
            .into_actions(),
        vec![Action::NotifyStaff {
            tenant: None,
            to: "chief".into(),
            message: "ticket 7 heating".into()
        }]
    );
}
