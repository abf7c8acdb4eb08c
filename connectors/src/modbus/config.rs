//! The Modbus TCP connector's configuration (`[connectors.NAME]` with `type = "modbus"`): one device,
//! the registers to poll and how their words become sensor readings. Checked once at start by
//! [`ModbusConfig::validate`], so the poll loop never meets a register it cannot decode.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ConnectorError;

use super::{MAX_READ_BITS, MAX_READ_REGISTERS};

/// Longest interval, timeout or backoff accepted, in milliseconds (a day): longer ones are typos.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// One Modbus TCP device (or one unit behind a Modbus TCP gateway) and the registers read from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Host name or IP address of the device, or of the gateway in front of it.
    pub host: String,
    /// TCP port of the Modbus server.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Modbus unit identifier (the "slave id"); gateways route on it, plain TCP devices mostly ignore it.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Time between two polls, in milliseconds. Polls follow a fixed schedule: the n-th poll starts at
    /// start + n x interval however long each takes; a poll that would start late is skipped.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How long to wait for the TCP connection or for one response, in milliseconds, before the device
    /// is considered down.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest wait between two reconnection attempts, in milliseconds. The wait starts at
    /// `poll_interval_ms` and doubles after every failed attempt up to this.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// The registers to poll, one sensor each.
    pub registers: Vec<RegisterConfig>,
}

/// One sensor read from one register (or two adjacent registers for 32-bit types, or one bit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// External id of the sensor the value belongs to (the hub's `sensors.external_id`).
    pub sensor: String,
    /// Which of the four Modbus tables the value is in.
    pub table: Table,
    /// 0-based address as sent on the wire (register 40001 in the 1-based "4xxxx" notation is
    /// `table = "holding"`, `address = 0`).
    pub address: u16,
    /// How the register words encode the value; only for `holding` and `input` (default `u16`).
    /// Coils and discrete inputs are read as 0 or 1 and take no type.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    /// For 32-bit types: `big` when the first register holds the high word, `little` when it holds
    /// the low word.
    #[serde(default = "default_order")]
    pub word_order: Order,
    /// Byte order inside each 16-bit register: `big` is the Modbus standard, `little` swaps the
    /// two bytes of every register.
    #[serde(default = "default_order")]
    pub byte_order: Order,
    /// Multiplier applied to the raw number: value = raw x scale + offset. Must not be 0, so that
    /// writes can be converted back.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Added after scaling: value = raw x scale + offset.
    #[serde(default = "default_offset")]
    pub offset: f64,
    /// Unit of the scaled value (`degC`, `bar`, `m3/h`); informational, for people reading the config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Holding registers (function 03, written with 06/16): read-write 16-bit words.
    Holding,
    /// Input registers (function 04): read-only 16-bit words.
    Input,
    /// Coils (function 01, written with 05): read-write bits.
    Coil,
    /// Discrete inputs (function 02): read-only bits.
    Discrete,
}

/// How register words encode a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

/// Big or little endian, for words in a 32-bit value or bytes in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Big,
    Little,
}

pub fn default_port() -> u16 {
    502
}

pub fn default_unit() -> u8 {
    1
}

pub fn default_poll_interval_ms() -> u64 {
    1000
}

pub fn default_timeout_ms() -> u64 {
    1000
}

pub fn default_backoff_max_ms() -> u64 {
    60_000
}

pub fn default_order() -> Order {
    Order::Big
}

pub fn default_scale() -> f64 {
    1.0
}

pub fn default_offset() -> f64 {
    0.0
}

impl Table {
    /// Bit tables (coils, discrete inputs) hold 0/1; the others hold 16-bit words.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most a single read request may ask for in this table (Modbus spec limits).
    pub fn max_read(self) -> u16 {
        if self.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }

    /// Whether the Modbus protocol lets a client write this table.
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Holding | Table::Coil)
    }

    fn article(self) -> &'static str {
        match self {
            Table::Holding => "a holding register",
            Table::Input => "an input register",
            Table::Coil => "a coil",
            Table::Discrete => "a discrete input",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        })
    }
}

impl ValueType {
    /// How many 16-bit registers a value of this type occupies.
    pub fn words(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
        })
    }
}

impl RegisterConfig {
    /// The value type of a word register (`u16` unless set); `None` for coils and discrete inputs.
    pub fn word_type(&self) -> Option<ValueType> {
        if self.table.is_bits() {
            None
        } else {
            Some(self.value_type.unwrap_or(ValueType::U16))
        }
    }

    /// How many addresses the value spans in its table (bits for bit tables, words otherwise).
    pub fn width(&self) -> u16 {
        self.word_type().map_or(1, ValueType::words)
    }

    /// What stats and errors call the register: `holding 40`.
    pub fn key(&self) -> String {
        format!("{} {}", self.table, self.address)
    }

    /// raw x scale + offset.
    pub fn scaled(&self, raw: f64) -> f64 {
        raw * self.scale + self.offset
    }

    /// The raw number that [`RegisterConfig::scaled`] turns into `value`.
    pub fn unscaled(&self, value: f64) -> f64 {
        (value - self.offset) / self.scale
    }
}

impl ModbusConfig {
    /// Checks everything the connector relies on; the error lists every problem, each naming its
    /// field (`registers[2].type: f32 is not valid for a coil`).
    pub fn validate(&self) -> Result<(), ConnectorError> {
        let mut errors = Vec::new();
        if self.host.trim().is_empty() {
            errors.push("host: must not be empty".to_string());
        }
        if self.port == 0 {
            errors.push("port: must not be 0".to_string());
        }
        let day = MAX_DURATION_MS;
        if self.poll_interval_ms == 0 || self.poll_interval_ms > day {
            errors.push(format!("poll_interval_ms: must be from 1 to {day} (a day)"));
        }
        if self.timeout_ms == 0 || self.timeout_ms > day {
            errors.push(format!("timeout_ms: must be from 1 to {day} (a day)"));
        }
        if self.backoff_max_ms > day {
            errors.push(format!("backoff_max_ms: must be at most {day} (a day)"));
        } else if self.backoff_max_ms < self.poll_interval_ms {
            errors.push(format!(
                "backoff_max_ms: must be at least poll_interval_ms ({})",
                self.poll_interval_ms
            ));
        }
        if self.registers.is_empty() {
            errors.push("registers: at least one register is needed".to_string());
        }
        let mut sensors: HashMap<&str, usize> = HashMap::new();
        for (i, r) in self.registers.iter().enumerate() {
            let at = format!("registers[{i}]");
            if r.sensor.trim().is_empty() {
                errors.push(format!("{at}.sensor: must not be empty"));
            } else if let Some(first) = sensors.insert(&r.sensor, i) {
                // Writes address a register by its sensor, so a sensor must map to one register.
                errors.push(format!(
                    "{at}.sensor: {:?} is already used by registers[{first}]",
                    r.sensor
                ));
                sensors.insert(&r.sensor, first);
            }
            if r.table.is_bits()
                && let Some(t) = r.value_type
                && t != ValueType::U16
            {
                errors.push(format!(
                    "{at}.type: {t} is not valid for {} (it reads as 0 or 1; leave type out)",
                    r.table.article()
                ));
            }
            let last = u32::from(r.address) + u32::from(r.width()) - 1;
            if last > u32::from(u16::MAX) {
                errors.push(format!(
                    "{at}.address: {} at {} runs past the last address 65535",
                    r.value_type.unwrap_or(ValueType::U16),
                    r.address
                ));
            }
            if !r.scale.is_finite() || r.scale == 0.0 {
                errors.push(format!("{at}.scale: must be a finite number other than 0"));
            }
            if !r.offset.is_finite() {
                errors.push(format!("{at}.offset: must be a finite number"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::Config(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(sensor: &str, table: Table, address: u16) -> RegisterConfig {
        RegisterConfig {
            sensor: sensor.to_string(),
            table,
            address,
            value_type: None,
            word_order: Order::Big,
            byte_order: Order::Big,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    fn config(registers: Vec<RegisterConfig>) -> ModbusConfig {
        ModbusConfig {
            host: "10.0.0.5".to_string(),
            port: 502,
            unit: 1,
            poll_interval_ms: 1000,
            timeout_ms: 1000,
            backoff_max_ms: 60_000,
            registers,
        }
    }

    fn error(c: &ModbusConfig) -> String {
        match c.validate() {
            Err(ConnectorError::Config(e)) => e,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_everything_but_host_and_registers() {
        let c: ModbusConfig = toml::from_str(
            r#"
            host = "plc.local"
            [[registers]]
            sensor = "t1"
            table = "holding"
            address = 3
            "#,
        )
        .unwrap();
        assert_eq!(c.port, 502);
        assert_eq!(c.unit, 1);
        assert_eq!(c.poll_interval_ms, 1000);
        assert_eq!(c.timeout_ms, 1000);
        assert_eq!(c.backoff_max_ms, 60_000);
        let r = &c.registers[0];
        assert_eq!(r.word_type(), Some(ValueType::U16));
        assert_eq!((r.word_order, r.byte_order), (Order::Big, Order::Big));
        assert_eq!((r.scale, r.offset, r.unit.as_deref()), (1.0, 0.0, None));
        c.validate().unwrap();
        // Defaults can be printed and read back.
        let printed = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<ModbusConfig>(&printed).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<ModbusConfig>(
            r#"
            host = "plc.local"
            pol_interval_ms = 10
            registers = []
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("pol_interval_ms"), "{e}");
        let e = toml::from_str::<ModbusConfig>(
            r#"
            host = "plc.local"
            [[registers]]
            sensor = "t1"
            table = "holding"
            address = 3
            type = "f64"
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("f64"), "{e}");
    }

    #[test]
    fn a_typed_coil_is_refused_naming_the_field() {
        let mut coil = register("pump", Table::Coil, 7);
        coil.value_type = Some(ValueType::F32);
        let c = config(vec![
            register("a", Table::Holding, 0),
            register("b", Table::Holding, 1),
            coil,
        ]);
        assert_eq!(
            error(&c),
            "registers[2].type: f32 is not valid for a coil (it reads as 0 or 1; leave type out)"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut dup = register("a", Table::Input, 1);
        dup.scale = 0.0;
        let mut wide = register("w", Table::Holding, 65535);
        wide.value_type = Some(ValueType::U32);
        wide.offset = f64::NAN;
        let mut c = config(vec![register("a", Table::Holding, 0), dup, wide]);
        c.host = " ".to_string();
        c.port = 0;
        c.poll_interval_ms = 2000;
        c.backoff_max_ms = 1000;
        c.timeout_ms = 0;
        assert_eq!(
            error(&c),
            [
                "host: must not be empty",
                "port: must not be 0",
                "timeout_ms: must be from 1 to 86400000 (a day)",
                "backoff_max_ms: must be at least poll_interval_ms (2000)",
                "registers[1].sensor: \"a\" is already used by registers[0]",
                "registers[1].scale: must be a finite number other than 0",
                "registers[2].address: u32 at 65535 runs past the last address 65535",
                "registers[2].offset: must be a finite number",
            ]
            .join("; ")
        );
        assert_eq!(
            error(&config(vec![])),
            "registers: at least one register is needed"
        );
        let mut c = config(vec![register("a", Table::Holding, 0)]);
        c.poll_interval_ms = MAX_DURATION_MS + 1;
        c.backoff_max_ms = u64::MAX;
        assert_eq!(
            error(&c),
            "poll_interval_ms: must be from 1 to 86400000 (a day); \
             backoff_max_ms: must be at most 86400000 (a day)"
        );
    }

    #[test]
    fn the_last_address_fits_a_16_bit_value_and_a_bit() {
        let mut c = config(vec![register("a", Table::Holding, 65535)]);
        c.registers.push(register("b", Table::Discrete, 65535));
        c.validate().unwrap();
    }
}
