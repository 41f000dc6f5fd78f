#!/usr/bin/env bash
# The soak (issue 14, tests/soak.rs): executions of a mixed flow set through 2 executors, 3 workers,
# 2 schedulers and an indexer, each a separate `kestra server <component>` process on one database,
# with a random SIGKILL (+ restart) or SIGSTOP/SIGCONT every few seconds; the invariants are checked
# at the end, the exit code is non-zero on any violation.
#
#   scripts/soak.sh --db sqlite --executions 10000
#   scripts/soak.sh --db postgres --executions 10000 --kill-interval 5 --seed 42
#   scripts/soak.sh --help
#
# --db postgres|mysql without --url makes a database of its own on the server of
# KESTRA_TEST_POSTGRES_URL / KESTRA_TEST_MYSQL_URL (scripts/services.sh prints them) and drops it.
# Built with the dev profile (the one the tests use); SOAK_CARGO_ARGS adds cargo options
# (e.g. SOAK_CARGO_ARGS=--release, a full release build of the workspace the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086
exec cargo test --all-features ${SOAK_CARGO_ARGS:-} --test soak -- "$@"
