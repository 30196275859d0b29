//! Desired path + observed route tables → the API calls that converge them.
//!
//! Pure and level-triggered: it looks only at what the tables hold now and
//! at the ownership ledger, so running it again after any failure, restart
//! or hand edit is always safe.
//!
//! A static route is *ours* when it points at the ENI the config names for
//! it, or at the ENI the ledger says we created it with (a VPN appliance
//! replaced since). Anything else is *foreign* and never touched, except
//! with `takeover`, whose original target the ledger keeps so failback can
//! give it back.

use std::fmt;

use ipnet::IpNet;

use crate::fsm::Via;
use crate::model::{Action, Adoption, ManagedRoute, Origin, Route, RouteState, RouteTable, Target};
use crate::state::Record;

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
    /// Our route for a destination no longer in the config: deleted (or
    /// given back to its original target).
    Unmanaged { route: ManagedRoute },
    /// A failback that would delete our route is held: kept.
    FailbackHeld { route: ManagedRoute, held: Held },
}

/// Why a failback is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Deleting our route would leave the destination with no route over
    /// Direct Connect (no propagated or `vgw-` route covers it).
    NoDxRoute,
    /// With `[ha]`, the pair cannot be trusted to agree (the anchor is
    /// missing, another process uses our agent id): the reason.
    Pair(String),
}

impl Finding {
    /// Whether this finding means the tables do not carry traffic the way
    /// `desired` says, so the agent must not call itself converged.
    pub fn blocks(&self, desired: Via) -> bool {
        match self {
            Finding::TableMissing { .. } => true,
            // On Backup a foreign route keeps that traffic off the VPN.
            Finding::Foreign { .. } => desired == Via::Backup,
            // A held failback leaves traffic on the VPN.
            Finding::FailbackHeld { .. } => desired == Via::Primary,
            // On Backup a blackhole of ours drops the traffic it should carry.
            Finding::Blackhole { .. } => desired == Via::Backup,
            Finding::Shadowed { .. } | Finding::Unmanaged { .. } => false,
        }
    }
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
            Finding::TableMissing { route_table_id } => write!(
                f,
                "route table {route_table_id} was not found (deleted, or a wrong \
                 routes[].route_table_id): its routes cannot be managed; the other tables still are"
            ),
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
            Finding::Unmanaged { route } => write!(
                f,
                "our route {route} is no longer in the config: removing it"
            ),
            Finding::FailbackHeld {
                route,
                held: Held::Pair(why),
            } => write!(
                f,
                "failback held for {} in {}: {why}; keeping our route to {} (failovers are \
                 still made) until that clears",
                route.destination, route.route_table_id, route.target_eni
            ),
            Finding::FailbackHeld {
                route,
                held: Held::NoDxRoute,
            } => write!(
                f,
                "failback would blackhole {} in {}: no DX route (propagated from the VGW, or \
                 static to a vgw-) covers it there; keeping our route to {} and checking again \
                 every resync. Is BGP up, route propagation enabled on the table, the VGW attached?",
                route.destination, route.route_table_id, route.target_eni
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

impl Plan {
    /// True when nothing is left to do and nothing keeps the tables from
    /// carrying traffic the way `desired` says.
    pub fn converged(&self, desired: Via) -> bool {
        self.actions.is_empty() && !self.findings.iter().any(|f| f.blocks(desired))
    }

    /// Holds every call that would take a route of ours away, each
    /// reported as a held failback for `why`; creations stay.
    pub fn hold_removals(&mut self, why: &str) {
        self.hold_removals_where(why, |_| true);
    }

    /// As [`hold_removals`](Self::hold_removals), for the routes `which` picks.
    pub fn hold_removals_where(&mut self, why: &str, which: impl Fn(&ManagedRoute) -> bool) {
        let (held, kept): (Vec<Action>, Vec<Action>) = std::mem::take(&mut self.actions)
            .into_iter()
            .partition(|a| a.removes_ours() && which(a.route()));
        self.actions = kept;
        self.findings
            .extend(held.into_iter().map(|a| Finding::FailbackHeld {
                route: a.route().clone(),
                held: Held::Pair(why.to_string()),
            }));
    }
}

/// What a route slot (a destination in a table) currently holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// A static route of ours, pointing at `eni`. `stale` when that is not
    /// the ENI the config names now.
    Ours {
        state: RouteState,
        eni: String,
        stale: bool,
    },
    /// No static route for the destination (propagated ones do not count).
    Absent,
    /// A static route for the destination points somewhere else.
    Foreign { target: Target, origin: Origin },
    /// The table itself was not observed.
    TableMissing,
}

/// Classifies one managed route's slot against the ledger and the tables.
pub fn status(route: &ManagedRoute, ledger: &Record, observed: &[RouteTable]) -> Status {
    let Some(table) = observed.iter().find(|t| t.id == route.route_table_id) else {
        return Status::TableMissing;
    };
    let found = table
        .routes
        .iter()
        .find(|r| r.is_static() && r.destination == route.destination);
    let Some(r) = found else {
        return Status::Absent;
    };

    match &r.target {
        Target::NetworkInterface(eni)
            if r.origin == Origin::CreateRoute
                && (*eni == route.target_eni
                    || ledger.created_with(&route.route_table_id, route.destination, eni)) =>
        {
            Status::Ours {
                state: r.state,
                eni: eni.clone(),
                stale: *eni != route.target_eni,
            }
        }
        target => Status::Foreign {
            target: target.clone(),
            origin: r.origin,
        },
    }
}

/// The managed routes whose slot holds a route of ours.
pub fn ours<'a>(
    managed: &'a [ManagedRoute],
    ledger: &'a Record,
    observed: &'a [RouteTable],
) -> impl Iterator<Item = &'a ManagedRoute> {
    managed
        .iter()
        .filter(move |r| matches!(status(r, ledger, observed), Status::Ours { .. }))
}

/// The path the route tables show, counting only tables that exist.
pub fn adopt(managed: &[ManagedRoute], ledger: &Record, observed: &[RouteTable]) -> Adoption {
    let present = managed
        .iter()
        .filter(|r| status(r, ledger, observed) != Status::TableMissing);
    let of = present.count();
    let ours = ours(managed, ledger, observed).count();
    match ours {
        0 => Adoption::Primary,
        n if n == of => Adoption::Backup,
        n => Adoption::Partial {
            ours: n,
            of,
            peer: false,
        },
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

/// What the planner works from, besides the desired path and the tables.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The routes the config manages.
    pub managed: &'a [ManagedRoute],
    /// What we created or replaced, as recorded.
    pub ledger: &'a Record,
    /// Replace foreign static routes on failover.
    pub takeover: bool,
    /// Delete our route only while a route over Direct Connect covers its
    /// destination in the same table (`failover.failback_requires_dx_route`).
    pub failback_requires_dx_route: bool,
}

/// Whether `table` holds an active route over Direct Connect for
/// `destination` or a prefix covering it: propagated from the virtual
/// private gateway, or static to a `vgw-`.
pub fn has_dx_route(table: &RouteTable, destination: IpNet) -> bool {
    table.routes.iter().any(|r| {
        let via_vgw = match &r.target {
            Target::Gateway(id) => id.starts_with("vgw-"),
            _ => false,
        };
        r.state == RouteState::Active
            && (r.origin == Origin::Propagated || via_vgw)
            && r.destination.contains(&destination)
    })
}

/// The call that removes our route from its slot: a delete, or giving a
/// route we took over back to its original target. A delete that would
/// leave no route over DX is held instead, when the guard is on.
fn remove(
    plan: &mut Plan,
    route: &ManagedRoute,
    eni: &str,
    inputs: Inputs<'_>,
    table: &RouteTable,
) {
    let ours = ManagedRoute {
        target_eni: eni.to_string(),
        ..route.clone()
    };
    match inputs
        .ledger
        .replaced_target(&route.route_table_id, route.destination)
    {
        Some(original) => plan.actions.push(Action::Restore {
            route: ours,
            original: original.clone(),
        }),
        None if inputs.failback_requires_dx_route && !has_dx_route(table, route.destination) => {
            plan.findings.push(Finding::FailbackHeld {
                route: ours,
                held: Held::NoDxRoute,
            });
        }
        None => plan.actions.push(Action::Delete(ours)),
    }
}

/// Works out the calls that take `observed` to `desired`, touching only
/// routes that are ours (or foreign ones, when `takeover` allows).
pub fn plan(desired: Via, inputs: Inputs<'_>, observed: &[RouteTable]) -> Plan {
    let mut plan = Plan::default();
    for route in inputs.managed {
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
        match (status(route, inputs.ledger, observed), desired) {
            (Status::Absent, Via::Backup) => plan.actions.push(Action::Create(route.clone())),
            (
                Status::Ours {
                    stale: true, eni, ..
                },
                Via::Backup,
            ) => {
                plan.actions.push(Action::Retarget {
                    route: route.clone(),
                    from_eni: eni,
                });
            }
            (Status::Ours { state, .. }, Via::Backup) => {
                if state == RouteState::Blackhole {
                    plan.findings.push(Finding::Blackhole {
                        route: route.clone(),
                    });
                }
            }
            (Status::Ours { eni, .. }, Via::Primary) => {
                remove(&mut plan, route, &eni, inputs, table);
            }
            (Status::Foreign { target, origin }, desired) => {
                // The local route cannot be replaced, and on Primary a foreign
                // route is somebody else's business: report it either way.
                if inputs.takeover && desired == Via::Backup && origin == Origin::CreateRoute {
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
    // Slots we own that the config no longer manages: ours to clean up.
    for (table_id, destination) in inputs.ledger.slots() {
        let managed = inputs
            .managed
            .iter()
            .any(|r| r.route_table_id == table_id && r.destination == destination);
        let Some(eni) = inputs.ledger.created_eni(&table_id, destination) else {
            continue;
        };
        if managed {
            continue;
        }
        let route = ManagedRoute {
            route_table_id: table_id,
            destination,
            target_eni: eni.to_string(),
        };
        if let Status::Ours { eni, .. } = status(&route, inputs.ledger, observed) {
            plan.findings.push(Finding::Unmanaged {
                route: route.clone(),
            });
            let table = observed
                .iter()
                .find(|t| t.id == route.route_table_id)
                .expect("status found the table");
            remove(&mut plan, &route, &eni, inputs, table);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteState::{Active, Blackhole};
    use crate::state::Ledger;

    const ENI: &str = "eni-0123456789abcdef0";
    const VGW: &str = "vgw-0123456789abcdef0";

    fn run(desired: Via, m: &[ManagedRoute], observed: &[RouteTable], takeover: bool) -> Plan {
        plan(
            desired,
            Inputs {
                managed: m,
                ledger: &Record::default(),
                takeover,
                failback_requires_dx_route: false,
            },
            observed,
        )
    }

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
        let p = run(Via::Backup, &m, &observed, false);
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
        assert_eq!(run(Via::Backup, &m, &on_backup, false), Plan::default());
        let on_primary = [table("rtb-aaaaaaaa", vec![propagated("10.1.0.0/16")])];
        assert_eq!(run(Via::Primary, &m, &on_primary, false), Plan::default());
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
        let p = run(Via::Primary, &m, &observed, false);
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
        let p = run(Via::Backup, &m, &observed, false);
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
        let p = run(Via::Backup, &m, &observed, true);
        assert_eq!(
            p.actions,
            vec![Action::Replace {
                route: m[0].clone(),
                replacing: foreign.clone()
            }]
        );
        // On Primary even takeover leaves a foreign route alone: it was never ours.
        let p = run(Via::Primary, &m, &observed, true);
        assert!(p.actions.is_empty());
        assert_eq!(p.findings.len(), 1);
    }

    #[test]
    fn takeover_never_replaces_the_local_route() {
        let m = [managed("rtb-aaaaaaaa", "10.0.0.0/16")];
        let observed = [table("rtb-aaaaaaaa", vec![])];
        let p = run(Via::Backup, &m, &observed, true);
        assert!(p.actions.is_empty());
        assert!(matches!(p.findings[..], [Finding::Foreign { .. }]));
    }

    #[test]
    fn ipv6_destinations_are_planned_like_ipv4() {
        let m = [managed("rtb-aaaaaaaa", "fd00:1::/48")];
        let observed = [table("rtb-aaaaaaaa", vec![propagated("fd00:1::/48")])];
        assert_eq!(
            run(Via::Backup, &m, &observed, false).actions,
            vec![Action::Create(m[0].clone())]
        );
        let observed = [table("rtb-aaaaaaaa", vec![ours("fd00:1::/48")])];
        assert_eq!(
            run(Via::Primary, &m, &observed, false).actions,
            vec![Action::Delete(m[0].clone())]
        );
        // An IPv4 route is never confused with an IPv6 one.
        let observed = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")])];
        assert_eq!(
            run(Via::Backup, &m, &observed, false).actions,
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
        let p = run(Via::Backup, &m, &observed, false);
        assert_eq!(p.actions.len(), 8);
        assert!(!p
            .actions
            .contains(&Action::Create(managed("rtb-bbbbbbbb", "10.2.0.0/16"))));
        let p = run(Via::Primary, &m, &observed, false);
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
        let p = run(Via::Backup, &m, &[], false);
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
        let p = run(Via::Primary, &m, &observed, false);
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
        let p = run(Via::Backup, &m, &observed, false);
        assert!(p.actions.is_empty());
        assert_eq!(
            p.findings,
            vec![Finding::Blackhole {
                route: m[0].clone()
            }]
        );
        assert!(
            !p.converged(Via::Backup),
            "traffic dropped is not converged"
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
        assert_eq!(adopt(&m, &Record::default(), &none), Adoption::Primary);
        let partial = [
            table("rtb-aaaaaaaa", vec![]),
            table("rtb-bbbbbbbb", vec![ours("10.1.0.0/16")]),
        ];
        assert_eq!(
            adopt(&m, &Record::default(), &partial),
            Adoption::Partial {
                ours: 1,
                of: 2,
                peer: false
            }
        );
    }

    const OLD_ENI: &str = "eni-0fedcba9876543210";
    const TGW: &str = "tgw-0123456789abcdef0";

    fn to(dest: &str, eni: &str) -> Route {
        route(
            dest,
            Target::NetworkInterface(eni.into()),
            Origin::CreateRoute,
        )
    }

    fn with_ledger<'a>(m: &'a [ManagedRoute], ledger: &'a Ledger, takeover: bool) -> Inputs<'a> {
        Inputs {
            managed: m,
            ledger: ledger.record(),
            takeover,
            failback_requires_dx_route: false,
        }
    }

    #[test]
    fn our_route_to_a_replaced_eni_is_retargeted_on_backup_and_deleted_on_primary() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let mut ledger = Ledger::in_memory();
        ledger
            .will_create(&ManagedRoute {
                target_eni: OLD_ENI.into(),
                ..m[0].clone()
            })
            .unwrap();
        let observed = [table("rtb-aaaaaaaa", vec![to("10.1.0.0/16", OLD_ENI)])];
        let p = plan(Via::Backup, with_ledger(&m, &ledger, false), &observed);
        assert_eq!(
            p.actions,
            vec![Action::Retarget {
                route: m[0].clone(),
                from_eni: OLD_ENI.into()
            }]
        );
        let p = plan(Via::Primary, with_ledger(&m, &ledger, false), &observed);
        assert_eq!(
            p.actions,
            vec![Action::Delete(ManagedRoute {
                target_eni: OLD_ENI.into(),
                ..m[0].clone()
            })]
        );
        // Without the ledger's word the old ENI is somebody else's.
        let p = run(Via::Primary, &m, &observed, false);
        assert!(p.actions.is_empty());
        assert!(matches!(p.findings[..], [Finding::Foreign { .. }]));
    }

    #[test]
    fn a_taken_over_route_is_given_back_on_failback() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let mut ledger = Ledger::in_memory();
        let original = Target::Other(TGW.into());
        ledger.will_replace(&m[0], &original).unwrap();
        let observed = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")])];
        assert_eq!(
            plan(Via::Backup, with_ledger(&m, &ledger, true), &observed),
            Plan::default()
        );
        let p = plan(Via::Primary, with_ledger(&m, &ledger, true), &observed);
        assert_eq!(
            p.actions,
            vec![Action::Restore {
                route: m[0].clone(),
                original: original.clone()
            }]
        );
        assert!(p.actions[0].removes_ours());
        // Once given back it is foreign again, and left alone.
        let given_back = [table(
            "rtb-aaaaaaaa",
            vec![route("10.1.0.0/16", original, Origin::CreateRoute)],
        )];
        let p = plan(Via::Primary, with_ledger(&m, &ledger, true), &given_back);
        assert!(p.actions.is_empty());
    }

    #[test]
    fn a_route_of_ours_dropped_from_the_config_is_removed_on_either_path() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let dropped = managed("rtb-aaaaaaaa", "10.9.0.0/16");
        let foreign_now = managed("rtb-aaaaaaaa", "10.8.0.0/16");
        let mut ledger = Ledger::in_memory();
        ledger.will_create(&dropped).unwrap();
        ledger.will_create(&foreign_now).unwrap();
        let observed = [table(
            "rtb-aaaaaaaa",
            vec![
                ours("10.1.0.0/16"),
                ours("10.9.0.0/16"),
                route(
                    "10.8.0.0/16",
                    Target::Other(TGW.into()),
                    Origin::CreateRoute,
                ),
            ],
        )];
        for desired in [Via::Backup, Via::Primary] {
            let p = plan(desired, with_ledger(&m, &ledger, false), &observed);
            assert!(
                p.actions.contains(&Action::Delete(dropped.clone())),
                "{p:?}"
            );
            assert!(p.findings.contains(&Finding::Unmanaged {
                route: dropped.clone()
            }));
            // A slot that somebody else has taken since is not touched.
            assert!(!p
                .actions
                .iter()
                .any(|a| a.route().destination == foreign_now.destination));
        }
    }

    #[test]
    fn convergence_is_denied_while_a_table_is_missing_or_traffic_stays_off_the_vpn() {
        let m = [
            managed("rtb-aaaaaaaa", "10.1.0.0/16"),
            managed("rtb-bbbbbbbb", "10.1.0.0/16"),
        ];
        let one = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")])];
        let p = run(Via::Backup, &m, &one, false);
        assert!(p.actions.is_empty());
        assert!(!p.converged(Via::Backup));
        assert!(!run(Via::Primary, &m, &[], false).converged(Via::Primary));

        let foreign = [
            table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")]),
            table(
                "rtb-bbbbbbbb",
                vec![route(
                    "10.1.0.0/16",
                    Target::Other(TGW.into()),
                    Origin::CreateRoute,
                )],
            ),
        ];
        assert!(!run(Via::Backup, &m, &foreign, false).converged(Via::Backup));
        // On Primary a foreign route is reported, but ours are all gone.
        let p = run(Via::Primary, &m, &foreign, false);
        assert_eq!(p.actions, vec![Action::Delete(m[0].clone())]);
        let done = [table("rtb-aaaaaaaa", vec![]), foreign[1].clone()];
        assert!(run(Via::Primary, &m, &done, false).converged(Via::Primary));
    }

    #[test]
    fn adoption_counts_blackholes_as_ours_and_skips_missing_tables() {
        let m = [
            managed("rtb-aaaaaaaa", "10.1.0.0/16"),
            managed("rtb-aaaaaaaa", "10.2.0.0/16"),
            managed("rtb-bbbbbbbb", "10.1.0.0/16"),
        ];
        let mut hole = ours("10.2.0.0/16");
        hole.state = Blackhole;
        let observed = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16"), hole])];
        assert_eq!(adopt(&m, &Record::default(), &observed), Adoption::Backup);
        let observed = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")])];
        assert_eq!(
            adopt(&m, &Record::default(), &observed),
            Adoption::Partial {
                ours: 1,
                of: 2,
                peer: false
            }
        );
        assert_eq!(adopt(&m, &Record::default(), &[]), Adoption::Primary);
    }

    fn guarded<'a>(m: &'a [ManagedRoute], ledger: &'a Ledger) -> Inputs<'a> {
        Inputs {
            failback_requires_dx_route: true,
            ..with_ledger(m, ledger, false)
        }
    }

    #[test]
    fn failback_keeps_our_route_while_no_dx_route_covers_it() {
        let m = [managed("rtb-aaaaaaaa", "10.1.0.0/16")];
        let ledger = Ledger::in_memory();
        // BGP withdrew the prefix: deleting ours would leave no route at all.
        let bare = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16")])];
        let p = plan(Via::Primary, guarded(&m, &ledger), &bare);
        assert!(p.actions.is_empty());
        assert_eq!(
            p.findings,
            vec![Finding::FailbackHeld {
                route: m[0].clone(),
                held: Held::NoDxRoute,
            }]
        );
        assert!(!p.converged(Via::Primary));
        assert!(p.findings[0]
            .to_string()
            .contains("failback would blackhole 10.1.0.0/16 in rtb-aaaaaaaa"));
        // The same prefix propagated, a covering one, or a static route to a
        // VGW (what LocalStack can show) each carry it over DX: delete.
        for dx in [
            propagated("10.1.0.0/16"),
            propagated("10.0.0.0/8"),
            route(
                "10.0.0.0/8",
                Target::Gateway(VGW.into()),
                Origin::CreateRoute,
            ),
        ] {
            let t = [table("rtb-aaaaaaaa", vec![ours("10.1.0.0/16"), dx.clone()])];
            let p = plan(Via::Primary, guarded(&m, &ledger), &t);
            assert_eq!(p.actions, vec![Action::Delete(m[0].clone())], "{dx:?}");
        }
        // A more specific route, a blackholed VGW route or an internet
        // gateway does not count.
        let mut dead = route(
            "10.0.0.0/8",
            Target::Gateway(VGW.into()),
            Origin::CreateRoute,
        );
        dead.state = Blackhole;
        for not_dx in [
            propagated("10.1.1.0/24"),
            dead,
            route(
                "10.0.0.0/8",
                Target::Gateway("igw-0123456789abcdef0".into()),
                Origin::CreateRoute,
            ),
        ] {
            let t = [table(
                "rtb-aaaaaaaa",
                vec![ours("10.1.0.0/16"), not_dx.clone()],
            )];
            let p = plan(Via::Primary, guarded(&m, &ledger), &t);
            assert!(p.actions.is_empty(), "{not_dx:?}");
        }
        // A taken-over route goes back to its owner: the guard is not needed.
        let mut ledger = Ledger::in_memory();
        ledger
            .will_replace(&m[0], &Target::Other(TGW.into()))
            .unwrap();
        let p = plan(Via::Primary, guarded(&m, &ledger), &bare);
        assert!(matches!(p.actions[..], [Action::Restore { .. }]));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const TABLES: [&str; 2] = ["rtb-aaaaaaaa", "rtb-bbbbbbbb"];
        const DESTS: [&str; 3] = ["10.1.0.0/16", "10.2.0.0/16", "fd00:1::/48"];

        /// What one slot holds.
        #[derive(Debug, Clone, Copy)]
        enum Held {
            Nothing,
            Ours,
            OldEni,
            Foreign,
            Local,
        }

        fn held() -> impl Strategy<Value = Held> {
            prop_oneof![
                Just(Held::Nothing),
                Just(Held::Ours),
                Just(Held::OldEni),
                Just(Held::Foreign),
                Just(Held::Local),
            ]
        }

        /// Applies actions as EC2 would, to check where they lead.
        fn apply(observed: &mut [RouteTable], actions: &[Action]) {
            for a in actions {
                let r = a.route();
                let t = observed
                    .iter_mut()
                    .find(|t| t.id == r.route_table_id)
                    .unwrap();
                t.routes
                    .retain(|x| !(x.is_static() && x.destination == r.destination));
                match a {
                    Action::Create(r)
                    | Action::Replace { route: r, .. }
                    | Action::Retarget { route: r, .. } => {
                        t.routes.push(to(&r.destination.to_string(), &r.target_eni));
                    }
                    Action::Restore { route, original } => t.routes.push(super::route(
                        &route.destination.to_string(),
                        original.clone(),
                        Origin::CreateRoute,
                    )),
                    Action::Delete(_) => {}
                }
            }
        }

        proptest! {
            /// Whatever the tables and the ledger hold: foreign routes are
            /// touched only by a takeover on Backup, the local route never,
            /// and one round of actions converges (a second plan is empty).
            #[test]
            fn plans_touch_only_ours_and_converge_in_one_step(
                slots in proptest::collection::vec((held(), any::<bool>()), TABLES.len() * DESTS.len()),
                managed_mask in proptest::collection::vec(any::<bool>(), TABLES.len() * DESTS.len()),
                dx_mask in proptest::collection::vec(any::<bool>(), TABLES.len() * DESTS.len()),
                backup in any::<bool>(),
                takeover in any::<bool>(),
            ) {
                let desired = if backup { Via::Backup } else { Via::Primary };
                let mut ledger = Ledger::in_memory();
                let mut observed: Vec<RouteTable> = TABLES.iter().map(|t| table(t, vec![])).collect();
                let mut m = Vec::new();
                let mut foreign = Vec::new();
                for (i, ((h, recorded), is_managed)) in slots.iter().zip(&managed_mask).enumerate() {
                    let (t, d) = (TABLES[i / DESTS.len()], DESTS[i % DESTS.len()]);
                    let slot = managed(t, d);
                    if *is_managed { m.push(slot.clone()); }
                    let routes = &mut observed[i / DESTS.len()].routes;
                    if dx_mask[i] { routes.push(propagated(d)); }
                    match h {
                        Held::Nothing => {}
                        Held::Ours => routes.push(ours(d)),
                        Held::OldEni => routes.push(to(d, OLD_ENI)),
                        Held::Foreign => {
                            routes.push(route(d, Target::Other(TGW.into()), Origin::CreateRoute));
                            foreign.push((t, d));
                        }
                        Held::Local => routes.push(route(d, Target::Gateway("local".into()), Origin::CreateRouteTable)),
                    }
                    if *recorded {
                        let eni = if matches!(h, Held::OldEni) { OLD_ENI } else { ENI };
                        ledger.will_create(&ManagedRoute { target_eni: eni.into(), ..slot }).unwrap();
                    }
                }
                let p = plan(desired, with_ledger(&m, &ledger, takeover), &observed);
                // With the guard on, no delete leaves a slot without a DX route.
                let guarded = Inputs { failback_requires_dx_route: true, ..with_ledger(&m, &ledger, takeover) };
                for a in &plan(desired, guarded, &observed).actions {
                    if let Action::Delete(r) = a {
                        let t = observed.iter().find(|t| t.id == r.route_table_id).unwrap();
                        prop_assert!(has_dx_route(t, r.destination), "{a}");
                    }
                }
                for a in &p.actions {
                    let r = a.route();
                    let slot = (r.route_table_id.as_str(), r.destination.to_string());
                    let is_foreign = foreign.iter().any(|(t, d)| (*t, d.to_string()) == slot);
                    if is_foreign {
                        prop_assert!(takeover && desired == Via::Backup && matches!(a, Action::Replace { .. }), "{a}");
                    }
                    prop_assert!(r.destination.to_string() != "10.0.0.0/16");
                }
                // Apply, with the ledger updated as the reconciler does.
                for a in &p.actions {
                    match a {
                        Action::Create(r) | Action::Retarget { route: r, .. } => ledger.will_create(r).unwrap(),
                        Action::Replace { route, replacing } => ledger.will_replace(route, replacing).unwrap(),
                        Action::Delete(r) | Action::Restore { route: r, .. } => {
                            ledger.forget(&r.route_table_id, r.destination).unwrap();
                        }
                    }
                }
                apply(&mut observed, &p.actions);
                let again = plan(desired, with_ledger(&m, &ledger, takeover), &observed);
                prop_assert!(again.actions.is_empty(), "{:?} then {:?}", p.actions, again.actions);
            }
        }
    }
}
