//! route-failover: moves on-premises traffic from a Direct Connect path to a
//! VPN appliance when the DX path stops answering, and back when it heals,
//! by managing EC2 static routes.
//!
//! # Layout
//! - [`config`]: TOML schema, defaults and validation into a typed [`config::Config`].
//! - [`probe`]: the [`probe::Prober`] trait, round/quorum rule, ICMP and scripted probers.
//! - [`fsm`]: the pure hysteresis state machine (`fall`, `rise`, hold-down, flap damping).
//! - [`decide`]: pure: the state machine's verdict + backup health → the path to converge on.
//! - [`judge`]: owns the state machine, backup health and operator mode; reports decided transitions.
//! - [`backup`]: pure: the backup path's health from its probes, the appliance ENIs and blackholes.
//! - [`peers`]: pure: the HA pair's rule (Backup while any live agent says so) and its tag format.
//! - [`ha`]: the pair's bookkeeping: publishing our verdict as a tag, reading and ageing peers', disagreements.
//! - [`detect`]: the pure silence detector (suspicion probing, RTT-aware deadlines).
//! - [`model`]: route tables and routes as the planner sees them.
//! - [`plan`]: pure planner: desired path + observed tables → actions and findings.
//! - [`cloud`]: the [`cloud::RouteApi`] trait; EC2, in-memory and dry-run backends.
//! - [`agent`]: the probe loop (probe → fsm); starts the reconciler.
//! - [`alarm`]: timerfd sleeps and ticks that wake the runtime once (tokio's timer wheel: twice).
//! - [`events`]: the [`events::Event`] vocabulary and the sinks events flow out to.
//! - [`backoff`]: capped exponential backoff with jitter.
//! - [`reconcile`]: the reconciler (plan → cloud), level-triggered, in its own task.
//! - [`instance`]: region and own subnet from instance metadata (IMDSv2).
//! - [`guard`]: the self-subnet guard (never manage the agent's own table).
//! - [`state`]: the ownership ledger: routes we created or replaced, kept on disk.
//! - [`lock`]: one agent per config and per route table on a host.
//! - [`metrics`]: Prometheus metrics recorded from the agent's events.
//! - [`notify`]: `[[notify]]` hooks (exec, webhook), fed from events without ever blocking.
//! - [`systemd`]: READY / WATCHDOG / STATUS notifications.
//! - [`signals`]: SIGTERM/SIGINT stop, SIGHUP reload, SIGUSR1 failback.
//! - [`control`]: the control socket (live status, operator actions) and the `ctl` client.
//! - [`commands`]: the bodies of `run`, `check`, `status`, `plan` and `ctl`.
//! - [`demo`]: the scripted demo behind `route-failover demo`.

pub mod agent;
pub mod alarm;
pub mod backoff;
pub mod backup;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod control;
pub mod decide;
pub mod demo;
pub mod detect;
pub mod events;
pub mod fsm;
pub mod guard;
pub mod ha;
pub mod instance;
pub mod judge;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod peers;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod signals;
pub mod state;
pub mod systemd;
