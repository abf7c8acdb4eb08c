//! Foundation benchmarks, the figures of `docs/performance.md`: `affected()` over a synthetic city of a
//! million consumers (in memory, and rebuilt from storage the way the hub does after a model change),
//! and the CSV import of 100,000 consumers on SQLite, and on PostgreSQL when `HUB_BENCH_POSTGRES_URL`
//! names a server (an admin URL: a database is created for the run and dropped after).
//!
//! `cargo bench -p hub --bench foundation [-- affected|import]`. Sizes come from the environment so
//! that CI can run a small version: `HUB_BENCH_CONSUMERS` (affected, default 1,000,000),
//! `HUB_BENCH_IMPORT_CONSUMERS` (default 100,000), `HUB_BENCH_SAMPLES` (timed repeats of a query,
//! default 30), `HUB_BENCH_REBUILDS` (index builds and rebuilds, default 3).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hub::import::{self, Format, ImportKind, ImportOptions};
use hub::network::NetworkCache;
use hub::storage::{Backend, Db, placeholders, tenants};
use rules::network::{NetworkBuilder, NetworkIndex};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; any other argument selects parts by name.
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(p) = parts
        .iter()
        .find(|p| !["affected", "import"].contains(&p.as_str()))
    {
        bail!("unknown part `{p}`: use affected or import (or nothing for both)");
    }
    let wants = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let settings = Settings {
        consumers: env_size("HUB_BENCH_CONSUMERS", 1_000_000)?,
        import_consumers: env_size("HUB_BENCH_IMPORT_CONSUMERS", 100_000)?,
        samples: env_size("HUB_BENCH_SAMPLES", 30)?.max(1),
        rebuilds: env_size("HUB_BENCH_REBUILDS", 3)?.max(1),
        postgres: std::env::var("HUB_BENCH_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty()),
    };
    println!("Hub foundation benchmarks");
    println!("machine: {}", machine());
    println!(
        "sizes: affected {} consumers, import {} consumers; {} samples per query, {} builds; PostgreSQL: {}",
        thousands(settings.consumers),
        thousands(settings.import_consumers),
        settings.samples,
        settings.rebuilds,
        if settings.postgres.is_some() {
            "HUB_BENCH_POSTGRES_URL"
        } else {
            "not set, skipped"
        }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    if wants("affected") {
        let city = City::new(settings.consumers);
        let expected = affected_in_memory(&city, &settings)?;
        runtime.block_on(affected_from_storage(&city, &expected, &settings))?;
    }
    if wants("import") {
        runtime.block_on(import_all(&settings))?;
    }
    println!("\ntotal {}", fmt_duration(started.elapsed()));
    Ok(())
}

struct Settings {
    consumers: usize,
    import_consumers: usize,
    samples: usize,
    rebuilds: usize,
    postgres: Option<String>,
}

fn env_size(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace(['_', ','], "")
            .parse()
            .with_context(|| format!("{name}: `{v}` is not a whole number")),
        _ => Ok(default),
    }
}

// ---------------------------------------------------------------------------------------------
// The synthetic city

/// A root point (a trunk main) feeds the boiler houses, each feeds its heat points, each heat point
/// its residential complexes; a complex has buildings, a building entrances, and apartments fill the
/// entrances so that there are about 0.7 apartments per consumer.
const BOILER_HOUSES: i64 = 4;
const HEAT_POINTS_PER_BOILER_HOUSE: i64 = 10;
const COMPLEXES_PER_HEAT_POINT: i64 = 10;
const BUILDINGS_PER_COMPLEX: i64 = 4;
const ENTRANCES_PER_BUILDING: i64 = 6;

/// Rows of the city, with the ids they get in the database (points and sites number from 1).
struct City {
    /// Supply point id and kind.
    points: Vec<(i64, &'static str)>,
    point_links: Vec<(i64, i64)>,
    site_links: Vec<(i64, i64)>,
    /// Site id, parent, kind.
    sites: Vec<(i64, Option<i64>, &'static str)>,
    /// Consumer id, life support, social object.
    consumers: Vec<(i64, bool, bool)>,
    /// Site id, consumer id.
    residents: Vec<(i64, i64)>,
    apartments: usize,
    root: i64,
    boiler_house: i64,
    heat_point: i64,
}

impl City {
    fn new(consumers: usize) -> City {
        let heat_points = BOILER_HOUSES * HEAT_POINTS_PER_BOILER_HOUSE;
        let complexes = heat_points * COMPLEXES_PER_HEAT_POINT;
        let buildings = complexes * BUILDINGS_PER_COMPLEX;
        let entrances = buildings * ENTRANCES_PER_BUILDING;
        let per_entrance = (consumers as i64 * 7 / 10 / entrances).max(1);
        let apartments = entrances * per_entrance;

        let root = 1;
        let boiler_house = |b: i64| 2 + b;
        let heat_point = |h: i64| 2 + BOILER_HOUSES + h;
        let mut points = vec![(root, "pumping_station")];
        let mut point_links = Vec::new();
        for b in 0..BOILER_HOUSES {
            points.push((boiler_house(b), "boiler_house"));
            point_links.push((root, boiler_house(b)));
        }
        for h in 0..heat_points {
            points.push((heat_point(h), "heat_point"));
            point_links.push((
                boiler_house(h / HEAT_POINTS_PER_BOILER_HOUSE),
                heat_point(h),
            ));
        }

        let complex = |k: i64| 1 + k;
        let building = |b: i64| 1 + complexes + b;
        let entrance = |e: i64| 1 + complexes + buildings + e;
        let apartment = |a: i64| 1 + complexes + buildings + entrances + a;
        let mut sites =
            Vec::with_capacity((complexes + buildings + entrances + apartments) as usize);
        let mut site_links = Vec::with_capacity(complexes as usize);
        for k in 0..complexes {
            sites.push((complex(k), None, "residential_complex"));
            site_links.push((heat_point(k / COMPLEXES_PER_HEAT_POINT), complex(k)));
        }
        for b in 0..buildings {
            sites.push((
                building(b),
                Some(complex(b / BUILDINGS_PER_COMPLEX)),
                "building",
            ));
        }
        for e in 0..entrances {
            sites.push((
                entrance(e),
                Some(building(e / ENTRANCES_PER_BUILDING)),
                "entrance",
            ));
        }
        for a in 0..apartments {
            sites.push((apartment(a), Some(entrance(a / per_entrance)), "apartment"));
        }

        // Consumer c < A lives in apartment c; the rest (30%) share apartments spread evenly over the
        // city; every tenth is also linked to the next apartment; every 2000th is a social object
        // linked to a building.
        let mut people = Vec::with_capacity(consumers);
        let mut residents = Vec::with_capacity(consumers + consumers / 10);
        for c in 0..consumers as i64 {
            let id = c + 1;
            let social = c % 2000 == 1999;
            people.push((id, c % 500 == 250, social));
            if social {
                residents.push((building((c / 2000) % buildings), id));
                continue;
            }
            let a = if c < apartments {
                c
            } else {
                (c - apartments) * apartments / (consumers as i64 - apartments)
            };
            residents.push((apartment(a), id));
            if c % 10 == 3 {
                residents.push((apartment((a + 1) % apartments), id));
            }
        }
        City {
            points,
            point_links,
            site_links,
            sites,
            consumers: people,
            residents,
            apartments: apartments as usize,
            root,
            boiler_house: boiler_house(0),
            heat_point: heat_point(0),
        }
    }

    fn builder(&self) -> NetworkBuilder {
        let mut b = NetworkBuilder::default();
        for (from, to) in &self.point_links {
            b.point_feeds_point(*from, *to);
        }
        for (from, to) in &self.site_links {
            b.point_feeds_site(*from, *to);
        }
        for (id, parent, _) in &self.sites {
            b.site(*id, *parent);
        }
        let flags: Vec<(bool, bool)> = self.consumers.iter().map(|c| (c.1, c.2)).collect();
        for (site, consumer) in &self.residents {
            let (life, social) = flags[(*consumer - 1) as usize];
            b.consumer(*site, *consumer, life, social);
        }
        b
    }

    fn summary(&self) -> String {
        format!(
            "{} consumers, {} consumer-site links, {} sites ({} apartments), {} supply points",
            thousands(self.consumers.len()),
            thousands(self.residents.len()),
            thousands(self.sites.len()),
            thousands(self.apartments),
            self.points.len()
        )
    }
}

/// Consumers found from each query point, for checking the index rebuilt from storage.
#[derive(Debug, PartialEq)]
struct Found {
    heat_point: usize,
    boiler_house: usize,
    root: usize,
}

/// Times `affected()` of a heat point, a boiler house and the root.
fn time_queries(index: &NetworkIndex, city: &City, samples: usize) -> Found {
    Found {
        heat_point: time_affected(index, "affected(heat point)", city.heat_point, samples),
        boiler_house: time_affected(index, "affected(boiler house)", city.boiler_house, samples),
        root: time_affected(
            index,
            "affected(root: all 4 boiler houses)",
            city.root,
            samples,
        ),
    }
}

fn affected_in_memory(city: &City, s: &Settings) -> anyhow::Result<Found> {
    section(&format!("affected() in memory: {}", city.summary()));
    reset_peak_rss();

    let mut builds = Vec::new();
    let mut fills = Vec::new();
    let mut index = NetworkIndex::default();
    for _ in 0..s.rebuilds {
        drop(index);
        let t = Instant::now();
        let builder = city.builder();
        fills.push(t.elapsed());
        let t = Instant::now();
        index = builder.build();
        builds.push(t.elapsed());
    }
    row("fill NetworkBuilder", &Stats::of(fills), "");
    row(
        "NetworkBuilder::build (the index)",
        &Stats::of(builds),
        &format!(
            "{} sites, {} consumers",
            thousands(index.sites_count()),
            thousands(index.consumers_count())
        ),
    );
    let found = time_queries(&index, city, s.samples);
    memory_line("it includes the city's rows, the builder and the index");
    if found.root != city.consumers.len() {
        bail!(
            "affected(root) found {} of {} consumers",
            found.root,
            city.consumers.len()
        );
    }
    Ok(found)
}

/// Times `affected(point)` and returns how many consumers it found.
fn time_affected(index: &NetworkIndex, what: &str, point: i64, samples: usize) -> usize {
    let mut times = Vec::with_capacity(samples);
    let mut found = 0;
    for _ in 0..samples {
        let t = Instant::now();
        let a = black_box(index.affected(black_box(point)));
        times.push(t.elapsed());
        found = a.consumers.len();
        black_box(&a);
    }
    let stats = Stats::of(times);
    row(what, &stats, &format!("{} consumers", thousands(found)));
    found
}

async fn affected_from_storage(city: &City, expected: &Found, s: &Settings) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    affected_on(&url, city, expected, s).await?;
    if let Some(admin) = &s.postgres {
        let (url, name) = postgres_database(admin).await?;
        let result = affected_on(&url, city, expected, s).await;
        drop_postgres_database(admin, &name).await?;
        result?;
    }
    Ok(())
}

/// Populates the database at `url` with the city and times the hub's rebuild of the index from it.
async fn affected_on(url: &str, city: &City, expected: &Found, s: &Settings) -> anyhow::Result<()> {
    let db = Db::connect(url, 4).await?;
    db.migrate().await?;
    section(&format!(
        "affected() from storage, {}: {}",
        backend_name(&db).await?,
        city.summary()
    ));
    let t = Instant::now();
    populate(&db, city).await?;
    once(
        "setup: bulk insert (not a target)",
        t.elapsed(),
        &format!(
            "{} rows",
            thousands(
                city.sites.len() + city.consumers.len() + city.residents.len() + city.points.len()
            )
        ),
    );

    reset_peak_rss();
    let cache = NetworkCache::default();
    let mut times = Vec::with_capacity(s.rebuilds);
    let mut index: Option<Arc<NetworkIndex>> = None;
    for _ in 0..s.rebuilds {
        // A model change, as an edit in the UI makes one: the triggers bump the model version.
        sqlx::query("UPDATE sites SET name = name WHERE id = 1")
            .execute(&db.pool)
            .await?;
        let t = Instant::now();
        index = Some(cache.get(&db).await?);
        times.push(t.elapsed());
    }
    let Some(index) = index else {
        bail!("no rebuild ran");
    };
    row(
        "rebuild: NetworkCache::get after a change",
        &Stats::of(times),
        "load_index: 3 queries + build",
    );
    let found = time_queries(&index, city, s.samples);
    if &found != expected {
        bail!(
            "the index loaded from storage disagrees with the one built in memory: {found:?} vs {expected:?}"
        );
    }
    memory_line(
        "it includes the city's rows and two indexes (the old one is kept until the new one is ready)",
    );
    db.pool.close().await;
    Ok(())
}

/// Writes the city with bulk inserts (fast setup; the ids are the model's).
async fn populate(db: &Db, city: &City) -> anyhow::Result<()> {
    let mut tx = db.pool.begin().await?;
    let tenant = tenants::upsert(&mut tx, &new_tenant()?).await?.id;
    insert_rows(
        &mut tx,
        "sites (id, tenant_id, external_id, parent_id, kind, name)",
        6,
        &city.sites,
        |q, (id, parent, kind)| {
            q.bind(*id)
                .bind(tenant)
                .bind(format!("s{id}"))
                .bind(*parent)
                .bind(*kind)
                .bind(format!("{kind} {id}"))
        },
    )
    .await?;
    insert_rows(
        &mut tx,
        "supply_points (id, tenant_id, external_id, kind, name)",
        5,
        &city.points,
        |q, (id, kind)| {
            q.bind(*id)
                .bind(tenant)
                .bind(format!("p{id}"))
                .bind(*kind)
                .bind(format!("{kind} {id}"))
        },
    )
    .await?;
    insert_rows(
        &mut tx,
        "consumers (id, tenant_id, external_id, kind, name, phones, life_support, social_object)",
        8,
        &city.consumers,
        |q, (id, life, social)| {
            q.bind(*id)
                .bind(tenant)
                .bind(format!("c{id}"))
                .bind(if *social { "organization" } else { "resident" })
                .bind(format!("Consumer {id}"))
                .bind(format!("[\"+7916{:07}\"]", id % 10_000_000))
                .bind(i64::from(*life))
                .bind(i64::from(*social))
        },
    )
    .await?;
    let pairs = [
        (
            "supply_links (from_point_id, to_point_id)",
            &city.point_links,
        ),
        ("supply_links (from_point_id, to_site_id)", &city.site_links),
        ("consumer_sites (site_id, consumer_id)", &city.residents),
    ];
    for (table_columns, rows) in pairs {
        insert_rows(&mut tx, table_columns, 2, rows, |q, (a, b)| {
            q.bind(*a).bind(*b)
        })
        .await?;
    }
    tx.commit().await?;
    if db.backend == Backend::Postgres {
        // The statistics autovacuum would gather shortly after a bulk load.
        sqlx::query("ANALYZE").execute(&db.pool).await?;
    }
    Ok(())
}

type AnyQuery = Query<'static, Any, AnyArguments>;

/// Multi-row `INSERT INTO {table_columns} VALUES ...` of all `rows`, under both back-ends' limits on
/// bound parameters per statement.
async fn insert_rows<T>(
    conn: &mut AnyConnection,
    table_columns: &str,
    columns: usize,
    rows: &[T],
    bind: impl Fn(AnyQuery, &T) -> AnyQuery,
) -> anyhow::Result<()> {
    let per_statement = 30_000 / columns;
    for chunk in rows.chunks(per_statement) {
        let values = placeholders(conn, chunk.len(), columns);
        let sql = format!("INSERT INTO {table_columns} VALUES {values}");
        let mut q: AnyQuery = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = bind(q, r);
        }
        q.execute(&mut *conn)
            .await
            .with_context(|| format!("insert into {table_columns}"))?;
    }
    Ok(())
}

fn new_tenant() -> anyhow::Result<tenants::NewTenant> {
    Ok(serde_json::from_value(serde_json::json!({
        "external_id": "bench", "name": "Bench Teplo", "kind": "supplier"
    }))?)
}

// ---------------------------------------------------------------------------------------------
// Import

async fn import_all(s: &Settings) -> anyhow::Result<()> {
    let files = ImportFiles::new(s.import_consumers)?;
    let dir = tempfile::tempdir()?;
    import_on(
        &format!("sqlite://{}/bench.db", dir.path().display()),
        &files,
    )
    .await?;
    if let Some(admin) = &s.postgres {
        let (url, name) = postgres_database(admin).await?;
        let result = import_on(&url, &files).await;
        drop_postgres_database(admin, &name).await?;
        result?;
    }
    Ok(())
}

/// The CSV files a customer would bring: the site tree and the consumers living in it.
struct ImportFiles {
    sites: String,
    site_rows: usize,
    consumers: String,
    consumer_rows: usize,
}

const IMPORT_COMPLEXES: usize = 20;
const IMPORT_BUILDINGS_PER_COMPLEX: usize = 5;
const IMPORT_ENTRANCES_PER_BUILDING: usize = 6;

impl ImportFiles {
    fn new(consumers: usize) -> Result<ImportFiles, std::fmt::Error> {
        use std::fmt::Write;
        let buildings = IMPORT_COMPLEXES * IMPORT_BUILDINGS_PER_COMPLEX;
        let entrances = buildings * IMPORT_ENTRANCES_PER_BUILDING;
        let per_entrance = (consumers * 6 / 10 / entrances).max(1);
        let apartments = entrances * per_entrance;

        let mut sites = String::from("tenant,external_id,parent,kind,name,address\n");
        for k in 0..IMPORT_COMPLEXES {
            writeln!(
                sites,
                "bench,rc{k},,residential_complex,Complex {k},Lenina {k}"
            )?;
        }
        for b in 0..buildings {
            let k = b / IMPORT_BUILDINGS_PER_COMPLEX;
            writeln!(
                sites,
                "bench,b{b},rc{k},building,Building {b},\"Lenina {k}, {b}\""
            )?;
        }
        for e in 0..entrances {
            let b = e / IMPORT_ENTRANCES_PER_BUILDING;
            writeln!(sites, "bench,e{e},b{b},entrance,Entrance {e},")?;
        }
        for a in 0..apartments {
            writeln!(sites, "bench,a{a},e{},apartment,Apt {a},", a / per_entrance)?;
        }

        let mut text = String::from(
            "tenant,external_id,kind,name,phones,email,preferred_channels,account_number,life_support,sites\n",
        );
        for c in 0..consumers {
            let org = c % 1000 == 999;
            let kind = if org { "organization" } else { "resident" };
            let mut phones = format!("+7916{:07}", c % 10_000_000);
            if c % 3 == 0 {
                write!(phones, ";+7495{:07}", c % 10_000_000)?;
            }
            let email = if c % 4 == 0 {
                format!("c{c}@example.ru")
            } else {
                String::new()
            };
            let channels = ["sms;voice", "voice", "email;sms", ""][c % 4];
            let life = if c % 500 == 250 { "yes" } else { "no" };
            let sites = if org {
                format!("b{}", (c / 1000) % buildings)
            } else if c % 10 == 3 {
                format!("a{};a{}", c % apartments, (c + 1) % apartments)
            } else {
                format!("a{}", c % apartments)
            };
            writeln!(
                text,
                "bench,c{c},{kind},Consumer {c},{phones},{email},{channels},LS{c:010},{life},{sites}"
            )?;
        }
        Ok(ImportFiles {
            sites,
            site_rows: IMPORT_COMPLEXES + buildings + entrances + apartments,
            consumers: text,
            consumer_rows: consumers,
        })
    }
}

async fn import_on(url: &str, files: &ImportFiles) -> anyhow::Result<()> {
    let db = Db::connect(url, 4).await?;
    db.migrate().await?;
    section(&format!(
        "import, {}: {} sites, then {} consumers ({} KiB of CSV)",
        backend_name(&db).await?,
        thousands(files.site_rows),
        thousands(files.consumer_rows),
        thousands(files.consumers.len() / 1024)
    ));
    tenants::upsert(&mut *db.conn().await?, &new_tenant()?).await?;
    let opts = ImportOptions {
        actor: "bench".into(),
        ..ImportOptions::default()
    };
    reset_peak_rss();
    let steps = [
        (
            "hub::import::run sites (new)",
            ImportKind::Sites,
            &files.sites,
            files.site_rows,
        ),
        (
            "hub::import::run consumers (new)",
            ImportKind::Consumers,
            &files.consumers,
            files.consumer_rows,
        ),
        (
            "hub::import::run consumers (again: upsert)",
            ImportKind::Consumers,
            &files.consumers,
            files.consumer_rows,
        ),
    ];
    for (what, kind, text, rows) in steps {
        let t = Instant::now();
        let report = import::run(&db, kind, Format::Csv, "bench.csv", text, &opts).await?;
        let took = t.elapsed();
        if let Some(e) = report.errors.first() {
            bail!("{what}: {} bad rows, the first: {e}", report.errors.len());
        }
        if report.imported != rows {
            bail!("{what}: imported {} of {rows} rows", report.imported);
        }
        once(
            what,
            took,
            &format!(
                "{} rows, {} rows/s",
                thousands(rows),
                thousands((rows as f64 / took.as_secs_f64()) as usize)
            ),
        );
    }
    let (consumers,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM consumers")
        .fetch_one(&db.pool)
        .await?;
    let (links,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM consumer_sites")
        .fetch_one(&db.pool)
        .await?;
    if consumers as usize != files.consumer_rows {
        bail!(
            "{consumers} consumers stored, {} expected",
            files.consumer_rows
        );
    }
    memory_line(&format!(
        "stored {} consumers and {} consumer-site links",
        thousands(consumers as usize),
        thousands(links as usize)
    ));
    db.pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A new database on the server at `admin` (as `hub::testing::fresh_database_url` makes them).
async fn postgres_database(admin: &str) -> anyhow::Result<(String, String)> {
    sqlx::any::install_default_drivers();
    let name = format!(
        "hub_bench_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros() % 1_000_000_000
    );
    let pool = sqlx::AnyPool::connect(admin)
        .await
        .context("HUB_BENCH_POSTGRES_URL: cannot connect")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .with_context(|| format!("create database {name}"))?;
    pool.close().await;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    Ok((format!("{base}/{name}"), name))
}

async fn drop_postgres_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let pool = sqlx::AnyPool::connect(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .with_context(|| format!("drop database {name}"))?;
    pool.close().await;
    Ok(())
}

async fn backend_name(db: &Db) -> anyhow::Result<String> {
    Ok(match db.backend {
        Backend::Sqlite => {
            let (v,): (String,) = sqlx::query_as("SELECT sqlite_version()")
                .fetch_one(&db.pool)
                .await?;
            format!("SQLite {v} (WAL, synchronous=NORMAL)")
        }
        Backend::Postgres => {
            let (v,): (String,) = sqlx::query_as("SHOW server_version")
                .fetch_one(&db.pool)
                .await?;
            format!("PostgreSQL {v}")
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Measuring and printing

struct Stats {
    n: usize,
    min: Duration,
    median: Duration,
    p99: Duration,
}

impl Stats {
    fn of(mut times: Vec<Duration>) -> Stats {
        times.sort_unstable();
        let n = times.len();
        let at = |i: usize| times.get(i).copied().unwrap_or_default();
        Stats {
            n,
            min: at(0),
            median: at(n / 2),
            // Nearest rank: with fewer than 100 samples, the slowest.
            p99: at((n * 99).div_ceil(100).saturating_sub(1)),
        }
    }
}

const STEP_WIDTH: usize = 46;

fn section(title: &str) {
    println!("\n== {title}");
    println!(
        "{:<STEP_WIDTH$} {:>4} {:>10} {:>10} {:>10}  result",
        "step", "n", "min", "median", "p99"
    );
}

fn row(step: &str, s: &Stats, result: &str) {
    println!(
        "{step:<STEP_WIDTH$} {:>4} {:>10} {:>10} {:>10}  {result}",
        s.n,
        fmt_duration(s.min),
        fmt_duration(s.median),
        fmt_duration(s.p99)
    );
}

fn once(step: &str, took: Duration, result: &str) {
    println!(
        "{step:<STEP_WIDTH$} {:>4} {:>10} {:>10} {:>10}  {result}",
        1,
        fmt_duration(took),
        "-",
        "-"
    );
}

/// The peak RSS since the last `reset_peak_rss`, with a note.
fn memory_line(note: &str) {
    let peak = status_kb("VmHWM:").map_or_else(|| "unknown".to_owned(), fmt_kb);
    println!("peak RSS (VmHWM) of this part: {peak}; {note}");
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.001 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn fmt_kb(kb: u64) -> String {
    if kb >= 1024 * 1024 {
        format!("{:.2} GiB", kb as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.0} MiB", kb as f64 / 1024.0)
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A field of /proc/self/status in kB.
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Starts a new peak: writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+). Where
/// that is refused the figures are the peak of the whole run so far, which is still an upper bound.
fn reset_peak_rss() {
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        println!("(cannot reset the peak RSS: the figures below are the process peak so far)");
    }
}

/// CPUs, CPU model, RAM and OS, for the figures to say where they came from.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ram_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_default();
    let os_release = read("/etc/os-release");
    let os = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("unknown OS")
        .trim_matches('"')
        .to_owned();
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{cpus} CPUs ({model}), {} RAM, {os}, Linux {}",
        fmt_kb(ram_kb),
        kernel.trim()
    )
}
