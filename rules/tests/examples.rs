//! Runs the fixtures of `rules/examples/` the way `hub rules test` does, and checks the directory the
//! way `hub rules check` does.

use std::path::Path;

#[test]
fn example_rules_pass_their_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let report = rules::testing::run_fixtures(&dir).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(report.passed() >= 5, "{report}");
}

#[test]
fn example_rules_check_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let diags = rules::testing::check_dir(&dir).unwrap();
    assert!(diags.is_empty(), "{diags:#?}");
}
