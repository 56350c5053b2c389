# Shared by the ops/ scripts. Everything they start listens on 127.0.0.1 and
# is recorded under .trellis/run so stack-down stops exactly that.
set -euo pipefail

TRELLIS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRELLIS_HOME="${TRELLIS_HOME:-$TRELLIS_ROOT/.trellis}"
cd "$TRELLIS_ROOT"
RUN_DIR="$TRELLIS_HOME/run"
LOG_DIR="$TRELLIS_HOME/logs"
BROKER_PORT="${TRELLIS_BROKER_PORT:-9092}"
REGISTRY_PORT="${TRELLIS_REGISTRY_PORT:-8081}"
export TRELLIS_BOOTSTRAP_SERVERS="127.0.0.1:$BROKER_PORT"
export TRELLIS_REGISTRY_URL="http://127.0.0.1:$REGISTRY_PORT"
export TRELLIS_TOPOLOGY="$TRELLIS_ROOT/topology.yaml"
# Processor configs in ops/config name the default ports; these win.
export TRELLIS__KAFKA__BOOTSTRAP_SERVERS="$TRELLIS_BOOTSTRAP_SERVERS"
export TRELLIS__REGISTRY__URL="$TRELLIS_REGISTRY_URL"
PROFILE="${TRELLIS_PROFILE:-release}"
BIN_DIR="$TRELLIS_ROOT/target/$PROFILE"
TANSU="${TRELLIS_TANSU:-$TRELLIS_HOME/bin/tansu}"
# memory (tansu) or durable (nisshi on Postgres): see ops/stack-up.
BROKER_KIND="${TRELLIS_BROKER:-memory}"
BROKER_PG_DIR="$TRELLIS_HOME/broker"
BROKER_PG_PORT="${TRELLIS_BROKER_PG_PORT:-5545}"
if [ "$BROKER_KIND" = durable ]; then
  # The tools' consumers (trellis demo, inspect, erasure verify): see
  # start_processor.
  export TRELLIS_FETCH_MIN_BYTES=1000000 TRELLIS_FETCH_WAIT_MAX_MS=200
fi

say() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_port PORT SECONDS: until something accepts connections on 127.0.0.1:PORT.
wait_port() {
  local port=$1 deadline=$((SECONDS + ${2:-30}))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# start NAME CMD...: run CMD in the background, logging to $LOG_DIR/NAME.log.
start() {
  local name=$1; shift
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  "$@" >"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

# stop NAME: SIGTERM, then SIGKILL after 15 s.
stop() {
  local pidfile="$RUN_DIR/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# dev_secret NAME: a random 32-byte hex secret kept under .trellis/secrets,
# exported as NAME_FILE (never printed).
dev_secret() {
  local name=$1 file="$TRELLIS_HOME/secrets/$1"
  mkdir -p "$TRELLIS_HOME/secrets"
  chmod 700 "$TRELLIS_HOME/secrets"
  if [ ! -s "$file" ]; then
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file")
  fi
  export "${name}_FILE=$file"
}

# export_secrets: NAME_FILE for every secret the stack keeps (a processor
# restarted by hand gets what ops/stack-up gave it).
export_secrets() {
  local file
  for file in "$TRELLIS_HOME"/secrets/*; do
    [ -f "$file" ] && export "$(basename "$file")_FILE=$file"
  done
  return 0
}

# start_processor NAME: starts trellis-NAME with ops/config/NAME.yaml, every
# path setting it declares (`trellis config paths`) under $TRELLIS_HOME.
start_processor() {
  local processor=$1 key path paths=()
  while IFS='=' read -r key path; do
    paths+=("$key=$TRELLIS_HOME/$path")
  done < <("$BIN_DIR/trellis" config paths "$processor")
  [ "${#paths[@]}" -gt 0 ] || die "trellis config paths $processor printed nothing"
  # nisshi answers a fetch with whatever one record is ready: wait for more
  # (INFRA.md; 33 records/s otherwise).
  [ "$BROKER_KIND" = durable ] \
    && paths+=(TRELLIS__KAFKA__FETCH_MIN_BYTES=1000000 TRELLIS__KAFKA__FETCH_WAIT_MAX_MS=200)
  say "starting $processor"
  start "$processor" env "${paths[@]}" \
    "$BIN_DIR/trellis-$processor" --config "$TRELLIS_ROOT/ops/config/$processor.yaml"
}

# --- Postgres (the warehouse) -------------------------------------------------
PG_PORT="${TRELLIS_PG_PORT:-5544}"
PG_DIR="$TRELLIS_HOME/postgres"

# pg_bin_dir: the bin directory of the newest Postgres installed, or fail.
pg_bin_dir() {
  if [ -n "${TRELLIS_PG_BIN:-}" ] && [ -x "$TRELLIS_PG_BIN/initdb" ]; then
    echo "$TRELLIS_PG_BIN"; return 0
  fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  return 1
}

# pg_up: a throwaway cluster under $TRELLIS_HOME/postgres on 127.0.0.1:$PG_PORT
# with the `trellis` database, password authentication over TCP, the
# superuser's password in the dev secret TRELLIS_PG_SUPERUSER (`trellis stack
# postgres`, which the warehouse tests' clusters share).
pg_up() {
  "$TRELLIS_ROOT/ops/install-postgres" >/dev/null
  dev_secret TRELLIS_PG_SUPERUSER
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  rm -rf "$PG_DIR"
  "$BIN_DIR/trellis" stack postgres up --dir "$PG_DIR" --port "$PG_PORT" \
    --superuser trellis --password-file "$TRELLIS_PG_SUPERUSER_FILE" --database trellis \
    || die "Postgres did not start (see $PG_DIR/postgres.log)"
}

# pg_url_secret NAME USER PASSWORD_FILE: writes the connection URL of USER on
# the stack's Postgres to the dev secret NAME and exports NAME_FILE.
pg_url_secret() {
  local file="$TRELLIS_HOME/secrets/$1"
  (umask 077; echo "postgresql://$2:$(cat "$3")@127.0.0.1:$PG_PORT/trellis" >"$file")
  export "${1}_FILE=$file"
}

# pg_down: stops the cluster pg_up started, even one whose start failed
# half-way (nothing if no server runs there).
pg_down() {
  [ -d "$PG_DIR/data" ] || return 0
  "$BIN_DIR/trellis" stack postgres down --dir "$PG_DIR" || true
}
