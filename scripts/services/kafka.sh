#!/usr/bin/env bash
# Installs (if missing) and starts a real Apache Kafka broker for the Kafka backend's tests: one KRaft
# node in combined mode (broker + controller) bound to 127.0.0.1, replication factor 1 and min ISR 1 for
# the internal topics (offsets, transaction state), small heap. Kafka comes from Maven Central
# (`org.apache.kafka:kafka_2.13` and its dependencies, fetched with `mvn dependency:copy-dependencies` on
# scripts/services/kafka/pom.xml) and is cached with its data under $KESTRA_SERVICES_DIR/kafka, so a
# second run finds the broker running (or starts it from the cache) in seconds.
#
# Usage: eval "$(scripts/services/kafka.sh)"   (scripts/services.sh calls it)
# Progress goes to stderr; stdout carries only `export KESTRA_TEST_KAFKA_BROKERS=...`.
#
# Environment: KESTRA_KAFKA_PORT (broker, default 19092), KESTRA_KAFKA_CONTROLLER_PORT (default
# 19093), KESTRA_KAFKA_HEAP (default 512m), KESTRA_SERVICES_DIR (default /var/tmp/kestra-services),
# KESTRA_SERVICES_TIMEOUT (seconds to wait for readiness, default 90).
# Stop it with: kill "$(cat "$KESTRA_SERVICES_DIR/kafka/kafka.pid")"
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/kafka/pom.xml"
PORT="${KESTRA_KAFKA_PORT:-19092}"
CONTROLLER_PORT="${KESTRA_KAFKA_CONTROLLER_PORT:-19093}"
HEAP="${KESTRA_KAFKA_HEAP:-512m}"
SERVICES_DIR="${KESTRA_SERVICES_DIR:-/var/tmp/kestra-services}"
TIMEOUT="${KESTRA_SERVICES_TIMEOUT:-90}"

log() { echo "[services/kafka] $*" >&2; }
die() { echo "[services/kafka] ERROR: $*" >&2; exit 1; }

[ -f "$POM" ] || die "missing $POM"
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
[ -n "$VERSION" ] || die "no <kafka.version> in $POM"

BASE="$SERVICES_DIR/kafka"
LIBS="$BASE/libs-$VERSION"
# One data dir per version and port pair: a formatted KRaft log dir records its listeners' cluster.
DATA="$BASE/data-$VERSION-$PORT"
CONF="$BASE/server-$PORT.properties"
LOG4J="$BASE/log4j2.properties"
LOGFILE="$BASE/kafka-$PORT.log"
PIDFILE="$BASE/kafka.pid"
mkdir -p "$BASE"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    die "need root (or passwordless sudo) to run: $*"
  fi
}

# java (17+, Kafka 4 needs it) and mvn, from Debian's packages when missing.
need_tools() {
  local missing=()
  local java_major=0
  if command -v java >/dev/null 2>&1; then
    java_major=$(java -XshowSettings:properties -version 2>&1 |
      sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
  fi
  [ "${java_major:-0}" -ge 17 ] || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || missing+=(maven)
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} by hand (no apt-get)"
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && port_open "$PORT"
}

# wait_for NAME COMMAND...: probe until it succeeds or the deadline passes (log printed on failure).
wait_for() {
  local name="$1"
  shift
  local deadline=$((SECONDS + TIMEOUT)) delay=0.05
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

ready() {
  port_open "$PORT" && grep -q "Kafka Server started" "$LOGFILE"
}

if running; then
  log "Kafka $VERSION already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
  echo "export KESTRA_TEST_KAFKA_BROKERS=127.0.0.1:$PORT"
  exit 0
fi
if port_open "$PORT"; then
  die "port $PORT is taken by another process (not our broker): set KESTRA_KAFKA_PORT"
fi

need_tools

# ---------------------------------------------------------------- download (cached)
if [ ! -f "$LIBS/.complete" ]; then
  log "fetching Kafka $VERSION and its dependencies from Maven Central into $LIBS"
  rm -rf "$LIBS"
  # (mvn -q still prints colour resets: strip escape sequences from its output)
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIBS" -Dmaven.repo.local="$BASE/m2" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2 ||
    die "mvn dependency:copy-dependencies failed for Kafka $VERSION"
  ls "$LIBS"/kafka_2.13-"$VERSION".jar >/dev/null 2>&1 || die "kafka_2.13-$VERSION.jar not fetched"
  touch "$LIBS/.complete"
fi

# ---------------------------------------------------------------- configuration
cat >"$CONF.tmp" <<EOF
# Written by scripts/services/kafka.sh: a single-node KRaft cluster for tests.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
num.partitions=1
auto.create.topics.enable=false
# One node: replication factor 1, min ISR 1 for the internal topics (transactions hang otherwise).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
# Tests: keep a day of data, in small segments.
log.retention.hours=24
log.segment.bytes=67108864
EOF
mv "$CONF.tmp" "$CONF"
cat >"$LOG4J" <<'EOF'
status = warn
rootLogger.level = INFO
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF

JAVA_OPTS=(-Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$LOG4J")

# ---------------------------------------------------------------- format (once per data dir)
if [ ! -f "$DATA/meta.properties" ]; then
  log "formatting the KRaft log dir $DATA"
  rm -rf "$DATA"
  cluster_id=$(java "${JAVA_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid 2>>"$LOGFILE")
  [ -n "$cluster_id" ] || die "kafka.tools.StorageTool random-uuid printed nothing (see $LOGFILE)"
  java "${JAVA_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format --standalone \
    -t "$cluster_id" -c "$CONF" >>"$LOGFILE" 2>&1 || {
    tail -n 30 "$LOGFILE" >&2
    die "formatting $DATA failed"
  }
fi

# ---------------------------------------------------------------- start
[ -f "$LOGFILE" ] && mv -f "$LOGFILE" "$LOGFILE.1"
log "starting Kafka $VERSION on 127.0.0.1:$PORT (controller $CONTROLLER_PORT, heap $HEAP)"
# setsid + nohup: the broker outlives this script and the shell that runs it.
setsid nohup java "${JAVA_OPTS[@]}" -cp "$LIBS/*" kafka.Kafka "$CONF" \
  </dev/null >"$LOGFILE" 2>&1 &
echo $! >"$PIDFILE"
wait_for Kafka ready
log "Kafka ready on 127.0.0.1:$PORT"
echo "export KESTRA_TEST_KAFKA_BROKERS=127.0.0.1:$PORT"
