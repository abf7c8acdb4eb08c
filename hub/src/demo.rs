//! `hub serve --demo`: a data set shaped like a real customer (a heat supplier with 8 residential
//! complexes, about 22,000 residents, boiler houses and heat points, a hospital, schools and
//! kindergartens, sensors on every heat point), written through the same repository functions an
//! import uses, and one user per role. It is generated from a fixed seed, not hand-written: every run on
//! every machine gets the same data, so demos, screenshots and bug reports agree.

use std::collections::HashSet;
use std::fmt;
use std::time::Instant;

use crate::auth;
use crate::names::{Channel, ConsumerKind, Role, SensorKind, SupplyPointKind, TenantKind};
use crate::storage::consumers::NewConsumer;
use crate::storage::network::NewSupplyPoint;
use crate::storage::refs::Refs;
use crate::storage::sensors::NewSensor;
use crate::storage::sites::NewSite;
use crate::storage::tenants::NewTenant;
use crate::storage::{Db, StorageError, audit, consumers, network, sensors, sites, tenants, users};
use crate::types::{Email, ExternalId, PhoneNumber, TimeZone};

/// The seed of the generator: changing it changes every demo installation's data.
const SEED: u64 = 0x7E91_0C0F_2025_0001;
/// The heat supplier that owns the network, the sites, the consumers and the sensors.
const SUPPLIER: &str = "teplo";
/// A second tenant, so that tenant-bound users and filters have something to tell apart.
const MANAGEMENT_COMPANY: &str = "uk-komfort";
const CITY: &str = "г. Казань";
/// Residents on life support (home ventilation, oxygen concentrators, dialysis).
const LIFE_SUPPORT: usize = 12;
/// Residents who own a second apartment and are linked to both.
const TWO_APARTMENTS: usize = 20;
/// Apartments per floor of every building.
const APARTMENTS_PER_FLOOR: u32 = 4;
/// Seconds without a reading before a demo sensor is reported offline.
const SENSOR_OFFLINE_AFTER_S: i64 = 300;

/// Residential complexes: name and street, one heat point each (`hp-N` feeds `rc-N`).
const COMPLEXES: [(&str, &str); 8] = [
    ("ЖК Северный", "ул. Северная"),
    ("ЖК Солнечный", "ул. Солнечная"),
    ("ЖК Зелёный квартал", "ул. Зелёная"),
    ("ЖК Речной", "ул. Речная"),
    ("ЖК Сосновый бор", "ул. Сосновая"),
    ("ЖК Лазурный", "ул. Лазурная"),
    ("ЖК Ясная поляна", "ул. Ясная"),
    ("ЖК Парковый", "ул. Парковая"),
];

/// Boiler houses: `bh-N` feeds heat points `hp-(4N-3)`..`hp-4N`.
const BOILER_HOUSES: [(&str, &str); 2] = [
    ("Котельная №1", "ул. Производственная, д. 8"),
    ("Котельная №2", "ул. Техническая, д. 21"),
];
const HEAT_POINTS_PER_BOILER_HOUSE: usize = 4;

/// A hospital, a school or a kindergarten: a top-level site with one organization consumer.
struct SocialObject {
    external_id: &'static str,
    kind: &'static str,
    name: &'static str,
    organization: &'static str,
    address: &'static str,
    /// Numbers of the heat points that feed it (the hospital has two independent inputs).
    heat_points: &'static [usize],
}

const SOCIAL_OBJECTS: [SocialObject; 8] = [
    SocialObject {
        external_id: "hospital-1",
        kind: "hospital",
        name: "Городская больница №7",
        organization: "ГАУЗ «Городская клиническая больница №7»",
        address: "ул. Маршала Чуйкова, д. 54",
        heat_points: &[1, 5],
    },
    SocialObject {
        external_id: "school-1",
        kind: "school",
        name: "Школа №12",
        organization: "МБОУ «Школа №12»",
        address: "ул. Солнечная, д. 1",
        heat_points: &[2],
    },
    SocialObject {
        external_id: "school-2",
        kind: "school",
        name: "Школа №45",
        organization: "МБОУ «Школа №45»",
        address: "ул. Лазурная, д. 1",
        heat_points: &[6],
    },
    SocialObject {
        external_id: "school-3",
        kind: "school",
        name: "Лицей №3",
        organization: "МБОУ «Лицей №3»",
        address: "ул. Парковая, д. 1",
        heat_points: &[8],
    },
    SocialObject {
        external_id: "kg-1",
        kind: "kindergarten",
        name: "Детский сад №101 «Солнышко»",
        organization: "МБДОУ «Детский сад №101»",
        address: "ул. Зелёная, д. 2",
        heat_points: &[3],
    },
    SocialObject {
        external_id: "kg-2",
        kind: "kindergarten",
        name: "Детский сад №58 «Ромашка»",
        organization: "МБДОУ «Детский сад №58»",
        address: "ул. Речная, д. 2",
        heat_points: &[4],
    },
    SocialObject {
        external_id: "kg-3",
        kind: "kindergarten",
        name: "Детский сад №17 «Теремок»",
        organization: "МБДОУ «Детский сад №17»",
        address: "ул. Сосновая, д. 2",
        heat_points: &[5],
    },
    SocialObject {
        external_id: "kg-4",
        kind: "kindergarten",
        name: "Детский сад №230 «Берёзка»",
        organization: "МБДОУ «Детский сад №230»",
        address: "ул. Ясная, д. 2",
        heat_points: &[7],
    },
];

/// The demo's supply points with sensors and the suffixes of their sensors (`hp-1` -> `p_supply`...),
/// heat points first: what `hub simulate` plays.
pub fn sensor_points() -> Vec<(String, Vec<&'static str>)> {
    let heat_points = (1..=COMPLEXES.len()).map(|n| {
        (
            format!("hp-{n}"),
            HEAT_POINT_SENSORS.iter().map(|s| s.0).collect(),
        )
    });
    let boiler_houses = (1..=BOILER_HOUSES.len()).map(|n| {
        (
            format!("bh-{n}"),
            BOILER_HOUSE_SENSORS.iter().map(|s| s.0).collect(),
        )
    });
    heat_points.chain(boiler_houses).collect()
}

/// The heat points a demo boiler house feeds (`bh-N` feeds `hp-(4N-3)`..`hp-4N`).
pub fn fed_by(boiler_house: &str) -> Vec<String> {
    let Some(n) = boiler_house
        .strip_prefix("bh-")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n >= 1)
    else {
        return Vec::new();
    };
    let first = (n - 1) * HEAT_POINTS_PER_BOILER_HOUSE + 1;
    (first..first + HEAT_POINTS_PER_BOILER_HOUSE)
        .map(|i| format!("hp-{i}"))
        .collect()
}

/// A sensor of a supply point: suffix of its external id, kind, unit.
type SensorSpec = (&'static str, SensorKind, &'static str);

/// Sensors of every heat point.
const HEAT_POINT_SENSORS: [SensorSpec; 5] = [
    ("p_supply", SensorKind::Pressure, "bar"),
    ("p_return", SensorKind::Pressure, "bar"),
    ("t_supply", SensorKind::Temperature, "°C"),
    ("t_return", SensorKind::Temperature, "°C"),
    ("flow", SensorKind::Flow, "m3/h"),
];

/// Sensors of every boiler house.
const BOILER_HOUSE_SENSORS: [SensorSpec; 2] = [
    ("p_out", SensorKind::Pressure, "bar"),
    ("t_out", SensorKind::Temperature, "°C"),
];

/// Surnames: male form, female form, Latin spelling (for e-mail and Telegram names).
const SURNAMES: [(&str, &str, &str); 36] = [
    ("Иванов", "Иванова", "ivanov"),
    ("Смирнов", "Смирнова", "smirnov"),
    ("Кузнецов", "Кузнецова", "kuznetsov"),
    ("Попов", "Попова", "popov"),
    ("Васильев", "Васильева", "vasiliev"),
    ("Петров", "Петрова", "petrov"),
    ("Соколов", "Соколова", "sokolov"),
    ("Михайлов", "Михайлова", "mikhailov"),
    ("Новиков", "Новикова", "novikov"),
    ("Фёдоров", "Фёдорова", "fedorov"),
    ("Морозов", "Морозова", "morozov"),
    ("Волков", "Волкова", "volkov"),
    ("Алексеев", "Алексеева", "alekseev"),
    ("Лебедев", "Лебедева", "lebedev"),
    ("Семёнов", "Семёнова", "semenov"),
    ("Егоров", "Егорова", "egorov"),
    ("Павлов", "Павлова", "pavlov"),
    ("Козлов", "Козлова", "kozlov"),
    ("Степанов", "Степанова", "stepanov"),
    ("Николаев", "Николаева", "nikolaev"),
    ("Орлов", "Орлова", "orlov"),
    ("Андреев", "Андреева", "andreev"),
    ("Макаров", "Макарова", "makarov"),
    ("Никитин", "Никитина", "nikitin"),
    ("Захаров", "Захарова", "zakharov"),
    ("Зайцев", "Зайцева", "zaitsev"),
    ("Соловьёв", "Соловьёва", "soloviev"),
    ("Борисов", "Борисова", "borisov"),
    ("Яковлев", "Яковлева", "yakovlev"),
    ("Григорьев", "Григорьева", "grigoriev"),
    ("Романов", "Романова", "romanov"),
    ("Сергеев", "Сергеева", "sergeev"),
    ("Гарипов", "Гарипова", "garipov"),
    ("Хабибуллин", "Хабибуллина", "khabibullin"),
    ("Сафин", "Сафина", "safin"),
    ("Галиев", "Галиева", "galiev"),
];

const MALE_NAMES: [(&str, &str); 14] = [
    ("Александр", "alexander"),
    ("Сергей", "sergey"),
    ("Дмитрий", "dmitry"),
    ("Андрей", "andrey"),
    ("Алексей", "alexey"),
    ("Максим", "maxim"),
    ("Евгений", "evgeny"),
    ("Иван", "ivan"),
    ("Михаил", "mikhail"),
    ("Артём", "artem"),
    ("Николай", "nikolay"),
    ("Владимир", "vladimir"),
    ("Ильдар", "ildar"),
    ("Рустам", "rustam"),
];

const FEMALE_NAMES: [(&str, &str); 14] = [
    ("Елена", "elena"),
    ("Ольга", "olga"),
    ("Наталья", "natalia"),
    ("Татьяна", "tatiana"),
    ("Анна", "anna"),
    ("Мария", "maria"),
    ("Ирина", "irina"),
    ("Светлана", "svetlana"),
    ("Екатерина", "ekaterina"),
    ("Юлия", "yulia"),
    ("Анастасия", "anastasia"),
    ("Гульнара", "gulnara"),
    ("Алсу", "alsu"),
    ("Динара", "dinara"),
];

/// Patronymics: male form, female form.
const PATRONYMICS: [(&str, &str); 12] = [
    ("Александрович", "Александровна"),
    ("Сергеевич", "Сергеевна"),
    ("Дмитриевич", "Дмитриевна"),
    ("Андреевич", "Андреевна"),
    ("Алексеевич", "Алексеевна"),
    ("Иванович", "Ивановна"),
    ("Михайлович", "Михайловна"),
    ("Николаевич", "Николаевна"),
    ("Владимирович", "Владимировна"),
    ("Петрович", "Петровна"),
    ("Юрьевич", "Юрьевна"),
    ("Викторович", "Викторовна"),
];

/// What `load` found or wrote, printed once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    pub tenants: usize,
    pub complexes: usize,
    pub sites: usize,
    pub supply_points: usize,
    pub consumers: usize,
    pub life_support: usize,
    pub social_objects: usize,
    pub sensors: usize,
    /// False when the data set was already in the database and nothing was written.
    pub written: bool,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo data: {} tenants, {} complexes, {} sites, {} supply points, {} consumers \
             ({} on life support, {} social objects), {} sensors",
            self.tenants,
            self.complexes,
            self.sites,
            self.supply_points,
            self.consumers,
            self.life_support,
            self.social_objects,
            self.sensors
        )?;
        if !self.written {
            f.write_str(" (already loaded)")?;
        }
        Ok(())
    }
}

/// Loads the demo data set in one transaction. Every record is upserted by external id, so loading
/// again duplicates nothing; when the supplier already holds exactly the demo's records, nothing is
/// written at all (a restart with `--demo` stays fast).
pub async fn load(db: &Db) -> Result<DemoSummary, StorageError> {
    let started = Instant::now();
    let set = generate()?;
    let mut tx = db.begin().await?;
    if already_loaded(&mut tx, &set).await? {
        tx.rollback().await?;
        return Ok(set.summary(false));
    }
    let mut refs = Refs::new();
    for t in &set.tenants {
        tenants::upsert(&mut tx, t).await?;
    }
    for s in &set.sites {
        sites::upsert(&mut tx, &mut refs, s).await?;
    }
    for p in &set.supply_points {
        network::upsert(&mut tx, &mut refs, p).await?;
    }
    consumers::upsert_many(&mut tx, &mut refs, &set.consumers).await?;
    // Field workers and a few tickets in every status (docs/tickets.md).
    crate::tickets::demo::seed(&mut tx, SUPPLIER, chrono::Utc::now()).await?;
    // Cold and hot water meters for every resident (the IVR's meter-readings robot).
    crate::storage::meters::seed_demo(&mut tx, SUPPLIER).await?;
    for s in &set.sensors {
        sensors::upsert(&mut tx, &mut refs, s).await?;
    }
    let summary = set.summary(true);
    let details = serde_json::json!({
        "seed": format!("{SEED:#x}"),
        "sites": summary.sites,
        "supply_points": summary.supply_points,
        "consumers": summary.consumers,
        "sensors": summary.sensors,
    });
    audit::record(&mut tx, "system", "demo", "demo", "load", details).await?;
    tx.commit().await?;
    tracing::info!(took = ?started.elapsed(), consumers = summary.consumers, "demo data loaded");
    Ok(summary)
}

/// Whether both tenants exist and the supplier holds as many records of each kind as the demo set.
async fn already_loaded(
    conn: &mut sqlx::AnyConnection,
    set: &DemoSet,
) -> Result<bool, StorageError> {
    let (tenants, sites, points, consumers, sensors): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM tenants WHERE external_id IN ($1, $2)),
           (SELECT COUNT(*) FROM sites s JOIN tenants t ON t.id = s.tenant_id WHERE t.external_id = $1),
           (SELECT COUNT(*) FROM supply_points p JOIN tenants t ON t.id = p.tenant_id WHERE t.external_id = $1),
           (SELECT COUNT(*) FROM consumers c JOIN tenants t ON t.id = c.tenant_id WHERE t.external_id = $1),
           (SELECT COUNT(*) FROM sensors s JOIN tenants t ON t.id = s.tenant_id WHERE t.external_id = $1)",
    )
    .bind(SUPPLIER)
    .bind(MANAGEMENT_COMPANY)
    .fetch_one(&mut *conn)
    .await?;
    let have = [tenants, sites, points, consumers, sensors];
    let want = [
        set.tenants.len(),
        set.sites.len(),
        set.supply_points.len(),
        set.consumers.len(),
        set.sensors.len(),
    ];
    Ok(have
        .iter()
        .zip(want)
        .all(|(h, w)| usize::try_from(*h) == Ok(w)))
}

/// Creates a user named after each role that has none yet, with a random password. Returns the names
/// and passwords of the users created now (to be printed once); existing users are left alone.
pub async fn ensure_users(db: &Db) -> Result<Vec<(String, String)>, StorageError> {
    let mut created = Vec::new();
    for role in Role::ALL {
        let name = role.as_str();
        let mut tx = db.begin().await?;
        if users::credentials(&mut tx, name).await?.is_some() {
            continue;
        }
        let password = auth::new_password();
        let hash = auth::hash_password(&password)
            .map_err(|e| StorageError::invalid("password", e.to_string()))?;
        users::create(&mut tx, name, &hash, *role, None).await?;
        audit::record(
            &mut tx,
            "system",
            "create",
            "user",
            name,
            serde_json::json!({"demo": true, "role": name}),
        )
        .await?;
        tx.commit().await?;
        created.push((name.to_owned(), password));
    }
    Ok(created)
}

/// The whole data set, in the order it must be written (parents before children, heat points before
/// the boiler houses that feed them).
#[derive(Debug)]
struct DemoSet {
    tenants: Vec<NewTenant>,
    sites: Vec<NewSite>,
    supply_points: Vec<NewSupplyPoint>,
    consumers: Vec<NewConsumer>,
    sensors: Vec<NewSensor>,
}

impl DemoSet {
    fn summary(&self, written: bool) -> DemoSummary {
        DemoSummary {
            tenants: self.tenants.len(),
            complexes: self
                .sites
                .iter()
                .filter(|s| s.kind == "residential_complex")
                .count(),
            sites: self.sites.len(),
            supply_points: self.supply_points.len(),
            consumers: self.consumers.len(),
            life_support: self.consumers.iter().filter(|c| c.life_support).count(),
            social_objects: self.consumers.iter().filter(|c| c.social_object).count(),
            sensors: self.sensors.len(),
            written,
        }
    }
}

/// splitmix64: tiny, fast and the same on every platform, which is all the demo needs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    /// True with the given probability in percent.
    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn external_id(id: impl Into<String>) -> Result<ExternalId, StorageError> {
    ExternalId::try_from(id.into()).map_err(|r| StorageError::invalid("external_id", r))
}

fn phone(number: String) -> Result<PhoneNumber, StorageError> {
    PhoneNumber::try_from(number).map_err(|r| StorageError::invalid("phones", r))
}

fn email(address: String) -> Result<Email, StorageError> {
    Email::try_from(address).map_err(|r| StorageError::invalid("email", r))
}

/// An apartment, to place its residents.
struct Apartment {
    external_id: String,
    complex: usize,
    building: u32,
    number: u32,
}

/// Builds the data set from `SEED`.
struct Generator {
    rng: Rng,
    supplier: ExternalId,
    set: DemoSet,
    phones: HashSet<u64>,
}

fn generate() -> Result<DemoSet, StorageError> {
    let mut g = Generator {
        rng: Rng(SEED),
        supplier: external_id(SUPPLIER)?,
        set: DemoSet {
            tenants: Vec::new(),
            sites: Vec::new(),
            supply_points: Vec::new(),
            consumers: Vec::new(),
            sensors: Vec::new(),
        },
        phones: HashSet::new(),
    };
    g.tenants()?;
    let apartments = g.complexes()?;
    g.social_objects()?;
    g.network()?;
    g.residents(&apartments)?;
    g.organizations()?;
    g.sensors()?;
    Ok(g.set)
}

impl Generator {
    fn tenants(&mut self) -> Result<(), StorageError> {
        for (id, name, kind) in [
            (SUPPLIER, "ТеплоСнаб", TenantKind::Supplier),
            (
                MANAGEMENT_COMPANY,
                "УК Комфорт",
                TenantKind::ManagementCompany,
            ),
        ] {
            self.set.tenants.push(NewTenant {
                external_id: external_id(id)?,
                name: name.to_owned(),
                kind,
                time_zone: TimeZone::default(),
                business_hours: Default::default(),
            });
        }
        Ok(())
    }

    fn site(
        &mut self,
        id: &str,
        parent: Option<&str>,
        kind: &str,
        name: String,
        address: String,
    ) -> Result<(), StorageError> {
        self.set.sites.push(NewSite {
            tenant: self.supplier.clone(),
            external_id: external_id(id)?,
            parent: parent.map(external_id).transpose()?,
            kind: kind.to_owned(),
            name,
            address,
        });
        Ok(())
    }

    /// The complexes' site trees; returns their apartments.
    fn complexes(&mut self) -> Result<Vec<Apartment>, StorageError> {
        let mut apartments = Vec::new();
        for (c, (name, street)) in COMPLEXES.iter().enumerate() {
            let c = c + 1;
            let rc = format!("rc-{c}");
            let street = format!("{CITY}, {street}");
            self.site(
                &rc,
                None,
                "residential_complex",
                (*name).to_owned(),
                street.clone(),
            )?;
            for (suffix, kind, name) in [
                ("basement", "basement", "Технический подвал (ЦТП)"),
                ("parking", "parking", "Подземный паркинг"),
                ("yard", "yard", "Двор"),
            ] {
                self.site(
                    &format!("{rc}-{suffix}"),
                    Some(&rc),
                    kind,
                    name.to_owned(),
                    street.clone(),
                )?;
            }
            for b in 1..=self.rng.between(6, 8) {
                let building = format!("{rc}-b{b}");
                let house = 2 * b + 1;
                let address = format!("{street}, д. {house}");
                self.site(
                    &building,
                    Some(&rc),
                    "building",
                    format!("Дом {house}"),
                    address.clone(),
                )?;
                let floors = self.rng.between(10, 18);
                let mut number = 0;
                for e in 1..=self.rng.between(4, 6) {
                    let entrance = format!("{building}-e{e}");
                    self.site(
                        &entrance,
                        Some(&building),
                        "entrance",
                        format!("Подъезд {e}"),
                        address.clone(),
                    )?;
                    for _ in 0..floors * APARTMENTS_PER_FLOOR {
                        number += 1;
                        let apartment = format!("{entrance}-a{number}");
                        self.site(
                            &apartment,
                            Some(&entrance),
                            "apartment",
                            format!("кв. {number}"),
                            format!("{address}, кв. {number}"),
                        )?;
                        apartments.push(Apartment {
                            external_id: apartment,
                            complex: c,
                            building: b,
                            number,
                        });
                    }
                }
            }
        }
        Ok(apartments)
    }

    fn social_objects(&mut self) -> Result<(), StorageError> {
        for o in &SOCIAL_OBJECTS {
            self.site(
                o.external_id,
                None,
                o.kind,
                o.name.to_owned(),
                format!("{CITY}, {}", o.address),
            )?;
        }
        Ok(())
    }

    /// Boiler house sites, then heat points (in their complexes' basements), then the boiler houses
    /// that feed them: a supply point can only feed one written before it.
    fn network(&mut self) -> Result<(), StorageError> {
        for (i, (name, address)) in BOILER_HOUSES.iter().enumerate() {
            self.site(
                &format!("boiler-{}", i + 1),
                None,
                "boiler_house",
                (*name).to_owned(),
                format!("{CITY}, {address}"),
            )?;
        }
        for (i, (complex, _)) in COMPLEXES.iter().enumerate() {
            let n = i + 1;
            let mut feeds_sites = vec![external_id(format!("rc-{n}"))?];
            for o in SOCIAL_OBJECTS.iter().filter(|o| o.heat_points.contains(&n)) {
                feeds_sites.push(external_id(o.external_id)?);
            }
            self.set.supply_points.push(NewSupplyPoint {
                tenant: self.supplier.clone(),
                external_id: external_id(format!("hp-{n}"))?,
                kind: SupplyPointKind::HeatPoint,
                name: format!("ЦТП-{n} ({complex})"),
                site: Some(external_id(format!("rc-{n}-basement"))?),
                feeds_points: Vec::new(),
                feeds_sites,
            });
        }
        for (i, (name, _)) in BOILER_HOUSES.iter().enumerate() {
            let first = i * HEAT_POINTS_PER_BOILER_HOUSE + 1;
            let feeds_points = (first..first + HEAT_POINTS_PER_BOILER_HOUSE)
                .map(|n| external_id(format!("hp-{n}")))
                .collect::<Result<_, _>>()?;
            self.set.supply_points.push(NewSupplyPoint {
                tenant: self.supplier.clone(),
                external_id: external_id(format!("bh-{}", i + 1))?,
                kind: SupplyPointKind::BoilerHouse,
                name: (*name).to_owned(),
                site: Some(external_id(format!("boiler-{}", i + 1))?),
                feeds_points,
                feeds_sites: Vec::new(),
            });
        }
        Ok(())
    }

    /// A mobile number (+7 9xx) no one else in the set has.
    fn mobile(&mut self) -> Result<PhoneNumber, StorageError> {
        loop {
            let n = 9_000_000_000 + self.rng.next() % 1_000_000_000;
            if self.phones.insert(n) {
                return phone(format!("+7{n}"));
            }
        }
    }

    /// One or two residents per apartment; then a few on life support and a few with two apartments.
    fn residents(&mut self, apartments: &[Apartment]) -> Result<(), StorageError> {
        let first = self.set.consumers.len();
        for a in apartments {
            let people = if self.rng.percent(53) { 2 } else { 1 };
            for k in 1..=people {
                let seq = self.set.consumers.len() - first + 1;
                let female = self.rng.percent(55);
                let (male_surname, female_surname, latin_surname) = self.rng.pick(&SURNAMES);
                let (given, latin_given) =
                    self.rng
                        .pick(if female { &FEMALE_NAMES } else { &MALE_NAMES });
                let (male_patronymic, female_patronymic) = self.rng.pick(&PATRONYMICS);
                let (surname, patronymic, latin_surname) = if female {
                    (
                        female_surname,
                        female_patronymic,
                        format!("{latin_surname}a"),
                    )
                } else {
                    (male_surname, male_patronymic, latin_surname.to_owned())
                };
                let mut phones = vec![self.mobile()?];
                if self.rng.percent(10) {
                    phones.push(self.mobile()?);
                }
                let email = if self.rng.percent(50) {
                    Some(email(format!(
                        "{latin_given}.{latin_surname}{seq}@example.org"
                    ))?)
                } else {
                    None
                };
                let telegram = self
                    .rng
                    .percent(20)
                    .then(|| format!("@{latin_surname}_{seq}"));
                let preferred_channels = match self.rng.below(5) {
                    0 => Vec::new(),
                    1 => vec![Channel::Voice],
                    2 => vec![Channel::Sms, Channel::Voice],
                    3 if email.is_some() => vec![Channel::Email, Channel::Sms],
                    4 if telegram.is_some() => vec![Channel::Telegram, Channel::Sms],
                    _ => vec![Channel::Sms],
                };
                let language = if self.rng.percent(4) { "en" } else { "ru" };
                self.set.consumers.push(NewConsumer {
                    tenant: self.supplier.clone(),
                    external_id: external_id(format!("res-{seq:05}"))?,
                    kind: ConsumerKind::Resident,
                    name: format!("{surname} {given} {patronymic}"),
                    phones,
                    email,
                    telegram,
                    preferred_channels,
                    opt_out: Vec::new(),
                    // Personal account: complex, building, apartment, resident.
                    account_number: Some(format!(
                        "5{}{:02}{:04}{k:02}",
                        a.complex, a.building, a.number
                    )),
                    language: language.to_owned(),
                    life_support: false,
                    social_object: false,
                    sites: vec![external_id(a.external_id.as_str())?],
                });
            }
        }
        let residents = self.set.consumers.len() - first;
        for i in self.distinct(LIFE_SUPPORT, residents) {
            let backup = self.mobile()?;
            let c = &mut self.set.consumers[first + i];
            c.life_support = true;
            // They must be reached by a person first, and there must be a second number to try.
            c.preferred_channels = vec![Channel::Voice, Channel::Sms];
            if c.phones.len() < 2 {
                c.phones.push(backup);
            }
        }
        for i in self.distinct(TWO_APARTMENTS, residents) {
            let mut second = self.rng.below(apartments.len());
            if self.set.consumers[first + i].sites[0].as_str() == apartments[second].external_id {
                second = (second + 1) % apartments.len();
            }
            let site = external_id(apartments[second].external_id.as_str())?;
            self.set.consumers[first + i].sites.push(site);
        }
        Ok(())
    }

    /// `n` distinct indices below `len`, ascending.
    fn distinct(&mut self, n: usize, len: usize) -> Vec<usize> {
        let mut picked = HashSet::new();
        while picked.len() < n.min(len) {
            picked.insert(self.rng.below(len));
        }
        let mut picked: Vec<usize> = picked.into_iter().collect();
        picked.sort_unstable();
        picked
    }

    /// One organization per social object, on its site.
    fn organizations(&mut self) -> Result<(), StorageError> {
        for (i, o) in SOCIAL_OBJECTS.iter().enumerate() {
            let landline = loop {
                let n = 78_432_000_000 + self.rng.next() % 1_000_000;
                if self.phones.insert(n) {
                    break phone(format!("+{n}"))?;
                }
            };
            let duty = self.mobile()?;
            self.set.consumers.push(NewConsumer {
                tenant: self.supplier.clone(),
                external_id: external_id(format!("org-{}", o.external_id))?,
                kind: ConsumerKind::Organization,
                name: o.organization.to_owned(),
                phones: vec![landline, duty],
                email: Some(email(format!("{}@example.org", o.external_id))?),
                telegram: None,
                preferred_channels: vec![Channel::Voice, Channel::Email],
                opt_out: Vec::new(),
                account_number: Some(format!("70000000{:02}", i + 1)),
                language: "ru".to_owned(),
                life_support: false,
                social_object: true,
                sites: vec![external_id(o.external_id)?],
            });
        }
        Ok(())
    }

    /// Five sensors on every heat point, two on every boiler house, where the equipment stands.
    fn sensors(&mut self) -> Result<(), StorageError> {
        let mut sensors = Vec::new();
        for p in &self.set.supply_points {
            let specs: &[SensorSpec] = if p.kind == SupplyPointKind::BoilerHouse {
                &BOILER_HOUSE_SENSORS
            } else {
                &HEAT_POINT_SENSORS
            };
            for (suffix, kind, unit) in specs {
                sensors.push(NewSensor {
                    tenant: self.supplier.clone(),
                    external_id: external_id(format!("{}.{suffix}", p.external_id))?,
                    kind: *kind,
                    unit: (*unit).to_owned(),
                    site: p.site.clone(),
                    supply_point: Some(p.external_id.clone()),
                    offline_after_s: SENSOR_OFFLINE_AFTER_S,
                });
            }
        }
        self.set.sensors = sensors;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::storage::test_db;

    async fn count(db: &Db, sql: &'static str) -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&db.pool).await.unwrap();
        n
    }

    /// What a user would check after `--demo`: the model's sizes.
    async fn census(db: &Db) -> [i64; 8] {
        [
            count(db, "SELECT COUNT(*) FROM tenants").await,
            count(
                db,
                "SELECT COUNT(*) FROM sites WHERE parent_id IS NULL AND kind = 'residential_complex'",
            )
            .await,
            count(db, "SELECT COUNT(*) FROM sites").await,
            count(db, "SELECT COUNT(*) FROM supply_points").await,
            count(db, "SELECT COUNT(*) FROM supply_links").await,
            count(db, "SELECT COUNT(*) FROM consumers").await,
            count(db, "SELECT COUNT(*) FROM consumer_sites").await,
            count(db, "SELECT COUNT(*) FROM sensors").await,
        ]
    }

    #[test]
    fn the_same_data_every_time_with_unique_contacts() {
        let a = generate().unwrap();
        assert_eq!(format!("{a:?}"), format!("{:?}", generate().unwrap()));
        let phones: Vec<&str> = a
            .consumers
            .iter()
            .flat_map(|c| c.phones.iter().map(|p| p.as_str()))
            .collect();
        assert_eq!(
            phones.iter().collect::<HashSet<_>>().len(),
            phones.len(),
            "a phone number belongs to one consumer"
        );
        let accounts: HashSet<_> = a.consumers.iter().map(|c| &c.account_number).collect();
        assert_eq!(accounts.len(), a.consumers.len());
        let site_ids: HashSet<_> = a.sites.iter().map(|s| &s.external_id).collect();
        assert_eq!(site_ids.len(), a.sites.len());
        let with_email = a.consumers.iter().filter(|c| c.email.is_some()).count();
        assert!((40..60).contains(&(with_email * 100 / a.consumers.len())));
        assert!(a.consumers.iter().any(|c| c.language == "en"));
        assert!(a.consumers.iter().any(|c| c.telegram.is_some()));
        assert_eq!(
            a.consumers.iter().filter(|c| c.sites.len() == 2).count(),
            TWO_APARTMENTS
        );
    }

    #[tokio::test]
    async fn loads_once_and_feeds_the_network() {
        let (db, _dir) = test_db::fresh().await;
        let summary = load(&db).await.unwrap();
        assert!(summary.written);
        let first = census(&db).await;
        assert_eq!(first[0], 2, "{summary}");
        assert_eq!(first[1], 8, "8 residential complexes");
        assert!(
            (21_000..=23_000).contains(&first[5]),
            "about 22,000 consumers: {summary}"
        );
        assert_eq!(first[2], summary.sites as i64);
        assert_eq!(first[5], summary.consumers as i64);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM consumers WHERE life_support = 1").await,
            LIFE_SUPPORT as i64
        );
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) FROM consumers WHERE social_object = 1"
            )
            .await,
            8
        );
        let per_point: Vec<(String, i64)> = sqlx::query_as(
            "SELECT p.external_id, COUNT(s.id) FROM supply_points p
             LEFT JOIN sensors s ON s.supply_point_id = p.id
             WHERE p.kind = 'heat_point' GROUP BY p.external_id",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(per_point.len(), 8);
        assert!(per_point.iter().all(|(_, n)| *n == 5), "{per_point:?}");
        let line = summary.to_string();
        assert!(
            line.starts_with("demo data: 2 tenants, 8 complexes, ")
                && line.contains("10 supply points")
                && line.contains("(12 on life support, 8 social objects), 44 sensors"),
            "{line}"
        );

        // Again: found in place, nothing written.
        let again = load(&db).await.unwrap();
        assert!(!again.written);
        assert_eq!(census(&db).await, first);

        // With a record missing, everything is upserted again: the missing one comes back, no duplicates.
        sqlx::query("DELETE FROM consumers WHERE external_id = 'res-00001'")
            .execute(&db.pool)
            .await
            .unwrap();
        assert!(load(&db).await.unwrap().written);
        assert_eq!(census(&db).await, first);

        // bh-1 feeds hp-1..hp-4: complexes rc-1..rc-4 and the social objects on those heat points.
        let set = generate().unwrap();
        let mut fed: Vec<String> = (1..=4).map(|n| format!("rc-{n}")).collect();
        for o in SOCIAL_OBJECTS
            .iter()
            .filter(|o| o.heat_points.iter().any(|n| *n <= 4))
        {
            fed.push(o.external_id.to_owned());
        }
        let under = |site: &ExternalId| {
            fed.iter()
                .any(|f| site.as_str() == f || site.as_str().starts_with(&format!("{f}-")))
        };
        let ids: HashMap<String, i64> = sqlx::query_as("SELECT external_id, id FROM consumers")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
        let expected: BTreeSet<i64> = set
            .consumers
            .iter()
            .filter(|c| c.sites.iter().any(under))
            .map(|c| ids[c.external_id.as_str()])
            .collect();
        let mut conn = db.conn().await.unwrap();
        let index = network::load_index(&mut conn).await.unwrap();
        let bh1: (i64,) = sqlx::query_as("SELECT id FROM supply_points WHERE external_id = 'bh-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let affected = index.affected(bh1.0);
        assert_eq!(affected.supply_points.len(), 5, "bh-1 and hp-1..hp-4");
        assert!(!affected.consumers.is_empty() && affected.consumers.len() < ids.len());
        assert_eq!(
            affected.consumers.iter().copied().collect::<BTreeSet<_>>(),
            expected
        );
        assert_eq!(
            affected.social_objects.len(),
            4,
            "hospital, school-1, kg-1, kg-2"
        );
        assert_eq!(affected.roots.len(), 8, "4 complexes and 4 social objects");
    }

    #[tokio::test]
    async fn one_user_per_role_once() {
        let (db, _dir) = test_db::fresh().await;
        let created = ensure_users(&db).await.unwrap();
        let names: Vec<&str> = created.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["admin", "engineer", "dispatcher", "operator", "viewer"]
        );
        let mut conn = db.conn().await.unwrap();
        for (name, password) in &created {
            let (user, hash) = users::credentials(&mut conn, name).await.unwrap().unwrap();
            assert_eq!(user.role.as_str(), name);
            assert!(auth::verify_password(password, &hash), "{name} can log in");
        }
        assert!(ensure_users(&db).await.unwrap().is_empty());
        assert_eq!(users::count(&mut conn).await.unwrap(), 5);
    }
}
