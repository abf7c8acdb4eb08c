//! `spawn_hub()`: the real `hub` binary on a fresh database and a free port, driven over HTTP and
//! its command line, as an operator would.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const HUB: &str = env!("CARGO_BIN_EXE_hub");

/// How long a hub may take to start listening (migrations, demo data on a slow debug build).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a hub may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Any single HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables the hub reads that must not leak from the developer's shell into a test.
const HUB_ENV: &[&str] = &[
    "HUB_CONFIG",
    "HUB_LOG",
    "HUB_DATABASE_URL",
    "HUB_HTTP_LISTEN",
    "HUB_MQTT_LISTEN",
];

/// A temporary directory with a `hub.toml` that points at a fresh database. Outlives the hub
/// processes started from it, so a test can restart the hub on the same data.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = hub::testing::fresh_database_url(dir.path()).await;
        let config = dir.path().join("hub.toml");
        let toml = format!(
            "[database]\nurl = \"{url}\"\nmax_connections = 4\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[mqtt_broker]\nlisten = \"127.0.0.1:0\"\n\n[telephony]\nlisten = \"127.0.0.1:0\"\nprompts_dir = \"prompts\"\n"
        );
        std::fs::write(&config, toml).expect("write hub.toml");
        TestEnv { dir, config }
    }

    /// Appends TOML (connectors, other sections) to the test's `hub.toml`.
    pub fn add_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).expect("read hub.toml");
        text.push('\n');
        text.push_str(toml);
        std::fs::write(&self.config, text).expect("write hub.toml");
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `hub ARGS --config hub.toml`, run in the test's directory (so relative file names stay short).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(HUB);
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        for var in HUB_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs a CLI command to completion.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_stdin(args, None).await
    }

    pub async fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CliOutput {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.command(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn hub");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.expect("write stdin");
        }
        let out = tokio::time::timeout(START_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("hub {args:?} did not finish"))
            .expect("wait for hub");
        CliOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `hub user add NAME --role ROLE --password-stdin`.
    pub async fn add_user(&self, name: &str, role: &str, password: &str) {
        let out = self
            .cli_with_stdin(
                &["user", "add", name, "--role", role, "--password-stdin"],
                Some(&format!("{password}\n")),
            )
            .await;
        assert!(out.status.success(), "hub user add {name}: {out}");
        assert!(
            out.stdout
                .contains(&format!("created user `{name}` ({role})")),
            "{out}"
        );
    }

    /// Several users at once (password hashing is slow in a debug build): `(name, role)`, each with
    /// the password `password_of(name)`.
    pub async fn add_users(&self, users: &[(&str, &str)]) {
        // The first one creates the database schema; the others then run side by side.
        let Some(((first, role), rest)) = users.split_first() else {
            return;
        };
        self.add_user(first, role, &password_of(first)).await;
        let others = rest
            .iter()
            .map(|(name, role)| async move { self.add_user(name, role, &password_of(name)).await });
        futures::future::join_all(others).await;
    }

    /// Starts `hub serve` (with `--demo` if asked) and waits until it listens.
    pub async fn start(&self, demo: bool) -> Hub {
        let log_path = self.path("hub.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open hub.log");
        let mut args = vec!["serve"];
        if demo {
            args.push("--demo");
        }
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn hub serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let waited = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("read hub stdout") {
                if let Some(addr) = line.strip_prefix("http listening on ") {
                    return Some(addr.trim().to_owned());
                }
                banner.push(line);
            }
            None
        })
        .await;
        let base = match waited {
            Ok(Some(base)) => base,
            Ok(None) => {
                let status = child.wait().await;
                panic!(
                    "hub serve exited before listening ({status:?});\nstdout:\n{}\nlog:\n{}",
                    banner.join("\n"),
                    read_log(&log_path)
                )
            }
            Err(_) => panic!(
                "hub serve did not listen within {START_TIMEOUT:?};\nstdout:\n{}\nlog:\n{}",
                banner.join("\n"),
                read_log(&log_path)
            ),
        };
        // Keep reading stdout so that a later print never meets a closed pipe.
        let later = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn({
            let later = later.clone();
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    later.lock().expect("stdout lines").push(line);
                }
            }
        });
        Hub {
            child: Some(child),
            base,
            banner,
            log_path,
            client: client(),
        }
    }
}

/// The password the harness gives each user it creates.
pub fn password_of(name: &str) -> String {
    format!("{name}-pass-0123456789")
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// Output of a finished CLI command.
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// A running `hub serve`. Dropping it stops the process (SIGTERM, then SIGKILL).
pub struct Hub {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// What the hub printed on stdout before it listened (first-start admin, demo users).
    pub banner: Vec<String>,
    log_path: PathBuf,
    client: reqwest::Client,
}

/// The common start: a fresh environment with one user `admin`, its hub running, and `admin` logged in.
pub async fn spawn_hub() -> (TestEnv, Hub, Api) {
    let env = TestEnv::new().await;
    env.add_user("admin", "admin", &password_of("admin")).await;
    let hub = env.start(false).await;
    let admin = hub.login_as("admin").await;
    (env, hub, admin)
}

impl Hub {
    /// An API client without credentials.
    pub fn anonymous(&self) -> Api {
        Api {
            client: self.client.clone(),
            base: self.base.clone(),
            auth: Auth::None,
        }
    }

    /// Logs in through the API; panics unless it works.
    pub async fn login(&self, username: &str, password: &str) -> Api {
        let res = self
            .anonymous()
            .post(
                "/api/v1/auth/login",
                &serde_json::json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(res.status, StatusCode::OK, "login {username}: {res}");
        let token = res.json()["token"]
            .as_str()
            .expect("token in login answer")
            .to_owned();
        Api {
            client: self.client.clone(),
            base: self.base.clone(),
            auth: Auth::Bearer(token),
        }
    }

    /// Logs in a user made by `TestEnv::add_user(s)`.
    pub async fn login_as(&self, username: &str) -> Api {
        self.login(username, &password_of(username)).await
    }

    /// `host:port` of the embedded MQTT broker, from the line the hub printed at start.
    pub fn mqtt_addr(&self) -> String {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix("mqtt listening on "))
            .map(|a| a.trim().to_owned())
            .unwrap_or_else(|| panic!("no `mqtt listening on` line in {:?}", self.banner))
    }

    /// The SIP address from `sip listening on udp:ADDR` (printed before the HTTP line).
    pub fn sip_addr(&self) -> std::net::SocketAddr {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix("sip listening on udp:"))
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `sip listening on udp:` line in {:?}", self.banner))
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("hub is running")
    }

    /// The hub's log (stderr) so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Sends SIGTERM and waits for the process to exit; panics if it does not within `STOP_TIMEOUT`.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.pid();
        signal(pid, "TERM");
        let mut child = self.child.take().expect("hub is running");
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for hub"),
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "hub did not stop within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log()
                )
            }
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
    if let Err(e) = status {
        eprintln!("kill -{name} {pid}: {e}");
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("--- hub log ({}):\n{}", self.base, self.log());
        }
        if let Some(pid) = child.id() {
            signal(pid, "TERM");
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Did not stop in time: kill it (kill_on_drop would too, but without reaping).
        let _ = child.start_kill();
    }
}

#[derive(Clone)]
enum Auth {
    None,
    Bearer(String),
    Cookie(String),
    Raw(String),
}

/// An HTTP client for one hub with one identity.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    pub base: String,
    auth: Auth,
}

/// A request body.
pub enum Body<'a> {
    None,
    Json(&'a Value),
    /// Content type (none: no header) and bytes.
    Raw(Option<&'a str>, &'a str),
}

impl Api {
    /// The bearer token of this client.
    pub fn token(&self) -> &str {
        match &self.auth {
            Auth::Bearer(t) | Auth::Cookie(t) => t,
            _ => panic!("not logged in"),
        }
    }

    /// The same client authenticating with a `Cookie: NAME=VALUE` header instead.
    pub fn with_cookie(&self, cookie: &str) -> Api {
        Api {
            auth: Auth::Cookie(cookie.to_owned()),
            ..self.clone()
        }
    }

    /// The same client sending this `Authorization` header value.
    pub fn with_authorization(&self, value: &str) -> Api {
        Api {
            auth: Auth::Raw(value.to_owned()),
            ..self.clone()
        }
    }

    pub fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Cookie(c) => req.header(reqwest::header::COOKIE, c),
            Auth::Raw(v) => req.header(reqwest::header::AUTHORIZATION, v),
        }
    }

    pub async fn request(&self, method: Method, path: &str, body: Body<'_>) -> Res {
        let req = self.builder(method.clone(), path);
        let req = match body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Raw(content_type, text) => {
                let req = req.body(text.to_owned());
                match content_type {
                    Some(ct) => req.header(reqwest::header::CONTENT_TYPE, ct),
                    None => req,
                }
            }
        };
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status();
        let headers = res.headers().clone();
        let text = res
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
        let res = Res {
            method,
            path: path.to_owned(),
            status,
            headers,
            text,
        };
        assert!(
            !res.status.is_server_error(),
            "a request must never fail with a server error: {res}"
        );
        res
    }

    pub async fn get(&self, path: &str) -> Res {
        self.request(Method::GET, path, Body::None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Res {
        self.request(Method::POST, path, Body::Json(body)).await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: &str) -> Res {
        self.request(Method::POST, path, Body::Raw(content_type, body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Res {
        self.request(Method::DELETE, path, Body::None).await
    }

    /// GET that must answer 200; its JSON.
    pub async fn get_ok(&self, path: &str) -> Value {
        self.get(path).await.ok()
    }

    /// POST that must answer 200; its JSON.
    pub async fn post_ok(&self, path: &str, body: &Value) -> Value {
        self.post(path, body).await.ok()
    }

    /// Every item of a paged list, following `next_after` (`path` may already have a query).
    pub async fn get_all(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get_ok(&format!("{path}{sep}limit=1000&after={after}"))
                .await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_after"].as_i64() {
                Some(next) => after = next,
                None => return items,
            }
        }
    }
}

/// A finished HTTP exchange.
pub struct Res {
    pub method: Method,
    pub path: String,
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl std::fmt::Display for Res {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {} {:?}: {}",
            self.method,
            self.path,
            self.status,
            self.content_type(),
            self.text
        )
    }
}

impl Res {
    pub fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }

    /// Asserts 200 and returns the JSON body.
    pub fn ok(self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{self}");
        self.json()
    }

    /// Asserts an RFC 9457 problem with this status; returns the problem document.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{self}");
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "not a problem document: {self}"
        );
        let p = self.json();
        assert_eq!(p["status"], status, "{self}");
        assert!(p["title"].is_string() && p["type"].is_string(), "{self}");
        p
    }

    /// Asserts 422 naming `field` in `errors[0].field`; returns the problem document.
    pub fn invalid(&self, field: &str) -> Value {
        let p = self.problem(422);
        assert_eq!(p["errors"][0]["field"], field, "{self}");
        assert!(
            p["errors"][0]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{self}"
        );
        p
    }

    /// The value of cookie `name` from `Set-Cookie`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    }
}

/// Ids of the items of a list answer.
pub fn ids(list: &Value) -> Vec<i64> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect()
}

/// Ids in a JSON array.
pub fn id_list(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|i| i.as_i64().expect("id"))
        .collect()
}
