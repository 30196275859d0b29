//! `kind = "exec"`: runs a program (no shell) with the notice in its
//! environment and as one line of JSON on its standard input.
//!
//! The program runs in a process group of its own, so a hook that outlives
//! its timeout is killed together with whatever it started.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::notice::{Notice, ENV_PREFIX};
use super::Failure;

/// How much of a hook's standard error is kept for the log.
const STDERR_KEPT: usize = 1024;
/// How long to wait for a finished hook's standard error to reach its end
/// (a process it left in the background may hold it open).
const STDERR_GRACE: Duration = Duration::from_millis(200);
/// How long a killed hook gets to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(5);

/// A program to run for each notice.
#[derive(Debug, Clone)]
pub struct ExecHook {
    command: Vec<String>,
    timeout: Duration,
}

impl ExecHook {
    /// `command` is non-empty (validated config).
    pub fn new(command: Vec<String>, timeout: Duration) -> Self {
        Self { command, timeout }
    }

    /// Runs the program once for `notice` and waits for it, at most `timeout`.
    pub async fn deliver(&self, notice: &Notice) -> Result<(), Failure> {
        let (program, args) = self
            .command
            .split_first()
            .expect("validated: command is non-empty");
        let mut command = Command::new(program);
        command.args(args);
        // Only this notice's variables: none left over from the agent's own
        // environment (which may hold a webhook token) under our prefix.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(ENV_PREFIX) {
                command.env_remove(key);
            }
        }
        command
            .envs(notice.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|error| Failure::Spawn {
            program: program.clone(),
            error,
        })?;
        let stderr = capture_stderr(&mut child);
        let stdin = child.stdin.take();
        let json = notice.to_json();
        let waited = {
            let child = &mut child;
            tokio::time::timeout(self.timeout, async move {
                if let Some(mut stdin) = stdin {
                    // A hook that ignores its input may exit before reading it.
                    let _ = stdin.write_all(&json).await;
                    let _ = stdin.write_all(b"\n").await;
                }
                child.wait().await
            })
            .await
        };
        match waited {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(Failure::Exit {
                status,
                stderr: stderr.text(STDERR_GRACE).await,
            }),
            Ok(Err(error)) => Err(Failure::Spawn {
                program: program.clone(),
                error,
            }),
            Err(_) => {
                kill_group(&mut child).await;
                Err(Failure::Timeout {
                    after: self.timeout,
                    stderr: stderr.text(STDERR_GRACE).await,
                })
            }
        }
    }
}

/// Kills the hook's process group and reaps the hook.
async fn kill_group(child: &mut Child) {
    // `id()` is `Some` until the child is reaped, so its pid (the group's
    // id, by `process_group(0)`) cannot have been reused.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        if let Err(e) = rustix::process::kill_process_group(group, rustix::process::Signal::KILL) {
            tracing::debug!(error = %e, "cannot kill the hook's process group");
        }
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(REAP_GRACE, child.wait()).await;
}

/// The first bytes of a hook's standard error, read as it goes so that a
/// chatty hook never blocks on a full pipe.
struct Stderr {
    kept: Arc<Mutex<Vec<u8>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

fn capture_stderr(child: &mut Child) -> Stderr {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let reader = child.stderr.take().map(|mut pipe| {
        let kept = Arc::clone(&kept);
        tokio::spawn(async move {
            let mut chunk = [0u8; 1024];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let mut kept = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        })
    });
    Stderr { kept, reader }
}

impl Stderr {
    /// What was kept, on one line, after waiting up to `grace` for the end.
    async fn text(mut self, grace: Duration) -> String {
        if let Some(reader) = self.reader.take() {
            if !grace.is_zero() {
                let _ = tokio::time::timeout(grace, reader).await;
            }
        }
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&kept)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }
}
