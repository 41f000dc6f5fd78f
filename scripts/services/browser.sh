#!/usr/bin/env bash
# Installs (if missing) the headless browser the Web UI's browser test drives: Debian's `chromium` and
# `chromium-driver` (WebDriver). Nothing is started here: the test starts chromedriver itself on a free
# port and gives Chromium a fresh profile.
#
# Usage: eval "$(scripts/services/browser.sh)"  (scripts/services.sh calls it)
# Progress goes to stderr; stdout carries only `export KESTRA_TEST_...=...` lines.
set -euo pipefail

log() { echo "[services/browser] $*" >&2; }
die() { echo "[services/browser] ERROR: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if ! installed chromium || ! installed chromium-driver; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install chromium and chromium-driver by hand"
  log "installing chromium and chromium-driver (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >&2 || die "apt-get install chromium chromium-driver failed"
fi

driver="$(command -v chromedriver || true)"
[ -n "$driver" ] || driver=/usr/bin/chromedriver
[ -x "$driver" ] || die "chromedriver not found after install"
browser="$(command -v chromium || true)"
[ -n "$browser" ] || browser=/usr/bin/chromium
[ -x "$browser" ] || die "chromium not found after install"
"$driver" --version >&2 || die "$driver does not run"
log "chromium: $("$browser" --version 2>/dev/null || echo unknown)"
echo "export KESTRA_TEST_CHROMEDRIVER=$driver"
echo "export KESTRA_TEST_CHROMIUM=$browser"
