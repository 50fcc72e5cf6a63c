#!/usr/bin/env bash
# Starts postwire for local development: PostgreSQL, RabbitMQ and an SMTP sink on
# 127.0.0.1:2525 (see config/development.toml), then the API and a worker in one
# process on http://127.0.0.1:8080. Pass extra arguments to `postwire serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh --smtp-sink
exec cargo run --release --bin postwire -- serve "$@"
