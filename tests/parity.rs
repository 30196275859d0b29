//! Keeps the in-memory fake honest: the same steps through the `memory` and
//! the `ec2`-on-LocalStack backends give the same route tables at every step.

mod common;
#[path = "common/gate.rs"]
mod gate;
#[path = "common/localstack.rs"]
mod localstack;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::Client;
use ipnet::IpNet;

use route_failover::cloud::ec2::Ec2RouteApi;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::{CloudError, ErrorKind, RouteApi};
use route_failover::config::Config;
use route_failover::fsm::Via;
use route_failover::model::{ManagedRoute, Origin, Route, RouteState, RouteTable, Target};
use route_failover::probe::scripted::Reply;

/// Tables as comparable text: one line per route and per tag, sorted.
fn normalized(tables: &[RouteTable]) -> Vec<String> {
    let mut lines: Vec<String> = tables
        .iter()
        .flat_map(|t| {
            let routes = t.routes.iter().map(move |r| {
                format!(
                    "{} {} -> {} {:?} {:?}",
                    t.id, r.destination, r.target, r.origin, r.state
                )
            });
            let tags = t
                .tags
                .iter()
                .map(move |(k, v)| format!("{} tag {k}={v}", t.id));
            routes.chain(tags)
        })
        .collect();
    lines.sort();
    lines
}

/// A memory backend holding exactly what LocalStack holds.
async fn mirror(ec2: &Ec2RouteApi, tables: &[String], enis: &[String]) -> MemoryRouteApi {
    let memory = MemoryRouteApi::new();
    for t in ec2.describe_route_tables(tables).await.unwrap() {
        memory.add_table(t);
    }
    for n in ec2.describe_network_interfaces(enis).await.unwrap() {
        memory.add_network_interface(n);
    }
    memory
}

fn managed(table: &str, dest: &str, eni: &str) -> ManagedRoute {
    ManagedRoute {
        route_table_id: table.to_string(),
        destination: dest.parse().unwrap(),
        target_eni: eni.to_string(),
    }
}

#[derive(Debug)]
enum Step {
    Create(ManagedRoute),
    Replace(ManagedRoute),
    Delete(ManagedRoute),
    /// A static route to the VGW made outside the agent: the DX route the
    /// failback guard looks for where LocalStack cannot propagate.
    StaticToVgw {
        table: String,
        destination: IpNet,
    },
    CreateTags(String, Vec<(String, String)>),
    DeleteTags(String, Vec<(String, Option<String>)>),
}

/// One side of the comparison.
enum Side<'a> {
    /// The agent's EC2 backend, and a raw client for what it never calls.
    Ec2(&'a Ec2RouteApi, &'a Client, &'a str),
    Memory(&'a MemoryRouteApi, &'a str),
}

/// The outcome as the agent sees it: the error's kind and EC2 code.
type Outcome = Result<(), (ErrorKind, Option<String>)>;

async fn apply(side: &Side<'_>, step: &Step) -> Outcome {
    let api: &dyn RouteApi = match side {
        Side::Ec2(api, ..) => *api,
        Side::Memory(api, _) => *api,
    };
    let r: Result<(), CloudError> = match step {
        Step::Create(r) => api.create_route(r).await,
        Step::Replace(r) => api.replace_route(r).await,
        Step::Delete(r) => api.delete_route(&r.route_table_id, r.destination).await,
        Step::CreateTags(t, tags) => api.create_tags(t, tags).await,
        Step::DeleteTags(t, keys) => api.delete_tags(t, keys).await,
        Step::StaticToVgw { table, destination } => match side {
            Side::Ec2(_, client, vgw) => client
                .create_route()
                .route_table_id(table)
                .destination_cidr_block(destination.to_string())
                .gateway_id(*vgw)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    let code = ProvideErrorMetadata::code(&e).unwrap_or("none").to_string();
                    CloudError::from_code(&code, format!("{e:?}"))
                }),
            Side::Memory(memory, vgw) => memory.insert_route(
                table,
                Route {
                    destination: *destination,
                    target: Target::Gateway((*vgw).to_string()),
                    origin: Origin::CreateRoute,
                    state: RouteState::Active,
                },
            ),
        },
    };
    r.map_err(|e| (e.kind, e.code))
}

fn tags(prefix: &str, n: usize, value: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), value.to_string()))
        .collect()
}

#[tokio::test]
async fn api_steps_give_the_same_tables_and_error_codes_on_both_backends() {
    let Some(url) =
        gate::require_localstack("api_steps_give_the_same_tables_and_error_codes_on_both_backends")
    else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "parity-api", 2, 2).await;
    localstack::attach_enis(&client, &w).await;
    let vgw = localstack::attach_vgw(&client, &w).await;
    let ec2 = Ec2RouteApi::new(client.clone());
    let memory = mirror(&ec2, &w.tables, &w.enis).await;
    let (t0, t1) = (&w.tables[0], &w.tables[1]);
    let (e0, e1) = (&w.enis[0], &w.enis[1]);
    let missing_table = "rtb-0fffffffffffffff0";
    let vgw_route = |table: &str, dest: &str| Step::StaticToVgw {
        table: table.to_string(),
        destination: dest.parse().unwrap(),
    };
    let ok: Outcome = Ok(());
    let code = |kind, code: &str| -> Outcome { Err((kind, Some(code.to_string()))) };
    let steps = vec![
        (Step::Create(managed(t0, "10.1.0.0/16", e0)), ok.clone()),
        (Step::Create(managed(t0, "fd00:1::/48", e0)), ok.clone()),
        (Step::Create(managed(t1, "10.1.0.0/16", e0)), ok.clone()),
        (Step::Create(managed(t1, "10.2.0.0/16", e1)), ok.clone()),
        (Step::Replace(managed(t0, "10.1.0.0/16", e1)), ok.clone()),
        (Step::Delete(managed(t0, "fd00:1::/48", e0)), ok.clone()),
        (Step::Delete(managed(t1, "10.1.0.0/16", e0)), ok.clone()),
        // Errors must match too, kind and code.
        (
            Step::Delete(managed(t1, "10.1.0.0/16", e0)),
            code(ErrorKind::RouteNotFound, "InvalidRoute.NotFound"),
        ),
        (
            Step::Replace(managed(t1, "10.1.0.0/16", e0)),
            code(ErrorKind::Other, "InvalidParameterValue"),
        ),
        (
            Step::Create(managed(t1, "10.4.0.0/16", "eni-0fffffffffffffff0")),
            code(ErrorKind::EniNotFound, "InvalidNetworkInterfaceID.NotFound"),
        ),
        (
            Step::Create(managed(missing_table, "10.1.0.0/16", e0)),
            code(ErrorKind::TableNotFound, "InvalidRouteTableID.NotFound"),
        ),
        (
            Step::Delete(managed(missing_table, "10.1.0.0/16", e0)),
            code(ErrorKind::TableNotFound, "InvalidRouteTableID.NotFound"),
        ),
        // DX as a static route to the VGW (LocalStack cannot propagate):
        // one per prefix, taken over with ReplaceRoute, given back by delete.
        (vgw_route(t0, "10.5.0.0/16"), ok.clone()),
        (
            vgw_route(t0, "10.5.0.0/16"),
            code(ErrorKind::RouteAlreadyExists, "RouteAlreadyExists"),
        ),
        (Step::Replace(managed(t0, "10.5.0.0/16", e0)), ok.clone()),
        (Step::Delete(managed(t0, "10.5.0.0/16", e0)), ok.clone()),
        (vgw_route(t1, "172.16.0.0/12"), ok.clone()),
        // Tags: set, overwritten, deleted (a key not there is no error).
        (
            Step::CreateTags(t0.clone(), tags("route-failover:verdict:", 2, "Primary")),
            ok.clone(),
        ),
        (
            Step::CreateTags(t0.clone(), tags("route-failover:verdict:", 1, "Backup")),
            ok.clone(),
        ),
        (
            Step::DeleteTags(
                t0.clone(),
                vec![
                    ("route-failover:verdict:1".into(), None),
                    ("absent".into(), None),
                ],
            ),
            ok.clone(),
        ),
        // Conditional: with a value, deleted only while the tag holds it
        // (verdict:0 holds "Backup"); a missing key with a value is no error.
        (
            Step::DeleteTags(
                t0.clone(),
                vec![
                    ("route-failover:verdict:0".into(), Some("Primary".into())),
                    ("absent".into(), Some("v".into())),
                ],
            ),
            ok.clone(),
        ),
        (
            Step::CreateTags(t0.clone(), tags("route-failover:verdict:", 2, "Backup")),
            ok.clone(),
        ),
        (
            Step::DeleteTags(
                t0.clone(),
                vec![("route-failover:verdict:1".into(), Some("Backup".into()))],
            ),
            ok.clone(),
        ),
        // The world's own tag and one verdict are there: 48 more make 50...
        (Step::CreateTags(t0.clone(), tags("k", 48, "v")), ok.clone()),
        // ...and one more is past EC2's limit, all or nothing.
        (
            Step::CreateTags(t0.clone(), tags("x", 2, "v")),
            code(ErrorKind::Other, "TagLimitExceeded"),
        ),
        // Overwriting at the limit adds nothing.
        (Step::CreateTags(t0.clone(), tags("k", 3, "w")), ok.clone()),
        (
            Step::CreateTags(missing_table.into(), tags("k", 1, "v")),
            code(ErrorKind::TableNotFound, "InvalidRouteTableID.NotFound"),
        ),
    ];
    // Every read also names a table that does not exist: absent, no error.
    let mut read: Vec<String> = w.tables.clone();
    read.push(missing_table.to_string());
    let ec2_side = Side::Ec2(&ec2, &client, &vgw);
    let memory_side = Side::Memory(&memory, &vgw);
    for (i, (step, want)) in steps.iter().enumerate() {
        let a = apply(&ec2_side, step).await;
        let b = apply(&memory_side, step).await;
        assert_eq!(a, b, "step {i} {step:?}: results differ (ec2 vs memory)");
        assert_eq!(&a, want, "step {i} {step:?}: not what EC2 answers");
        let seen_ec2 = normalized(&ec2.describe_route_tables(&read).await.unwrap());
        let seen_mem = normalized(&memory.describe_route_tables(&read).await.unwrap());
        assert_eq!(
            seen_ec2, seen_mem,
            "step {i} {step:?}: tables differ (ec2 left, memory right)"
        );
    }
    let last = memory.describe_route_tables(&read).await.unwrap();
    assert_eq!(last.len(), 2);
    assert_eq!(last[0].tags.len(), 50, "the steps reached the tag limit");
}

/// A fast-profile config for the LocalStack world's tables and ENI.
fn agent_config(w: &localstack::World, endpoint: &str) -> Config {
    let mut text = format!(
        r#"
[aws]
backend = "ec2"
region = "us-east-1"
endpoint_url = "{endpoint}"

[probe]
targets = ["198.18.0.10"]
interval = "100ms"
timeout = "50ms"
count = 1

[failover]
fall = 3
rise = 3
hold_down = "0s"
resync_interval = "1s"
"#
    );
    for t in &w.tables {
        for dest in ["10.1.0.0/16", "fd00:1::/48"] {
            text.push_str(&format!(
                "\n[[routes]]\nroute_table_id = \"{t}\"\ndestination = \"{dest}\"\ntarget_eni = \"{}\"\n",
                w.enis[0]
            ));
        }
    }
    Config::parse(&text, std::path::Path::new("parity.toml")).expect("valid config")
}

/// The agent's story (failover, a route deleted by hand, failback) on one
/// backend; returns the tables after each phase.
async fn story(
    config: &Config,
    api: Arc<dyn RouteApi>,
    hand_delete: impl Fn(&ManagedRoute),
) -> Vec<Vec<String>> {
    let ids: Vec<String> = w_ids(config);
    let mut snapshots = Vec::new();
    let mut h = common::Harness::start(config, Arc::clone(&api), Reply::All);
    h.converged(Via::Primary, Duration::from_secs(10)).await;
    snapshots.push(normalized(&api.describe_route_tables(&ids).await.unwrap()));

    h.script.set("DX cut", Reply::None);
    h.converged(Via::Backup, Duration::from_secs(10)).await;
    snapshots.push(normalized(&api.describe_route_tables(&ids).await.unwrap()));

    hand_delete(&config.routes[1]);
    h.wait_for("drift repair", Duration::from_secs(5), |e| {
        matches!(e, route_failover::events::Event::RouteChange { action, .. } if action.route() == &config.routes[1])
    })
    .await;
    snapshots.push(normalized(&api.describe_route_tables(&ids).await.unwrap()));

    h.script.set("DX restored", Reply::All);
    h.converged(Via::Primary, Duration::from_secs(10)).await;
    snapshots.push(normalized(&api.describe_route_tables(&ids).await.unwrap()));
    h.stop().await;
    snapshots
}

fn w_ids(config: &Config) -> Vec<String> {
    let mut ids: Vec<String> = config
        .routes
        .iter()
        .map(|r| r.route_table_id.clone())
        .collect();
    ids.dedup();
    ids
}

#[tokio::test]
async fn the_agent_story_gives_the_same_tables_on_both_backends() {
    let Some(url) =
        gate::require_localstack("the_agent_story_gives_the_same_tables_on_both_backends")
    else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "parity-agent", 2, 1).await;
    // Attached, as an appliance's interface is: EC2 would blackhole routes
    // to a detached one, and LocalStack does not model that.
    localstack::attach_enis(&client, &w).await;
    let config = agent_config(&w, &url);
    let ec2 = Arc::new(
        Ec2RouteApi::connect(&config.aws, &Default::default())
            .await
            .unwrap(),
    );
    let memory = Arc::new(mirror(&ec2, &w.tables, &w.enis).await);

    let by_hand = client.clone();
    let on_ec2 = story(&config, ec2.clone(), move |r| {
        let (c, t, d) = (
            by_hand.clone(),
            r.route_table_id.clone(),
            r.destination.to_string(),
        );
        // An operator deleting the route with the API, outside the agent.
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    c.delete_route()
                        .route_table_id(t)
                        .destination_ipv6_cidr_block(d)
                        .send()
                        .await
                        .expect("hand delete")
                })
        })
        .join()
        .unwrap();
    })
    .await;
    let m = Arc::clone(&memory);
    let on_memory = story(&config, memory.clone(), move |r| {
        m.remove_static_route(&r.route_table_id, r.destination)
    })
    .await;

    assert_eq!(on_ec2.len(), 4);
    for (phase, (a, b)) in ["primary", "backup", "repaired", "failed back"]
        .iter()
        .zip(on_ec2.iter().zip(&on_memory))
    {
        assert_eq!(
            a, b,
            "phase {phase}: tables differ (ec2 left, memory right)"
        );
    }
    // The phases really differ from each other: the story did something.
    assert_ne!(on_ec2[0], on_ec2[1]);
    assert_eq!(on_ec2[1], on_ec2[2]);
    assert_eq!(on_ec2[0], on_ec2[3]);
}
