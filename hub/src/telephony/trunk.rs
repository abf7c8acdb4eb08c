//! SIP trunks: the providers the hub places calls through (`[telephony.trunks.NAME]`) and takes calls
//! from. Each has an address, optional digest credentials (answered when the provider challenges an
//! INVITE, used to REGISTER when `register = true`), a number of lines (concurrent outbound calls), and
//! the addresses it sends from (`inbound_from`, for the inbound filter).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `[telephony.trunks.NAME]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// The provider's SIP address, `host:port` (a name or an IP; the port defaults to 5060). Resolved
    /// once at start. Calls go there over UDP.
    pub host: String,
    /// The provider's SIP domain, written into request URIs, From and To. Empty: the host part of `host`.
    #[serde(default)]
    pub domain: String,
    /// User name for digest authentication and REGISTER. Empty: the provider authenticates us by IP.
    #[serde(default)]
    pub username: String,
    /// Password for digest authentication (never logged).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Our number as the provider knows it (the user part of From, the caller id). Empty: `username`,
    /// else `hub`.
    #[serde(default)]
    pub from_user: String,
    /// Outbound calls at once through this trunk; `Telephony::originate` waits up to the call's
    /// `line_wait` for a free line, then fails with "all lines busy".
    #[serde(default = "default_lines")]
    pub lines: usize,
    /// Addresses the provider sends calls from: IPs or CIDR blocks (`203.0.113.0/24`). With
    /// `[telephony] allow_unregistered = false`, requests from elsewhere (and not from a registered
    /// phone) are refused with 403.
    #[serde(default)]
    pub inbound_from: Vec<String>,
    /// REGISTER with the provider (digest authentication with `username`/`password`), refreshed before
    /// it expires; for providers that send inbound calls only to registered users.
    #[serde(default)]
    pub register: bool,
    /// Seconds of registration asked for; refreshed at 80% of what the provider grants.
    #[serde(default = "default_register_expires")]
    pub register_expires: u32,
}

fn default_lines() -> usize {
    10
}
fn default_register_expires() -> u32 {
    3600
}

impl TrunkConfig {
    /// Checks that need no network.
    pub fn check(&self, name: &str) -> Result<(), (String, String)> {
        let field = |f: &str| format!("telephony.trunks.{name}.{f}");
        if self.host.trim().is_empty() {
            return Err((field("host"), "must be host:port".into()));
        }
        if self.lines == 0 {
            return Err((field("lines"), "must be at least 1".into()));
        }
        for cidr in &self.inbound_from {
            if Cidr::parse(cidr).is_none() {
                return Err((
                    field("inbound_from"),
                    format!("`{cidr}` is not an IP address or CIDR block"),
                ));
            }
        }
        if self.register && (self.username.is_empty() || self.password.is_none()) {
            return Err((field("register"), "needs username and password".into()));
        }
        if self.register_expires < 60 {
            return Err((field("register_expires"), "must be at least 60".into()));
        }
        Ok(())
    }

    /// `host` with the default port.
    pub fn host_port(&self) -> String {
        let h = self.host.trim();
        let has_port = if h.starts_with('[') {
            h.contains("]:")
        } else {
            h.matches(':').count() == 1
        };
        if has_port {
            h.to_owned()
        } else {
            format!("{h}:5060")
        }
    }

    /// The SIP domain.
    pub fn domain(&self) -> String {
        if !self.domain.is_empty() {
            return self.domain.clone();
        }
        let hp = self.host_port();
        match hp.rsplit_once(':') {
            Some((h, _)) => h.to_owned(),
            None => hp,
        }
    }

    pub fn from_user(&self) -> &str {
        if !self.from_user.is_empty() {
            &self.from_user
        } else if !self.username.is_empty() {
            &self.username
        } else {
            "hub"
        }
    }

    /// Digest credentials, when configured.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match (&self.password, self.username.is_empty()) {
            (Some(p), false) => Some((self.username.as_str(), p.expose())),
            _ => None,
        }
    }
}

/// A trunk as the core uses it: the config with its address resolved.
#[derive(Debug, Clone)]
pub struct Trunk {
    pub name: String,
    pub config: TrunkConfig,
    pub addr: SocketAddr,
    pub inbound: Vec<Cidr>,
}

impl Trunk {
    /// Resolves `host` (DNS when it is a name).
    pub async fn resolve(name: &str, config: &TrunkConfig) -> Result<Self, String> {
        let hp = config.host_port();
        let addr = tokio::net::lookup_host(&hp)
            .await
            .map_err(|e| format!("telephony.trunks.{name}.host: `{hp}`: {e}"))?
            .next()
            .ok_or_else(|| format!("telephony.trunks.{name}.host: `{hp}` has no address"))?;
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            addr,
            inbound: config
                .inbound_from
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
        })
    }

    /// Whether a request from `ip` comes from this trunk (its `inbound_from`, or its own address).
    pub fn sends_from(&self, ip: IpAddr) -> bool {
        self.addr.ip() == ip || self.inbound.iter().any(|c| c.contains(ip))
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_addresses() {
        let c = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(c.contains("203.0.113.77".parse().unwrap()));
        assert!(!c.contains("203.0.114.1".parse().unwrap()));
        assert!(c.contains("::ffff:203.0.113.5".parse().unwrap()));
        assert!(
            Cidr::parse("10.1.2.3")
                .unwrap()
                .contains("10.1.2.3".parse().unwrap())
        );
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn trunk_config_defaults_and_checks() {
        let t: TrunkConfig = toml::from_str(
            "host = \"sip.example.net\"\nusername = \"u\"\npassword = \"p\"\nregister = true",
        )
        .unwrap();
        t.check("p").unwrap();
        assert_eq!(t.host_port(), "sip.example.net:5060");
        assert_eq!(t.domain(), "sip.example.net");
        assert_eq!(t.from_user(), "u");
        assert!(
            !format!("{t:?}").contains("\"p\""),
            "password never printed"
        );
        let t: TrunkConfig = toml::from_str("host = \"127.0.0.1:5070\"\nregister = true").unwrap();
        assert!(t.check("p").unwrap_err().0.ends_with("register"));
        let t: TrunkConfig =
            toml::from_str("host = \"1.2.3.4\"\ninbound_from = [\"1.2.3.0/99\"]").unwrap();
        assert!(t.check("p").unwrap_err().0.ends_with("inbound_from"));
        assert!(toml::from_str::<TrunkConfig>("host = \"x\"\npasword = \"p\"").is_err());
    }
}
