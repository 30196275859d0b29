//! The route-table data the planner reasons about, independent of any SDK.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

/// A route the agent owns while on Backup: `destination -> target_eni` in one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ManagedRoute {
    pub route_table_id: String,
    pub destination: IpNet,
    pub target_eni: String,
}

impl ManagedRoute {
    /// The route as a delete names it: table and destination, no target.
    pub fn destination_only(route_table_id: &str, destination: IpNet) -> Self {
        Self {
            route_table_id: route_table_id.to_string(),
            destination,
            target_eni: String::new(),
        }
    }
}

impl fmt::Display for ManagedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.route_table_id, self.destination, self.target_eni
        )
    }
}

/// The distinct route tables the routes live in, sorted.
pub fn table_ids(routes: &[ManagedRoute]) -> Vec<String> {
    distinct(routes.iter().map(|r| &r.route_table_id))
}

/// The distinct ENIs the routes point at, sorted.
pub fn eni_ids(routes: &[ManagedRoute]) -> Vec<String> {
    distinct(routes.iter().map(|r| &r.target_eni))
}

fn distinct<'a>(ids: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut ids: Vec<String> = ids.cloned().collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Where a route sends traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    NetworkInterface(String),
    /// An internet or virtual private gateway (`igw-…`, `vgw-…`), or `local`.
    Gateway(String),
    /// Anything else (instance, NAT, transit gateway, peering …), by its id.
    Other(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::NetworkInterface(id) | Target::Gateway(id) | Target::Other(id) => {
                f.write_str(id)
            }
        }
    }
}

/// How a route got into its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The table's own `local` route.
    CreateRouteTable,
    /// A static route somebody created (us or anyone else).
    CreateRoute,
    /// Learned from the virtual private gateway (BGP over Direct Connect).
    Propagated,
}

/// Whether a route still has a working target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteState {
    Active,
    /// The target is gone (say, the ENI was detached): traffic is dropped.
    Blackhole,
}

/// One route as read from a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub destination: IpNet,
    pub target: Target,
    pub origin: Origin,
    pub state: RouteState,
}

impl Route {
    pub fn is_static(&self) -> bool {
        self.origin != Origin::Propagated
    }
}

/// One route table as read from the API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: Option<String>,
    /// Subnets explicitly associated with this table.
    pub subnets: Vec<String>,
    /// Whether this is its VPC's main table (used by subnets with no association).
    pub main: bool,
    pub routes: Vec<Route>,
    /// The table's EC2 tags, key → value.
    pub tags: BTreeMap<String, String>,
}

/// One call to the route API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(ManagedRoute),
    /// Take over a foreign static route (only with `takeover = true`).
    Replace {
        route: ManagedRoute,
        replacing: Target,
    },
    Delete(ManagedRoute),
}

impl Action {
    pub fn route(&self) -> &ManagedRoute {
        match self {
            Action::Create(r) | Action::Delete(r) | Action::Replace { route: r, .. } => r,
        }
    }

    /// The EC2 operation name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Action::Create(_) => "CreateRoute",
            Action::Replace { .. } => "ReplaceRoute",
            Action::Delete(_) => "DeleteRoute",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Create(r) => write!(f, "create {r}"),
            Action::Replace { route, replacing } => {
                write!(f, "replace {route} (was -> {replacing})")
            }
            Action::Delete(r) => write!(f, "delete {r}"),
        }
    }
}

/// Fixtures for unit tests across modules.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::ManagedRoute;

    /// `dest` in one fixed table, to one fixed ENI.
    pub(crate) fn managed(dest: &str) -> ManagedRoute {
        ManagedRoute {
            route_table_id: "rtb-0123456789abcdef0".into(),
            destination: dest.parse().unwrap(),
            target_eni: "eni-0123456789abcdef0".into(),
        }
    }
}
