//! The bodies of the CLI's subcommands; `main` parses arguments and calls these.
//!
//! - [`run`]: the daemon (backend, guard, lock, signals, reload).
//! - [`check`]: the preflight.
//! - [`status`]: what the route tables show.
//! - [`plan`]: the calls a switch would make.
//! - [`ctl`]: asks the running agent (live status, operator actions).

pub mod check;
pub mod ctl;
pub mod plan;
pub mod run;
pub mod status;

use std::sync::Arc;

use anyhow::Context;

use crate::cloud::ec2::Ec2RouteApi;
use crate::cloud::memory::MemoryRouteApi;
use crate::cloud::RouteApi;
use crate::config::{Backend, Config};
use crate::instance::{self, Instance, MetadataError};
use tracing::warn;

use crate::model::{table_ids, RouteTable};
use crate::plan::Inputs;
use crate::state::{Ledger, Record};

/// The backend the config asks for, and what instance metadata told us.
pub async fn connect(config: &Config) -> anyhow::Result<(Arc<dyn RouteApi>, Instance)> {
    Ok(match config.aws.backend {
        Backend::Memory => (
            Arc::new(MemoryRouteApi::seeded(&config.routes)),
            Instance::default(),
        ),
        Backend::Ec2 => {
            let instance = instance::discover(&config.aws).await;
            let api = Ec2RouteApi::connect(&config.aws, &instance)
                .await
                .context("cannot set up the EC2 client")?;
            (Arc::new(api), instance)
        }
    })
}

/// The agent's own subnet: the config's word, else instance metadata's;
/// an error when metadata answered but failed and the config is silent.
pub fn own_subnet<'a>(
    config: &'a Config,
    instance: &'a Instance,
) -> Result<Option<&'a str>, MetadataError> {
    instance.own_subnet(config.aws.own_subnet_id.as_deref())
}

/// What the running agent has recorded as ours (read only; an agent that
/// never ran, or runs elsewhere, has recorded nothing here).
pub fn ledger(config: &Config) -> Record {
    match Ledger::peek_for_config(&config.source) {
        Ok(record) => record,
        Err(e) => {
            warn!(error = %e, "ignoring the ownership ledger");
            Record::default()
        }
    }
}

/// Connects and reads, in one call, every managed route table and every
/// table the ledger has routes of ours in.
pub async fn read_tables(config: &Config, ledger: &Record) -> anyhow::Result<Vec<RouteTable>> {
    let (api, _) = connect(config).await?;
    let mut ids = table_ids(&config.routes);
    ids.extend(ledger.table_ids());
    ids.sort();
    ids.dedup();
    api.describe_route_tables(&ids)
        .await
        .context("cannot read the route tables")
}

/// The planner's inputs for `config` and `ledger`.
pub fn inputs<'a>(config: &'a Config, ledger: &'a Record) -> Inputs<'a> {
    Inputs {
        managed: &config.routes,
        ledger,
        takeover: config.reconcile.takeover,
        failback_requires_dx_route: config.reconcile.failback_requires_dx_route,
    }
}
