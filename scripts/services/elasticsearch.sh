#!/usr/bin/env bash
# Installs (if missing) and starts a real Elasticsearch node for the Elasticsearch repositories' tests:
# one node, single-node discovery, security off, bound to 127.0.0.1, small fixed heap. Elasticsearch
# comes from Maven Central (`org.elasticsearch.distribution.integ-test-zip:elasticsearch`, a full
# distribution without a bundled JDK) and is cached with its data under
# $KESTRA_SERVICES_DIR/elasticsearch, so a second run finds the node running (or starts it from the
# cache) in seconds. Maven Central serves 8.x only (no 9.x integ-test-zip), which runs on Java 17;
# Elasticsearch refuses to run as root, so the node runs as the unprivileged user `kestra-es`.
#
# Usage: eval "$(scripts/services/elasticsearch.sh)"   (scripts/services.sh calls it)
# Progress goes to stderr; stdout carries only `export KESTRA_TEST_ELASTICSEARCH_URL=...`.
#
# Environment: KESTRA_ES_VERSION (default 8.19.21), KESTRA_ES_PORT (HTTP, default 9200),
# KESTRA_ES_HEAP (default 512m), KESTRA_SERVICES_DIR (default /var/tmp/kestra-services),
# KESTRA_SERVICES_TIMEOUT (seconds to wait for readiness, default 120).
# Stop it with: kill "$(cat "$KESTRA_SERVICES_DIR/elasticsearch/elasticsearch.pid")"
set -euo pipefail

VERSION="${KESTRA_ES_VERSION:-8.19.21}"
PORT="${KESTRA_ES_PORT:-9200}"
HEAP="${KESTRA_ES_HEAP:-512m}"
SERVICES_DIR="${KESTRA_SERVICES_DIR:-/var/tmp/kestra-services}"
TIMEOUT="${KESTRA_SERVICES_TIMEOUT:-120}"
ES_USER=kestra-es

log() { echo "[services/elasticsearch] $*" >&2; }
die() { echo "[services/elasticsearch] ERROR: $*" >&2; exit 1; }

BASE="$SERVICES_DIR/elasticsearch"
HOME_DIR="$BASE/elasticsearch-$VERSION"
DATA="$BASE/data-$VERSION-$PORT"
LOGS="$BASE/logs-$PORT"
LOGFILE="$BASE/elasticsearch-$PORT.log"
PIDFILE="$BASE/elasticsearch.pid"
URL="http://127.0.0.1:$PORT"
mkdir -p "$BASE"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

healthy() {
  curl -fsS --max-time 2 "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" |
    grep -qE '"status":"(green|yellow)"'
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && healthy
}

# wait_for NAME COMMAND...: probe until it succeeds or the deadline passes (log printed on failure).
wait_for() {
  local name="$1"
  shift
  local deadline=$((SECONDS + TIMEOUT)) delay=0.1
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name not ready after ${TIMEOUT}s; its log ($LOGFILE):"
      tail -n 60 "$LOGFILE" >&2 2>/dev/null || true
      die "$name did not start"
    fi
    if [ -f "$PIDFILE" ] && ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "$name exited; its log ($LOGFILE):"
      tail -n 60 "$LOGFILE" >&2 2>/dev/null || true
      die "$name did not start"
    fi
    sleep "$delay"
    delay=$(awk -v d="$delay" 'BEGIN { d = d * 2; if (d > 1) d = 1; print d }')
  done
}

if running; then
  log "Elasticsearch already running on $URL (pid $(cat "$PIDFILE"))"
  echo "export KESTRA_TEST_ELASTICSEARCH_URL=$URL"
  exit 0
fi
if port_open "$PORT"; then
  die "port $PORT is taken by another process (not our node): set KESTRA_ES_PORT"
fi

# ---------------------------------------------------------------- tools: Java 17+, curl, unzip
need_tools() {
  local missing=()
  local java_major=0
  if command -v java >/dev/null 2>&1; then
    java_major=$(java -XshowSettings:properties -version 2>&1 |
      sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
  fi
  [ "${java_major:-0}" -ge 17 ] || missing+=(openjdk-17-jre-headless)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v unzip >/dev/null 2>&1 || missing+=(unzip)
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} by hand (no apt-get)"
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}
need_tools

# The JDK that runs the node: 9.x needs 21+ (Temurin 25 when present), 8.x runs on Java 17.
java_home() {
  case "$VERSION" in
  8.*) dirname "$(dirname "$(readlink -f "$(command -v java)")")" ;;
  *)
    local jdk
    for jdk in /usr/lib/jvm/temurin-25-jdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64; do
      [ -x "$jdk/bin/java" ] && { echo "$jdk"; return 0; }
    done
    die "Elasticsearch $VERSION needs Java 21+: none under /usr/lib/jvm (use KESTRA_ES_VERSION=8.19.21)"
    ;;
  esac
}
JAVA_HOME_ES=$(java_home)

# ---------------------------------------------------------------- download (cached)
if [ ! -f "$HOME_DIR/.complete" ]; then
  zip="$BASE/elasticsearch-$VERSION.zip"
  url="https://repo1.maven.org/maven2/org/elasticsearch/distribution/integ-test-zip/elasticsearch/$VERSION/elasticsearch-$VERSION.zip"
  if [ ! -f "$zip" ]; then
    log "downloading Elasticsearch $VERSION from Maven Central"
    curl -fsSL --retry 3 -o "$zip.part" "$url" || die "download failed: $url"
    mv "$zip.part" "$zip"
  fi
  rm -rf "$HOME_DIR" "$BASE/unpack"
  mkdir -p "$BASE/unpack"
  unzip -q "$zip" -d "$BASE/unpack" || die "unzip $zip failed"
  mv "$BASE/unpack/elasticsearch-$VERSION" "$HOME_DIR" || die "unexpected layout in $zip"
  rmdir "$BASE/unpack"
  touch "$HOME_DIR/.complete"
fi

# ---------------------------------------------------------------- unprivileged user (ES refuses root)
RUN=()
if [ "$(id -u)" -eq 0 ]; then
  if ! id "$ES_USER" >/dev/null 2>&1; then
    log "creating the unprivileged user $ES_USER"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$ES_USER" ||
      die "useradd $ES_USER failed"
  fi
  RUN=(runuser -u "$ES_USER" --)
fi

# ---------------------------------------------------------------- configuration
mkdir -p "$DATA" "$LOGS"
cat >"$HOME_DIR/config/elasticsearch.yml" <<EOF
# Written by scripts/services/elasticsearch.sh: a single-node cluster for tests.
# (The integ-test-zip carries only the x-pack-core/security, netty and apm modules: no painless,
# no ingest-geoip, no ml; settings of absent modules would be rejected.)
cluster.name: kestra-test
node.name: kestra-test-1
path.data: $DATA
path.logs: $LOGS
network.host: 127.0.0.1
http.port: $PORT
transport.port: 0
discovery.type: single-node
xpack.security.enabled: false
action.destructive_requires_name: false
# A test machine's disk may be fuller than the default watermarks allow.
cluster.routing.allocation.disk.threshold_enabled: false
EOF
if [ "${#RUN[@]}" -gt 0 ]; then
  chown -R "$ES_USER" "$HOME_DIR" "$DATA" "$LOGS"
fi

# ---------------------------------------------------------------- start
[ -f "$LOGFILE" ] && mv -f "$LOGFILE" "$LOGFILE.1"
touch "$LOGFILE"
log "starting Elasticsearch $VERSION on $URL (heap $HEAP, JDK $JAVA_HOME_ES)"
# setsid + nohup: the node outlives this script and the shell that runs it.
setsid nohup env ES_JAVA_HOME="$JAVA_HOME_ES" ES_JAVA_OPTS="-Xms$HEAP -Xmx$HEAP" \
  "${RUN[@]}" "$HOME_DIR/bin/elasticsearch" </dev/null >"$LOGFILE" 2>&1 &
echo $! >"$PIDFILE"
wait_for Elasticsearch healthy
log "Elasticsearch ready on $URL"
echo "export KESTRA_TEST_ELASTICSEARCH_URL=$URL"
