#!/usr/bin/env bash
# Runs the test suite against the real PostgreSQL, RabbitMQ and a scripted SMTP server.
# Each test makes its own database and queues, so tests run in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# Databases left by earlier runs (tests cannot drop theirs: the app still holds it).
psql -h 127.0.0.1 -U postgres -qtAc \
  "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\" WITH (FORCE);' FROM pg_database WHERE datname LIKE 'postwire_test_%'" postgres \
  | psql -h 127.0.0.1 -U postgres -q postgres >/dev/null
# cargo-nextest (part of this machine's toolchain) runs the test binaries side by
# side, so the long fault tests (minutes of outage) overlap the rest; plain cargo test
# runs them one after another.
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
fi
exec cargo test --workspace --all-targets "$@"
