//! An SMS centre for tests: `tests/smpp/server.js` (the npm `smpp` package, installed by
//! `scripts/test`) in a child process on a free port of `127.0.0.1`, its JSON event lines collected.
//! Not used by the running hub.

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The server script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/smpp/server.js");
/// What to do when the npm package is missing.
pub const HINT: &str = "run scripts/test, which installs the SMPP peer's npm package \
     (`npm ci --prefix tests/smpp`)";

/// Why SMPP tests cannot run here: `Some` only when there is no `node` at all (CI has it).
pub fn node_missing() -> Option<String> {
    match std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        _ => {
            Some("`node` is not installed (Debian package nodejs); SMPP peer tests skipped".into())
        }
    }
}

/// The running server; killed when dropped.
pub struct SmppServer {
    pub port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    child: Child,
}

impl SmppServer {
    /// Starts the server on a free port with the given arguments (see `server.js`).
    pub async fn start(args: &[&str]) -> Result<SmppServer, String> {
        Self::start_on(0, args).await
    }

    /// Starts it on `port` (0: a free one); the restart of a centre at its old address.
    pub async fn start_on(port: u16, args: &[&str]) -> Result<SmppServer, String> {
        let modules = std::path::Path::new(SCRIPT).with_file_name("node_modules");
        if !modules.join("smpp").is_dir() {
            return Err(format!("{} is missing: {HINT}", modules.display()));
        }
        let mut child = Command::new("node")
            .arg(SCRIPT)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node ({e}); {HINT}"))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            let events = events.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let event = serde_json::from_str(&line)
                        .unwrap_or_else(|_| serde_json::json!({"event": "output", "line": line}));
                    events
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(event);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut s = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut server = SmppServer {
            port: 0,
            events,
            stderr,
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let listening = server
                .events()
                .iter()
                .find(|e| e["event"] == "listening")
                .and_then(|e| e["port"].as_u64());
            if let Some(port) = listening {
                server.port = u16::try_from(port).map_err(|e| e.to_string())?;
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "the SMPP server exited ({status}): {}",
                    server.stderr()
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the SMPP server did not listen within 15 s: {}",
                    server.stderr()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The events named `name` (`submit_sm`, `bind`, `unbind`, `deliver_sm_resp`, ...).
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `count` events named `name` arrived; returns them.
    pub async fn wait_for(
        &self,
        name: &str,
        count: usize,
        within: Duration,
    ) -> Result<Vec<Value>, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let found = self.events_named(name);
            if found.len() >= count {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{count} `{name}` events expected within {within:?}; the server printed:\n{}\n{}",
                    self.events()
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server at once (a crash: no unbind, connections cut).
    pub async fn kill(&mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::warn!(error = %e, "cannot kill the SMPP server");
        }
    }
}
