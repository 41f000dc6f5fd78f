#!/usr/bin/env bash
# Installs (if missing) and starts the object stores the storage tests use, each bound to 127.0.0.1 with
# its own port and data dir under $KESTRA_SERVICES_DIR:
#   - MinIO (S3), built with `go install` at a pinned version (the first build takes minutes; cached);
#   - fake-gcs-server (GCS), built with `go install` at a pinned version;
#   - Azurite (Azure Blob), Microsoft's emulator, from npm at a pinned version.
# and creates the test bucket/container `kestra-test` in each. Idempotent: a second run finds them
# running (or starts the cached binaries) and returns in seconds.
#
# Usage: eval "$(scripts/services/storage.sh)"   (scripts/services.sh calls it)
# Progress goes to stderr; stdout carries only `export KESTRA_TEST_...=...` lines.
#
# Environment: KESTRA_MINIO_PORT (default 9010; console on the next port), KESTRA_FAKE_GCS_PORT
# (default 4443), KESTRA_AZURITE_PORT (default 10000), KESTRA_SERVICES_DIR (default
# /var/tmp/kestra-services), KESTRA_SERVICES_TIMEOUT (seconds to wait for readiness, default 60).
set -euo pipefail

MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c" # github.com/minio/minio, latest commit served
FAKE_GCS_VERSION="v1.56.1"                         # github.com/fsouza/fake-gcs-server
AZURITE_VERSION="3.37.0"                           # npm azurite

MINIO_PORT="${KESTRA_MINIO_PORT:-9010}"
FAKE_GCS_PORT="${KESTRA_FAKE_GCS_PORT:-4443}"
AZURITE_PORT="${KESTRA_AZURITE_PORT:-10000}"
SERVICES_DIR="${KESTRA_SERVICES_DIR:-/var/tmp/kestra-services}"
TIMEOUT="${KESTRA_SERVICES_TIMEOUT:-60}"

BUCKET="kestra-test"
MINIO_USER="kestra-minio"
MINIO_PASSWORD="kestra-minio-secret"
# Azurite's well-known development account (public, documented by Microsoft).
AZURE_ACCOUNT="devstoreaccount1"
AZURE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Go as installed on these machines, even when a minimal PATH lacks it.
command -v go >/dev/null 2>&1 || PATH="$PATH:/usr/local/go/bin"

BIN="$SERVICES_DIR/bin"
LOGS="$SERVICES_DIR/logs"
mkdir -p "$BIN" "$LOGS"

log() { echo "[storage] $*" >&2; }
die() { echo "[storage] ERROR: $*" >&2; exit 1; }

# wait_for NAME LOGFILE COMMAND...: probe COMMAND until it succeeds or the deadline passes; on failure
# print the service log and fail.
wait_for() {
  local name="$1" logfile="$2"
  shift 2
  local deadline=$((SECONDS + TIMEOUT)) delay=0.05
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name not ready after ${TIMEOUT}s; its log ($logfile):"
      tail -n 60 "$logfile" >&2 2>/dev/null || true
      die "$name did not start"
    fi
    sleep "$delay"
    delay=$(awk -v d="$delay" 'BEGIN { d = d * 2; if (d > 1) d = 1; print d }')
  done
}

# go_install NAME MODULE VERSION: build MODULE@VERSION into $BIN/NAME unless that version is there.
go_install() {
  local name="$1" module="$2" version="$3"
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/$name.version" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go not found: needed to build $name"
  log "building $name $version with go install (first time only; MinIO takes several minutes)"
  local start=$SECONDS
  GOBIN="$BIN" GOFLAGS="-buildvcs=false" go install "$module@$version" >"$LOGS/$name-build.log" 2>&1 || {
    tail -n 40 "$LOGS/$name-build.log" >&2
    die "go install $module@$version failed"
  }
  echo "$version" >"$BIN/$name.version"
  log "built $name in $((SECONDS - start))s"
}

http_ok() { curl -fs -o /dev/null --max-time 2 "$1"; }
http_any() { curl -s -o /dev/null --max-time 2 "$1"; }

start_minio() {
  go_install minio github.com/minio/minio "$MINIO_VERSION"
  local data="$SERVICES_DIR/minio" logfile="$LOGS/minio.log" url="http://127.0.0.1:$MINIO_PORT"
  mkdir -p "$data"
  if http_ok "$url/minio/health/live"; then
    log "MinIO already running on $url"
  else
    log "starting MinIO on $url"
    MINIO_ROOT_USER="$MINIO_USER" MINIO_ROOT_PASSWORD="$MINIO_PASSWORD" \
      MINIO_BROWSER=off MINIO_UPDATE=off \
      setsid nohup "$BIN/minio" server "$data" --quiet \
      --address "127.0.0.1:$MINIO_PORT" --console-address "127.0.0.1:$((MINIO_PORT + 1))" \
      </dev/null >>"$logfile" 2>&1 &
    wait_for MinIO "$logfile" http_ok "$url/minio/health/live"
  fi
  # Create the bucket (signed with SigV4 by curl); 409 = it exists already.
  local code
  code=$(curl -sS -o "$LOGS/minio-bucket.out" -w '%{http_code}' --max-time 10 \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$MINIO_USER:$MINIO_PASSWORD" \
    -X PUT "$url/$BUCKET") || die "cannot reach MinIO to create bucket $BUCKET"
  case "$code" in
    200 | 409) ;;
    *) cat "$LOGS/minio-bucket.out" >&2; die "creating MinIO bucket $BUCKET: HTTP $code" ;;
  esac
  echo "export KESTRA_TEST_S3_ENDPOINT=$url"
  echo "export KESTRA_TEST_S3_BUCKET=$BUCKET"
  echo "export KESTRA_TEST_S3_ACCESS_KEY=$MINIO_USER"
  echo "export KESTRA_TEST_S3_SECRET_KEY=$MINIO_PASSWORD"
  echo "export KESTRA_TEST_S3_REGION=us-east-1"
}

start_fake_gcs() {
  go_install fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION"
  local data="$SERVICES_DIR/fake-gcs" logfile="$LOGS/fake-gcs.log" url="http://127.0.0.1:$FAKE_GCS_PORT"
  mkdir -p "$data"
  if http_ok "$url/storage/v1/b"; then
    log "fake-gcs-server already running on $url"
  else
    log "starting fake-gcs-server on $url"
    setsid nohup "$BIN/fake-gcs-server" -scheme http -host 127.0.0.1 -port "$FAKE_GCS_PORT" \
      -backend filesystem -filesystem-root "$data" \
      -public-host "127.0.0.1:$FAKE_GCS_PORT" -external-url "$url" -log-level warn \
      </dev/null >>"$logfile" 2>&1 &
    wait_for fake-gcs-server "$logfile" http_ok "$url/storage/v1/b"
  fi
  local code
  code=$(curl -sS -o "$LOGS/fake-gcs-bucket.out" -w '%{http_code}' --max-time 10 \
    -H 'Content-Type: application/json' --data "{\"name\":\"$BUCKET\"}" \
    "$url/storage/v1/b") || die "cannot reach fake-gcs-server to create bucket $BUCKET"
  case "$code" in
    200 | 409) ;;
    *) cat "$LOGS/fake-gcs-bucket.out" >&2; die "creating GCS bucket $BUCKET: HTTP $code" ;;
  esac
  echo "export KESTRA_TEST_GCS_ENDPOINT=$url"
  echo "export KESTRA_TEST_GCS_BUCKET=$BUCKET"
}

# azure_create_container URL: PUT ?restype=container signed with the account's shared key (python's
# standard library only); 201 created, 409 exists.
azure_create_container() {
  python3 - "$1" "$AZURE_ACCOUNT" "$AZURE_KEY" "$BUCKET" <<'PY'
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate
url, account, key, container = sys.argv[1:5]
date = formatdate(usegmt=True)
version = "2021-08-06"
path = urllib.request.urlparse(url).path.rstrip("/") + "/" + container
# VERB, then Content-Encoding, -Language, -Length (empty when 0), -MD5, -Type, Date, If-Modified-Since,
# If-Match, If-None-Match, If-Unmodified-Since, Range; then the x-ms headers and the resource.
to_sign = "\n".join(["PUT", "", "", "", "", "application/octet-stream"] + [""] * 6 + [f"x-ms-date:{date}", f"x-ms-version:{version}",
                                          f"/{account}{path}", "restype:container"])
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"{url.rstrip('/')}/{container}?restype=container", method="PUT", data=b"",
    headers={"x-ms-date": date, "x-ms-version": version, "Content-Length": "0",
             "Content-Type": "application/octet-stream",
             "Authorization": f"SharedKey {account}:{sig}"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"creating Azure container {container}: HTTP {e.code}: {e.read()[:500]!r}")
PY
}

start_azurite() {
  local dir="$SERVICES_DIR/azurite" logfile="$LOGS/azurite.log"
  local url="http://127.0.0.1:$AZURITE_PORT/$AZURE_ACCOUNT"
  local azurite="$dir/node_modules/.bin/azurite-blob"
  if [ ! -x "$azurite" ] || [ "$(cat "$dir/version" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
    command -v npm >/dev/null 2>&1 || die "npm not found: needed to install Azurite"
    log "installing Azurite $AZURITE_VERSION from npm"
    mkdir -p "$dir"
    npm install --no-audit --no-fund --prefix "$dir" "azurite@$AZURITE_VERSION" \
      >"$LOGS/azurite-install.log" 2>&1 || {
      tail -n 40 "$LOGS/azurite-install.log" >&2
      die "npm install azurite@$AZURITE_VERSION failed"
    }
    echo "$AZURITE_VERSION" >"$dir/version"
  fi
  if http_any "http://127.0.0.1:$AZURITE_PORT/"; then
    log "Azurite already running on 127.0.0.1:$AZURITE_PORT"
  else
    log "starting Azurite (blob) on 127.0.0.1:$AZURITE_PORT"
    mkdir -p "$dir/data"
    setsid nohup "$azurite" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" \
      --location "$dir/data" --skipApiVersionCheck --silent \
      </dev/null >>"$logfile" 2>&1 &
    wait_for Azurite "$logfile" http_any "http://127.0.0.1:$AZURITE_PORT/"
  fi
  azure_create_container "$url" || die "cannot create the Azurite container $BUCKET"
  echo "export KESTRA_TEST_AZURE_ENDPOINT=$url"
  echo "export KESTRA_TEST_AZURE_CONTAINER=$BUCKET"
  echo "export KESTRA_TEST_AZURE_ACCOUNT=$AZURE_ACCOUNT"
  echo "export KESTRA_TEST_AZURE_ACCESS_KEY=$AZURE_KEY"
}

start_minio
start_fake_gcs
start_azurite
log "object stores ready"
