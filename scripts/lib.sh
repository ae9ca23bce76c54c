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
