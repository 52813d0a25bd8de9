#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
# Starts or reuses Postgres and Redis, then checks formatting and lints and runs every suite:
# domain and service unit tests, the contract suites against every backend, the HTTP acceptance
# suites, and the integration suite (fleet and demo against real Postgres and Redis), then a short
# chaos run.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/services.sh)"
echo "test: postgres=$RIDES_TEST_POSTGRES_URL redis=$RIDES_TEST_REDIS_URL kafka=$RIDES_TEST_KAFKA_BROKERS" >&2

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo test --workspace --all-features --no-fail-fast
# The chaos run, short (README "The chaos run"): 20 000 rides per backend pair under SIGKILLs
# and hard restarts of Postgres and Redis, then the verdict and the ledger, key by key.
scripts/chaos.sh --rides 20000 --bin target/debug/rides
