//! The real EC2 backend (aws-sdk-ec2) against LocalStack on loopback.
//!
//! Where LocalStack 4.14 differs from real EC2, the EC2 behaviour is
//! asserted against the in-memory backend instead, and the difference is
//! written down next to the test.

#[path = "common/gate.rs"]
mod gate;

/// Nothing recorded in the ownership ledger: ownership by the config's ENI only.
static NONE: std::sync::LazyLock<route_failover::state::Record> =
    std::sync::LazyLock::new(route_failover::state::Record::default);

#[path = "common/localstack.rs"]
mod localstack;

use ipnet::IpNet;
use route_failover::cloud::ec2::Ec2RouteApi;
use route_failover::cloud::{EniStatus, ErrorKind, RouteApi};
use route_failover::model::{ManagedRoute, Origin, Route, RouteState, Target};
use route_failover::plan::{status, Status};

fn managed(table: &str, dest: &str, eni: &str) -> ManagedRoute {
    ManagedRoute {
        route_table_id: table.to_string(),
        destination: dest.parse().unwrap(),
        target_eni: eni.to_string(),
    }
}

#[tokio::test]
async fn describe_create_replace_delete_round_trip() {
    let Some(url) = gate::require_localstack("describe_create_replace_delete_round_trip") else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "round-trip", 1, 2).await;
    let api = Ec2RouteApi::new(client);
    let table = &w.tables[0];
    let ids = vec![table.clone()];

    let tables = api.describe_route_tables(&ids).await.unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0].id, *table);
    assert_eq!(tables[0].vpc_id.as_deref(), Some(w.vpc.as_str()));
    let local = tables[0]
        .routes
        .iter()
        .find(|r| r.origin == Origin::CreateRouteTable);
    assert_eq!(
        local.map(|r| r.destination.to_string()),
        Some("10.0.0.0/16".to_string())
    );

    let v4 = managed(table, "10.1.0.0/16", &w.enis[0]);
    let v6 = managed(table, "fd00:1::/48", &w.enis[0]);
    api.create_route(&v4).await.expect("CreateRoute v4");
    api.create_route(&v6).await.expect("CreateRoute v6");
    let tables = api.describe_route_tables(&ids).await.unwrap();
    for r in [&v4, &v6] {
        assert_eq!(
            status(r, &NONE, &tables),
            Status::Ours {
                state: route_failover::model::RouteState::Active,
                eni: w.enis[0].clone(),
                stale: false,
            },
            "{r}"
        );
    }

    // Replace points the route at the other ENI: for v4 it is now foreign.
    let other = managed(table, "10.1.0.0/16", &w.enis[1]);
    api.replace_route(&other).await.expect("ReplaceRoute");
    let tables = api.describe_route_tables(&ids).await.unwrap();
    match status(&v4, &NONE, &tables) {
        Status::Foreign { target, origin } => {
            assert_eq!(target, Target::NetworkInterface(w.enis[1].clone()));
            assert_eq!(origin, Origin::CreateRoute);
        }
        other => panic!("expected foreign, got {other:?}"),
    }

    api.delete_route(table, v4.destination)
        .await
        .expect("DeleteRoute v4");
    api.delete_route(table, v6.destination)
        .await
        .expect("DeleteRoute v6");
    let tables = api.describe_route_tables(&ids).await.unwrap();
    assert_eq!(status(&v4, &NONE, &tables), Status::Absent);
    assert_eq!(status(&v6, &NONE, &tables), Status::Absent);

    // A missing route: EC2's code, which the agent treats as converged.
    let e = api.delete_route(table, v4.destination).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::RouteNotFound, "{e}");
    assert_eq!(e.code.as_deref(), Some("InvalidRoute.NotFound"));
}

#[tokio::test]
async fn unknown_tables_and_enis_are_classified() {
    let Some(url) = gate::require_localstack("unknown_tables_and_enis_are_classified") else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "unknown", 1, 1).await;
    let api = Ec2RouteApi::new(client);
    let missing_table = "rtb-0fffffffffffffff0".to_string();

    let e = api
        .create_route(&managed(&missing_table, "10.1.0.0/16", &w.enis[0]))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TableNotFound, "{e}");

    let nis = api.describe_network_interfaces(&w.enis).await.unwrap();
    assert_eq!(nis.len(), 1);
    assert_eq!(nis[0].id, w.enis[0]);
    assert_eq!(nis[0].subnet_id.as_deref(), Some(w.subnet.as_str()));
    // A fresh interface belongs to no instance, and checks source/destination.
    assert_eq!(nis[0].status, EniStatus::Available);
    assert!(!nis[0].attached && nis[0].source_dest_check);
    // An interface that does not exist is absent from the answer.
    let mut asked = w.enis.clone();
    asked.insert(0, "eni-0fffffffffffffff0".to_string());
    let nis = api.describe_network_interfaces(&asked).await.unwrap();
    let got: Vec<&str> = nis.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(got, [w.enis[0].as_str()]);
}

/// EC2's `route-table-id` filter, not `RouteTableIds`: a table deleted at
/// runtime (or a typo) is absent from the answer and hides no other table.
#[tokio::test]
async fn a_deleted_table_is_absent_from_the_answer_and_hides_no_other() {
    let Some(url) =
        gate::require_localstack("a_deleted_table_is_absent_from_the_answer_and_hides_no_other")
    else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "deleted-table", 2, 1).await;
    client
        .delete_route_table()
        .route_table_id(&w.tables[1])
        .send()
        .await
        .expect("DeleteRouteTable");
    // What the filter replaces: explicit ids fail the whole call.
    let explicit = client
        .describe_route_tables()
        .set_route_table_ids(Some(w.tables.clone()))
        .send()
        .await
        .expect_err("explicit ids with a deleted table");
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&explicit),
        Some("InvalidRouteTableID.NotFound")
    );

    let api = Ec2RouteApi::new(client);
    let asked = [
        w.tables[1].clone(),
        w.tables[0].clone(),
        w.tables[0].clone(),
    ];
    let tables = api
        .describe_route_tables(&asked)
        .await
        .expect("no error for a deleted table");
    let got: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, [w.tables[0].as_str()]);
    // Tags come back with the table (the world tags each table it makes).
    assert_eq!(
        tables[0]
            .tags
            .get("route-failover-test")
            .map(String::as_str),
        Some("deleted-table")
    );
    assert!(api
        .describe_route_tables(std::slice::from_ref(&w.tables[1]))
        .await
        .unwrap()
        .is_empty());
}

/// `check` reads every table (and interface) in one call, names the missing
/// one, and goes on to check the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_table_and_checks_the_rest() {
    let Some(url) = gate::require_localstack("check_names_a_missing_table_and_checks_the_rest")
    else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "check-missing", 2, 1).await;
    client
        .delete_route_table()
        .route_table_id(&w.tables[1])
        .send()
        .await
        .expect("DeleteRouteTable");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let mut text = format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\nown_subnet_id = \"{}\"\n\
         [probe]\ntargets = [\"198.18.0.10\"]\n",
        w.subnet
    );
    for table in &w.tables {
        text.push_str(&format!(
            "[[routes]]\nroute_table_id = \"{table}\"\ndestination = \"10.1.0.0/16\"\ntarget_eni = \"{}\"\n",
            w.enis[0]
        ));
    }
    // And an interface that does not exist, beside the one that does.
    text.push_str(&format!(
        "[[routes]]\nroute_table_id = \"{}\"\ndestination = \"10.2.0.0/16\"\n\
         target_eni = \"eni-0fffffffffffffff0\"\n",
        w.tables[0]
    ));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_route-failover"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("✓ route table {} exists", w.tables[0])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("✗ route table {} not found", w.tables[1])),
        "{stdout}"
    );
    assert!(
        stdout.contains("✗ network interface eni-0fffffffffffffff0 not found"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("✓ network interface {} exists", w.enis[0]))
            || stdout.contains(&format!("✗ network interface {} has source", w.enis[0]))
            // Not attached to an instance: a warning, not a failure.
            || stdout.contains(&format!("! network interface {} is ", w.enis[0])),
        "the existing interface was checked too: {stdout}"
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
}

/// What the appliance check reads: status, attachment, source/dest check.
#[tokio::test]
async fn interfaces_report_status_and_attachment() {
    let Some(url) = gate::require_localstack("interfaces_report_status_and_attachment") else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "eni-state", 1, 1).await;
    let api = Ec2RouteApi::new(client.clone());
    let read = || async {
        let mut nis = api.describe_network_interfaces(&w.enis).await.unwrap();
        assert_eq!(nis.len(), 1);
        nis.remove(0)
    };
    let fresh = read().await;
    assert_eq!(
        (fresh.status.as_str(), fresh.attached),
        ("available", false)
    );
    assert!(!fresh.is_forwarding_target());

    let attachments = localstack::attach_enis(&client, &w).await;
    let attached = read().await;
    assert_eq!(
        (attached.status.clone(), attached.attached),
        (EniStatus::InUse, true)
    );
    assert!(attached.is_forwarding_target());

    client
        .modify_network_interface_attribute()
        .network_interface_id(&w.enis[0])
        .source_dest_check(
            aws_sdk_ec2::types::AttributeBooleanValue::builder()
                .value(false)
                .build(),
        )
        .send()
        .await
        .expect("ModifyNetworkInterfaceAttribute");
    assert!(!read().await.source_dest_check);

    client
        .detach_network_interface()
        .attachment_id(&attachments[0])
        .send()
        .await
        .expect("DetachNetworkInterface");
    let detached = read().await;
    assert_eq!(
        (detached.status, detached.attached),
        (EniStatus::Available, false)
    );
}

#[tokio::test]
async fn connect_resolves_region_endpoint_and_credentials_like_the_agent() {
    let Some(url) =
        gate::require_localstack("connect_resolves_region_endpoint_and_credentials_like_the_agent")
    else {
        return;
    };
    let seed = localstack::client(&url);
    let w = localstack::world(&seed, "connect", 1, 1).await;
    // The agent's own path: region and endpoint from config, credentials
    // from the standard chain (scripts/test.sh exports dummy ones).
    let config = route_failover::config::Config::parse(
        &format!(
            "[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{url}\"\n[probe]\ntargets = [\"198.18.0.1\"]\n\
             [[routes]]\nroute_table_id = \"{}\"\ndestination = \"10.9.0.0/16\"\ntarget_eni = \"{}\"\n",
            w.tables[0], w.enis[0]
        ),
        std::path::Path::new("connect.toml"),
    )
    .unwrap();
    let api = Ec2RouteApi::connect(&config.aws, &Default::default())
        .await
        .expect("connect");
    let tables = api
        .describe_route_tables(&w.tables)
        .await
        .expect("describe through connect()");
    assert_eq!(tables[0].id, w.tables[0]);
    let dest: IpNet = "10.9.0.0/16".parse().unwrap();
    api.create_route(&managed(&w.tables[0], "10.9.0.0/16", &w.enis[0]))
        .await
        .unwrap();
    api.delete_route(&w.tables[0], dest).await.unwrap();
}

/// LocalStack 4.14 is not EC2 everywhere. Each difference is asserted on
/// both: EC2's behaviour on the memory backend (which the agent tests use
/// for that case), LocalStack's on LocalStack, so that an upgrade that
/// changes it is noticed:
/// 1. a duplicate CreateRoute to an interface succeeds (EC2: RouteAlreadyExists);
/// 2. a route to an interface that is not attached stays `active` (EC2: `blackhole`);
/// 3. CreateRoute to an interface silently replaces a static route to a
///    gateway for that prefix (EC2: RouteAlreadyExists);
/// 4. DeleteTags on a table that does not exist succeeds (EC2:
///    InvalidRouteTableID.NotFound, as for CreateTags, where LocalStack agrees).
///
/// VGW route propagation is not implemented in LocalStack either
/// (EnableVgwRoutePropagation answers InternalFailure); the memory backend
/// models propagated routes, withdrawn and restored (see `cloud::memory`).
#[tokio::test]
async fn where_localstack_differs_the_memory_backend_has_ec2_semantics() {
    let Some(url) =
        gate::require_localstack("where_localstack_differs_the_memory_backend_has_ec2_semantics")
    else {
        return;
    };
    let client = localstack::client(&url);
    let w = localstack::world(&client, "differences", 1, 1).await;
    let api = Ec2RouteApi::new(client.clone());
    let memory = route_failover::cloud::memory::MemoryRouteApi::new();
    for t in api.describe_route_tables(&w.tables).await.unwrap() {
        memory.add_table(t);
    }
    for n in api.describe_network_interfaces(&w.enis).await.unwrap() {
        memory.add_network_interface(n);
    }
    let r = managed(&w.tables[0], "10.1.0.0/16", &w.enis[0]);

    // 1. A duplicate CreateRoute: EC2 answers RouteAlreadyExists.
    api.create_route(&r).await.unwrap();
    memory.create_route(&r).await.unwrap();
    assert_eq!(
        memory.create_route(&r).await.unwrap_err().kind,
        ErrorKind::RouteAlreadyExists
    );
    // LocalStack accepts it silently; when that changes, the agent tests
    // that rely on the memory backend for this case can move here.
    assert_eq!(
        api.create_route(&r).await,
        Ok(()),
        "LocalStack now rejects duplicates: update the notes"
    );

    // Where they agree: a route to an ENI that does not exist is
    // InvalidNetworkInterfaceID.NotFound.
    let ghost = managed(&w.tables[0], "10.2.0.0/16", "eni-0fffffffffffffff0");
    assert_eq!(
        memory.create_route(&ghost).await.unwrap_err().kind,
        ErrorKind::EniNotFound
    );
    assert_eq!(
        api.create_route(&ghost).await.unwrap_err().kind,
        ErrorKind::EniNotFound
    );

    // 2. A route to an interface no instance holds (the world's are fresh).
    let hole = |tables: &[route_failover::model::RouteTable]| {
        tables[0]
            .routes
            .iter()
            .find(|x| x.destination == r.destination)
            .map(|x| x.state)
    };
    assert_eq!(
        hole(&memory.describe_route_tables(&w.tables).await.unwrap()),
        Some(RouteState::Blackhole)
    );
    assert_eq!(
        hole(&api.describe_route_tables(&w.tables).await.unwrap()),
        Some(RouteState::Active),
        "LocalStack now reports blackholes: update the notes"
    );

    // 3. A static route to the VGW, then ours for the same prefix.
    let vgw = localstack::attach_vgw(&client, &w).await;
    let dx: IpNet = "10.6.0.0/16".parse().unwrap();
    client
        .create_route()
        .route_table_id(&w.tables[0])
        .destination_cidr_block(dx.to_string())
        .gateway_id(&vgw)
        .send()
        .await
        .expect("static route to the VGW");
    memory
        .insert_route(
            &w.tables[0],
            Route {
                destination: dx,
                target: Target::Gateway(vgw.clone()),
                origin: Origin::CreateRoute,
                state: RouteState::Active,
            },
        )
        .unwrap();
    let ours = managed(&w.tables[0], "10.6.0.0/16", &w.enis[0]);
    assert_eq!(
        memory.create_route(&ours).await.unwrap_err().kind,
        ErrorKind::RouteAlreadyExists
    );
    assert_eq!(
        api.create_route(&ours).await,
        Ok(()),
        "LocalStack now refuses: update the notes"
    );
    let tables = api.describe_route_tables(&w.tables).await.unwrap();
    assert_eq!(
        status(&ours, &NONE, &tables),
        Status::Ours {
            state: RouteState::Active,
            eni: ours.target_eni.clone(),
            stale: false,
        },
        "LocalStack replaced the VGW route"
    );

    // 4. DeleteTags on a table that does not exist.
    let gone = [("route-failover:x".to_string(), None)];
    assert_eq!(
        memory
            .delete_tags("rtb-0fffffffffffffff0", &gone)
            .await
            .unwrap_err()
            .code
            .as_deref(),
        Some("InvalidRouteTableID.NotFound")
    );
    assert_eq!(
        api.delete_tags("rtb-0fffffffffffffff0", &gone).await,
        Ok(()),
        "LocalStack now checks the table: update the notes"
    );
}
