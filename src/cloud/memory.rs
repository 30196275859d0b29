//! An in-process route API that behaves like EC2, for the demo and tests.
//!
//! It keeps EC2's semantics where LocalStack does not: a duplicate
//! `CreateRoute` fails with `RouteAlreadyExists`, a static route can sit
//! beside a propagated one for the same prefix, `ReplaceRoute` cannot
//! replace a propagated route (`InvalidParameterValue`, as EC2 answers), and
//! the `local` route cannot be touched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use ipnet::IpNet;

use super::{CloudError, ErrorKind, NetworkInterface, RouteApi};
use crate::model::Action;
use crate::model::{ManagedRoute, Origin, Route, RouteState, RouteTable, Target};

/// The VPC CIDR that seeded tables carry as their `local` route.
pub const SEED_VPC_CIDR: &str = "10.0.0.0/16";
/// The virtual private gateway that seeded tables learn DX routes from.
pub const SEED_VGW: &str = "vgw-0a1b2c3d4e5f60718";

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
    /// Subnet → its VPC.
    subnets: BTreeMap<String, String>,
    /// Operations the credentials may not make (for `is_permitted`).
    denied: BTreeSet<&'static str>,
    /// Errors to return, in order, from the next calls of an operation.
    faults: Vec<(&'static str, CloudError)>,
    calls: Vec<Call>,
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

    /// A world in which every managed table exists with its `local` route
    /// and a route propagated from Direct Connect for each managed
    /// destination, and every target ENI exists with source/dest check off.
    pub fn seeded(routes: &[ManagedRoute]) -> Self {
        let api = Self::new();
        {
            let mut state = api.lock();
            for r in routes {
                let table = state
                    .tables
                    .entry(r.route_table_id.clone())
                    .or_insert_with(|| RouteTable {
                        id: r.route_table_id.clone(),
                        vpc_id: Some("vpc-0123456789abcdef0".to_string()),
                        routes: vec![Route {
                            destination: SEED_VPC_CIDR.parse().expect("valid CIDR"),
                            target: Target::Gateway("local".to_string()),
                            origin: Origin::CreateRouteTable,
                            state: RouteState::Active,
                        }],
                        ..RouteTable::default()
                    });
                let propagated = Route {
                    destination: r.destination,
                    target: Target::Gateway(SEED_VGW.to_string()),
                    origin: Origin::Propagated,
                    state: RouteState::Active,
                };
                if !table.routes.contains(&propagated) {
                    table.routes.push(propagated);
                }
                state
                    .enis
                    .entry(r.target_eni.clone())
                    .or_insert_with(|| NetworkInterface {
                        id: r.target_eni.clone(),
                        subnet_id: Some("subnet-0123456789abcdef0".to_string()),
                        source_dest_check: false,
                    });
            }
        }
        api
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add_table(&self, table: RouteTable) {
        self.lock().tables.insert(table.id.clone(), table);
    }

    pub fn add_network_interface(&self, eni: NetworkInterface) {
        self.lock().enis.insert(eni.id.clone(), eni);
    }

    /// Adds a subnet of `vpc_id`; associate it by listing it in a table's `subnets`.
    pub fn add_subnet(&self, subnet_id: &str, vpc_id: &str) {
        self.lock()
            .subnets
            .insert(subnet_id.to_string(), vpc_id.to_string());
    }

    /// Makes `is_permitted` answer no for `op` (e.g. "DeleteRoute").
    pub fn deny(&self, op: &'static str) {
        self.lock().denied.insert(op);
    }

    /// Adds a route as if made by hand or by another tool.
    pub fn insert_route(&self, route_table_id: &str, route: Route) {
        if let Some(t) = self.lock().tables.get_mut(route_table_id) {
            t.routes.push(route);
        }
    }

    /// Removes the static route for `destination`, as an operator might by hand.
    pub fn remove_static_route(&self, route_table_id: &str, destination: IpNet) {
        if let Some(t) = self.lock().tables.get_mut(route_table_id) {
            t.routes
                .retain(|r| !(r.is_static() && r.destination == destination));
        }
    }

    /// A snapshot of every table, in id order.
    pub fn tables(&self) -> Vec<RouteTable> {
        self.lock().tables.values().cloned().collect()
    }

    /// Makes the next call of `op` (e.g. "CreateRoute") fail with `error`.
    /// Several faults for one op are returned in the order injected.
    pub fn inject_fault(&self, op: &'static str, error: CloudError) {
        self.lock().faults.push((op, error));
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls that would change a table (create, replace, delete).
    pub fn mutating_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !c.op.starts_with("Describe"))
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

fn table_mut<'a>(state: &'a mut State, id: &str) -> Result<&'a mut RouteTable, CloudError> {
    state.tables.get_mut(id).ok_or_else(|| table_not_found(id))
}

fn check_eni(state: &State, id: &str) -> Result<(), CloudError> {
    if state.enis.contains_key(id) {
        Ok(())
    } else {
        Err(CloudError::from_code(
            "InvalidNetworkInterfaceID.NotFound",
            format!("The networkInterface ID '{id}' does not exist"),
        ))
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
        // As EC2's route-table-id filter: what exists, no error for the rest.
        self.call("DescribeRouteTables", ids.join(","), |state| {
            Ok(ids
                .iter()
                .filter_map(|id| state.tables.get(id).cloned())
                .collect())
        })
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<NetworkInterface>, CloudError> {
        self.call("DescribeNetworkInterfaces", ids.join(","), |state| {
            ids.iter()
                .map(|id| {
                    check_eni(state, id)?;
                    Ok(state.enis[id].clone())
                })
                .collect()
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
                return Err(CloudError::from_code(
                    "RouteAlreadyExists",
                    format!(
                        "The route identified by {} already exists.",
                        route.destination
                    ),
                ));
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
        self.call("DryRun", subject, |state| {
            Ok(Some(!state.denied.contains(action.op())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::managed;

    #[tokio::test]
    async fn behaves_like_ec2() {
        let r = managed("10.1.0.0/16");
        let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
        let ids = vec![r.route_table_id.clone()];

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
    async fn unknown_tables_and_enis_fail_with_ec2_codes() {
        let r = managed("10.1.0.0/16");
        let api = MemoryRouteApi::seeded(std::slice::from_ref(&r));
        let bad_table = ManagedRoute {
            route_table_id: "rtb-ffffffff".into(),
            ..r.clone()
        };
        assert_eq!(
            api.create_route(&bad_table).await.unwrap_err().kind,
            ErrorKind::TableNotFound
        );
        // Like EC2's route-table-id filter: one unknown id hides nothing.
        let found = api
            .describe_route_tables(&[r.route_table_id.clone(), "rtb-ffffffff".into()])
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, r.route_table_id);
        let bad_eni = ManagedRoute {
            target_eni: "eni-ffffffff".into(),
            ..r.clone()
        };
        assert_eq!(
            api.create_route(&bad_eni).await.unwrap_err().kind,
            ErrorKind::EniNotFound
        );
        assert_eq!(
            api.describe_network_interfaces(&["eni-ffffffff".into()])
                .await
                .unwrap_err()
                .kind,
            ErrorKind::EniNotFound
        );
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
        assert!(api
            .describe_route_tables(std::slice::from_ref(&r.route_table_id))
            .await
            .is_ok());
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
}
