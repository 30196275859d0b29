//! `[backup]`: defaults, and precise errors (file:line: key: reason) with
//! the same rigour as `[probe]`.

use std::path::Path;
use std::time::Duration;

use route_failover::config::{Config, ConfigError};

fn with_backup(probe_extra: &str, backup: &str) -> String {
    format!(
        r#"
[probe]
targets = ["198.18.0.10", "198.18.0.11"]
{probe_extra}

[backup]
{backup}

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/route-failover/test.toml"))
}

fn error(probe_extra: &str, backup: &str) -> ConfigError {
    match parse(&with_backup(probe_extra, backup)) {
        Ok(c) => panic!("accepted an invalid [backup]: {:?}", c.backup),
        Err(e) => e,
    }
}

/// Asserts the error names `key`, the line holding `needle`, and `reason`.
fn assert_names(e: &ConfigError, text: &str, needle: &str, key: &str, reason: &str) {
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1;
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert!(e.reason.contains(reason), "{e}: reason lacks {reason:?}");
    let prefix = format!("/etc/route-failover/test.toml:{line}: {key}: ");
    assert!(e.to_string().starts_with(&prefix), "{e}");
}

#[test]
fn absent_means_unwatched() {
    let text = with_backup("", "").replace("[backup]", "");
    assert_eq!(parse(&text).unwrap().backup, None);
}

#[test]
fn defaults_follow_the_probe_section() {
    let c = parse(&with_backup(
        "count = 4\ntimeout = \"600ms\"",
        r#"targets = ["172.31.255.1", "10.9.0.1"]"#,
    ))
    .unwrap();
    let b = c.backup.expect("[backup] parsed");
    assert_eq!(b.targets.len(), 2);
    assert_eq!((b.count, b.timeout), (4, Duration::from_millis(600)));
    assert_eq!((b.round.min_replies, b.round.quorum), (1, 2));
    assert_eq!((b.fall, b.rise, b.required, b.source), (3, 3, true, None));
    // Its last echo still ends inside the shared round.
    assert!(b.spacing(c.probe.interval) * (b.count - 1) + b.timeout <= c.probe.interval);
    let p = b.policy();
    assert!(p.probed && p.required);
}

#[test]
fn an_empty_section_watches_the_appliance_alone() {
    let c = parse(&with_backup("", "required = false")).unwrap();
    let b = c.backup.unwrap();
    assert!(b.targets.is_empty());
    assert!(!b.policy().probed);
    assert!(!b.required);
}

#[test]
fn every_key_is_read() {
    let c = parse(&with_backup(
        "",
        r#"targets = ["10.9.0.1", "10.9.0.2", "10.9.0.3"]
count = 5
timeout = "300ms"
min_replies = 2
quorum = 2
fall = 4
rise = 6
required = false
source = "10.0.2.5""#,
    ))
    .unwrap();
    let b = c.backup.unwrap();
    assert_eq!(
        (b.count, b.timeout, b.round.min_replies, b.round.quorum),
        (5, Duration::from_millis(300), 2, 2)
    );
    assert_eq!((b.fall, b.rise, b.required), (4, 6, false));
    assert_eq!(b.source, Some("10.0.2.5".parse().unwrap()));
}

#[test]
fn each_error_names_its_key_line_and_reason() {
    let targets = r#"targets = ["10.9.0.1", "10.9.0.2"]"#;
    // (probe extra, [backup] body, needle, key, reason)
    let cases: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "",
            r#"targets = ["10.9.0.1", "10.9.0.999"]"#.into(),
            "10.9.0.999",
            "backup.targets[1]",
            "not an IPv4 or IPv6 address",
        ),
        (
            "",
            r#"targets = ["10.9.0.1", "10.9.0.1"]"#.into(),
            "\"10.9.0.1\", \"10.9.0.1\"",
            "backup.targets[1]",
            "listed twice",
        ),
        (
            "",
            r#"targets = ["198.18.0.11"]"#.into(),
            "targets = [\"198.18.0.11\"]",
            "backup.targets[0]",
            "also in probe.targets",
        ),
        (
            "",
            r#"targets = ["169.254.100.1"]"#.into(),
            "169.254.100.1",
            "backup.targets[0]",
            "link-local",
        ),
        (
            "",
            r#"targets = ["224.0.0.1"]"#.into(),
            "224.0.0.1",
            "backup.targets[0]",
            "unicast",
        ),
        (
            "",
            format!("{targets}\ncount = 0"),
            "count = 0",
            "backup.count",
            "between 1 and 100",
        ),
        (
            "",
            format!("{targets}\ntimeout = \"950ms\""),
            "timeout = \"950ms\"",
            "backup.timeout",
            "less than 10 % of probe.interval",
        ),
        (
            "",
            format!("{targets}\ntimeout = \"0s\""),
            "timeout = \"0s\"",
            "backup.timeout",
            "greater than zero",
        ),
        (
            "",
            format!("{targets}\nmin_replies = 4"),
            "min_replies = 4",
            "backup.min_replies",
            "between 1 and backup.count (3)",
        ),
        (
            "",
            format!("{targets}\nquorum = 3"),
            "quorum = 3",
            "backup.quorum",
            "number of backup targets (2)",
        ),
        (
            "",
            format!("{targets}\nfall = 0"),
            "fall = 0",
            "backup.fall",
            "at least 1",
        ),
        (
            "",
            format!("{targets}\nrise = 0"),
            "rise = 0",
            "backup.rise",
            "at least 1",
        ),
        (
            "",
            format!("{targets}\nsource = \"eth1\""),
            "source = ",
            "backup.source",
            "not an IPv4 or IPv6 address",
        ),
        (
            "",
            format!("{targets}\nsource = \"0.0.0.0\""),
            "source = ",
            "backup.source",
            "unicast address of one of this instance's interfaces",
        ),
        (
            "",
            r#"targets = ["10.9.0.1", "fd00:9::1"]
source = "10.0.2.5""#
                .into(),
            "fd00:9::1",
            "backup.targets[1]",
            "different address families",
        ),
        (
            "",
            "count = 2".into(),
            "count = 2",
            "backup.count",
            "only applies with backup.targets",
        ),
        (
            "",
            "rise = 2".into(),
            "rise = 2",
            "backup.rise",
            "only applies with backup.targets",
        ),
        (
            "",
            "source = \"10.0.2.5\"".into(),
            "source = ",
            "backup.source",
            "only applies with backup.targets",
        ),
        (
            "detector = \"silence\"",
            targets.into(),
            "targets = [\"10.9",
            "backup.targets",
            "probe.detector = \"silence\"",
        ),
    ];
    for (probe, backup, needle, key, reason) in cases {
        let text = with_backup(probe, &backup);
        let e = error(probe, &backup);
        assert_names(&e, &text, needle, key, reason);
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused() {
    let e = error("", "tagrets = [\"10.9.0.1\"]");
    assert!(e.to_string().contains("tagrets"), "{e}");
    let e = error("", "required = \"yes\"");
    assert_eq!(e.key.as_deref(), Some("backup.required"), "{e}");
}

#[test]
fn the_silence_detector_may_still_watch_the_appliance() {
    let c = parse(&with_backup("detector = \"silence\"", "")).unwrap();
    assert!(c.backup.is_some_and(|b| b.targets.is_empty()));
}

#[test]
fn the_example_watches_the_appliance_and_holds_failovers_onto_a_dead_one() {
    let c = parse(include_str!("../config.example.toml")).expect("the example is valid");
    let b = c.backup.expect("the example has [backup]");
    // No placeholder targets: an address nobody edited would hold every failover.
    assert!(b.targets.is_empty());
    assert!(b.required);
    assert_eq!((b.fall, b.rise), (3, 3));
    assert!(c.reconcile.failback_requires_dx_route);
}

/// A reload keeps the prober only while it would probe the same way. Its
/// early stop follows `min_replies`, so a changed round rule (of either
/// group) needs a new prober; `fall` and `rise` are the judge's alone.
#[test]
fn a_reload_keeps_the_prober_only_for_the_same_probing() {
    let base = parse(&with_backup("", "targets = [\"172.31.255.1\"]\ncount = 3")).unwrap();
    let with = |probe: &str, backup: &str| {
        parse(&with_backup(
            probe,
            &format!("targets = [\"172.31.255.1\"]\ncount = 3\n{backup}"),
        ))
        .unwrap()
    };
    assert!(base.same_probing(&base));
    assert!(base.same_probing(&with("", "fall = 5\nrise = 7")));
    assert!(!base.same_probing(&with("", "min_replies = 2")));
    assert!(!base.same_probing(&with("min_replies = 2", "")));
    assert!(!base.same_probing(&with("early_stop = false", "")));
    let two = parse(&with_backup("", "targets = [\"172.31.255.1\"]\ncount = 2")).unwrap();
    assert!(!base.same_probing(&two));
    let without = parse(&with_backup("", "")).unwrap();
    assert!(!base.same_probing(&without));
}
