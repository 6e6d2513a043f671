#!/usr/bin/env bash
# Sets up the test servers if needed, then runs every test. The integration
# tests start s3s-fs and moto's server themselves on free ports. Tests that
# lower a machine-wide limit are ignored in the main run and run alone after it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-env.sh
export PATH="$PWD/.ci/venv/bin:$HOME/.cargo/bin:$PATH"
cargo test --locked "$@"
# Tests that change machine-wide settings, one at a time, after the rest.
if [ "$#" -eq 0 ]; then
    cargo test --locked --test e2e -- --ignored --test-threads 1
fi
