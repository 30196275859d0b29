//! `[[notify]]` hooks: exec hooks as real processes, webhooks against a
//! loopback HTTP server, the sink that never blocks, and the config errors.
//!
//! Exec tests run on the real clock (a child process's exit cannot be
//! awaited on a paused one: it would jump straight to the timeout), with
//! short timeouts. Webhook tests run on the paused clock: the loopback
//! server answers at once, and the retry waits take no real time.

mod common;
#[path = "common/gate.rs"]
mod gate;
#[path = "common/http.rs"]
mod http;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use route_failover::config::{Config, ConfigError};
use route_failover::events::{Event, Sink};
use route_failover::fsm::{Reason, Transition, Via};
use route_failover::model::ManagedRoute;
use route_failover::notify::exec::ExecHook;
use route_failover::notify::{Failure, HookStatus, Notice, Notifier, Origin, QUEUE_CAPACITY};
use route_failover::plan::Finding;
use route_failover::probe::RoundSummary;
use serde_json::Value;
use tokio::time::Instant;

const BASE: &str = r#"
[aws]
backend = "memory"

[probe]
targets = ["198.18.0.10"]

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#;

fn config(notify: &str) -> Result<Config, ConfigError> {
    Config::parse(
        &format!("{BASE}\n{notify}"),
        Path::new("/etc/route-failover/test.toml"),
    )
}

fn origin() -> Origin {
    Origin {
        host: "test-host".into(),
        dry_run: false,
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn start(notify: &str) -> Notifier {
    let config = config(notify).expect("valid [[notify]]");
    Notifier::start(&config.notify, origin(), no_env).expect("hooks start")
}

fn transition(from: Via, to: Via) -> Event {
    let last = RoundSummary::synthetic(to == Via::Primary);
    Event::Transition(Transition {
        from,
        to,
        at: Instant::now(),
        reason: if to == Via::Backup {
            Reason::Fall { rounds: 3, last }
        } else {
            Reason::Rise {
                rounds: 10,
                on_backup_for: Duration::from_secs(120),
                last,
            }
        },
    })
}

fn finding() -> Event {
    Event::Finding(Finding::Blackhole {
        route: ManagedRoute {
            route_table_id: "rtb-0123456789abcdef0".into(),
            destination: "10.1.0.0/16".parse().unwrap(),
            target_eni: "eni-0123456789abcdef0".into(),
        },
    })
}

fn status(notifier: &Notifier) -> HookStatus {
    notifier.status().pop().expect("one hook")
}

/// Polls (real clock) until `done` holds for the hook's tallies.
async fn settle(notifier: &Notifier, within: Duration, done: impl Fn(&HookStatus) -> bool) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = status(notifier);
        if done(&s) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hook did not settle within {within:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An executable shell script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec_hook(program: &Path, args: &[&Path], extra: &str) -> String {
    let mut command = vec![format!("{:?}", program.display().to_string())];
    command.extend(
        args.iter()
            .map(|a| format!("{:?}", a.display().to_string())),
    );
    format!(
        "[[notify]]\nkind = \"exec\"\ncommand = [{}]\n{extra}\n",
        command.join(", ")
    )
}

#[tokio::test]
async fn an_exec_hook_gets_each_event_in_its_environment_and_on_stdin_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Records its environment and stdin; a run that starts while another is
    // still going leaves OVERLAP behind.
    let hook = script(
        dir.path(),
        "hook",
        r#"out="$1"
[ -e "$out.running" ] && echo OVERLAP >> "$out"
touch "$out.running"
sleep 0.05
env | grep '^ROUTE_FAILOVER_' | sort | tr '\n' ' ' >> "$out"
echo >> "$out"
cat >> "$out"
rm "$out.running"
"#,
    );
    // A variable of ours in the agent's own environment (a token, say) is
    // not passed on.
    std::env::set_var("ROUTE_FAILOVER_TEST_SECRET", "s3cret");
    let notifier = start(&exec_hook(&hook, &[&out], "timeout = \"5s\""));
    let events = [
        transition(Via::Primary, Via::Backup),
        Event::Pinned(true),
        finding(),
        Event::Overran, // not a notice
        transition(Via::Backup, Via::Primary),
    ];
    for e in &events {
        notifier.record(e);
    }
    settle(&notifier, Duration::from_secs(20), |s| s.sent == 4).await;
    assert_eq!(status(&notifier).failed, 0);

    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("OVERLAP"), "hooks overlapped:\n{text}");
    assert!(
        !text.contains("s3cret"),
        "the agent's own variable leaked:\n{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    let mut seen = Vec::new();
    for pair in lines.chunks(2) {
        let env: HashMap<&str, &str> = pair[0]
            .split(" ROUTE_FAILOVER_")
            .filter_map(|kv| kv.trim_start_matches("ROUTE_FAILOVER_").split_once('='))
            .collect();
        let json: Value = serde_json::from_str(pair[1]).expect("stdin is one JSON line");
        assert_eq!(env["EVENT"], json["event"].as_str().unwrap());
        assert_eq!(env["HOST"], "test-host");
        assert_eq!(env["AT"], json["at"].as_str().unwrap());
        assert!(env["AT"].ends_with('Z'), "{}", env["AT"]);
        assert!(json["text"]
            .as_str()
            .unwrap()
            .starts_with("route-failover on test-host: "));
        seen.push(format!(
            "{} {}{}",
            json["event"].as_str().unwrap(),
            env.get("FROM")
                .map(|f| format!("{f}->"))
                .unwrap_or_default(),
            env.get("TO")
                .or(env.get("PINNED"))
                .or(env.get("FINDING"))
                .unwrap()
        ));
    }
    assert_eq!(
        seen,
        [
            "transition Primary->Backup",
            "pinned true",
            "finding blackhole",
            "transition Backup->Primary"
        ]
    );
}

#[tokio::test]
async fn a_hook_that_hangs_is_killed_with_its_children_and_the_next_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // On "pinned" it starts a child and hangs; otherwise it records the event.
    let hook = script(
        dir.path(),
        "hook",
        r#"if [ "$ROUTE_FAILOVER_EVENT" = pinned ]; then
  sleep 30 &
  echo $! > "$1.child"
  echo "hanging on purpose" >&2
  sleep 30
fi
echo "$ROUTE_FAILOVER_EVENT" >> "$1"
"#,
    );
    let notifier = start(&exec_hook(&hook, &[&out], "timeout = \"500ms\""));
    let started = std::time::Instant::now();
    notifier.record(&Event::Pinned(true));
    notifier.record(&transition(Via::Primary, Via::Backup));
    settle(&notifier, Duration::from_secs(10), |s| s.pending == 0).await;
    let took = started.elapsed();
    let s = status(&notifier);
    assert_eq!((s.sent, s.failed), (1, 1), "{s:?}");
    assert!(took >= Duration::from_millis(500), "killed early: {took:?}");
    assert!(took < Duration::from_secs(10), "not killed: {took:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "transition\n");
    // The hook's own child went with it (its process group was killed).
    let child = std::fs::read_to_string(dir.path().join("out.child")).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.trim()));
    assert!(
        stat.as_deref().map_or(true, |s| s.contains(") Z ")),
        "the hook's child still runs: {stat:?}"
    );
}

#[tokio::test]
async fn a_timeout_names_itself_and_keeps_what_the_hook_said() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(
        dir.path(),
        "hook",
        "echo 'waiting for the pager' >&2\nexec sleep 30\n",
    );
    let notice = Notice::from_event(
        &Event::Pinned(true),
        &origin(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let failure = ExecHook::new(vec![hook.display().to_string()], Duration::from_millis(300))
        .deliver(&notice)
        .await
        .unwrap_err();
    assert!(matches!(failure, Failure::Timeout { .. }), "{failure:?}");
    let text = failure.to_string();
    assert!(text.contains("300ms"), "{text}");
    assert!(text.contains("waiting for the pager"), "{text}");
}

#[tokio::test]
async fn a_failing_hook_is_counted_with_its_exit_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let hook = script(
        dir.path(),
        "hook",
        "echo 'pager: no route to host' >&2\nexit 3\n",
    );
    let notifier = start(&exec_hook(&hook, &[], ""));
    notifier.record(&transition(Via::Primary, Via::Backup));
    notifier.record(&finding());
    settle(&notifier, Duration::from_secs(10), |s| s.pending == 0).await;
    let s = status(&notifier);
    assert_eq!((s.sent, s.failed), (0, 2), "{s:?}");

    let notice = Notice::from_event(&finding(), &origin(), std::time::SystemTime::now()).unwrap();
    let failure = ExecHook::new(vec![hook.display().to_string()], Duration::from_secs(5))
        .deliver(&notice)
        .await
        .unwrap_err();
    match &failure {
        Failure::Exit { status, stderr } => {
            assert_eq!(status.code(), Some(3));
            assert_eq!(stderr, "pager: no route to host");
        }
        other => panic!("expected an exit failure, got {other:?}"),
    }
}

#[tokio::test]
async fn record_returns_at_once_while_a_hook_hangs_and_a_full_queue_drops_loudly() {
    let notifier = start(
        "[[notify]]\nkind = \"exec\"\ncommand = [\"/bin/sleep\", \"30\"]\ntimeout = \"60s\"\n",
    );
    let extra = 5;
    let started = std::time::Instant::now();
    for _ in 0..QUEUE_CAPACITY + extra {
        notifier.record(&transition(Via::Primary, Via::Backup));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "record blocked: {took:?}"
    );
    // The worker has not run yet (this runtime has one thread and the test
    // has not yielded): the queue took QUEUE_CAPACITY, the rest were dropped.
    let s = status(&notifier);
    assert_eq!(
        (s.pending, s.failed),
        (QUEUE_CAPACITY as u64, extra as u64),
        "{s:?}"
    );
    // The hook now hangs in `sleep 30`; recording goes on at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    notifier.record(&Event::Pinned(true));
    assert!(started.elapsed() < Duration::from_millis(50));
    // Shutdown does not wait for it beyond its grace; what is left counts.
    let started = std::time::Instant::now();
    notifier.close(Duration::from_millis(100)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let s = notifier.status();
    assert!(s.is_empty(), "closed notifier still lists hooks: {s:?}");
}

/// A loopback webhook endpoint that answers with `statuses` in turn (the
/// last repeats) and records every request with the paused clock's time.
struct Endpoint {
    url: String,
    requests: Arc<Mutex<Vec<(Instant, http::Request)>>>,
}

impl Endpoint {
    async fn start(statuses: Vec<Option<u16>>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let url = http::serve(move |request| {
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push((Instant::now(), request));
                seen.len()
            };
            match statuses.get(n - 1).or(statuses.last()).copied().flatten() {
                None => http::Response::Hang,
                Some(status) => http::Response::Reply {
                    status,
                    content_type: "text/plain",
                    headers: vec![],
                    body: if status == 200 {
                        "ok".into()
                    } else {
                        "invalid_token".into()
                    },
                },
            }
        })
        .await;
        Self { url, requests }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn gaps(&self) -> Vec<Duration> {
        let r = self.requests.lock().unwrap();
        r.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }

    fn hook(&self, extra: &str) -> String {
        format!(
            "[[notify]]\nkind = \"webhook\"\nname = \"chat\"\nurl = \"{}/services/T0/B0\"\n{extra}\n",
            self.url
        )
    }
}

/// Waits on the paused clock until the hook has nothing pending.
async fn delivered(notifier: &Notifier, within: Duration) -> HookStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = status(notifier);
        if s.pending == 0 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "still pending after {within:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_webhook_posts_json_with_text_and_the_header_from_the_environment() {
    let endpoint = Endpoint::start(vec![Some(200)]).await;
    let config = config(&endpoint.hook(
        "header = \"Authorization\"\nheader_env = \"TEST_WEBHOOK_TOKEN\"\nevents = [\"transition\", \"finding\"]",
    ))
    .unwrap();
    let env = |name: &str| (name == "TEST_WEBHOOK_TOKEN").then(|| "Bearer s3cret".to_string());
    let notifier = Notifier::start(&config.notify, origin(), env).unwrap();
    notifier.record(&transition(Via::Primary, Via::Backup));
    notifier.record(&Event::Pinned(true)); // filtered out by `events`
    notifier.record(&finding());
    let s = delivered(&notifier, Duration::from_secs(30)).await;
    assert_eq!((s.sent, s.failed), (2, 0), "{s:?}");

    let requests = endpoint.requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    let (_, first) = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/services/T0/B0");
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.header("authorization"), Some("Bearer s3cret"));
    let body: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body["event"], "transition");
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some("Primary"), Some("Backup"))
    );
    let text = body["text"].as_str().unwrap();
    assert!(
        text.starts_with("route-failover on test-host: failover Primary -> Backup (VPN): 3 consecutive down rounds"),
        "{text}"
    );
    let body: Value = serde_json::from_str(&requests[1].1.body).unwrap();
    assert_eq!(body["event"], "finding");
    assert_eq!(body["finding"], "blackhole");
}

#[tokio::test(start_paused = true)]
async fn a_webhook_retries_after_a_500_then_succeeds() {
    let endpoint = Endpoint::start(vec![Some(500), Some(503), Some(200)]).await;
    let notifier = start(&endpoint.hook("retries = 3"));
    notifier.record(&transition(Via::Primary, Via::Backup));
    let s = delivered(&notifier, Duration::from_secs(60)).await;
    assert_eq!((s.sent, s.failed), (1, 0), "{s:?}");
    assert_eq!(endpoint.count(), 3);
    // Capped exponential backoff: retry n waits between a tenth of
    // 2^(n-1) s and 2^(n-1) s.
    let gaps = endpoint.gaps();
    assert!(
        gaps[0] >= Duration::from_millis(100) && gaps[0] <= Duration::from_secs(1),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(200) && gaps[1] <= Duration::from_secs(2),
        "{gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_webhook_gives_up_after_its_retries_and_the_next_notice_still_goes() {
    let endpoint = Endpoint::start(vec![Some(503)]).await;
    let notifier = start(&endpoint.hook("retries = 2\nmax_backoff = \"1500ms\""));
    notifier.record(&transition(Via::Primary, Via::Backup));
    let s = delivered(&notifier, Duration::from_secs(60)).await;
    assert_eq!((s.sent, s.failed), (0, 1), "{s:?}");
    assert_eq!(endpoint.count(), 3, "one attempt and two retries");
    let gaps = endpoint.gaps();
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(1500)),
        "cap ignored: {gaps:?}"
    );

    notifier.record(&Event::Pinned(true));
    delivered(&notifier, Duration::from_secs(60)).await;
    assert_eq!(endpoint.count(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_client_error_is_not_retried() {
    let endpoint = Endpoint::start(vec![Some(404)]).await;
    let notifier = start(&endpoint.hook("retries = 3"));
    notifier.record(&transition(Via::Primary, Via::Backup));
    let s = delivered(&notifier, Duration::from_secs(60)).await;
    assert_eq!((s.sent, s.failed), (0, 1), "{s:?}");
    assert_eq!(endpoint.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_webhook_that_never_answers_is_abandoned_after_its_timeout() {
    let endpoint = Endpoint::start(vec![None]).await;
    let notifier = start(&endpoint.hook("retries = 1\ntimeout = \"2s\""));
    let started = Instant::now();
    notifier.record(&transition(Via::Primary, Via::Backup));
    // Recording did not wait for the endpoint.
    assert_eq!(Instant::now(), started);
    let s = delivered(&notifier, Duration::from_secs(60)).await;
    assert_eq!((s.sent, s.failed), (0, 1), "{s:?}");
    assert_eq!(endpoint.count(), 2);
    let took = Instant::now() - started;
    // Two attempts of 2 s and one wait of at most 1 s.
    assert!(
        took >= Duration::from_secs(4) && took <= Duration::from_secs(6),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_url_may_come_from_the_environment() {
    let endpoint = Endpoint::start(vec![Some(200)]).await;
    let config = config("[[notify]]\nkind = \"webhook\"\nurl_env = \"TEST_SLACK_URL\"\n").unwrap();
    let url = format!("{}/services/T0/B0/secret", endpoint.url);
    let env = move |name: &str| (name == "TEST_SLACK_URL").then(|| url.clone());
    let notifier = Notifier::start(&config.notify, origin(), env).unwrap();
    notifier.record(&Event::Pinned(false));
    let s = delivered(&notifier, Duration::from_secs(30)).await;
    assert_eq!((s.name.as_str(), s.sent), ("webhook", 1));
    assert_eq!(
        endpoint.requests.lock().unwrap()[0].1.path,
        "/services/T0/B0/secret"
    );
}

/// `file:line: key: reason` for `notify`, with the line of `needle`.
fn assert_error(notify: &str, key: &str, needle: &str, reason: &str) {
    let err = match config(notify) {
        Ok(_) => panic!("accepted:\n{notify}"),
        Err(e) => e,
    };
    let text = format!("{BASE}\n{notify}");
    let line = text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    assert_eq!(err.key.as_deref(), Some(key), "{err}");
    assert_eq!(err.line, Some(line), "{err}");
    assert!(err.reason.contains(reason), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("/etc/route-failover/test.toml:{line}: {key}: ")),
        "{err}"
    );
}

#[test]
fn bad_notify_entries_name_file_line_key_and_reason() {
    assert_error(
        "[[notify]]\ncommand = [\"/bin/true\"]\n",
        "notify[0].kind",
        "[[notify]]",
        "kind = \"exec\"",
    );
    assert_error(
        "[[notify]]\nkind = \"email\"\n",
        "notify[0].kind",
        "email",
        "not a hook kind",
    );
    assert_error(
        "[[notify]]\nkind = \"exec\"\ncommand = [\"page-oncall\"]\n",
        "notify[0].command[0]",
        "page-oncall",
        "absolute path",
    );
    assert_error(
        "[[notify]]\nkind = \"exec\"\ncommand = []\n",
        "notify[0].command",
        "command = []",
        "is required",
    );
    assert_error(
        "[[notify]]\nkind = \"webhook\"\nurl = \"ftp://example.com/x\"\n",
        "notify[0].url",
        "ftp://",
        "http:// or https://",
    );
    assert_error(
        "[[notify]]\nkind = \"webhook\"\nurl = \"https://user:pw@example.com/x\"\n",
        "notify[0].url",
        "user:pw",
        "header_env",
    );
    assert_error(
        "[[notify]]\nkind = \"webhook\"\nurl = \"https://example.com/x\"\nheader = \"Authorization\"\n",
        "notify[0].header_env",
        "[[notify]]",
        "is required with header",
    );
    assert_error(
        "[[notify]]\nkind = \"webhook\"\nurl = \"https://example.com/x\"\nheader = \"Bad Header\"\nheader_env = \"T\"\n",
        "notify[0].header",
        "Bad Header",
        "not an HTTP header name",
    );
    assert_error(
        "[[notify]]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nurl = \"https://example.com/x\"\n",
        "notify[0].url",
        "url =",
        "kind = \"webhook\" hooks only",
    );
    assert_error(
        "[[notify]]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\nevents = [\"transition\", \"flap\"]\n",
        "notify[0].events[1]",
        "events =",
        "\"flap\" is not an event kind",
    );
    assert_error(
        "[[notify]]\nkind = \"exec\"\ncommand = [\"/bin/true\"]\ntimeout = \"1h\"\n",
        "notify[0].timeout",
        "1h",
        "between 100ms and 10m",
    );
    assert_error(
        "[[notify]]\nkind = \"webhook\"\nurl = \"https://example.com/a\"\n\
         [[notify]] # second\nkind = \"webhook\"\nurl = \"https://example.com/b\"\n",
        "notify[1].name",
        "# second",
        "already named \"example.com\"",
    );
    assert_error(
        "[[notify]]\nkind = \"webhook\"\nurl = \"https://example.com/a\"\nretries = 50\n",
        "notify[0].retries",
        "retries",
        "at most 10",
    );
}

#[test]
fn a_valid_notify_entry_gets_its_defaults() {
    let c = config(
        "[[notify]]\nkind = \"exec\"\ncommand = [\"/usr/local/bin/page-oncall\", \"--team\", \"net\"]\n",
    )
    .unwrap();
    let hook = &c.notify[0];
    assert_eq!(hook.name, "page-oncall");
    assert_eq!(hook.timeout, Duration::from_secs(10));
    assert_eq!(hook.events.len(), 4, "every kind by default");
    assert!(config("").unwrap().notify.is_empty());
}

#[tokio::test]
async fn what_only_the_running_agent_can_check_is_refused_at_start_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let notify = "[[notify]]\nkind = \"webhook\"\nurl = \"https://example.com/x\"\n\
                  header = \"Authorization\"\nheader_env = \"TEST_UNSET_TOKEN\"\n";
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("{BASE}\n{notify}")).unwrap();
    let config = Config::load(&path).unwrap();
    let (key, why) = Notifier::start(&config.notify, origin(), no_env).unwrap_err();
    assert_eq!(key, "notify[0].header_env");
    assert!(why.contains("TEST_UNSET_TOKEN is not set"), "{why}");
    let err = ConfigError::at_key(&config, key, why);
    let line = format!("{BASE}\n{notify}")
        .lines()
        .position(|l| l.contains("header_env"))
        .unwrap()
        + 1;
    assert_eq!(err.line, Some(line), "{err}");

    let missing = config_with_program(dir.path(), "/nonexistent/page-oncall");
    let (key, why) = Notifier::start(&missing.notify, origin(), no_env).unwrap_err();
    assert_eq!(key, "notify[0].command[0]");
    assert!(why.contains("No such file"), "{why}");
    let not_executable = dir.path().join("plain");
    std::fs::write(&not_executable, "").unwrap();
    let c = config_with_program(dir.path(), &not_executable.display().to_string());
    let (_, why) = Notifier::start(&c.notify, origin(), no_env).unwrap_err();
    assert!(why.contains("not executable"), "{why}");
}

fn config_with_program(dir: &Path, program: &str) -> Config {
    let path = dir.join("exec.toml");
    std::fs::write(
        &path,
        format!("{BASE}\n[[notify]]\nkind = \"exec\"\ncommand = [\"{program}\"]\n"),
    )
    .unwrap();
    Config::load(&path).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_agents_own_failover_reaches_a_webhook() {
    use common::{config as agent_config, secs, Harness};
    use route_failover::cloud::memory::MemoryRouteApi;
    use route_failover::probe::scripted::Reply;

    let endpoint = Endpoint::start(vec![Some(200)]).await;
    let hooks = config(&endpoint.hook("events = [\"transition\"]"))
        .unwrap()
        .notify;
    let notifier = Arc::new(Notifier::start(&hooks, origin(), no_env).unwrap());
    let config = agent_config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let sink = Arc::clone(&notifier);
    let mut h = Harness::start_with(&config, api, Reply::All, move |agent| agent.with_sink(sink));
    h.converged(Via::Primary, secs(5)).await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(10)).await;
    h.run_for(secs(2)).await;
    let s = status(&notifier);
    assert_eq!((s.sent, s.failed), (1, 0), "{s:?}");
    let body: Value = serde_json::from_str(&endpoint.requests.lock().unwrap()[0].1.body).unwrap();
    assert_eq!(body["to"], "Backup");
    assert!(body["reason"]
        .as_str()
        .unwrap()
        .starts_with("3 consecutive down rounds"));
    h.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_route-failover");

#[test]
fn run_refuses_to_start_when_a_hook_cannot_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let notify = "[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n\
                  header = \"Authorization\"\nheader_env = \"TEST_NEVER_SET_TOKEN\"\n";
    let text = format!("{BASE}\n{notify}");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("TEST_NEVER_SET_TOKEN")
        .env("RUNTIME_DIRECTORY", dir.path())
        .env("STATE_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let line = text.lines().position(|l| l.contains("header_env")).unwrap() + 1;
    assert!(
        stderr.contains(&format!(
            "{}:{line}: notify[0].header_env: the environment variable TEST_NEVER_SET_TOKEN is not set",
            config.display()
        )),
        "{stderr}"
    );
}

/// Root: the real binary, probing a target in a namespace this test makes,
/// tells an exec hook and a webhook of its failover and failback.
#[tokio::test]
async fn the_running_agent_tells_its_hooks_of_failover_and_failback() {
    const TEST: &str = "the_running_agent_tells_its_hooks_of_failover_and_failback";
    if !gate::require_root(TEST, "needs root to create network namespaces") {
        return;
    }
    let net = netns::TargetNet::create(231);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let hook = script(
        dir.path(),
        "hook",
        "echo \"$ROUTE_FAILOVER_EVENT $ROUTE_FAILOVER_FROM $ROUTE_FAILOVER_TO\" >> \"$1\"\n",
    );
    let endpoint = Endpoint::start(vec![Some(200)]).await;
    let metrics = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        free.local_addr().unwrap().to_string()
    };
    // SIGHUP points the exec hook elsewhere: `out` then `out2`.
    let text = |out: &Path| {
        format!(
            r#"[aws]
backend = "memory"

[probe]
targets = ["{}"]
interval = "100ms"
timeout = "50ms"
count = 1

[failover]
fall = 2
rise = 3
hold_down = "300ms"

[metrics]
listen = "{}"

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"

{}
{}"#,
            net.target_v4,
            metrics,
            exec_hook(&hook, &[out], "events = [\"transition\"]"),
            endpoint.hook(
                "events = [\"transition\"]\nheader = \"X-Token\"\nheader_env = \"TEST_AGENT_TOKEN\""
            ),
        )
    };
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text(&out)).unwrap();
    let runtime = dir.path().display().to_string();
    let agent = process::Agent::start_with(
        &config,
        "info",
        &[
            ("RUNTIME_DIRECTORY", &runtime),
            ("TEST_AGENT_TOKEN", "t0ken"),
        ],
    );
    agent.wait_log("started", Duration::from_secs(10)).await;
    // Let it adopt Primary before the link goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    net.link(false);
    let sent = agent
        .wait_lines("notification sent", 2, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    let out2 = dir.path().join("out2");
    std::fs::write(&config, text(&out2)).unwrap();
    agent.signal("HUP");
    agent
        .wait_log("configuration reloaded", Duration::from_secs(5))
        .await;
    net.link(true);
    let sent = agent
        .wait_lines("notification sent", 4, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(agent.lines("notification failed").is_empty());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "transition Primary Backup\n"
    );
    assert_eq!(
        std::fs::read_to_string(&out2).unwrap(),
        "transition Backup Primary\n"
    );
    let requests = endpoint.requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].1.header("x-token"), Some("t0ken"));
    let body: Value = serde_json::from_str(&requests[1].1.body).unwrap();
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some("Backup"), Some("Primary"))
    );
    drop(requests);
    // The changed exec hook kept its name, so its counters go on.
    let scraped = scrape(&metrics);
    for (kind, hook) in [("exec", "hook"), ("webhook", "chat")] {
        assert_eq!(
            sample(&scraped, "route_failover_notify_sent_total", kind, hook),
            Some(2.0),
            "{scraped}"
        );
        assert_eq!(
            sample(&scraped, "route_failover_notify_failures_total", kind, hook),
            Some(0.0),
            "{scraped}"
        );
    }
    assert!(agent.terminate().success());
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The value of `metric{kind, hook}` in a Prometheus text exposition.
fn sample(text: &str, metric: &str, kind: &str, hook: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            l.contains(&format!("kind=\"{kind}\"")) && l.contains(&format!("hook=\"{hook}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The commented-out `[[notify]]` examples in config.example.toml, once
/// uncommented, are valid.
#[test]
fn the_examples_in_config_example_toml_are_valid() {
    let example = include_str!("../config.example.toml");
    let notify = &example[example.find("# Notifications.").expect("a notify section")..];
    let uncommented: String = notify
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            l.starts_with("[[notify]]")
                || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::parse(
        &format!("{example}\n{uncommented}"),
        Path::new("config.example.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let names: Vec<(&str, &str)> = c
        .notify
        .iter()
        .map(|h| (h.name.as_str(), h.kind_label()))
        .collect();
    assert_eq!(
        names,
        [("slack-netops", "webhook"), ("page-oncall", "exec")]
    );
}

#[tokio::test]
async fn a_changed_hook_runs_after_its_old_self_has_finished_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let hook = script(
        dir.path(),
        "hook",
        r#"[ -e "$1.running" ] && echo OVERLAP >> "$1"
touch "$1.running"
sleep 0.2
echo "$2 $ROUTE_FAILOVER_EVENT" >> "$1"
rm "$1.running"
"#,
    );
    let v1 = Path::new("v1");
    let v2 = Path::new("v2");
    let notifier = start(&exec_hook(&hook, &[&out, v1], ""));
    notifier.record(&transition(Via::Primary, Via::Backup));
    notifier.record(&Event::Pinned(true));
    let changed = config(&exec_hook(&hook, &[&out, v2], "")).unwrap().notify;
    notifier.reload(&changed, no_env).unwrap();
    notifier.record(&finding());
    // Reloading the same entries again keeps the running worker.
    notifier.reload(&changed, no_env).unwrap();
    notifier.record(&Event::Pinned(false));
    settle(&notifier, Duration::from_secs(20), |s| s.pending == 0).await;
    let s = status(&notifier);
    assert_eq!((s.sent, s.failed), (4, 0), "{s:?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "v1 transition\nv1 pinned\nv2 finding\nv2 pinned\n"
    );
}
