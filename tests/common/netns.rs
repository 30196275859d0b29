//! A probe target inside a network namespace this test creates: a veth pair
//! from the root namespace, 198.18.N.2 and fd00:ee:N::2 on the far side.
//! Nothing here can reach beyond the machine: `unreachable` routes for the
//! test prefixes sit under the veth's own routes, so a cut link fails sends
//! at once instead of falling through to the default route.

#![allow(dead_code)] // shared by several test crates; each uses part of it

use std::process::Command;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    run(args).unwrap_or_else(|e| panic!("{e}"));
}

/// `must`, inside namespace `ns`.
fn must_in(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    must(&all);
}

/// The namespace, its veth pair and the root-namespace routes; all removed on drop.
pub struct TargetNet {
    pub ns: String,
    pub host_if: String,
    pub v4_prefix: String,
    pub v6_prefix: String,
    pub target_v4: String,
    pub target_v6: String,
}

impl TargetNet {
    /// `n` (1..=250) must be unique among tests that may run at once.
    pub fn create(n: u8) -> Self {
        let net = Self {
            ns: format!("rf-e2e-{n}"),
            host_if: format!("rfh{n}"),
            v4_prefix: format!("198.18.{n}.0/24"),
            v6_prefix: format!("fd00:ee:{n}::/64"),
            target_v4: format!("198.18.{n}.2"),
            target_v6: format!("fd00:ee:{n}::2"),
        };
        net.remove(); // leftovers of a run that was killed
        let ns_if = format!("rft{n}");
        let (ns, host_if) = (net.ns.as_str(), net.host_if.as_str());
        let metric = ["metric", "4000"];
        must(
            &[
                &["ip", "route", "add", "unreachable", &net.v4_prefix][..],
                &metric,
            ]
            .concat(),
        );
        must(
            &[
                &["ip", "-6", "route", "add", "unreachable", &net.v6_prefix][..],
                &metric,
            ]
            .concat(),
        );
        must(&["ip", "netns", "add", ns]);
        must(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        must(&["ip", "link", "set", &ns_if, "netns", ns]);
        // Keep IPv6 addresses across link flaps, like a real interface's config.
        let keep = |dev: &str| format!("net.ipv6.conf.{dev}.keep_addr_on_down=1");
        must(&["sysctl", "-qw", &keep(host_if)]);
        must_in(ns, &["sysctl", "-qw", &keep(&ns_if)]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{n}.1/24"),
            "dev",
            host_if,
        ]);
        must(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fd00:ee:{n}::1/64"),
            "dev",
            host_if,
            "nodad",
        ]);
        must(&["ip", "link", "set", host_if, "up"]);
        must_in(
            ns,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/24", net.target_v4),
                "dev",
                &ns_if,
            ],
        );
        must_in(
            ns,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{}/64", net.target_v6),
                "dev",
                &ns_if,
                "nodad",
            ],
        );
        must_in(ns, &["ip", "link", "set", &ns_if, "up"]);
        must_in(ns, &["ip", "link", "set", "lo", "up"]);
        net
    }

    /// Administratively downs the host side: sends fail at once with "unreachable".
    pub fn link(&self, up: bool) {
        must(&[
            "ip",
            "link",
            "set",
            &self.host_if,
            if up { "up" } else { "down" },
        ]);
    }

    /// A silent blackhole, like a real DX failure: the target stops answering.
    pub fn blackhole(&self, on: bool) {
        let v = u8::from(on);
        let v4 = format!("net.ipv4.icmp_echo_ignore_all={v}");
        let v6 = format!("net.ipv6.icmp.echo_ignore_all={v}");
        must_in(&self.ns, &["sysctl", "-qw", &v4, &v6]);
    }

    /// Drops `percent` % of ICMP arriving in the target namespace at random, or stops.
    pub fn random_loss(&self, percent: Option<u8>) {
        let _ = run(&[
            "ip", "netns", "exec", &self.ns, "nft", "delete", "table", "inet", "rfloss",
        ]);
        if let Some(p) = percent {
            let rules = format!(
                "table inet rfloss {{ chain input {{ type filter hook input priority 0; policy accept; \
                 meta l4proto {{ icmp, ipv6-icmp }} numgen random mod 100 < {p} drop; }}; }}"
            );
            must_in(&self.ns, &["nft", &rules]);
        }
    }

    /// Drops every other IPv4 echo request arriving in the namespace
    /// (the first, the third, ...), or stops doing so: loss without chance.
    pub fn drop_every_other_v4_echo(&self, on: bool) {
        let _ = run(&[
            "ip", "netns", "exec", &self.ns, "nft", "delete", "table", "inet", "rfalt",
        ]);
        if on {
            must_in(
                &self.ns,
                &[
                    "nft",
                    "table inet rfalt { chain input { type filter hook input priority 0; policy accept; \
                     icmp type echo-request numgen inc mod 2 == 0 drop; }; }",
                ],
            );
        }
    }

    fn remove(&self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = run(&["ip", "netns", "del", &self.ns]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
        let _ = run(&[
            "ip",
            "route",
            "del",
            "unreachable",
            &self.v4_prefix,
            "metric",
            "4000",
        ]);
        let _ = run(&[
            "ip",
            "-6",
            "route",
            "del",
            "unreachable",
            &self.v6_prefix,
            "metric",
            "4000",
        ]);
    }
}

impl Drop for TargetNet {
    fn drop(&mut self) {
        self.remove();
    }
}
