#!/usr/bin/env bash
# Installs what the benchmarks need, once: ping and nftables (Debian), the
# AWS CLI for the baseline loop and matplotlib for the plot (a venv in
# bench/.venv), LocalStack (scripts/localstack.sh), and a release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
command -v ping >/dev/null || need+=(iputils-ping)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
    echo "bench/setup.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! bench/.venv/bin/python -c "import botocore, matplotlib" 2>/dev/null; then
    echo "bench/setup.sh: installing the AWS CLI and matplotlib into bench/.venv" >&2
    python3 -m venv bench/.venv
    bench/.venv/bin/pip install --quiet --disable-pip-version-check "awscli>=1.32,<2" "botocore>=1.34,<2" "matplotlib>=3.7,<4"
fi
scripts/localstack.sh install
# One build for the binary and the simulation bench: bench targets bring in
# dev-dependencies (tokio's test-util feature), and building them apart would
# compile the AWS SDK twice.
cargo build --release --quiet --bins --benches
