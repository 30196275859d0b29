//! One reconcile: read every table a pass may touch, plan, record in the
//! ledger what is about to be created, re-check what is about to be
//! removed, act; and how it ended.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{Desired, Reconciler, Spec};
use crate::cloud::{CloudError, ErrorKind, RouteApi};
use crate::events::{Event, Outcome};
use crate::fsm::Via;
use crate::model::{Action, ManagedRoute, RouteTable};
use crate::plan::{self, Finding, Inputs, Plan, Status};

/// Route calls in flight at once during one reconcile pass. Enough to switch
/// many tables quickly, well under EC2's mutating-call burst.
const CONCURRENT_CALLS: usize = 8;
/// Passes (read, act, read again) per reconcile before waiting for a tick.
const MAX_PASSES: usize = 4;

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pass {
    /// The tables carry traffic the way the path says.
    Converged,
    /// Nothing the agent may do would converge them (a missing table, a
    /// foreign route): reported, retried at the next resync.
    Blocked(String),
    /// A call failed; retry after a backoff.
    Failed { kind: ErrorKind, why: String },
    /// The desired path changed meanwhile: start over at once.
    Superseded,
    /// With `[ha]`: removals wait for a read at this instant to confirm
    /// that no peer's verdict explains the routes.
    Settling(Instant),
    /// Paused by an operator: nothing called, what would be is reported.
    Paused,
    /// Shutdown: no further call.
    Stopped,
}

impl Reconciler {
    /// Every table a pass may touch: the configured ones and any the
    /// ledger still has routes of ours in.
    pub(super) fn tables_to_read(&self, spec: &Spec) -> Vec<String> {
        let mut ids = spec.table_ids.clone();
        ids.extend(self.ledger.record().table_ids());
        // The peers' verdicts, even if a reload stopped managing it.
        ids.extend(self.ha.as_ref().map(|h| h.anchor().to_string()));
        ids.into_iter().collect()
    }

    /// Brings the ledger in line with the tables: forgets what they no
    /// longer bear out, and claims routes that are ours by the config's
    /// ENI but not yet recorded (say, made by an older version), so that a
    /// later config change still knows them.
    pub(super) fn tidy_ledger(&mut self, spec: &Spec, observed: &[RouteTable]) {
        let stale = self
            .ledger
            .record()
            .stale(observed, &spec.table_ids, |t, d| spec.current_eni(t, d));
        let claim: Vec<ManagedRoute> = spec
            .routes
            .iter()
            .filter(|r| {
                matches!(
                    plan::status(r, self.ledger.record(), observed),
                    Status::Ours { stale: false, .. }
                ) && !self.ledger.record().created_with(
                    &r.route_table_id,
                    r.destination,
                    &r.target_eni,
                )
            })
            .cloned()
            .collect();
        let result = self
            .ledger
            .forget_all(&stale)
            .and_then(|()| claim.iter().try_for_each(|r| self.ledger.will_create(r)));
        if let Err(e) = result {
            error!(error = %e, "cannot update the ownership ledger");
        }
    }

    /// Reads, plans and acts until the tables match `path`, the path
    /// changes, or a call fails.
    pub(super) async fn reconcile(
        &mut self,
        local: Via,
        desired: &watch::Receiver<Desired>,
    ) -> Pass {
        let spec = self.spec.borrow().clone();
        let superseded = || desired.has_changed().unwrap_or(true);
        self.ours = Some(local);
        // Peers hear of a new verdict before any route call it causes, and
        // of an unchanged one if our last write is nearly peer_timeout old
        // (back from losing the API). Otherwise it is left to the
        // heartbeat: the pass reads first, so a read a beat after our last
        // write can show another process writing under our id.
        if self
            .ha
            .as_ref()
            .is_some_and(|h| h.publish_first(local, Instant::now()))
        {
            let changed = self.ha.as_ref().is_some_and(|h| h.changed(local));
            // This write supersedes a heartbeat's still in flight: dropped,
            // and should it land late anyway, its lower counter makes peers
            // ignore it.
            self.beat_call = None;
            if let Err(e) = self.publish(local).await {
                let act = self
                    .ha
                    .as_ref()
                    .is_some_and(|h| h.act_unpublished(local, &e, Instant::now()));
                if !changed {
                    // An unchanged verdict peers saw before was only
                    // refreshed: its failure (logged) holds nothing.
                } else if !act {
                    return Pass::Failed {
                        kind: e.kind,
                        why: format!("CreateTags (our verdict) failed: {e}"),
                    };
                } else {
                    // Loud, every pass while it lasts: peers cannot see why
                    // our routes are there. The publication is retried with
                    // every pass and heartbeat.
                    error!(error = %e, verdict = %local, "CRITICAL: failing over although our Backup verdict cannot be published to the pair (failover is the safe direction); peers may delete our routes once, we put them back; fix CreateTags on the anchor table");
                    self.events.emit(Event::Diverged {
                        path: local,
                        why: format!(
                            "acting on an unpublished Backup verdict: CreateTags failed: {e}"
                        ),
                    });
                }
            }
        }
        for _ in 0..MAX_PASSES {
            if self.stop.is_cancelled() {
                return Pass::Stopped;
            }
            if superseded() {
                return Pass::Superseded;
            }
            let ids = self.tables_to_read(&spec);
            let api = Arc::clone(&self.api);
            let read = async move { api.describe_route_tables(&ids).await };
            let observed = match self.beating(read).await {
                Ok(t) => t,
                Err(e) => return self.read_failed(e),
            };
            self.tidy_ledger(&spec, &observed);
            let path = self.effective_path(local, &observed);
            self.forget().await;
            let mut plan = plan::plan(
                path,
                Inputs {
                    managed: &spec.routes,
                    ledger: self.ledger.record(),
                    takeover: spec.settings.takeover,
                    failback_requires_dx_route: spec.settings.failback_requires_dx_route,
                },
                &observed,
            );
            // Judged even under a hold below, so the fight guard keeps
            // what it knows (the routes, what we deleted) while it lasts.
            let mut settle = self.judge_removals(path, &mut plan);
            // With [ha]: a pair that cannot be trusted to agree keeps our
            // routes; failing over stays allowed (the safe direction).
            if let Some(why) = self
                .ha
                .as_ref()
                .and_then(|h| h.failback_hold(Instant::now()))
            {
                plan.hold_removals(&why);
                settle = None;
            }
            self.report(&plan.findings);
            self.count_blackholes(&plan.findings);
            if *self.paused.borrow() {
                self.intend(path, &plan.actions, "paused");
                return Pass::Paused;
            }
            if plan.actions.is_empty() {
                if let Some(due) = settle {
                    debug!(
                        ?due,
                        "failback waits for a read a heartbeat later: tags can lag routes"
                    );
                    return Pass::Settling(due);
                }
                return if plan.converged(path) {
                    Pass::Converged
                } else {
                    Pass::Blocked(blocking(&plan, path))
                };
            }
            if superseded() {
                return Pass::Superseded;
            }
            if let Err(pass) = self.act(path, plan.actions).await {
                return pass;
            }
        }
        Pass::Failed {
            kind: ErrorKind::Other,
            why: format!("not converged after {MAX_PASSES} passes"),
        }
    }

    /// Reports the calls a pass would make without making them (paused,
    /// or a dry run), each distinct plan once.
    fn intend(&mut self, path: Via, actions: &[Action], mode: &str) {
        if actions == self.intended.as_slice() {
            return;
        }
        self.intended = actions.to_vec();
        for action in actions {
            info!(%mode, action = %action, "would {action}");
        }
        self.events.emit(Event::Intended {
            path,
            actions: actions.to_vec(),
        });
    }

    fn read_failed(&self, e: CloudError) -> Pass {
        if e.kind == ErrorKind::Auth {
            error!(error = %e, "not authorized to read the route tables: fix the instance role or credentials; retrying slowly");
        } else {
            warn!(error = %e, "DescribeRouteTables failed; will retry");
        }
        let pass = Pass::Failed {
            kind: e.kind,
            why: format!("DescribeRouteTables failed: {e}"),
        };
        self.events.emit(Event::ApiError {
            op: "DescribeRouteTables",
            error: e,
        });
        pass
    }

    /// Makes the calls: records what it is about to create, re-checks what
    /// it is about to remove, then calls, a few at a time, starting none
    /// once stopped. `Err` carries how the pass ends.
    async fn act(&mut self, path: Via, actions: Vec<Action>) -> Result<(), Pass> {
        let mut failed: Option<(ErrorKind, String)> = None;
        let recheck = self.recheck_removals(path, &actions).await?;
        let mut ready: Vec<Action> = actions
            .into_iter()
            .filter(|a| !a.removes_ours() || recheck.contains(a))
            .collect();
        // One synced write for the whole pass, not one per route: the
        // runtime that probes waits on it.
        if let Err(e) = self.ledger.will_apply(&ready) {
            // Never make a route we could not remember making.
            error!(error = %e, "not creating: cannot record ownership first");
            failed = Some((ErrorKind::Other, e.to_string()));
            ready.retain(Action::removes_ours);
        }
        let api = Arc::clone(&self.api);
        let stop = self.stop.clone();
        let paused = self.paused.clone();
        let calls = stream::iter(ready)
            // Checked as each call is about to start: none starts once
            // stopped or paused by an operator.
            .take_while(move |_| std::future::ready(!stop.is_cancelled() && !*paused.borrow()))
            .map(move |action| {
                let api = Arc::clone(&api);
                async move {
                    let started = Instant::now();
                    let result = execute(api.as_ref(), &action).await;
                    (action, result, started.elapsed())
                }
            })
            .buffer_unordered(CONCURRENT_CALLS)
            .collect::<Vec<(Action, Result<Outcome, CloudError>, Duration)>>();
        let results = self.beating(calls).await;
        let dry_run = self.api.is_dry_run();
        if dry_run {
            let actions: Vec<Action> = results.iter().map(|(a, _, _)| a.clone()).collect();
            // Say "would", never "changed": nothing was.
            self.intend(path, &actions, "dry run");
            return Ok(());
        }
        let mut gone = Vec::new();
        let mut deleted = Vec::new();
        for (action, result, latency) in results {
            match &result {
                Ok(outcome) => {
                    info!(
                        op = action.op(),
                        action = %action,
                        ?outcome,
                        latency_ms = latency.as_millis(),
                        "route changed"
                    );
                    if action.removes_ours() {
                        let r = action.route();
                        gone.push((r.route_table_id.clone(), r.destination));
                        if *outcome == Outcome::Done {
                            deleted.push((r.route_table_id.clone(), r.destination));
                        }
                    }
                }
                Err(e) => {
                    error!(op = action.op(), action = %action, error = %e, "route change failed; will retry");
                    failed.get_or_insert((e.kind, format!("{} failed: {e}", action.op())));
                }
            }
            self.events.emit(Event::RouteChange {
                action,
                result,
                latency,
            });
        }
        if let Err(e) = self.ledger.forget_all(&gone) {
            error!(error = %e, "cannot update the ownership ledger");
        }
        if let Some(ha) = self.ha.as_mut() {
            ha.note_deleted(deleted, Instant::now());
        }
        if self.stop.is_cancelled() {
            return Err(Pass::Stopped);
        }
        if failed.is_none() && *self.paused.borrow() {
            // The next pass reads the tables and says what it would do.
            return Err(Pass::Superseded);
        }
        match failed {
            Some((kind, why)) => Err(Pass::Failed { kind, why }),
            None => Ok(()),
        }
    }

    /// Re-reads each table we are about to remove a route of ours from and
    /// keeps the removals whose slot still holds that very route. What is
    /// left is the window between this read and the call itself (one round
    /// trip to EC2), which its API cannot close. `path` is the one the
    /// pass planned for.
    async fn recheck_removals(
        &mut self,
        path: Via,
        actions: &[Action],
    ) -> Result<Vec<Action>, Pass> {
        let removals: Vec<&Action> = actions.iter().filter(|a| a.removes_ours()).collect();
        let mut tables: Vec<String> = removals
            .iter()
            .map(|a| a.route().route_table_id.clone())
            .collect();
        tables.sort();
        tables.dedup();
        // With peers, the anchor first: a Backup verdict there stops every removal.
        let anchor = match &self.ha {
            Some(ha) if !removals.is_empty() => Some(ha.anchor().to_string()),
            _ => None,
        };
        if let Some(anchor) = &anchor {
            tables.retain(|t| t != anchor);
            tables.insert(0, anchor.clone());
        }
        let mut confirmed = Vec::with_capacity(removals.len());
        for table in tables {
            if self.stop.is_cancelled() {
                return Err(Pass::Stopped);
            }
            let api = Arc::clone(&self.api);
            let ids = vec![table.clone()];
            let read = async move { api.describe_route_tables(&ids).await };
            let fresh = match self.beating(read).await {
                Ok(t) => t,
                Err(e) => return Err(self.read_failed(e)),
            };
            if anchor.as_ref() == Some(&table) {
                if let Some((local, ha)) = self.ours.zip(self.ha.as_mut()) {
                    ha.observe(&fresh);
                    let combined = ha.combined(local);
                    // Only a change since the pass's read supersedes it:
                    // removals planned on Backup are routes the config no
                    // longer manages (a reload), which no verdict explains,
                    // and a pass planned again would plan them again.
                    if combined.path == Via::Backup && path != Via::Backup {
                        warn!(why = %combined, "a peer's verdict changed since the tables were read: removing nothing");
                        return Err(Pass::Superseded);
                    }
                    if let Some(why) = ha.failback_hold(Instant::now()) {
                        warn!(%why, "the pair cannot be trusted to agree since the tables were read: removing nothing");
                        return Err(Pass::Superseded);
                    }
                }
            }
            for action in removals
                .iter()
                .filter(|a| a.route().route_table_id == table)
            {
                let route = action.route();
                let still_ours = matches!(
                    plan::status(route, self.ledger.record(), &fresh),
                    Status::Ours { eni, .. } if eni == route.target_eni
                );
                if still_ours {
                    confirmed.push((*action).clone());
                } else {
                    warn!(action = %action, "the route changed since it was read: left alone");
                }
            }
        }
        Ok(confirmed)
    }

    fn report(&mut self, findings: &[Finding]) {
        let current: HashSet<String> = findings.iter().map(ToString::to_string).collect();
        for finding in findings {
            let text = finding.to_string();
            if !self.reported.contains(&text) {
                warn!(finding = %text, "attention");
                self.events.emit(Event::Finding(finding.clone()));
            }
        }
        self.reported = current;
    }
}

/// Why a plan with nothing to do is not converged, in one line.
fn blocking(plan: &Plan, path: Via) -> String {
    plan.findings
        .iter()
        .filter(|f| f.blocks(path))
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Makes one call; "already there" and "already gone" count as converged.
async fn execute(api: &dyn RouteApi, action: &Action) -> Result<Outcome, CloudError> {
    let result = match action {
        Action::Create(r) => api.create_route(r).await,
        Action::Replace { route, .. } | Action::Retarget { route, .. } => {
            api.replace_route(route).await
        }
        Action::Restore { route, original } => {
            api.restore_route(&route.route_table_id, route.destination, original)
                .await
        }
        Action::Delete(r) => api.delete_route(&r.route_table_id, r.destination).await,
    };
    match (action, result) {
        (_, Ok(())) => Ok(Outcome::Done),
        (Action::Create(_), Err(e)) if e.kind == ErrorKind::RouteAlreadyExists => {
            Ok(Outcome::AlreadyConverged)
        }
        (Action::Delete(_), Err(e)) if e.kind == ErrorKind::RouteNotFound => {
            Ok(Outcome::AlreadyConverged)
        }
        (_, Err(e)) => Err(e),
    }
}
