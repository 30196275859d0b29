//! The self-subnet guard: the agent must never manage the route table of
//! its own subnet. Its probes must keep testing Direct Connect; if they
//! went over the VPN they would see "healthy", fail back, and flap forever.

use std::fmt;

use crate::cloud::{CloudError, RouteApi};
use crate::model::ManagedRoute;

/// What the guard found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The agent's subnet uses `table`, which is not managed.
    Clear { subnet: String, table: String },
    /// The agent's subnet uses a managed table, and the config allows it.
    Allowed { subnet: String, table: String },
    /// The agent's subnet is unknown (off EC2, no `aws.own_subnet_id`).
    Skipped,
}

/// Why the agent must not start.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    SelfSubnet { subnet: String, table: String },
    Api { subnet: String, error: CloudError },
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::SelfSubnet { subnet, table } => write!(
                f,
                "route table {table} is managed, but it is the table of this instance's own subnet \
                 {subnet}: probes would then test the VPN instead of Direct Connect and the agent \
                 would flap. Run the agent in a subnet whose table is not managed, or set \
                 aws.allow_self_subnet = true if you know why this is safe"
            ),
            GuardError::Api { subnet, error } => {
                write!(
                    f,
                    "cannot find the route table of this instance's subnet {subnet}: {error}"
                )
            }
        }
    }
}

/// Whether `own_table` is one of the managed tables.
fn manages(own_table: &str, managed: &[ManagedRoute]) -> bool {
    managed.iter().any(|r| r.route_table_id == own_table)
}

/// Looks up the table of `own_subnet` and checks it against `managed`.
pub async fn check(
    api: &dyn RouteApi,
    own_subnet: Option<&str>,
    managed: &[ManagedRoute],
    allow_self_subnet: bool,
) -> Result<Verdict, GuardError> {
    let Some(subnet) = own_subnet else {
        return Ok(Verdict::Skipped);
    };
    let table = api
        .subnet_route_table(subnet)
        .await
        .map_err(|error| GuardError::Api {
            subnet: subnet.to_string(),
            error,
        })?;
    let subnet = subnet.to_string();
    if !manages(&table, managed) {
        Ok(Verdict::Clear { subnet, table })
    } else if allow_self_subnet {
        Ok(Verdict::Allowed { subnet, table })
    } else {
        Err(GuardError::SelfSubnet { subnet, table })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::memory::MemoryRouteApi;
    use crate::model::RouteTable;

    const VPC: &str = "vpc-0123456789abcdef0";
    const PROD: &str = "rtb-0a11aa11aa11aa110";
    const UTIL: &str = "rtb-0b22bb22bb22bb220";
    const MAIN: &str = "rtb-0c33cc33cc33cc330";

    fn managed() -> Vec<ManagedRoute> {
        vec![ManagedRoute {
            route_table_id: PROD.into(),
            destination: "10.1.0.0/16".parse().unwrap(),
            target_eni: "eni-0123456789abcdef0".into(),
        }]
    }

    fn world(main: &str) -> MemoryRouteApi {
        let api = MemoryRouteApi::new();
        for (id, subnets) in [
            (PROD, vec!["subnet-0aaaaaaaaaaaaaaa0"]),
            (UTIL, vec!["subnet-0bbbbbbbbbbbbbbb0"]),
            (MAIN, vec![]),
        ] {
            api.add_table(RouteTable {
                id: id.into(),
                vpc_id: Some(VPC.into()),
                subnets: subnets.into_iter().map(String::from).collect(),
                main: id == main,
                ..RouteTable::default()
            });
        }
        for s in [
            "subnet-0aaaaaaaaaaaaaaa0",
            "subnet-0bbbbbbbbbbbbbbb0",
            "subnet-0ccccccccccccccc0",
        ] {
            api.add_subnet(s, VPC);
        }
        api
    }

    #[tokio::test]
    async fn a_subnet_with_its_own_unmanaged_table_is_clear() {
        let v = check(
            &world(MAIN),
            Some("subnet-0bbbbbbbbbbbbbbb0"),
            &managed(),
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            v,
            Verdict::Clear {
                subnet: "subnet-0bbbbbbbbbbbbbbb0".into(),
                table: UTIL.into()
            }
        );
    }

    #[tokio::test]
    async fn an_explicitly_associated_managed_table_is_refused() {
        let e = check(
            &world(MAIN),
            Some("subnet-0aaaaaaaaaaaaaaa0"),
            &managed(),
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(&e, GuardError::SelfSubnet { table, .. } if table == PROD));
        assert!(e.to_string().contains("allow_self_subnet"), "{e}");
    }

    #[tokio::test]
    async fn an_unassociated_subnet_uses_the_main_table() {
        // subnet c has no association: it follows the VPC's main table.
        let v = check(
            &world(MAIN),
            Some("subnet-0ccccccccccccccc0"),
            &managed(),
            false,
        )
        .await
        .unwrap();
        assert!(matches!(v, Verdict::Clear { table, .. } if table == MAIN));
        let e = check(
            &world(PROD),
            Some("subnet-0ccccccccccccccc0"),
            &managed(),
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, GuardError::SelfSubnet { table, .. } if table == PROD));
    }

    #[tokio::test]
    async fn allow_self_subnet_lets_it_start_and_unknown_subnets_skip() {
        let v = check(
            &world(MAIN),
            Some("subnet-0aaaaaaaaaaaaaaa0"),
            &managed(),
            true,
        )
        .await
        .unwrap();
        assert!(matches!(v, Verdict::Allowed { .. }));
        assert_eq!(
            check(&world(MAIN), None, &managed(), false).await.unwrap(),
            Verdict::Skipped
        );
        let e = check(
            &world(MAIN),
            Some("subnet-0fffffffffffffff0"),
            &managed(),
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, GuardError::Api { .. }));
    }
}
