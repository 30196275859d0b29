//! False failovers under noise, simulated, next to the ideal detector.
//!
//! The real round rule and state machine (`summarize` + `Fsm`) and the
//! silence detector (`detect::Detector` + `Fsm`) run over seeded path
//! models: random loss, jitter, silent bursts and slow bursts. The path
//! never really fails, so every failover is a false one, except that a
//! silent burst as long as the detection time *is* an outage as the VPC
//! sees it: the oracle fails over exactly then and never otherwise, and no
//! real detector with the same worst-case detection time can do better.
//!
//! For every profile and model: the worst-case detection time measured by
//! silent cuts at many phases on the model's background, false failovers
//! per day, the oracle's at that same detection time on the same traces,
//! and the echoes it cost. Then a sweep of detection time for the plot.
//!
//! Writes bench/results/false_failover.csv, false_failover_sweep.csv,
//! oracle_curve.csv and false_failover_goals.csv. Run: cargo bench --profile release --bench false_failover
//! (bench/run.sh does). Environment: FF_DAYS (10), FF_SWEEP_DAYS (8),
//! FF_GOAL_DAYS (100), FF_CUTS (300), FF_THREADS (all cores), FF_ONLY
//! (table|sweep|goals, or fast: the candidate sub-second settings the
//! shipped one was chosen from), FF_PROFILE and FF_MODEL (keep only the
//! table's and goals' profiles and models whose names contain them).

#[path = "false_failover/model.rs"]
mod model;
#[path = "false_failover/sim.rs"]
mod sim;

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use route_failover::detect::MIN_LOST;
use route_failover::probe::rtt::Deadline;

use model::PathModel;
use sim::{measured_worst_case, oracle, Profile, Rule};

const DAY: u64 = 24 * 3600;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Keeps the items whose names contain the value of `var` (when set), for
/// a long run of a few cells: FF_PROFILE and FF_MODEL.
fn keep<T>(items: Vec<T>, var: &str, name: impl Fn(&T) -> &str) -> Vec<T> {
    match std::env::var(var) {
        Ok(want) if !want.is_empty() => items
            .into_iter()
            .filter(|i| name(i).contains(&want))
            .collect(),
        _ => items,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn rounds(
    name: &str,
    family: &'static str,
    interval: u64,
    timeout: u64,
    count: u32,
    fall: u32,
    targets: u32,
) -> Profile {
    Profile {
        name: name.to_string(),
        family,
        interval: ms(interval),
        timeout: ms(timeout),
        count,
        targets,
        rule: Rule::Rounds {
            fall,
            early_stop: true,
        },
    }
}

/// The silence detector with the shipped probing: `count` echoes per
/// target per second, suspect probing every 25 ms, deadline
/// clamp(srtt + 4·rttvar, 20 ms, 800 ms).
fn silence(name: &str, family: &'static str, silence_ms: u64, count: u32) -> Profile {
    silence_with(name, family, silence_ms, count, 25, MIN_LOST)
}

fn silence_with(
    name: &str,
    family: &'static str,
    silence_ms: u64,
    count: u32,
    suspect_ms: u64,
    min_lost: u32,
) -> Profile {
    Profile {
        name: name.to_string(),
        family,
        interval: ms(1000),
        timeout: ms(800),
        count,
        targets: 2,
        rule: Rule::Silence {
            silence: ms(silence_ms),
            suspect: ms(suspect_ms),
            deadline: Deadline::Adaptive {
                floor: ms(20),
                k: 4,
            },
            min_lost,
        },
    }
}

/// The original loop: `ping -c 3 -W 1` to one host (a round takes about
/// 2 s, then it sleeps 2 s), and one bad round fails over. ping sends all
/// three echoes: no early stop.
fn script_like() -> Profile {
    Profile {
        rule: Rule::Rounds {
            fall: 1,
            early_stop: false,
        },
        ..rounds(
            "script-like (4s, count 3, fall 1, 1 target)",
            "script",
            4000,
            1000,
            3,
            1,
            1,
        )
    }
}

fn table_profiles() -> Vec<Profile> {
    vec![
        script_like(),
        rounds(
            "rounds fast (100ms, count 1, fall 3)",
            "rounds-fast",
            100,
            80,
            1,
            3,
            2,
        ),
        rounds("rounds 1s, count 1, fall 3", "rounds-1", 1000, 800, 1, 3, 2),
        rounds("rounds 1s, count 3, fall 2", "rounds", 1000, 800, 3, 2, 2),
        rounds(
            "rounds default (1s, count 3, fall 3)",
            "rounds",
            1000,
            800,
            3,
            3,
            2,
        ),
        rounds("rounds 1s, count 3, fall 5", "rounds", 1000, 800, 3, 5, 2),
        silence("silence fast (300ms)", "silence", 300, 3),
        silence("silence 1s", "silence", 1000, 3),
        silence("silence default (3s)", "silence", 3000, 3),
        silence("silence 3.8s", "silence", 3800, 3),
        silence("silence economy (3s, count 1)", "silence-1", 3000, 1),
        Profile {
            name: "silence 3s, fixed 800ms deadline".to_string(),
            family: "silence-fixed",
            rule: Rule::Silence {
                silence: ms(3000),
                suspect: ms(25),
                deadline: Deadline::Fixed,
                min_lost: MIN_LOST,
            },
            ..silence("", "", 3000, 3)
        },
    ]
}

fn table_models() -> Vec<PathModel> {
    vec![
        PathModel::iid(0.05),
        PathModel::iid(0.10),
        PathModel::iid(0.20),
        PathModel::iid(0.40),
        PathModel::jitter(100.0, 100.0, 0.0),
        PathModel::jitter(400.0, 300.0, 0.0),
        PathModel::jitter(100.0, 100.0, 0.20),
        PathModel::silent_bursts(0.5),
        PathModel::silent_bursts(1.0),
        PathModel::silent_bursts(2.0),
        PathModel::silent_bursts_jitter(1.0, 100.0, 100.0),
        PathModel::slow_bursts(2.0),
    ]
}

fn sweep_profiles() -> Vec<Profile> {
    let mut v = Vec::new();
    for w in [250, 500, 750, 1000, 1500, 2000, 2500, 3000, 3800, 5000] {
        v.push(silence(&format!("silence {w}ms"), "silence", w, 3));
        v.push(silence(
            &format!("silence {w}ms, count 1"),
            "silence-1",
            w,
            1,
        ));
    }
    for fall in 1..=6 {
        v.push(rounds(
            &format!("rounds 1s, count 3, fall {fall}"),
            "rounds",
            1000,
            800,
            3,
            fall,
            2,
        ));
    }
    for fall in [3, 5, 10, 20, 40] {
        v.push(rounds(
            &format!("rounds 100ms, count 1, fall {fall}"),
            "rounds-fast",
            100,
            80,
            1,
            fall,
            2,
        ));
    }
    v.push(script_like());
    v
}

/// One (profile, model) cell: false failovers over `days` seeded days,
/// the measured worst case, and the oracle at that worst case.
struct Cell {
    /// None when every cut came after a false failover.
    worst: Option<Duration>,
    early_cuts: u32,
    failovers: usize,
    oracle: usize,
    echoes_per_s: f64,
}

fn cell(profile: &Profile, model: &PathModel, days: u64, cuts: u32) -> Cell {
    let (worst, early_cuts) = measured_worst_case(profile, model, cuts, 17);
    let (mut failovers, mut oracle_total, mut echoes) = (0, 0, 0);
    for seed in 0..days {
        let trace = model.trace(seed, DAY);
        let end = DAY * 1_000_000_000;
        let run = profile.run(&|t, s| trace.fate(t, s), end);
        failovers += run.failovers.len();
        echoes += run.echoes;
        if let Some(worst) = worst {
            oracle_total += oracle(trace.silent_spells(), worst, profile.interval, end).len();
        }
    }
    Cell {
        worst,
        early_cuts,
        failovers,
        oracle: oracle_total,
        echoes_per_s: echoes as f64 / (days * DAY) as f64,
    }
}

/// Runs `jobs` on `threads` threads, results in job order.
fn parallel<J: Sync, R: Send>(jobs: &[J], threads: usize, f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(jobs.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(job) = jobs.get(i) else { return };
                let r = f(job);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

fn millis(d: Option<Duration>) -> String {
    d.map_or("n/a".to_string(), |d| {
        format!("{:.0}", d.as_secs_f64() * 1000.0)
    })
}

fn ratio(ours: usize, oracle: usize) -> String {
    match (ours, oracle) {
        (0, 0) => "-".to_string(),
        (_, 0) => "inf".to_string(),
        _ => format!("{:.2}", ours as f64 / oracle as f64),
    }
}

fn out(name: &str) -> String {
    format!("{}/bench/results/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn table(days: u64, cuts: u32, threads: usize) {
    let profiles = keep(table_profiles(), "FF_PROFILE", |p| &p.name);
    let models = keep(table_models(), "FF_MODEL", |m| &m.name);
    let jobs: Vec<(usize, usize)> = (0..profiles.len())
        .flat_map(|p| (0..models.len()).map(move |m| (p, m)))
        .collect();
    let cells = parallel(&jobs, threads, |&(p, m)| {
        cell(&profiles[p], &models[m], days, cuts)
    });
    println!("False failovers per day, {days} seeded days per cell; the oracle at the same worst-case detection time, same traces\n");
    println!(
        "{:<44} {:>8} {:>8}  {:<44} {:>9} {:>9} {:>6} {:>8}",
        "profile", "worst", "formula", "path model", "ours/day", "ideal/day", "ratio", "echoes/s"
    );
    let mut csv = String::from("profile,family,rule,interval_ms,count,targets,worst_case_ms,formula_ms,early_cuts,model,mean_loss,days,false_failovers,per_day,oracle_failovers,oracle_per_day,echoes_per_s\n");
    for (&(p, m), c) in jobs.iter().zip(&cells) {
        let (profile, model) = (&profiles[p], &models[m]);
        let per_day = c.failovers as f64 / days as f64;
        let oracle_per_day = c.oracle as f64 / days as f64;
        println!(
            "{:<44} {:>7}ms {:>6.0}ms  {:<44} {:>9.2} {:>9.2} {:>6} {:>8.1}",
            profile.name,
            millis(c.worst),
            profile.analytic_worst_case().as_secs_f64() * 1000.0,
            model.name,
            per_day,
            oracle_per_day,
            ratio(c.failovers, c.oracle),
            c.echoes_per_s,
        );
        let rule = match profile.rule {
            Rule::Rounds { fall, .. } => format!("fall {fall}"),
            Rule::Silence { silence, .. } => format!("silence {}ms", silence.as_millis()),
        };
        let _ = writeln!(
            csv,
            "\"{}\",{},{rule},{},{},{},{},{:.1},{},\"{}\",{:.5},{days},{},{per_day:.3},{},{oracle_per_day:.3},{:.2}",
            profile.name,
            profile.family,
            profile.interval.as_millis(),
            profile.count,
            profile.targets,
            millis(c.worst),
            profile.analytic_worst_case().as_secs_f64() * 1000.0,
            c.early_cuts,
            model.name,
            model.mean_loss(),
            c.failovers,
            c.oracle,
            c.echoes_per_s,
        );
    }
    std::fs::write(out("false_failover.csv"), csv).expect("write the CSV");
    println!("\nwrote {}", out("false_failover.csv"));
}

fn sweep(days: u64, cuts: u32, threads: usize) {
    let profiles = sweep_profiles();
    let models = [
        PathModel::silent_bursts(0.5),
        PathModel::silent_bursts(1.0),
        PathModel::silent_bursts(2.0),
    ];
    let jobs: Vec<(usize, usize)> = (0..profiles.len())
        .flat_map(|p| (0..models.len()).map(move |m| (p, m)))
        .collect();
    let cells = parallel(&jobs, threads, |&(p, m)| {
        cell(&profiles[p], &models[m], days, cuts)
    });
    let mut csv = String::from("family,profile,model,worst_case_ms,days,false_failovers,per_day,oracle_failovers,oracle_per_day,echoes_per_s\n");
    println!("\nSweep over detection time: silent bursts, {days} seeded days per point\n");
    for (&(p, m), c) in jobs.iter().zip(&cells) {
        let (profile, model) = (&profiles[p], &models[m]);
        println!(
            "{:<14} {:<40} {:<24} {:>7}ms {:>9.2}/day  ideal {:>9.2}/day  ratio {:>5}",
            profile.family,
            profile.name,
            model.name,
            millis(c.worst),
            c.failovers as f64 / days as f64,
            c.oracle as f64 / days as f64,
            ratio(c.failovers, c.oracle),
        );
        let _ = writeln!(
            csv,
            "{},\"{}\",\"{}\",{},{days},{},{:.3},{},{:.3},{:.2}",
            profile.family,
            profile.name,
            model.name,
            millis(c.worst),
            c.failovers,
            c.failovers as f64 / days as f64,
            c.oracle,
            c.oracle as f64 / days as f64,
            c.echoes_per_s,
        );
    }
    std::fs::write(out("false_failover_sweep.csv"), csv).expect("write the CSV");

    // The oracle alone, on a fine grid of detection times.
    let mut curve = String::from("model,detection_ms,days,oracle_failovers,oracle_per_day\n");
    for model in &models {
        let traces: Vec<_> = (0..days).map(|seed| model.trace(seed, DAY)).collect();
        for t in (100..=8000).step_by(100) {
            let n: usize = traces
                .iter()
                .map(|tr| oracle(tr.silent_spells(), ms(t), ms(1000), DAY * 1_000_000_000).len())
                .sum();
            let _ = writeln!(
                curve,
                "\"{}\",{t},{days},{n},{:.3}",
                model.name,
                n as f64 / days as f64
            );
        }
    }
    std::fs::write(out("oracle_curve.csv"), curve).expect("write the CSV");
    println!(
        "\nwrote {} and {}",
        out("false_failover_sweep.csv"),
        out("oracle_curve.csv")
    );
}

/// Candidate sub-second settings, on the models that matter for them.
fn fast_variants(days: u64, cuts: u32, threads: usize) {
    let profiles = [
        silence_with("W300 s50 m3", "x", 300, 3, 50, 3),
        silence_with("W300 s25 m3", "x", 300, 3, 25, 3),
        silence_with("W300 s25 m5", "x", 300, 3, 25, 5),
        silence_with("W300 s20 m6", "x", 300, 3, 20, 6),
        silence_with("W300 c5 s25 m4", "x", 300, 5, 25, 4),
        silence_with("W350 s25 m5", "x", 350, 3, 25, 5),
    ];
    let models = [
        PathModel::iid(0.10),
        PathModel::iid(0.20),
        PathModel::jitter(100.0, 100.0, 0.0),
        PathModel::jitter(100.0, 100.0, 0.20),
        PathModel::silent_bursts(0.5),
        PathModel::silent_bursts(2.0),
    ];
    let jobs: Vec<(usize, usize)> = (0..profiles.len())
        .flat_map(|p| (0..models.len()).map(move |m| (p, m)))
        .collect();
    let cells = parallel(&jobs, threads, |&(p, m)| {
        cell(&profiles[p], &models[m], days, cuts)
    });
    for (&(p, m), c) in jobs.iter().zip(&cells) {
        println!(
            "{:<20} {:<36} worst {:>5}ms formula {:>4.0}ms {:>8.2}/day ideal {:>8.2}/day ratio {:>5} {:>5.1} echoes/s early {}",
            profiles[p].name,
            models[m].name,
            millis(c.worst),
            profiles[p].analytic_worst_case().as_secs_f64() * 1000.0,
            c.failovers as f64 / days as f64,
            c.oracle as f64 / days as f64,
            ratio(c.failovers, c.oracle),
            c.echoes_per_s,
            c.early_cuts,
        );
    }
}

/// The cells the goals name, on enough seeded days that a ratio to the
/// oracle means something: the shipped silence settings and the round
/// rule's default, under silent bursts and random loss.
fn goals(days: u64, cuts: u32, threads: usize) {
    let profiles = vec![
        silence("silence default (3s)", "silence", 3000, 3),
        silence("silence fast (300ms)", "silence", 300, 3),
        silence("silence economy (3s, count 1)", "silence-1", 3000, 1),
        silence("silence 3s, count 4", "silence-4", 3000, 4),
        rounds(
            "rounds default (1s, count 3, fall 3)",
            "rounds",
            1000,
            800,
            3,
            3,
            2,
        ),
    ];
    let models = vec![
        PathModel::silent_bursts(0.5),
        PathModel::silent_bursts(1.0),
        PathModel::silent_bursts(2.0),
        PathModel::iid(0.10),
        PathModel::iid(0.20),
        PathModel::iid(0.40),
    ];
    let profiles = keep(profiles, "FF_PROFILE", |p| &p.name);
    let models = keep(models, "FF_MODEL", |m| &m.name);
    let jobs: Vec<(usize, usize)> = (0..profiles.len())
        .flat_map(|p| (0..models.len()).map(move |m| (p, m)))
        .collect();
    let cells = parallel(&jobs, threads, |&(p, m)| {
        cell(&profiles[p], &models[m], days, cuts)
    });
    println!("\nGoal cells, {days} seeded days each\n");
    let mut csv = String::from("profile,model,worst_case_ms,days,false_failovers,per_day,oracle_failovers,oracle_per_day,ratio,echoes_per_s\n");
    for (&(p, m), c) in jobs.iter().zip(&cells) {
        println!(
            "{:<38} {:<22} worst {:>5}ms {:>6} false ({:>8.3}/day)  ideal {:>6} ({:>8.3}/day)  ratio {:>5}  {:>5.1} echoes/s",
            profiles[p].name,
            models[m].name,
            millis(c.worst),
            c.failovers,
            c.failovers as f64 / days as f64,
            c.oracle,
            c.oracle as f64 / days as f64,
            ratio(c.failovers, c.oracle),
            c.echoes_per_s,
        );
        let _ = writeln!(
            csv,
            "\"{}\",\"{}\",{},{days},{},{:.3},{},{:.3},{},{:.2}",
            profiles[p].name,
            models[m].name,
            millis(c.worst),
            c.failovers,
            c.failovers as f64 / days as f64,
            c.oracle,
            c.oracle as f64 / days as f64,
            ratio(c.failovers, c.oracle),
            c.echoes_per_s,
        );
    }
    std::fs::write(out("false_failover_goals.csv"), csv).expect("write the CSV");
    println!("\nwrote {}", out("false_failover_goals.csv"));
}

fn main() {
    let days = env("FF_DAYS", 10);
    let sweep_days = env("FF_SWEEP_DAYS", 8);
    let goal_days = env("FF_GOAL_DAYS", 100);
    let cuts = u32::try_from(env("FF_CUTS", 300)).unwrap_or(300);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = usize::try_from(env("FF_THREADS", cores as u64)).unwrap_or(1);
    let only = std::env::var("FF_ONLY").unwrap_or_default();
    if only.is_empty() || only == "table" {
        table(days, cuts, threads);
    }
    if only == "fast" {
        fast_variants(days, cuts, threads);
    }
    if only.is_empty() || only == "sweep" {
        sweep(sweep_days, cuts, threads);
    }
    if only.is_empty() || only == "goals" {
        goals(goal_days, cuts, threads);
    }
}
