//! The configuration contract: the example parses, and every kind of error
//! names the file, the key, the line when known, and the reason.

use std::path::Path;
use std::time::Duration;

use route_failover::config::{Backend, Config, ConfigError};
use route_failover::fsm::Failback;

const EXAMPLE: &str = include_str!("../config.example.toml");

const MINIMAL: &str = r#"
[probe]
targets = ["198.18.0.10"]

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/route-failover/test.toml"))
}

/// Parses `text` and returns the error, failing the test if it was accepted.
fn error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("accepted an invalid config: {c:?}"),
        Err(e) => e,
    }
}

fn line_containing(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

#[test]
fn the_example_parses_with_its_documented_values() {
    let c = parse(EXAMPLE).expect("config.example.toml is valid");
    assert_eq!(c.aws.region.as_deref(), Some("us-east-1"));
    assert_eq!(c.aws.backend, Backend::Ec2);
    assert_eq!(c.probe.targets.len(), 2);
    assert_eq!(c.probe.interval, Duration::from_secs(1));
    assert_eq!(c.probe.timeout, Duration::from_millis(800));
    assert_eq!(
        (
            c.probe.count,
            c.probe.round.min_replies,
            c.probe.round.quorum
        ),
        (3, 1, 2)
    );
    assert_eq!((c.policy.fall, c.policy.rise), (3, 10));
    assert_eq!(c.policy.hold_down, Duration::from_secs(60));
    assert_eq!(c.policy.failback, Failback::Auto);
    assert_eq!(c.reconcile.resync_interval, Duration::from_secs(30));
    assert!(!c.reconcile.takeover);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[1].destination.to_string(), "fd00:1::/48");
}

#[test]
fn defaults_fill_what_a_minimal_config_leaves_out() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.aws.backend, Backend::Ec2);
    assert_eq!(c.probe.round.quorum, 1, "quorum defaults to all targets");
    assert_eq!((c.probe.count, c.policy.fall, c.policy.rise), (3, 3, 10));
    assert_eq!(c.policy.hold_down, Duration::from_secs(60));
    assert!(c.probe.early_stop, "early stop is on unless turned off");
    let off = parse(&MINIMAL.replace("[probe]", "[probe]\nearly_stop = false")).unwrap();
    assert!(!off.probe.early_stop);
    // The last echo's timeout still ends inside the round.
    let last_echo_ends = c.probe.spacing() * (c.probe.count - 1) + c.probe.timeout;
    assert!(last_echo_ends <= c.probe.interval);
}

/// Asserts `e` reads `test.toml:LINE: KEY: …` with the line that holds
/// `needle` in `text`, and that its reason contains `reason`.
fn assert_names(e: &ConfigError, text: &str, needle: &str, key: &str, reason: &str) {
    let line = line_containing(text, needle);
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.reason.contains(reason), "{e}: reason lacks {reason:?}");
    let prefix = format!("/etc/route-failover/test.toml:{line}: {key}: ");
    assert!(
        e.to_string().starts_with(&prefix),
        "{e} does not start with {prefix}"
    );
}

/// Every shape of error the parser raises (before validation sees a value)
/// names the dotted key, its line and the reason.
#[test]
fn parser_errors_name_the_key_its_line_and_the_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // A value the type's parser refuses.
        (
            "interval = \"1s\"",
            "interval = \"fast\"",
            "probe.interval",
            "expected a duration",
        ),
        (
            "hold_down = \"60s\"",
            "hold_down = \"60 parsecs\"",
            "failover.hold_down",
            "duration",
        ),
        // A duration too large for the type at all.
        (
            "api_timeout = \"10s\"",
            "api_timeout = \"99999999999999999999s\"",
            "aws.api_timeout",
            "duration",
        ),
        // The wrong type.
        (
            "fall = 3",
            "fall = \"three\"",
            "failover.fall",
            "expected u32",
        ),
        ("count = 3", "count = -1", "probe.count", "expected u32"),
        (
            "takeover = false",
            "takeover = \"no\"",
            "failover.takeover",
            "boolean",
        ),
        (
            "targets = [\"10.1.0.10\", \"10.1.0.11\"]",
            "targets = [\"10.1.0.10\", 11]",
            "probe.targets[1]",
            "expected a string",
        ),
        (
            "destination = \"fd00:1::/48\"",
            "destination = 48",
            "routes[1].destination",
            "expected a string",
        ),
        // An enum value that is not one of its variants.
        (
            "backend = \"ec2\"",
            "backend = \"gcp\"",
            "aws.backend",
            "`ec2` or `memory`",
        ),
        (
            "failback = \"auto\"",
            "failback = \"sometimes\"",
            "failover.failback",
            "sometimes",
        ),
        // Unknown keys, at each depth (deny_unknown_fields).
        (
            "region = \"us-east-1\"",
            "reigon = \"us-east-1\"",
            "aws.reigon",
            "unknown field",
        ),
        ("[metrics]", "[metrix]", "metrix", "unknown field"),
        (
            "destination = \"fd00:1::/48\"",
            "destiny = \"fd00:1::/48\"",
            "routes[1].destiny",
            "unknown field",
        ),
        // Not TOML at all: the key written on that line.
        (
            "interval = \"1s\"",
            "interval = 1s",
            "probe.interval",
            "with quotes",
        ),
        (
            "target_eni = \"eni-0123456789abcdef0\"\n",
            "target_eni = eni\n",
            "routes[1].target_eni",
            "not valid TOML",
        ),
    ];
    for (from, to, key, reason) in cases {
        assert!(EXAMPLE.contains(from), "test case does not apply: {from}");
        let text = EXAMPLE.replacen(from, to, 1);
        // Each replacement is the only line of its kind in the text.
        assert_names(&error(&text), &text, to.trim_end(), key, reason);
    }
}

#[test]
fn the_errors_quoted_in_the_issue_now_name_their_key() {
    let text = EXAMPLE.replace("interval = \"1s\"", "interval = \"fast\"");
    let line = line_containing(&text, "\"fast\"");
    assert_eq!(
        error(&text).to_string(),
        format!(
            "/etc/route-failover/test.toml:{line}: probe.interval: invalid value: string \"fast\", expected a duration"
        )
    );
    let text = EXAMPLE.replace("fall = 3", "fall = \"three\"");
    let line = line_containing(&text, "\"three\"");
    assert_eq!(
        error(&text).to_string(),
        format!(
            "/etc/route-failover/test.toml:{line}: failover.fall: invalid type: string \"three\", expected u32"
        )
    );
}

#[test]
fn a_missing_required_key_is_named_in_full() {
    let text = EXAMPLE.replacen("targets = [\"10.1.0.10\", \"10.1.0.11\"]", "", 1);
    let e = error(&text);
    assert_eq!(e.key.as_deref(), Some("probe.targets"), "{e}");
    assert_eq!(e.line, Some(line_containing(&text, "[probe]")), "{e}");
    let text = MINIMAL.replace("destination = \"10.1.0.0/16\"", "");
    let e = error(&text);
    assert_eq!(e.key.as_deref(), Some("routes[0].destination"), "{e}");
    let e = error("[aws]\nregion = \"us-east-1\"\n");
    assert_eq!(e.key.as_deref(), Some("probe"), "{e}");
}

/// Each validation rule, the key it must name, and a word the reason must contain.
#[test]
fn each_validation_error_names_its_key_line_and_reason() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "\"10.1.0.11\"]",
            "\"10.1.0.999\"]",
            "probe.targets[1]",
            "not an IPv4 or IPv6",
        ),
        (
            "\"10.1.0.11\"]",
            "\"10.1.0.10\"]",
            "probe.targets[1]",
            "twice",
        ),
        (
            "\"10.1.0.11\"]",
            "\"224.0.0.1\"]",
            "probe.targets[1]",
            "unicast",
        ),
        (
            "\"10.1.0.11\"]",
            "\"169.254.10.1\"]",
            "probe.targets[1]",
            "link-local (169.254.0.0/16)",
        ),
        (
            "\"10.1.0.11\"]",
            "\"fe80::1\"]",
            "probe.targets[1]",
            "link-local (fe80::/10)",
        ),
        (
            "\"10.1.0.11\"]",
            "\"::ffff:10.1.0.11\"]",
            "probe.targets[1]",
            "write it as IPv4, 10.1.0.11",
        ),
        (
            "timeout = \"800ms\"",
            "timeout = \"2s\"",
            "probe.timeout",
            "longer than probe.interval",
        ),
        // No margin at all: the last echo could be answered after the next round began.
        (
            "timeout = \"800ms\"",
            "timeout = \"1s\"",
            "probe.timeout",
            "less than 10 % of probe.interval (1s) free: at most 900ms",
        ),
        (
            "timeout = \"800ms\"",
            "timeout = \"901ms\"",
            "probe.timeout",
            "at most 900ms",
        ),
        (
            "interval = \"1s\"",
            "interval = \"1ms\"",
            "probe.interval",
            "at least 10ms",
        ),
        (
            "interval = \"1s\"",
            "interval = \"11s\"",
            "probe.interval",
            "at most 10s: the agent pings systemd's watchdog once per round",
        ),
        (
            "api_timeout = \"10s\"",
            "api_timeout = \"301s\"",
            "aws.api_timeout",
            "at most 5m",
        ),
        (
            "hold_down = \"60s\"",
            "hold_down = \"8days\"",
            "failover.hold_down",
            "at most 7days",
        ),
        (
            "resync_interval = \"30s\"",
            "resync_interval = \"61m\"",
            "failover.resync_interval",
            "at most 1h",
        ),
        (
            "flap_window = \"1h\"",
            "flap_window = \"31days\"",
            "failover.flap_window",
            "at most 30days",
        ),
        ("count = 3", "count = 0", "probe.count", "between 1 and 100"),
        (
            "min_replies = 1",
            "min_replies = 4",
            "probe.min_replies",
            "probe.count (3)",
        ),
        (
            "quorum = 2",
            "quorum = 3",
            "probe.quorum",
            "number of targets (2)",
        ),
        ("fall = 3", "fall = 0", "failover.fall", "at least 1"),
        ("rise = 10", "rise = 0", "failover.rise", "at least 1"),
        (
            "resync_interval = \"30s\"",
            "resync_interval = \"100ms\"",
            "failover.resync_interval",
            "at least 1s",
        ),
        (
            "region = \"us-east-1\"",
            "region = \"US East\"",
            "aws.region",
            "region name",
        ),
        (
            "api_timeout = \"10s\"",
            "api_timeout = \"5ms\"",
            "aws.api_timeout",
            "at least 100ms",
        ),
        (
            "# own_subnet_id = \"subnet-0123456789abcdef0\"",
            "own_subnet_id = \"subnet-42\"",
            "aws.own_subnet_id",
            "subnet-0123456789abcdef0",
        ),
        (
            "# imds_endpoint = \"http://169.254.169.254\"",
            "imds_endpoint = \"169.254.169.254\"",
            "aws.imds_endpoint",
            "http://",
        ),
        (
            "# listen = \"127.0.0.1:9108\"",
            "listen = \"localhost\"",
            "metrics.listen",
            "address and port",
        ),
        (
            "destination = \"fd00:1::/48\"",
            "destination = \"fd00:1::/300\"",
            "routes[1].destination",
            "not a CIDR",
        ),
        (
            "destination = \"fd00:1::/48\"",
            "destination = \"fd00:1::1/48\"",
            "routes[1].destination",
            "host bits",
        ),
        (
            "destination = \"fd00:1::/48\"",
            "destination = \"10.1.0.0/16\"",
            "routes[1].destination",
            "already managed",
        ),
        (
            "target_eni = \"eni-0123456789abcdef0\"       #",
            "target_eni = \"eni-xyz\"       #",
            "routes[0].target_eni",
            "eni-0123456789abcdef0",
        ),
        (
            "route_table_id = \"rtb-0123456789abcdef0\"   #",
            "route_table_id = \"rtb-12\"   #",
            "routes[0].route_table_id",
            "not an id",
        ),
    ];
    for (from, to, key, reason) in cases {
        assert!(EXAMPLE.contains(from), "test case does not apply: {from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let e = error(&text);
        assert_eq!(e.key.as_deref(), Some(*key), "{to}: {e}");
        assert!(
            e.reason.contains(reason),
            "{to}: reason {:?} lacks {reason:?}",
            e.reason
        );
        let field = key.rsplit('.').next().unwrap().split('[').next().unwrap();
        let line = e.line.unwrap_or_else(|| panic!("{to}: no line in {e}"));
        let text_line = text.lines().nth(line - 1).unwrap();
        assert!(
            text_line.contains(field),
            "{to}: line {line} is {text_line:?}, not {field}"
        );
        let shown = e.to_string();
        assert!(
            shown.contains(key) && shown.contains("test.toml:"),
            "{shown}"
        );
    }
}

#[test]
fn missing_sections_and_empty_lists_are_refused() {
    let e = error("[aws]\nregion = \"us-east-1\"\n");
    assert!(e.reason.contains("probe"), "{e}");
    let e = error(&MINIMAL.replace("targets = [\"198.18.0.10\"]", "targets = []"));
    assert_eq!(e.key.as_deref(), Some("probe.targets"));
    let no_routes = MINIMAL.split("[[routes]]").next().unwrap();
    assert_eq!(error(no_routes).key.as_deref(), Some("routes"));
}

#[test]
fn an_unreadable_file_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/route-failover.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/route-failover.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn loopback_and_ordinary_targets_stay_allowed() {
    for targets in [
        "[\"127.0.0.1\", \"::1\"]",
        "[\"10.1.0.10\", \"fd00:1::10\"]",
        // Link-local's neighbours are ordinary addresses.
        "[\"169.253.255.255\", \"169.255.0.1\", \"fec0::1\", \"fe7f::1\"]",
    ] {
        let text = MINIMAL.replace("[\"198.18.0.10\"]", targets);
        let c = parse(&text).unwrap_or_else(|e| panic!("{targets}: {e}"));
        assert!(!c.probe.targets.is_empty());
    }
}

#[test]
fn each_duration_bound_is_inclusive() {
    let text = EXAMPLE
        .replace("interval = \"1s\"", "interval = \"10s\"")
        .replace("timeout = \"800ms\"", "timeout = \"9s\"")
        .replace("api_timeout = \"10s\"", "api_timeout = \"5m\"")
        .replace("hold_down = \"60s\"", "hold_down = \"7days\"")
        .replace("resync_interval = \"30s\"", "resync_interval = \"1h\"")
        .replace("flap_window = \"1h\"", "flap_window = \"30days\"");
    let c = parse(&text).expect("every maximum is allowed");
    assert_eq!(c.probe.interval, Duration::from_secs(10));
    assert_eq!(c.probe.timeout, Duration::from_secs(9));
    // The agent's timers add these to the clock and multiply the API
    // timeout by its attempts: at the maxima that stays far from overflow.
    let now = tokio::time::Instant::now();
    for d in [
        c.policy.hold_down,
        c.policy.flap_window,
        c.reconcile.resync_interval,
    ] {
        assert!(now.checked_add(d * 4).is_some());
    }
    assert!(c.aws.api_timeout.checked_mul(1000).is_some());
    // Exactly a 10 % margin.
    let text = EXAMPLE.replace("timeout = \"800ms\"", "timeout = \"900ms\"");
    assert_eq!(
        parse(&text).unwrap().probe.timeout,
        Duration::from_millis(900)
    );
    let text = EXAMPLE
        .replace("interval = \"1s\"", "interval = \"10ms\"")
        .replace("timeout = \"800ms\"", "timeout = \"9ms\"");
    assert!(parse(&text).is_ok());
}

/// Values large enough to overflow any arithmetic on them, in every
/// duration key: a clean error naming the key, never a panic.
#[test]
fn absurd_durations_are_refused_cleanly() {
    let keys: &[(&str, &str, &str)] = &[
        ("interval = \"1s\"", "interval", "probe.interval"),
        ("timeout = \"800ms\"", "timeout", "probe.timeout"),
        ("api_timeout = \"10s\"", "api_timeout", "aws.api_timeout"),
        ("hold_down = \"60s\"", "hold_down", "failover.hold_down"),
        (
            "resync_interval = \"30s\"",
            "resync_interval",
            "failover.resync_interval",
        ),
        (
            "flap_window = \"1h\"",
            "flap_window",
            "failover.flap_window",
        ),
    ];
    for (from, name, key) in keys {
        for absurd in [
            "1000000000y",
            "18446744073709551615s",
            "584942417355years",
            "99999999999999999999s",
        ] {
            let to = format!("{name} = \"{absurd}\"");
            let text = EXAMPLE.replacen(from, &to, 1);
            let e = std::panic::catch_unwind(|| parse(&text))
                .unwrap_or_else(|_| panic!("{to}: panicked"))
                .expect_err(&to);
            assert_names(&e, &text, &to, key, "");
        }
    }
}

#[test]
fn the_watchdog_allows_an_interval_of_a_third_of_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = EXAMPLE.replace("interval = \"1s\"", "interval = \"5s\"");
    std::fs::write(&path, &text).unwrap();
    let c = Config::load(&path).unwrap();
    assert!(c.check_watchdog(Duration::from_secs(30)).is_ok());
    assert!(
        c.check_watchdog(Duration::from_secs(15)).is_ok(),
        "exactly a third"
    );
    let e = c.check_watchdog(Duration::from_secs(14)).unwrap_err();
    let line = line_containing(&text, "interval = \"5s\"");
    assert_eq!(e.key.as_deref(), Some("probe.interval"));
    assert_eq!(e.line, Some(line));
    assert!(
        e.to_string().starts_with(&format!(
            "{}:{line}: probe.interval: 5s is longer than a third of systemd's watchdog timeout (14s",
            path.display()
        )),
        "{e}"
    );
    assert!(e.reason.contains("at most 4s 666ms"), "{e}");
}

#[test]
fn run_under_a_short_watchdog_exits_78_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        EXAMPLE.replace("backend = \"ec2\"", "backend = \"memory\""),
    )
    .unwrap();
    let locks = dir.path().join("run");
    std::fs::create_dir(&locks).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_route-failover"))
        .args(["run", "--config"])
        .arg(&path)
        // systemd's WatchdogSec=2s: a 1 s interval is more than a third of it.
        .env("WATCHDOG_USEC", "2000000")
        .env("RUNTIME_DIRECTORY", &locks)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let line = line_containing(
        &std::fs::read_to_string(&path).unwrap(),
        "interval = \"1s\"",
    );
    assert!(
        stderr.contains(&format!(
            "{}:{line}: probe.interval: 1s is longer than a third of systemd's watchdog timeout (2s",
            path.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "a lock was taken"
    );
}
