//! `[ha]`: defaults, the example, and precise errors (file:line: key: reason).

use std::path::Path;
use std::time::Duration;

use route_failover::config::{Config, ConfigError};

const EXAMPLE: &str = include_str!("../config.example.toml");

fn with_ha(backend: &str, ha: &str) -> String {
    format!(
        r#"
[aws]
backend = "{backend}"

[probe]
targets = ["198.18.0.10"]

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"

[ha]
{ha}
"#
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/route-failover/test.toml"))
}

fn error(backend: &str, ha: &str) -> String {
    match parse(&with_ha(backend, ha)) {
        Ok(c) => panic!("accepted an invalid [ha]: {:?}", c.ha),
        Err(e) => e.to_string(),
    }
}

#[test]
fn absent_means_one_agent_and_defaults_follow_the_heartbeat() {
    assert!(parse(EXAMPLE).unwrap().ha.is_none());
    let c = parse(&with_ha("ec2", "")).unwrap();
    let ha = c.ha.unwrap();
    // On EC2 the id comes from instance metadata at startup.
    assert_eq!(ha.agent_id, None);
    assert_eq!(ha.heartbeat, Duration::from_secs(10));
    assert_eq!(ha.peer_timeout, Duration::from_secs(30));
    // The anchor defaults to the first managed route's table.
    assert_eq!(ha.anchor, "rtb-0123456789abcdef0");
    assert!(!ha.anchor_set);
    assert_eq!(ha.forget_after, Duration::from_secs(24 * 3600));
    let c = parse(&with_ha(
        "memory",
        "agent_id = \"monitor-a\"\nheartbeat = \"5s\"",
    ))
    .unwrap();
    let ha = c.ha.unwrap();
    assert_eq!(ha.agent_id.as_deref(), Some("monitor-a"));
    assert_eq!(ha.peer_timeout, Duration::from_secs(15));
}

#[test]
fn the_commented_example_is_valid() {
    let text = EXAMPLE
        .replace("# [ha]", "[ha]")
        .replace("# agent_id = ", "agent_id = ")
        .replace("# heartbeat = ", "heartbeat = ")
        .replace("# peer_timeout = ", "peer_timeout = ")
        .replace("# anchor = ", "anchor = ")
        .replace("# forget_after = ", "forget_after = ");
    let ha = parse(&text).expect("the [ha] example is valid").ha.unwrap();
    assert_eq!(ha.agent_id.as_deref(), Some("monitor-a"));
    assert_eq!(ha.peer_timeout, Duration::from_secs(30));
    assert_eq!(ha.anchor, "rtb-0123456789abcdef0");
    assert!(ha.anchor_set);
    assert_eq!(ha.forget_after, Duration::from_secs(24 * 3600));
}

/// Two managed tables; `[ha]` last.
fn two_tables(ha: &str) -> String {
    with_ha("ec2", ha).replace(
        "[ha]",
        "[[routes]]\nroute_table_id = \"rtb-0fedcba9876543210\"\ndestination = \"10.1.0.0/16\"\n\
         target_eni = \"eni-0123456789abcdef0\"\n\n[ha]",
    )
}

#[test]
fn the_anchor_is_explicit_and_must_be_a_managed_table() {
    // A rolling change that reorders routes keeps the anchor where it was.
    let c = parse(&two_tables("anchor = \"rtb-0fedcba9876543210\"")).unwrap();
    let ha = c.ha.unwrap();
    assert_eq!(ha.anchor, "rtb-0fedcba9876543210");
    assert!(ha.anchor_set);
    let file = "/etc/route-failover/test.toml";
    let e = parse(&two_tables("anchor = \"rtb-0aaaaaaaaaaaaaaa0\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{file}:19: ha.anchor: \"rtb-0aaaaaaaaaaaaaaa0\" is not a managed route table: \
             use one of rtb-0123456789abcdef0, rtb-0fedcba9876543210"
        )),
        "{e}"
    );
}

#[test]
fn forget_after_defaults_to_a_day_and_must_exceed_peer_timeout() {
    let file = "/etc/route-failover/test.toml";
    let c = parse(&with_ha("ec2", "forget_after = \"1h\"")).unwrap();
    assert_eq!(c.ha.unwrap().forget_after, Duration::from_secs(3600));
    let e = error("ec2", "peer_timeout = \"60s\"\nforget_after = \"60s\"");
    assert!(
        e.starts_with(&format!(
            "{file}:15: ha.forget_after: 1m must exceed ha.peer_timeout (1m)"
        )),
        "{e}"
    );
    let e = error("ec2", "forget_after = \"40d\"");
    assert!(
        e.starts_with(&format!("{file}:14: ha.forget_after: "))
            && e.contains("is too long: at most 30days"),
        "{e}"
    );
}

#[test]
fn errors_name_the_file_line_and_key() {
    let file = "/etc/route-failover/test.toml";
    // Off EC2 there is no instance id to default to: the section's line.
    let e = error("memory", "");
    assert!(
        e.starts_with(&format!("{file}:13: ha.agent_id: required off EC2")),
        "{e}"
    );
    let e = error("ec2", "agent_id = \"a;b\"");
    assert!(
        e.starts_with(&format!("{file}:14: ha.agent_id: \"a;b\" may hold only")),
        "{e}"
    );
    let e = error("ec2", "heartbeat = \"500ms\"");
    assert!(
        e.starts_with(&format!("{file}:14: ha.heartbeat: must be at least 1s")),
        "{e}"
    );
    let e = error("ec2", "heartbeat = \"10s\"\npeer_timeout = \"12s\"");
    assert!(
        e.starts_with(&format!(
            "{file}:15: ha.peer_timeout: 12s must exceed the heartbeat plus the clock-skew tolerance (12s)"
        )),
        "{e}"
    );
    let e = error("ec2", "peer_timeout = \"2h\"");
    assert!(
        e.starts_with(&format!("{file}:14: ha.peer_timeout: 2h is too long")),
        "{e}"
    );
    let e = error("ec2", "agent = \"x\"");
    assert!(e.contains("unknown field `agent`"), "{e}");
}

#[test]
fn exactly_heartbeat_plus_skew_is_refused_one_second_more_allowed() {
    assert!(parse(&with_ha("ec2", "heartbeat = \"1s\"\npeer_timeout = \"3s\"")).is_err());
    let c = parse(&with_ha("ec2", "heartbeat = \"1s\"\npeer_timeout = \"4s\"")).unwrap();
    assert_eq!(c.ha.unwrap().peer_timeout, Duration::from_secs(4));
}

#[test]
fn run_with_an_anchor_that_is_not_managed_exits_78_before_touching_anything() {
    let text = two_tables("agent_id = \"monitor-a\"\nanchor = \"rtb-0aaaaaaaaaaaaaaa0\"")
        .replace("backend = \"ec2\"", "backend = \"memory\"");
    exits_78(
        &text,
        "20: ha.anchor: \"rtb-0aaaaaaaaaaaaaaa0\" is not a managed route table",
    );
}

#[test]
fn run_without_an_agent_id_off_ec2_exits_78_before_touching_anything() {
    exits_78(
        &with_ha("memory", "heartbeat = \"10s\""),
        "13: ha.agent_id: required off EC2",
    );
}

fn exits_78(text: &str, at_line: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let locks = dir.path().join("run");
    std::fs::create_dir(&locks).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_route-failover"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUNTIME_DIRECTORY", &locks)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:{at_line}", path.display())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "a lock was taken"
    );
}

#[test]
fn check_names_the_anchor_and_our_tag_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, with_ha("memory", "agent_id = \"monitor-a\"")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_route-failover"))
        .args(["check", "--config"])
        .arg(&path)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(
            "✓ [ha]: verdicts on rtb-0123456789abcdef0 (the first managed table; set ha.anchor to \
             pin it), ours as route-failover:verdict:monitor-a"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("! [ha]: no verdict published yet"),
        "{stdout}"
    );
    for op in ["CreateTags", "DeleteTags"] {
        assert!(
            stdout.contains(&format!(
                "✓ IAM allows {op} of route-failover:verdict:monitor-a on rtb-0123456789abcdef0"
            )),
            "{stdout}"
        );
    }
}
