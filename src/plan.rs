//! Desired path + observed route tables → the API calls that converge them.
//!
//! Pure and level-triggered: it looks only at what the tables hold now, so
//! running it again after any failure, restart or hand edit is always safe.

use std::fmt;

use ipnet::IpNet;

use crate::fsm::Via;
use crate::model::{Action, ManagedRoute, Origin, Route, RouteState, RouteTable, Target};

/// Something an operator should know that the agent will not act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A static route for a managed destination points elsewhere; left alone.
    Foreign { route: ManagedRoute, found: Target },
    /// A managed route table was not in the observed tables.
    TableMissing { route_table_id: String },
    /// A propagated route more specific than a managed destination: our
    /// static route does not move that traffic while BGP keeps it.
    Shadowed {
        route: ManagedRoute,
        more_specific: IpNet,
        via: Target,
    },
    /// Our route exists but its ENI is gone: traffic to it is dropped.
    Blackhole { route: ManagedRoute },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Foreign { route, found } => write!(
                f,
                "foreign route {} {} -> {found} is not ours (we use {}); left alone, \
                 set failover.takeover = true to replace it on failover",
                route.route_table_id, route.destination, route.target_eni
            ),
            Finding::TableMissing { route_table_id } => {
                write!(f, "route table {route_table_id} was not found")
            }
            Finding::Shadowed {
                route,
                more_specific,
                via,
            } => write!(
                f,
                "{} propagates {more_specific} via {via}, more specific than managed {}: \
                 failover will not move that traffic; manage {more_specific} too",
                route.route_table_id, route.destination
            ),
            Finding::Blackhole { route } => write!(
                f,
                "our route {route} is a blackhole: is {} still attached to the VPN appliance?",
                route.target_eni
            ),
        }
    }
}

/// The actions to take and the findings to report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub findings: Vec<Finding>,
}

/// What a managed destination currently holds in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Our static route to our ENI is there.
    Ours { state: RouteState },
    /// No static route for the destination (propagated ones do not count).
    Absent,
    /// A static route for the destination points somewhere else.
    Foreign { target: Target, origin: Origin },
    /// The table itself was not observed.
    TableMissing,
}

/// Classifies one managed route against the observed tables.
pub fn status(route: &ManagedRoute, observed: &[RouteTable]) -> Status {
    let Some(table) = observed.iter().find(|t| t.id == route.route_table_id) else {
        return Status::TableMissing;
    };
    let found = table
        .routes
        .iter()
        .find(|r| r.is_static() && r.destination == route.destination);
    match found {
        None => Status::Absent,
        Some(r) if r.target == Target::NetworkInterface(route.target_eni.clone()) => {
            Status::Ours { state: r.state }
        }
        Some(r) => Status::Foreign {
            target: r.target.clone(),
            origin: r.origin,
        },
    }
}

/// The managed routes whose route (to our ENI) is in its table.
pub fn ours<'a>(
    managed: &'a [ManagedRoute],
    observed: &'a [RouteTable],
) -> impl Iterator<Item = &'a ManagedRoute> {
    managed
        .iter()
        .filter(move |r| matches!(status(r, observed), Status::Ours { .. }))
}

/// The path the route tables show: Backup when any of our routes is present.
pub fn adopt(managed: &[ManagedRoute], observed: &[RouteTable]) -> Via {
    if ours(managed, observed).next().is_some() {
        Via::Backup
    } else {
        Via::Primary
    }
}

/// Propagated routes in the managed route's table that are more specific
/// than its destination.
fn shadowing<'a>(route: &ManagedRoute, table: &'a RouteTable) -> impl Iterator<Item = &'a Route> {
    let destination = route.destination;
    table.routes.iter().filter(move |r| {
        r.origin == Origin::Propagated
            && r.destination.prefix_len() > destination.prefix_len()
            && destination.contains(&r.destination)
    })
}

/// Works out the calls that take `observed` to `desired`, touching only
/// routes that are ours (or foreign ones, when `takeover` allows).
pub fn plan(
    desired: Via,
    managed: &[ManagedRoute],
    observed: &[RouteTable],
    takeover: bool,
) -> Plan {
    let mut plan = Plan::default();
    for route in managed {
        let Some(table) = observed.iter().find(|t| t.id == route.route_table_id) else {
            let missing = Finding::TableMissing {
                route_table_id: route.route_table_id.clone(),
            };
            if !plan.findings.contains(&missing) {
                plan.findings.push(missing);
            }
            continue;
        };
        for r in shadowing(route, table) {
            plan.findings.push(Finding::Shadowed {
                route: route.clone(),
                more_specific: r.destination,
                via: r.target.clone(),
            });
        }
        match (status(route, observed), desired) {
            (Status::Absent, Via::Backup) => plan.actions.push(Action::Create(route.clone())),
            (Status::Ours { state }, Via::Backup) => {
                if state == RouteState::Blackhole {
                    plan.findings.push(Finding::Blackhole {
                        route: route.clone(),
                    });
                }
            }
            (Status::Ours { .. }, Via::Primary) => {
                plan.actions.push(Action::Delete(route.clone()));
            }
            (Status::Foreign { target, origin }, desired) => {
                // The local route cannot be replaced, and on Primary a foreign
                // route is somebody else's business: report it either way.
                if takeover && desired == Via::Backup && origin == Origin::CreateRoute {
                    plan.actions.push(Action::Replace {
                        route: route.clone(),
                        replacing: target,
                    });
                } else {
                    plan.findings.push(Finding::Foreign {
                        route: route.clone(),
                        found: target,
                    });
                }
            }
            (Status::Absent, Via::Primary) | (Status::TableMissing, _) => {}
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteState::{Active, Blackhole};

    const ENI: &str = "eni-0123456789abcdef0";
    const VGW: &str = "vgw-0123456789abcdef0";

    fn managed(table: &str, dest: &str) -> ManagedRoute {
        ManagedRoute {
            route_table_id: table.to_string(),
            destination: dest.parse().unwrap(),
            target_eni: ENI.to_string(),
        }
    }

    fn route(dest: &str, target: Target, origin: Origin) -> Route {
        Route {
            destination: dest.parse().unwrap(),
            target,
            origin,
            state: Active,
        }
    }

    fn propagated(dest: &str) -> Route {
        route(dest, Target::Gateway(VGW.into()), Origin::Propagated)
    }

    fn ours(dest: &str) -> Route {
        route(
            dest,
            Target::NetworkInterface(ENI.into()),
            Origin::CreateRoute,
        )
    }

    fn table(id: &str, routes: Vec<Route>) -> RouteTable {
        let mut all = vec![route(
            "10.0.0.0/16",
            Target::Gateway("local".into()),
            Origin::CreateRouteTable,
        )];
        all.extend(routes);
        RouteTable {
            id: id.to_string(),
            routes: all,
            ..RouteTable::default()
        }
    }

    #[test]
    fn backup_creates_missing_routes_even_over_propagated_ones() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let observed = [table("rtb-aaaaaaaa", vec![propagated("10.1.0.0/16")])];
        let p = plan(Via::Backup, &m, &observed, false);
        assert_eq!(p.actions, vec![Action::Create(m[0].clone())]);
        assert!(p.findings.is_empty());
    }

    #[test]
    fn converged_tables_need_nothing() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let on_backup = [table(
            "rtb-aaaaaaaa",
            vec![propagated("10.1.0.0/16"), ours("10.1.0.0/16")],
        )];
        assert_eq!(plan(Via::Backup, &m, &on_backup, false), Plan::default());
        let on_primary = [table("rtb-aaaaaaaa", vec![propagated("10.1.0.0/16")])];
        assert_eq!(plan(Via::Primary, &m, &on_primary, false), Plan::default());
    }

    #[test]
    fn primary_deletes_only_our_routes() {
        let m = [
            managed("rtb-aaaaaaaa", "10.1.0.0/16"),
            managed("rtb-aaaaaaaa", "10.2.0.0/16"),
        ];
        let observed = [table(
            "rtb-aaaaaaaa",
            vec![
                propagated("10.1.0.0/16"),
                ours("10.1.0.0/16"),
                route(
                    "10.2.0.0/16",
                    Target::NetworkInterface("eni-99999999".into()),
                    Origin::CreateRoute,
                ),
                // Ours in shape, but not a managed destination: never touched.
                ours("10.3.0.0/16"),
            ],
        )];
        let p = plan(Via::Primary, &m, &observed, false);
        assert_eq!(p.actions, vec![Action::Delete(m[0].clone())]);
        assert_eq!(
            p.findings,
            vec![Finding::Foreign {
                route: m[1].clone(),
                found: Target::NetworkInterface("eni-99999999".into())
            }]
        );
    }

    #[test]
    fn foreign_route_is_reported_not_touched_without_takeover() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let foreign = Target::Other("tgw-0123456789abcdef0".into());
        let observed = [table(
            "rtb-aaaaaaaa",
            vec![route("10.1.0.0/16", foreign.clone(), Origin::CreateRoute)],
        )];
        let p = plan(Via::Backup, &m, &observed, false);
        assert!(p.actions.is_empty());
        assert_eq!(
            p.findings,
            vec![Finding::Foreign {
                route: m[0].clone(),
                found: foreign.clone()
            }]
        );
    }

    #[test]
    fn takeover_replaces_a_foreign_static_route_on_backup_only() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let foreign = Target::NetworkInterface("eni-99999999".into());
        let observed = [table(
            "rtb-aaaaaaaa",
            vec![route("10.1.0.0/16", foreign.clone(), Origin::CreateRoute)],
        )];
        let p = plan(Via::Backup, &m, &observed, true);
        assert_eq!(
            p.actions,
            vec![Action::Replace {
                route: m[0].clone(),
                replacing: foreign.clone()
            }]
        );
        // On Primary even takeover leaves a foreign route alone: it was never ours.
        let p = plan(Via::Primary, &m, &observed, true);
        assert!(p.actions.is_empty());
        assert_eq!(p.findings.len(), 1);
    }

    #[test]
    fn takeover_never_replaces_the_local_route() {
        let m = [managed("rtb-aaaaaaaa", "10.0.0.0/16")];
        let observed = [table("rtb-aaaaaaaa", vec![])];
        let p = plan(Via::Backup, &m, &observed, true);
        assert!(p.actions.is_empty());
        assert!(matches!(p.findings[..], [Finding::Foreign { .. }]));
    }

    #[test]
    fn ipv6_destinations_are_planned_like_ipv4() {
        let m = [managed("rtb-aaaaaaaa", "fd00:1::/48")];
        let observed = [table("rtb-aaaaaaaa", vec![propagated("fd00:1::/48")])];
        assert_eq!(
            plan(Via::Backup, &m, &observed, false).actions,
            vec![Action::Create(m[0].clone())]
        );
        let observed = [table("rtb-aaaaaaaa", vec![ours("fd00:1::/48")])];
        assert_eq!(
            plan(Via::Primary, &m, &observed, false).actions,
            vec![Action::Delete(m[0].clone())]
        );
        // An IPv4 route is never confused with an IPv6 one.
        let observed = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")])];
        assert_eq!(
            plan(Via::Backup, &m, &observed, false).actions,
            vec![Action::Create(m[0].clone())]
        );
    }

    #[test]
    fn several_tables_and_cidrs_switch_together() {
        let tables = ["rtb-aaaaaaaa", "rtb-bbbbbbbb", "rtb-cccccccc"];
        let cidrs = ["10.1.0.0/16", "10.2.0.0/16", "fd00:1::/48"];
        let m: Vec<ManagedRoute> = tables
            .iter()
            .flat_map(|t| cidrs.iter().map(move |c| managed(t, c)))
            .collect();
        // Half-converged: table b already has one of ours.
        let observed: Vec<RouteTable> = tables
            .iter()
            .map(|t| {
                let routes = if *t == "rtb-bbbbbbbb" {
                    vec![ours("10.2.0.0/16")]
                } else {
                    vec![]
                };
                table(t, routes)
            })
            .collect();
        let p = plan(Via::Backup, &m, &observed, false);
        assert_eq!(p.actions.len(), 8);
        assert!(!p
            .actions
            .contains(&Action::Create(managed("rtb-bbbbbbbb", "10.2.0.0/16"))));
        let p = plan(Via::Primary, &m, &observed, false);
        assert_eq!(
            p.actions,
            vec![Action::Delete(managed("rtb-bbbbbbbb", "10.2.0.0/16"))]
        );
    }

    #[test]
    fn missing_table_is_reported_once_and_not_acted_on() {
        let m = [
            managed("rtb-aaaaaaaa", "10.1.0.0/16"),
            managed("rtb-aaaaaaaa", "10.2.0.0/16"),
        ];
        let p = plan(Via::Backup, &m, &[], false);
        assert!(p.actions.is_empty());
        assert_eq!(
            p.findings,
            vec![Finding::TableMissing {
                route_table_id: "rtb-aaaaaaaa".into()
            }]
        );
    }

    #[test]
    fn more_specific_propagated_routes_are_reported_as_shadowing() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let observed = [table(
            "rtb-aaaaaaaa",
            vec![
                propagated("10.1.0.0/16"),
                propagated("10.1.1.0/24"),
                propagated("10.2.1.0/24"),
            ],
        )];
        let p = plan(Via::Primary, &m, &observed, false);
        assert_eq!(
            p.findings,
            vec![Finding::Shadowed {
                route: m[0].clone(),
                more_specific: "10.1.1.0/24".parse().unwrap(),
                via: Target::Gateway(VGW.into())
            }]
        );
        assert!(p.findings[0].to_string().contains("manage 10.1.1.0/24 too"));
    }

    #[test]
    fn blackholed_route_is_reported() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let mut r = ours("10.1.0.0/16");
        r.state = Blackhole;
        let observed = [table("rtb-aaaaaaaa", vec![r])];
        let p = plan(Via::Backup, &m, &observed, false);
        assert!(p.actions.is_empty());
        assert_eq!(
            p.findings,
            vec![Finding::Blackhole {
                route: m[0].clone()
            }]
        );
    }

    #[test]
    fn adoption_follows_our_routes() {
        let m = [
            managed("rtb-aaaaaaaa", "10.1.0.0/16"),
            managed("rtb-bbbbbbbb", "10.1.0.0/16"),
        ];
        let none = [
            table("rtb-aaaaaaaa", vec![propagated("10.1.0.0/16")]),
            table("rtb-bbbbbbbb", vec![]),
        ];
        assert_eq!(adopt(&m, &none), Via::Primary);
        let partial = [
            table("rtb-aaaaaaaa", vec![]),
            table("rtb-bbbbbbbb", vec![ours("10.1.0.0/16")]),
        ];
        assert_eq!(adopt(&m, &partial), Via::Backup);
    }
}
