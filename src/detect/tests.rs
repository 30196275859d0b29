use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addrs(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::from([198, 18, 0, u8::try_from(i + 1).unwrap()]))
        .collect()
}

/// The shipped defaults: 3 echoes per target per second, 3 s of silence,
/// suspect probing every 25 ms, deadline clamp(srtt + 4·rttvar, 20ms, 800ms).
fn config(targets: u32) -> SilenceConfig {
    SilenceConfig {
        silence: ms(3000),
        period: ms(333),
        suspect_period: ms(25),
        timeout: ms(800),
        deadline: Deadline::Adaptive {
            floor: ms(20),
            k: 4,
        },
        min_lost: MIN_LOST,
        round: RoundPolicy {
            min_replies: 1,
            quorum: targets,
        },
    }
}

/// What the simulated path does with the echo sent to `target` at `at`
/// (milliseconds since the start): its round-trip time, or lost.
type PathFn<'a> = dyn Fn(usize, f64) -> Option<Duration> + 'a;

/// Everything a run did, for checks against a reference.
#[derive(Debug, Default)]
struct Log {
    /// (target, sent at, answered at) in send order; None: never answered.
    sent: Vec<(usize, Instant, Option<Instant>)>,
    /// Instants the path was first judged silent, one per silent spell.
    silent_at: Vec<Instant>,
    /// The longest echo deadline in force during the run.
    max_deadline: Duration,
}

/// Drives a detector the way the async driver does: wake at the next
/// deadline or reply, hand in replies, send what is due, ask for the
/// verdict. Runs for `span` on a fixed `path`.
fn drive(det: &mut Detector, t0: Instant, span: Duration, via: Via, path: &PathFn<'_>) -> Log {
    let mut log = Log::default();
    let mut replies: BTreeMap<(Instant, u64), (EchoId, Duration)> = BTreeMap::new();
    let mut index: BTreeMap<u64, usize> = BTreeMap::new();
    let end = t0 + span;
    let mut now = t0;
    let mut was_silent = false;
    loop {
        let longest = det.deadlines().into_iter().max().unwrap_or_default();
        log.max_deadline = log.max_deadline.max(longest);
        for echo in det.poll(now, via) {
            index.insert(echo.seq, log.sent.len());
            let at_ms = now.duration_since(t0).as_secs_f64() * 1000.0;
            let fate = path(echo.target, at_ms);
            log.sent.push((echo.target, now, None));
            if let Some(rtt) = fate {
                replies.insert((now + rtt, echo.seq), (echo, rtt));
            }
        }
        let silent = det.silent(now, via);
        if silent && !was_silent {
            log.silent_at.push(now);
        }
        was_silent = silent;
        let next_reply = replies.keys().next().map(|(t, _)| *t);
        let next = next_reply.map_or(det.next_wake(via), |r| r.min(det.next_wake(via)));
        if next > end {
            return log;
        }
        now = next;
        while let Some(entry) = replies.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (echo, rtt) = entry.remove();
            if rtt <= det.config().timeout {
                log.sent[index[&echo.seq]].2 = Some(now);
            }
            det.reply(echo, rtt);
        }
    }
}

/// The verdict recomputed from the whole history, independently of the
/// detector's bookkeeping: a target is silent at `now` when at least
/// `min_lost` echoes sent after its newest answered one (answered by
/// `now`, within the timeout) have passed their deadline by `now`, the
/// newest of them sent `silence` or more after that answered one.
/// `deadlines[k]` is the deadline echo `k` of the log left with.
fn reference_silent(
    log: &Log,
    deadlines: &[Duration],
    config: &SilenceConfig,
    targets: usize,
    t0: Instant,
    now: Instant,
) -> bool {
    let silent = (0..targets)
        .filter(|&i| {
            let mine: Vec<(usize, Instant, Option<Instant>)> = log
                .sent
                .iter()
                .enumerate()
                .filter(|(_, (t, _, _))| *t == i)
                .map(|(k, &(_, s, a))| (k, s, a))
                .collect();
            let last_good = mine
                .iter()
                .filter(|(_, _, a)| a.is_some_and(|a| a <= now))
                .map(|(_, s, _)| *s)
                .max()
                .unwrap_or(t0);
            let lost: Vec<Instant> = mine
                .iter()
                .filter(|(k, s, a)| {
                    *s > last_good && a.is_none_or(|a| a > now) && *s + deadlines[*k] <= now
                })
                .map(|(_, s, _)| *s)
                .collect();
            u32::try_from(lost.len()).unwrap() >= config.min_lost
                && lost
                    .iter()
                    .max()
                    .is_some_and(|n| n.duration_since(last_good) >= config.silence)
        })
        .count();
    u32::try_from(silent).unwrap() >= config.round.quorum
}

fn clean(_: usize, _: f64) -> Option<Duration> {
    Some(Duration::from_micros(1500))
}

#[test]
fn a_clean_path_is_never_silent_and_costs_one_echo_per_period() {
    let t0 = Instant::now();
    let mut det = Detector::new(config(2), &addrs(2), t0);
    let log = drive(&mut det, t0, Duration::from_secs(600), Via::Primary, &clean);
    assert!(log.silent_at.is_empty());
    // 600 s at one echo per target every 333 ms, nothing more: no suspicion.
    let per_target = 600_000 / 333 + 1;
    assert_eq!(log.sent.len(), 2 * per_target);
    assert!(log.sent.iter().all(|(_, _, a)| a.is_some()));
    assert_eq!(det.deadlines(), vec![ms(20), ms(20)]);
}

#[test]
fn targets_are_staggered_over_the_period() {
    let t0 = Instant::now();
    let mut det = Detector::new(config(3), &addrs(3), t0);
    let log = drive(&mut det, t0, ms(700), Via::Primary, &clean);
    let sends: Vec<(usize, u64)> = log
        .sent
        .iter()
        .map(|(t, s, _)| (*t, u64::try_from(s.duration_since(t0).as_millis()).unwrap()))
        .collect();
    assert_eq!(
        sends,
        vec![
            (0, 0),
            (1, 111),
            (2, 222),
            (0, 333),
            (1, 444),
            (2, 555),
            (0, 666)
        ]
    );
}

#[test]
fn a_silent_cut_is_detected_within_the_worst_case_and_not_before_silence() {
    let cfg = config(2);
    // Cuts at every 7 ms across two steady periods.
    for cut_ms in (10_000u32..10_666).step_by(7) {
        let t0 = Instant::now();
        let mut det = Detector::new(cfg.clone(), &addrs(2), t0);
        let cut = f64::from(cut_ms);
        let path = move |_: usize, at: f64| (at < cut).then(|| Duration::from_micros(1500));
        let log = drive(&mut det, t0, ms(20_000), Via::Primary, &path);
        assert_eq!(log.silent_at.len(), 1, "cut at {cut_ms} ms");
        let took = log.silent_at[0].duration_since(t0 + ms(u64::from(cut_ms)));
        let bound = cfg.worst_case(2, ms(20));
        assert!(took <= bound, "cut at {cut_ms} ms: {took:?} > {bound:?}");
        let last_good = log
            .sent
            .iter()
            .filter(|(_, _, a)| a.is_some())
            .map(|(_, s, _)| *s)
            .max()
            .unwrap();
        assert!(log.silent_at[0].duration_since(last_good) >= cfg.silence);
    }
}

#[test]
fn the_fast_setting_detects_a_cut_in_under_350ms() {
    let cfg = SilenceConfig {
        silence: ms(300),
        ..config(2)
    };
    assert_eq!(cfg.worst_case(2, ms(20)), ms(345));
    let mut worst = Duration::ZERO;
    for cut_ms in (10_000u32..10_666).step_by(3) {
        let t0 = Instant::now();
        let mut det = Detector::new(cfg.clone(), &addrs(2), t0);
        let cut = f64::from(cut_ms);
        let path = move |_: usize, at: f64| (at < cut).then(|| Duration::from_micros(1500));
        let log = drive(&mut det, t0, ms(12_000), Via::Primary, &path);
        worst = worst.max(log.silent_at[0].duration_since(t0 + ms(u64::from(cut_ms))));
    }
    assert!(worst <= ms(345), "{worst:?}");
    // And the bound is nearly reached: it is a worst case, not a guess.
    assert!(worst >= ms(320), "{worst:?}");
}

#[test]
fn suspicion_probes_densely_until_a_reply_and_only_on_primary() {
    // Every echo sent in [5000, 5400) ms is lost: a short burst.
    let path =
        |_: usize, at: f64| (!(5000.0..5400.0).contains(&at)).then(|| Duration::from_micros(1500));
    for via in [Via::Primary, Via::Backup] {
        let t0 = Instant::now();
        let mut det = Detector::new(config(2), &addrs(2), t0);
        let log = drive(&mut det, t0, ms(8000), via, &path);
        assert!(log.silent_at.is_empty());
        let in_burst = log
            .sent
            .iter()
            .filter(|(_, s, _)| (ms(5000)..ms(5400)).contains(&s.duration_since(t0)))
            .count();
        match via {
            // Both targets every 25 ms once the first loss expired.
            Via::Primary => assert!(in_burst >= 16, "{in_burst} echoes in the burst"),
            // Steady only: 2 targets × 400/333.
            Via::Backup => assert!(in_burst <= 3, "{in_burst} echoes in the burst"),
        }
        // Back to steady probing after the burst.
        let after = log
            .sent
            .iter()
            .filter(|(_, s, _)| s.duration_since(t0) >= ms(6000))
            .count();
        assert_eq!(after, 2 * 6, "{via}");
    }
}

#[test]
fn late_replies_within_the_timeout_withdraw_the_evidence() {
    // A path whose RTT jumps from 2 ms to 600 ms at 5 s: every echo misses
    // its 20 ms deadline until the estimator learns, but every reply comes
    // within the 800 ms timeout. With 300 ms of silence that is not an
    // outage, and the detector must not call it one.
    let cfg = SilenceConfig {
        silence: ms(300),
        ..config(2)
    };
    let path = |_: usize, at: f64| Some(if at < 5000.0 { ms(2) } else { ms(600) });
    let t0 = Instant::now();
    let mut det = Detector::new(cfg, &addrs(2), t0);
    let log = drive(&mut det, t0, ms(10_000), Via::Primary, &path);
    // Physics: for the first 600 ms nothing tells this from a cut.
    assert_eq!(log.silent_at.len(), 1);
    let at = log.silent_at[0].duration_since(t0);
    assert!(at > ms(5000) && at < ms(5700), "{at:?}");
    // The first late reply withdrew the verdict, and the learned deadline
    // keeps it withdrawn.
    assert!(!det.silent(t0 + ms(10_000), Via::Primary));
    assert!(
        det.deadlines().iter().all(|d| *d >= ms(550)),
        "{:?}",
        det.deadlines()
    );
}

#[test]
fn a_jittery_path_never_looks_silent_once_learned() {
    // 100 ± 100 ms, deterministic pseudo-random: sub-second silence setting.
    let cfg = SilenceConfig {
        silence: ms(300),
        ..config(2)
    };
    let path = |target: usize, at: f64| {
        let h = splitmix((target as u64) << 56 ^ (at * 1000.0) as u64);
        let (x, y) = (unit(h), unit(splitmix(h)));
        // Box–Muller: normal(100, 100) clipped at zero.
        let z = (-2.0 * (1.0 - x).ln()).sqrt() * (std::f64::consts::TAU * y).cos();
        Some(Duration::from_secs_f64(
            (100.0 + 100.0 * z).max(0.0) / 1000.0,
        ))
    };
    let t0 = Instant::now();
    let mut det = Detector::new(cfg, &addrs(2), t0);
    let log = drive(&mut det, t0, Duration::from_secs(3600), Via::Primary, &path);
    assert_eq!(log.silent_at, Vec::<Instant>::new());
}

#[test]
fn replies_after_the_timeout_never_count() {
    let t0 = Instant::now();
    let mut det = Detector::new(config(1), &addrs(1), t0);
    let path = |_: usize, _: f64| Some(ms(900));
    let log = drive(&mut det, t0, ms(5000), Via::Primary, &path);
    assert!(log.sent.iter().all(|(_, _, a)| a.is_none()));
    assert_eq!(log.silent_at.len(), 1);
}

#[test]
fn a_send_error_is_a_loss_at_once() {
    let t0 = Instant::now();
    let mut det = Detector::new(config(1), &addrs(1), t0);
    let echoes = det.poll(t0, Via::Primary);
    assert_eq!(echoes.len(), 1);
    det.send_failed(echoes[0], "network unreachable".into(), t0);
    assert_eq!(det.next_wake(Via::Primary), t0);
    assert!(det.poll(t0, Via::Primary).is_empty());
    // The loss makes it suspect: the next echo leaves one suspect period
    // later, not a steady period.
    assert_eq!(det.next_wake(Via::Primary), t0 + ms(25));
    assert_eq!(det.poll(t0 + ms(25), Via::Primary).len(), 1);
    let (report, _) = det.close_window(t0 + ms(25), Via::Primary);
    assert_eq!(
        report.targets[0].error.as_deref(),
        Some("network unreachable")
    );
    assert_eq!(report.targets[0].sent, 1);
}

#[test]
fn windows_report_the_round_rule_on_backup_and_silence_on_primary() {
    let t0 = Instant::now();
    let cfg = config(2);
    // Target 1 is dead, target 0 answers: quorum 2 is not met.
    let path = |target: usize, _: f64| (target == 0).then(|| ms(2));
    let mut det = Detector::new(cfg.clone(), &addrs(2), t0);
    drive(&mut det, t0, ms(5000), Via::Primary, &path);
    let (report, summary) = det.close_window(t0 + ms(5000), Via::Primary);
    assert!(summary.up);
    assert_eq!(report.targets[0].received(), report.targets[0].sent);
    assert_eq!(report.targets[1].received(), 0);
    assert!(report.targets[1].sent >= 10);

    // On Backup a window with no reply from anyone is down, even short of
    // `silence`; one with replies is up.
    let mut det = Detector::new(cfg, &addrs(2), t0);
    drive(&mut det, t0, ms(1000), Via::Backup, &path);
    assert!(det.close_window(t0 + ms(1000), Via::Backup).1.up);
    let dead = |_: usize, _: f64| None;
    drive(&mut det, t0 + ms(1000), ms(1000), Via::Backup, &dead);
    let (_, summary) = det.close_window(t0 + ms(2000), Via::Backup);
    assert!(!summary.up);
    assert!(!det.silent(t0 + ms(2000), Via::Backup));
}

#[test]
fn fsm_policy_fails_over_on_the_first_silent_verdict_only_in_silence_mode() {
    let policy = Policy {
        fall: 3,
        rise: 10,
        hold_down: ms(60_000),
        failback: crate::fsm::Failback::Auto,
        max_failovers: 5,
        flap_window: ms(3_600_000),
    };
    let mut detect = DetectConfig {
        kind: DetectorKind::Silence,
        silence: ms(3000),
        suspect_interval: ms(25),
        deadline: Deadline::Fixed,
    };
    assert_eq!(detect.fsm_policy(&policy).fall, 1);
    assert_eq!(detect.fsm_policy(&policy).rise, 10);
    detect.kind = DetectorKind::Rounds;
    assert_eq!(detect.fsm_policy(&policy), policy);
}

/// A path that drops and delays echoes at random, per target, with spells
/// of total silence: enough variety for the properties below.
fn random_path(seed: u64, loss: f64, jitter_ms: f64) -> impl Fn(usize, f64) -> Option<Duration> {
    move |target: usize, at: f64| {
        let h = splitmix(seed ^ (target as u64) << 56 ^ (at * 1000.0) as u64);
        let (u, v) = (unit(h), unit(splitmix(h)));
        // Silent spells of 1.5 s every 10 s.
        let spell = (at % 10_000.0) > 8_500.0;
        (!spell && u >= loss).then(|| Duration::from_secs_f64((1.0 + jitter_ms * v) / 1000.0))
    }
}

/// A uniform draw in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The detector's verdict, checked after every event of a random run,
    /// equals the definition recomputed from the whole history.
    #[test]
    fn the_verdict_matches_its_definition_at_every_event(
        seed in any::<u64>(),
        loss in 0.0f64..0.9,
        jitter in 0.0f64..900.0,
        targets in 1usize..4,
        quorum_less in 0u32..3,
        silence_ms in 100u64..2000,
    ) {
        let targets_u32 = u32::try_from(targets).unwrap();
        let cfg = SilenceConfig {
            silence: ms(silence_ms),
            round: RoundPolicy { min_replies: 1, quorum: targets_u32.saturating_sub(quorum_less).max(1) },
            ..config(targets_u32)
        };
        let path = random_path(seed, loss, jitter);
        let t0 = Instant::now();
        let mut det = Detector::new(cfg.clone(), &addrs(targets), t0);
        let mut log = Log::default();
        let mut deadlines = Vec::new();
        let mut replies: BTreeMap<(Instant, u64), (EchoId, Duration)> = BTreeMap::new();
        let mut now = t0;
        while now < t0 + ms(20_000) {
            let before = det.deadlines();
            for echo in det.poll(now, Via::Primary) {
                deadlines.push(before[echo.target]);
                let at = now.duration_since(t0).as_secs_f64() * 1000.0;
                if let Some(rtt) = path(echo.target, at) {
                    replies.insert((now + rtt, echo.seq), (echo, rtt));
                }
                log.sent.push((echo.target, now, None));
            }
            let got = det.silent(now, Via::Primary);
            let want = reference_silent(&log, &deadlines, &cfg, targets, t0, now);
            prop_assert_eq!(got, want, "at {:?}", now.duration_since(t0));
            let wake = det.next_wake(Via::Primary);
            now = replies.keys().next().map_or(wake, |(t, _)| wake.min(*t));
            while let Some(entry) = replies.first_entry() {
                if entry.key().0 > now { break; }
                let (echo, rtt) = entry.remove();
                if rtt <= cfg.timeout {
                    let k = usize::try_from(echo.seq).unwrap();
                    log.sent[k].2 = Some(now);
                }
                det.reply(echo, rtt);
            }
        }
    }

    /// Whatever the path does, no target is probed more often than every
    /// suspect period nor, on the primary path, less often than its period;
    /// on the backup path it is probed exactly every period.
    #[test]
    fn probing_stays_within_its_rates(
        seed in any::<u64>(),
        loss in 0.0f64..1.0,
        jitter in 0.0f64..900.0,
        backup in any::<bool>(),
    ) {
        let via = if backup { Via::Backup } else { Via::Primary };
        let cfg = config(2);
        let t0 = Instant::now();
        let mut det = Detector::new(cfg.clone(), &addrs(2), t0);
        let log = drive(&mut det, t0, ms(30_000), via, &random_path(seed, loss, jitter));
        for target in 0..2 {
            let sends: Vec<Instant> = log.sent.iter().filter(|(t, _, _)| *t == target).map(|(_, s, _)| *s).collect();
            for pair in sends.windows(2) {
                let gap = pair[1].duration_since(pair[0]);
                prop_assert!(gap >= cfg.suspect_period.min(cfg.period), "gap {:?}", gap);
                prop_assert!(gap <= cfg.period, "gap {:?}", gap);
                if backup {
                    prop_assert_eq!(gap, cfg.period);
                }
            }
        }
    }

    /// A silent cut at any phase, after any history of loss and jitter, is
    /// detected within the worst case for the longest deadline in force.
    #[test]
    fn every_cut_is_detected_within_the_worst_case(
        seed in any::<u64>(),
        loss in 0.0f64..0.5,
        jitter in 0.0f64..300.0,
        cut_ms in 12_000u64..12_999,
        silence_ms in 100u64..4000,
    ) {
        let cfg = SilenceConfig { silence: ms(silence_ms), ..config(2) };
        let noisy = random_path(seed, loss, jitter);
        let t0 = Instant::now();
        let cut = t0 + ms(cut_ms);
        let mut det = Detector::new(cfg.clone(), &addrs(2), t0);
        // Replies still in flight at the cut are lost with it.
        let before = drive(&mut det, t0, ms(cut_ms), Via::Primary, &noisy);
        prop_assume!(!det.silent(cut, Via::Primary));
        let dead = |_: usize, _: f64| None;
        let after = drive(&mut det, cut, ms(20_000), Via::Primary, &dead);
        prop_assert!(!after.silent_at.is_empty());
        let took = after.silent_at[0].duration_since(cut);
        let bound = cfg.worst_case(2, before.max_deadline.max(after.max_deadline));
        prop_assert!(took <= bound, "{:?} > {:?}", took, bound);
    }
}
