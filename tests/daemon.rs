//! The daemon's production habits, on the real binary with the in-memory
//! backend and loopback targets (ICMP sockets need root: skipped otherwise):
//! one instance per config, SIGHUP reload, systemd notify, metrics.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use process::Agent;

/// A fast loopback-only config with the memory backend.
fn config_text(fall: u32, extra: &str) -> String {
    format!(
        r#"[aws]
backend = "memory"

[probe]
targets = ["127.0.0.1", "::1"]
interval = "100ms"
timeout = "50ms"
count = 1

[failover]
fall = {fall}
{extra}

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    )
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        Self { dir }
    }

    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("config.toml")
    }

    fn write(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// Locks go to the fixture's own directory.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("RUNTIME_DIRECTORY", self.dir.path().display().to_string())]
    }

    fn start(&self, extra: &[(&str, &str)]) -> Agent {
        let env = self.env();
        let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        Agent::start_with(&self.config(), "info", &all)
    }
}

fn skip_unless_root(test: &str) -> bool {
    !gate::require_root(test, "ICMP sockets need root or CAP_NET_RAW")
}

#[tokio::test]
async fn a_second_agent_with_the_same_config_refuses_to_start() {
    if skip_unless_root("a_second_agent_with_the_same_config_refuses_to_start") {
        return;
    }
    let f = Fixture::new(&config_text(3, ""));
    let first = f.start(&[]);
    first.wait_log("started", Duration::from_secs(10)).await;
    let second = f.start(&[]);
    let (status, logs) = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let text = format!("{logs:?}");
    assert!(
        text.contains(&format!(
            "another route-failover (pid {}) is already running",
            first.pid()
        )),
        "{text}"
    );
    assert!(first.terminate().success());
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_rejects_an_invalid_one() {
    if skip_unless_root("sighup_applies_a_valid_config_and_rejects_an_invalid_one") {
        return;
    }
    let f = Fixture::new(&config_text(3, ""));
    let mut agent = f.start(&[]);
    agent.wait_log("started", Duration::from_secs(10)).await;

    f.write(&config_text(3, "").replace("fall = 3", "fall = 0"));
    agent.signal("HUP");
    let rejected = agent
        .wait_log("reload rejected", Duration::from_secs(5))
        .await;
    let why = rejected["error"].as_str().unwrap();
    assert!(
        why.contains("failover.fall") && why.contains("at least 1"),
        "{why}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(agent.alive(), "an invalid reload stopped the agent");
    assert!(agent.lines("configuration reloaded").is_empty());

    f.write(&config_text(2, ""));
    agent.signal("HUP");
    agent
        .wait_log("configuration reloaded", Duration::from_secs(5))
        .await;
    assert!(agent.alive());
    assert!(agent.terminate().success());
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_status_and_stopping() {
    if skip_unless_root("systemd_hears_ready_watchdog_status_and_stopping") {
        return;
    }
    let f = Fixture::new(&config_text(3, ""));
    let socket_path = f.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let agent = f.start(&[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);

    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buf).expect("a notification");
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = messages
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1");
    let watchdog = messages
        .iter()
        .position(|m| m.contains("WATCHDOG=1"))
        .expect("WATCHDOG=1");
    assert!(ready < watchdog, "{messages:?}");
    // Ready as soon as probing runs, before the tables are read.
    assert!(
        messages[ready].contains("STATUS=probing; waiting for the EC2 API"),
        "{messages:?}"
    );
    assert!(
        messages[watchdog].contains("STATUS=path Primary; round"),
        "{messages:?}"
    );
    agent.wait_log("started", Duration::from_secs(5)).await;

    assert!(agent.terminate().success());
    let mut rest = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if rest.last().unwrap().contains("STOPPING=1") {
            break;
        }
    }
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "{rest:?}");
}

fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("metrics listener");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test]
async fn metrics_are_served_on_loopback_when_asked() {
    if skip_unless_root("metrics_are_served_on_loopback_when_asked") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let f = Fixture::new(&config_text(
        3,
        &format!("\n[metrics]\nlisten = \"{addr}\""),
    ));
    let agent = f.start(&[]);
    agent
        .wait_log("route tables converged", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = scrape(&addr);
    for needle in [
        "route_failover_path{path=\"primary\"} 1",
        "route_failover_path{path=\"backup\"} 0",
        "route_failover_probe_success{target=\"127.0.0.1\"} 1",
        "route_failover_probe_success{target=\"::1\"} 1",
        "route_failover_probe_loss_ratio{target=\"127.0.0.1\"} 0",
        "route_failover_probe_rtt_seconds_bucket{target=\"127.0.0.1\"",
        "route_failover_rounds_total{result=\"up\"}",
        "route_failover_round_up 1",
        "route_failover_routes_converged 1",
    ] {
        assert!(body.contains(needle), "missing {needle} in\n{body}");
    }
    // Early stop: every round on loopback sends each target one echo,
    // answered (a scrape may fall between a round's counters).
    let value = |series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    let rounds = value("route_failover_rounds_total{result=\"up\"}");
    let echoes = value("route_failover_probe_echoes_total{target=\"127.0.0.1\"}");
    let replies = value("route_failover_probe_replies_total{target=\"127.0.0.1\"}");
    assert!(
        rounds >= 1 && echoes == replies,
        "{rounds} rounds, {echoes} echoes, {replies} replies"
    );
    assert!(
        echoes.abs_diff(rounds) <= 1,
        "{echoes} echoes in {rounds} rounds"
    );
    assert!(agent.terminate().success());
    assert!(Path::new(&f.config()).exists());
}

#[tokio::test]
async fn a_reloaded_fall_takes_effect_on_the_running_agent() {
    if skip_unless_root("a_reloaded_fall_takes_effect_on_the_running_agent") {
        return;
    }
    let net = netns::TargetNet::create(211);
    let text = |fall: u32| {
        config_text(fall, "hold_down = \"0s\"").replace(
            "targets = [\"127.0.0.1\", \"::1\"]",
            &format!("targets = [\"{}\"]", net.target_v4),
        )
    };
    let f = Fixture::new(&text(100));
    let agent = f.start(&[]);
    agent
        .wait_log("route tables converged", Duration::from_secs(10))
        .await;
    // A silent target: 100 rounds of 100 ms before fall = 100 fails over.
    net.blackhole(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        agent.lines("transition").is_empty(),
        "failed over before the reload"
    );
    f.write(&text(2));
    agent.signal("HUP");
    agent
        .wait_log("configuration reloaded", Duration::from_secs(5))
        .await;
    let t = agent.wait_log("transition", Duration::from_secs(2)).await;
    assert_eq!(t["to"], "Backup", "{t}");
    assert!(agent.terminate().success());
}

/// Two configs that share a route table: the second agent refuses to start,
/// naming the table, the first agent's pid and its config; one with other
/// tables runs beside it, and cannot take the shared table by a reload.
#[tokio::test]
async fn a_second_config_sharing_a_table_refuses_to_start() {
    if skip_unless_root("a_second_config_sharing_a_table_refuses_to_start") {
        return;
    }
    const OTHER: &str = "rtb-0fedcba9876543210";
    let f = Fixture::new(&config_text(3, ""));
    let first = f.start(&[]);
    first.wait_log("started", Duration::from_secs(10)).await;

    // Another file, another name, one table in common.
    let shared = f.dir.path().join("shared.toml");
    std::fs::write(
        &shared,
        config_text(3, "").replace(
            "[[routes]]",
            &format!(
                "[[routes]]\nroute_table_id = \"{OTHER}\"\ndestination = \"10.1.0.0/16\"\n\
                 target_eni = \"eni-0123456789abcdef0\"\n\n[[routes]]"
            ),
        ),
    )
    .unwrap();
    let env = f.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let second = Agent::start_with(&shared, "info", &env);
    let (status, logs) = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{logs:?}");
    let text = format!("{logs:?}");
    let config = std::fs::canonicalize(f.config()).unwrap();
    assert!(
        text.contains(&format!(
            "route table rtb-0123456789abcdef0 is already managed by another route-failover (pid {}, config {})",
            first.pid(),
            config.display()
        )),
        "{text}"
    );
    assert!(!text.contains("\"started\""), "it started anyway: {text}");

    // With only the other table it runs beside the first...
    let disjoint = f.dir.path().join("disjoint.toml");
    // Its own control socket: the lock directory is shared on purpose.
    let socket = f.dir.path().join("disjoint.sock");
    let disjoint_text = config_text(
        3,
        &format!("\n[control]\nsocket = \"{}\"", socket.display()),
    )
    .replace("rtb-0123456789abcdef0", OTHER);
    std::fs::write(&disjoint, &disjoint_text).unwrap();
    let mut beside = Agent::start_with(&disjoint, "info", &env);
    beside.wait_log("started", Duration::from_secs(10)).await;
    // ...but a reload that adds the first agent's table is rejected.
    std::fs::write(
        &disjoint,
        format!(
            "{disjoint_text}\n[[routes]]\nroute_table_id = \"rtb-0123456789abcdef0\"\n\
             destination = \"10.2.0.0/16\"\ntarget_eni = \"eni-0123456789abcdef0\"\n"
        ),
    )
    .unwrap();
    beside.signal("HUP");
    let rejected = beside
        .wait_log("reload rejected", Duration::from_secs(5))
        .await;
    let why = rejected["error"].as_str().unwrap();
    assert!(
        why.contains("route table rtb-0123456789abcdef0 is already managed")
            && why.contains(&first.pid().to_string()),
        "{why}"
    );
    assert!(beside.alive());
    assert!(beside.terminate().success());
    assert!(first.terminate().success());
}
