//! `route-failover status`: each managed route as the tables show it.

use std::process::ExitCode;

use super::read_tables;
use crate::config::Config;
use crate::plan::{self, Status};

pub async fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let observed = read_tables(config).await?;
    println!(
        "{:<24} {:<20} {:<24} status",
        "route table", "destination", "target eni"
    );
    for r in &config.routes {
        let status = match plan::status(r, &observed) {
            Status::Ours { state } => format!("ours ({state:?})"),
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
    let path = plan::adopt(&config.routes, &observed);
    println!("path implied by the route tables: {path}");
    for finding in plan::plan(path, &config.routes, &observed, false).findings {
        println!("! {finding}");
    }
    Ok(ExitCode::SUCCESS)
}
