#!/usr/bin/env bash
# Write the ForEach flows of docs/benchmarks/README.md into DIR (default: a new temporary
# directory, printed): each<N>par.yaml (concurrencyLimit 0, all at once) and each<N>seq.yaml
# (concurrencyLimit 1, sequential) for N = 250, 500, 1000 (or the sizes given after DIR).
# Measure one with: /usr/bin/time -v target/release/kestra flow test --json DIR/each1000par.yaml
set -euo pipefail
dir=${1:-$(mktemp -d)}
shift || true
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(250 500 1000)
mkdir -p "$dir"
for n in "${sizes[@]}"; do
  values=$(seq -s ', ' 1 "$n")
  for mode in par seq; do
    limit=0
    [ "$mode" = seq ] && limit=1
    cat > "$dir/each${n}${mode}.yaml" <<YAML
id: each${n}${mode}
namespace: bench
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: [${values}]
    concurrencyLimit: ${limit}
    tasks:
      - id: r
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
YAML
  done
done
echo "$dir"
