//! What the agent does that someone may want to see, and where it goes.
//!
//! The probe loop and the reconciler write [`Event`]s to an [`Events`]
//! handle; sinks (log-derived metrics, systemd, a test's channel, hooks)
//! read them. Sinks are wired in `main`, so nothing in the loop depends on
//! any of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::agent::OperatorAction;
use crate::backup::Appliance;
use crate::cloud::CloudError;
use crate::decide::{Alarms, BackupState, Operator};
use crate::fsm::{Phase, Reason, Transition, Via};
use crate::model::{Action, Adoption, ManagedRoute};
use crate::plan::Finding;
use crate::probe::{RoundPolicy, RoundSummary, TargetReport};

/// How an action ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// EC2 said the table already was as we wanted (`RouteAlreadyExists`
    /// on create, `InvalidRoute.NotFound` on delete).
    AlreadyConverged,
}

/// Everything the agent does that someone may want to see.
#[derive(Debug, Clone)]
pub enum Event {
    /// Probing has started; the route tables may not have been read yet.
    Started {
        prober: String,
        /// An operator's hold restored from the last run, or none.
        operator: Operator,
        /// A pause restored from the last run.
        paused: bool,
    },
    /// The route tables were read and the agent took the path they show.
    Adopted {
        adoption: Adoption,
        /// Our routes found in the tables.
        ours: Vec<ManagedRoute>,
    },
    /// A partial start was settled on Backup by `fall` down rounds.
    Settled {
        reason: Reason,
    },
    Round {
        number: u64,
        at: Instant,
        summary: RoundSummary,
        targets: Vec<TargetReport>,
        /// The rule the round was judged by.
        policy: RoundPolicy,
        label: Option<String>,
        /// The decided path.
        path: Via,
        standing: Standing,
    },
    /// The backup group of a round (`[backup] targets`), right after its
    /// [`Event::Round`]; `state` is the backup's health after it.
    BackupRound {
        number: u64,
        summary: RoundSummary,
        targets: Vec<TargetReport>,
        policy: RoundPolicy,
        state: BackupState,
    },
    /// The appliance ENIs were checked (every resync, with `[backup]`).
    ApplianceChecked(Appliance),
    /// A round did not finish within its interval; it counted as down.
    Overran,
    Transition(Transition),
    /// Flap damping started (`true`) or stopped (`false`) pinning Backup.
    Pinned(bool),
    RouteChange {
        action: Action,
        result: Result<Outcome, CloudError>,
        latency: Duration,
    },
    Finding(Finding),
    /// The tables match `path`; `since_transition` is the time since the
    /// transition that asked for it, when there was one.
    Converged {
        path: Via,
        since_transition: Option<Duration>,
    },
    /// A reconcile pass ended without the tables matching `path`: a call
    /// failed, a table is missing, or a foreign route is in the way.
    Diverged {
        path: Via,
        why: String,
    },
    ApiError {
        op: &'static str,
        error: CloudError,
    },
    /// The backup-path alarms changed (raised or cleared).
    Alarms(Alarms),
    /// An operator acted (`ctl`): what, who, and the resulting mode.
    Operator {
        action: OperatorAction,
        uid: Option<u32>,
        operator: Operator,
        paused: bool,
    },
    /// Paused or dry run: the calls a pass would make, none made.
    Intended {
        path: Via,
        actions: Vec<Action>,
    },
    /// A new configuration (SIGHUP) is in effect.
    Reloaded,
    /// With `[ha]`: the pair as this agent sees it changed (a verdict, a
    /// peer's liveness, the combined path, a disagreement).
    Peers(crate::ha::PeerView),
    /// With `[ha]`: the pair cannot be trusted to agree (another writer
    /// under our id, a split anchor, a route we deleted back unexplained),
    /// once as it starts. `kind` is `ha_duplicate_id`, `ha_split_anchor`
    /// or `ha_fight`; `text` says what to do.
    PairFinding {
        kind: &'static str,
        anchor: String,
        text: String,
    },
}

/// Where the agent stands after a round, for status views.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The decided path (where traffic goes, or will once converged).
    pub path: Via,
    /// The state machine's own verdict on the primary.
    pub local: Via,
    pub phase: Phase,
    pub down_streak: u32,
    pub up_streak: u32,
    pub hold_down_left: Option<Duration>,
    pub pinned: bool,
    pub backup: BackupState,
    pub operator: Operator,
}

/// Somewhere events go. Implementations must not block: they run inline
/// in the probe loop and the reconciler.
pub trait Sink: Send + Sync {
    fn record(&self, event: &Event);
}

/// Forwards every event to a channel (tests, the demo).
impl Sink for mpsc::UnboundedSender<Event> {
    fn record(&self, event: &Event) {
        // A receiver that went away just stops listening.
        let _ = self.send(event.clone());
    }
}

/// The set of sinks events are written to. Cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    sinks: Vec<Arc<dyn Sink>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Events({} sinks)", self.sinks.len())
    }
}

impl Events {
    /// No sinks: events are dropped.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds a sink.
    pub fn with(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Hands `event` to every sink, in the order they were added.
    pub fn emit(&self, event: Event) {
        for sink in &self.sinks {
            sink.record(&event);
        }
    }
}
