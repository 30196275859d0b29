//! The shipped Prometheus alert rules and Grafana dashboard (deploy/): every
//! alert has a runbook and promtool tests that make it fire and stay quiet,
//! and every query names only metrics (and labels) that the agent really
//! exports, as rendered by its own exporter after a representative run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use promql_parser::parser::{self, Expr};
use route_failover::agent::OperatorAction;
use route_failover::cloud::{CloudError, ErrorKind};
use route_failover::decide::{Alarms, BackupState, Operator};
use route_failover::events::{Event, Outcome, Standing};
use route_failover::fsm::{Phase, Reason, Transition, Via};
use route_failover::model::{Action, Adoption, ManagedRoute};
use route_failover::plan::Finding;
use route_failover::probe::{RoundPolicy, RoundSummary, TargetReport};
use serde_yaml_ng::Value;

const RULES: &str = "deploy/prometheus/route-failover.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/route-failover.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/route-failover.json";
/// The source that records the metrics: every name in it must be exported below.
const METRICS_SOURCE: &str = include_str!("../src/metrics.rs");

/// Series Prometheus adds itself for every scrape target.
const SCRAPE_SERIES: &[&str] = &["up"];
/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: &[&str] = &["job", "instance"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A run that touches every metric: rounds with a reply, a loss and a send
/// error, an overrun, a failover, flap damping, route calls that succeed,
/// find the table converged and fail, a failed read, and convergence.
fn representative_events() -> Vec<Event> {
    let now = tokio::time::Instant::now();
    let route = ManagedRoute {
        route_table_id: "rtb-0a11aa11aa11aa110".into(),
        destination: "10.1.0.0/16".parse().unwrap(),
        target_eni: "eni-0c33cc33cc33cc330".into(),
    };
    let route_held = route.clone();
    let throttled = CloudError::new(
        ErrorKind::Throttled,
        Some("RequestLimitExceeded"),
        "Request limit exceeded.",
    );
    let round = |number, up, targets| Event::Round {
        number,
        at: now,
        summary: RoundSummary::synthetic(up),
        targets,
        policy: RoundPolicy {
            min_replies: 1,
            quorum: 2,
        },
        label: None,
        path: Via::Primary,
        standing: Standing {
            path: Via::Primary,
            local: Via::Primary,
            phase: Phase::Settled,
            down_streak: 0,
            up_streak: 1,
            hold_down_left: None,
            pinned: false,
            backup: BackupState::Up,
            operator: Operator::Auto,
        },
    };
    vec![
        Event::Started {
            prober: "icmp".into(),
            operator: Operator::Auto,
            paused: false,
        },
        Event::Adopted {
            adoption: Adoption::Primary,
            ours: vec![],
        },
        round(
            1,
            true,
            vec![
                TargetReport {
                    target: "10.1.0.10".parse().unwrap(),
                    sent: 3,
                    rtts: vec![Duration::from_millis(2), Duration::from_millis(3)],
                    error: None,
                },
                TargetReport {
                    target: "10.1.0.11".parse().unwrap(),
                    sent: 3,
                    rtts: vec![],
                    error: Some("Network is unreachable (os error 101)".into()),
                },
            ],
        ),
        Event::BackupRound {
            number: 1,
            summary: RoundSummary::synthetic(true),
            targets: vec![TargetReport {
                target: "172.31.255.1".parse().unwrap(),
                sent: 3,
                rtts: vec![Duration::from_millis(9)],
                error: None,
            }],
            policy: RoundPolicy {
                min_replies: 1,
                quorum: 1,
            },
            state: BackupState::Up,
        },
        Event::ApplianceChecked(route_failover::backup::Appliance::Ok),
        Event::Overran,
        Event::Transition(Transition {
            from: Via::Primary,
            to: Via::Backup,
            at: now,
            reason: Reason::Fall {
                rounds: 3,
                last: RoundSummary::synthetic(false),
            },
        }),
        Event::Pinned(true),
        Event::RouteChange {
            action: Action::Create(route.clone()),
            result: Ok(Outcome::Done),
            latency: Duration::from_millis(40),
        },
        Event::RouteChange {
            action: Action::Create(route.clone()),
            result: Ok(Outcome::AlreadyConverged),
            latency: Duration::from_millis(30),
        },
        Event::RouteChange {
            action: Action::Delete(route),
            result: Err(throttled.clone()),
            latency: Duration::from_secs(2),
        },
        Event::ApiError {
            op: "DescribeRouteTables",
            error: throttled,
        },
        Event::Converged {
            path: Via::Backup,
            since_transition: Some(Duration::from_millis(900)),
        },
        Event::Diverged {
            path: Via::Primary,
            why: "route table rtb-0b22bb22bb22bb220 was not found".into(),
        },
        Event::Finding(Finding::FailbackHeld {
            route: route_held.clone(),
            held: route_failover::plan::Held::NoDxRoute,
        }),
        Event::Alarms(Alarms {
            both_down: true,
            no_redundancy: false,
        }),
        Event::Operator {
            action: OperatorAction::FailoverHold,
            uid: Some(1000),
            operator: Operator::Hold(Via::Backup),
            paused: false,
        },
        Event::Intended {
            path: Via::Backup,
            actions: vec![Action::Create(route_held)],
        },
        Event::Reloaded,
        Event::Peers(route_failover::ha::PeerView {
            agent_id: "monitor-a".into(),
            local: Via::Primary,
            combined: Via::Backup,
            peers: ["monitor-b", "monitor-c"]
                .iter()
                .zip([
                    route_failover::peers::Liveness::Live,
                    route_failover::peers::Liveness::Stale,
                ])
                .map(|(id, liveness)| route_failover::peers::Seen {
                    verdict: route_failover::peers::Verdict {
                        agent_id: (*id).into(),
                        path: Via::Backup,
                        counter: 7,
                        at: 1_800_000_000,
                        reason: "3 consecutive down rounds".into(),
                    },
                    age: Duration::from_secs(4),
                    liveness,
                })
                .collect(),
            disagreement: Some("agent monitor-b says Backup, we say Primary".into()),
            anchor: "rtb-0a11aa11aa11aa110".into(),
            read_at: 1_800_000_004,
            duplicate: Some("another process publishes under our agent id monitor-a".into()),
            split: Some("agent monitor-b publishes on rtb-0b22bb22bb22bb220".into()),
            failback_hold: None,
            read_age: Duration::from_secs(3),
            published_age: Some(Duration::from_secs(1)),
        }),
    ]
}

/// What the exporter serves after [`representative_events`]: each series
/// name with the labels and values it carries.
struct Exported {
    /// Series name (histograms as `_bucket`, `_sum`, `_count`) -> label -> values.
    series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Metric families, as `# TYPE` names them.
    families: BTreeSet<String>,
}

impl Exported {
    fn render() -> Self {
        let text = route_failover::metrics::render(
            &representative_events(),
            &[("exec", "pager"), ("webhook", "chat")],
        )
        .unwrap();
        let mut series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        let mut families = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split_whitespace().next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).expect("a sample line");
            let labels = series.entry(line[..name_end].to_string()).or_default();
            if line[name_end..].starts_with('{') {
                let body = &line[name_end + 1..line.rfind('}').unwrap()];
                // Our label values hold no commas or quotes.
                for pair in body.split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    labels
                        .entry(k.to_string())
                        .or_default()
                        .insert(v.trim_matches('"').to_string());
                }
            }
        }
        Self { series, families }
    }

    fn has(&self, name: &str) -> bool {
        self.series.contains_key(name) || SCRAPE_SERIES.contains(&name)
    }

    /// Why `selector` does not name an exported series, if it does not.
    /// With `values`, each `label="value"` matcher must also match a value
    /// the run exported (queries); test input may use others (error codes,
    /// targets).
    fn check(&self, selector: &Selector, values: bool) -> Result<(), String> {
        if SCRAPE_SERIES.contains(&selector.name.as_str()) {
            return Ok(());
        }
        let Some(labels) = self.series.get(&selector.name) else {
            return Err(format!("{} is not exported", selector.name));
        };
        for (label, value) in &selector.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(seen) = labels.get(label) else {
                return Err(format!("{} has no label {label}", selector.name));
            };
            if let Some(value) = value.as_ref().filter(|_| values) {
                if !seen.contains(value) {
                    return Err(format!(
                        "{}{{{label}=\"{value}\"}}: the agent exports {seen:?}",
                        selector.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A series selector in a query: its name, and its label matchers with the
/// value for `=` matchers.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, Option<String>)>,
}

/// Every series selector in a PromQL expression.
fn selectors(query: &str) -> Vec<Selector> {
    fn walk(expr: &Expr, out: &mut Vec<Selector>) {
        match expr {
            Expr::VectorSelector(vs) => out.push(Selector {
                name: vs.name.clone().expect("every selector names its metric"),
                matchers: vs
                    .matchers
                    .matchers
                    .iter()
                    .map(|m| {
                        let equal = m.op.to_string() == "=";
                        (m.name.clone(), equal.then(|| m.value.clone()))
                    })
                    .collect(),
            }),
            Expr::MatrixSelector(ms) => walk(&Expr::VectorSelector(ms.vs.clone()), out),
            Expr::Aggregate(a) => {
                walk(&a.expr, out);
                if let Some(param) = &a.param {
                    walk(param, out);
                }
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let expr = parser::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut out = Vec::new();
    walk(&expr, &mut out);
    assert!(!out.is_empty(), "{query}: names no series");
    out
}

/// The series names in `query`, once each is checked against `exported`.
fn assert_exported(exported: &Exported, what: &str, query: &str, values: bool) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for selector in selectors(query) {
        if let Err(e) = exported.check(&selector, values) {
            panic!("{what}: {e}\n  in {query}");
        }
        names.insert(selector.name);
    }
    names
}

/// The metric family a series name belongs to (`x_bucket` -> `x`).
fn family(exported: &Exported, name: &str) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| exported.families.contains(*base))
        .unwrap_or(name)
        .to_string()
}

#[test]
fn the_representative_run_exports_every_metric_the_agent_records() {
    let exported = Exported::render();
    let recorded: BTreeSet<&str> = METRICS_SOURCE
        .split('"')
        .filter(|s| s.starts_with("route_failover_") && !s.contains(' '))
        .collect();
    assert!(recorded.len() >= 14, "{recorded:?}");
    for name in recorded {
        assert!(
            exported.families.contains(name),
            "{name} is recorded in src/metrics.rs but the representative run does not export it; add an event that records it"
        );
    }
    // Histograms are exported with buckets, so quantiles can be computed.
    assert!(exported.has("route_failover_probe_rtt_seconds_bucket"));
    assert!(exported.has("route_failover_route_api_call_duration_seconds_bucket"));
    assert!(exported.series["route_failover_probe_errors_total"]["target"].contains("10.1.0.11"));
    assert!(!exported.series["route_failover_probe_errors_total"]["target"].contains("10.1.0.10"));
}

fn alert_rules() -> Vec<Value> {
    let rules = yaml(RULES);
    let groups = rules["groups"].as_sequence().expect("groups");
    assert!(!groups.is_empty());
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alert_names() -> Vec<String> {
    alert_rules()
        .iter()
        .map(|r| {
            r["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string()
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook() {
    let rules = alert_rules();
    assert!(rules.len() >= 6, "{} rules", rules.len());
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "runbook"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            assert!(
                text.len() > 40,
                "{name}: {annotation} is missing or too short"
            );
        }
        assert!(
            rule["for"].as_str().is_some(),
            "{name}: no `for:`, it would fire on one scrape"
        );
    }
    let names = alert_names();
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "alert names repeat: {names:?}");
}

#[test]
fn every_rule_names_only_exported_metrics() {
    let exported = Exported::render();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().unwrap();
        assert_exported(&exported, name, rule["expr"].as_str().unwrap(), true);
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_promtool_case_on_real_series() {
    let exported = Exported::render();
    let tests = yaml(RULE_TESTS);
    assert_eq!(
        tests["rule_files"].as_sequence().unwrap(),
        &[Value::from(
            Path::new(RULES).file_name().unwrap().to_str().unwrap()
        )]
    );
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for series in case["input_series"].as_sequence().expect("input_series") {
            let selector = series["series"].as_str().unwrap();
            assert_exported(&exported, "input series", selector, false);
        }
        for check in case["alert_rule_test"]
            .as_sequence()
            .expect("alert_rule_test")
        {
            let alert = check["alertname"].as_str().unwrap().to_string();
            let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected == 0 {
                &mut quiet
            } else {
                &mut fires
            }
            .insert(alert);
        }
    }
    for alert in alert_names() {
        assert!(
            fires.contains(&alert),
            "{alert}: no test case where it fires"
        );
        assert!(
            quiet.contains(&alert),
            "{alert}: no test case where it stays quiet"
        );
    }
}

/// promtool, or `None` (after saying so) when it is missing outside CI.
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    assert!(
        std::env::var_os("CI").is_none() && std::env::var_os("ROUTE_FAILOVER_LOCALSTACK").is_none(),
        "promtool is missing (scripts/test.sh installs Debian's prometheus package as root)"
    );
    None
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo("deploy/prometheus"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    if promtool().is_none() {
        eprintln!("SKIPPED promtool_checks_the_rules_and_passes_their_unit_tests: promtool is not installed");
        return;
    }
    let file = |p: &str| {
        Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    let checked = run_promtool(&["check", "rules", &file(RULES)]);
    let count = alert_rules().len();
    assert!(
        checked.contains(&format!("SUCCESS: {count} rules found")),
        "{checked}"
    );
    let tested = run_promtool(&["test", "rules", &file(RULE_TESTS)]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every PromQL query in the dashboard: panel targets, annotations, and the
/// metric inside template variables' `label_values(...)`.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("expr", Some(q)) => out.push(q.to_string()),
                        ("query" | "definition", Some(q)) => {
                            if let Some(inner) = q.strip_prefix("label_values(") {
                                let selector =
                                    inner.rsplit_once(',').expect("label_values(m, l)").0;
                                out.push(selector.to_string());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    // Grafana's range variables become durations before Prometheus sees them.
    out.iter()
        .map(|q| {
            q.replace("$__rate_interval", "5m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
        })
        .collect()
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_shows_them_all() {
    let exported = Exported::render();
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert_eq!(dashboard["uid"], "route-failover");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", panel["title"]);
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > panels.len(), "{queries:?}");
    let mut shown = BTreeSet::new();
    for query in &queries {
        for name in assert_exported(&exported, "dashboard", query, true) {
            shown.insert(family(&exported, &name));
        }
    }
    for name in &exported.families {
        assert!(
            shown.contains(name),
            "the dashboard shows nothing of {name}"
        );
    }
}

#[test]
fn a_hold_and_pause_restored_at_start_show_in_the_metrics_at_once() {
    let text = route_failover::metrics::render(
        &[Event::Started {
            prober: "icmp".into(),
            operator: Operator::Hold(Via::Backup),
            paused: true,
        }],
        &[],
    )
    .unwrap();
    for line in [
        "route_failover_paused 1",
        "route_failover_operator_hold{path=\"backup\"} 1",
        "route_failover_operator_hold{path=\"primary\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
}
