#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (rules in deny.toml): advisories from
# the RustSec snapshot in ../shared (or S3MA_ADVISORY_DB=path/to/tarball),
# with no fetching, then licenses, bans and sources. Any finding, warnings
# included, fails. Installs cargo-deny with cargo if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
    echo "deny: installing cargo-deny $CARGO_DENY_VERSION with cargo (a few minutes, once)"
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi

# cargo-deny reads every package's manifest, for all targets; fetch them
# first so that it runs with the network off.
cargo fetch --locked --quiet

if [ -n "${S3MA_ADVISORY_DB:-}" ]; then
    [ -f "$S3MA_ADVISORY_DB" ] || { echo "deny: S3MA_ADVISORY_DB=$S3MA_ADVISORY_DB is not a file" >&2; exit 1; }
    snapshot="$S3MA_ADVISORY_DB"
else
    snapshot=""
    for candidate in "$repo/../shared/advisory-db.tar.gz" /work/shared/advisory-db.tar.gz; do
        if [ -f "$candidate" ]; then snapshot="$candidate"; break; fi
    done
fi
if [ -z "$snapshot" ]; then
    # Without a snapshot (a checkout away from ../shared, no network to
    # RustSec) the other checks still run; the advisories cannot.
    echo "deny: warning: no advisory database snapshot in ../shared or /work/shared (set S3MA_ADVISORY_DB=path/to/advisory-db.tar.gz); checking bans, licenses and sources only" >&2
    exec cargo deny --locked --offline check --deny warnings bans licenses sources
fi
command -v git >/dev/null || { echo "deny: git is needed to open the advisory snapshot" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# cargo-deny looks for the default database (RustSec's) in a folder named
# after its URL, and reads the database's date from its last git commit.
db="$tmp/advisory-dbs/advisory-db-3157b0e258782691"
mkdir -p "$db"
tar xzf "$snapshot" -C "$db" --strip-components=1
(
    cd "$db"
    git init -q
    git add -A
    git -c user.name=ci -c user.email=ci@localhost -c commit.gpgsign=false \
        commit -q --no-verify -m snapshot
)
if [ -f "$db/SNAPSHOT.txt" ]; then
    echo "deny: advisories as of $(grep -o '[0-9]\{4\}-[0-9][0-9]-[0-9][0-9]' "$db/SNAPSHOT.txt" | head -n 1) ($snapshot)"
fi

# deny.toml with db-path pointing at the snapshot.
config="$tmp/deny.toml"
awk -v db="$tmp/advisory-dbs" \
    '{ print } /^\[advisories\][[:space:]]*$/ { print "db-path = \"" db "\"" }' \
    deny.toml >"$config"
grep -q '^db-path = ' "$config" || { echo "deny: deny.toml has no [advisories] section" >&2; exit 1; }

cargo deny --locked --offline --config "$config" check --deny warnings
