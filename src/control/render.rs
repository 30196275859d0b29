//! `ctl status` for humans: what needs attention first and loudly, then
//! one line per concern, then the probe figures per target.

use std::fmt::Write;
use std::time::Duration;

use super::protocol::{Status, TargetView};
use crate::agent::OperatorAction;

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

fn action_name(action: OperatorAction) -> String {
    serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{action:?}"))
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
    writeln!(out, "backup path:     {}", s.backup.state)?;
    if let Some(action) = &s.operator.last_action {
        writeln!(
            out,
            "last action:     {} by {}, {} ago ({})",
            action_name(action.action),
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
            writeln!(out, "peers:")?;
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
            "!!! NO REDUNDANCY: the backup path is down while DX carries the traffic"
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
    let width = p
        .targets
        .iter()
        .map(|t| t.target.len())
        .max()
        .unwrap_or(0)
        .max("TARGET".len());
    writeln!(
        out,
        "  {:<width$}  {:>7}  {:>5}  {:<26}  ERROR",
        "TARGET", "UP", "LOSS", "RTT MIN/AVG/MAX (ms)"
    )?;
    for t in &p.targets {
        write_target(out, t, width)?;
    }
    Ok(())
}

fn write_target(out: &mut String, t: &TargetView, width: usize) -> std::fmt::Result {
    writeln!(
        out,
        "  {:<width$}  {:>7}  {:>4.0}%  {:<26}  {}",
        t.target,
        format!("{}/{}", t.up_rounds, t.rounds),
        t.loss_ratio * 100.0,
        format!(
            "{}/{}/{}",
            opt_ms(t.rtt_min_ms),
            opt_ms(t.rtt_avg_ms),
            opt_ms(t.rtt_max_ms)
        ),
        t.error.as_deref().unwrap_or("")
    )
}
