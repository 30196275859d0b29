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
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Target {
    NetworkInterface(String),
    /// An internet or virtual private gateway (`igw-…`, `vgw-…`), or `local`.
    Gateway(String),
    /// Anything else (instance, NAT, transit gateway, peering …), by its id.
    Other(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// The kinds of target a route can name, by the prefix of their id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    NetworkInterface,
    /// Internet, virtual private or `local` gateway (EC2's `GatewayId`).
    Gateway,
    TransitGateway,
    NatGateway,
    VpcPeering,
    Instance,
    EgressOnlyGateway,
    LocalGateway,
    CarrierGateway,
    VpcEndpoint,
    CoreNetwork,
}

impl Target {
    /// The id or ARN the route names.
    pub fn id(&self) -> &str {
        match self {
            Target::NetworkInterface(id) | Target::Gateway(id) | Target::Other(id) => id,
        }
    }

    /// Which EC2 parameter names this target, from its id; `None` for
    /// something this version does not know how to point a route at.
    pub fn kind(&self) -> Option<TargetKind> {
        let id = self.id();
        let kind = match id.split_once('-').map_or(id, |(prefix, _)| prefix) {
            "eni" => TargetKind::NetworkInterface,
            "igw" | "vgw" | "local" => TargetKind::Gateway,
            "tgw" => TargetKind::TransitGateway,
            "nat" => TargetKind::NatGateway,
            "pcx" => TargetKind::VpcPeering,
            "i" => TargetKind::Instance,
            "eigw" => TargetKind::EgressOnlyGateway,
            "lgw" => TargetKind::LocalGateway,
            "cagw" => TargetKind::CarrierGateway,
            "vpce" => TargetKind::VpcEndpoint,
            _ if id.starts_with("arn:") => TargetKind::CoreNetwork,
            _ => return None,
        };
        Some(kind)
    }
}

impl TargetKind {
    /// The AWS CLI option that names a target of this kind.
    pub fn cli_option(self) -> &'static str {
        match self {
            TargetKind::NetworkInterface => "--network-interface-id",
            TargetKind::Gateway => "--gateway-id",
            TargetKind::TransitGateway => "--transit-gateway-id",
            TargetKind::NatGateway => "--nat-gateway-id",
            TargetKind::VpcPeering => "--vpc-peering-connection-id",
            TargetKind::Instance => "--instance-id",
            TargetKind::EgressOnlyGateway => "--egress-only-internet-gateway-id",
            TargetKind::LocalGateway => "--local-gateway-id",
            TargetKind::CarrierGateway => "--carrier-gateway-id",
            TargetKind::VpcEndpoint => "--vpc-endpoint-id",
            TargetKind::CoreNetwork => "--core-network-arn",
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

/// What the route tables show at startup, for the agent to adopt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// None of our routes: Direct Connect carries the traffic.
    Primary,
    /// All of our routes: the VPN carries the traffic.
    Backup,
    /// Some of them: a failover or failback was interrupted. Which way to
    /// finish is left to probe evidence. `peer`: with `[ha]`, a peer's
    /// Backup verdict explains the routes, so the agent is undecided
    /// whatever their count.
    Partial { ours: usize, of: usize, peer: bool },
}

impl fmt::Display for Adoption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Adoption::Primary => f.write_str("Primary"),
            Adoption::Backup => f.write_str("Backup"),
            Adoption::Partial {
                ours,
                of,
                peer: false,
            } => write!(f, "partial ({ours} of {of} routes)"),
            Adoption::Partial {
                ours,
                of,
                peer: true,
            } => write!(
                f,
                "undecided: a peer's Backup verdict explains the routes ({ours} of {of} ours)"
            ),
        }
    }
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
    /// Point our route, which still targets `from_eni` (a replaced VPN
    /// appliance), at the ENI the config names now.
    Retarget {
        route: ManagedRoute,
        from_eni: String,
    },
    /// Delete our route; `route.target_eni` is the ENI it points at.
    Delete(ManagedRoute),
    /// Give a route we took over back to its original target.
    Restore {
        route: ManagedRoute,
        original: Target,
    },
}

impl Action {
    pub fn route(&self) -> &ManagedRoute {
        match self {
            Action::Create(r)
            | Action::Delete(r)
            | Action::Replace { route: r, .. }
            | Action::Retarget { route: r, .. }
            | Action::Restore { route: r, .. } => r,
        }
    }

    /// The EC2 operation name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Action::Create(_) => "CreateRoute",
            Action::Replace { .. } | Action::Retarget { .. } | Action::Restore { .. } => {
                "ReplaceRoute"
            }
            Action::Delete(_) => "DeleteRoute",
        }
    }

    /// Whether the call takes a route of ours away from its table (and so
    /// must be checked against a fresh read first: EC2's DeleteRoute and
    /// ReplaceRoute name no target, and would act on whatever is there).
    pub fn removes_ours(&self) -> bool {
        matches!(self, Action::Delete(_) | Action::Restore { .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Create(r) => write!(f, "create {r}"),
            Action::Replace { route, replacing } => {
                write!(f, "replace {route} (was -> {replacing})")
            }
            Action::Retarget { route, from_eni } => {
                write!(f, "retarget {route} (was -> {from_eni})")
            }
            Action::Delete(r) => write!(f, "delete {r}"),
            Action::Restore { route, original } => write!(
                f,
                "restore {} {} -> {original} (was -> {})",
                route.route_table_id, route.destination, route.target_eni
            ),
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
