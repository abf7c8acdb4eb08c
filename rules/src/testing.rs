//! Rule tests as data: `NAME.test.json` fixtures next to the rules give a world, input events with
//! their times and the actions expected after each step. `run_fixtures` runs them (the hub's
//! `hub rules test DIR`), `check_dir` compiles and lints a rule directory (`hub rules check DIR`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::engine::{Evaluation, RuleSet, rule_files};
use crate::error::{Diagnostic, Level, RuleError};
use crate::event::{Event, EventKind};
use crate::world::{StaticWorld, World};

/// Suffix of fixture files.
pub const FIXTURE_SUFFIX: &str = ".test.json";

/// A fixture file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(default)]
    pub description: Option<String>,
    /// Rule files (relative to the fixture) loaded for every case; default: `NAME.rhai` for
    /// `NAME.test.json`.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    #[serde(default)]
    pub world: StaticWorld,
    pub cases: Vec<Case>,
}

/// One case: a fresh rule set (empty state), the steps in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Where the clock starts for cron (default: the time of the first step).
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    pub steps: Vec<Step>,
}

/// An event, or time passing (`advance_to`). Before either, due timers and cron occurrences up to
/// that time run. `expect` (if present) is compared with all actions of the step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub event: Option<FixtureEvent>,
    #[serde(default)]
    pub advance_to: Option<DateTime<Utc>>,
    /// Actions expected, in order. Objects match when every key given matches; keys left out must
    /// be null in the actual action.
    #[serde(default)]
    pub expect: Option<Vec<Value>>,
    /// A substring of the error one rule run must report in this step.
    #[serde(default)]
    pub expect_error: Option<String>,
}

/// An `Event` written flat, with its id (`event_id`) and `source` optional:
/// `{"at": "...", "type": "reading", "sensor": "hp-3.p_supply", "value": 2.5}`.
#[derive(Debug, Deserialize)]
pub struct FixtureEvent {
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub event_id: Option<u64>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub file: PathBuf,
    pub case: String,
    pub failures: Vec<String>,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Outcome of `run_fixtures`.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub cases: Vec<CaseReport>,
    /// Fixture files that could not be read or whose rules did not compile.
    pub errors: Vec<Diagnostic>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed()).count()
    }
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }
    /// No failed case and no broken fixture.
    pub fn is_ok(&self) -> bool {
        self.failed() == 0 && self.errors.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.errors {
            writeln!(f, "{d}")?;
        }
        for c in &self.cases {
            let status = if c.passed() { "ok  " } else { "FAIL" };
            writeln!(f, "{status} {} :: {}", c.file.display(), c.case)?;
            for fail in &c.failures {
                for line in fail.lines() {
                    writeln!(f, "     {line}")?;
                }
            }
        }
        writeln!(
            f,
            "{} passed, {} failed, {} broken fixtures",
            self.passed(),
            self.failed(),
            self.errors.len()
        )
    }
}

/// The fixture files of a directory, sorted.
pub fn fixture_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RuleError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(FIXTURE_SUFFIX))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Runs every `*.test.json` of `dir`.
pub fn run_fixtures(dir: &Path) -> Result<Report, RuleError> {
    let mut report = Report::default();
    for file in fixture_files(dir)? {
        match load_fixture(&file) {
            Ok(fixture) => run_fixture(&file, &fixture, &mut report),
            Err(d) => report.errors.push(d),
        }
    }
    Ok(report)
}

fn file_error(
    file: &Path,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column,
        level: Level::Error,
        message,
    }
}

/// Reads and parses one fixture file.
pub fn load_fixture(file: &Path) -> Result<Fixture, Diagnostic> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| file_error(file, None, None, format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| file_error(file, Some(e.line()), Some(e.column()), e.to_string()))
}

fn rule_paths(file: &Path, fixture: &Fixture) -> Vec<PathBuf> {
    let dir = file.parent().unwrap_or(Path::new("."));
    if fixture.rules.is_empty() {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = name.strip_suffix(FIXTURE_SUFFIX).unwrap_or(&name);
        vec![dir.join(format!("{stem}.rhai"))]
    } else {
        fixture.rules.iter().map(|r| dir.join(r)).collect()
    }
}

fn run_fixture(file: &Path, fixture: &Fixture, report: &mut Report) {
    let paths = rule_paths(file, fixture);
    for case in &fixture.cases {
        let mut set = RuleSet::default();
        let mut broken = false;
        for p in &paths {
            if let Err(e) = set.load_file(p) {
                let d = match e {
                    RuleError::Compile(d) => d,
                    other => file_error(file, None, None, other.to_string()),
                };
                report.errors.push(d);
                broken = true;
            }
        }
        if broken {
            return;
        }
        let failures = run_case(&mut set, fixture.world.clone().prepared(), case);
        report.cases.push(CaseReport {
            file: file.to_path_buf(),
            case: case.name.clone(),
            failures,
        });
    }
}

/// Runs one case on a loaded rule set; returns the failures.
pub fn run_case(set: &mut RuleSet, mut world: StaticWorld, case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let mut clock = case.start.or_else(|| {
        case.steps
            .first()
            .and_then(|s| s.event.as_ref().map(|e| e.at).or(s.advance_to))
    });
    for (n, step) in case.steps.iter().enumerate() {
        let n = n + 1;
        let (to, label) = match (&step.event, step.advance_to) {
            (Some(e), None) => (
                e.at,
                format!("step {n} ({} at {})", e.kind.name(), e.at.to_rfc3339()),
            ),
            (None, Some(t)) => (t, format!("step {n} (advance to {})", t.to_rfc3339())),
            _ => {
                failures.push(format!(
                    "step {n}: give exactly one of `event` and `advance_to`"
                ));
                continue;
            }
        };
        let snapshot: Arc<dyn World> = Arc::new(world.clone());
        let mut evals: Vec<Evaluation> = Vec::new();
        if let Some(from) = clock
            && from < to
        {
            evals.push(set.run_cron(from, to, &snapshot));
        }
        clock = Some(clock.map_or(to, |c| c.max(to)));
        evals.push(set.fire_due(to, &snapshot));
        if let Some(e) = &step.event {
            let event = Event {
                id: e.event_id.unwrap_or(n as u64),
                at: e.at,
                source: e.source.clone().unwrap_or_else(|| "test".into()),
                kind: e.kind.clone(),
            };
            world.apply(&event);
            let snapshot: Arc<dyn World> = Arc::new(world.clone());
            evals.push(set.evaluate(&event, &snapshot));
        }
        let errors: Vec<String> = evals
            .iter()
            .flat_map(|e| e.errors().map(|(rule, err)| format!("{rule}: {err}")))
            .collect();
        match &step.expect_error {
            Some(want) if !errors.iter().any(|e| e.contains(want.as_str())) => failures.push(
                format!("{label}: expected an error containing {want:?}, got {errors:?}"),
            ),
            Some(_) => {}
            None if !errors.is_empty() => {
                failures.push(format!("{label}: rule errors: {}", errors.join("; ")))
            }
            None => {}
        }
        if let Some(expect) = &step.expect {
            let actual: Vec<Value> = evals
                .iter()
                .flat_map(|e| e.actions())
                .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
                .collect();
            if let Some(diff) = diff_actions(expect, &actual) {
                failures.push(format!("{label}: actions differ\n{diff}"));
            }
        }
    }
    failures
}

/// Whether `actual` matches `expected`: objects by the keys given (others must be null), arrays
/// element by element, everything else by equality (numbers as f64).
pub fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            e.iter()
                .all(|(k, v)| matches(v, a.get(k).unwrap_or(&Value::Null)))
                && a.iter().all(|(k, v)| e.contains_key(k) || v.is_null())
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        _ => expected == actual,
    }
}

/// A readable difference, or None if they match.
fn diff_actions(expected: &[Value], actual: &[Value]) -> Option<String> {
    if expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| matches(e, a)) {
        return None;
    }
    let mut out = format!(
        "  expected {} actions, got {}\n",
        expected.len(),
        actual.len()
    );
    for i in 0..expected.len().max(actual.len()) {
        match (expected.get(i), actual.get(i)) {
            (Some(e), Some(a)) if matches(e, a) => out.push_str(&format!("    #{i} = {a}\n")),
            (e, a) => {
                if let Some(e) = e {
                    out.push_str(&format!("  - #{i} expected {e}\n"));
                }
                if let Some(a) = a {
                    out.push_str(&format!("  + #{i} actual   {a}\n"));
                }
            }
        }
    }
    Some(out)
}

/// Compiles and lints every rule of `dir` and parses its fixtures: what `hub rules check DIR` prints.
/// Errors and warnings, by file; an empty list means all is well.
pub fn check_dir(dir: &Path) -> Result<Vec<Diagnostic>, RuleError> {
    let mut set = RuleSet::default();
    let mut out = set.load_dir(dir)?;
    let rules = rule_files(dir)?;
    for file in fixture_files(dir)? {
        match load_fixture(&file) {
            Ok(f) => {
                for p in rule_paths(&file, &f) {
                    if !p.is_file() {
                        out.push(file_error(
                            &file,
                            None,
                            None,
                            format!("rule file {} does not exist", p.display()),
                        ));
                    }
                }
            }
            Err(d) => out.push(d),
        }
    }
    for r in &rules {
        let stem = crate::engine::rule_id(r);
        if !dir.join(format!("{stem}{FIXTURE_SUFFIX}")).is_file() {
            out.push(Diagnostic {
                file: r.clone(),
                line: None,
                column: None,
                level: Level::Warning,
                message: format!("no fixture {stem}{FIXTURE_SUFFIX}: the rule is untested"),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_given_keys_and_null_for_the_rest() {
        let actual = json!({"action": "clear_alarm", "key": "k", "reason": null});
        assert!(matches(
            &json!({"action": "clear_alarm", "key": "k"}),
            &actual
        ));
        assert!(!matches(
            &json!({"action": "clear_alarm", "key": "j"}),
            &actual
        ));
        let with_reason = json!({"action": "clear_alarm", "key": "k", "reason": "back"});
        assert!(!matches(
            &json!({"action": "clear_alarm", "key": "k"}),
            &with_reason
        ));
        assert!(matches(&json!({"value": 1}), &json!({"value": 1.0})));
    }

    #[test]
    fn a_failing_case_reports_a_diff() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.rhai"),
            r#"on_reading("s"); fn on_event(ev) { clear_alarm("k" + ev.value); }"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("r.test.json"),
            r#"{"cases": [{"name": "wrong key", "steps": [
                {"event": {"at": "2025-01-01T00:00:00Z", "type": "reading", "sensor": "s", "value": 1.0},
                 "expect": [{"action": "clear_alarm", "key": "k2.0"}]}]}]}"#,
        )
        .unwrap();
        let report = run_fixtures(dir.path()).unwrap();
        assert_eq!((report.passed(), report.failed()), (0, 1));
        let text = report.to_string();
        assert!(text.contains("- #0 expected"), "{text}");
        assert!(
            text.contains(r#"+ #0 actual   {"action":"clear_alarm","key":"k1.0","reason":null}"#),
            "{text}"
        );

        std::fs::write(
            dir.path().join("broken.rhai"),
            "fn on_event(ev) {\n  let = 1;\n}",
        )
        .unwrap();
        let diags = check_dir(dir.path()).unwrap();
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|d| d.contains("broken.rhai:2") && d.contains("error")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|d| d.contains("no fixture broken.test.json")),
            "{text:?}"
        );
    }
}
