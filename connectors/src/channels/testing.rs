//! Peers for the channels' tests and the hub's end-to-end tests, on `127.0.0.1` and free ports: a real
//! SMTP server (aiosmtpd from PyPI, in a child process) and a recording HTTP stub standing in for an SMS
//! gateway or the Telegram Bot API. Not used by the running hub.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What to install when aiosmtpd is missing.
pub const AIOSMTPD_HINT: &str = "run scripts/test, which installs python3 and the Python packages in \
     scripts/requirements-test.txt (aiosmtpd), or `pip install aiosmtpd`";

/// aiosmtpd accepting every message and printing it (`python3 -m aiosmtpd -n`). Killed when dropped.
pub struct Smtpd {
    pub port: u16,
    output: Arc<Mutex<String>>,
    child: Child,
}

impl Smtpd {
    /// Starts aiosmtpd on a free port and waits until it accepts connections. An error says what
    /// to install.
    pub async fn start() -> Result<Smtpd, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start python3 ({e}): {AIOSMTPD_HINT}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(collect(out, output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect(err, output.clone()));
        }
        let mut smtpd = Smtpd {
            port,
            output,
            child,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(smtpd);
            }
            if let Ok(Some(status)) = smtpd.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "aiosmtpd exited ({status}): {}\n{AIOSMTPD_HINT}",
                    smtpd.output()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "aiosmtpd did not listen on port {port} within 10 s: {}",
            smtpd.output()
        ))
    }

    /// Everything it printed so far (messages between `MESSAGE FOLLOWS` and `END MESSAGE`).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until its output contains `needle`; returns the output, or an error with it.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return Ok(out);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "aiosmtpd did not print `{needle}` within {within:?}; it printed:\n{out}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn collect(pipe: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut text = into.lock().unwrap_or_else(PoisonError::into_inner);
        text.push_str(&line);
        text.push('\n');
    }
}

/// One request the stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    body: String,
    delay: Duration,
}

#[derive(Debug)]
struct StubState {
    requests: Mutex<Vec<RecordedRequest>>,
    reply: Mutex<Reply>,
    arrived: Notify,
}

/// An HTTP server that records every request and answers all of them the same way (200 and
/// `{"ok":true,"result":{"message_id":1}}` until told otherwise). Stops when dropped.
pub struct HttpStub {
    pub addr: SocketAddr,
    state: Arc<StubState>,
    task: JoinHandle<()>,
}

impl HttpStub {
    pub async fn start() -> std::io::Result<HttpStub> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(StubState {
            requests: Mutex::new(Vec::new()),
            reply: Mutex::new(Reply {
                status: StatusCode::OK,
                body: r#"{"ok":true,"result":{"message_id":1}}"#.into(),
                delay: Duration::ZERO,
            }),
            arrived: Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "http stub stopped");
            }
        });
        Ok(HttpStub { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How the next requests are answered.
    pub fn reply(&self, status: u16, body: &str) {
        let mut reply = self
            .state
            .reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        reply.status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        reply.body = body.to_owned();
    }

    /// Waits this long before answering (to make a client time out).
    pub fn delay(&self, delay: Duration) {
        self.state
            .reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .delay = delay;
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` requests arrived; returns them all, or an error with those that did.
    pub async fn wait_for_requests(
        &self,
        n: usize,
        within: Duration,
    ) -> Result<Vec<RecordedRequest>, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            let seen = self.requests();
            if seen.len() >= n {
                return Ok(seen);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(format!(
                    "{} request(s) within {within:?}, wanted {n}: {seen:#?}",
                    seen.len()
                ));
            }
        }
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<Arc<StubState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let request = RecordedRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let reply = state
        .reply
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    state
        .requests
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request);
    state.arrived.notify_waiters();
    tokio::time::sleep(reply.delay).await;
    (reply.status, reply.body)
}
