//! route-failover: moves on-premises traffic from a Direct Connect path to a
//! VPN appliance when the DX path stops answering, and back when it heals,
//! by managing EC2 static routes.
//!
//! # Layout
//! - [`config`]: TOML schema, defaults and validation into a typed [`config::Config`].
//! - [`probe`]: the [`probe::Prober`] trait, round/quorum rule, ICMP and scripted probers.
//! - [`fsm`]: the pure hysteresis state machine (`fall`, `rise`, hold-down, flap damping).
//! - [`detect`]: the pure silence detector (suspicion probing, RTT-aware deadlines).
//! - [`model`]: route tables and routes as the planner sees them.
//! - [`plan`]: pure planner: desired path + observed tables → actions and findings.
//! - [`cloud`]: the [`cloud::RouteApi`] trait; EC2, in-memory and dry-run backends.
//! - [`agent`]: the probe loop (probe → fsm); starts the reconciler.
//! - [`events`]: the [`events::Event`] vocabulary and the sinks events flow out to.
//! - [`backoff`]: capped exponential backoff with jitter.
//! - [`reconcile`]: the reconciler (plan → cloud), level-triggered, in its own task.
//! - [`instance`]: region and own subnet from instance metadata (IMDSv2).
//! - [`guard`]: the self-subnet guard (never manage the agent's own table).
//! - [`lock`]: one agent per config on a host.
//! - [`metrics`]: Prometheus metrics recorded from the agent's events.
//! - [`systemd`]: READY / WATCHDOG / STATUS notifications.
//! - [`signals`]: SIGTERM/SIGINT stop, SIGHUP reload, SIGUSR1 failback.
//! - [`commands`]: the bodies of `run`, `check`, `status` and `plan`.
//! - [`demo`]: the scripted demo behind `route-failover demo`.

pub mod agent;
pub mod backoff;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod demo;
pub mod detect;
pub mod events;
pub mod fsm;
pub mod guard;
pub mod instance;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod signals;
pub mod systemd;
