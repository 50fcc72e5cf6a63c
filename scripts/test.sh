#!/usr/bin/env bash
# Runs the test suite against the real PostgreSQL, RabbitMQ and a scripted SMTP server.
# Each test makes its own database and queues, so tests run in parallel.
#
#   scripts/test.sh [nextest args]   the suite
#   scripts/test.sh --cluster        the RabbitMQ cluster tests: starts the 3-node
#                                    cluster of scripts/cluster.sh, runs the tests that
#                                    need it (ignored otherwise), stops it again
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# The console's browser tests drive Debian's chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ "${1:-}" = "--cluster" ]; then
  shift
  TEST_AMQP_CLUSTER_URLS=$(scripts/cluster.sh start | paste -sd, -)
  export TEST_AMQP_CLUSTER_URLS
  trap 'scripts/cluster.sh stop' EXIT
  cargo nextest run --workspace --all-targets --no-fail-fast --run-ignored ignored-only \
    -E 'test(/^cluster::/)' "$@"
  exit
fi
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
