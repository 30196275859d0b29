//! `route-failover status`: each managed route as the tables show it.

use std::process::ExitCode;

use super::{connect, inputs, ledger, read_tables};
use crate::backup::{check_appliance, Appliance};
use crate::config::Config;
use crate::fsm::Via;
use crate::model::{eni_ids, Adoption};
use crate::plan::{self, Status};

pub async fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let ledger = ledger(config);
    let observed = read_tables(config, &ledger).await?;
    println!(
        "{:<24} {:<20} {:<24} {:<12} status",
        "route table", "destination", "target eni", "dx route"
    );
    for r in &config.routes {
        let status = match plan::status(r, &ledger, &observed) {
            Status::Ours {
                state, eni, stale, ..
            } if stale => format!("ours ({state:?}), STILL -> {eni} (an old target_eni)"),
            Status::Ours { state, .. } => format!("ours ({state:?})"),
            Status::Absent => "absent".to_string(),
            Status::Foreign { target, .. } => format!("FOREIGN -> {target}"),
            Status::TableMissing => "TABLE MISSING".to_string(),
        };
        // What the failback guard looks for: a DX route left once ours is gone.
        let dx = match observed.iter().find(|t| t.id == r.route_table_id) {
            Some(t) if plan::has_dx_route(t, r.destination) => "yes",
            Some(_) => "NONE",
            None => "-",
        };
        println!(
            "{:<24} {:<20} {:<24} {dx:<12} {status}",
            r.route_table_id,
            r.destination.to_string(),
            r.target_eni
        );
    }
    let adoption = plan::adopt(&config.routes, &ledger, &observed);
    println!("path implied by the route tables: {adoption}");
    let path = match adoption {
        Adoption::Primary => Via::Primary,
        Adoption::Backup | Adoption::Partial { .. } => Via::Backup,
    };
    for finding in plan::plan(path, inputs(config, &ledger), &observed).findings {
        println!("! {finding}");
    }
    if config.reconcile.failback_requires_dx_route {
        println!("failback guard: on (a failback keeps our route where `dx route` is NONE)");
    } else {
        println!("failback guard: OFF (failover.failback_requires_dx_route = false)");
    }
    backup(config).await;
    Ok(ExitCode::SUCCESS)
}

/// The backup path as `[backup]` watches it: its targets, and the
/// appliance ENI check as the agent runs it every resync.
async fn backup(config: &Config) {
    let Some(b) = &config.backup else {
        println!("backup path: not watched (no [backup] section)");
        return;
    };
    let targets: Vec<String> = b.targets.iter().map(ToString::to_string).collect();
    if targets.is_empty() {
        println!("backup path: the appliance ENI check alone (no targets)");
    } else {
        println!(
            "backup path: probed at {}{} (`ctl status` shows their replies)",
            targets.join(", "),
            b.source.map_or_else(String::new, |s| format!(" from {s}"))
        );
    }
    let enis = eni_ids(&config.routes);
    let found = match connect(config).await {
        Ok((api, _)) => api.describe_network_interfaces(&enis).await,
        Err(e) => {
            println!("appliance ENIs: not checked: {e:#}");
            return;
        }
    };
    match found {
        Ok(found) => match check_appliance(&enis, &found) {
            Appliance::Failed(problems) => {
                for (eni, problem) in problems {
                    println!("appliance ENI: ! {eni} {problem}: the backup counts as DOWN");
                }
            }
            _ => println!("appliance ENIs: ok (in-use, attached, source/destination check off)"),
        },
        Err(e) => println!("appliance ENIs: not checked: {e}"),
    }
}
