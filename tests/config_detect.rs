//! The detector's `[probe]` keys: defaults, the silence detector's settings,
//! and precise errors (file:line: key: reason).

use std::path::Path;
use std::time::Duration;

use route_failover::config::{Config, ConfigError};
use route_failover::detect::DetectorKind;
use route_failover::probe::rtt::Deadline;

fn with_probe(extra: &str) -> String {
    format!(
        r#"
[probe]
targets = ["198.18.0.10", "198.18.0.11"]
{extra}

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/route-failover/test.toml"))
}

fn error(extra: &str) -> String {
    match parse(&with_probe(extra)) {
        Ok(c) => panic!("accepted an invalid config: {:?}", c.detect),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_round_rule_stays_the_default() {
    let c = parse(&with_probe("")).unwrap();
    assert_eq!(c.detect.kind, DetectorKind::Rounds);
}

#[test]
fn silence_defaults_to_fall_intervals_with_an_adaptive_deadline() {
    let c = parse(&with_probe(r#"detector = "silence""#)).unwrap();
    assert_eq!(c.detect.kind, DetectorKind::Silence);
    // fall 3 × interval 1 s
    assert_eq!(c.detect.silence, Duration::from_secs(3));
    assert_eq!(c.detect.suspect_interval, Duration::from_millis(25));
    assert_eq!(
        c.detect.deadline,
        Deadline::Adaptive {
            floor: Duration::from_millis(20),
            k: 4
        }
    );
    // The state machine fails over on the detector's first silent verdict.
    assert_eq!(c.detect.fsm_policy(&c.policy).fall, 1);
    assert_eq!(c.policy.fall, 3);
}

#[test]
fn every_silence_key_is_read() {
    let c = parse(&with_probe(
        r#"detector = "silence"
silence = "300ms"
suspect_interval = "40ms"
timeout_floor = "5ms"
timeout_k = 6"#,
    ))
    .unwrap();
    assert_eq!(c.detect.silence, Duration::from_millis(300));
    assert_eq!(c.detect.suspect_interval, Duration::from_millis(40));
    assert_eq!(
        c.detect.deadline,
        Deadline::Adaptive {
            floor: Duration::from_millis(5),
            k: 6
        }
    );
    let c = parse(&with_probe(
        "detector = \"silence\"\nadaptive_timeout = false",
    ))
    .unwrap();
    assert_eq!(c.detect.deadline, Deadline::Fixed);
}

#[test]
fn silence_keys_are_refused_with_the_round_rule() {
    assert_eq!(
        error(r#"silence = "2s""#),
        "/etc/route-failover/test.toml:4: probe.silence: only applies with probe.detector = \"silence\"; the round rule waits the fixed timeout"
    );
    assert!(error("timeout_k = 3")
        .starts_with("/etc/route-failover/test.toml:4: probe.timeout_k: only applies"));
}

#[test]
fn early_stop_is_refused_with_the_silence_detector() {
    assert_eq!(
        error("detector = \"silence\"\nearly_stop = false"),
        "/etc/route-failover/test.toml:5: probe.early_stop: only applies with probe.detector = \"rounds\"; the silence detector probes each target steadily"
    );
    // With the round rule, either value is taken.
    assert!(
        !parse(&with_probe("early_stop = false"))
            .unwrap()
            .probe
            .early_stop
    );
    assert!(
        parse(&with_probe("early_stop = true"))
            .unwrap()
            .probe
            .early_stop
    );
}

#[test]
fn out_of_range_values_name_the_key_and_line() {
    let e = error("detector = \"silence\"\nsuspect_interval = \"500ms\"");
    assert_eq!(
        e,
        "/etc/route-failover/test.toml:5: probe.suspect_interval: must be between 10ms and probe.interval / probe.count (333ms): suspect probing is denser than steady probing"
    );
    let e = error("detector = \"silence\"\ntimeout_floor = \"900ms\"");
    assert_eq!(
        e,
        "/etc/route-failover/test.toml:5: probe.timeout_floor: must be greater than zero and at most probe.timeout (800ms)"
    );
    let e = error("detector = \"silence\"\ntimeout_k = 0");
    assert_eq!(
        e,
        "/etc/route-failover/test.toml:5: probe.timeout_k: must be between 1 and 16"
    );
    let e = error("detector = \"silence\"\nsilence = \"5ms\"");
    assert_eq!(
        e,
        "/etc/route-failover/test.toml:5: probe.silence: must be at least 10ms"
    );
    let e = error("detector = \"loud\"");
    assert!(e.starts_with("/etc/route-failover/test.toml:4:"), "{e}");
    assert!(e.contains("rounds") && e.contains("silence"), "{e}");
}

#[test]
fn unset_detector_defaults_give_way_to_short_intervals_and_timeouts() {
    let c = parse(&with_probe(
        "detector = \"silence\"\ninterval = \"50ms\"\ntimeout = \"15ms\"\ncount = 3",
    ))
    .unwrap();
    // Steady probing every 16 ms per target: suspicion cannot be sparser.
    assert_eq!(c.detect.suspect_interval, Duration::from_nanos(16_666_666));
    assert_eq!(
        c.detect.deadline,
        Deadline::Adaptive {
            floor: Duration::from_millis(15),
            k: 4
        }
    );
    // Set explicitly, the same values are still refused with the key named.
    let e = error("detector = \"silence\"\ninterval = \"50ms\"\ntimeout = \"15ms\"\ncount = 3\nsuspect_interval = \"25ms\"");
    assert!(e.contains("probe.suspect_interval"), "{e}");
}
