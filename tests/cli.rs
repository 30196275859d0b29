//! The `route-failover` binary as an operator uses it.

#[path = "common/gate.rs"]
mod gate;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_route-failover");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("runs the binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The example config switched to the in-memory backend, written to a temp file.
fn memory_config(extra_replace: Option<(&str, &str)>) -> tempfile::NamedTempFile {
    let mut text = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace("backend = \"ec2\"", "backend = \"memory\"");
    if let Some((from, to)) = extra_replace {
        assert!(text.contains(from));
        text = text.replace(from, to);
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn help_is_there_for_every_command() {
    for cmd in ["run", "check", "status", "plan", "demo"] {
        let out = run(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(text(&out.stdout).contains("Usage: route-failover"), "{cmd}");
    }
}

#[test]
fn offline_check_accepts_the_example() {
    let out = run(&["check", "--offline", "--config", EXAMPLE]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 targets, 2 managed routes in 1 route tables"));
}

#[test]
fn an_invalid_config_exits_78_naming_file_line_key_and_reason() {
    let bad = memory_config(Some((
        "destination = \"10.1.0.0/16\"",
        "destination = \"10.1.0.0/33\"",
    )));
    let path = bad.path().to_str().unwrap();
    for cmd in [
        &["check", "--offline"][..],
        &["run"],
        &["run", "--dry-run"],
        &["status"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--config", path]);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(78), "{cmd:?}");
        let err = text(&out.stderr);
        let line = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .position(|l| l.contains("10.1.0.0/33"))
            .unwrap()
            + 1;
        assert!(
            err.contains(&format!(
                "{path}:{line}: routes[0].destination: \"10.1.0.0/33\" is not a CIDR"
            )),
            "{cmd:?}: {err}"
        );
        assert!(
            text(&out.stdout).is_empty(),
            "{cmd:?} printed before failing"
        );
    }
}

#[test]
fn online_check_status_and_plan_work_against_the_memory_backend() {
    let cfg = memory_config(None);
    let path = cfg.path().to_str().unwrap();

    let out = run(&["check", "--config", path]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("✓ route table rtb-0123456789abcdef0 exists"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ network interface eni-0123456789abcdef0 exists"),
        "{stdout}"
    );
    // ReplaceRoute too without takeover: retargeting and restoring use it.
    for op in ["CreateRoute", "DeleteRoute", "ReplaceRoute"] {
        let row = format!("✓ IAM allows {op} on rtb-0123456789abcdef0");
        assert!(stdout.contains(&row), "{stdout}");
    }
    assert!(stdout.contains("! own subnet unknown"), "{stdout}");

    let out = run(&["status", "--config", path]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches(" absent").count(), 2, "{stdout}");
    assert!(stdout.contains("path implied by the route tables: Primary"));

    let out = run(&["plan", "--config", path, "--path", "backup"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "aws ec2 create-route --route-table-id rtb-0123456789abcdef0 --destination-cidr-block 10.1.0.0/16 --network-interface-id eni-0123456789abcdef0 --region us-east-1",
            "aws ec2 create-route --route-table-id rtb-0123456789abcdef0 --destination-ipv6-cidr-block fd00:1::/48 --network-interface-id eni-0123456789abcdef0 --region us-east-1",
        ]
    );
    let out = run(&["plan", "--config", path, "--path", "primary"]);
    assert!(text(&out.stdout).contains("nothing to do"));
}

#[test]
fn the_demo_shows_a_failover_and_a_failback_and_exits_0() {
    let out = run(&["demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("SCRIPTED probe source"));
    assert_eq!(
        stdout.matches(">>> TRANSITION Primary -> Backup").count(),
        1,
        "{stdout}"
    );
    assert_eq!(
        stdout.matches(">>> TRANSITION Backup -> Primary").count(),
        1,
        "{stdout}"
    );
    assert!(stdout.contains("1 failover(s), 1 failback(s)"));
    assert!(stdout.contains("drift repaired: yes"));
}

#[test]
fn run_probes_loopback_changes_nothing_and_stops_cleanly_on_sigterm() {
    if !gate::require_root(
        "run_probes_loopback_changes_nothing_and_stops_cleanly_on_sigterm",
        "ICMP sockets",
    ) {
        return;
    }
    // Loopback targets only: this test must never send a packet off the machine.
    let cfg = memory_config(Some((
        "targets = [\"10.1.0.10\", \"10.1.0.11\"]",
        "targets = [\"127.0.0.1\", \"::1\"]\ninterval = \"100ms\"\ntimeout = \"50ms\"\n#",
    )));
    let text_cfg = std::fs::read_to_string(cfg.path()).unwrap();
    let text_cfg =
        text_cfg
            .replacen("interval = \"1s\"", "", 1)
            .replacen("timeout = \"800ms\"", "", 1);
    std::fs::write(cfg.path(), text_cfg).unwrap();
    // The lock and the control socket in a directory of its own.
    let runtime = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args(["run", "--dry-run", "--config", cfg.path().to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .env("RUNTIME_DIRECTORY", runtime.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        text(&out.stdout).is_empty(),
        "a healthy loopback path produced route changes"
    );
    assert!(stderr.contains("adopted the path"), "{stderr}");
    assert!(stderr.contains("0/2 targets down"), "{stderr}");
    assert!(
        !stderr.contains("DOWN") && !stderr.contains("up=false"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SIGTERM: stopping") && stderr.contains("routes left as they are"),
        "{stderr}"
    );
}
