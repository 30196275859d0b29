//! `route-failover check`: the preflight.

use std::process::ExitCode;

use super::{connect, own_subnet};
use crate::cloud::TagCall;
use crate::config::Config;
use crate::fsm::Via;
use crate::guard::{self, Verdict};
use crate::model::RouteTable;
use crate::model::{eni_ids, table_ids, Action, Target};
use crate::plan;

/// What watches the backup path, and how.
fn print_backup(config: &Config) {
    let Some(b) = &config.backup else {
        println!(
            "! no [backup] section: failover is not gated on the backup path (a dead VPN appliance would still receive the traffic)"
        );
        return;
    };
    let gate = if b.required {
        "a backup known down holds the failover"
    } else {
        "required = false: alarms only, never holds a failover"
    };
    if b.targets.is_empty() {
        println!("✓ backup: the appliance ENI check alone (no targets); {gate}");
        return;
    }
    let targets: Vec<String> = b.targets.iter().map(ToString::to_string).collect();
    println!(
        "✓ backup: probing {} over the VPN{}, up to {} echoes per round, down after {} rounds, up after {}; {gate}",
        targets.join(", "),
        b.source
            .map_or_else(String::new, |s| format!(" from {s}")),
        b.count,
        b.fall,
        b.rise
    );
}

/// Each failback guard: whether deleting our route would leave a DX route.
fn print_guards(config: &Config, observed: &[RouteTable]) {
    for line in guard_rows(config, observed) {
        println!("{line}");
    }
}

/// The rows of [`print_guards`].
fn guard_rows(config: &Config, observed: &[RouteTable]) -> Vec<String> {
    if !config.reconcile.failback_requires_dx_route {
        return vec![
            "! failback guard off (failover.failback_requires_dx_route = false): failback deletes our routes even with no DX route left".to_string(),
        ];
    }
    let mut rows = Vec::new();
    for r in &config.routes {
        let Some(table) = observed.iter().find(|t| t.id == r.route_table_id) else {
            continue;
        };
        rows.push(if plan::has_dx_route(table, r.destination) {
            format!(
                "✓ failback guard: {} in {} has a DX route to fall back to",
                r.destination, r.route_table_id
            )
        } else {
            format!(
                "! failback guard: {} in {} has no DX route (propagated from the VGW, or static to a vgw-): a failback now would be held",
                r.destination, r.route_table_id
            )
        });
    }
    rows
}

/// Each target ENI as EC2 describes it: `(passed, row)`. One that cannot
/// take traffic (missing, detached, not in-use, source/destination check
/// on) fails the check: a failover onto it blackholes production, or with
/// `[backup]` is held until it is fixed.
fn eni_rows(
    config: &Config,
    enis: &[String],
    found: &[crate::cloud::NetworkInterface],
) -> Vec<(bool, String)> {
    enis.iter()
        .map(|id| match found.iter().find(|n| &n.id == id) {
            None => (
                false,
                format!("✗ network interface {id} not found\n    fix: check routes[].target_eni"),
            ),
            Some(n) if n.source_dest_check => (
                false,
                format!(
                    "✗ network interface {id} has source/destination check enabled: the VPN appliance cannot forward\n    \
                     fix: aws ec2 modify-network-interface-attribute --network-interface-id {id} --no-source-dest-check"
                ),
            ),
            Some(n) if !n.is_forwarding_target() => (
                false,
                format!(
                    "✗ network interface {id} is {}{}: a route to it is a blackhole; {}\n    \
                     fix: attach it to the running VPN appliance (or point routes[].target_eni at the one that is)",
                    n.status,
                    if n.attached { "" } else { ", not attached" },
                    if config.backup.is_some() {
                        "the agent holds any failover onto it ([backup]) until it is in-use and attached"
                    } else {
                        "a failover now would blackhole production (add [backup] to hold failovers onto it)"
                    }
                ),
            ),
            Some(_) => (
                true,
                format!(
                    "✓ network interface {id} exists, in-use and attached, source/destination check off"
                ),
            ),
        })
        .collect()
}

/// Preflight rows: ✓ passed, ✗ failed (with the fix), ! worth knowing.
pub async fn check(config: &Config, offline: bool) -> anyhow::Result<ExitCode> {
    let tables = table_ids(&config.routes);
    let enis = eni_ids(&config.routes);
    println!(
        "✓ config {}: {} targets, {} managed routes in {} route tables",
        config.source.display(),
        config.probe.targets.len(),
        config.routes.len(),
        tables.len()
    );
    print_backup(config);
    if offline {
        return Ok(ExitCode::SUCCESS);
    }
    let (api, instance) = connect(config).await?;
    let mut failed = false;
    let mut fail = |line: String| {
        failed = true;
        println!("{line}");
    };

    let guard = match own_subnet(config, &instance) {
        Ok(subnet) => guard::check(
            api.as_ref(),
            subnet,
            &config.routes,
            config.aws.allow_self_subnet,
        )
        .await
        .map_err(|e| e.to_string()),
        Err(e) => Err(format!(
            "instance metadata answered but failed: {}; the self-subnet guard cannot run\n    \
             fix: repair instance metadata (IMDSv2 session tokens, HttpPutResponseHopLimit >= 2 \
             in a container), or set aws.own_subnet_id to this instance's subnet",
            e.cause
        )),
    };
    match guard {
        Ok(Verdict::Clear { subnet, table }) => {
            println!("✓ own subnet {subnet} uses {table}, which is not managed");
        }
        Ok(Verdict::Allowed { subnet, table }) => {
            println!(
                "! own subnet {subnet} uses managed {table}: allowed by aws.allow_self_subnet"
            );
        }
        Ok(Verdict::Skipped) => {
            println!("! own subnet unknown (not on EC2?): self-subnet guard skipped; set aws.own_subnet_id");
        }
        Err(e) => fail(format!("✗ {e}")),
    }
    // One read for all: a table absent from the answer does not exist.
    let observed = match api.describe_route_tables(&tables).await {
        Ok(observed) => {
            for id in &tables {
                if observed.iter().any(|t| &t.id == id) {
                    println!("✓ route table {id} exists");
                } else {
                    fail(format!(
                        "✗ route table {id} not found\n    fix: check routes[].route_table_id and the region"
                    ));
                }
            }
            Some(observed)
        }
        Err(e) => {
            fail(format!("✗ cannot read the route tables: {e}"));
            None
        }
    };
    match api.describe_network_interfaces(&enis).await {
        Ok(found) => {
            for (ok, line) in eni_rows(config, &enis, &found) {
                if ok {
                    println!("{line}");
                } else {
                    fail(line);
                }
            }
        }
        Err(e) => fail(format!("✗ cannot read the network interfaces: {e}")),
    }
    // IAM, with EC2's DryRun: one route per table, each operation the agent uses.
    for id in &tables {
        let Some(route) = config.routes.iter().find(|r| &r.route_table_id == id) else {
            continue;
        };
        // ReplaceRoute always: besides takeover, it retargets our route
        // when the VPN ENI is replaced and restores a taken-over route.
        let actions = [
            Action::Create(route.clone()),
            Action::Delete(route.clone()),
            Action::Replace {
                route: route.clone(),
                replacing: Target::Other("-".into()),
            },
        ];
        for action in actions {
            match api.is_permitted(&action).await {
                Ok(Some(true)) => println!("✓ IAM allows {} on {id}", action.op()),
                Ok(None) => println!(
                    "! IAM not checked for {} on {id}: the endpoint ignores DryRun (LocalStack?), \
                     so asking could change the table",
                    action.op()
                ),
                Ok(Some(false)) => fail(format!(
                    "✗ IAM denies {} on {id}\n    fix: grant ec2:{} on this route table (see iam-policy.example.json)",
                    action.op(),
                    action.op()
                )),
                Err(e) => fail(format!("✗ cannot check IAM for {} on {id}: {e}", action.op())),
            }
        }
    }
    if let Some(observed) = &observed {
        print_guards(config, observed);
    }
    if let (Some(ha), Some(observed)) = (&config.ha, &observed) {
        if let Err(e) = check_ha(ha, observed) {
            fail(e);
        }
        // The verdict tags, with EC2's DryRun on the anchor and our own key
        // (the IAM policy's tag-key condition judges it).
        let key = peers_key(ha);
        for call in [TagCall::Create, TagCall::Delete] {
            let op = call.op();
            let anchor = &ha.anchor;
            match api.is_permitted_tags(anchor, call, &key).await {
                Ok(Some(true)) => println!("✓ IAM allows {op} of {key} on {anchor}"),
                Ok(None) => println!(
                    "! IAM not checked for {op} on {anchor}: the endpoint ignores DryRun (LocalStack?)"
                ),
                Ok(Some(false)) => fail(format!(
                    "✗ IAM denies {op} of {key} on {anchor}\n    fix: grant ec2:{op} on this route table for tag keys route-failover:verdict:* (see iam-policy.example.json)"
                )),
                Err(e) => fail(format!("✗ cannot check IAM for {op} on {anchor}: {e}")),
            }
        }
    }
    if let Some(observed) = observed {
        let ledger = super::ledger(config);
        let inputs = plan::Inputs {
            takeover: false,
            ..super::inputs(config, &ledger)
        };
        for finding in plan::plan(Via::Primary, inputs, &observed).findings {
            println!("! {finding}");
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Our verdict's tag key; without an agent id (resolved from instance
/// metadata only when the agent runs) a key of the same shape.
fn peers_key(ha: &crate::ha::HaConfig) -> String {
    crate::peers::tag_key(ha.agent_id.as_deref().unwrap_or("check"))
}

/// `[ha]`: where the verdicts live, what is there now, and whether ours
/// fits (EC2 allows 50 tags on a table).
fn check_ha(ha: &crate::ha::HaConfig, observed: &[crate::model::RouteTable]) -> Result<(), String> {
    use crate::peers;
    let anchor = &ha.anchor;
    let id = ha.agent_id.as_deref().unwrap_or("<this instance's id>");
    println!(
        "✓ [ha]: verdicts on {anchor} ({}), ours as {}",
        ha.anchor_source(),
        peers::tag_key(id)
    );
    let Some(table) = observed.iter().find(|t| &t.id == anchor) else {
        return Err(format!(
            "✗ [ha]: the anchor table {anchor} is missing: no agent can publish its verdict"
        ));
    };
    let now = peers::unix_now();
    let limit = ha.peer_timeout;
    let verdicts: Vec<peers::Verdict> = table
        .tags
        .iter()
        .filter_map(|(k, v)| peers::parse_tag(k, v))
        .collect();
    if verdicts.is_empty() {
        println!("! [ha]: no verdict published yet (no agent of the pair has run)");
    }
    for v in &verdicts {
        let age = std::time::Duration::from_secs(now.saturating_sub(v.at));
        let stale = if age > limit {
            ", STALE: taken for dead"
        } else {
            ""
        };
        println!(
            "! [ha]: {} says {} ({}s ago{stale}): {}",
            v.agent_id,
            v.path,
            age.as_secs(),
            v.reason
        );
    }
    let ours = ha.agent_id.as_deref().map(peers::tag_key);
    let has_ours = ours.as_ref().is_some_and(|k| table.tags.contains_key(k));
    let counted = crate::cloud::memory::user_tags(table.tags.keys());
    if !has_ours && counted >= crate::cloud::memory::MAX_TAGS {
        return Err(format!(
            "✗ [ha]: {anchor} already has {counted} tags (besides aws: ones), EC2's limit: our \
             verdict cannot be added\n    fix: remove a tag from that route table"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RouteTable;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            "[aws]\nbackend = \"memory\"\n[probe]\ntargets = [\"198.18.0.10\"]\n\
             [[routes]]\nroute_table_id = \"rtb-0123456789abcdef0\"\ndestination = \"10.1.0.0/16\"\n\
             target_eni = \"eni-0123456789abcdef0\"\n[ha]\nagent_id = \"monitor-a\"\n",
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn table(tags: impl IntoIterator<Item = (String, String)>) -> RouteTable {
        RouteTable {
            id: "rtb-0123456789abcdef0".into(),
            tags: tags.into_iter().collect(),
            ..RouteTable::default()
        }
    }

    #[test]
    fn a_full_anchor_fails_unless_our_verdict_is_already_there() {
        let config = config();
        let ha = config.ha.clone().unwrap();
        let full = |ours: bool| {
            (0..crate::cloud::memory::MAX_TAGS).map(move |i| {
                if ours && i == 0 {
                    (
                        crate::peers::tag_key("monitor-a"),
                        "primary;1;0;r".to_string(),
                    )
                } else {
                    (format!("k{i}"), "v".to_string())
                }
            })
        };
        let e = check_ha(&ha, &[table(full(false))]).unwrap_err();
        assert!(e.contains("already has 50 tags"), "{e}");
        assert!(check_ha(&ha, &[table(full(true))]).is_ok());
        assert!(check_ha(&ha, &[]).unwrap_err().contains("missing"));
        // EC2 leaves out its own aws: tags (CloudFormation's, say).
        let mut cfn: Vec<(String, String)> = full(false).skip(3).collect();
        cfn.extend(
            ["stack-name", "stack-id", "logical-id"]
                .map(|k| (format!("aws:cloudformation:{k}"), "x".to_string())),
        );
        assert!(check_ha(&ha, &[table(cfn)]).is_ok());
    }

    #[test]
    fn a_detached_eni_fails_the_check() {
        use crate::cloud::{EniStatus, NetworkInterface};
        let config = config();
        let id = "eni-0123456789abcdef0".to_string();
        let eni = |status, attached| NetworkInterface {
            id: id.clone(),
            subnet_id: None,
            status,
            attached,
            source_dest_check: false,
        };
        let rows = eni_rows(
            &config,
            std::slice::from_ref(&id),
            &[eni(EniStatus::Available, false)],
        );
        assert!(!rows[0].0, "{rows:?}");
        assert!(
            rows[0].1.starts_with(
                "✗ network interface eni-0123456789abcdef0 is available, not attached"
            ),
            "{rows:?}"
        );
        let rows = eni_rows(
            &config,
            std::slice::from_ref(&id),
            &[eni(EniStatus::InUse, true)],
        );
        assert!(rows[0].0, "{rows:?}");
        assert!(!eni_rows(&config, std::slice::from_ref(&id), &[])[0].0);
    }

    #[test]
    fn a_table_without_a_dx_route_says_failback_would_be_held() {
        let config = config();
        let rows = guard_rows(&config, &[table([])]);
        assert_eq!(rows.len(), 1);
        assert!(
            rows[0].starts_with(
                "! failback guard: 10.1.0.0/16 in rtb-0123456789abcdef0 has no DX route"
            ),
            "{rows:?}"
        );
    }
}
