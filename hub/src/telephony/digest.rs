//! HTTP digest authentication as SIP uses it (RFC 2617, RFC 7616 with MD5, `qop=auth`): the client side
//! answers a trunk's 401/407 challenge (`Challenge::parse` -> `answer`), the server side challenges
//! phones that REGISTER with the hub (`nonce` -> `Credentials::parse` -> `verify`). Nonces carry their
//! time and a keyed hash, so the registrar keeps no nonce table and tells stale ones from forged ones.

use md5::{Digest, Md5};

/// How long a nonce the hub issued stays fresh.
pub const NONCE_LIFETIME_S: i64 = 300;

/// Lower-case hex MD5 of `data`.
pub fn md5_hex(data: &str) -> String {
    let sum = Md5::digest(data.as_bytes());
    let mut out = String::with_capacity(32);
    for b in sum.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// HA1 = MD5(username:realm:password), what the registrar stores instead of the password.
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}:{realm}:{password}"))
}

/// The response of RFC 2617 3.2.2.1: with `qop=auth` MD5(HA1:nonce:nc:cnonce:auth:HA2), without qop
/// MD5(HA1:nonce:HA2), HA2 = MD5(method:uri).
pub fn response(
    ha1: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// `key=value, key="quoted value", ...` after the scheme of a digest header.
fn params(value: &str) -> Option<Vec<(String, String)>> {
    let rest = value.trim_start();
    let rest = rest
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("digest"))
        .map(|_| &rest[6..])?;
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.peek().copied() {
            if c == '=' || c == ',' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.push(chars.next()?),
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return None;
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.push((key.to_ascii_lowercase(), val));
    }
}

fn find<'a>(ps: &'a [(String, String)], key: &str) -> Option<&'a str> {
    ps.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A `WWW-Authenticate` / `Proxy-Authenticate` digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// `qop=auth` offered (we never use `auth-int`).
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    /// `None` for anything but an MD5 digest challenge we can answer.
    pub fn parse(value: &str) -> Option<Self> {
        let ps = params(value)?;
        let algorithm = find(&ps, "algorithm").unwrap_or("MD5");
        if !algorithm.eq_ignore_ascii_case("MD5") {
            return None;
        }
        let qop = find(&ps, "qop");
        let qop_auth = qop.is_some_and(|q| q.split(',').any(|x| x.trim() == "auth"));
        if qop.is_some() && !qop_auth {
            return None;
        }
        Some(Self {
            realm: find(&ps, "realm")?.to_owned(),
            nonce: find(&ps, "nonce")?.to_owned(),
            opaque: find(&ps, "opaque").map(str::to_owned),
            qop_auth,
            stale: find(&ps, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The `Authorization` value answering this challenge for `method uri`; `cnonce` is random per
    /// answer, `nc` is 1 (each challenge is answered once).
    pub fn answer(
        &self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> String {
        let h1 = ha1(username, &self.realm, password);
        let nc = "00000001";
        let qop = self.qop_auth.then_some((nc, cnonce));
        let resp = response(&h1, &self.nonce, method, uri, qop);
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce)
        );
        if self.qop_auth {
            out.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(o) = &self.opaque {
            out.push_str(&format!(", opaque=\"{}\"", quote(o)));
        }
        out
    }
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// An `Authorization` header's digest credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub qop: Option<(String, String)>,
}

impl Credentials {
    pub fn parse(value: &str) -> Option<Self> {
        let ps = params(value)?;
        let algorithm = find(&ps, "algorithm").unwrap_or("MD5");
        if !algorithm.eq_ignore_ascii_case("MD5") {
            return None;
        }
        let qop = match find(&ps, "qop") {
            Some("auth") => Some((find(&ps, "nc")?.to_owned(), find(&ps, "cnonce")?.to_owned())),
            Some(_) => return None,
            None => None,
        };
        Some(Self {
            username: find(&ps, "username")?.to_owned(),
            realm: find(&ps, "realm")?.to_owned(),
            nonce: find(&ps, "nonce")?.to_owned(),
            uri: find(&ps, "uri")?.to_owned(),
            response: find(&ps, "response")?.to_ascii_lowercase(),
            qop,
        })
    }

    /// Whether the response matches the stored HA1 for `method`.
    pub fn verify(&self, ha1: &str, method: &str) -> bool {
        let qop = self.qop.as_ref().map(|(nc, c)| (nc.as_str(), c.as_str()));
        let expected = response(ha1, &self.nonce, method, &self.uri, qop);
        // Constant time: the comparison must not tell an attacker how many characters matched.
        expected.len() == self.response.len()
            && expected
                .bytes()
                .zip(self.response.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Issues and checks the registrar's nonces: `TIME-MAC`, the time in seconds and a keyed hash of it, so
/// a forged nonce is refused and an old one is `stale` (the phone retries with a new one silently).
#[derive(Debug, Clone)]
pub struct Nonces {
    key: String,
}

/// What a nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    Stale,
    Forged,
}

impl Nonces {
    pub fn new(key: String) -> Self {
        Self { key }
    }

    pub fn issue(&self, now_s: i64) -> String {
        format!("{now_s:x}-{}", self.mac(now_s))
    }

    fn mac(&self, t: i64) -> String {
        md5_hex(&format!("{}:{t}", self.key))
    }

    pub fn check(&self, nonce: &str, now_s: i64) -> NonceCheck {
        let Some((t, mac)) = nonce.split_once('-') else {
            return NonceCheck::Forged;
        };
        let Ok(t) = i64::from_str_radix(t, 16) else {
            return NonceCheck::Forged;
        };
        if self.mac(t) != mac {
            return NonceCheck::Forged;
        }
        if now_s - t > NONCE_LIFETIME_S || t > now_s + 5 {
            NonceCheck::Stale
        } else {
            NonceCheck::Fresh
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 section 3.5.
    #[test]
    fn the_rfc_2617_example() {
        let h1 = ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        let r = response(
            &h1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "GET",
            "/dir/index.html",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        let header = r#"Digest username="Mufasa", realm="testrealm@host.com",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth,
            nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1",
            opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(header).unwrap();
        assert!(c.verify(&h1, "GET"));
        assert!(!c.verify(&ha1("Mufasa", "testrealm@host.com", "wrong"), "GET"));
        assert!(!c.verify(&h1, "POST"));
    }

    #[test]
    fn a_challenge_is_answered_so_that_the_server_accepts_it() {
        let ch = Challenge::parse(
            r#"Digest realm="sip.example.net", nonce="abc", qop="auth,auth-int", opaque="xyz", algorithm=MD5"#,
        )
        .unwrap();
        assert!(ch.qop_auth && !ch.stale);
        let auth = ch.answer(
            "alice",
            "s3cr\"et",
            "INVITE",
            "sip:+7900@sip.example.net",
            "c1",
        );
        assert!(
            auth.contains("opaque=\"xyz\"") && auth.contains("nc=00000001"),
            "{auth}"
        );
        let c = Credentials::parse(&auth).unwrap();
        assert_eq!(c.uri, "sip:+7900@sip.example.net");
        assert!(c.verify(&ha1("alice", "sip.example.net", "s3cr\"et"), "INVITE"));
        // Without qop (RFC 2069 style).
        let ch = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        let c = Credentials::parse(&ch.answer("u", "p", "REGISTER", "sip:r", "x")).unwrap();
        assert_eq!(c.qop, None);
        assert!(c.verify(&ha1("u", "r", "p"), "REGISTER"));
    }

    #[test]
    fn bad_headers_are_refused() {
        for h in [
            "Basic realm=\"x\"",
            "Digest realm=\"x\"",
            "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-256",
            "Digest realm=\"x, nonce=\"n\"",
            "Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\"",
            "",
        ] {
            assert_eq!(Challenge::parse(h), None, "{h}");
        }
        assert_eq!(Credentials::parse("Digest username=\"u\""), None);
    }

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let n = Nonces::new("key".into());
        let nonce = n.issue(1000);
        assert_eq!(n.check(&nonce, 1010), NonceCheck::Fresh);
        assert_eq!(
            n.check(&nonce, 1000 + NONCE_LIFETIME_S + 1),
            NonceCheck::Stale
        );
        assert_eq!(
            Nonces::new("other".into()).check(&nonce, 1010),
            NonceCheck::Forged
        );
        assert_eq!(n.check("3e8-00", 1010), NonceCheck::Forged);
        assert_eq!(n.check("junk", 1010), NonceCheck::Forged);
    }
}
