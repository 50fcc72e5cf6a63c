#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on this machine, for the cluster tests and the benchmark.
# It runs next to the machine's default node (AMQP 5672, see scripts/services.sh) and
# leaves that one alone: own node names, ports, config, plugins file, data and logs.
#
#   scripts/cluster.sh start [N]    start nodes 1..3 (or only node N), cluster them,
#                                   wait until all are running; prints the AMQP URLs
#   scripts/cluster.sh stop [N]     stop all nodes (or node N) cleanly and wait
#   scripts/cluster.sh kill N       SIGKILL node N's Erlang VM (simulates a crash)
#   scripts/cluster.sh restart N    (re)start node N and wait until it has rejoined
#   scripts/cluster.sh status       each node's state, then the cluster status
#   scripts/cluster.sh urls         the AMQP URLs, one per line
#   scripts/cluster.sh leader QUEUE the number of the node leading quorum queue QUEUE
#   scripts/cluster.sh reset        stop all nodes and delete their data and logs
#
# Node N (1..3): postwire-N@localhost, AMQP 127.0.0.1:568N, Erlang distribution
# 127.0.0.1:2568N, no plugins, data and logs in $POSTWIRE_CLUSTER_DIR/nodeN.
# URLs: amqp://guest:guest@127.0.0.1:568N/%2f (guest may log in from loopback only).
#
# Environment: POSTWIRE_CLUSTER_DIR (default /tmp/postwire-rabbit-cluster; with Debian's
# package the nodes run as the rabbitmq user, which must be able to reach it),
# POSTWIRE_CLUSTER_MEMORY (memory high watermark per node, default 1GB),
# POSTWIRE_CLUSTER_TIMEOUT (seconds to wait for a node or the cluster, default 120).
set -euo pipefail

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
usage() { sed -n '6,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-0}"; }

NODES=(1 2 3)
ROOT=${POSTWIRE_CLUSTER_DIR:-/tmp/postwire-rabbit-cluster}
MEMORY=${POSTWIRE_CLUSTER_MEMORY:-1GB}
TIMEOUT=${POSTWIRE_CLUSTER_TIMEOUT:-120}
# Short node names need a host part that resolves to this machine; `localhost` does
# everywhere (the machine's hostname may not be in /etc/hosts).
HOST=localhost

node_name() { echo "postwire-$1@$HOST"; }
amqp_port() { echo $((5680 + $1)); }
dist_port() { echo $((25680 + $1)); }
node_dir() { echo "$ROOT/node$1"; }
pid_file() { echo "$ROOT/node$1/rabbitmq.pid"; }
url() { echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$1")/%2f"; }
urls() { for n in "${NODES[@]}"; do url "$n"; done; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_node_arg() {
  case "${1:-}" in 1|2|3) ;; *) log "expected a node number 1..3, got '${1:-}'"; usage 2 ;; esac
}

# rabbitmqctl against node N. -q: no "Status of node ..." banner lines.
ctl() { local n=$1; shift; rabbitmqctl -q -n "$(node_name "$n")" "$@"; }

# The OS pid of node N's Erlang VM, if it runs. RabbitMQ 3.10 sets the node name at
# boot, not on the command line, so `pgrep -f postwire-N@...` finds nothing; each
# node gets a marker argument (-postwire_cluster_node, ignored by Erlang) instead.
# Found this way rather than by the pid file, which a killed node leaves behind.
node_pid() {
  { pgrep -f "beam.smp.* -postwire_cluster_node $(node_name "$1")( |$)" || true; } | head -n1
}

APT_UPDATED=
apt_install() {
  command -v apt-get >/dev/null || { log "cannot install $*: no apt-get here"; return 1; }
  if [ -z "$APT_UPDATED" ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_installed() {
  command -v rabbitmq-server >/dev/null && return 0
  log "installing RabbitMQ"; apt_install rabbitmq-server
}

# Node N's directory and config, rewritten on every start so edits here apply.
prepare_node() {
  local n=$1 dir; dir=$(node_dir "$n")
  mkdir -p "$dir/mnesia" "$dir/log"
  # An empty plugin list: no management UI (saves memory and ports 1567x).
  printf '[].\n' >"$ROOT/enabled_plugins"
  cat >"$dir/rabbitmq.conf" <<EOF
# Written by scripts/cluster.sh; changes are overwritten on the next start.
# Loopback only, like the default node.
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
# Three of these next to the default node (which takes 40% of RAM) must fit on a
# small machine; the cluster holds test and benchmark queues only.
vm_memory_high_watermark.absolute = $MEMORY
# Low enough that a nearly full /tmp does not block publishers in a test.
disk_free_limit.absolute = 50MB
cluster_name = postwire
log.console = false
log.file.level = info
EOF
  # The Debian package runs the node as the rabbitmq user (its rabbitmq-server wrapper
  # su's to it when started as root), so that user must own the node's files. It also
  # shares that user's ~/.erlang.cookie with the default node and rabbitmqctl.
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    chown -R rabbitmq:rabbitmq "$ROOT"
  fi
}

start_node() {
  local n=$1 dir; dir=$(node_dir "$n")
  if [ -n "$(node_pid "$n")" ]; then log "$(node_name "$n") is already running"; return 0; fi
  port_open "$(amqp_port "$n")" && die "port $(amqp_port "$n") is taken by something else"
  prepare_node "$n"
  # A killed node leaves its pid file behind; `rabbitmqctl wait` would follow it.
  rm -f "$(pid_file "$n")"
  log "starting $(node_name "$n") (AMQP $(amqp_port "$n"))"
  (
    cd "$dir"
    # Everything per node, so nothing is shared with the default node except epmd
    # and the cookie. RABBITMQ_CONF_ENV_FILE points at a file that does not exist:
    # /etc/rabbitmq/rabbitmq-env.conf may set the default node's NODENAME etc.
    RABBITMQ_NODENAME=$(node_name "$n") RABBITMQ_DIST_PORT=$(dist_port "$n")
    export RABBITMQ_NODENAME RABBITMQ_DIST_PORT
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_CONFIG_FILES="$dir/conf.d/*.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$ROOT/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/rabbitmq.pid"
    export ERL_CRASH_DUMP="$dir/erl_crash.dump"
    # Should this node start epmd, it listens on loopback only.
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -postwire_cluster_node $RABBITMQ_NODENAME"
    rabbitmq-server -detached >"$dir/log/startup.log" 2>&1
  ) || die "$(node_name "$n") failed to start, see $dir/log/"
}

# Waits until node N's VM is up and RabbitMQ has booted on it.
await_node() {
  local n=$1
  if ! ctl "$n" wait "$(pid_file "$n")" --timeout "$TIMEOUT" >/dev/null; then
    die "$(node_name "$n") did not boot within ${TIMEOUT}s, see $(node_dir "$n")/log/"
  fi
}

# The nodes that node N's cluster_status lists under the given key (running_nodes,
# disk_nodes), one per line.
status_nodes() {
  ctl "$1" cluster_status --formatter json 2>/dev/null \
    | grep -o "\"$2\":\[[^]]*\]" | grep -o 'postwire-[0-9]*@[^"]*' || true
}

# Waits until node $1 sees all of the given nodes running.
await_running() {
  local via=$1 n running missing; shift
  for _ in $(seq 1 "$TIMEOUT"); do
    running=$(status_nodes "$via" running_nodes) missing=
    for n in "$@"; do grep -qx "$(node_name "$n")" <<<"$running" || missing+=" $(node_name "$n")"; done
    [ -z "$missing" ] && return 0
    sleep 1
  done
  die "not running in the cluster after ${TIMEOUT}s:$missing"
}

# Node N (2 or 3) joins node 1's cluster unless it already is a member. A node that
# was a member keeps that in its data directory and rejoins by itself on restart.
join_node() {
  local n=$1
  status_nodes "$n" disk_nodes | grep -qx "$(node_name 1)" && return 0
  [ -n "$(node_pid 1)" ] || die "$(node_name "$n") is not in the cluster yet and $(node_name 1) is not running (scripts/cluster.sh start)"
  log "$(node_name "$n") joins $(node_name 1)"
  ctl "$n" stop_app >/dev/null
  if ! ctl "$n" join_cluster "$(node_name 1)" >/dev/null; then
    ctl "$n" start_app >/dev/null || true
    die "$(node_name "$n") could not join $(node_name 1)"
  fi
  ctl "$n" start_app >/dev/null
}

# The nodes whose VM runs, one per line.
alive_nodes() { for n in "${NODES[@]}"; do [ -z "$(node_pid "$n")" ] || echo "$n"; done; }

cmd_start() {
  ensure_installed
  if [ -n "${1:-}" ]; then
    check_node_arg "$1"
    start_node "$1"; await_node "$1"
    [ "$1" = 1 ] || join_node "$1"
    # Wait for it to be back in the cluster, together with whoever else runs.
    # shellcheck disable=SC2046
    await_running "$1" $(alive_nodes)
    log "$(node_name "$1") is up"
    url "$1"
    return
  fi
  # All nodes first, then wait: nodes restarting from existing data wait for their
  # peers during boot (Mnesia tables), so starting them one after another would stall.
  for n in "${NODES[@]}"; do start_node "$n"; done
  for n in "${NODES[@]}"; do await_node "$n"; done
  for n in "${NODES[@]:1}"; do join_node "$n"; done
  await_running 1 "${NODES[@]}"
  log "all ${#NODES[@]} nodes are running"
  urls
}

stop_node() {
  local n=$1 pid; pid=$(node_pid "$n")
  [ -n "$pid" ] || { log "$(node_name "$n") is not running"; return 0; }
  log "stopping $(node_name "$n")"
  # Given the pid file, rabbitmqctl stop waits for the VM to exit. Should it fail (no
  # pid file, node not answering), SIGTERM: RabbitMQ shuts down cleanly on it too.
  if ! ctl "$n" stop "$(pid_file "$n")" >/dev/null 2>&1; then kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 1 "$TIMEOUT"); do kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
  die "$(node_name "$n") (pid $pid) did not stop within ${TIMEOUT}s"
}

cmd_stop() {
  if [ -n "${1:-}" ]; then check_node_arg "$1"; stop_node "$1"; return; fi
  # Node 1 last: any order works, but this one is the usual entry point.
  local n; for n in 3 2 1; do stop_node "$n"; done
}

cmd_kill() {
  check_node_arg "${1:-}"
  local n=$1 pid; pid=$(node_pid "$n")
  [ -n "$pid" ] || die "$(node_name "$n") is not running"
  log "killing $(node_name "$n") (pid $pid)"
  kill -KILL "$pid"
  for _ in $(seq 1 50); do
    if ! kill -0 "$pid" 2>/dev/null && ! port_open "$(amqp_port "$n")"; then return 0; fi
    sleep 0.1
  done
  die "$(node_name "$n") (pid $pid) is still there"
}

cmd_restart() {
  check_node_arg "${1:-}"
  [ -z "$(node_pid "$1")" ] || stop_node "$1"
  cmd_start "$1"
}

cmd_status() {
  local n pid via=
  for n in "${NODES[@]}"; do
    pid=$(node_pid "$n")
    if [ -n "$pid" ]; then
      printf '%s  pid %s  %s\n' "$(node_name "$n")" "$pid" "$(url "$n")"
      [ -n "$via" ] || via=$n
    else
      printf '%s  stopped\n' "$(node_name "$n")"
    fi
  done
  [ -n "$via" ] || return 0
  echo
  ctl "$via" cluster_status
}

# The number of the node leading quorum queue $1 (asked through a running node): the
# node to kill to make the queue fail over.
cmd_leader() {
  local queue=${1:-} via
  [ -n "$queue" ] || { log "expected a queue name"; usage 2; }
  # The first running node (not `alive_nodes | head`: SIGPIPE under pipefail).
  for via in "${NODES[@]}" ''; do [ -z "$via" ] || [ -z "$(node_pid "$via")" ] || break; done
  [ -n "$via" ] || die "no node is running"
  ctl "$via" list_queues name leader --no-table-headers \
    | awk -v q="$queue" '$1 == q { print $2 }' | sed -n 's/^postwire-\([0-9]*\)@.*/\1/p'
}

cmd_reset() {
  cmd_stop
  case "$ROOT" in /|"") die "refusing to delete '$ROOT'" ;; esac
  log "deleting $ROOT"
  rm -rf "$ROOT"
}

case "${1:-}" in
  start) cmd_start "${2:-}" ;;
  stop) cmd_stop "${2:-}" ;;
  kill) cmd_kill "${2:-}" ;;
  restart) cmd_restart "${2:-}" ;;
  status) cmd_status ;;
  urls) urls ;;
  leader) cmd_leader "${2:-}" ;;
  reset) cmd_reset ;;
  -h|--help|help) usage ;;
  *) usage 2 ;;
esac
