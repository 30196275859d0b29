//! Route APIs for agent tests: an in-memory EC2 with slow writes, failing
//! reads, or a hook that changes the world between two reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::{CloudError, NetworkInterface, RouteApi};
use route_failover::model::{Action, ManagedRoute, RouteTable, Target};

type Hook = Box<dyn Fn(&[String], &MemoryRouteApi) + Send + Sync>;

/// The in-memory EC2, with knobs.
pub struct Knobs {
    pub world: Arc<MemoryRouteApi>,
    /// Each mutating call takes this long (paused clock).
    pub write_delay: Duration,
    /// While set, every DescribeRouteTables fails with this error.
    pub read_error: Mutex<Option<CloudError>>,
    /// Called with the ids of each DescribeRouteTables, before it reads.
    pub before_read: Option<Hook>,
    /// Each DescribeNetworkInterfaces takes this long (paused clock).
    pub describe_delay: Mutex<Duration>,
    reads: AtomicUsize,
    writes_started: AtomicUsize,
}

impl Knobs {
    pub fn new(world: Arc<MemoryRouteApi>) -> Self {
        Self {
            world,
            write_delay: Duration::ZERO,
            read_error: Mutex::new(None),
            before_read: None,
            describe_delay: Mutex::new(Duration::ZERO),
            reads: AtomicUsize::new(0),
            writes_started: AtomicUsize::new(0),
        }
    }

    pub fn slow_writes(mut self, delay: Duration) -> Self {
        self.write_delay = delay;
        self
    }

    pub fn before_read(
        mut self,
        hook: impl Fn(&[String], &MemoryRouteApi) + Send + Sync + 'static,
    ) -> Self {
        self.before_read = Some(Box::new(hook));
        self
    }

    /// From now on, DescribeNetworkInterfaces hangs for `delay` (an SDK
    /// retrying a throttled call).
    pub fn slow_describes(&self, delay: Duration) {
        *self.describe_delay.lock().unwrap() = delay;
    }

    pub fn fail_reads(&self, error: Option<CloudError>) {
        *self.read_error.lock().unwrap() = error;
    }

    /// DescribeRouteTables calls so far, failed ones included.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// Mutating calls started so far (finished or not).
    pub fn writes_started(&self) -> usize {
        self.writes_started.load(Ordering::SeqCst)
    }

    async fn write<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self.writes_started.fetch_add(1, Ordering::SeqCst);
        if !self.write_delay.is_zero() {
            tokio::time::sleep(self.write_delay).await;
        }
        call.await
    }
}

#[async_trait]
impl RouteApi for Knobs {
    async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(e) = self.read_error.lock().unwrap().clone() {
            return Err(e);
        }
        if let Some(hook) = &self.before_read {
            hook(ids, &self.world);
        }
        self.world.describe_route_tables(ids).await
    }
    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        let delay = *self.describe_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.world.describe_network_interfaces(ids).await
    }
    async fn create_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        self.write(self.world.create_route(route)).await
    }
    async fn replace_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        self.write(self.world.replace_route(route)).await
    }
    async fn restore_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
        target: &Target,
    ) -> Result<(), CloudError> {
        self.write(
            self.world
                .restore_route(route_table_id, destination, target),
        )
        .await
    }
    async fn delete_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
    ) -> Result<(), CloudError> {
        self.write(self.world.delete_route(route_table_id, destination))
            .await
    }
    async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.world.subnet_route_table(subnet_id).await
    }
    async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError> {
        self.world.is_permitted(action).await
    }
}
