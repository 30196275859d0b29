//! An in-process route API that behaves like EC2, for the demo and tests.
//!
//! It keeps EC2's semantics where LocalStack does not: a duplicate
//! `CreateRoute` fails with `RouteAlreadyExists`, a static route can sit
//! beside a propagated one for the same prefix, `ReplaceRoute` cannot
//! replace a propagated route (`InvalidParameterValue`, as EC2 answers), the
//! `local` route cannot be touched, and a route to an interface that is
//! detached or deleted reads as `blackhole`. The world around the agent
//! (interfaces detached, BGP routes withdrawn, routes added by hand) is
//! changed through the helpers in `world`.

mod world;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::time::Instant;

use super::{CloudError, ErrorKind, NetworkInterface, RouteApi, TagCall};
use crate::model::Action;
use crate::model::{ManagedRoute, Origin, Route, RouteState, RouteTable, Target};

/// The VPC CIDR that seeded tables carry as their `local` route.
pub const SEED_VPC_CIDR: &str = "10.0.0.0/16";
/// The virtual private gateway that seeded tables learn DX routes from.
pub const SEED_VGW: &str = "vgw-0a1b2c3d4e5f60718";
/// EC2's limit of user tags on one resource.
pub const MAX_TAGS: usize = 50;

/// How many of `keys` count toward [`MAX_TAGS`]: EC2 leaves out the
/// `aws:` tags it adds itself (CloudFormation's, for one).
pub fn user_tags<'a>(keys: impl IntoIterator<Item = &'a String>) -> usize {
    keys.into_iter().filter(|k| !k.starts_with("aws:")).count()
}

/// One call made to the fake, for tests to assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    /// `rtb-… 10.1.0.0/16` for route calls, the ids for describes.
    pub subject: String,
    pub ok: bool,
}

#[derive(Debug, Default)]
struct State {
    tables: BTreeMap<String, RouteTable>,
    enis: BTreeMap<String, NetworkInterface>,
    /// Interfaces deleted while routes may still point at them.
    deleted_enis: BTreeSet<String>,
    /// Subnet → its VPC.
    subnets: BTreeMap<String, String>,
    /// Operations the credentials may not make (for `is_permitted`).
    denied: BTreeSet<&'static str>,
    /// Errors to return, in order, from the next calls of an operation.
    faults: Vec<(&'static str, CloudError)>,
    calls: Vec<Call>,
    /// How late describes show tags (EC2 is eventually consistent); zero:
    /// at once. Routes are never late, so a read can show a route with
    /// the tags from before the verdict that explains it.
    tag_lag: Duration,
    /// While `tag_lag` is set: each table's tags since each change
    /// (`None`: since before the lag was set).
    tag_history: BTreeMap<String, Vec<TagsSince>>,
}

/// A table's tags from an instant on (`None`: since before the lag was set).
type TagsSince = (Option<Instant>, BTreeMap<String, String>);

impl State {
    /// Notes `table`'s tags after a change, for lagging reads.
    fn tags_changed(&mut self, table: &str) {
        if self.tag_lag.is_zero() {
            return;
        }
        if let Some(t) = self.tables.get(table) {
            let tags = t.tags.clone();
            self.tag_history
                .entry(table.to_string())
                .or_default()
                .push((Some(Instant::now()), tags));
        }
    }

    /// The tags a describe shows of `table` now: as they were `tag_lag` ago.
    fn lagging_tags(&self, table: &str) -> Option<BTreeMap<String, String>> {
        let cutoff = Instant::now().checked_sub(self.tag_lag)?;
        self.tag_history
            .get(table)?
            .iter()
            .rev()
            .find(|(since, _)| since.is_none_or(|at| at <= cutoff))
            .map(|(_, tags)| tags.clone())
    }

    /// A table as DescribeRouteTables shows it: a route's state follows its
    /// interface (EC2 derives it; it is never stored).
    fn observed(&self, table: &RouteTable) -> RouteTable {
        let mut table = table.clone();
        for route in &mut table.routes {
            if let Target::NetworkInterface(id) = &route.target {
                if let Some(eni) = self.enis.get(id) {
                    route.state = if eni.attached {
                        RouteState::Active
                    } else {
                        RouteState::Blackhole
                    };
                } else if self.deleted_enis.contains(id) {
                    route.state = RouteState::Blackhole;
                }
            }
        }
        table
    }
}

/// The fake itself. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct MemoryRouteApi {
    state: Mutex<State>,
}

impl MemoryRouteApi {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot of every table as a describe would show it, in id order.
    pub fn tables(&self) -> Vec<RouteTable> {
        let state = self.lock();
        state.tables.values().map(|t| state.observed(t)).collect()
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls that would change something (routes, tags); neither reads
    /// nor DryRun permission checks.
    pub fn mutating_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !c.op.starts_with("Describe") && c.op != DRY_RUN)
            .collect()
    }

    /// Records a call and runs it unless a fault was injected for it.
    fn call<T>(
        &self,
        op: &'static str,
        subject: String,
        f: impl FnOnce(&mut State) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let mut state = self.lock();
        let result = match state.faults.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(state.faults.remove(i).1),
            None => f(&mut state),
        };
        state.calls.push(Call {
            op,
            subject,
            ok: result.is_ok(),
        });
        result
    }
}

/// The op name `is_permitted` is recorded under.
const DRY_RUN: &str = "DryRun";

fn table_not_found(id: &str) -> CloudError {
    CloudError::from_code(
        "InvalidRouteTableID.NotFound",
        format!("The routeTable ID '{id}' does not exist"),
    )
}

fn route_not_found(id: &str, destination: IpNet) -> CloudError {
    CloudError::from_code(
        "InvalidRoute.NotFound",
        format!("There is no route defined for '{destination}' in the route table '{id}'"),
    )
}

fn route_already_exists(destination: IpNet) -> CloudError {
    CloudError::from_code(
        "RouteAlreadyExists",
        format!("The route identified by {destination} already exists."),
    )
}

fn eni_not_found(id: &str) -> CloudError {
    CloudError::from_code(
        "InvalidNetworkInterfaceID.NotFound",
        format!("The networkInterface ID '{id}' does not exist"),
    )
}

fn table_mut<'a>(state: &'a mut State, id: &str) -> Result<&'a mut RouteTable, CloudError> {
    state.tables.get_mut(id).ok_or_else(|| table_not_found(id))
}

fn check_eni(state: &State, id: &str) -> Result<(), CloudError> {
    if state.enis.contains_key(id) {
        Ok(())
    } else {
        Err(eni_not_found(id))
    }
}

fn our_route(route: &ManagedRoute) -> Route {
    Route {
        destination: route.destination,
        target: Target::NetworkInterface(route.target_eni.clone()),
        origin: Origin::CreateRoute,
        state: RouteState::Active,
    }
}

fn local_route_error(id: &str, destination: IpNet) -> CloudError {
    CloudError::new(
        ErrorKind::Other,
        Some("InvalidParameterValue"),
        format!("cannot modify the local route {destination} in route table {id}"),
    )
}

/// EC2 answers InvalidParameterValue here, not InvalidRoute.NotFound.
fn no_route_to_replace(destination: IpNet) -> CloudError {
    CloudError::new(
        ErrorKind::Other,
        Some("InvalidParameterValue"),
        format!(
            "There is no route defined for '{destination}' in the route table. \
             Use CreateRoute instead."
        ),
    )
}

fn subject(route_table_id: &str, destination: IpNet) -> String {
    format!("{route_table_id} {destination}")
}

#[async_trait]
impl RouteApi for MemoryRouteApi {
    async fn describe_route_tables(&self, ids: &[String]) -> Result<Vec<RouteTable>, CloudError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.call("DescribeRouteTables", ids.join(","), |state| {
            let mut seen = BTreeSet::new();
            Ok(ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| state.tables.get(id))
                .map(|t| {
                    let mut t = state.observed(t);
                    if let Some(tags) = state.lagging_tags(&t.id) {
                        t.tags = tags;
                    }
                    t
                })
                .collect())
        })
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.call("DescribeNetworkInterfaces", ids.join(","), |state| {
            let mut seen = BTreeSet::new();
            Ok(ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| state.enis.get(id).cloned())
                .collect())
        })
    }

    async fn create_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        let subject = subject(&route.route_table_id, route.destination);
        self.call("CreateRoute", subject, |state| {
            check_eni(state, &route.target_eni)?;
            let table = table_mut(state, &route.route_table_id)?;
            // A propagated route for the prefix does not block a static one.
            if table
                .routes
                .iter()
                .any(|r| r.is_static() && r.destination == route.destination)
            {
                return Err(route_already_exists(route.destination));
            }
            table.routes.push(our_route(route));
            Ok(())
        })
    }

    async fn replace_route(&self, route: &ManagedRoute) -> Result<(), CloudError> {
        let subject = subject(&route.route_table_id, route.destination);
        self.call("ReplaceRoute", subject, |state| {
            check_eni(state, &route.target_eni)?;
            let id = route.route_table_id.as_str();
            let table = table_mut(state, id)?;
            // EC2 answers InvalidParameterValue here, not InvalidRoute.NotFound.
            let existing = table
                .routes
                .iter_mut()
                .find(|r| r.is_static() && r.destination == route.destination)
                .ok_or_else(|| no_route_to_replace(route.destination))?;
            if existing.origin == Origin::CreateRouteTable {
                return Err(local_route_error(id, route.destination));
            }
            *existing = our_route(route);
            Ok(())
        })
    }

    async fn restore_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
        target: &Target,
    ) -> Result<(), CloudError> {
        self.call(
            "ReplaceRoute",
            subject(route_table_id, destination),
            |state| {
                if let Target::NetworkInterface(eni) = target {
                    check_eni(state, eni)?;
                }
                let table = table_mut(state, route_table_id)?;
                let existing = table
                    .routes
                    .iter_mut()
                    .find(|r| r.is_static() && r.destination == destination)
                    .ok_or_else(|| no_route_to_replace(destination))?;
                if existing.origin == Origin::CreateRouteTable {
                    return Err(local_route_error(route_table_id, destination));
                }
                existing.target = target.clone();
                existing.origin = Origin::CreateRoute;
                existing.state = RouteState::Active;
                Ok(())
            },
        )
    }

    async fn delete_route(
        &self,
        route_table_id: &str,
        destination: IpNet,
    ) -> Result<(), CloudError> {
        self.call(
            "DeleteRoute",
            subject(route_table_id, destination),
            |state| {
                let table = table_mut(state, route_table_id)?;
                let i = table
                    .routes
                    .iter()
                    .position(|r| r.is_static() && r.destination == destination)
                    .ok_or_else(|| route_not_found(route_table_id, destination))?;
                if table.routes[i].origin == Origin::CreateRouteTable {
                    return Err(local_route_error(route_table_id, destination));
                }
                table.routes.remove(i);
                Ok(())
            },
        )
    }

    async fn subnet_route_table(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.call(
            "DescribeRouteTables",
            format!("subnet {subnet_id}"),
            |state| {
                let vpc = state.subnets.get(subnet_id).ok_or_else(|| {
                    CloudError::new(
                        ErrorKind::Other,
                        Some("InvalidSubnetID.NotFound"),
                        format!("The subnet ID '{subnet_id}' does not exist"),
                    )
                })?;
                let tables = state.tables.values();
                let explicit = tables
                    .clone()
                    .find(|t| t.subnets.iter().any(|s| s == subnet_id));
                let main = || {
                    tables
                        .clone()
                        .find(|t| t.main && t.vpc_id.as_ref() == Some(vpc))
                };
                explicit.or_else(main).map(|t| t.id.clone()).ok_or_else(|| {
                    CloudError::new(
                        ErrorKind::Other,
                        None,
                        format!(
                            "no route table for subnet {subnet_id} (VPC {vpc} has no main table)"
                        ),
                    )
                })
            },
        )
    }

    async fn is_permitted(&self, action: &Action) -> Result<Option<bool>, CloudError> {
        let route = action.route();
        let subject = subject(&route.route_table_id, route.destination);
        self.call(DRY_RUN, subject, |state| {
            Ok(Some(!state.denied.contains(action.op())))
        })
    }

    async fn is_permitted_tags(
        &self,
        resource_id: &str,
        call: TagCall,
        key: &str,
    ) -> Result<Option<bool>, CloudError> {
        self.call(DRY_RUN, format!("{resource_id} {key}"), |state| {
            table_mut(state, resource_id)?;
            Ok(Some(!state.denied.contains(call.op())))
        })
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        if tags.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
        let subject = format!("{resource_id} {}", keys.join(","));
        self.call("CreateTags", subject, |state| {
            let table = table_mut(state, resource_id)?;
            let added = keys
                .iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| !table.tags.contains_key(**k))
                .count();
            // All or nothing, as EC2: one call past the limit changes no tag.
            if user_tags(table.tags.keys()) + added > MAX_TAGS {
                return Err(CloudError::from_code(
                    "TagLimitExceeded",
                    "The maximum number of Tags for a resource has been reached.",
                ));
            }
            for (key, value) in tags {
                table.tags.insert(key.clone(), value.clone());
            }
            state.tags_changed(resource_id);
            Ok(())
        })
    }

    async fn delete_tags(
        &self,
        resource_id: &str,
        tags: &[(String, Option<String>)],
    ) -> Result<(), CloudError> {
        if tags.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
        let subject = format!("{resource_id} {}", keys.join(","));
        self.call("DeleteTags", subject, |state| {
            let table = table_mut(state, resource_id)?;
            for (key, value) in tags {
                // With a value, only while the tag still holds it (EC2's rule).
                if value.is_none() || table.tags.get(key) == value.as_ref() {
                    table.tags.remove(key);
                }
            }
            state.tags_changed(resource_id);
            Ok(())
        })
    }
}
