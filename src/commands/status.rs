//! `route-failover status`: each managed route as the tables show it.

use std::process::ExitCode;

use super::{inputs, ledger, read_tables};
use crate::config::Config;
use crate::fsm::Via;
use crate::model::Adoption;
use crate::plan::{self, Status};

pub async fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let ledger = ledger(config);
    let observed = read_tables(config, &ledger).await?;
    println!(
        "{:<24} {:<20} {:<24} status",
        "route table", "destination", "target eni"
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
        println!(
            "{:<24} {:<20} {:<24} {status}",
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
    Ok(ExitCode::SUCCESS)
}
