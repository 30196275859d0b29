use super::*;
use crate::cloud::EniStatus;
use crate::model::fixtures::managed;

fn ids(r: &ManagedRoute) -> Vec<String> {
    vec![r.route_table_id.clone()]
}

/// The states of the routes for `destination` in the only table.
fn states(api: &MemoryRouteApi, destination: IpNet) -> Vec<(Origin, RouteState)> {
    api.tables()[0]
        .routes
        .iter()
        .filter(|x| x.destination == destination)
        .map(|x| (x.origin, x.state))
        .collect()
}

#[tokio::test]
async fn behaves_like_ec2() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let ids = ids(&r);

    // Static route beside the propagated one.
    api.create_route(&r).await.unwrap();
    let t = &api.describe_route_tables(&ids).await.unwrap()[0];
    let for_prefix: Vec<Origin> = t
        .routes
        .iter()
        .filter(|x| x.destination == r.destination)
        .map(|x| x.origin)
        .collect();
    assert_eq!(for_prefix, [Origin::Propagated, Origin::CreateRoute]);

    let dup = api.create_route(&r).await.unwrap_err();
    assert_eq!(dup.kind, ErrorKind::RouteAlreadyExists);
    assert_eq!(dup.code.as_deref(), Some("RouteAlreadyExists"));

    api.delete_route(&r.route_table_id, r.destination)
        .await
        .unwrap();
    let missing = api
        .delete_route(&r.route_table_id, r.destination)
        .await
        .unwrap_err();
    assert_eq!(missing.kind, ErrorKind::RouteNotFound);
    // Deleting our static route leaves the propagated one.
    let t = &api.describe_route_tables(&ids).await.unwrap()[0];
    assert!(t
        .routes
        .iter()
        .any(|x| x.destination == r.destination && x.origin == Origin::Propagated));

    // ReplaceRoute cannot replace a propagated route.
    let e = api.replace_route(&r).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("InvalidParameterValue"));
    assert!(e.message.contains("Use CreateRoute instead"));
}

#[tokio::test]
async fn a_missing_table_is_absent_from_the_answer_and_hides_no_other() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let asked = [
        "rtb-0fffffffffffffff0".to_string(),
        r.route_table_id.clone(),
        r.route_table_id.clone(),
    ];
    let tables = api.describe_route_tables(&asked).await.unwrap();
    let got: Vec<&str> = tables.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(got, [r.route_table_id.as_str()], "each existing table once");
    assert!(api
        .describe_route_tables(&["rtb-0fffffffffffffff0".to_string()])
        .await
        .unwrap()
        .is_empty());
    // No ids is no tables, and no call.
    let calls = api.calls().len();
    assert!(api.describe_route_tables(&[]).await.unwrap().is_empty());
    assert_eq!(api.calls().len(), calls);
}

#[tokio::test]
async fn unknown_tables_and_enis_fail_writes_with_ec2_codes() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let bad_table = ManagedRoute {
        route_table_id: "rtb-ffffffff".into(),
        ..r.clone()
    };
    let e = api.create_route(&bad_table).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::TableNotFound);
    assert_eq!(e.code.as_deref(), Some("InvalidRouteTableID.NotFound"));
    let bad_eni = ManagedRoute {
        target_eni: "eni-ffffffff".into(),
        ..r.clone()
    };
    assert_eq!(
        api.create_route(&bad_eni).await.unwrap_err().kind,
        ErrorKind::EniNotFound
    );
    // Reads leave out what does not exist, as EC2's filter does.
    let read = api
        .describe_network_interfaces(&["eni-ffffffff".into(), r.target_eni.clone()])
        .await
        .unwrap();
    let got: Vec<&str> = read.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(got, [r.target_eni.as_str()]);
}

#[tokio::test]
async fn the_local_route_cannot_be_deleted_or_replaced() {
    let r = managed(SEED_VPC_CIDR);
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let e = api
        .delete_route(&r.route_table_id, r.destination)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("InvalidParameterValue"));
    assert_eq!(
        api.replace_route(&r).await.unwrap_err().kind,
        ErrorKind::Other
    );
    assert_eq!(
        api.create_route(&r).await.unwrap_err().kind,
        ErrorKind::RouteAlreadyExists
    );
}

#[tokio::test]
async fn injected_faults_fail_the_next_call_of_that_op_only() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    api.inject_fault(
        "CreateRoute",
        CloudError::from_code("RequestLimitExceeded", "slow down"),
    );
    assert!(api.describe_route_tables(&ids(&r)).await.is_ok());
    assert_eq!(
        api.create_route(&r).await.unwrap_err().kind,
        ErrorKind::Throttled
    );
    api.create_route(&r).await.unwrap();
    let ops: Vec<(&str, bool)> = api.calls().iter().map(|c| (c.op, c.ok)).collect();
    assert_eq!(
        ops,
        [
            ("DescribeRouteTables", true),
            ("CreateRoute", false),
            ("CreateRoute", true)
        ]
    );
}

#[tokio::test]
async fn routes_to_a_detached_or_deleted_interface_are_blackholes() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    api.create_route(&r).await.unwrap();
    let ours = (Origin::CreateRoute, RouteState::Active);
    let dx = (Origin::Propagated, RouteState::Active);
    assert_eq!(states(&api, r.destination), [dx, ours]);
    let eni = |api: &MemoryRouteApi| {
        futures::executor::block_on(
            api.describe_network_interfaces(std::slice::from_ref(&r.target_eni)),
        )
        .unwrap()
        .remove(0)
    };
    assert_eq!(eni(&api).status, EniStatus::InUse);
    assert!(eni(&api).attached && eni(&api).is_forwarding_target());

    api.detach_network_interface(&r.target_eni).unwrap();
    let hole = (Origin::CreateRoute, RouteState::Blackhole);
    assert_eq!(states(&api, r.destination), [dx, hole]);
    let detached = eni(&api);
    assert_eq!(
        (detached.status.as_str(), detached.attached),
        ("available", false)
    );
    // The describe call shows it too, not only the snapshot.
    let read = api.describe_route_tables(&ids(&r)).await.unwrap();
    assert_eq!(read, api.tables());

    api.attach_network_interface(&r.target_eni).unwrap();
    assert_eq!(states(&api, r.destination), [dx, ours]);

    api.delete_network_interface(&r.target_eni).unwrap();
    assert_eq!(states(&api, r.destination), [dx, hole], "the route stays");
    assert!(api
        .describe_network_interfaces(std::slice::from_ref(&r.target_eni))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        api.attach_network_interface(&r.target_eni)
            .unwrap_err()
            .code
            .as_deref(),
        Some("InvalidNetworkInterfaceID.NotFound")
    );
    // Routes to interfaces the fake never knew keep the state they were given.
    let other = Route {
        destination: "10.9.0.0/16".parse().unwrap(),
        target: Target::NetworkInterface("eni-0999999999999999f".into()),
        origin: Origin::CreateRoute,
        state: RouteState::Active,
    };
    api.insert_route(&r.route_table_id, other.clone()).unwrap();
    assert!(api.tables()[0].routes.contains(&other));
}

#[tokio::test]
async fn propagated_routes_can_be_withdrawn_and_come_back() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    api.create_route(&r).await.unwrap();
    let ours = (Origin::CreateRoute, RouteState::Active);
    let dx = (Origin::Propagated, RouteState::Active);

    api.withdraw_propagated(&r.route_table_id, r.destination)
        .unwrap();
    assert_eq!(states(&api, r.destination), [ours], "static route stays");
    let again = api
        .withdraw_propagated(&r.route_table_id, r.destination)
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::RouteNotFound);

    api.propagate(&r.route_table_id, r.destination, SEED_VGW)
        .unwrap();
    api.propagate(&r.route_table_id, r.destination, SEED_VGW)
        .unwrap();
    assert_eq!(
        states(&api, r.destination),
        [ours, dx],
        "one propagated route"
    );
    let t = &api.tables()[0];
    let learned = t
        .routes
        .iter()
        .find(|x| x.origin == Origin::Propagated)
        .unwrap();
    assert_eq!(learned.target, Target::Gateway(SEED_VGW.into()));
    // Our static route can still be deleted and leaves the DX route.
    api.delete_route(&r.route_table_id, r.destination)
        .await
        .unwrap();
    assert_eq!(states(&api, r.destination), [dx]);
    assert_eq!(
        api.propagate("rtb-0fffffffffffffff0", r.destination, SEED_VGW)
            .unwrap_err()
            .kind,
        ErrorKind::TableNotFound
    );
}

#[tokio::test]
async fn insert_route_holds_one_static_route_per_destination() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let by_hand = |target: &str| Route {
        destination: r.destination,
        target: Target::Other(target.into()),
        origin: Origin::CreateRoute,
        state: RouteState::Active,
    };
    api.insert_route(&r.route_table_id, by_hand("tgw-0123456789abcdef0"))
        .unwrap();
    let e = api
        .insert_route(&r.route_table_id, by_hand("pcx-0123456789abcdef0"))
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("RouteAlreadyExists"));
    // The seeded propagated route is there too: a second one is refused as well.
    let e = api
        .insert_route(
            &r.route_table_id,
            Route {
                origin: Origin::Propagated,
                target: Target::Gateway(SEED_VGW.into()),
                ..by_hand("-")
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RouteAlreadyExists);
    assert_eq!(
        api.insert_route("rtb-0fffffffffffffff0", by_hand("x"))
            .unwrap_err()
            .kind,
        ErrorKind::TableNotFound
    );
    // CreateRoute agrees: the static route by hand blocks ours.
    assert_eq!(
        api.create_route(&r).await.unwrap_err().kind,
        ErrorKind::RouteAlreadyExists
    );
}

#[tokio::test]
async fn dry_run_permission_checks_are_not_mutating_calls() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    api.deny("DeleteRoute");
    assert_eq!(
        api.is_permitted(&Action::Create(r.clone())).await,
        Ok(Some(true))
    );
    assert_eq!(
        api.is_permitted(&Action::Delete(r.clone())).await,
        Ok(Some(false))
    );
    assert_eq!(api.calls().len(), 2, "still recorded as calls");
    assert!(api.mutating_calls().is_empty());
    api.create_route(&r).await.unwrap();
    let ops: Vec<&str> = api.mutating_calls().iter().map(|c| c.op).collect();
    assert_eq!(ops, ["CreateRoute"]);
}

fn tag(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

#[tokio::test]
async fn tags_are_set_overwritten_deleted_and_read_back() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let t = r.route_table_id.as_str();
    api.create_tags(t, &[tag("route-failover:verdict:a", "Primary 1")])
        .await
        .unwrap();
    api.create_tags(
        t,
        &[
            tag("route-failover:verdict:a", "Backup 2"),
            tag("route-failover:verdict:b", "Primary 7"),
        ],
    )
    .await
    .unwrap();
    let read = api.describe_route_tables(&ids(&r)).await.unwrap();
    let tags: Vec<(&str, &str)> = read[0]
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        tags,
        [
            ("route-failover:verdict:a", "Backup 2"),
            ("route-failover:verdict:b", "Primary 7")
        ]
    );
    api.delete_tags(
        t,
        &[
            ("route-failover:verdict:a".to_string(), None),
            ("not-there".to_string(), None),
        ],
    )
    .await
    .unwrap();
    let read = api.describe_route_tables(&ids(&r)).await.unwrap();
    assert_eq!(
        read[0].tags.keys().collect::<Vec<_>>(),
        ["route-failover:verdict:b"]
    );
    let ops: Vec<&str> = api.mutating_calls().iter().map(|c| c.op).collect();
    assert_eq!(ops, ["CreateTags", "CreateTags", "DeleteTags"]);
    // Nothing to set or delete is no call (an empty DeleteTags would clear all).
    api.create_tags(t, &[]).await.unwrap();
    api.delete_tags(t, &[]).await.unwrap();
    assert_eq!(api.mutating_calls().len(), 3);
    assert_eq!(api.tables()[0].tags.len(), 1);
}

#[tokio::test]
async fn tags_stop_at_ec2s_limit_of_fifty_and_need_a_known_table() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let t = r.route_table_id.as_str();
    let many: Vec<(String, String)> = (0..49).map(|i| tag(&format!("k{i}"), "v")).collect();
    api.create_tags(t, &many).await.unwrap();
    // Overwriting existing keys does not count against the limit.
    api.create_tags(t, &many[..10]).await.unwrap();
    let e = api
        .create_tags(t, &[tag("k50", "v"), tag("k51", "v")])
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("TagLimitExceeded"));
    assert_eq!(api.tables()[0].tags.len(), 49, "all or nothing");
    api.create_tags(t, &[tag("k50", "v"), tag("k0", "w")])
        .await
        .unwrap();
    assert_eq!(api.tables()[0].tags.len(), 50);
    assert_eq!(api.tables()[0].tags["k0"], "w");
    // EC2's own aws: tags do not count (a real call cannot add them; the
    // world sets them, as CloudFormation would).
    let full = api.create_tags(t, &[tag("k52", "v")]).await.unwrap_err();
    assert_eq!(full.code.as_deref(), Some("TagLimitExceeded"));
    api.delete_tags(t, &[("k48".to_string(), None)])
        .await
        .unwrap();
    api.set_tag(t, "aws:cloudformation:stack-name", "net");
    api.create_tags(t, &[tag("k52", "v")]).await.unwrap();
    assert_eq!(api.tables()[0].tags.len(), 51);

    for e in [
        api.create_tags("rtb-0fffffffffffffff0", &[tag("k", "v")])
            .await
            .unwrap_err(),
        api.delete_tags("rtb-0fffffffffffffff0", &[("k".to_string(), None)])
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code.as_deref(), Some("InvalidRouteTableID.NotFound"));
        assert_eq!(e.kind, ErrorKind::TableNotFound);
    }
}

/// EC2's DeleteTags with a value deletes the tag only while it still holds
/// that value (moto and LocalStack do the same; tests/parity.rs compares):
/// an agent forgetting a retired peer's verdict never deletes one the peer
/// wrote since. A key that is not there is no error.
#[tokio::test]
async fn delete_tags_with_a_value_deletes_only_a_tag_that_still_holds_it() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let t = r.route_table_id.as_str();
    api.create_tags(t, &[tag("a", "old"), tag("b", "x"), tag("c", "")])
        .await
        .unwrap();
    let some = |k: &str, v: &str| (k.to_string(), Some(v.to_string()));
    // The value changed since it was read: kept.
    api.delete_tags(t, &[some("a", "older")]).await.unwrap();
    assert_eq!(api.tables()[0].tags["a"], "old");
    // An empty value matches only an empty value.
    api.delete_tags(t, &[some("b", "")]).await.unwrap();
    assert!(api.tables()[0].tags.contains_key("b"));
    api.delete_tags(t, &[some("c", ""), some("a", "old"), some("gone", "v")])
        .await
        .unwrap();
    let keys: Vec<String> = api.tables()[0].tags.keys().cloned().collect();
    assert_eq!(keys, ["b"]);
    // Without a value, whatever it holds.
    api.delete_tags(t, &[("b".to_string(), None)])
        .await
        .unwrap();
    assert!(api.tables()[0].tags.is_empty());
}

#[tokio::test]
async fn tag_permissions_are_asked_without_changing_anything() {
    use crate::cloud::TagCall;
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let t = r.route_table_id.as_str();
    let key = "route-failover:verdict:a";
    assert_eq!(
        api.is_permitted_tags(t, TagCall::Create, key).await,
        Ok(Some(true))
    );
    api.deny("CreateTags");
    assert_eq!(
        api.is_permitted_tags(t, TagCall::Create, key).await,
        Ok(Some(false))
    );
    assert_eq!(
        api.is_permitted_tags(t, TagCall::Delete, key).await,
        Ok(Some(true))
    );
    let e = api
        .is_permitted_tags("rtb-0fffffffffffffff0", TagCall::Delete, key)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TableNotFound);
    assert!(api.mutating_calls().is_empty());
    assert!(api.tables()[0].tags.is_empty());
}

#[tokio::test(start_paused = true)]
async fn tags_can_lag_routes_as_eventual_consistency_allows() {
    let r = managed("10.1.0.0/16");
    let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
    let tag = |v: &str| [("k".to_string(), v.to_string())];
    api.create_tags(&r.route_table_id, &tag("old"))
        .await
        .unwrap();
    api.set_tag_lag(Duration::from_secs(3));
    api.create_tags(&r.route_table_id, &tag("new"))
        .await
        .unwrap();
    api.create_route(&r).await.unwrap();
    let read = |api: &MemoryRouteApi| {
        let t = &api.tables()[0];
        (t.tags.get("k").cloned(), t.routes.len())
    };
    let described = api.describe_route_tables(&ids(&r)).await.unwrap();
    // The route at once, the tag as it was before.
    assert_eq!(described[0].tags.get("k").map(String::as_str), Some("old"));
    assert_eq!(described[0].routes.len(), read(&api).1);
    tokio::time::advance(Duration::from_secs(3)).await;
    let described = api.describe_route_tables(&ids(&r)).await.unwrap();
    assert_eq!(described[0].tags.get("k").map(String::as_str), Some("new"));
    api.set_tag_lag(Duration::ZERO);
    assert_eq!(read(&api).0.as_deref(), Some("new"));
}
