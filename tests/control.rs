//! The control socket and `route-failover ctl`, end to end against the
//! running binary with the in-memory backend: status, maintenance failover
//! and release, a hold and a pause across a restart, a pause while the
//! probes go down, socket permissions and the caller's uid. The agent's
//! ICMP probes need root (loopback targets, or a target in a network
//! namespace this test creates); without root those tests are skipped, and
//! fail when `CI` is set.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/process.rs"]
mod process;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use process::Agent;
use route_failover::config::Config;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_route-failover");

/// The uid and gid of `nobody` / `nogroup` on Debian: a caller that is not root.
const NOBODY: u32 = 65534;

/// Whether a test that runs the agent may go on: it needs root for ICMP
/// sockets and namespaces. Under CI a missing prerequisite is a failure.
fn root(test: &str) -> bool {
    gate::require_root(test, "needs root for ICMP sockets and network namespaces")
}

/// A fast config with the memory backend; `targets` are loopback or in a
/// test namespace.
fn config_text(targets: &str, extra_failover: &str, control: &str) -> String {
    format!(
        r#"[aws]
backend = "memory"

[probe]
targets = [{targets}]
interval = "100ms"
timeout = "50ms"
count = 2

[failover]
fall = 2
rise = 3
hold_down = "0s"
{extra_failover}

[control]
{control}

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    )
}

const LOOPBACK: &str = r#""127.0.0.1", "::1""#;

/// A directory of the test's own, open to other users (the permission
/// tests run `ctl` as `nobody`), with the config in it.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Where the agent listens by default: `$RUNTIME_DIRECTORY/control.sock`.
    fn default_socket(&self) -> PathBuf {
        process::runtime_dir(&self.config()).join("control.sock")
    }

    fn start(&self) -> Agent {
        Agent::start(&self.config())
    }

    /// A hard link to the binary that `nobody` can reach and run (the
    /// checkout's own path may be closed to it).
    fn binary_for_anyone(&self) -> PathBuf {
        let bin = self.dir.path().join("route-failover");
        if !bin.exists() && std::fs::hard_link(BIN, &bin).is_err() {
            std::fs::copy(BIN, &bin).unwrap();
        }
        bin
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `route-failover ctl --socket SOCKET ARGS…` as root.
fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// The same, as uid `uid` in group `gid` only.
fn ctl_as(bin: &Path, uid: u32, gid: u32, socket: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
        ])
        .arg(bin)
        .args(["ctl", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn status_json(socket: &Path) -> Value {
    let out = ok(&ctl(socket, &["--json", "status"]));
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(answer["result"], "status", "{answer}");
    answer["status"].clone()
}

/// Polls `ctl status --json` until `pred` holds.
async fn wait_status(
    socket: &Path,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = status_json(socket);
        if pred(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {within:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn ctl_help_lists_every_command_and_its_exit_codes() {
    let out = Command::new(BIN).args(["ctl", "--help"]).output().unwrap();
    let help = ok(&out);
    for needle in [
        "status", "failover", "hold", "release", "failback", "pause", "resume", "--socket",
        "--json", "69", "75", "76", "77",
    ] {
        assert!(help.contains(needle), "missing {needle} in\n{help}");
    }
    // A failover the probes would undo at once is not offered.
    let out = Command::new(BIN)
        .args(["ctl", "failover"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--hold"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctl_says_why_it_cannot_ask_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");

    let out = ctl(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(69));
    let err = text(&out.stderr);
    assert!(
        err.contains("no control socket at")
            && err.contains("not running")
            && err.contains("--socket"),
        "{err}"
    );
    let out = ctl(&socket, &["--json", "hold"]);
    assert_eq!(out.status.code(), Some(69));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["kind"], "no-socket", "{answer}");

    // Left by an agent that crashed: nothing answers.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let out = ctl(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        text(&out.stderr).contains("nothing answers"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ctl_says_permission_denied_and_how_to_fix_it() {
    if !root("ctl_says_permission_denied_and_how_to_fix_it") {
        return;
    }
    let f = Fixture::new("");
    let socket = f.dir.path().join("control.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let out = ctl_as(&f.binary_for_anyone(), NOBODY, NOBODY, &socket, &["status"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("permission denied")
            && err.contains("[control] group")
            && err.contains("sudo"),
        "{err}"
    );
}

#[test]
fn the_control_section_is_checked_with_file_line_and_key() {
    let parse = |control: &str| {
        Config::parse(&config_text(LOOPBACK, "", control), Path::new("c.toml"))
            .map(|c| c.control)
            .map_err(|e| e.to_string())
    };
    let none = parse("").unwrap();
    assert_eq!((none.socket, none.group), (None, None));
    let set = parse("socket = \"/run/rf/ctl.sock\"\ngroup = \"0\"").unwrap();
    assert_eq!(set.socket.as_deref(), Some(Path::new("/run/rf/ctl.sock")));
    assert_eq!(set.group.unwrap().gid, 0);

    let e = parse("group = \"no-such-group-rf\"").unwrap_err();
    assert!(
        e.starts_with("c.toml:17: control.group: no group \"no-such-group-rf\" on this host")
            && e.contains("groupadd --system no-such-group-rf"),
        "{e}"
    );
    let e = parse("socket = \"run/ctl.sock\"").unwrap_err();
    assert!(
        e.starts_with("c.toml:17: control.socket:") && e.contains("absolute"),
        "{e}"
    );
    let long = format!("socket = \"/{}\"", "x".repeat(120));
    let e = parse(&long).unwrap_err();
    assert!(e.contains("at most 107"), "{e}");
    let e = parse("sockets = \"/x\"").unwrap_err();
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn the_agent_refuses_a_socket_that_another_process_answers_on() {
    // No probing needed: the socket is set up before anything else.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let f = Fixture::new(&config_text(
        LOOPBACK,
        "",
        &format!("socket = \"{}\"", socket.display()),
    ));
    let _other = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (status, logs) = f.start().wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let logs = format!("{logs:?}");
    assert!(
        logs.contains("another process answers on the control socket")
            && logs.contains("[control] socket"),
        "{logs}"
    );
    assert!(socket.exists(), "removed another process's socket");

    // Nor does it replace a file that is not a socket.
    drop(_other);
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "keep me").unwrap();
    let (status, logs) = f.start().wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{logs:?}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "keep me");
}

#[tokio::test]
async fn status_shows_the_live_view_in_text_and_json() {
    if !root("status_shows_the_live_view_in_text_and_json") {
        return;
    }
    let f = Fixture::new(&config_text(LOOPBACK, "", ""));
    let socket = f.default_socket();
    // A socket left behind by a crash is replaced.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

    let agent = f.start();
    agent
        .wait_log("route tables converged", Duration::from_secs(10))
        .await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "{:o}", meta.mode());

    let s = wait_status(
        &socket,
        "a full window of rounds",
        Duration::from_secs(5),
        |s| s["probes"]["targets"][0]["rounds"] == 10,
    )
    .await;
    assert_eq!(s["agent"]["pid"], agent.pid(), "{s:#}");
    assert_eq!(s["agent"]["dry_run"], false);
    assert!(s["agent"]["prober"].as_str().unwrap().starts_with("icmp"));
    assert_eq!(s["path"], "Primary");
    assert!(s["why"].as_str().unwrap().contains("DX answers"), "{s:#}");
    let m = &s["state_machine"];
    assert_eq!(
        (m["verdict"].as_str(), m["phase"].as_str()),
        (Some("Primary"), Some("settled"))
    );
    assert_eq!((m["fall"].as_u64(), m["rise"].as_u64()), (Some(2), Some(3)));
    assert_eq!(m["down_streak"], 0);
    assert!(m["up_streak"].as_u64().unwrap() >= 3);
    assert_eq!(m["pinned"], false);
    assert_eq!(s["routes"]["converged"], true);
    assert_eq!(s["routes"]["tables_read"], true);
    assert_eq!(s["routes"]["adoption"], "Primary");
    assert_eq!(s["operator"]["hold"], Value::Null);
    assert_eq!(s["operator"]["paused"], false);
    assert_eq!(s["last_transition"], Value::Null);
    assert_eq!(s["last_api_error"], Value::Null);
    assert_eq!(s["backup"]["state"], "not watched");
    assert_eq!(s["probes"]["window"], 10);
    let targets = s["probes"]["targets"].as_array().unwrap();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["127.0.0.1", "::1"]);
    for t in targets {
        assert_eq!(
            (t["up"].as_bool(), t["up_rounds"].as_u64()),
            (Some(true), Some(10)),
            "{t}"
        );
        assert_eq!(t["loss_ratio"], 0.0, "{t}");
        let (min, avg, max) = (
            t["rtt_min_ms"].as_f64().unwrap(),
            t["rtt_avg_ms"].as_f64().unwrap(),
            t["rtt_max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < min && min <= avg && avg <= max && max < 50.0, "{t}");
    }
    assert!(s["probes"]["last_round"]["number"].as_u64().unwrap() >= 10);
    assert_eq!(s["peers"], Value::Null);

    let human = ok(&ctl(&socket, &["status"]));
    for needle in [
        &format!("pid {}", agent.pid())[..],
        "path:            Primary: the primary path's health decides: DX answers",
        "state machine:   Primary (settled); down 0 of 2 (fall)",
        "routes:          converged",
        "last transition: none since start",
        "last API error:  none since start",
        "backup path:     not watched",
        "targets, over the last 10 rounds",
        "127.0.0.1",
        "::1",
        "peers:",
    ] {
        assert!(human.contains(needle), "missing {needle:?} in\n{human}");
    }
    assert!(!human.contains("!!!"), "nothing needs attention:\n{human}");

    assert!(agent.terminate().success());
    assert!(!socket.exists(), "the socket outlived a clean exit");
}

#[tokio::test]
async fn maintenance_failover_holds_backup_until_released_and_logs_who_asked() {
    if !root("maintenance_failover_holds_backup_until_released_and_logs_who_asked") {
        return;
    }
    // The operators' group: `nobody` in `nogroup` may use the socket.
    let f = Fixture::new(&config_text(LOOPBACK, "", &format!("group = \"{NOBODY}\"")));
    let socket = f.default_socket();
    let agent = f.start();
    agent
        .wait_log("route tables converged", Duration::from_secs(10))
        .await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (NOBODY, 0o660));

    let bin = f.binary_for_anyone();
    let out = ctl_as(&bin, NOBODY, NOBODY, &socket, &["failover", "--hold"]);
    assert!(ok(&out).contains("holding Backup until `ctl release`"));
    let t = agent.wait_log("transition", Duration::from_secs(5)).await;
    assert_eq!(
        (t["from"].as_str(), t["to"].as_str()),
        (Some("Primary"), Some("Backup")),
        "{t}"
    );
    assert_eq!(t["reason"], "an operator holds Backup", "{t}");
    let action = agent
        .wait_log("operator action", Duration::from_secs(1))
        .await;
    assert_eq!(action["by"], format!("uid {NOBODY}"), "{action}");
    assert_eq!(action["action"], "FailoverHold", "{action}");
    let change = agent
        .wait_log("route changed", Duration::from_secs(5))
        .await;
    assert_eq!(change["op"], "CreateRoute", "{change}");

    // A user outside the group may not.
    let out = ctl_as(&bin, NOBODY, 1, &socket, &["release"]);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));

    // DX stays healthy; Backup is held anyway.
    let s = wait_status(
        &socket,
        "convergence on Backup",
        Duration::from_secs(5),
        |s| s["routes"]["converged"] == true,
    )
    .await;
    assert_eq!(
        (s["path"].as_str(), s["operator"]["hold"].as_str()),
        (Some("Backup"), Some("Backup"))
    );
    assert_eq!(
        s["state_machine"]["verdict"], "Primary",
        "the probes still say DX is fine"
    );
    assert_eq!(s["last_transition"]["to"], "Backup");
    assert_eq!(s["operator"]["last_action"]["uid"], NOBODY);
    assert_eq!(s["operator"]["last_action"]["action"], "failover-hold");
    let human = ok(&ctl(&socket, &["status"]));
    assert!(
        human.contains("!!! OPERATOR HOLD: Backup is held")
            && human.contains("failover-hold by uid 65534"),
        "{human}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.lines("transition").len(), 1, "the hold did not hold");

    assert!(ok(&ctl(&socket, &["release"])).contains("released"));
    let back = agent
        .wait_lines("transition", 2, Duration::from_secs(5))
        .await;
    assert_eq!(back[1]["to"], "Primary", "{:?}", back);
    let changes = agent
        .wait_lines("route changed", 2, Duration::from_secs(5))
        .await;
    assert_eq!(changes[1]["op"], "DeleteRoute", "{changes:?}");
    let s = wait_status(
        &socket,
        "convergence on Primary",
        Duration::from_secs(5),
        |s| s["routes"]["converged"] == true && s["path"] == "Primary",
    )
    .await;
    assert_eq!(s["operator"]["hold"], Value::Null);
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn a_hold_and_a_pause_are_still_shown_after_a_restart() {
    if !root("a_hold_and_a_pause_are_still_shown_after_a_restart") {
        return;
    }
    let f = Fixture::new(&config_text(LOOPBACK, "", ""));
    let socket = f.default_socket();
    let agent = f.start();
    agent
        .wait_log("route tables converged", Duration::from_secs(10))
        .await;
    assert!(ok(&ctl(&socket, &["hold"])).contains("holding Primary"));
    assert!(ok(&ctl(&socket, &["pause"])).starts_with("paused"));
    assert!(agent.terminate().success());
    assert!(!socket.exists());

    let agent = f.start();
    agent
        .wait_log("restored an operator", Duration::from_secs(10))
        .await;
    agent
        .wait_log("control socket ready", Duration::from_secs(10))
        .await;
    let s = status_json(&socket);
    assert_eq!(s["operator"]["hold"], "Primary", "{s:#}");
    assert_eq!(s["operator"]["paused"], true, "{s:#}");
    let human = ok(&ctl(&socket, &["status"]));
    assert!(
        human.contains("!!! OPERATOR HOLD: Primary is held") && human.contains("!!! PAUSED"),
        "{human}"
    );
    // Paused: never converged, and it says why.
    let s = wait_status(&socket, "a paused pass", Duration::from_secs(5), |s| {
        s["routes"]["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("paused"))
    })
    .await;
    assert_eq!(s["routes"]["converged"], false);

    ok(&ctl(&socket, &["resume"]));
    ok(&ctl(&socket, &["release"]));
    let s = wait_status(&socket, "convergence", Duration::from_secs(5), |s| {
        s["routes"]["converged"] == true
    })
    .await;
    assert_eq!(
        (
            s["operator"]["hold"].clone(),
            s["operator"]["paused"].clone()
        ),
        (Value::Null, Value::Bool(false))
    );
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn pause_makes_no_route_call_while_the_probes_go_down() {
    if !root("pause_makes_no_route_call_while_the_probes_go_down") {
        return;
    }
    let net = netns::TargetNet::create(221);
    let f = Fixture::new(&config_text(&format!("\"{}\"", net.target_v4), "", ""));
    let socket = f.default_socket();
    let agent = f.start();
    agent
        .wait_log("route tables converged", Duration::from_secs(10))
        .await;
    assert!(ok(&ctl(&socket, &["pause"])).starts_with("paused"));

    // DX goes silent: the decision follows, the routes do not.
    net.blackhole(true);
    let t = agent.wait_log("transition", Duration::from_secs(5)).await;
    assert_eq!(t["to"], "Backup", "{t}");
    let would = agent.wait_log("would create", Duration::from_secs(5)).await;
    assert_eq!(would["mode"], "paused", "{would}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        agent.lines("route changed").is_empty(),
        "paused, yet it called: {:?}",
        agent.lines("route changed")
    );
    assert!(
        agent.lines("route tables converged").len() == 1,
        "paused, yet it converged"
    );
    let s = status_json(&socket);
    assert_eq!(s["path"], "Backup", "{s:#}");
    assert_eq!(s["operator"]["paused"], true);
    assert_eq!(s["routes"]["converged"], false);
    assert_eq!(
        s["routes"]["pending"],
        serde_json::json!(["create rtb-0123456789abcdef0 10.1.0.0/16 -> eni-0123456789abcdef0"])
    );
    assert!(s["state_machine"]["down_streak"].as_u64().unwrap() >= 2);
    let target = &s["probes"]["targets"][0];
    assert_eq!(
        (target["up"].as_bool(), target["target"].as_str()),
        (Some(false), Some(&net.target_v4[..]))
    );
    let human = ok(&ctl(&socket, &["status"]));
    assert!(
        human.contains("!!! PAUSED")
            && human.contains("NOT converged: paused by an operator")
            && human.contains("  would:         create rtb-0123456789abcdef0"),
        "{human}"
    );

    // Resumed: the failover is carried out at once.
    ok(&ctl(&socket, &["resume"]));
    let change = agent
        .wait_log("route changed", Duration::from_secs(5))
        .await;
    assert_eq!(change["op"], "CreateRoute", "{change}");
    wait_status(
        &socket,
        "convergence on Backup",
        Duration::from_secs(5),
        |s| s["routes"]["converged"] == true && s["path"] == "Backup",
    )
    .await;
    assert!(agent.terminate().success());
}

#[test]
fn the_unit_lets_the_operators_group_reach_the_socket_and_never_kills_on_chown() {
    let unit = include_str!("../systemd/route-failover.service");
    let directive = |key: &str| {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .collect::<Vec<_>>()
    };
    assert_eq!(directive("RuntimeDirectory"), ["route-failover"]);
    // Group members may enter the directory; others may not.
    assert_eq!(directive("RuntimeDirectoryMode"), ["0750"]);
    // chown is in @privileged, which the filter denies: an error, not SIGSYS.
    assert_eq!(directive("SystemCallErrorNumber"), ["EPERM"]);
    assert!(
        unit.contains("#   Group=route-failover-ops"),
        "the operators' group is documented"
    );
}
