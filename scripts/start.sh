#!/usr/bin/env bash
# Starts postwire for local development: PostgreSQL, RabbitMQ and an SMTP sink on
# 127.0.0.1:2525 (see config/development.toml), then the API and a worker in one
# process on http://127.0.0.1:8080. Pass extra arguments to `postwire serve`.
# It runs the development environment (config/development.toml, and a public
# development master key); without POSTWIRE_ENV postwire runs as production and
# requires security.master_key.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh --smtp-sink
export POSTWIRE_ENV=${POSTWIRE_ENV:-development}
exec cargo run --release --bin postwire -- serve "$@"
