//! `route-failover plan`: the calls a switch would make now, as AWS CLI commands.

use std::process::ExitCode;

use super::{inputs, ledger, read_tables};
use crate::cloud::dry_run::aws_cli;
use crate::config::Config;
use crate::fsm::Via;
use crate::plan;

/// Prints the calls a switch to `path` would make now, without making them.
pub async fn plan_switch(config: &Config, path: Via) -> anyhow::Result<ExitCode> {
    let ledger = ledger(config);
    let observed = read_tables(config, &ledger).await?;
    let plan = plan::plan(path, inputs(config, &ledger), &observed);
    if plan.actions.is_empty() {
        println!("# nothing to do: the route tables already match {path}");
    }
    for action in &plan.actions {
        println!("{}", aws_cli(action, config.aws.region.as_deref()));
    }
    for finding in &plan.findings {
        println!("# ! {finding}");
    }
    Ok(ExitCode::SUCCESS)
}
