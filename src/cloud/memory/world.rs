//! The world around the agent: what tests and the demo set up or change
//! behind its back (tables, interfaces, routes added by hand, BGP routes
//! coming and going, faults). None of these are recorded as calls.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;

use super::{
    eni_not_found, route_already_exists, route_not_found, table_mut, MemoryRouteApi, SEED_VGW,
    SEED_VPC_CIDR,
};
use crate::cloud::{CloudError, EniStatus, NetworkInterface};
use crate::model::{ManagedRoute, Origin, Route, RouteState, RouteTable, Target};

impl MemoryRouteApi {
    /// A world in which every managed table exists with its `local` route
    /// and a route propagated from Direct Connect for each managed
    /// destination, and every target ENI is attached (`in-use`) with
    /// source/dest check off.
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
                let propagated = propagated(r.destination, SEED_VGW);
                if !table.routes.contains(&propagated) {
                    table.routes.push(propagated);
                }
                state
                    .enis
                    .entry(r.target_eni.clone())
                    .or_insert_with(|| NetworkInterface {
                        id: r.target_eni.clone(),
                        subnet_id: Some("subnet-0123456789abcdef0".to_string()),
                        status: EniStatus::InUse,
                        attached: true,
                        source_dest_check: false,
                    });
            }
        }
        api
    }

    pub fn add_table(&self, table: RouteTable) {
        self.lock().tables.insert(table.id.clone(), table);
    }

    pub fn add_network_interface(&self, eni: NetworkInterface) {
        let mut state = self.lock();
        state.deleted_enis.remove(&eni.id);
        state.enis.insert(eni.id.clone(), eni);
    }

    /// Adds a subnet of `vpc_id`; associate it by listing it in a table's `subnets`.
    pub fn add_subnet(&self, subnet_id: &str, vpc_id: &str) {
        self.lock()
            .subnets
            .insert(subnet_id.to_string(), vpc_id.to_string());
    }

    /// Makes `is_permitted` answer no for `op` (e.g. "DeleteRoute").
    /// Deletes a route table, as an operator might by hand.
    pub fn delete_table(&self, id: &str) {
        self.lock().tables.remove(id);
    }

    /// Makes describes show every table's tags as they were `lag` ago
    /// (routes stay current): EC2's eventual consistency, at its worst
    /// for a pair. Zero turns it off.
    pub fn set_tag_lag(&self, lag: Duration) {
        let mut state = self.lock();
        state.tag_lag = lag;
        let now: Vec<(String, BTreeMap<String, String>)> = state
            .tables
            .iter()
            .map(|(id, t)| (id.clone(), t.tags.clone()))
            .collect();
        state.tag_history = now
            .into_iter()
            .map(|(id, tags)| (id, vec![(None, tags)]))
            .collect();
    }

    /// Sets a tag behind the agent's back (say, CloudFormation's `aws:`
    /// tags, which no API call may write).
    pub fn set_tag(&self, table: &str, key: &str, value: &str) {
        if let Some(t) = self.lock().tables.get_mut(table) {
            t.tags.insert(key.to_string(), value.to_string());
        }
    }

    pub fn deny(&self, op: &'static str) {
        self.lock().denied.insert(op);
    }

    /// Makes the next call of `op` (e.g. "CreateRoute") fail with `error`.
    /// Several faults for one op are returned in the order injected.
    pub fn inject_fault(&self, op: &'static str, error: CloudError) {
        self.lock().faults.push((op, error));
    }

    /// Adds a route as if made by hand or by another tool. Like EC2, a table
    /// holds at most one static and one propagated route per destination:
    /// a second one is `RouteAlreadyExists`.
    pub fn insert_route(&self, route_table_id: &str, route: Route) -> Result<(), CloudError> {
        let mut state = self.lock();
        let table = table_mut(&mut state, route_table_id)?;
        if table
            .routes
            .iter()
            .any(|r| r.destination == route.destination && r.is_static() == route.is_static())
        {
            return Err(route_already_exists(route.destination));
        }
        table.routes.push(route);
        Ok(())
    }

    /// Removes the static route for `destination`, as an operator might by hand.
    pub fn remove_static_route(&self, route_table_id: &str, destination: IpNet) {
        if let Some(t) = self.lock().tables.get_mut(route_table_id) {
            t.routes
                .retain(|r| !(r.is_static() && r.destination == destination));
        }
    }

    /// The interface loses its instance (appliance stopped, or detached by
    /// hand): routes to it read as `blackhole` until it is attached again.
    pub fn detach_network_interface(&self, id: &str) -> Result<(), CloudError> {
        self.set_attached(id, false)
    }

    /// The interface is attached to an instance again: routes to it are active.
    pub fn attach_network_interface(&self, id: &str) -> Result<(), CloudError> {
        self.set_attached(id, true)
    }

    fn set_attached(&self, id: &str, attached: bool) -> Result<(), CloudError> {
        let mut state = self.lock();
        let eni = state.enis.get_mut(id).ok_or_else(|| eni_not_found(id))?;
        eni.attached = attached;
        eni.status = if attached {
            EniStatus::InUse
        } else {
            EniStatus::Available
        };
        Ok(())
    }

    /// The interface is gone (its appliance terminated with it). Routes to
    /// it stay in their tables, as in EC2, and read as `blackhole`.
    pub fn delete_network_interface(&self, id: &str) -> Result<(), CloudError> {
        let mut state = self.lock();
        state.enis.remove(id).ok_or_else(|| eni_not_found(id))?;
        state.deleted_enis.insert(id.to_string());
        Ok(())
    }

    /// BGP over DX advertises `destination` again: the table learns a
    /// propagated route to `vgw` (replacing one it had for that prefix).
    pub fn propagate(
        &self,
        route_table_id: &str,
        destination: IpNet,
        vgw: &str,
    ) -> Result<(), CloudError> {
        let mut state = self.lock();
        let table = table_mut(&mut state, route_table_id)?;
        table
            .routes
            .retain(|r| !(r.origin == Origin::Propagated && r.destination == destination));
        table.routes.push(propagated(destination, vgw));
        Ok(())
    }

    /// BGP withdraws `destination` (a DX cut as the VGW sees it): the
    /// propagated route leaves the table; static routes stay.
    pub fn withdraw_propagated(
        &self,
        route_table_id: &str,
        destination: IpNet,
    ) -> Result<(), CloudError> {
        let mut state = self.lock();
        let table = table_mut(&mut state, route_table_id)?;
        let before = table.routes.len();
        table
            .routes
            .retain(|r| !(r.origin == Origin::Propagated && r.destination == destination));
        if table.routes.len() == before {
            return Err(route_not_found(route_table_id, destination));
        }
        Ok(())
    }
}

fn propagated(destination: IpNet, vgw: &str) -> Route {
    Route {
        destination,
        target: Target::Gateway(vgw.to_string()),
        origin: Origin::Propagated,
        state: RouteState::Active,
    }
}
