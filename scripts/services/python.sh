#!/usr/bin/env bash
# Installs (if missing) a Python venv with Kestra's own Python clients, pinned: the `kestra` library
# (what a script task imports to send outputs and metrics through the `::{...}::` protocol) and
# `kestrapy` (the published REST API client). tests/clients_python.rs runs both against our worker and
# webserver. Cached under $KESTRA_SERVICES_DIR/python: a second run only checks the versions.
#
# Usage: eval "$(scripts/services/python.sh)"  (scripts/services.sh calls it)
# Progress goes to stderr; stdout carries only the `export KESTRA_TEST_PYTHON=...` line.
set -euo pipefail

KESTRA_PY_VERSION="2.0.0"
KESTRAPY_VERSION="2.0.3"
# kestrapy imports `regex` without declaring it.
REGEX_VERSION="2026.11.19"
SERVICES_DIR="${KESTRA_SERVICES_DIR:-/var/tmp/kestra-services}"
VENV="$SERVICES_DIR/python"

log() { echo "[services/python] $*" >&2; }
die() { echo "[services/python] ERROR: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

# A python3 that can make a venv with pip (Debian splits venv/ensurepip into python3-venv).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "python3 with venv missing and no apt-get; install python3-venv by hand"
  log "installing python3 and python3-venv (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv >&2 || die "apt-get install python3-venv failed"
fi

wanted="kestra==$KESTRA_PY_VERSION kestrapy==$KESTRAPY_VERSION regex==$REGEX_VERSION"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$wanted" ] \
  && "$VENV/bin/python" -c 'import kestra, kestrapy' >/dev/null 2>&1; then
  log "venv ready at $VENV ($wanted)"
else
  log "creating venv $VENV with $wanted"
  rm -rf "$VENV"
  mkdir -p "$SERVICES_DIR"
  python3 -m venv "$VENV" >&2 || die "python3 -m venv $VENV failed"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    $wanted >&2 \
    || die "pip install $wanted failed"
  "$VENV/bin/python" -c 'import kestra, kestrapy' >&2 || die "the venv cannot import kestra and kestrapy"
  echo "$wanted" >"$VENV/.installed"
fi
echo "export KESTRA_TEST_PYTHON=$VENV/bin/python"
