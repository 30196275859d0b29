//! The shipped unit file: valid for systemd, hardened, and least-privileged.

use std::process::Command;

#[path = "common/gate.rs"]
mod gate;

const UNIT: &str = include_str!("../systemd/route-failover.service");
const BIN: &str = env!("CARGO_BIN_EXE_route-failover");

fn directives(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn the_unit_is_notify_with_watchdog_and_only_cap_net_raw() {
    assert_eq!(directives("Type"), ["notify"]);
    assert_eq!(directives("WatchdogSec").len(), 1);
    assert_eq!(directives("AmbientCapabilities"), ["CAP_NET_RAW"]);
    assert_eq!(directives("CapabilityBoundingSet"), ["CAP_NET_RAW"]);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
        ("RuntimeDirectory", "route-failover"),
    ] {
        assert_eq!(directives(key), [value], "{key}");
    }
    assert!(directives("SystemCallFilter").contains(&"@system-service"));
    assert_eq!(directives("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
}

fn analyze(test: &str) -> Option<tempfile::TempDir> {
    if !gate::require_tool(test, "systemd-analyze") {
        return None;
    }
    // Point the unit at the binary just built: verify checks that it exists.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("route-failover.service"),
        UNIT.replace("/usr/bin/route-failover", BIN),
    )
    .unwrap();
    // Documentation= names man:route-failover(1), which verify looks up:
    // the pages the binary generates for the packages, found via MANPATH.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let out = Command::new(BIN).arg("man").arg(&man1).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    Some(dir)
}

#[test]
fn systemd_analyze_verify_passes() {
    let Some(dir) = analyze("systemd_analyze_verify_passes") else {
        return;
    };
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("route-failover.service"))
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn systemd_analyze_security_rates_it_ok_or_better() {
    let Some(dir) = analyze("systemd_analyze_security_rates_it_ok_or_better") else {
        return;
    };
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(dir.path().join("route-failover.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rfind(|l| l.contains("Overall exposure level"))
        .expect("a rating");
    let score: f64 = last
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a score");
    eprintln!("{last}");
    // systemd rates 0-2 "OK"; the README records the figure.
    assert!(score <= 2.0, "{last}");
}
