//! The agent binary as a child process, its JSON log lines collected as
//! they come. Killed on drop, so a failing test leaves nothing running.

#![allow(dead_code)] // shared by several test crates; each uses part of it

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_route-failover");

/// The running agent, its JSON log lines collected as they come.
pub struct Agent {
    child: Option<Child>,
    logs: Arc<Mutex<Vec<Value>>>,
    runtime: PathBuf,
}

/// Where an agent run on `config` keeps its lock and control socket
/// (`$RUNTIME_DIRECTORY`), unless the test says otherwise.
pub fn runtime_dir(config: &Path) -> PathBuf {
    let name = config.file_name().expect("a config file").to_string_lossy();
    config.with_file_name(format!("{name}.run"))
}

impl Agent {
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, "info", &[])
    }

    /// `debug` also logs every round; `env` is added to the agent's environment.
    pub fn start_with(config: &Path, level: &str, env: &[(&str, &str)]) -> Self {
        // The ownership ledger beside the test's config, not in /var/lib;
        // the lock and the control socket in a directory of the config's
        // own (tests run at once, and some keep configs in /tmp itself).
        let state = config.parent().expect("the config is in a directory");
        let runtime = runtime_dir(config);
        std::fs::create_dir_all(&runtime).expect("a runtime directory");
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", level)
            .env("STATE_DIRECTORY", state)
            .env("RUNTIME_DIRECTORY", &runtime)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(value);
            }
        });
        Self {
            child: Some(child),
            logs,
            runtime,
        }
    }

    pub fn lines(&self, message: &str) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .cloned()
            .collect()
    }

    pub async fn wait_log(&self, message: &str, within: Duration) -> Value {
        match self.wait_lines(message, 1, within).await.pop() {
            Some(v) => v,
            None => panic!(
                "no {message:?} log within {within:?}: {:#?}",
                self.logs.lock().unwrap()
            ),
        }
    }

    /// Waits until at least `n` lines start with `message` and returns them
    /// all (or what came within `within`). The agent logs a change after the
    /// API answered, so a route seen in the table can precede its line.
    pub async fn wait_lines(&self, message: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.lines(message);
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        child.wait().unwrap()
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name ("HUP", "USR1", …).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .expect("not reaped")
            .try_wait()
            .unwrap()
            .is_none()
    }

    /// Waits for the process to exit by itself; its status and log.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, Vec<Value>) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                return (status, self.logs.lock().unwrap().clone());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("still running after {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
