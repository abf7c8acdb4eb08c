//! The core as a registrar for operators' phones (REGISTER challenged with digest authentication,
//! bindings kept in memory and persisted aside) and as a registering client of trunks with
//! `register = true` (REGISTER answered with credentials when challenged, refreshed at 80% of the
//! granted time, retried after failures). Also the inbound filter: with `allow_unregistered = false`
//! only trunks' addresses and registered phones may call in.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::{Core, random_token};
use crate::telephony::accounts::{Account, BindingOp, Registration};
use crate::telephony::digest::{Challenge, Credentials, NonceCheck};
use crate::telephony::outbound::{self, DialogSide};
use crate::telephony::sip::{Header, Method, NameAddr, Params, Request, Response, Uri};
use crate::telephony::transaction::ClientTx;

/// Registrations asked for longer are granted this long.
pub(super) const MAX_EXPIRES: u32 = 3600;
/// Registrations asked for shorter are granted this long.
pub(super) const MIN_EXPIRES: u32 = 60;
/// At most one log line about refused credentials per this interval.
const AUTH_LOG_EVERY: Duration = Duration::from_secs(10);
/// A trunk registration that failed is tried again after this long.
const REGISTER_RETRY: Duration = Duration::from_secs(60);

/// A trunk's registration with its provider.
pub(super) struct TrunkReg {
    pub(super) trunk: String,
    call_id: String,
    tag: String,
    cseq: u32,
    next_at: Instant,
    pending: Option<String>,
    auth_tried: bool,
    pub(super) status: String,
    pub(super) registered_until: Option<chrono::DateTime<Utc>>,
}

impl TrunkReg {
    pub(super) fn new(trunk: &str, now: Instant) -> Self {
        Self {
            trunk: trunk.to_owned(),
            call_id: format!("{}@hub", random_token()),
            tag: random_token(),
            cseq: 0,
            next_at: now,
            pending: None,
            auth_tried: false,
            status: "not registered yet".into(),
            registered_until: None,
        }
    }
}

/// A trunk's registration: its name, status and until when it is registered.
pub type RegState = (String, String, Option<chrono::DateTime<Utc>>);

/// A trunk as `Telephony::trunks` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TrunkStatus {
    pub name: String,
    /// The resolved address calls go to.
    pub address: String,
    pub lines: usize,
    /// Lines in use by outbound calls.
    pub lines_busy: usize,
    /// Whether the trunk registers, and how it went: `registered`, `refused (403)`, `no response`, ...
    pub register: bool,
    pub registration: Option<String>,
    pub registered_until: Option<chrono::DateTime<Utc>>,
}

impl Core {
    pub(super) fn reg_wakeups(&self) -> impl Iterator<Item = Instant> + '_ {
        self.trunk_regs
            .iter()
            .filter(|r| r.pending.is_none())
            .map(|r| r.next_at)
    }

    /// Whether requests from `ip` may reach the core (`allow_unregistered = false`).
    pub(super) fn source_allowed(&self, ip: IpAddr) -> bool {
        if self.setup.config.allow_unregistered {
            return true;
        }
        let now = Utc::now();
        self.setup.trunks.iter().any(|t| t.sends_from(ip))
            || self.bindings.iter().any(|b| {
                b.expires_at > now && b.source.parse::<SocketAddr>().is_ok_and(|s| s.ip() == ip)
            })
    }

    /// Where to send a call for `account`: its newest live binding. The Contact's address when it is
    /// an IP on the host the REGISTER came from (the phone knows where it listens); else, and always
    /// over TCP, the address the REGISTER came from (a phone behind NAT that wrote a private address).
    pub(super) fn contact_of(&self, account: &str) -> Option<(SocketAddr, Uri)> {
        let now = Utc::now();
        let b = self
            .bindings
            .iter()
            .filter(|b| b.username == account && b.expires_at > now)
            .max_by_key(|b| b.expires_at)?;
        let source: SocketAddr = b.source.parse().ok()?;
        let uri = Uri::parse(&b.contact).ok()?;
        let contact_addr = uri
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, uri.port.unwrap_or(5060)));
        let dest = match contact_addr {
            Some(c) if c.ip() == source.ip() && !self.tcp.contains_key(&source) => c,
            _ => source,
        };
        Some((dest, uri))
    }

    pub(super) fn live_registrations(&mut self) -> Vec<Registration> {
        let now = Utc::now();
        self.bindings.retain(|b| b.expires_at > now);
        self.bindings.clone()
    }

    pub(super) fn account_changed(&mut self, upsert: Option<Account>, remove: Option<String>) {
        if let Some(name) = remove {
            self.accounts.remove(&name);
            self.bindings.retain(|b| b.username != name);
        }
        if let Some(a) = upsert {
            self.accounts.insert(a.username.clone(), a);
        }
    }

    fn auth_failed(&mut self, reason: &'static str, user: &str, from: SocketAddr) {
        self.setup
            .metrics
            .inc("hub_sip_auth_failures_total", &[("reason", reason)]);
        self.auth_failures += 1;
        let now = Instant::now();
        if self
            .auth_logged_at
            .is_none_or(|t| now - t >= AUTH_LOG_EVERY)
        {
            tracing::warn!(%from, user, reason, count = self.auth_failures, "sip authentication failed");
            self.auth_failures = 0;
            self.auth_logged_at = Some(now);
        }
    }

    fn challenge(&self, req: &Request, stale: bool) -> Response {
        let now = Utc::now().timestamp();
        let mut value = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            self.setup.config.realm,
            self.nonces.issue(now)
        );
        if stale {
            value.push_str(", stale=true");
        }
        Response::to_request(req, 401, "Unauthorized", Some(&random_token()))
            .with_header("WWW-Authenticate", value)
    }

    /// REGISTER from a phone: challenge, check, bind.
    pub(super) async fn on_register(
        &mut self,
        req: Request,
        tx_key: &str,
        from: SocketAddr,
        now: Instant,
    ) {
        let creds = req.header("Authorization").and_then(Credentials::parse);
        let Some(creds) = creds else {
            let res = self.challenge(&req, false);
            self.respond(tx_key, &res, from, now).await;
            return;
        };
        let forbidden =
            |req: &Request| Response::to_request(req, 403, "Forbidden", Some(&random_token()));
        let account = self.accounts.get(&creds.username).cloned();
        let Some(account) = account.filter(|a| a.realm == creds.realm) else {
            self.auth_failed("unknown_account", &creds.username, from);
            self.respond(tx_key, &forbidden(&req), from, now).await;
            return;
        };
        // The password first: a right answer to a nonce that is old, or not ours (one of before a
        // restart: each run has its own key), is re-challenged with `stale=true`, never accepted.
        if !creds.verify(&account.ha1, "REGISTER") {
            self.auth_failed("wrong_password", &creds.username, from);
            self.respond(tx_key, &forbidden(&req), from, now).await;
            return;
        }
        match self.nonces.check(&creds.nonce, Utc::now().timestamp()) {
            NonceCheck::Fresh => {}
            NonceCheck::Stale | NonceCheck::Forged => {
                let res = self.challenge(&req, true);
                self.respond(tx_key, &res, from, now).await;
                return;
            }
        }
        let transport = if self.tcp.contains_key(&from) {
            "tcp"
        } else {
            "udp"
        };
        if let Some(contact) = &req.common.contact {
            let asked = contact
                .params
                .get("expires")
                .or_else(|| req.header("Expires"))
                .and_then(|e| e.trim().parse::<u32>().ok())
                .unwrap_or(MAX_EXPIRES);
            let contact_uri = contact.uri.to_string();
            if asked == 0 {
                self.bindings
                    .retain(|b| !(b.username == account.username && b.contact == contact_uri));
                self.persist(BindingOp::Remove {
                    username: account.username.clone(),
                    contact: contact_uri,
                });
                tracing::info!(user = %account.username, %from, "phone unregistered");
            } else {
                let granted = asked.clamp(MIN_EXPIRES, MAX_EXPIRES);
                let reg = Registration {
                    username: account.username.clone(),
                    contact: contact_uri.clone(),
                    source: from.to_string(),
                    transport: transport.into(),
                    user_agent: req.header("User-Agent").map(str::to_owned),
                    expires_at: Utc::now() + chrono::Duration::seconds(i64::from(granted)),
                };
                let fresh = !self
                    .bindings
                    .iter()
                    .any(|b| b.username == reg.username && b.contact == reg.contact);
                self.bindings
                    .retain(|b| !(b.username == reg.username && b.contact == reg.contact));
                self.bindings.push(reg.clone());
                self.persist(BindingOp::Upsert(reg));
                if fresh {
                    tracing::info!(user = %account.username, %from, contact = %contact_uri, granted, "phone registered");
                }
            }
        }
        // The binding of this REGISTER's Contact with the time granted (in Contact and Expires, so
        // the phone refreshes in time when it asked for more than `MAX_EXPIRES`).
        let now_utc = Utc::now();
        let mut res = Response::to_request(&req, 200, "OK", Some(&random_token()));
        let this = req.common.contact.as_ref().and_then(|c| {
            let contact = c.uri.to_string();
            self.bindings
                .iter()
                .find(|b| b.username == account.username && b.contact == contact)
        });
        if let (Some(b), Some(c)) = (this, &req.common.contact) {
            let left = (b.expires_at - now_utc).num_seconds().max(0);
            let mut params = Params::default();
            params.set("expires", Some(left.to_string()));
            res.common.contact = Some(NameAddr {
                display: None,
                uri: c.uri.clone(),
                params,
            });
            res = res.with_header("Expires", left.to_string());
        }
        self.respond(tx_key, &res, from, now).await;
    }

    fn persist(&self, op: BindingOp) {
        if let Err(e) = self.bindings_tx.try_send(op) {
            self.setup
                .metrics
                .inc("hub_telephony_records_dropped_total", &[]);
            tracing::warn!(error = %e, "registration not saved: the writer is behind");
        }
    }

    /// Sends due trunk REGISTERs.
    pub(super) async fn reg_tick(&mut self, now: Instant) {
        for i in 0..self.trunk_regs.len() {
            let r = &self.trunk_regs[i];
            if r.pending.is_none() && r.next_at <= now {
                self.trunk_regs[i].auth_tried = false;
                self.send_register(i, None, now).await;
            }
        }
    }

    async fn send_register(&mut self, i: usize, auth: Option<Header>, now: Instant) {
        let Some(trunk) = self
            .setup
            .trunks
            .iter()
            .find(|t| t.name == self.trunk_regs[i].trunk)
            .cloned()
        else {
            return;
        };
        let domain = trunk.config.domain();
        let user = trunk.config.username.clone();
        let (Some(aor), Some(reg_uri), Ok(contact_uri)) = (
            outbound::sip_uri(Some(&user), &domain, None),
            outbound::sip_uri(None, &domain, None),
            Uri::parse(&format!(
                "sip:{user}@{}",
                SocketAddr::new(self.media_ip, self.sip_addr.port())
            )),
        ) else {
            self.trunk_regs[i].status = "bad username or domain".into();
            self.trunk_regs[i].next_at = now + REGISTER_RETRY;
            return;
        };
        let r = &mut self.trunk_regs[i];
        r.cseq += 1;
        let mut from = NameAddr {
            display: None,
            uri: aor.clone(),
            params: Params::default(),
        };
        from.params.set("tag", Some(r.tag.clone()));
        let side = DialogSide {
            call_id: r.call_id.clone(),
            from,
            to: NameAddr {
                display: None,
                uri: aor,
                params: Params::default(),
            },
            via_host: self.media_ip.to_string(),
            via_port: self.sip_addr.port(),
            transport: "UDP",
        };
        let branch = outbound::branch(&random_token());
        let mut headers = vec![Header {
            name: "Expires".into(),
            value: trunk.config.register_expires.to_string(),
        }];
        headers.extend(auth);
        let mut req = outbound::request(
            &side,
            Method::Register,
            &reg_uri.to_string(),
            r.cseq,
            branch.clone(),
            headers,
        );
        req.common.contact = Some(NameAddr {
            display: None,
            uri: contact_uri,
            params: Params::default(),
        });
        let bytes = req.to_bytes();
        let key = format!("{branch}|{}", trunk.addr);
        r.pending = Some(key.clone());
        self.send(&bytes, trunk.addr).await;
        self.client_txs
            .insert(key, ClientTx::new(bytes, self.timers, now));
    }

    /// A response to a trunk's REGISTER; false when `res` is not one.
    pub(super) async fn reg_response(&mut self, res: &Response, now: Instant) -> bool {
        let Some(i) = self
            .trunk_regs
            .iter()
            .position(|r| r.call_id == res.common.call_id)
        else {
            return false;
        };
        if res.code < 200 {
            return true;
        }
        self.trunk_regs[i].pending = None;
        let name = self.trunk_regs[i].trunk.clone();
        let trunk = self.setup.trunks.iter().find(|t| t.name == name).cloned();
        match res.code {
            200..=299 => {
                let asked = trunk
                    .as_ref()
                    .map(|t| t.config.register_expires)
                    .unwrap_or(MAX_EXPIRES);
                let granted = res
                    .common
                    .contact
                    .as_ref()
                    .and_then(|c| c.params.get("expires"))
                    .or_else(|| res.header("Expires"))
                    .and_then(|e| e.trim().parse::<u32>().ok())
                    .unwrap_or(asked)
                    .max(MIN_EXPIRES / 2);
                let r = &mut self.trunk_regs[i];
                if r.registered_until.is_none() {
                    tracing::info!(trunk = %name, granted, "registered with the trunk");
                }
                r.status = "registered".into();
                r.registered_until =
                    Some(Utc::now() + chrono::Duration::seconds(i64::from(granted)));
                r.next_at = now + Duration::from_secs(u64::from(granted) * 4 / 5);
            }
            401 | 407 if !self.trunk_regs[i].auth_tried => {
                let (challenge_name, answer_name) = if res.code == 401 {
                    ("WWW-Authenticate", "Authorization")
                } else {
                    ("Proxy-Authenticate", "Proxy-Authorization")
                };
                let creds = trunk.as_ref().and_then(|t| {
                    t.config
                        .credentials()
                        .map(|(u, p)| (u.to_owned(), p.to_owned()))
                });
                let domain = trunk
                    .as_ref()
                    .map(|t| t.config.domain())
                    .unwrap_or_default();
                match (creds, res.header(challenge_name).and_then(Challenge::parse)) {
                    (Some((user, pass)), Some(ch)) => {
                        self.trunk_regs[i].auth_tried = true;
                        let value = ch.answer(
                            &user,
                            &pass,
                            "REGISTER",
                            &format!("sip:{domain}"),
                            &random_token(),
                        );
                        let header = Header {
                            name: answer_name.into(),
                            value,
                        };
                        self.send_register(i, Some(header), now).await;
                    }
                    _ => self.reg_failed(i, format!("refused ({})", res.code), now),
                }
            }
            code => self.reg_failed(i, format!("refused ({code})"), now),
        }
        true
    }

    fn reg_failed(&mut self, i: usize, status: String, now: Instant) {
        let r = &mut self.trunk_regs[i];
        tracing::warn!(trunk = %r.trunk, status = %status, "trunk registration failed; retrying in a minute");
        r.status = status;
        r.registered_until = None;
        r.pending = None;
        r.next_at = now + REGISTER_RETRY;
    }

    /// A trunk REGISTER got no response at all.
    pub(super) fn reg_timed_out(&mut self, tx_key: &str, now: Instant) {
        if let Some(i) = self
            .trunk_regs
            .iter()
            .position(|r| r.pending.as_deref() == Some(tx_key))
        {
            self.reg_failed(i, "no response".into(), now);
        }
    }
}
