//! SIP messages at the edge of the telephony core: the transport hands every datagram to `parse`, which
//! either returns a validated `Message` (the headers the core relies on already typed) or a `SipError`;
//! the core builds its answers with `Response::to_request` and writes them with `to_bytes`.

use std::fmt::{self, Write as _};

/// Everything that can be wrong with a SIP message, from the wire or from the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    #[error("empty message")]
    Empty,
    #[error("no end of headers (CRLF CRLF)")]
    NoHeaderEnd,
    #[error("headers are not UTF-8")]
    NotUtf8,
    #[error("start line `{0}`: malformed")]
    StartLine(String),
    #[error("request-uri `{0}`: malformed")]
    RequestUri(String),
    #[error("version `{0}`: only SIP/2.0 is spoken")]
    Version(String),
    #[error("status code `{0}`: must be 100-699")]
    StatusCode(String),
    #[error("header line `{0}`: malformed")]
    HeaderLine(String),
    #[error("header {name}: {reason}")]
    Header { name: &'static str, reason: String },
    #[error("header {0}: missing")]
    Missing(&'static str),
    #[error("header {0}: appears more than once")]
    Duplicate(&'static str),
    #[error("body: Content-Length {declared} but {available} bytes follow")]
    Truncated { declared: usize, available: usize },
    #[error("CSeq method {cseq} does not match request method {method}")]
    CSeqMismatch { cseq: String, method: String },
    #[error("sdp: {0}")]
    Sdp(String),
}

fn bad(name: &'static str, reason: impl Into<String>) -> SipError {
    SipError::Header {
        name,
        reason: reason.into(),
    }
}

/// A request method; unknown ones are kept (they are answered 501).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Register,
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Result<Self, SipError> {
        if s.is_empty() || !s.chars().all(is_token_char) {
            return Err(SipError::StartLine(format!("method `{s}`")));
        }
        Ok(match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "INFO" => Method::Info,
            "REGISTER" => Method::Register,
            other => Method::Other(other.to_owned()),
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Register => "REGISTER",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RFC 3261 token characters.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// A URI. `sip:`/`sips:` URIs are split into parts; other schemes keep only their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: String,
    /// Percent-decoded user part.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    pub has_headers: bool,
    raw: String,
}

impl Uri {
    pub fn parse(raw: &str) -> Result<Self, SipError> {
        let (scheme, rest) = raw
            .split_once(':')
            .ok_or_else(|| SipError::RequestUri(raw.to_owned()))?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok
            || raw
                .chars()
                .any(|c| c.is_whitespace() || c == '<' || c == '>')
        {
            return Err(SipError::RequestUri(raw.to_owned()));
        }
        let scheme_lc = scheme.to_ascii_lowercase();
        let mut uri = Uri {
            scheme: scheme_lc.clone(),
            user: None,
            host: String::new(),
            port: None,
            params: Vec::new(),
            has_headers: false,
            raw: raw.to_owned(),
        };
        if scheme_lc != "sip" && scheme_lc != "sips" {
            return Ok(uri);
        }
        let (userinfo, hostpart) = match rest.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        if let Some(ui) = userinfo {
            let user = ui.split(':').next().unwrap_or("");
            if user.is_empty() {
                return Err(SipError::RequestUri(raw.to_owned()));
            }
            uri.user =
                Some(percent_decode(user).ok_or_else(|| SipError::RequestUri(raw.to_owned()))?);
        }
        let end = hostpart.find([';', '?']).unwrap_or(hostpart.len());
        let (hostport, tail) = hostpart.split_at(end);
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| SipError::RequestUri(raw.to_owned()))?;
        uri.host = host.to_owned();
        uri.port = port;
        let (params, headers) = match tail.find('?') {
            Some(q) => (&tail[..q], Some(&tail[q + 1..])),
            None => (tail, None),
        };
        uri.has_headers = headers.is_some();
        for p in params.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v.to_owned())),
                None => (p, None),
            };
            uri.params.push((k.to_ascii_lowercase(), v));
        }
        Ok(uri)
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// `host[:port]`, host a name, IPv4 or `[IPv6]`.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']')?;
        let rest = &s[close + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&s[..=close], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
    if !host_ok {
        return None;
    }
    let port = match port {
        Some(p) if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) => {
            return None;
        }
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host, port))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Header parameters (`;tag=x;lr`), names lower-cased, values unquoted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    pub fn set(&mut self, name: &str, value: Option<String>) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.0 {
            match v {
                Some(v) if v.chars().all(|c| is_token_char(c) || ":[].".contains(c)) => {
                    write!(f, ";{k}={v}")?
                }
                Some(v) => write!(
                    f,
                    ";{k}=\"{}\"",
                    v.replace('\\', "\\\\").replace('"', "\\\"")
                )?,
                None => write!(f, ";{k}")?,
            }
        }
        Ok(())
    }
}

/// A small cursor over a header value that knows LWS, quoted strings and `<...>`.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }
    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }
    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.s.len()
    }
    fn token(&mut self) -> &'a str {
        self.skip_ws();
        let r = self.rest();
        let n = r.find(|c: char| !is_token_char(c)).unwrap_or(r.len());
        self.pos += n;
        &r[..n]
    }
    /// A quoted string starting at the cursor (after LWS); returns the unescaped content.
    fn quoted(&mut self, name: &'static str) -> Result<String, SipError> {
        self.skip_ws();
        let mut chars = self.rest().char_indices();
        if !matches!(chars.next(), Some((_, '"'))) {
            return Err(bad(name, "expected a quoted string"));
        }
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                c => out.push(c),
            }
        }
        Err(bad(name, "unterminated quoted string"))
    }
    /// `*(; name [= value])` up to the end (or a top-level comma, which is an error here).
    fn params(&mut self, name: &'static str) -> Result<Params, SipError> {
        let mut out = Params::default();
        while !self.at_end() {
            if !self.eat(';') {
                return Err(bad(name, format!("unexpected `{}`", self.rest())));
            }
            let key = self.token();
            if key.is_empty() {
                return Err(bad(name, "empty parameter name"));
            }
            let value = if self.eat('=') {
                self.skip_ws();
                if self.rest().starts_with('"') {
                    Some(self.quoted(name)?)
                } else {
                    let r = self.rest();
                    let n = r
                        .find(|c: char| c == ';' || c == ',' || c.is_whitespace())
                        .unwrap_or(r.len());
                    if n == 0 {
                        return Err(bad(name, format!("parameter {key}: empty value")));
                    }
                    self.pos += n;
                    Some(r[..n].to_owned())
                }
            } else {
                None
            };
            out.0.push((key.to_ascii_lowercase(), value));
        }
        Ok(out)
    }
}

/// Splits a header value at commas that are outside quotes and `<...>`.
fn split_commas(s: &str) -> Result<Vec<&str>, &'static str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut angle, mut escape) = (0, false, false, false);
    for (i, c) in s.char_indices() {
        if escape {
            escape = false;
            continue;
        }
        match c {
            '\\' if quoted => escape = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("unterminated quoted string");
    }
    if angle {
        return Err("unclosed `<`");
    }
    out.push(&s[start..]);
    Ok(out)
}

/// `"Display" <uri>;params` or `uri;params` (From, To, Contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    fn parse(name: &'static str, value: &str) -> Result<Self, SipError> {
        let mut c = Cursor::new(value);
        c.skip_ws();
        let display = if c.rest().starts_with('"') {
            let d = c.quoted(name)?;
            c.skip_ws();
            if !c.rest().starts_with('<') {
                return Err(bad(name, "a quoted display name must be followed by <uri>"));
            }
            Some(d)
        } else {
            match c.rest().find('<') {
                Some(lt) if !c.rest()[..lt].contains([';', '"']) => {
                    let words = c.rest()[..lt].trim();
                    if !words
                        .split_whitespace()
                        .all(|w| w.chars().all(is_token_char))
                    {
                        return Err(bad(name, "display name is not tokens or a quoted string"));
                    }
                    c.pos += lt;
                    (!words.is_empty()).then(|| words.to_owned())
                }
                _ => None,
            }
        };
        let uri_text = if c.eat('<') {
            let r = c.rest();
            let gt = r.find('>').ok_or_else(|| bad(name, "unclosed `<`"))?;
            c.pos += gt + 1;
            &r[..gt]
        } else {
            // addr-spec: parameters after the URI belong to the header.
            c.skip_ws();
            let r = c.rest();
            let n = r.find([';', ' ', '\t']).unwrap_or(r.len());
            c.pos += n;
            &r[..n]
        };
        let uri =
            Uri::parse(uri_text.trim()).map_err(|_| bad(name, format!("uri `{uri_text}`")))?;
        let params = c.params(name)?;
        Ok(NameAddr {
            display,
            uri,
            params,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag")
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "\"{}\" ", d.replace('\\', "\\\\").replace('"', "\\\""))?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

/// One Via value: transport, sent-by and parameters (branch, received, rport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

/// RFC 3261 branches start with this magic cookie.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

impl Via {
    fn parse(value: &str) -> Result<Self, SipError> {
        let mut c = Cursor::new(value);
        let proto = c.token();
        let slash1 = c.eat('/');
        let version = c.token();
        let slash2 = c.eat('/');
        let transport = c.token();
        if !proto.eq_ignore_ascii_case("SIP")
            || !slash1
            || version != "2.0"
            || !slash2
            || transport.is_empty()
        {
            return Err(bad("Via", format!("`{value}`: expected SIP/2.0/TRANSPORT")));
        }
        c.skip_ws();
        let r = c.rest();
        let n = r.find([';', ' ', '\t']).unwrap_or(r.len());
        let hostport = &r[..n];
        c.pos += n;
        // LWS is allowed around the port colon.
        let (host, port) = split_host_port(&hostport.replace(' ', ""))
            .map(|(h, p)| (h.to_owned(), p))
            .ok_or_else(|| bad("Via", format!("sent-by `{hostport}`")))?;
        let params = c.params("Via")?;
        if let Some(rport) = params.get("rport")
            && rport.parse::<u16>().is_err()
        {
            return Err(bad("Via", format!("rport `{rport}`")));
        }
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch")
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

/// `CSeq: 1 INVITE`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    fn parse(value: &str) -> Result<Self, SipError> {
        let mut parts = value.split_whitespace();
        let (Some(n), Some(m), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("CSeq", format!("`{value}`: expected NUMBER METHOD")));
        };
        let seq = parse_int(n, 1u64 << 31).ok_or_else(|| bad("CSeq", format!("number `{n}`")))?;
        Ok(CSeq {
            seq: seq as u32,
            method: Method::parse(m).map_err(|_| bad("CSeq", format!("method `{m}`")))?,
        })
    }
}

/// Decimal digits (leading zeros allowed) below `limit`.
fn parse_int(s: &str, limit: u64) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 19 {
        return None;
    }
    let v: u64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (v < limit).then_some(v)
}

/// A header as received (name in its long canonical form, value unfolded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Long form of a compact header name, and the canonical spelling of the ones the core uses.
fn canonical(name: &str) -> String {
    let lc = name.to_ascii_lowercase();
    let known = match lc.as_str() {
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "e" | "content-encoding" => "Content-Encoding",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "f" | "from" => "From",
        "s" | "subject" => "Subject",
        "k" | "supported" => "Supported",
        "t" | "to" => "To",
        "v" | "via" => "Via",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        "route" => "Route",
        "record-route" => "Record-Route",
        "allow" => "Allow",
        _ => return name.to_owned(),
    };
    known.to_owned()
}

/// The headers every request and response must have, typed once at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub via: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
    pub max_forwards: Option<u8>,
    pub contact: Option<NameAddr>,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub common: Common,
    /// All headers in order, including those also in `common`.
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub common: Common,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Parses one datagram. Octets after `Content-Length` are ignored (RFC 3261 18.3 over UDP); without
/// `Content-Length` the body runs to the end of the datagram.
pub fn parse(data: &[u8]) -> Result<Message, SipError> {
    // CRLFs before the start line are allowed (RFC 3261 7.5); a datagram of only them is a keep-alive.
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .ok_or(SipError::Empty)?;
    let data = &data[start..];
    let head_end = find(data, b"\r\n\r\n").ok_or(SipError::NoHeaderEnd)?;
    let head = std::str::from_utf8(&data[..head_end]).map_err(|_| SipError::NotUtf8)?;
    let rest = &data[head_end + 4..];

    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or("");
    let mut raw_headers: Vec<String> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = raw_headers
                .last_mut()
                .ok_or_else(|| SipError::HeaderLine(line.to_owned()))?;
            last.push(' ');
            last.push_str(line.trim());
        } else {
            raw_headers.push(line.to_owned());
        }
    }
    let mut headers = Vec::with_capacity(raw_headers.len());
    for line in raw_headers {
        if line.contains(['\r', '\n']) {
            return Err(SipError::HeaderLine(line));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| SipError::HeaderLine(line.clone()))?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.chars().all(is_token_char) {
            return Err(SipError::HeaderLine(line.clone()));
        }
        headers.push(Header {
            name: canonical(name),
            value: value.trim().to_owned(),
        });
    }

    let common = common(&headers)?;
    let body = body(&headers, rest)?;

    if let Some(rest) = start_line.strip_prefix("SIP/") {
        let mut parts = start_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if version != "SIP/2.0" {
            return Err(SipError::Version(format!(
                "SIP/{}",
                rest.split(' ').next().unwrap_or("")
            )));
        }
        let code = parts.next().unwrap_or("");
        let reason = parts.next().unwrap_or("");
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SipError::StatusCode(code.to_owned()));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| SipError::StatusCode(code.to_owned()))?;
        if !(100..=699).contains(&code) {
            return Err(SipError::StatusCode(code.to_string()));
        }
        return Ok(Message::Response(Response {
            code,
            reason: reason.to_owned(),
            common,
            headers,
            body,
        }));
    }

    let parts: Vec<&str> = start_line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(SipError::StartLine(start_line.to_owned()));
    };
    let method = Method::parse(method)?;
    if version != "SIP/2.0" {
        return Err(SipError::Version(version.to_owned()));
    }
    let uri = Uri::parse(uri)?;
    if uri.has_headers {
        return Err(SipError::RequestUri(format!(
            "{uri}: headers are not allowed here"
        )));
    }
    if common.cseq.method != method {
        return Err(SipError::CSeqMismatch {
            cseq: common.cseq.method.to_string(),
            method: method.to_string(),
        });
    }
    Ok(Message::Request(Request {
        method,
        uri,
        common,
        headers,
        body,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn single<'a>(headers: &'a [Header], name: &'static str) -> Result<Option<&'a str>, SipError> {
    let mut found = headers.iter().filter(|h| h.name == name);
    let first = found.next().map(|h| h.value.as_str());
    if found.next().is_some() {
        return Err(SipError::Duplicate(name));
    }
    Ok(first)
}

fn common(headers: &[Header]) -> Result<Common, SipError> {
    let mut via = Vec::new();
    for h in headers.iter().filter(|h| h.name == "Via") {
        for v in split_commas(&h.value).map_err(|r| bad("Via", r))? {
            via.push(Via::parse(v)?);
        }
    }
    if via.is_empty() {
        return Err(SipError::Missing("Via"));
    }
    let from = NameAddr::parse(
        "From",
        single(headers, "From")?.ok_or(SipError::Missing("From"))?,
    )?;
    let to = NameAddr::parse("To", single(headers, "To")?.ok_or(SipError::Missing("To"))?)?;
    let call_id = single(headers, "Call-ID")?.ok_or(SipError::Missing("Call-ID"))?;
    if call_id.is_empty() || call_id.contains(char::is_whitespace) {
        return Err(bad("Call-ID", format!("`{call_id}`")));
    }
    let cseq = CSeq::parse(single(headers, "CSeq")?.ok_or(SipError::Missing("CSeq"))?)?;
    let max_forwards = match single(headers, "Max-Forwards")? {
        Some(v) => {
            Some(parse_int(v, 256).ok_or_else(|| bad("Max-Forwards", format!("`{v}`")))? as u8)
        }
        None => None,
    };
    let contact = match headers.iter().find(|h| h.name == "Contact") {
        Some(h) if h.value.trim() == "*" => None,
        Some(h) => {
            let first = split_commas(&h.value).map_err(|r| bad("Contact", r))?;
            Some(NameAddr::parse(
                "Contact",
                first.first().copied().unwrap_or(""),
            )?)
        }
        None => None,
    };
    let content_type = single(headers, "Content-Type")?.map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect::<String>()
            .to_ascii_lowercase()
    });
    Ok(Common {
        via,
        from,
        to,
        call_id: call_id.to_owned(),
        cseq,
        max_forwards,
        contact,
        content_type,
    })
}

fn body(headers: &[Header], rest: &[u8]) -> Result<Vec<u8>, SipError> {
    let Some(cl) = single(headers, "Content-Length")? else {
        return Ok(rest.to_vec());
    };
    let declared =
        parse_int(cl, 1 << 24).ok_or_else(|| bad("Content-Length", format!("`{cl}`")))? as usize;
    if declared > rest.len() {
        return Err(SipError::Truncated {
            declared,
            available: rest.len(),
        });
    }
    Ok(rest[..declared].to_vec())
}

/// Every value of a header that may be repeated or comma-separated (Record-Route, Contact), in order.
pub fn header_values<'a>(headers: &'a [Header], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| split_commas(&h.value).unwrap_or_default())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

impl Request {
    /// The first value of a header by (canonical) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The transaction key of RFC 3261 17.2.3: the top Via's branch and sent-by, with the method (ACK
    /// and CANCEL match their INVITE by the branch; the caller tells them apart). Old RFC 2543 clients
    /// without a magic-cookie branch are keyed by Call-ID, CSeq and From tag.
    pub fn branch_key(&self) -> String {
        let top = &self.common.via[0];
        match top.branch() {
            Some(b) if b.starts_with(BRANCH_COOKIE) => {
                format!("{b}|{}:{}", top.host, top.port.unwrap_or(5060))
            }
            _ => format!(
                "2543|{}|{}|{}",
                self.common.call_id,
                self.common.cseq.seq,
                self.common.from.tag().unwrap_or("")
            ),
        }
    }
}

impl Response {
    /// A response to `req` (RFC 3261 8.2.6): Via, From, To, Call-ID and CSeq copied; `to_tag` added to
    /// To unless it already has one.
    pub fn to_request(req: &Request, code: u16, reason: &str, to_tag: Option<&str>) -> Response {
        let mut common = req.common.clone();
        common.contact = None;
        common.content_type = None;
        if common.to.tag().is_none()
            && let Some(tag) = to_tag
            && code > 100
        {
            common.to.params.set("tag", Some(tag.to_owned()));
        }
        Response {
            code,
            reason: reason.to_owned(),
            common,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    pub fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.common.content_type = Some(content_type.to_owned());
        self.body = body;
        self
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.common.to.tag()
    }

    /// The first value of a header by (canonical) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Wire form. `headers` holds only the extra headers here; the common ones come from `common`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("SIP/2.0 {} {}\r\n", self.code, self.reason);
        write_common(&mut s, &self.common, &self.headers, &self.body);
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A request the core originates (BYE), written straight to the wire.
#[derive(Debug, Clone)]
pub struct OutRequest {
    pub method: Method,
    pub uri: String,
    pub common: Common,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

impl OutRequest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        write_common(&mut s, &self.common, &self.headers, &self.body);
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Headers written from `Common`; copies of them among the extra headers are skipped.
const TYPED: [&str; 9] = [
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Contact",
    "Content-Type",
    "Content-Length",
];

fn write_common(s: &mut String, c: &Common, extra: &[Header], body: &[u8]) {
    for v in &c.via {
        let _ = write!(s, "Via: {v}\r\n");
    }
    if let Some(mf) = c.max_forwards {
        let _ = write!(s, "Max-Forwards: {mf}\r\n");
    }
    let _ = write!(
        s,
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n",
        c.from, c.to, c.call_id, c.cseq.seq, c.cseq.method
    );
    if let Some(contact) = &c.contact {
        let _ = write!(s, "Contact: {contact}\r\n");
    }
    for h in extra.iter().filter(|h| !TYPED.contains(&h.name.as_str())) {
        let _ = write!(s, "{}: {}\r\n", h.name, h.value);
    }
    if let Some(ct) = &c.content_type {
        let _ = write!(s, "Content-Type: {ct}\r\n");
    }
    let _ = write!(s, "Content-Length: {}\r\n\r\n", body.len());
}

impl Request {
    /// Wire form of a parsed request (for tests and logs): the common headers re-serialized, the others
    /// as received.
    pub fn to_bytes(&self) -> Vec<u8> {
        OutRequest {
            method: self.method.clone(),
            uri: self.uri.to_string(),
            common: self.common.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
        .to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test messages are written with `\n`; the wire has CRLF in the head.
    fn wire(text: &str) -> Vec<u8> {
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let mut out = head.replace('\n', "\r\n").into_bytes();
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.replace('\n', "\r\n").as_bytes());
        out
    }

    fn req(text: &str) -> Request {
        match parse(&wire(text)) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    const INVITE: &str = "INVITE sip:ivr@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-0;rport
From: \"Иван\" <sip:+79161234567@127.0.0.1:5061>;tag=abc
To: <sip:ivr@127.0.0.1:5060>
Call-ID: 1-123@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:sipp@127.0.0.1:5061>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: 5

v=0
";

    #[test]
    fn parses_an_invite() {
        let r = req(INVITE);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri.user.as_deref(), Some("ivr"));
        assert_eq!(r.uri.port, Some(5060));
        let c = &r.common;
        assert_eq!(c.via[0].branch(), Some("z9hG4bK-1-0"));
        assert!(c.via[0].params.has("rport"));
        assert_eq!(c.from.display.as_deref(), Some("Иван"));
        assert_eq!(c.from.uri.user.as_deref(), Some("+79161234567"));
        assert_eq!(c.from.tag(), Some("abc"));
        assert_eq!(c.to.tag(), None);
        assert_eq!(
            c.cseq,
            CSeq {
                seq: 1,
                method: Method::Invite
            }
        );
        assert_eq!(c.max_forwards, Some(70));
        assert_eq!(c.content_type.as_deref(), Some("application/sdp"));
        assert_eq!(r.body, b"v=0\r\n");
    }

    #[test]
    fn compact_forms_and_folding() {
        let r = req("OPTIONS sip:x@h SIP/2.0
v: SIP/2.0/UDP h;branch=z9hG4bKa
f: <sip:a@h>;tag=1
t: sip:x@h
i: cid
CSeq: 7
 OPTIONS
l: 0

");
        assert_eq!(r.common.call_id, "cid");
        assert_eq!(r.common.cseq.seq, 7);
        assert_eq!(r.common.to.uri.user.as_deref(), Some("x"));
    }

    #[test]
    fn a_response_round_trips() {
        let r = req(INVITE);
        let res = Response::to_request(&r, 180, "Ringing", Some("hub1"));
        let bytes = res.to_bytes();
        let Ok(Message::Response(back)) = parse(&bytes) else {
            panic!("{}", String::from_utf8_lossy(&bytes))
        };
        assert_eq!(back.code, 180);
        assert_eq!(back.common.to.tag(), Some("hub1"));
        assert_eq!(back.common.via, r.common.via);
        assert_eq!(back.common.from, r.common.from);
        assert_eq!(back.common.call_id, r.common.call_id);
        // A request round-trips too (the typed headers come first on the wire).
        let Ok(Message::Request(again)) = parse(&r.to_bytes()) else {
            panic!()
        };
        assert_eq!(
            (&again.method, &again.uri, &again.common, &again.body),
            (&r.method, &r.uri, &r.common, &r.body)
        );
    }

    /// RFC 4475 section 3.1.1: well-formed messages that must parse.
    const VALID: &[(&str, &str)] = &[
        ("wsinv", "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
"),
        ("intmeth", "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~
To: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7F\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>
From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"работающий\";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:\u{feff}大停電
Content-Length: 0

"),
        ("esc01", "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 0

"),
        ("lwsdisp", "OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

"),
        ("semiuri", "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

"),
        ("transports", "OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

"),
        ("unreason", "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 0
Contact: <sip:user@host198.example.com>

"),
        ("noreason", "SIP/2.0 100 
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

"),
        ("zeromf", "OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=3ghsd41
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw2349i
Max-Forwards: 0
Content-Length: 0

"),
        ("inv2543", "INVITE sip:UserB@example.com SIP/2.0
Via: SIP/2.0/UDP iftgw.example.com
From: <sip:+13035551111@ift.client.example.net;user=phone>
Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>
To: sip:+16505552222@ss1.example.net;user=phone
Call-ID: inv2543.1717@ift.client.example.com
CSeq: 56 INVITE
Content-Type: application/sdp

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.5
s=-
c=IN IP4 192.0.2.5
t=0 0
m=audio 49217 RTP/AVP 0
"),
        ("dblreq", "REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
"),
        ("novelsc", "OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234
Content-Length: 0

"),
    ];

    /// RFC 4475 section 3.1.2 (and 3.3): messages that must be rejected.
    const INVALID: &[(&str, &str)] = &[
        (
            "clerr",
            "INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.155
",
        ),
        (
            "scalar02",
            "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Contact: <sip:user@host129.example.com>
Content-Length: 0

",
        ),
        (
            "scalarlg",
            "SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture \"In Progress\"
Content-Length: 0

",
        ),
        (
            "ncl",
            "INVITE sip:user@example.com SIP/2.0
Max-Forwards: 254
To: sip:j.user@example.com
From: sip:caller@example.net;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw
Contact: <sip:caller@example53.example.net>
Content-Type: application/sdp
Content-Length: -999

v=0
",
        ),
        (
            "quotbal",
            "INVITE sip:user@example.com SIP/2.0
To: \"Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Length: 0

",
        ),
        (
            "ltgtruri",
            "INVITE <sip:user@example.com> SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.5
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.5
Content-Length: 0

",
        ),
        (
            "lwsruri",
            "INVITE sip:user@example.com; lr SIP/2.0
To: sip:user@example.com;tag=3xfe-9921883-z9f
From: sip:caller@example.net;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw2395
Content-Length: 0

",
        ),
        (
            "lwsstart",
            "INVITE  sip:user@example.com  SIP/2.0
Max-Forwards: 8
To: sip:user@example.com
From: sip:caller@example.net;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@example.com
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP host1.example.com;branch=z9hG4bKkdjuw3923
Content-Length: 0

",
        ),
        (
            "trws",
            "OPTIONS sip:remote-target@example.com SIP/2.0  
Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK299342093
To: <sip:remote-target@example.com>
From: <sip:local-resource@example.com>;tag=329429089
Call-ID: trws.oicu34958239neffasdhr2345r
CSeq: 238923 OPTIONS
Max-Forwards: 70
Content-Length: 0

",
        ),
        (
            "escruri",
            "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0
To: sip:user@example.com
From: sip:caller@example.net;tag=341518
Max-Forwards: 7
Contact: <sip:caller@host39923.example.net>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP host-of-the-hour.example.com;branch=z9hG4bKkdjuw
Content-Length: 0

",
        ),
        (
            "badvers",
            "OPTIONS sip:t.watson@example.org SIP/7.0
Via:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw
Max-Forwards:     70
From:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe
To:      T. Watson <sip:t.watson@example.org>
Call-ID: badvers.31417@c.example.com
CSeq:    1 OPTIONS
l: 0

",
        ),
        (
            "mismatch01",
            "OPTIONS sip:user@example.com SIP/2.0
To: sip:j.user@example.com
From: sip:caller@example.net;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw
l: 0

",
        ),
        (
            "bigcode",
            "SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@host105.example.com>

",
        ),
        (
            "insuf",
            "INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 0

",
        ),
        (
            "multi01",
            "INVITE sip:user@company.com SIP/2.0
Contact: <sip:caller@host25.example.net>
Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw
Max-Forwards: 70
CSeq: 5 INVITE
Call-ID: multi01.98asdh@192.0.2.1
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:caller@example.com;tag=3413415
To: sip:user@example.com
To: sip:other@example.net
From: sip:caller@example.net;tag=2923420123
Content-Length: 0

",
        ),
        (
            "mcl01",
            "OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
",
        ),
    ];

    #[test]
    fn rfc4475_valid_messages_parse() {
        for (name, text) in VALID {
            if let Err(e) = parse(&wire(text)) {
                panic!("{name}: {e}");
            }
        }
        let Ok(Message::Request(wsinv)) = parse(&wire(VALID[0].1)) else {
            panic!()
        };
        assert_eq!(wsinv.common.via.len(), 3);
        assert_eq!(wsinv.common.via[1].transport, "TCP");
        assert_eq!(wsinv.common.via[2].branch(), Some("z9hG4bK30239"));
        assert_eq!(wsinv.common.to.tag(), Some("1918181833n"));
        assert_eq!(wsinv.common.from.tag(), Some("98asjd8"));
        assert_eq!(
            wsinv.common.from.display.as_deref(),
            Some("J Rosenberg \\\"")
        );
        assert_eq!(wsinv.common.max_forwards, Some(68));
        assert_eq!(wsinv.common.cseq.seq, 9);
        assert_eq!(wsinv.body.len(), 150);
        let contact = wsinv.common.contact.unwrap();
        assert_eq!(contact.params.get("newparam"), Some("newvalue"));
        assert_eq!(contact.params.get("q"), Some("0.33"));
        let Ok(Message::Request(esc)) = parse(&wire(VALID[2].1)) else {
            panic!()
        };
        assert_eq!(esc.uri.user.as_deref(), Some("sips:user@example.com"));
        assert_eq!(esc.common.from.uri.user.as_deref(), Some("I have spaces"));
    }

    #[test]
    fn rfc4475_invalid_messages_are_rejected() {
        for (name, text) in INVALID {
            let r = parse(&wire(text));
            assert!(r.is_err(), "{name} parsed: {r:?}");
        }
    }

    /// A tiny deterministic generator: no dependency for a few thousand cases.
    pub(crate) struct XorShift(pub u64);
    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let seeds: Vec<Vec<u8>> = VALID
            .iter()
            .chain(INVALID)
            .map(|(_, t)| wire(t))
            .chain([wire(INVITE)])
            .collect();
        let mut parsed = 0;
        for i in 0..5000 {
            let mut data = if i % 5 == 0 {
                (0..rng.below(300)).map(|_| rng.next() as u8).collect()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..rng.below(8) + 1 {
                if data.is_empty() {
                    break;
                }
                let at = rng.below(data.len());
                match rng.below(5) {
                    0 => data[at] = rng.next() as u8,
                    1 => {
                        data.remove(at);
                    }
                    2 => data.insert(at, b"\r\n:;<>\", @%\t"[rng.below(12)]),
                    3 => data.truncate(at),
                    _ => {
                        let end = (at + rng.below(40)).min(data.len());
                        let chunk = data[at..end].to_vec();
                        let to = rng.below(data.len());
                        data.splice(to..to, chunk);
                    }
                }
            }
            if let Ok(m) = parse(&data) {
                parsed += 1;
                // What parses must also serialize and parse again.
                let (bytes, common) = match &m {
                    Message::Request(r) => (r.to_bytes(), &r.common),
                    Message::Response(r) => (r.to_bytes(), &r.common),
                };
                let again = match parse(&bytes) {
                    Ok(Message::Request(r)) => r.common,
                    Ok(Message::Response(r)) => r.common,
                    Err(e) => panic!("{e}: {}", String::from_utf8_lossy(&bytes)),
                };
                assert_eq!(&again.call_id, &common.call_id);
                assert_eq!(&again.cseq, &common.cseq);
                assert_eq!(again.via.len(), common.via.len());
            }
        }
        assert!(
            parsed > 100,
            "mutations too destructive to be useful: {parsed}"
        );
    }
}
