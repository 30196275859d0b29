#!/usr/bin/env bash
# Builds the .deb and the .rpm (metadata in Cargo.toml) into target/package/.
#
#   scripts/package.sh                  release build, then both packages
#   scripts/package.sh --dev            from the debug binary the test suite
#                                       already built: no build, fast compression
#   scripts/package.sh --binary PATH    package that binary (no build)
#   scripts/package.sh --out DIR        write the packages into DIR
#   scripts/package.sh --tools          only install the packaging tools
#
# cargo-deb and cargo-generate-rpm are installed (pinned versions, with
# `cargo install --locked`) when missing. The man pages and the bash, zsh and
# fish completions come from the binary itself (`route-failover man DIR`,
# `route-failover completions SHELL`), so they always match its CLI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

profile=release
bin=
out=target/package
tools_only=0
while (($#)); do
    case $1 in
        --dev) profile=dev ;;
        --binary) bin=$2; shift ;;
        --out) out=$2; shift ;;
        --tools) tools_only=1 ;;
        *) echo "usage: $0 [--dev] [--binary PATH] [--out DIR] [--tools]" >&2; exit 2 ;;
    esac
    shift
done

# Installs crate $1 at version $2 unless `cargo $3 --version` already says it.
ensure_tool() {
    local crate=$1 version=$2 subcommand=$3
    if cargo "$subcommand" --version 2>/dev/null | grep -qF "$version"; then return; fi
    echo "package.sh: installing $crate $version" >&2
    cargo install --quiet --locked --version "$version" "$crate"
}
ensure_tool cargo-deb "$CARGO_DEB_VERSION" deb
ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" generate-rpm
if ((tools_only)); then exit 0; fi

target_dir=${CARGO_TARGET_DIR:-target}
if [[ $profile == release ]]; then
    if [[ -z $bin ]]; then
        cargo build --release --locked
        bin=$target_dir/release/route-failover
    fi
    deb_flags=()
    rpm_flags=()
else
    bin=${bin:-$target_dir/debug/route-failover}
    # A test package: gzip is many times faster than xz (deb) and zstd's
    # default level (rpm): about 2 s instead of 30 s of CPU for both.
    deb_flags=(--fast)
    rpm_flags=(--payload-compress gzip)
fi
if [[ ! -x $bin ]]; then
    echo "package.sh: $bin is missing; run cargo build (or cargo test) first" >&2
    exit 1
fi

# Files generated for both packages; Cargo.toml's assets name them here.
assets=target/package-assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$out"
"$bin" man "$assets/man"
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/route-failover.bash"
"$bin" completions zsh >"$assets/completions/_route-failover"
"$bin" completions fish >"$assets/completions/route-failover.fish"

# Both tools take the binary from <target dir>/release/. Stage a stripped
# copy there, so a debug build packages the same way without touching
# target/release (cargo-deb deprecates packaging the dev profile itself).
stage=target/package-stage
mkdir -p "$stage/release"
strip -o "$stage/release/route-failover" "$bin"

CARGO_TARGET_DIR=$stage cargo deb --no-build --output "$out" "${deb_flags[@]}"
cargo generate-rpm --target-dir "$stage" --output "$out" "${rpm_flags[@]}"
ls -l "$out"/*.deb "$out"/*.rpm
