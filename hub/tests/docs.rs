//! The documentation checked against the code: every configuration key is in `docs/configuration.md`
//! with its real default, and the files in `docs/examples` import as `docs/import.md` says they do.

// The whole file is tests: a failed `expect` in a helper is a failed test with its reason.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

use hub::import::{Format, ImportKind, ImportOptions, ImportReport};
use hub::storage::{Db, PageRequest, consumers, network, sensors, sites, tenants};
use serde_json::Value;

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn read(relative: &str) -> String {
    let path = docs().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `## [section]` blocks of configuration.md: section name -> the lines under its heading.
fn sections(doc: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in doc.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let name = rest
                .trim()
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .unwrap_or("");
            out.push((name.to_owned(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out
}

/// The key rows (`| \`key\` | ...`) of a section.
fn key_rows<'a>(lines: &[&'a str]) -> Vec<(String, &'a str)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `")?;
            let key = rest.split('`').next()?;
            Some((key.to_owned(), *l))
        })
        .collect()
}

/// `(section path, key, default)` of every leaf key of a serialized configuration.
fn leaves(table: &toml::Table, prefix: &str, out: &mut Vec<(String, String, toml::Value)>) {
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(inner, &path, out);
            }
            other => out.push((prefix.to_owned(), key.clone(), other.clone())),
        }
    }
}

/// The first ```toml block after the "Full example" heading.
fn full_example(doc: &str) -> &str {
    let start = doc
        .find("# Full example")
        .expect("configuration.md has a `Full example` section");
    let rest = &doc[start..];
    let open = rest
        .find("```toml\n")
        .expect("the full example is a ```toml block")
        + 8;
    let len = rest[open..].find("```").expect("the toml block is closed");
    &rest[open..open + len]
}

#[test]
fn every_config_key_is_documented_with_its_default() {
    let doc = read("configuration.md");
    let serialized =
        toml::to_string(&hub::config::Config::default()).expect("the defaults serialize");
    let defaults: toml::Table = toml::from_str(&serialized).expect("serialized defaults parse");
    let mut keys = Vec::new();
    leaves(&defaults, "", &mut keys);
    assert!(keys.len() >= 6, "suspiciously few keys: {keys:?}");

    let sections = sections(&doc);
    for (section, key, default) in &keys {
        assert!(
            !section.is_empty(),
            "top-level key `{key}`: document it under its own heading"
        );
        let (_, lines) = sections
            .iter()
            .find(|(name, _)| name == section)
            .unwrap_or_else(|| panic!("configuration.md has no `## [{section}]` heading"));
        let rows = key_rows(lines);
        let (_, row) = rows
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("`{key}` is not documented under `## [{section}]`"));
        let default = format!("`{default}`");
        assert!(
            row.contains(&default),
            "[{section}] `{key}`: the row should show the default {default}: {row}"
        );
    }
}

#[test]
fn the_full_example_parses_and_names_every_documented_key() {
    let doc = read("configuration.md");
    let example = full_example(&doc);
    hub::config::Config::parse(Path::new("hub.toml"), example)
        .unwrap_or_else(|e| panic!("the full example in configuration.md does not parse: {e}"));
    let parsed: toml::Table = toml::from_str(example).expect("the full example is TOML");
    let mut in_example = Vec::new();
    leaves(&parsed, "", &mut in_example);
    // A documented key that the strict parser accepts in the example is a real key, so this also
    // catches rows left behind when a key is removed.
    for (section, lines) in sections(&doc) {
        if section.is_empty() {
            continue;
        }
        for (key, _) in key_rows(&lines) {
            assert!(
                in_example
                    .iter()
                    .any(|(s, k, _)| *s == section && *k == key),
                "[{section}] `{key}` is documented but missing from the full example"
            );
        }
    }
}

async fn fresh() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = hub::testing::fresh_database_url(dir.path()).await;
    let db = Db::connect(&url, 4).await.expect("connect");
    db.migrate().await.expect("migrate");
    // The tenant is created the way import.md says: the body of `POST /api/v1/tenants`.
    let tenant: tenants::NewTenant =
        serde_json::from_str(&read("examples/tenant.json")).expect("tenant.json is a NewTenant");
    let mut conn = db.conn().await.expect("connection");
    tenants::upsert(&mut conn, &tenant).await.expect("tenant");
    (db, dir)
}

async fn import(db: &Db, kind: ImportKind, file: &str, skip_invalid: bool) -> ImportReport {
    let name = format!("docs/examples/{file}");
    let text = read(&format!("examples/{file}"));
    let opts = ImportOptions {
        skip_invalid,
        actor: "test".into(),
        tenant_scope: None,
    };
    hub::import::run(db, kind, Format::of_path(&name), &name, &text, &opts)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

const ORDER: [(ImportKind, &str, usize); 4] = [
    (ImportKind::Sites, "sites", 20),
    (ImportKind::Network, "network", 3),
    (ImportKind::Consumers, "consumers", 12),
    (ImportKind::Sensors, "sensors", 7),
];

async fn import_examples(db: &Db, ext: &str) {
    for (kind, stem, rows) in ORDER {
        let r = import(db, kind, &format!("{stem}.{ext}"), false).await;
        let errors: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{stem}.{ext}: {errors:#?}");
        assert_eq!((r.rows, r.imported), (rows, rows), "{stem}.{ext}");
    }
}

/// Everything the examples create, as the API would show it.
async fn snapshot(db: &Db) -> Value {
    let mut c = db.conn().await.expect("connection");
    let all = PageRequest {
        after: 0,
        limit: 1000,
    };
    serde_json::json!({
        "sites": sites::list(&mut c, &Default::default(), all).await.expect("sites"),
        "network": network::list(&mut c, None, None, all).await.expect("network"),
        "consumers": consumers::list(&mut c, &Default::default(), all).await.expect("consumers"),
        "sensors": sensors::list(&mut c, &Default::default(), all).await.expect("sensors"),
    })
}

fn id_of(snapshot: &Value, list: &str, external_id: &str) -> i64 {
    snapshot[list]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["external_id"] == external_id))
        .and_then(|i| i["id"].as_i64())
        .unwrap_or_else(|| panic!("{list}: no `{external_id}`"))
}

#[tokio::test]
async fn examples_import_the_same_from_csv_and_json() {
    let (csv_db, _d1) = fresh().await;
    import_examples(&csv_db, "csv").await;
    let (json_db, _d2) = fresh().await;
    import_examples(&json_db, "json").await;
    let from_csv = snapshot(&csv_db).await;
    assert_eq!(
        from_csv,
        snapshot(&json_db).await,
        "the CSV and JSON examples should describe the same data"
    );

    // The example is coherent: the boiler house feeds everybody, through both heat points.
    let mut c = csv_db.conn().await.expect("connection");
    let index = network::load_index(&mut c).await.expect("index");
    let id = |list, ext| id_of(&from_csv, list, ext);
    let all = index.affected(id("network", "bh-1"));
    assert_eq!(all.consumers.len(), 12);
    assert_eq!(all.life_support, vec![id("consumers", "c-1003")]);
    assert_eq!(all.social_objects, vec![id("consumers", "org-school-7")]);
    let school = index.affected(id("network", "hp-2"));
    assert_eq!(school.consumers, vec![id("consumers", "org-school-7")]);
    assert_eq!(index.affected(id("network", "hp-1")).consumers.len(), 11);

    // Importing the same files again changes nothing.
    import_examples(&csv_db, "csv").await;
    assert_eq!(snapshot(&csv_db).await, from_csv);
}

#[tokio::test]
async fn the_bad_example_reports_every_row_as_import_md_shows() {
    let (db, _d) = fresh().await;
    import(&db, ImportKind::Sites, "sites.csv", false).await;
    let r = import(&db, ImportKind::Consumers, "consumers-bad.csv", false).await;
    let lines: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
    assert_eq!((r.rows, r.imported), (9, 0), "{lines:#?}");
    let bad_lines: Vec<usize> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(bad_lines, vec![3, 4, 5, 6, 7, 8, 9], "{lines:#?}");
    let doc = read("import.md");
    for line in &lines {
        assert!(
            doc.contains(line.as_str()),
            "import.md should show the real report line:\n{line}"
        );
    }
    assert_eq!(snapshot(&db).await["consumers"], serde_json::json!([]));

    let r = import(&db, ImportKind::Consumers, "consumers-bad.csv", true).await;
    assert_eq!((r.imported, r.errors.len()), (2, 7));
    let names: Vec<Value> = snapshot(&db).await["consumers"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["external_id"].clone())
        .collect();
    assert_eq!(names, vec!["c-2001", "c-2009"]);
}
