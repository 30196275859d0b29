#!/usr/bin/env bash
# The whole test suite: starts LocalStack (installing it on first use), runs
# every test against it, and stops what it started, even on failure. Tests
# that need root run as root only (the ICMP and network-namespace ones fail
# otherwise: they may not skip here); missing tools are installed as root:
# nftables, iproute2, systemd-analyze, promtool (Debian's prometheus package)
# and rpm. cargo-deb and cargo-generate-rpm are installed (pinned) by
# scripts/package.sh. Extra arguments go to the test binaries.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started_localstack=0
cleanup() {
    if ((started_localstack)); then scripts/localstack.sh stop || true; fi
}
trap cleanup EXIT

# Tools the tests need; under this script a test whose tool is missing fails
# instead of skipping (tests/common/gate.rs).
missing=()
command -v nft >/dev/null || missing+=(nftables)             # random loss in e2e
command -v ip >/dev/null || missing+=(iproute2)              # network namespaces
command -v systemd-analyze >/dev/null || missing+=(systemd)  # the unit file checks
command -v promtool >/dev/null || missing+=(prometheus)      # alert rule tests
command -v rpm >/dev/null || missing+=(rpm)                  # package tests
if ((${#missing[@]})); then
    if [[ $EUID -eq 0 ]]; then
        echo "test.sh: installing ${missing[*]} for the tests" >&2
        apt-get update -qq
        # No recommends: promtool is all the tests want of prometheus.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "test.sh: missing ${missing[*]}; the tests that need them will fail (run as root to install)" >&2
    fi
fi
if [[ $EUID -ne 0 ]]; then
    echo "test.sh: not root: the ICMP and network-namespace tests will fail, not skip" >&2
fi
scripts/package.sh --tools

if ! scripts/localstack.sh status >/dev/null 2>&1; then
    scripts/localstack.sh start
    started_localstack=1
fi
# The tests find LocalStack here; they fail, not skip, when it is set but dead.
export ROUTE_FAILOVER_LOCALSTACK="http://127.0.0.1:4566"
# Never real AWS: dummy credentials, no profile files, no instance metadata
# service (169.254.169.254 is off-limits), and LocalStack as every client's
# default endpoint.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_EC2_METADATA_DISABLED=true AWS_ENDPOINT_URL="$ROUTE_FAILOVER_LOCALSTACK"
unset AWS_PROFILE AWS_SESSION_TOKEN

status=0
# Everything but the end-to-end tests...
# Not --all-targets: that would also run the benchmark simulation (bench/run.sh does).
cargo test --lib --bins --tests --no-fail-fast -- --skip e2e_ "$@" || status=$?
# ...which run one at a time (they measure latency) and print their figures.
cargo test --test e2e --test e2e_backup --test e2e_ha -- --nocapture --test-threads=1 "$@" || status=$?
exit "$status"
