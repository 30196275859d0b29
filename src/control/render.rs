//! `ctl status` for humans: what needs attention first and loudly, then
//! one line per concern, then the probe figures per target.

use std::fmt::Write;
use std::time::Duration;

use super::protocol::{Status, TargetView};

/// An age in seconds, as "0.4s" or "5m 3s".
fn age(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{seconds:.1}s");
    }
    let whole = Duration::from_secs_f64(seconds.max(0.0));
    humantime::format_duration(Duration::from_secs(whole.as_secs())).to_string()
}

fn opt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The whole status, several lines, newline-terminated.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_status(&mut out, s);
    out
}

fn write_status(out: &mut String, s: &Status) -> std::fmt::Result {
    let a = &s.agent;
    writeln!(
        out,
        "route-failover {}, pid {}, up {}, config {}, probing with {}",
        a.version,
        a.pid,
        age(a.uptime_seconds),
        a.config,
        if a.prober.is_empty() { "?" } else { &a.prober }
    )?;
    write_alarms(out, s)?;

    let m = &s.state_machine;
    match s.path {
        Some(path) => writeln!(out, "path:            {path}: {}", s.why)?,
        None => writeln!(out, "path:            not decided: {}", s.why)?,
    }
    let verdict = m
        .verdict
        .map_or_else(|| "no round yet".to_string(), |v| v.to_string());
    let hold_down = m.hold_down_left_seconds.map_or_else(
        || "no hold-down".to_string(),
        |left| format!("hold-down {} left", age(left)),
    );
    writeln!(
        out,
        "state machine:   {verdict} ({}); down {} of {} (fall), up {} of {} (rise); {hold_down}; {}",
        m.phase,
        m.down_streak,
        m.fall,
        m.up_streak,
        m.rise,
        if m.pinned { "PINNED by flap damping" } else { "not pinned" }
    )?;

    let r = &s.routes;
    if r.converged {
        writeln!(out, "routes:          converged")?;
    } else {
        writeln!(
            out,
            "routes:          NOT converged: {}",
            r.why_not.as_deref().unwrap_or("no reconcile pass yet")
        )?;
    }
    for (i, action) in r.pending.iter().enumerate() {
        let label = if i == 0 { "  would:" } else { "" };
        writeln!(out, "{label:<17}{action}")?;
    }
    if let Some(adoption) = &r.adoption {
        writeln!(out, "  at start:      the tables showed {adoption}")?;
    }

    match &s.last_transition {
        Some(t) => writeln!(
            out,
            "last transition: {} -> {}, {} ago ({}): {}",
            t.from,
            t.to,
            age(t.age_seconds),
            t.at,
            t.reason
        )?,
        None => writeln!(out, "last transition: none since start")?,
    }
    match &s.last_api_error {
        Some(e) => writeln!(
            out,
            "last API error:  {} {} ago ({}): {}",
            e.op,
            age(e.age_seconds),
            e.at,
            e.error
        )?,
        None => writeln!(out, "last API error:  none since start")?,
    }
    write_backup(out, s)?;
    if let Some(action) = &s.operator.last_action {
        writeln!(
            out,
            "last action:     {} by {}, {} ago ({})",
            action.action.name(),
            action
                .uid
                .map_or_else(|| "an unknown uid".to_string(), |u| format!("uid {u}")),
            age(action.age_seconds),
            action.at
        )?;
    }

    write_probes(out, s)?;

    if !s.findings.is_empty() {
        writeln!(out, "findings (newest first):")?;
        for f in &s.findings {
            writeln!(out, "  {} ago: {}", age(f.age_seconds), f.finding)?;
        }
    }
    match &s.peers {
        None => writeln!(out, "peers:           none ([ha] not configured)")?,
        Some(peers) => {
            let read = s
                .ha_read_age_seconds
                .map(|a| format!(", read {} ago", age(a)))
                .unwrap_or_default();
            match &s.ha_anchor {
                Some(anchor) => writeln!(out, "peers (verdicts on {anchor}{read}):")?,
                None => writeln!(out, "peers{read}:")?,
            }
            for p in peers {
                writeln!(
                    out,
                    "  {}: {}, {} ago{}",
                    p.agent,
                    p.verdict,
                    age(p.age_seconds),
                    if p.live { "" } else { " (DEAD)" }
                )?;
            }
        }
    }
    Ok(())
}

/// What needs attention, first and loudly.
fn write_alarms(out: &mut String, s: &Status) -> std::fmt::Result {
    if let Some(path) = s.operator.hold {
        writeln!(
            out,
            "!!! OPERATOR HOLD: {path} is held whatever the probes say, until `route-failover ctl release`"
        )?;
    }
    if s.operator.paused {
        writeln!(
            out,
            "!!! PAUSED: no route calls until `route-failover ctl resume`; what would be done is logged"
        )?;
    }
    if s.agent.dry_run {
        writeln!(out, "!!! DRY RUN: no route call is ever made")?;
    }
    if s.backup.both_paths_down {
        writeln!(out, "!!! BOTH PATHS DOWN: DX is down and so is the backup")?;
    } else if s.backup.no_redundancy {
        writeln!(
            out,
            "!!! NO REDUNDANCY: the backup path is down while DX is up"
        )?;
    }
    if s.state_machine.pinned {
        writeln!(
            out,
            "!!! FLAPPING: pinned on Backup until the flap window clears or `route-failover ctl failback`"
        )?;
    }
    Ok(())
}

/// The backup path, its appliance check and each failback guard.
fn write_backup(out: &mut String, s: &Status) -> std::fmt::Result {
    let b = &s.backup;
    let gate = match (&b.appliance, b.required) {
        (None, _) => "",
        (Some(_), true) => "; a backup known down holds the failover",
        (Some(_), false) => "; required = false: alarms only",
    };
    writeln!(out, "backup path:     {}{gate}", b.state)?;
    if let Some(appliance) = &b.appliance {
        // The age tells a fresh verdict from one kept while the API fails.
        match b.appliance_age_seconds {
            Some(age) => writeln!(out, "  appliance ENI: {appliance} (checked {age:.0}s ago)")?,
            None => writeln!(out, "  appliance ENI: {appliance}")?,
        }
    }
    if !b.targets.is_empty() {
        write_targets(out, "BACKUP TARGET", &b.targets)?;
    }
    if !b.failback_guard {
        writeln!(
            out,
            "failback guard:  OFF: failback deletes our routes even with no DX route left"
        )?;
    } else if b.failback_held.is_empty() {
        writeln!(
            out,
            "failback guard:  on: our routes are deleted only while a DX route covers them"
        )?;
    } else {
        writeln!(out, "failback guard:  HOLDING:")?;
        for held in &b.failback_held {
            writeln!(out, "  {held}")?;
        }
    }
    Ok(())
}

fn write_probes(out: &mut String, s: &Status) -> std::fmt::Result {
    let p = &s.probes;
    match &p.last_round {
        Some(r) => writeln!(
            out,
            "last round:      #{} {}, {} ago: {}{}",
            r.number,
            if r.up { "up" } else { "DOWN" },
            age(r.age_seconds),
            r.summary,
            r.label
                .as_deref()
                .map_or_else(String::new, |l| format!(" [{l}]"))
        )?,
        None => writeln!(out, "last round:      none yet")?,
    }
    if p.overruns > 0 {
        writeln!(out, "  overran:       {} rounds since start", p.overruns)?;
    }
    writeln!(
        out,
        "targets, over the last {} rounds ({} apart):",
        p.window,
        age(p.interval_seconds)
    )?;
    write_targets(out, "TARGET", &p.targets)
}

/// A table of targets under `title`, as wide as its longest address.
fn write_targets(out: &mut String, title: &str, targets: &[TargetView]) -> std::fmt::Result {
    let width = targets
        .iter()
        .map(|t| t.target.len())
        .max()
        .unwrap_or(0)
        .max(title.len());
    writeln!(
        out,
        "  {:<width$}  {:>7}  {:>5}  {:<26}  ERROR",
        title, "UP", "LOSS", "RTT MIN/AVG/MAX (ms)"
    )?;
    for t in targets {
        write_target(out, t, width)?;
    }
    Ok(())
}

fn write_target(out: &mut String, t: &TargetView, width: usize) -> std::fmt::Result {
    let rtt = format!(
        "{}/{}/{}",
        opt_ms(t.rtt_min_ms),
        opt_ms(t.rtt_avg_ms),
        opt_ms(t.rtt_max_ms)
    );
    let line = format!(
        "  {:<width$}  {:>7}  {:>4.0}%  {rtt:<26}  {}",
        t.target,
        format!("{}/{}", t.up_rounds, t.rounds),
        t.loss_ratio * 100.0,
        t.error.as_deref().unwrap_or("")
    );
    writeln!(out, "{}", line.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::OperatorAction;
    use crate::control::protocol::{
        ActionView, AgentView, MachineView, OperatorView, ProbesView, RoundView, RoutesView,
        TransitionView,
    };
    use crate::fsm::Via;

    fn held() -> Status {
        Status {
            agent: AgentView {
                pid: 812,
                version: "0.1.0".into(),
                config: "/etc/route-failover/config.toml".into(),
                dry_run: false,
                started: "2026-02-27T19:55:00Z".into(),
                uptime_seconds: 266_700.0,
                prober: "icmp (2 targets)".into(),
            },
            path: Some(Via::Backup),
            why: "an operator holds this path until released (`ctl release` ends it)".into(),
            state_machine: MachineView {
                verdict: Some(Via::Primary),
                phase: "settled".into(),
                down_streak: 0,
                fall: 3,
                up_streak: 214,
                rise: 10,
                hold_down_left_seconds: None,
                pinned: false,
            },
            operator: OperatorView {
                hold: Some(Via::Backup),
                paused: false,
                last_action: Some(ActionView {
                    action: OperatorAction::FailoverHold,
                    uid: Some(1001),
                    at: "2026-03-02T22:00:07Z".into(),
                    age_seconds: 214.2,
                }),
            },
            routes: RoutesView {
                tables_read: true,
                adoption: Some("Primary".into()),
                converged: true,
                why_not: None,
                pending: Vec::new(),
            },
            probes: ProbesView {
                window: 10,
                interval_seconds: 1.0,
                last_round: Some(RoundView {
                    number: 268_004,
                    up: true,
                    targets_down: 0,
                    targets_total: 2,
                    loss_ratio: 0.0,
                    summary: "0/2 targets down, loss 0%, rtt avg 1.9ms".into(),
                    age_seconds: 0.3,
                    label: None,
                }),
                targets: vec![
                    TargetView {
                        target: "10.1.0.10".into(),
                        rounds: 10,
                        up_rounds: 10,
                        up: true,
                        loss_ratio: 0.0,
                        rtt_min_ms: Some(1.71),
                        rtt_avg_ms: Some(1.88),
                        rtt_max_ms: Some(2.4),
                        error: None,
                    },
                    TargetView {
                        target: "10.1.0.11".into(),
                        rounds: 10,
                        up_rounds: 7,
                        up: true,
                        loss_ratio: 0.2,
                        rtt_min_ms: Some(1.8),
                        rtt_avg_ms: Some(1.93),
                        rtt_max_ms: Some(2.21),
                        error: None,
                    },
                ],
                overruns: 0,
            },
            last_transition: Some(TransitionView {
                from: Via::Primary,
                to: Via::Backup,
                reason: "an operator holds Backup".into(),
                at: "2026-03-02T22:00:07Z".into(),
                age_seconds: 214.2,
            }),
            backup: crate::control::protocol::BackupView {
                state: "not watched".into(),
                both_paths_down: false,
                no_redundancy: false,
                ..Default::default()
            },
            ..Status::default()
        }
    }

    #[test]
    fn a_hold_comes_first_and_loud_then_one_line_per_concern() {
        let text = status(&held());
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("route-failover 0.1.0, pid 812, up 3days 2h 5m"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("!!! OPERATOR HOLD: Backup is held"),
            "{text}"
        );
        for needle in [
            "path:            Backup: an operator holds this path",
            "state machine:   Primary (settled); down 0 of 3 (fall), up 214 of 10 (rise); no hold-down; not pinned",
            "routes:          converged",
            "last transition: Primary -> Backup, 3m 34s ago (2026-03-02T22:00:07Z): an operator holds Backup",
            "last API error:  none since start",
            "last action:     failover-hold by uid 1001, 3m 34s ago",
            "last round:      #268004 up, 0.3s ago",
            "  10.1.0.11     7/10    20%  1.80/1.93/2.21\n",
            "peers:           none ([ha] not configured)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn what_needs_attention_is_marked() {
        let mut s = held();
        s.operator.hold = None;
        assert!(!status(&s).contains("!!!"));
        s.operator.paused = true;
        s.agent.dry_run = true;
        s.backup.both_paths_down = true;
        s.state_machine.pinned = true;
        s.routes.converged = false;
        s.routes.why_not = Some("paused by an operator: no route calls".into());
        s.routes.pending = vec!["create a".into(), "create b".into()];
        let text = status(&s);
        for needle in [
            "!!! PAUSED",
            "!!! DRY RUN",
            "!!! BOTH PATHS DOWN",
            "!!! FLAPPING",
            "routes:          NOT converged: paused by an operator: no route calls",
            "  would:         create a\n                 create b\n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }
}
