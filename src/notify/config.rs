//! The `[[notify]]` entries: their TOML schema and the checks that turn them
//! into [`HookConfig`]s. `crate::config` calls [`validate`]; errors come back
//! as (key, reason) so that module attaches the file and line.
//!
//! Validation is pure (no environment, no file system): `check --offline`
//! on a workstation gives the same verdict as on the instance. What only the
//! running agent can see (the token's environment variable, the hook
//! program) is checked when hooks start, see [`super::Notifier::start`].

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a notice is about; also the words of a hook's `events` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A change of path: failover, failback, or a partial start settled.
    Transition,
    /// Flap damping started or stopped pinning Backup.
    Pinned,
    /// Something in the route tables needs a human (foreign route, missing
    /// table, shadowing, blackhole, held failback...), said once while it lasts.
    Finding,
    /// An operator acted on the agent (hold, release, failback, pause...).
    Operator,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::Transition,
        EventKind::Pinned,
        EventKind::Finding,
        EventKind::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Transition => "transition",
            EventKind::Pinned => "pinned",
            EventKind::Finding => "finding",
            EventKind::Operator => "operator",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook that has passed every check the file alone allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Names the hook in logs and in metrics' `hook` label; unique.
    pub name: String,
    /// The kinds of notice it hears.
    pub events: BTreeSet<EventKind>,
    /// Bound on one run of the program, or on one HTTP attempt.
    pub timeout: Duration,
    pub kind: HookKind,
    /// Dotted key of this entry (`notify[2]`), for errors found at start.
    pub key: String,
}

impl HookConfig {
    /// `"exec"` or `"webhook"`, as in the config and the metrics' `kind` label.
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            HookKind::Exec { .. } => "exec",
            HookKind::Webhook(_) => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookKind {
    /// Runs `command[0]` with the rest as arguments; no shell.
    Exec {
        command: Vec<String>,
    },
    Webhook(WebhookConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: UrlSource,
    /// Attempts after the first one, for timeouts, connection errors,
    /// 408, 429 and 5xx.
    pub retries: u32,
    /// Longest wait between two attempts (capped exponential backoff).
    pub max_backoff: Duration,
    /// A request header whose value is read from an environment variable.
    pub header: Option<SecretHeader>,
}

/// Where the webhook's URL comes from. Chat webhooks (Slack, Teams) carry
/// their secret in the URL itself, so it may live in the environment too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    Literal(String),
    Env(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHeader {
    /// Header name, e.g. `Authorization`.
    pub name: String,
    /// Environment variable holding its value.
    pub env: String,
}

/// Default bound on one hook run or one HTTP attempt.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRIES: u32 = 3;
const MAX_RETRIES: u32 = 10;
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One `[[notify]]` table as written. Every field is optional here so that
/// a missing or misplaced key gets an error that names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    kind: Option<String>,
    name: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    command: Option<Vec<String>>,
    url: Option<String>,
    url_env: Option<String>,
    retries: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    max_backoff: Option<Duration>,
    header: Option<String>,
    header_env: Option<String>,
}

/// Checks every `[[notify]]` entry; an error is (dotted key, reason).
pub fn validate(raw: Vec<RawHook>) -> Result<Vec<HookConfig>, (String, String)> {
    let mut hooks: Vec<HookConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let hook = validate_one(i, r)?;
        if hooks.iter().any(|h| h.name == hook.name) {
            let key = format!("notify[{i}].name");
            return Err((
                key,
                format!(
                    "another hook is already named {:?}; give each [[notify]] entry its own name = \"...\"",
                    hook.name
                ),
            ));
        }
        hooks.push(hook);
    }
    Ok(hooks)
}

fn validate_one(i: usize, r: RawHook) -> Result<HookConfig, (String, String)> {
    let key = |field: &str| format!("notify[{i}].{field}");
    let err = |field: &str, reason: String| Err((key(field), reason));
    let kind =
        match r.kind.as_deref() {
            Some("exec") => "exec",
            Some("webhook") => "webhook",
            Some(other) => {
                return err(
                    "kind",
                    format!("{other:?} is not a hook kind: use \"exec\" or \"webhook\""),
                )
            }
            None => return err(
                "kind",
                "is required: kind = \"exec\" (run a program) or kind = \"webhook\" (HTTP POST)"
                    .into(),
            ),
        };
    // Keys of the other kind are mistakes, not silently ignored.
    let foreign: &[(&str, bool)] = if kind == "exec" {
        &[
            ("url", r.url.is_some()),
            ("url_env", r.url_env.is_some()),
            ("retries", r.retries.is_some()),
            ("max_backoff", r.max_backoff.is_some()),
            ("header", r.header.is_some()),
            ("header_env", r.header_env.is_some()),
        ]
    } else {
        &[("command", r.command.is_some())]
    };
    if let Some((field, _)) = foreign.iter().find(|(_, set)| *set) {
        let other = if kind == "exec" { "webhook" } else { "exec" };
        return err(
            field,
            format!("applies to kind = \"{other}\" hooks only; this one is kind = \"{kind}\""),
        );
    }

    let timeout = r.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
        return err("timeout", "must be between 100ms and 10m".into());
    }
    let events =
        match r.events {
            None => EventKind::ALL.into_iter().collect(),
            Some(list) if list.is_empty() => return err(
                "events",
                "is empty, so the hook would never run: list some of \"transition\", \"pinned\", \
                 \"finding\", \"operator\", or leave events out to hear them all"
                    .into(),
            ),
            Some(list) => {
                let mut set = BTreeSet::new();
                for (j, word) in list.iter().enumerate() {
                    let Some(k) = EventKind::ALL.into_iter().find(|k| k.as_str() == word) else {
                        return Err((
                            format!("notify[{i}].events[{j}]"),
                            format!(
                                "{word:?} is not an event kind: use \"transition\", \"pinned\", \
                             \"finding\" or \"operator\""
                            ),
                        ));
                    };
                    set.insert(k);
                }
                set
            }
        };

    let (hook_kind, default_name) = if kind == "exec" {
        let command = r.command.unwrap_or_default();
        let Some(program) = command.first() else {
            return err(
                "command",
                "is required: the program and its arguments as a list, e.g. \
                 command = [\"/usr/local/bin/page-oncall\", \"--team\", \"network\"] (no shell)"
                    .into(),
            );
        };
        if !program.starts_with('/') {
            return Err((
                format!("notify[{i}].command[0]"),
                format!(
                    "{program:?} is not an absolute path: name the program as /path/to/program \
                     (no shell and no PATH lookup)"
                ),
            ));
        }
        if command.iter().any(|a| a.contains('\0')) {
            return err("command", "an argument contains a NUL byte".into());
        }
        let name = tidy_name(program.rsplit('/').next().unwrap_or(program));
        (HookKind::Exec { command }, name)
    } else {
        let (url, default_name) =
            match (r.url, r.url_env) {
                (Some(url), None) => {
                    let host = check_url(&url).map_err(|why| (key("url"), why))?;
                    (UrlSource::Literal(url), tidy_name(&host))
                }
                (None, Some(var)) => {
                    check_env_name(&var).map_err(|why| (key("url_env"), why))?;
                    (UrlSource::Env(var), "webhook".to_string())
                }
                (Some(_), Some(_)) => return err(
                    "url_env",
                    "set either url or url_env (an environment variable holding the URL), not both"
                        .into(),
                ),
                (None, None) => return err(
                    "url",
                    "is required: url = \"https://hooks.example.com/...\", or url_env naming an \
                     environment variable that holds it (chat webhook URLs are secrets)"
                        .into(),
                ),
            };
        let retries = r.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            return err("retries", format!("must be at most {MAX_RETRIES}"));
        }
        let max_backoff = r.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF);
        if max_backoff < Duration::from_millis(10) || max_backoff > Duration::from_secs(600) {
            return err("max_backoff", "must be between 10ms and 10m".into());
        }
        let header = match (r.header, r.header_env) {
            (None, None) => None,
            (Some(_), None) => {
                return err(
                    "header_env",
                    "is required with header: the environment variable holding the header's \
                     value (tokens never sit in the config)"
                        .into(),
                )
            }
            (None, Some(_)) => return err(
                "header",
                "is required with header_env: the header's name, e.g. header = \"Authorization\""
                    .into(),
            ),
            (Some(name), Some(env)) => {
                if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return err(
                        "header",
                        format!("{name:?} is not an HTTP header name such as \"Authorization\""),
                    );
                }
                check_env_name(&env).map_err(|why| (key("header_env"), why))?;
                Some(SecretHeader { name, env })
            }
        };
        (
            HookKind::Webhook(WebhookConfig {
                url,
                retries,
                max_backoff,
                header,
            }),
            default_name,
        )
    };

    let name = r.name.unwrap_or(default_name);
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return err(
            "name",
            format!("{name:?} is not a hook name: 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    Ok(HookConfig {
        name,
        events,
        timeout,
        kind: hook_kind,
        key: format!("notify[{i}]"),
    })
}

/// A default name from a program's file name or a URL's host: characters
/// a name may not hold become `_`.
fn tidy_name(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks a webhook URL and returns its host. Also used for `url_env`'s
/// value when the agent starts.
pub fn check_url(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL such as \"https://hooks.example.com/x\""))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(
            "credentials in the URL are not supported: use header and header_env, or url_env"
                .into(),
        );
    }
    Ok(authority.host().trim_matches(['[', ']']).to_string())
}

fn check_env_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name such as \"ROUTE_FAILOVER_WEBHOOK_TOKEN\""
        ))
    }
}
