#!/usr/bin/env bash
# Memory of a big upload: a 1 GiB FILE input (SIZE bytes) uploaded and downloaded through the REST API of
# `kestra server standalone` (SQLite + local storage, or the store of KESTRA_CONFIG, e.g. S3), the
# download compared byte for byte; prints the server's resident memory (VmRSS, peak VmHWM) at each
# step. Build first (`cargo build`, or `cargo build --features s3` for S3). Figures:
# docs/benchmarks/README.md.
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/debug/kestra}
D=${D:-/var/tmp/rss1g}; SIZE=${SIZE:-1073741824}; PORT=${PORT:-18080}
rm -rf "$D/data" "$D/flows" "$D/out.bin"; mkdir -p "$D/flows"
cat > "$D/flows/upload.yaml" <<YAML
id: upload
namespace: bench.rss
inputs:
  - id: file
    type: FILE
tasks:
  - id: show
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.file }}"
YAML
[ -f "$D/big.bin" ] && [ "$(stat -c %s "$D/big.bin")" = "$SIZE" ] || head -c "$SIZE" /dev/urandom > "$D/big.bin"
cd "$D"
KESTRA_SERVER_BASIC_AUTH_ENABLED=false KESTRA_SERVER_PORT=$PORT "$BIN" server standalone --flows "$D/flows" > "$D/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for i in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.3; done
rss() { awk '/VmRSS|VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' /proc/$PID/status; echo; }
echo "started:  $(rss)"
t0=$(date +%s.%N)
ID=$(curl -fsS -F "file=@$D/big.bin" "http://127.0.0.1:$PORT/api/v1/main/executions/bench.rss/upload" | python3 -c 'import sys,json; print(json.load(sys.stdin)["id"])')
t1=$(date +%s.%N)
echo "uploaded in $(echo "$t1 - $t0" | bc) s: $(rss)"
for i in $(seq 1 300); do
  S=$(curl -fsS "http://127.0.0.1:$PORT/api/v1/main/executions/$ID" | python3 -c 'import sys,json; e=json.load(sys.stdin); print(e["state"]["current"], e["inputs"]["file"])')
  case "$S" in SUCCESS*|FAILED*|KILLED*) break;; esac; sleep 0.5
done
echo "execution: $S"
URI=${S#* }
t0=$(date +%s.%N)
curl -fsS -G --data-urlencode "path=$URI" "http://127.0.0.1:$PORT/api/v1/main/executions/$ID/file" -o "$D/out.bin"
t1=$(date +%s.%N)
echo "downloaded in $(echo "$t1 - $t0" | bc) s: $(rss)"
cmp "$D/big.bin" "$D/out.bin" && echo "download identical to upload ($(stat -c %s "$D/out.bin") bytes)"
