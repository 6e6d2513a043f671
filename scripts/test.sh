#!/usr/bin/env bash
# Sets up the test servers if needed, then runs every test. The integration
# tests start s3s-fs and moto's server themselves on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-env.sh
export PATH="$PWD/.ci/venv/bin:$HOME/.cargo/bin:$PATH"
exec cargo test --locked "$@"
