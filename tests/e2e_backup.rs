//! End to end with `[backup]`: the real binary, the EC2 backend against
//! LocalStack, one namespace standing for the DX path and a second one for
//! the VPN path. Cut the backup only (alarm, no route change), cut both (no
//! route change), restore the backup while DX is still cut (failover within
//! the backup's `rise`), hold a failback while no DX route is left, cut DX
//! only (failover as without `[backup]`). Needs root and LocalStack (skips
//! visibly otherwise); packets go only to the test's own namespaces.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/localstack.rs"]
mod localstack;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/process.rs"]
mod process;

use std::time::Duration;

use aws_sdk_ec2::types::AttributeBooleanValue;
use aws_sdk_ec2::Client;
use netns::TargetNet;
use process::Agent;

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 3;
const BACKUP_FALL: u64 = 2;
const BACKUP_RISE: u64 = 2;
const DESTINATIONS: [&str; 2] = ["10.1.0.0/16", "fd00:1::/48"];

struct Setup {
    client: Client,
    world: localstack::World,
    config: tempfile::NamedTempFile,
}

async fn setup(endpoint: &str, dx: &TargetNet, vpn: &TargetNet) -> Setup {
    let client = localstack::client(endpoint);
    let world = localstack::world(&client, "e2e-backup", 2, 1).await;
    // A working appliance: its ENI in-use, attached, source/dest check off.
    localstack::attach_enis(&client, &world).await;
    client
        .modify_network_interface_attribute()
        .network_interface_id(&world.enis[0])
        .source_dest_check(AttributeBooleanValue::builder().value(false).build())
        .send()
        .await
        .expect("ModifyNetworkInterfaceAttribute");
    let mut text = format!(
        r#"[aws]
backend = "ec2"
region = "us-east-1"
endpoint_url = "{endpoint}"

[probe]
targets = ["{}", "{}"]
interval = "{INTERVAL_MS}ms"
timeout = "100ms"
count = 3

[backup]
targets = ["{}", "{}"]
fall = {BACKUP_FALL}
rise = {BACKUP_RISE}

[failover]
fall = {FALL}
rise = 5
hold_down = "1s"
resync_interval = "1s"
"#,
        dx.target_v4, dx.target_v6, vpn.target_v4, vpn.target_v6
    );
    for t in &world.tables {
        for d in DESTINATIONS {
            text.push_str(&format!(
                "\n[[routes]]\nroute_table_id = \"{t}\"\ndestination = \"{d}\"\ntarget_eni = \"{}\"\n",
                world.enis[0]
            ));
        }
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), text).unwrap();
    Setup {
        client,
        world,
        config,
    }
}

impl Setup {
    async fn our_routes(&self) -> usize {
        let out = self
            .client
            .describe_route_tables()
            .set_route_table_ids(Some(self.world.tables.clone()))
            .send()
            .await
            .expect("DescribeRouteTables");
        out.route_tables()
            .iter()
            .flat_map(|t| t.routes())
            .filter(|r| r.network_interface_id() == Some(self.world.enis[0].as_str()))
            .count()
    }

    fn all(&self) -> usize {
        self.world.tables.len() * DESTINATIONS.len()
    }

    async fn wait_routes(&self, want: usize, within: Duration) -> Duration {
        localstack::wait_count(|| self.our_routes(), want, within).await
    }

    async fn hold_routes(&self, want: usize, d: Duration) {
        localstack::hold_count(|| self.our_routes(), want, d).await;
    }

    /// Adds (`true`) or removes the covering static routes to the VGW that
    /// stand for DX here (LocalStack cannot propagate).
    async fn dx_routes(&self, present: bool) {
        for table in &self.world.tables {
            for prefix in localstack::DX_PREFIXES {
                let v6 = prefix.contains(':');
                if present {
                    let call = self
                        .client
                        .create_route()
                        .route_table_id(table)
                        .gateway_id(&self.world.vgw);
                    let call = if v6 {
                        call.destination_ipv6_cidr_block(prefix)
                    } else {
                        call.destination_cidr_block(prefix)
                    };
                    call.send().await.expect("CreateRoute to the VGW");
                } else {
                    let call = self.client.delete_route().route_table_id(table);
                    let call = if v6 {
                        call.destination_ipv6_cidr_block(prefix)
                    } else {
                        call.destination_cidr_block(prefix)
                    };
                    call.send().await.expect("DeleteRoute of the VGW route");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_backup_gate_and_failback_guard() {
    let test = "e2e_backup_gate_and_failback_guard";
    if !gate::require_root(test, "it creates network namespaces") || !gate::require_tool(test, "ip")
    {
        return;
    }
    let Some(url) = gate::require_localstack(test) else {
        return;
    };
    let dx = TargetNet::create(231);
    let vpn = TargetNet::create(232);
    let s = setup(&url, &dx, &vpn).await;
    let agent = Agent::start(s.config.path());
    agent
        .wait_log("route tables converged", Duration::from_secs(20))
        .await;
    // The appliance check passed: a backup known up.
    s.hold_routes(0, Duration::from_millis(800)).await;
    assert!(
        agent.lines("no redundancy").is_empty(),
        "{:#?}",
        agent.lines("")
    );

    // 1. The VPN only: the alarm, no route change.
    vpn.blackhole(true);
    let alarm = agent
        .wait_log("no redundancy", Duration::from_secs(3))
        .await;
    assert!(
        alarm["backup"]
            .as_str()
            .is_some_and(|b| b.contains("consecutive backup probe rounds down")),
        "{alarm}"
    );
    s.hold_routes(0, Duration::from_millis(1500)).await;

    // 2. Both: no failover onto a dead VPN, however long DX stays down.
    dx.blackhole(true);
    agent
        .wait_log("both paths down", Duration::from_secs(3))
        .await;
    s.hold_routes(0, Duration::from_secs(2)).await;
    assert!(agent.lines("transition").is_empty());
    assert!(agent.lines("route changed").is_empty());

    // 3. The VPN comes back while DX is still cut: failover follows within
    //    the backup's rise (plus the calls to LocalStack).
    vpn.blackhole(false);
    let after = s.wait_routes(s.all(), Duration::from_secs(10)).await;
    let t = agent.wait_log("transition", Duration::from_secs(1)).await;
    assert_eq!(t["to"], "Backup", "{t}");
    assert!(
        t["reason"]
            .as_str()
            .is_some_and(|r| r.contains("backup path is up again")),
        "{t}"
    );
    // At most rise + 1 rounds (the VPN may return early in a round that
    // then counts as down), plus a few LocalStack calls: well under 400 ms
    // on this loopback, seen at ~380 ms in all.
    let bound = Duration::from_millis((BACKUP_RISE + 1) * INTERVAL_MS + 400);
    assert!(after < bound, "failover {after:?} after the VPN returned");
    eprintln!(
        "e2e backup: both down held the failover; routes in LocalStack {} ms after the VPN returned \
         (backup rise {BACKUP_RISE}, interval {INTERVAL_MS} ms)",
        after.as_millis()
    );

    // 4. No DX route left when DX answers again: the failback is held.
    s.dx_routes(false).await;
    dx.blackhole(false);
    let back = agent
        .wait_lines("transition", 2, Duration::from_secs(5))
        .await;
    assert_eq!(back.len(), 2, "no failback decided: {back:#?}");
    assert_eq!(back[1]["to"], "Primary", "{back:#?}");
    let held = agent
        .wait_lines("attention", 1, Duration::from_secs(5))
        .await;
    assert!(
        held.iter().any(|l| l["finding"]
            .as_str()
            .is_some_and(|f| f.starts_with("failback would blackhole"))),
        "{held:#?}"
    );
    s.hold_routes(s.all(), Duration::from_secs(2)).await;
    // The DX routes return: released at the next resync.
    s.dx_routes(true).await;
    let released = s.wait_routes(0, Duration::from_secs(5)).await;
    eprintln!(
        "e2e backup: failback held while no DX route was left; released {} ms after it returned",
        released.as_millis()
    );

    // 5. DX only, with a healthy VPN: failover as without [backup].
    let transitions = agent.lines("transition").len();
    dx.blackhole(true);
    let over = s.wait_routes(s.all(), Duration::from_secs(10)).await;
    let t = agent
        .wait_lines("transition", transitions + 1, Duration::from_secs(1))
        .await;
    let t = t.last().unwrap();
    assert_eq!(t["to"], "Backup", "{t}");
    assert!(
        t["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{FALL} consecutive down rounds"))),
        "{t}"
    );
    eprintln!(
        "e2e backup: DX cut alone, VPN healthy: routes in LocalStack {} ms after the cut",
        over.as_millis()
    );
    dx.blackhole(false);
    s.wait_routes(0, Duration::from_secs(20)).await;
    assert!(agent.terminate().success());
}
