#!/usr/bin/env bash
# Makes sure what postwire needs on this machine is installed and running:
# PostgreSQL and RabbitMQ (and, with --smtp-sink, Postfix's smtp-sink on 127.0.0.1:2525).
# Safe to run again: it only starts or installs what is missing.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  for _ in $(seq 1 "$3"); do port_open "$1" && return 0; sleep 1; done
  log "$2 did not come up on port $1"; return 1
}

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || { log "cannot install $*: no apt-get here"; return 1; }
  if [ -z "$APT_UPDATED" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"; apt_install postgresql
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
  wait_port 5432 PostgreSQL 60
fi

# RabbitMQ
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || { log "installing RabbitMQ"; apt_install rabbitmq-server; }
  log "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_port 5672 RabbitMQ 90
fi

# The development database (tests create their own).
psql_admin() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtAc "$1" postgres; }
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = 'postwire'")" != "1" ]; then
  log "creating database postwire"; psql_admin "CREATE DATABASE postwire" >/dev/null
fi

# A local SMTP sink for development and the benchmark.
if [ "${1:-}" = "--smtp-sink" ] && ! port_open 2525; then
  command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || { log "installing postfix (for smtp-sink)"; apt_install postfix; }
  log "starting smtp-sink on 127.0.0.1:2525"
  # -u: the user to run as when started as root; -c: count deliveries.
  nohup smtp-sink -u "${SMTP_SINK_USER:-nobody}" -c 127.0.0.1:2525 1000 >/tmp/postwire-smtp-sink.log 2>&1 &
  wait_port 2525 smtp-sink 10
fi
log "PostgreSQL and RabbitMQ are up"
