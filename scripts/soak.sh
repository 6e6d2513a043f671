#!/usr/bin/env bash
# Soaks `s3ma watch` in the randomized model test: many seeds, more
# operations each, on both servers. A failure prints its seed; replay one
# with S3MA_MODEL_SEED=<hex seed> ./scripts/soak.sh.
#
#   ./scripts/soak.sh [SEEDS] [OPERATIONS]     (default 50 seeds, 300 operations)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-test-env.sh
export PATH="$PWD/.ci/venv/bin:$HOME/.cargo/bin:$PATH"
export S3MA_MODEL_SEEDS="${1:-50}" S3MA_MODEL_OPS="${2:-300}"
exec cargo test --locked --test e2e model:: -- --nocapture
