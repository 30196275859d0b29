//! Transition hooks: `[[notify]]` entries that hear of transitions, flap
//! pinning, findings and operator actions.
//!
//! The [`Notifier`] is an [`events::Sink`](crate::events::Sink): it turns an
//! event into a [`Notice`] and only *enqueues* it, with `try_send`, on one
//! bounded queue per hook. Each hook has a worker task that delivers its
//! notices one at a time, in order, each bounded by the hook's timeout. So a
//! slow or hanging hook never delays probing or route calls; it delays only
//! its own later notices. A full queue (more than [`QUEUE_CAPACITY`]
//! notices waiting) drops the new notice, logged and counted as a failure.
//!
//! - [`config`]: the `[[notify]]` schema and its validation.
//! - [`notice`]: the payload, as JSON and as environment variables.
//! - [`exec`]: run a program (no shell), kill its process group on timeout.
//! - [`webhook`]: POST JSON with retries and backoff.

pub mod config;
pub mod exec;
pub mod notice;
pub mod webhook;

use std::collections::HashMap;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, HeaderValue};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{EventKind, HookConfig, HookKind};
pub use notice::{Notice, Origin};

use crate::events::{Event, Sink};
use crate::metrics;
use exec::ExecHook;
use webhook::WebhookHook;

/// Notices that may wait for one hook; beyond that new ones are dropped
/// (logged and counted). Far more than the events of a bad hour.
pub const QUEUE_CAPACITY: usize = 64;

/// Why one notice did not reach one hook.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot run {program}: {error}")]
    Spawn {
        program: String,
        error: std::io::Error,
    },
    #[error("{status}{}", stderr_suffix(.stderr))]
    Exit { status: ExitStatus, stderr: String },
    #[error("still running after {}: killed its process group{}", humantime::format_duration(*.after), stderr_suffix(.stderr))]
    Timeout { after: Duration, stderr: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    HttpTimeout(Duration),
    #[error("{0}")]
    Request(String),
    #[error("HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        status: u16,
        retryable: bool,
        body: String,
    },
    #[error("gave up after {attempts} attempts; last: {last}")]
    GaveUp { attempts: u32, last: Box<Failure> },
    #[error("dropped: {QUEUE_CAPACITY} notices already wait for this hook (is it hanging?)")]
    QueueFull,
    #[error("not delivered before shutdown")]
    Shutdown,
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl Failure {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::HttpTimeout(_) | Failure::Request(_) => true,
            Failure::Status { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// A hook ready to deliver.
enum Runner {
    Exec(ExecHook),
    Webhook(Box<WebhookHook>),
}

impl Runner {
    async fn deliver(&self, notice: &Notice) -> Result<(), Failure> {
        match self {
            Runner::Exec(hook) => hook.deliver(notice).await,
            Runner::Webhook(hook) => hook.deliver(notice).await,
        }
    }
}

/// A hook's tallies since the agent started, for tests and `status`.
#[derive(Debug, Default)]
struct Counters {
    /// Enqueued and not yet finished (waiting, or being delivered).
    pending: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
}

/// One hook's state as [`Notifier::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookStatus {
    pub name: String,
    pub kind: &'static str,
    pub pending: u64,
    pub sent: u64,
    pub failed: u64,
}

struct Hook {
    config: HookConfig,
    tx: mpsc::Sender<Arc<Notice>>,
    counters: Arc<Counters>,
    worker: JoinHandle<()>,
}

impl Hook {
    fn fail(&self, event: EventKind, failure: &Failure) {
        fail(&self.config, &self.counters, event, failure);
    }
}

/// Counts and logs a notice of kind `event` that `config`'s hook lost.
fn fail(config: &HookConfig, counters: &Counters, event: EventKind, failure: &Failure) {
    counters.failed.fetch_add(1, Ordering::Relaxed);
    metrics::notify_failed(config.kind_label(), &config.name, 1);
    warn!(
        hook = %config.name, kind = config.kind_label(), %event, error = %failure,
        "notification failed"
    );
}

/// The sink that hands events to the `[[notify]]` hooks.
pub struct Notifier {
    origin: Origin,
    hooks: Mutex<Vec<Hook>>,
    /// Set by [`Notifier::close`]: a late reload must not start hooks again.
    closed: AtomicBool,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Notifier({} hooks)", self.hooks().len())
    }
}

/// A problem with a hook found when it starts: (dotted key, reason).
pub type StartError = (String, String);

impl Notifier {
    /// Starts a worker per hook. `env` looks up environment variables
    /// (`url_env`, `header_env`); what the file alone cannot show is checked
    /// here: the variables are set, the program exists and may be run.
    /// Must be called inside a tokio runtime.
    pub fn start(
        hooks: &[HookConfig],
        origin: Origin,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StartError> {
        let notifier = Self {
            origin,
            hooks: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        };
        notifier.reload(hooks, env)?;
        Ok(notifier)
    }

    /// Applies a new set of hooks (SIGHUP). Nothing changes when one of
    /// them cannot start. A hook whose entry is unchanged keeps its worker
    /// and queue; a changed one (same name) starts after the old one has
    /// delivered what it had, so one hook never runs twice at once.
    pub fn reload(
        &self,
        hooks: &[HookConfig],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), StartError> {
        // Clients are built (and certificates read) before the list is
        // locked: `record` must never wait on that.
        let known: Vec<HookConfig> = self.hooks().iter().map(|h| h.config.clone()).collect();
        let mut runners = Vec::with_capacity(hooks.len());
        for config in hooks {
            runners.push(if known.contains(config) {
                None
            } else {
                Some(build(config, &env)?)
            });
        }
        let mut current = self.hooks();
        // Checked under the lock `close` takes after setting it.
        if self.closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut old: HashMap<String, Hook> = current
            .drain(..)
            .map(|h| (h.config.name.clone(), h))
            .collect();
        for (config, runner) in hooks.iter().zip(runners) {
            let previous = old.remove(&config.name);
            let hook = match (runner, previous) {
                (None, Some(hook)) if hook.config == *config => hook,
                (Some(runner), previous) => spawn(config.clone(), runner, previous),
                (None, _) => {
                    // Only a reload racing this one gets here; `run` makes
                    // them one after another.
                    warn!(hook = %config.name, "hook changed during a reload; reload again");
                    continue;
                }
            };
            current.push(hook);
        }
        // Hooks no longer configured: their workers deliver what they have
        // and stop when their queue's sender goes away here.
        drop(old);
        Ok(())
    }

    /// Each hook's tallies, in config order.
    pub fn status(&self) -> Vec<HookStatus> {
        self.hooks()
            .iter()
            .map(|h| HookStatus {
                name: h.config.name.clone(),
                kind: h.config.kind_label(),
                pending: h.counters.pending.load(Ordering::Relaxed),
                sent: h.counters.sent.load(Ordering::Relaxed),
                failed: h.counters.failed.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops taking notices and gives the hooks up to `grace` to deliver
    /// what they hold; what is left then is logged and counted as failed.
    pub async fn close(&self, grace: Duration) {
        self.closed.store(true, Ordering::Relaxed);
        let hooks = std::mem::take(&mut *self.hooks());
        let deadline = tokio::time::Instant::now() + grace;
        for hook in hooks {
            let Hook {
                config,
                tx,
                counters,
                mut worker,
            } = hook;
            drop(tx);
            if tokio::time::timeout_at(deadline, &mut worker)
                .await
                .is_err()
            {
                worker.abort();
                let left = counters.pending.swap(0, Ordering::Relaxed);
                if left > 0 {
                    counters.failed.fetch_add(left, Ordering::Relaxed);
                    metrics::notify_failed(config.kind_label(), &config.name, left);
                    warn!(
                        hook = %config.name, kind = config.kind_label(), left,
                        "notifications not delivered before shutdown"
                    );
                }
            }
        }
    }

    fn hooks(&self) -> MutexGuard<'_, Vec<Hook>> {
        // Nothing panics while holding it; a poisoned list is still whole.
        self.hooks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sink for Notifier {
    /// Never blocks: builds the notice and `try_send`s it to each hook
    /// that wants it.
    fn record(&self, event: &Event) {
        let Some(notice) = Notice::from_event(event, &self.origin, SystemTime::now()) else {
            return;
        };
        let notice = Arc::new(notice);
        for hook in self.hooks().iter() {
            if !hook.config.events.contains(&notice.event) {
                continue;
            }
            // Counted before the send, so the worker never finishes a
            // notice that is not yet counted.
            hook.counters.pending.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = hook.tx.try_send(Arc::clone(&notice)) {
                hook.counters.pending.fetch_sub(1, Ordering::Relaxed);
                let failure = match e {
                    TrySendError::Full(_) => Failure::QueueFull,
                    TrySendError::Closed(_) => Failure::Shutdown,
                };
                hook.fail(notice.event, &failure);
            }
        }
    }
}

/// Resolves what a hook needs from the environment and builds its client.
fn build(config: &HookConfig, env: &impl Fn(&str) -> Option<String>) -> Result<Runner, StartError> {
    let key = |field: &str| format!("{}.{field}", config.key);
    match &config.kind {
        HookKind::Exec { command } => {
            check_program(&command[0])
                .map_err(|why| (format!("{}.command[0]", config.key), why))?;
            Ok(Runner::Exec(ExecHook::new(command.clone(), config.timeout)))
        }
        HookKind::Webhook(web) => {
            let url = match &web.url {
                config::UrlSource::Literal(url) => url.clone(),
                config::UrlSource::Env(var) => {
                    let url = env(var)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| (key("url_env"), unset(var)))?;
                    config::check_url(&url).map_err(|_| {
                        (
                            key("url_env"),
                            format!("{var} does not hold an http:// or https:// URL"),
                        )
                    })?;
                    url
                }
            };
            let header = match &web.header {
                None => None,
                Some(h) => {
                    let value = env(&h.env)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| (key("header_env"), unset(&h.env)))?;
                    let value = HeaderValue::from_str(&value).map_err(|_| {
                        (
                            key("header_env"),
                            format!("{} holds characters an HTTP header cannot carry", h.env),
                        )
                    })?;
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| (key("header"), "not an HTTP header name".to_string()))?;
                    Some((name, value))
                }
            };
            let hook = WebhookHook::new(
                &config.name,
                &url,
                header,
                config.timeout,
                web.retries,
                web.max_backoff,
            )
            .map_err(|why| (key("url"), why))?;
            Ok(Runner::Webhook(Box::new(hook)))
        }
    }
}

fn unset(var: &str) -> String {
    format!(
        "the environment variable {var} is not set or empty; set it in the service's environment \
         (systemd: Environment= or EnvironmentFile=)"
    )
}

/// The program must be a file the agent may execute.
fn check_program(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(program).map_err(|e| format!("{program}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{program} is not a file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{program} is not executable (chmod +x)"));
    }
    Ok(())
}

/// Starts `config`'s worker; it begins once `previous` (the same hook
/// before a reload) has finished its queue.
fn spawn(config: HookConfig, runner: Runner, previous: Option<Hook>) -> Hook {
    let (tx, mut rx) = mpsc::channel::<Arc<Notice>>(QUEUE_CAPACITY);
    let counters = previous
        .as_ref()
        .map(|p| Arc::clone(&p.counters))
        .unwrap_or_default();
    let before = previous.map(|p| {
        drop(p.tx);
        p.worker
    });
    metrics::notify_register(config.kind_label(), &config.name);
    let worker = {
        let (config, counters) = (config.clone(), Arc::clone(&counters));
        tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            while let Some(notice) = rx.recv().await {
                let result = runner.deliver(&notice).await;
                counters.pending.fetch_sub(1, Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                        metrics::notify_sent(config.kind_label(), &config.name);
                        info!(
                            hook = %config.name, kind = config.kind_label(), event = %notice.event,
                            "notification sent"
                        );
                    }
                    Err(failure) => fail(&config, &counters, notice.event, &failure),
                }
            }
        })
    };
    Hook {
        config,
        tx,
        counters,
        worker,
    }
}
