//! With `[ha]`: the heartbeat (a CreateTags beside the wait loop and beside
//! a pass's calls), publishing our verdict, assessing the pair, forgetting
//! retired verdicts, and judging the removals a read calls for.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::Reconciler;
use crate::cloud::CloudError;
use crate::events::Event;
use crate::fsm::Via;
use crate::ha::{Ha, RouteKey, Write};
use crate::model::{ManagedRoute, RouteTable};
use crate::plan::Plan;

/// A heartbeat's CreateTags, owning what it needs so it can be dropped.
pub(super) type BeatCall =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Write, Result<(), CloudError>)> + Send>>;

/// Stands in for "no beat due" in a `select!` branch that is disabled.
const NO_BEAT: Duration = Duration::from_secs(86_400);

impl Reconciler {
    /// Starts one heartbeat: our verdict's write, as a future that owns
    /// what it needs, so the caller can drop it. No read: peers' liveness
    /// only matters for deletions, which always re-read the anchor first,
    /// and is judged at the reads the reconciler makes anyway.
    pub(super) fn begin_beat(&mut self, local: Via) -> Option<BeatCall> {
        let reason = self.verdict_reason_now();
        let write = self.ha.as_mut()?.begin_write(local, &reason);
        let api = Arc::clone(&self.api);
        Some(Box::pin(async move {
            let result = api
                .create_tags(&write.anchor, std::slice::from_ref(&write.tag))
                .await;
            (write, result)
        }))
    }

    /// Ends a heartbeat: notes the write (a failed beat is logged; the
    /// next one retries) and shows the pair again (a status view computes
    /// ages from it).
    pub(super) fn end_beat(&mut self, local: Via, write: &Write, result: Result<(), CloudError>) {
        self.finish_write(local, write, result);
        self.assess_pair(local);
    }

    /// Notes how a heartbeat's write went; a failure is logged and emitted.
    fn finish_write(&mut self, local: Via, write: &Write, result: Result<(), CloudError>) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let changed = ha.changed(local);
        if let Err(e) = ha.end_write(write, result) {
            self.publish_failed(local, changed, &e);
        }
    }

    /// Our verdict's reason as it stands.
    fn verdict_reason_now(&self) -> String {
        self.verdict_reason
            .as_ref()
            .map(|r| r.borrow().clone())
            .unwrap_or_default()
    }

    /// Awaits `call` (an API call of a pass), publishing our verdict on
    /// every heartbeat due meanwhile: one call may take 50 s (timeouts
    /// and retries), and a peer must not take us for dead while it runs.
    /// Our writes stay in order: this task makes all of them, one at a time.
    /// The beat's write runs beside the call, never holding it up; one
    /// still in flight when the call ends is kept for the next wait.
    pub(super) async fn beating<T>(&mut self, call: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(call);
        let mut beat_call = self.beat_call.take();
        loop {
            let beat = self.ha.as_ref().and_then(Ha::next_beat).zip(self.ours);
            if beat.is_none() && beat_call.is_none() {
                return call.await;
            }
            // Only polled while a beat is due and none is in flight.
            let due = beat.map_or_else(|| Instant::now() + NO_BEAT, |(due, _)| due);
            tokio::select! {
                biased;
                out = &mut call => {
                    self.beat_call = beat_call;
                    return out;
                }
                (write, result) = async { beat_call.as_mut().expect("guarded").await }, if beat_call.is_some() => {
                    beat_call = None;
                    if let Some(local) = self.ours {
                        // A failed beat is logged; the next one retries.
                        self.finish_write(local, &write, result);
                    }
                }
                () = tokio::time::sleep_until(due), if beat.is_some() && beat_call.is_none() => {
                    if let Some((_, local)) = beat {
                        beat_call = self.begin_beat(local);
                    }
                }
            }
        }
    }

    /// Assesses the pair and tells the sinks, every time (a status view
    /// computes ages from it); logged only when it changed.
    fn assess_pair(&mut self, local: Via) -> Option<crate::peers::Combined> {
        let ha = self.ha.as_mut()?;
        let (combined, view, changed) = ha.assess(local, Instant::now());
        if changed {
            info!(pair = %view, "the pair");
        }
        self.events.emit(Event::Peers(view));
        self.emit_pair_findings();
        Some(combined)
    }

    /// Tells the sinks (hooks among them) of the pair's findings that just
    /// started: each once, as it starts.
    fn emit_pair_findings(&mut self) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let anchor = ha.anchor().to_string();
        for (kind, text) in ha.take_started() {
            self.events.emit(Event::PairFinding {
                kind,
                anchor: anchor.clone(),
                text,
            });
        }
    }

    /// Deletes retired peers' verdicts found by the last read, each only if
    /// it still holds the value read (EC2's conditional DeleteTags), so a
    /// peer that came back meanwhile keeps its fresh verdict.
    pub(super) async fn forget(&mut self) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let anchor = ha.anchor().to_string();
        for (key, value) in ha.take_forget() {
            let tag = [(key.clone(), Some(value.clone()))];
            let result = self.api.delete_tags(&anchor, &tag).await;
            if let Err(e) = &result {
                self.events.emit(Event::ApiError {
                    op: "DeleteTags",
                    error: e.clone(),
                });
            }
            ha.forget_result((key, value), &result);
        }
    }

    /// Writes our verdict to the anchor (one CreateTags). A failure is
    /// logged and emitted; the caller decides whether it holds route calls.
    pub(super) async fn publish(&mut self, local: Via) -> Result<(), CloudError> {
        let reason = self.verdict_reason_now();
        let Some(ha) = self.ha.as_mut() else {
            return Ok(());
        };
        let changed = ha.changed(local);
        let result = ha.publish(self.api.as_ref(), local, &reason).await;
        if let Err(e) = &result {
            self.publish_failed(local, changed, e);
        }
        result
    }

    /// Logs and emits a failed write of our verdict (`changed`: a new one).
    fn publish_failed(&mut self, local: Via, changed: bool, e: &CloudError) {
        let anchor = self.ha.as_ref().map(|h| h.anchor().to_string());
        let anchor = anchor.unwrap_or_default();
        if changed {
            error!(error = %e, verdict = %local, %anchor, "cannot publish our new verdict to the pair: no route call until it is (see iam-policy.example.json for CreateTags)");
        } else {
            warn!(error = %e, %anchor, "heartbeat not published; peers take us for dead after ha.peer_timeout");
        }
        self.events.emit(Event::ApiError {
            op: "CreateTags",
            error: e.clone(),
        });
    }

    /// The path to converge on after a read: ours, or with `[ha]` the
    /// pair's, from the verdicts in `observed`.
    pub(super) fn effective_path(&mut self, local: Via, observed: &[RouteTable]) -> Via {
        let Some(ha) = self.ha.as_mut() else {
            self.effective = Some(local);
            return local;
        };
        ha.observe(observed);
        ha.check_split(observed);
        let combined = self.assess_pair(local).expect("[ha] is set: checked above");
        if combined.path != local && self.effective != Some(combined.path) {
            warn!(ours = %local, pair = %combined.path, why = %combined, "following the pair");
        }
        self.effective = Some(combined.path);
        combined.path
    }

    /// With `[ha]`: keeps in `plan` only the removals a read a heartbeat
    /// earlier already called for, holds those of routes we deleted once
    /// that came back (a fight), and says when to read again for the rest.
    pub(super) fn judge_removals(&mut self, path: Via, plan: &mut Plan) -> Option<Instant> {
        let ha = self.ha.as_mut()?;
        if path == Via::Backup {
            ha.explained();
            return None;
        }
        let key = |r: &ManagedRoute| (r.route_table_id.clone(), r.destination);
        let removals: Vec<RouteKey> = plan
            .actions
            .iter()
            .filter(|a| a.removes_ours())
            .map(|a| key(a.route()))
            .collect();
        let resync = self.spec.borrow().settings.resync_interval;
        let judged = ha.judge_removals(&removals, Instant::now(), resync);
        plan.hold_removals_where(&judged.why, |r| judged.held.contains(&key(r)));
        plan.actions
            .retain(|a| !a.removes_ours() || judged.ready.contains(&key(a.route())));
        self.emit_pair_findings();
        judged.settle_until
    }
}
