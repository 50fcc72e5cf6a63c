#!/usr/bin/env bash
# Reference benchmark on this machine (see BENCHMARKS.md).
#
#   scripts/bench.sh [--count N] [--workers N] [--api N] [--cluster] [--webhook] [--mode single|batch]
#                    [--concurrency N] [--batch-size N] [--size BYTES] [--port PORT]
#                    [--no-postfix] [--out DIR]
#
# 1. postwire: builds the release binary, makes sure PostgreSQL, RabbitMQ and Postfix's
#    smtp-sink (127.0.0.1:2525) run, recreates the database postwire_bench, starts
#    --api `serve --role api` processes (ports PORT, PORT+1, ...; the load generator
#    spreads its clients over them, as a load balancer would) and --workers
#    `serve --role worker` processes (their own queue prefix), creates an API key if the
#    build has them, runs `postwire-bench` (crates/bench) against them and stops them.
#    --cluster puts the queues on the 3-node RabbitMQ cluster of scripts/cluster.sh
#    (started if needed; quorum queues) instead of the machine's single node.
#    --webhook subscribes one endpoint to message.sent (postwire-webhook-sink of
#    crates/bench, answering 204) and reports how many webhooks it got.
#    Only one run at a time (lock /tmp/postwire-bench.lock).
# 2. Postfix: the same number of equal-sized messages through a separate Postfix
#    instance (its own config, queue and data directories under $PF_ROOT) listening on
#    127.0.0.1:2526 and relaying everything to the same smtp-sink; wall time from the
#    start of smtp-source until that instance's queue is empty.
# Prints postwire's figures, Postfix's delivered/s and the ratio. Results and logs go
# to --out (default /tmp/postwire-bench/<timestamp>).
#
# Environment: POSTWIRE__* variables pass through to the postwire processes (e.g.
# POSTWIRE__WORKER__CONCURRENCY, POSTWIRE__SMTP__DEFAULT__MAX_CONNECTIONS, or
# POSTWIRE__SMTP__DEFAULT__{HOST,PORT,SECURITY} for another SMTP peer than the sink);
# CARGO_TARGET_DIR is honoured; POSTWIRE_BIN runs that binary instead of building one
# (to compare two builds); PF_ROOT (default /var/tmp/postwire-bench-postfix).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=20000 WORKERS=1 APIS=1 CLUSTER= MODE=single CONCURRENCY=64 BATCH=100 SIZE=1024
PORT=18080 POSTFIX=1 OUT= WEBHOOK= HOOK_PORT=18099
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --api) APIS=$2; shift 2 ;;
    --cluster) CLUSTER=1; shift ;;
    --webhook) WEBHOOK=1; shift ;;
    --mode) MODE=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --batch-size) BATCH=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --no-postfix) POSTFIX=; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
case "$MODE" in single|batch) ;; *) echo "bench.sh: --mode single|batch" >&2; exit 2 ;; esac

log() { printf 'bench.sh: %s\n' "$*" >&2; }

# One run at a time on this machine: runs share the database, the port and the sink.
exec 9>/tmp/postwire-bench.lock
flock -n 9 || { log "another scripts/bench.sh is running (lock /tmp/postwire-bench.lock)"; exit 1; }
OUT=${OUT:-/tmp/postwire-bench/$(date +%Y%m%d-%H%M%S)-$MODE}
mkdir -p "$OUT"
BIN=${CARGO_TARGET_DIR:-target}/release/postwire
BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/postwire-bench
DB=postwire_bench
DB_URL=postgres://postgres@127.0.0.1:5432/$DB
SINK_LOG=/tmp/postwire-smtp-sink.log   # written by scripts/services.sh --smtp-sink
PF_ROOT=${PF_ROOT:-/var/tmp/postwire-bench-postfix}
PF_PORT=2526

# Everything started here is stopped on exit, however the script ends.
PIDS=()
PF_STARTED=
stop_postwire() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
stop_postfix() {
  if [ -n "$PF_STARTED" ]; then postfix -c "$PF_ROOT/etc" stop >/dev/null 2>&1 || true; PF_STARTED=; fi
}
HOOK_PID=
cleanup() { stop_postwire; stop_postfix; [ -z "$HOOK_PID" ] || kill "$HOOK_PID" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

sink_count() { # messages smtp-sink has taken so far (its -c counter), or empty
  [ -r "$SINK_LOG" ] && tail -c 300 "$SINK_LOG" | grep -o 'mesg=[0-9]*' | tail -n1 | cut -d= -f2 || true
}
# CPU of the machine and of every process (clock ticks from /proc), to see what was
# busy during the Postfix run and before the run (postwire-bench reports its own).
cpu_snapshot() { # file
  { head -n1 /proc/stat; cat /proc/[0-9]*/stat 2>/dev/null; } >"$1"
}
cpu_report() { # before after
  awk -v cpus="$(nproc)" '
    function ticks() { # sets name and returns utime + stime of a /proc/PID/stat line
      l = index($0, "("); r = match($0, /\) [A-Za-z] /)
      name = substr($0, l + 1, r - l - 1); sub(/\/.*/, "", name)
      split(substr($0, r + 2), f, " ")
      return f[12] + f[13]
    }
    FNR == 1 { busy = 0; for (i = 2; i <= 9; i++) busy += $i; idle = $5 + $6
               if (NR == 1) { t0 = busy; i0 = idle } else { t1 = busy; i1 = idle }; next }
    NR == FNR { before[$1] = ticks(); next }
    { used = ticks() - ($1 in before ? before[$1] : 0); if (used > 0) sum[name] += used }
    END { total = t1 - t0; if (total <= 0) exit
          printf "%.0f%% of %d CPUs busy;", 100 * (total - (i1 - i0)) / total, cpus
          n = 0; for (k in sum) order[n++] = k
          for (a = 0; a < n; a++) for (b = a + 1; b < n; b++) if (sum[order[b]] > sum[order[a]]) { t = order[a]; order[a] = order[b]; order[b] = t }
          for (a = 0; a < n && a < 8; a++) printf " %s %.0f%%", order[a], 100 * sum[order[a]] * cpus / total
          printf "\n" }' "$1" "$2"
}
psql_admin() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qtAc "$1" "${2:-postgres}"; }
wait_http() { # url seconds
  for _ in $(seq 1 $(($2 * 4))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" = 200 ] && return 0
    sleep 0.25
  done
  return 1
}

# ---------------------------------------------------------------- postwire
if [ -n "${POSTWIRE_BIN:-}" ]; then
  BIN=$POSTWIRE_BIN
  log "using $BIN"
  log "building the load generator"
  cargo build --release --quiet -p postwire-bench
else
  log "building the release binaries"
  cargo build --release --quiet -p postwire -p postwire-bench
fi
scripts/services.sh --smtp-sink 9>&- # daemons it starts must not hold the lock

# What was measured, for BENCHMARKS.md.
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "args: --count $COUNT --workers $WORKERS --api $APIS ${CLUSTER:+--cluster }${WEBHOOK:+--webhook }--mode $MODE --concurrency $CONCURRENCY --batch-size $BATCH --size $SIZE"
  echo "postwire: ${POSTWIRE_BIN:-$(git rev-parse --short HEAD 2>/dev/null || echo "?")$(git status --porcelain 2>/dev/null | grep -q . && echo " + uncommitted changes")}"
  echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(free -m | awk '/^Mem:/ {print $2}') MiB"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "postgresql: $(psql_admin 'SHOW server_version')"
  echo "rabbitmq: $(rabbitmqctl version 2>/dev/null || echo '?')"
  echo "postfix: $(postconf -h mail_version 2>/dev/null || echo '?')"
  env | grep '^POSTWIRE__' | sort || true
} >"$OUT/env.txt"

# Other load on the machine makes the figures noisy; say so.
cpu_snapshot "$OUT/idle-before"; sleep 2; cpu_snapshot "$OUT/idle-after"
IDLE_CHECK=$(cpu_report "$OUT/idle-before" "$OUT/idle-after")
echo "before the run: $IDLE_CHECK" >>"$OUT/env.txt"
case "$IDLE_CHECK" in
  [0-9]%*|1[0-9]%*) ;;
  *) log "warning: the machine is busy before the run ($IDLE_CHECK); expect noisy figures" ;;
esac

log "recreating database $DB"
psql_admin "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
psql_admin "CREATE DATABASE $DB" >/dev/null
# The previous run's dirty pages are written now, not during this run.
psql_admin "CHECKPOINT" >/dev/null

# A local benchmark: the development environment (no master key needed).
export POSTWIRE_ENV=${POSTWIRE_ENV:-development}
export POSTWIRE__DATABASE__URL=$DB_URL
export POSTWIRE__AMQP__QUEUE_PREFIX="bench-$(date +%s)-$$"
export POSTWIRE__AMQP__QUEUE_EXPIRES=10m
export POSTWIRE__SERVER__PORT=$PORT
export POSTWIRE__SMTP__DEFAULT__HOST=${POSTWIRE__SMTP__DEFAULT__HOST:-127.0.0.1}
export POSTWIRE__SMTP__DEFAULT__PORT=${POSTWIRE__SMTP__DEFAULT__PORT:-2525}
export POSTWIRE__LOG__LEVEL=${POSTWIRE__LOG__LEVEL:-warn}
unset RUST_LOG
if [ -n "$WEBHOOK" ]; then
  # The receiver is local: postwire must be allowed to post to it over http.
  export POSTWIRE__WEBHOOKS__ALLOW_HTTP=true POSTWIRE__WEBHOOKS__ALLOW_PRIVATE_TARGETS=true
  "${CARGO_TARGET_DIR:-target}/release/postwire-webhook-sink" "127.0.0.1:$HOOK_PORT" \
    --count-file "$OUT/webhooks.count" 9>&- &
  HOOK_PID=$!
fi
if [ -n "$CLUSTER" ]; then
  log "starting the RabbitMQ cluster (scripts/cluster.sh)"
  POSTWIRE__AMQP__URLS=$(scripts/cluster.sh start 9>&- | paste -sd, -)
  export POSTWIRE__AMQP__URLS
  echo "rabbitmq cluster: $POSTWIRE__AMQP__URLS" >>"$OUT/env.txt"
fi

API_ARGS=()
for i in $(seq 0 $((APIS - 1))); do
  port=$((PORT + i))
  if curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; then
    log "something already listens on port $port; pass --port"; exit 1
  fi
  # The first one migrates; the others wait for it.
  migrate=false; [ "$i" = 0 ] && migrate=true
  POSTWIRE__DATABASE__MIGRATE_ON_START=$migrate POSTWIRE__SERVER__PORT=$port \
    "$BIN" serve --role api >"$OUT/api-$((i + 1)).log" 2>&1 9>&- &
  PIDS+=("$!")
  API_ARGS+=(--url "http://127.0.0.1:$port" --api-pid "$!")
  wait_http "http://127.0.0.1:$port/readyz" 60 || { log "API $((i + 1)) did not become ready; see $OUT/api-$((i + 1)).log"; exit 1; }
done
WORKER_ARGS=()
for i in $(seq 1 "$WORKERS"); do
  POSTWIRE__DATABASE__MIGRATE_ON_START=false "$BIN" serve --role worker >"$OUT/worker-$i.log" 2>&1 9>&- &
  PIDS+=("$!")
  WORKER_ARGS+=(--worker-pid "$!")
done
# A worker registers in the workers table once it consumes.
for _ in $(seq 1 120); do
  [ "$(psql_admin "SELECT count(*) FROM workers" "$DB")" -ge "$WORKERS" ] && break
  sleep 0.25
done
log "api pids ${PIDS[*]:0:$APIS}, worker pids ${PIDS[*]:$APIS}"
# An API key for the run (the database is recreated each run, so it dies with it);
# builds without API keys get none.
AUTH=()
if "$BIN" keys --help >/dev/null 2>&1; then
  API_KEY=$("$BIN" keys create --name bench --scopes send,read 2>>"$OUT/api-1.log")
  AUTH=(--api-key "$API_KEY")
fi

if [ -n "$WEBHOOK" ]; then
  ADMIN_KEY=$("$BIN" keys create --name bench-admin --scopes admin 2>>"$OUT/api-1.log")
  curl -fsS -o /dev/null -H 'Content-Type: application/json' -H "Authorization: Bearer $ADMIN_KEY" \
    -d "{\"url\": \"http://127.0.0.1:$HOOK_PORT/hook\", \"events\": [\"message.sent\"]}" \
    "http://127.0.0.1:$PORT/v1/webhooks" || { log "could not subscribe the webhook receiver"; exit 1; }
fi

if [ "$MODE" = batch ]; then
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    -H "Authorization: Bearer ${API_KEY:-}" \
    -d '{"messages": []}' "http://127.0.0.1:$PORT/v1/messages/batch" || true)
  if [ "$code" = 404 ] || [ "$code" = 405 ]; then
    log "POST /v1/messages/batch answers $code: no batch endpoint in this build; skipping batch mode"
    exit 3
  fi
fi

SINK_BEFORE=$(sink_count)
log "postwire-bench: $COUNT messages, $MODE mode, $CONCURRENCY clients, $APIS API(s), $WORKERS worker(s)${CLUSTER:+, RabbitMQ cluster}"
"$BENCH_BIN" --database-url "$DB_URL" --mode "$MODE" \
  --count "$COUNT" --concurrency "$CONCURRENCY" --batch-size "$BATCH" --size "$SIZE" \
  "${AUTH[@]}" "${API_ARGS[@]}" "${WORKER_ARGS[@]}" --json-out "$OUT/postwire.json" | tee "$OUT/postwire.txt"
if [ -n "$WEBHOOK" ]; then
  # The webhooks lag the deliveries a little: wait until the backlog is gone.
  for _ in $(seq 1 600); do
    [ "$(psql_admin "SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'" "$DB")" = 0 ] && break
    sleep 0.5
  done
  log "webhooks: $(psql_admin "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'" "$DB") delivered, receiver counted $(sleep 1.2; cat "$OUT/webhooks.count" 2>/dev/null || echo '?')"
  log "webhooks: the last delivered $(psql_admin "SELECT round(extract(epoch FROM max(delivered_at) - (SELECT min(created_at) FROM messages))::numeric, 2) FROM webhook_deliveries" "$DB") s after the first message was accepted, the last message sent after $(psql_admin "SELECT round(extract(epoch FROM max(sent_at) - min(created_at))::numeric, 2) FROM messages" "$DB") s"
fi
stop_postwire
SINK_AFTER=$(sink_count)
[ -n "$SINK_BEFORE" ] && [ -n "$SINK_AFTER" ] &&
  log "smtp-sink counted $((SINK_AFTER - SINK_BEFORE)) messages during the postwire run"
PW_RATE=$(jq -r '.delivery.delivered_per_sec' "$OUT/postwire.json")

# ---------------------------------------------------------------- Postfix
if [ -z "$POSTFIX" ]; then log "results in $OUT"; exit 0; fi
if ! command -v postfix >/dev/null || ! command -v smtp-source >/dev/null; then
  log "installing postfix"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi

# A separate instance: its own main.cf/master.cf, queue and data directories; the
# system instance's configuration is not touched.
log "configuring a Postfix relay on 127.0.0.1:$PF_PORT -> [127.0.0.1]:2525 in $PF_ROOT"
postfix -c "$PF_ROOT/etc" stop >/dev/null 2>&1 || true
rm -rf "$PF_ROOT/queue"
mkdir -p "$PF_ROOT/etc" "$PF_ROOT/queue" "$PF_ROOT/data"
cat >"$PF_ROOT/etc/main.cf" <<EOF
# Written by scripts/bench.sh: a relay-only Postfix for the comparison run.
compatibility_level = 3.6
queue_directory = $PF_ROOT/queue
data_directory = $PF_ROOT/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = $PF_ROOT/maillog
myhostname = bench.localdomain
mydestination =
local_recipient_maps =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:2525
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
default_process_limit = 200
smtpd_client_connection_count_limit = 0
default_destination_concurrency_limit = 64
smtp_destination_concurrency_limit = 64
initial_destination_concurrency = 64
EOF
# The system master.cf without chroot (the jail would lack the new queue directory's
# files), smtpd on the benchmark port instead of 25.
awk -v port="$PF_PORT" '
  /^smtp[ \t]+inet/ { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
  /^[a-z0-9]/ && NF >= 8 && $5 == "y" { $5 = "n" }
  /^[a-z0-9]/ && NF >= 8 && $5 == "-" { $5 = "n" }
  { print }' /etc/postfix/master.cf >"$PF_ROOT/etc/master.cf"
chown postfix "$PF_ROOT/data"
postfix -c "$PF_ROOT/etc" check
if ! postfix -c "$PF_ROOT/etc" start >/dev/null 2>&1 9>&-; then
  log "Postfix did not start:"; tail -n 5 "$PF_ROOT/maillog" >&2; exit 1
fi
PF_STARTED=1
for _ in $(seq 1 40); do (exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null && break; sleep 0.25; done

queued() { find "$PF_ROOT/queue/maildrop" "$PF_ROOT/queue/incoming" "$PF_ROOT/queue/active" \
  "$PF_ROOT/queue/deferred" "$PF_ROOT/queue/hold" -type f 2>/dev/null | wc -l; }
SESSIONS=$(( CONCURRENCY > 100 ? 100 : CONCURRENCY ))
SINK_BEFORE=$(sink_count)
log "smtp-source: $COUNT messages of $SIZE bytes over $SESSIONS sessions"
cpu_snapshot "$OUT/cpu-before"
T0=$(date +%s.%N)
smtp-source -d -s "$SESSIONS" -m "$COUNT" -l "$SIZE" -t bench@example.com -f sender@example.com \
  "127.0.0.1:$PF_PORT"
T1=$(date +%s.%N)
DEADLINE=$(( $(date +%s) + 600 ))
while [ "$(queued)" -gt 0 ]; do
  [ "$(date +%s)" -lt "$DEADLINE" ] || { log "Postfix queue not empty after 10 minutes"; break; }
  sleep 0.05
done
T2=$(date +%s.%N)
cpu_snapshot "$OUT/cpu-after"
PF_CPU=$(cpu_report "$OUT/cpu-before" "$OUT/cpu-after")
LEFT=$(queued)
sleep 0.5 # let smtp-sink write its counter
SINK_AFTER=$(sink_count)
SINK_GOT=
[ -n "$SINK_BEFORE" ] && [ -n "$SINK_AFTER" ] && SINK_GOT=$((SINK_AFTER - SINK_BEFORE))
stop_postfix

read -r PF_RATE PF_SECS PF_INJECT_RATE RATIO < <(awk -v n="$COUNT" -v left="$LEFT" \
  -v t0="$T0" -v t1="$T1" -v t2="$T2" -v pw="$PW_RATE" 'BEGIN {
    s = t2 - t0; r = (n - left) / s; printf "%.0f %.2f %.0f %.2f\n", r, s, n / (t1 - t0), pw / r }')
cat >"$OUT/postfix.json" <<EOF
{"count": $COUNT, "size": $SIZE, "sessions": $SESSIONS, "seconds": $PF_SECS,
 "delivered_per_sec": $PF_RATE, "accepted_per_sec": $PF_INJECT_RATE, "left_in_queue": $LEFT,
 "sink_received": ${SINK_GOT:-null}, "cpu": "$PF_CPU"}
EOF
echo
echo "Postfix relay: $COUNT messages ($SIZE-byte bodies, $SESSIONS sessions) delivered to the sink in ${PF_SECS}s = $PF_RATE delivered/s (injected at $PF_INJECT_RATE/s; sink counted ${SINK_GOT:-?}; left in queue $LEFT)"
echo "  CPU during the Postfix run: $PF_CPU"
echo "postwire ($MODE, $WORKERS worker(s)): $(printf '%.0f' "$PW_RATE") delivered/s; ratio postwire/postfix = $RATIO"
log "results in $OUT"
