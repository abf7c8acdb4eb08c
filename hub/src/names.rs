//! Closed sets of names (kinds, statuses, roles, channels) shared by storage, the API and import:
//! parsed once at the edge, stored as their snake_case name.

/// Declares an enum whose values are stored and sent as fixed strings.
macro_rules! names {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        pub enum $name { $($(#[$vmeta])* #[serde(rename = $s)] $var),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(format!(
                        "unknown value `{s}`, expected one of: {}",
                        [$($s),+].join(", ")
                    )),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use names;

names! {
    /// What a tenant is.
    pub enum TenantKind { Supplier = "supplier", ManagementCompany = "management_company" }
}

names! {
    /// Equipment of the supply network.
    pub enum SupplyPointKind {
        BoilerHouse = "boiler_house", HeatPoint = "heat_point", Substation = "substation",
        Feeder = "feeder", Transformer = "transformer", Pump = "pump", PumpingStation = "pumping_station",
        WaterIntake = "water_intake",
    }
}

names! {
    /// A person or an organization (hospital, school, kindergarten, shop...).
    pub enum ConsumerKind { Resident = "resident", Organization = "organization" }
}

names! {
    /// Ways to reach a consumer, in the order they prefer.
    pub enum Channel { Voice = "voice", Sms = "sms", Email = "email", Telegram = "telegram", Letter = "letter" }
}

names! {
    /// What a sensor measures.
    pub enum SensorKind {
        Pressure = "pressure", Temperature = "temperature", Flow = "flow", Level = "level", Other = "other",
    }
}

names! {
    /// Planned works are announced ahead; emergencies happen.
    pub enum OutageKind { Planned = "planned", Emergency = "emergency" }
}

names! {
    /// What is cut off.
    pub enum Utility {
        Heat = "heat", HotWater = "hot_water", ColdWater = "cold_water", Power = "power", Gas = "gas",
    }
}

names! {
    /// Life cycle of an outage: planned -> active -> closed, or cancelled before it starts.
    pub enum OutageStatus { Planned = "planned", Active = "active", Closed = "closed", Cancelled = "cancelled" }
}

names! {
    /// Who a user is, and so what they may do (see `auth::Permission`).
    pub enum Role {
        Admin = "admin", Engineer = "engineer", Dispatcher = "dispatcher", Operator = "operator",
        Viewer = "viewer",
    }
}

/// Site kinds the hub knows; any other lowercase identifier is accepted as a custom kind.
pub const KNOWN_SITE_KINDS: &[&str] = &[
    "residential_complex",
    "building",
    "entrance",
    "apartment",
    "basement",
    "parking",
    "playground",
    "yard",
    "boiler_house",
    "heat_point",
    "pumping_station",
    "substation",
    "hospital",
    "school",
    "kindergarten",
    "office",
    "shop",
];

/// A site kind: one of `KNOWN_SITE_KINDS` or a custom lowercase identifier (`[a-z0-9_]`, 1-40 chars).
pub fn check_site_kind(kind: &str) -> Result<(), String> {
    let ok = !kind.is_empty()
        && kind.len() <= 40
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{kind}` is not a site kind: use a lowercase identifier such as building or apartment"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_unknown() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), *r);
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.contains("admin, engineer"), "{err}");
        assert_eq!(
            serde_json::to_string(&Utility::HotWater).unwrap(),
            "\"hot_water\""
        );
    }

    #[test]
    fn site_kinds_allow_custom_identifiers() {
        assert!(check_site_kind("bike_storage").is_ok());
        assert!(check_site_kind("Bike Storage").is_err());
        assert!(check_site_kind("").is_err());
    }
}
