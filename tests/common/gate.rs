//! Prerequisites of tests that need LocalStack, root or an outside tool.
//!
//! Under `scripts/test.sh` or CI (`ROUTE_FAILOVER_LOCALSTACK` or `CI` set) a
//! missing prerequisite fails the test, so that a broken setup cannot pass
//! as green. Anywhere else the test prints `SKIPPED <test>: <why>` and
//! returns early.

#![allow(dead_code)] // shared by several test crates; each uses part of it

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Whether a missing prerequisite must fail the test instead of skipping it.
pub fn strict() -> Option<&'static str> {
    ["ROUTE_FAILOVER_LOCALSTACK", "CI"]
        .into_iter()
        .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

/// Fails the test (strict) or prints SKIPPED; returns false in the latter case.
fn missing(test: &str, why: &str, fix: &str) -> bool {
    if let Some(var) = strict() {
        panic!("{test}: {why}; {var} is set, so this test may not be skipped: {fix}");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// True when running as root (ICMP sockets, network namespaces).
pub fn require_root(test: &str, why: &str) -> bool {
    is_root()
        || missing(
            test,
            &format!("needs root: {why}"),
            "run scripts/test.sh as root",
        )
}

/// True when `tool` is on the PATH.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file()))
    });
    found
        || missing(
            test,
            &format!("{tool} is not installed"),
            "scripts/test.sh installs it when run as root",
        )
}

/// The LocalStack endpoint on loopback, checked to answer, or `None` (with
/// SKIPPED) when the suite was not started by `scripts/test.sh`.
pub fn require_localstack(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("ROUTE_FAILOVER_LOCALSTACK") else {
        missing(
            test,
            "ROUTE_FAILOVER_LOCALSTACK is not set",
            "run the suite with scripts/test.sh",
        );
        return None;
    };
    // The agent's own client resolves credentials through the standard
    // chain. Without these, that chain would fall through to the instance
    // metadata service, an address tests must never touch.
    for (var, want) in [
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ] {
        let got = std::env::var(var).ok();
        assert_eq!(
            got.as_deref(),
            Some(want),
            "{test}: {var} must be {want:?} for LocalStack tests: run scripts/test.sh"
        );
    }
    let addr = loopback_addr(&url)
        .unwrap_or_else(|| panic!("{test}: LocalStack must be on loopback, not {url}"));
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        panic!("{test}: LocalStack at {url} does not answer ({e}): start it with scripts/test.sh");
    }
    Some(url)
}

/// The socket address of an `http://` URL, if it is on loopback.
fn loopback_addr(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_string()
    };
    let addrs: Vec<SocketAddr> = with_port.to_socket_addrs().ok()?.collect();
    // Every address the name resolves to must be loopback ("localhost").
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        return None;
    }
    addrs.first().copied()
}
