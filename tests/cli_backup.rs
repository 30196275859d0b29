//! `check` and `status` show the backup path and each failback guard
//! (memory backend: no AWS, no network).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_route-failover"))
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn config(backup: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            r#"
[aws]
backend = "memory"
[probe]
targets = ["198.18.0.10"]
{backup}
[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
        ),
    )
    .unwrap();
    file
}

#[test]
fn check_shows_the_backup_path_the_eni_state_and_each_guard() {
    let cfg = config("[backup]\ntargets = [\"198.19.0.1\"]\nsource = \"10.0.2.5\"\nrise = 2");
    let (ok, out) = run(&["check", "--config", cfg.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("✓ backup: probing 198.19.0.1 over the VPN from 10.0.2.5")
            && out.contains("up after 2; a backup known down holds the failover"),
        "{out}"
    );
    assert!(
        out.contains("✓ network interface eni-0123456789abcdef0 exists, in-use and attached"),
        "{out}"
    );
    assert!(
        out.contains("✓ failback guard: 10.1.0.0/16 in rtb-0123456789abcdef0 has a DX route"),
        "{out}"
    );

    let cfg = config("");
    let (ok, out) = run(&["check", "--config", cfg.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("! no [backup] section"), "{out}");
}

#[test]
fn status_shows_the_dx_route_per_managed_route_and_the_appliance() {
    let cfg = config("[backup]\nrequired = false");
    let (ok, out) = run(&["status", "--config", cfg.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("rtb-0123456789abcdef0"))
        .expect("the route's row");
    assert!(row.contains(" yes "), "{out}");
    assert!(out.contains("failback guard: on"), "{out}");
    assert!(
        out.contains("backup path: the appliance ENI check alone"),
        "{out}"
    );
    assert!(out.contains("appliance ENIs: ok"), "{out}");
}
