//! End to end, `[ha]`: two agent processes against LocalStack, each with a
//! target in a network namespace of its own standing for its own view of
//! DX. Cut one view, both, heal; kill one with SIGKILL and time the
//! survivor's failover. Needs root (skips visibly otherwise) and LocalStack
//! (scripts/test.sh). Packets go only to the test's own namespaces.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/localstack.rs"]
mod localstack;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use aws_sdk_ec2::Client;
use netns::TargetNet;
use process::Agent;

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 3;
const HEARTBEAT_S: u64 = 1;
// Must exceed heartbeat + 2 s of skew tolerance (a verdict is stale once
// older than exactly peer_timeout).
const PEER_TIMEOUT_S: u64 = 5;
const DESTINATIONS: [&str; 2] = ["10.1.0.0/16", "fd00:1::/48"];

struct Pair {
    client: Client,
    tables: Vec<String>,
    eni: String,
    /// One directory per agent: its config, ledger, lock and socket.
    dirs: Vec<tempfile::TempDir>,
}

fn config_text(endpoint: &str, id: &str, net: &TargetNet, tables: &[String], eni: &str) -> String {
    let mut text = format!(
        r#"[aws]
backend = "ec2"
region = "us-east-1"
endpoint_url = "{endpoint}"

[probe]
targets = ["{}"]
interval = "{INTERVAL_MS}ms"
timeout = "100ms"
count = 3

[failover]
fall = {FALL}
rise = 5
hold_down = "1s"
resync_interval = "1s"

[ha]
agent_id = "{id}"
heartbeat = "{HEARTBEAT_S}s"
peer_timeout = "{PEER_TIMEOUT_S}s"
"#,
        net.target_v4
    );
    for t in tables {
        for d in DESTINATIONS {
            text.push_str(&format!(
                "\n[[routes]]\nroute_table_id = \"{t}\"\ndestination = \"{d}\"\ntarget_eni = \"{eni}\"\n"
            ));
        }
    }
    text
}

impl Pair {
    async fn new(endpoint: &str, nets: &[&TargetNet]) -> Self {
        let client = localstack::client(endpoint);
        let w = localstack::world(&client, "e2e-ha", 2, 1).await;
        let eni = w.enis[0].clone();
        let dirs = nets
            .iter()
            .enumerate()
            .map(|(i, net)| {
                let dir = tempfile::tempdir().unwrap();
                let id = format!("monitor-{}", ["a", "b"][i]);
                std::fs::write(
                    dir.path().join("config.toml"),
                    config_text(endpoint, &id, net, &w.tables, &eni),
                )
                .unwrap();
                dir
            })
            .collect();
        Self {
            client,
            tables: w.tables,
            eni,
            dirs,
        }
    }

    fn start(&self, i: usize) -> Agent {
        Agent::start(&self.dirs[i].path().join("config.toml"))
    }

    async fn read(&self) -> Vec<aws_sdk_ec2::types::RouteTable> {
        self.client
            .describe_route_tables()
            .set_route_table_ids(Some(self.tables.clone()))
            .send()
            .await
            .expect("DescribeRouteTables")
            .route_tables()
            .to_vec()
    }

    async fn our_routes(&self) -> usize {
        self.read()
            .await
            .iter()
            .flat_map(|t| t.routes())
            .filter(|r| r.network_interface_id() == Some(self.eni.as_str()))
            .filter(|r| {
                r.destination_cidr_block()
                    .or(r.destination_ipv6_cidr_block())
                    .is_some_and(|d| DESTINATIONS.contains(&d))
            })
            .count()
    }

    /// The verdict tags on the anchor (the first managed table), key -> value.
    async fn verdicts(&self) -> Vec<(String, String)> {
        self.read()
            .await
            .iter()
            .filter(|t| t.route_table_id() == Some(self.tables[0].as_str()))
            .flat_map(|t| t.tags())
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .filter(|(k, _)| k.starts_with("route-failover:verdict:"))
            .collect()
    }

    fn all(&self) -> usize {
        self.tables.len() * DESTINATIONS.len()
    }

    async fn wait_routes(&self, want: usize, within: Duration) -> Duration {
        localstack::wait_count(|| self.our_routes(), want, within).await
    }

    async fn hold_routes(&self, want: usize, d: Duration) {
        localstack::hold_count(|| self.our_routes(), want, d).await;
    }
}

fn ops(agent: &Agent, op: &str) -> usize {
    agent
        .lines("route changed")
        .iter()
        .filter(|v| v["op"] == op)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_pair_fails_over_on_either_view_fails_back_on_both_and_survives_a_kill() {
    let test = "a_pair_fails_over_on_either_view_fails_back_on_both_and_survives_a_kill";
    if !gate::require_root(test, "it creates network namespaces") || !gate::require_tool(test, "ip")
    {
        return;
    }
    let Some(url) = gate::require_localstack(test) else {
        return;
    };
    let (net_a, net_b) = (TargetNet::create(241), TargetNet::create(242));
    let pair = Pair::new(&url, &[&net_a, &net_b]).await;
    let a = pair.start(0);
    let b = pair.start(1);
    for agent in [&a, &b] {
        agent
            .wait_log("route tables converged", Duration::from_secs(20))
            .await;
    }
    pair.hold_routes(0, Duration::from_millis(800)).await;
    let tags = pair.verdicts().await;
    assert_eq!(tags.len(), 2, "{tags:?}");
    assert!(
        tags.iter().all(|(_, v)| v.starts_with("primary;")),
        "{tags:?}"
    );

    // Only A's view of DX is cut: the pair fails over, B undoes nothing
    // and names A.
    net_a.blackhole(true);
    let one_view = pair.wait_routes(pair.all(), Duration::from_secs(10)).await;
    pair.hold_routes(pair.all(), Duration::from_secs(4)).await;
    let finding = b
        .wait_log("the agents of the pair disagree", Duration::from_secs(4))
        .await;
    assert!(
        finding["finding"]
            .as_str()
            .unwrap()
            .starts_with("agent monitor-a"),
        "{finding}"
    );
    assert!(
        b.lines("route changed").is_empty(),
        "{:#?}",
        b.lines("route changed")
    );

    // Both views cut, then A heals: B's Backup keeps the routes.
    net_b.blackhole(true);
    b.wait_log("transition", Duration::from_secs(5)).await;
    net_a.blackhole(false);
    pair.hold_routes(pair.all(), Duration::from_secs(4)).await;

    // B heals too: the routes go, each deleted once (a second call by the
    // other agent at the same moment at most), never made again.
    net_b.blackhole(false);
    let both_healed = pair.wait_routes(0, Duration::from_secs(20)).await;
    pair.hold_routes(0, Duration::from_secs(3)).await;
    let deletes = ops(&a, "DeleteRoute") + ops(&b, "DeleteRoute");
    assert!(
        (pair.all()..=2 * pair.all()).contains(&deletes),
        "{deletes} deletes"
    );
    let creates = ops(&a, "CreateRoute") + ops(&b, "CreateRoute");
    assert_eq!(creates, pair.all(), "only A ever created");

    // A dies by SIGKILL on Primary; then B's view is cut.
    a.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    net_b.blackhole(true);
    let survivor = pair.wait_routes(pair.all(), Duration::from_secs(20)).await;
    // Detection (fall rounds) plus peer_timeout at most; a dead Primary
    // verdict never holds a failover.
    assert!(
        survivor
            <= Duration::from_millis(FALL * INTERVAL_MS + 2 * INTERVAL_MS)
                + Duration::from_secs(PEER_TIMEOUT_S),
        "{survivor:?}"
    );
    eprintln!(
        "e2e [ha]: one view cut -> routes in {} ms; both healed -> gone in {} ms ({deletes} DeleteRoute calls for {} routes); \
         peer SIGKILLed, survivor's view cut -> routes in {} ms (interval {INTERVAL_MS} ms, fall {FALL}, heartbeat {HEARTBEAT_S} s, peer_timeout {PEER_TIMEOUT_S} s)",
        one_view.as_millis(),
        both_healed.as_millis(),
        pair.all(),
        survivor.as_millis()
    );
    net_b.blackhole(false);
    // A's last verdict was Primary: B fails back on its own evidence.
    pair.wait_routes(0, Duration::from_secs(20)).await;
    assert!(b.terminate().success());
}
