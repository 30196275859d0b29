//! Fault injection with mockall: the agent keeps its decision through
//! throttling and long API outages, keeps probing meanwhile, and a dry run
//! never makes a mutating call.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ipnet::IpNet;
use mockall::mock;
use route_failover::backoff::backoff_range;
use route_failover::cloud::dry_run::DryRun;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::{CloudError, ErrorKind, NetworkInterface, RouteApi};
use route_failover::events::Event;
use route_failover::fsm::Via;
use route_failover::model::Action;
use route_failover::model::{ManagedRoute, RouteTable, Target};
use route_failover::probe::scripted::Reply;

mock! {
    pub Api {}
    #[async_trait]
    impl RouteApi for Api {
        async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError>;
        async fn describe_network_interfaces(&self, ids: &[String]) -> Result<Vec<NetworkInterface>, CloudError>;
        async fn create_route(&self, route: &ManagedRoute) -> Result<(), CloudError>;
        async fn replace_route(&self, route: &ManagedRoute) -> Result<(), CloudError>;
        async fn restore_route(&self, route_table_id: &str, destination: IpNet, target: &Target) -> Result<(), CloudError>;
        async fn delete_route(&self, route_table_id: &str, destination: IpNet) -> Result<(), CloudError>;
        async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError>;
        async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError>;
    }
}

/// A mock whose reads and successful writes go to an in-memory EC2, so
/// each test only scripts the failures.
fn backed_by(world: &Arc<MemoryRouteApi>) -> MockApi {
    let mut mock = MockApi::new();
    let w = Arc::clone(world);
    mock.expect_describe_route_tables().returning(move |ids| {
        let w = Arc::clone(&w);
        let ids = ids.to_vec();
        futures::executor::block_on(async move { w.describe_route_tables(&ids).await })
    });
    mock
}

fn apply_create(world: &Arc<MemoryRouteApi>, route: &ManagedRoute) -> Result<(), CloudError> {
    futures::executor::block_on(world.create_route(route))
}

#[tokio::test(start_paused = true)]
async fn throttling_then_success_converges() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut mock = backed_by(&world);
    let attempts = Arc::new(Mutex::new(0u32));
    let (w, a) = (Arc::clone(&world), Arc::clone(&attempts));
    mock.expect_create_route().returning(move |route| {
        let mut n = a.lock().unwrap();
        *n += 1;
        // The first two calls are throttled.
        if *n <= 2 {
            return Err(CloudError::from_code(
                "RequestLimitExceeded",
                "Request limit exceeded.",
            ));
        }
        apply_create(&w, route)
    });
    let mut h = Harness::start(&config, Arc::new(mock), Reply::None);
    h.converged(Via::Backup, secs(60)).await;
    assert_eq!(our_routes(&world.tables()), all_managed(&config));
    assert_eq!(
        *attempts.lock().unwrap(),
        4 + 2,
        "each route created once, plus the two throttled calls"
    );
    let events = h.stop().await;
    let throttled = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::RouteChange { result: Err(e), .. } if e.kind == ErrorKind::Throttled))
        .count();
    assert_eq!(throttled, 2);
}

#[tokio::test(start_paused = true)]
async fn a_long_api_outage_keeps_the_decision_and_probing_goes_on() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut mock = backed_by(&world);
    let healthy = Arc::new(Mutex::new(false));
    let (w, ok) = (Arc::clone(&world), Arc::clone(&healthy));
    mock.expect_create_route().returning(move |route| {
        if *ok.lock().unwrap() {
            apply_create(&w, route)
        } else {
            Err(CloudError::new(
                ErrorKind::Transient,
                None,
                "dispatch failure: connection refused",
            ))
        }
    });
    let mut h = Harness::start(&config, Arc::new(mock), Reply::None);
    h.transition(Via::Backup, secs(10)).await;
    let rounds_before = h.rounds();
    // Ten minutes of a broken API.
    h.run_for(secs(600)).await;
    assert!(our_routes(&world.tables()).is_empty());
    assert!(
        h.rounds() - rounds_before >= 590,
        "probing stalled during the outage"
    );
    let failures = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::RouteChange { result: Err(_), .. }))
        .count();
    // Retried with capped backoff (resync 30 s): each failed pass tries the
    // four routes once, then waits backoff(n). The fewest passes 600 s can
    // hold is when every wait is its longest, the most when every wait is
    // its shortest (plus the reads and calls themselves, which take no time
    // on this clock).
    let passes = |pick: fn((Duration, Duration)) -> Duration| {
        let (mut n, mut t) = (0u32, Duration::ZERO);
        while t <= secs(600) {
            n += 1;
            t += pick(backoff_range(n, secs(30)));
        }
        n as usize
    };
    let (fewest, most) = (passes(|r| r.1), passes(|r| r.0));
    assert_eq!(
        failures % 4,
        0,
        "{failures} failed calls: a pass tried only some routes"
    );
    assert!(
        (4 * (fewest - 1)..=4 * (most + 1)).contains(&failures),
        "{failures} failed calls, expected {} to {}",
        4 * (fewest - 1),
        4 * (most + 1)
    );

    *healthy.lock().unwrap() = true;
    h.converged(Via::Backup, secs(31)).await;
    assert_eq!(our_routes(&world.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_reads_the_agent_never_acts_blind() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut mock = MockApi::new();
    let reads_fail = Arc::new(Mutex::new(false));
    let (w, fail) = (Arc::clone(&world), Arc::clone(&reads_fail));
    mock.expect_describe_route_tables().returning(move |ids| {
        if *fail.lock().unwrap() {
            return Err(CloudError::from_code(
                "ExpiredToken",
                "The security token included in the request is expired",
            ));
        }
        futures::executor::block_on(w.describe_route_tables(ids))
    });
    let w = Arc::clone(&world);
    mock.expect_create_route()
        .returning(move |r| apply_create(&w, r));
    mock.expect_delete_route().never();
    let mut h = Harness::start(&config, Arc::new(mock), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    *reads_fail.lock().unwrap() = true;
    // DX heals while the API is unreachable: the agent decides to fail back
    // but cannot act, and must not pretend it did.
    h.script.set("DX restored", Reply::All);
    h.transition(Via::Primary, secs(60)).await;
    h.run_for(secs(120)).await;
    assert_eq!(our_routes(&world.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn dry_run_makes_no_mutating_call() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut mock = backed_by(&world);
    mock.expect_create_route().never();
    mock.expect_replace_route().never();
    mock.expect_delete_route().never();
    let out: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
    let dry = Arc::new(DryRun::with_writer(
        Arc::new(mock),
        Some("us-east-1".into()),
        out.clone(),
    ));
    let mut h = Harness::start(&config, dry.clone(), Reply::None);
    h.wait_for(
        "intended creates",
        secs(10),
        |e| matches!(e, Event::Intended { path: Via::Backup, actions } if actions.len() == 4),
    )
    .await;
    // A resync later the overlay still says the routes exist: nothing printed twice.
    h.run_for(secs(65)).await;
    h.script.set("DX restored", Reply::All);
    h.wait_for(
        "intended deletes",
        secs(60),
        |e| matches!(e, Event::Intended { path: Via::Primary, actions } if actions.len() == 4),
    )
    .await;
    h.run_for(secs(35)).await;
    let events = h.stop().await;
    // Nothing changed, so nothing says it did.
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, Event::Converged { .. } | Event::RouteChange { .. })),
        "a dry run reported a change or a convergence"
    );

    let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert!(lines[..4]
        .iter()
        .all(|l| l.starts_with("DRY-RUN aws ec2 create-route --route-table-id rtb-")));
    assert!(lines[4..]
        .iter()
        .all(|l| l.starts_with("DRY-RUN aws ec2 delete-route --route-table-id rtb-")));
    assert!(lines.iter().all(|l| l.ends_with("--region us-east-1")));
    assert!(lines
        .iter()
        .any(|l| l.contains("--destination-ipv6-cidr-block fd00:1::/48")));
    assert!(our_routes(&world.tables()).is_empty());
}

/// An API whose writes never return: a call hung in flight.
struct HungWrites(Arc<MemoryRouteApi>);

#[async_trait]
impl RouteApi for HungWrites {
    async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError> {
        self.0.describe_route_tables(ids).await
    }
    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        self.0.describe_network_interfaces(ids).await
    }
    async fn create_route(&self, _: &ManagedRoute) -> Result<(), CloudError> {
        futures::future::pending().await
    }
    async fn replace_route(&self, _: &ManagedRoute) -> Result<(), CloudError> {
        futures::future::pending().await
    }
    async fn restore_route(&self, _: &str, _: IpNet, _: &Target) -> Result<(), CloudError> {
        futures::future::pending().await
    }
    async fn delete_route(&self, _: &str, _: IpNet) -> Result<(), CloudError> {
        futures::future::pending().await
    }
    async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.0.subnet_route_table(subnet_id).await
    }
    async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError> {
        self.0.is_permitted(action).await
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_abandons_a_hung_call_within_its_bound_and_probing_went_on() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api: Arc<dyn RouteApi> = Arc::new(HungWrites(world.clone()));
    let mut h = Harness::start(&config, Arc::clone(&api), Reply::None);
    h.transition(Via::Backup, secs(10)).await;
    // The reconciler is stuck in CreateRoute; rounds keep coming.
    let before = h.rounds();
    h.run_for(secs(60)).await;
    assert!(
        h.rounds() - before >= 59,
        "probing waited for the hung call"
    );
    let stopping = tokio::time::Instant::now();
    tokio::time::timeout(secs(30), h.stop())
        .await
        .expect("shutdown waited for the hung call instead of abandoning it");
    let took = stopping.elapsed();
    assert!(took <= secs(11), "shutdown took {took:?}");
    assert!(our_routes(&world.tables()).is_empty());
    // The reconciler task was aborted, not left running detached: nothing
    // holds the API any more.
    tokio::task::yield_now().await;
    assert_eq!(Arc::strong_count(&api), 1, "the hung reconciler still runs");
}
