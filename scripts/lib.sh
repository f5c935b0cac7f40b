# Shared shell helpers for the project's scripts (sourced, not run).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

log() { printf '[eftgw] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

APT_UPDATED=""
apt_install() {
  # apt_install PKG... : installs the packages that are missing, nothing else.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  log "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_bin() {
  # Python 3.11 or newer: the one on PATH if it is new enough, else Debian's.
  local py
  for py in python3.13 python3.12 python3.11 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$py"; return 0
    fi
  done
  apt_install python3 python3-venv python3-dev
  command -v python3
}

bootstrap_venv() {
  # bootstrap_venv [EXTRAS]: .venv with eftgw (editable) and its pinned dependencies; re-run only on change.
  local extras=${1:-}
  local py stamp want
  py=$(python_bin)
  "$py" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
  stamp="$VENV/.eftgw-installed"
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-$extras"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies${extras:+ ($extras)}"
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING' || true
    "$VENV/bin/python" -m pip install -q -e "$ROOT${extras:+[$extras]}" 2>&1 | grep -v '^WARNING' || true
    "$VENV/bin/python" -c 'import eftgw, aiohttp, asyncssh, sqlalchemy' || { log "dependency install failed"; exit 1; }
    echo "$want" > "$stamp"
  fi
}
